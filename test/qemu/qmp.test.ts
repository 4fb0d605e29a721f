import { afterEach, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { startVm, type Vm } from '../../src/qemu/runner.js';
import { GUEST_MARKERS, guestKernelBoot } from '../helpers/guests.js';

/** Direct kernel boots of the test guest: the quickest way to a running Linux under TCG. */
const vms: Vm[] = [];
afterEach(async () => {
  await Promise.all(vms.splice(0).map((vm) => vm.dispose()));
});
async function boot(variant: string, extra: Partial<Parameters<typeof startVm>[0]> = {}): Promise<Vm> {
  const vm = await startVm({
    ...(await guestKernelBoot(variant)),
    memoryMiB: 192,
    name: `qmp-${variant}`,
    ...extra,
  });
  vms.push(vm);
  return vm;
}
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('QMP client and power control', { timeout: 200_000 }, () => {
  it('runs commands with ids, reports events and errors, and powers off through ACPI', async () => {
    const lines: string[] = [];
    const vm = await boot('acpi', { onSerialLine: (l) => lines.push(l) });
    expect(vm.qmp.greeting.QMP.version.qemu.major).toBeGreaterThanOrEqual(7);
    // Concurrent commands are matched to their answers by id.
    const [status, name, version] = await Promise.all([
      vm.qmp.execute<{ status: string }>('query-status'),
      vm.qmp.execute<{ name: string }>('query-name'),
      vm.qmp.hmp('info version'),
    ]);
    expect(status.status).toBe('running');
    expect(name.name).toBe('qmp-acpi');
    expect(version).toMatch(/^\d+\.\d+/);

    await expect(vm.qmp.execute('no-such-command')).rejects.toThrow(
      /QMP 'no-such-command' failed: .*CommandNotFound/,
    );
    const quiet = await vm.qmp.waitForEvent('WATCHDOG', 300).catch((e: unknown) => e);
    expect(quiet).toBeInstanceOf(OrbError);
    expect((quiet as OrbError).kind).toBe('timeout');

    const stopped = vm.qmp.waitForEvent('STOP', 10_000);
    await vm.qmp.execute('stop');
    await stopped;
    expect((await vm.qmp.execute<{ status: string }>('query-status')).status).toBe('paused');
    const resumed = vm.qmp.waitForEvent('RESUME', 10_000);
    await vm.qmp.execute('cont');
    await resumed;

    await vm.sendKey(['shift', 'a']);
    await expect(vm.sendKey('no-such-key')).rejects.toThrow(/send-key/);

    await vm.waitForSerial('acpi-ready', 120_000);
    // Under a loaded TCG host the kernel may print a timer warning before the init's first line.
    expect(lines.find((l) => l.startsWith(GUEST_MARKERS.boot))).toMatch(
      new RegExp(`^${GUEST_MARKERS.boot} variant=acpi tpm=no`),
    );
    const seen: string[] = [];
    for await (const l of vm.serialLines()) {
      seen.push(l);
      if (l.includes('acpi-ready')) break;
    }
    expect(seen).toEqual(lines.slice(0, seen.length));

    const before = vm.qmp.events.length;
    const res = await vm.powerOff({ graceMs: 60_000 });
    expect(res).toMatchObject({
      method: 'acpi',
      guestInitiated: true,
      shutdownReason: 'guest-shutdown',
      code: 0,
    });
    expect(vm.qmp.events.slice(before).map((e) => e.event)).toEqual(
      expect.arrayContaining(['POWERDOWN', 'SHUTDOWN']),
    );
    await expect(vm.qmp.execute('query-status')).rejects.toThrow(
      /QEMU closed the QMP connection|got no answer/,
    );
    expect((await vm.powerOff()).method).toBe('already-exited');
  });

  it('attaches a swtpm TPM 2.0 the guest sees, and quits a guest that ignores ACPI within the grace period', async () => {
    const vm = await boot('silent', { tpm: true });
    expect(vm.tpmPid).toBeGreaterThan(0);
    const tpms = await vm.qmp.execute<{ model: string; options: { type: string } }[]>('query-tpm');
    expect(tpms).toEqual([
      expect.objectContaining({ model: 'tpm-tis', options: expect.objectContaining({ type: 'emulator' }) }),
    ]);
    await vm.waitForSerial(`${GUEST_MARKERS.boot} variant=silent tpm=yes`, 120_000);

    const res = await vm.powerOff({ graceMs: 2500 });
    expect(res.method).toBe('quit');
    expect(res.ms).toBeGreaterThanOrEqual(2500);
    expect(res.ms).toBeLessThan(2500 + 8000);
    expect(res.guestInitiated).toBe(false);
    await new Promise((r) => setTimeout(r, 500));
    expect(alive(vm.tpmPid!)).toBe(false);
  });

  it('gives a timeout error when QEMU stops answering, then kills it', async () => {
    const vm = await boot('silent');
    await vm.waitForSerial(GUEST_MARKERS.boot, 120_000);
    process.kill(vm.pid, 'SIGSTOP');
    try {
      const err = await vm.qmp
        .execute('query-status', undefined, { timeoutMs: 400 })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OrbError);
      expect((err as OrbError).message).toMatch(/did not answer QMP 'query-status' within 0.4 s/);
      const res = await vm.powerOff({ graceMs: 1000 });
      expect(res.method).toBe('kill');
      expect(res.signal).toBe('SIGKILL');
      expect(res.ms).toBeLessThan(1000 + 12_000);
    } finally {
      if (alive(vm.pid)) process.kill(vm.pid, 'SIGCONT');
    }
    expect(alive(vm.pid)).toBe(false);
  });

  it('sees a guest power off by itself', async () => {
    const vm = await boot('poweroff');
    const exit = await vm.waitForExit(120_000);
    expect(exit).toMatchObject({ guestInitiated: true, shutdownReason: 'guest-shutdown', code: 0 });
    expect(vm.serialText()).toContain(GUEST_MARKERS.poweringOff);
    await expect(vm.waitForSerial('never printed', 1000)).rejects.toThrow(
      /exited before its serial console showed/,
    );
  });

  it('explains a configuration QEMU refuses, and a missing image', async () => {
    const k = await guestKernelBoot('silent');
    const err = await startVm({ ...k, cpu: 'no-such-cpu-model' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).message).toMatch(/QEMU failed to start: .*no-such-cpu-model/);
    await expect(startVm({ disks: [{ path: '/nonexistent/disk.img' }] })).rejects.toThrow(
      /not found: \/nonexistent\/disk.img/,
    );
  });
});
