import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bootProbe, probeAccelerator, probeBootSector } from '../../src/qemu/probe.js';
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
    const dir = mkdtempSync(join(tmpdir(), 'orb-kvm-'));
    // A file we may not open stands in for a /dev/kvm without permission (root bypasses modes, so use a directory).
    const noPerm = await probeAccelerator({
      qemu,
      kvmDevice: process.getuid?.() === 0 ? '/proc/1/mem' : dir,
    });
    expect(noPerm.accelerator).toBe('tcg');
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
