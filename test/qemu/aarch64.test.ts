import { statSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { startVm } from '../../src/qemu/runner.js';

// No arm64 kernel is installed (and nothing is downloaded): the check is that the virt machine
// with -cpu max under TCG runs AAVMF to its boot manager, seen on the serial console.
describe('aarch64', { timeout: 200_000 }, () => {
  it('boots AAVMF on the virt machine under TCG to firmware serial output', async () => {
    const vm = await startVm({ arch: 'aarch64', memoryMiB: 256, name: 'aarch64-fw' });
    try {
      expect(vm.args).toEqual(expect.arrayContaining(['-machine', 'virt', '-cpu', 'max', '-accel', 'tcg']));
      expect(vm.args.some((a) => a.includes('AAVMF_CODE'))).toBe(true);
      // The VARS copy is private to this VM (64 MiB on the virt machine's pflash).
      expect(statSync(`${vm.workDir}/efivars.fd`).size).toBe(64 * 1024 * 1024);
      await vm.waitForSerial(/BdsDxe: (loading|starting) Boot\d+|UEFI Interactive Shell/, 150_000);
      const stats = await vm.screenshot(`${vm.workDir}/fw.png`);
      expect(stats.width).toBeGreaterThan(0);
      const res = await vm.powerOff({ graceMs: 2000 });
      expect(['acpi', 'quit']).toContain(res.method);
    } finally {
      await vm.dispose();
    }
  });
});
