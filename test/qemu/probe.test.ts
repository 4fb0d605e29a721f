import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bootProbe, kvmDeviceProblem, probeAccelerator, probeBootSector } from '../../src/qemu/probe.js';
import { which } from '../../src/core/proc.js';
import { orb, ROOT } from '../helpers/cli.js';

const qemu = which('qemu-system-x86_64')!;

describe('KVM probe', () => {
  it('the embedded boot sector is what probe-guest.S assembles to', () => {
    expect(which('as') && which('ld'), "needs as and ld: install the Debian package 'binutils'").toBeTruthy();
    const dir = mkdtempSync(join(tmpdir(), 'orb-asm-'));
    execFileSync('as', ['--64', '-o', join(dir, 'p.o'), join(ROOT, 'src/qemu/probe-guest.S')]);
    execFileSync('ld', [
      '-m',
      'elf_x86_64',
      '-Ttext=0x7c00',
      '-e',
      '0x7c00',
      '--oformat',
      'binary',
      '-o',
      join(dir, 'p.bin'),
      join(dir, 'p.o'),
    ]);
    expect(readFileSync(join(dir, 'p.bin')).equals(probeBootSector())).toBe(true);
  });

  it('boots under TCG and reaches 64-bit mode', async () => {
    const r = await bootProbe(qemu, 'tcg', 10_000);
    expect(r).toMatchObject({ ok: true, started: true });
    expect(r.seconds).toBeLessThan(10);
  });

  it('says why it cannot use KVM: no device, no permission', async () => {
    const none = await probeAccelerator({ qemu, kvmDevice: '/nonexistent/kvm' });
    expect(none.accelerator).toBe('tcg');
    expect(none.reason).toMatch(/does not exist/);
  });

  it('says when the device is there but this user may not open it', async () => {
    // A device file with mode 0000 stands in for a /dev/kvm without permission. Root bypasses
    // file modes, so as root the check runs with the effective user 'nobody' (open(2) checks
    // effective ids) and switches back.
    const dir = mkdtempSync(join(tmpdir(), 'orb-kvm-'));
    chmodSync(dir, 0o755);
    const dev = join(dir, 'kvm');
    writeFileSync(dev, '');
    chmodSync(dev, 0);
    const asRoot = process.getuid?.() === 0;
    if (asRoot) process.seteuid!(65534);
    let problem: string | undefined;
    try {
      problem = await kvmDeviceProblem(dev);
    } finally {
      if (asRoot) process.seteuid!(0);
    }
    expect(problem).toMatch(/^no permission to open .*kvm.*'kvm' group/);
    expect(await kvmDeviceProblem(dir)).toMatch(/cannot be opened \(EISDIR\)/);
  });

  it('decides on this machine within 30 s and explains a tcg decision', async () => {
    const t0 = Date.now();
    const r = await orb(['setup-qemu', '--no-install', '--json']);
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, string>;
    if (out.accelerator === 'tcg') {
      expect(out['kvm-reason']).not.toBe('');
      expect(r.stderr).toMatch(/software emulation \(TCG\).*slower/);
    } else {
      expect(out['kvm-reason']).toBe('');
    }
  });
});
