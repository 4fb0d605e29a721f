import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { startVm } from '../../src/qemu/runner.js';
import {
  buildBootDisk,
  buildExt4Disk,
  buildGuestInitramfs,
  buildInitramfs,
  guestAppend,
  guestKernel,
  guestKernelBoot,
  testCacheDir,
  testGuestDisk,
} from '../helpers/guests.js';
import { readCpio } from '../helpers/cpio.js';

const MTOOLS = { ...process.env, MTOOLS_SKIP_CHECK: '1' };

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe('test guest builders', { timeout: 200_000 }, () => {
  it('builds the initramfs without root: busybox, /init, device nodes, e1000; cached by recipe', async () => {
    const t0 = Date.now();
    const a = await buildGuestInitramfs();
    const b = await buildGuestInitramfs();
    expect(b).toBe(a);
    expect(a.startsWith(testCacheDir())).toBe(true);
    expect(Date.now() - t0).toBeLessThan(30_000);
    const entries = readCpio(gunzipSync(readFileSync(a)));
    const byName = new Map(entries.map((e) => [e.name, e]));
    expect(byName.get('init')!.mode & 0o777).toBe(0o755);
    expect(byName.get('bin/busybox')!.data.length).toBeGreaterThan(1_000_000);
    expect(byName.get('dev/console')!.rdev).toEqual([5, 1]);
    expect(byName.get('lib/modules/e1000.ko')!.data.subarray(1, 4).toString()).toBe('ELF');
    expect(byName.get('sbin/ip')!.data.toString()).toBe('/bin/busybox');
    // A different recipe is a different artefact.
    const other = await buildGuestInitramfs({ variants: { extra: 'orb_marker extra' } });
    expect(other).not.toBe(a);
    expect(guestKernel().path).toMatch(/^\/boot\/vmlinuz-/);
  });

  it('builds a FAT boot disk for BIOS (syslinux boot sector) and UEFI (\\EFI\\BOOT\\BOOTX64.EFI)', async () => {
    const disk = await testGuestDisk('rdp');
    expect(statSync(disk).size).toBe(48 * 1024 * 1024);
    expect(readAt(disk, 510, 2).toString('hex')).toBe('55aa');
    const listing = execFileSync('mdir', ['-/', '-a', '-b', '-i', disk, '::/'], {
      env: MTOOLS,
      encoding: 'utf8',
    });
    for (const f of [
      '::/vmlinuz',
      '::/initrd.img',
      '::/syslinux.cfg',
      '::/ldlinux.sys',
      '::/EFI/BOOT/BOOTX64.EFI',
      '::/loader/entries/orb.conf',
    ]) {
      expect(listing).toContain(f);
    }
    const entry = execFileSync('mtype', ['-i', disk, '::/loader/entries/orb.conf'], {
      env: MTOOLS,
      encoding: 'utf8',
    });
    expect(entry).toContain(`options ${guestAppend('rdp')}`);
    const withFiles = await buildBootDisk({
      append: 'x',
      files: { '/data/readme.txt': 'hello' },
      sizeMiB: 40,
    });
    expect(
      execFileSync('mtype', ['-i', withFiles, '::/data/readme.txt'], { env: MTOOLS, encoding: 'utf8' }),
    ).toBe('hello');
  });

  it('builds raw ext4 disks with content, whole-disk or MBR-partitioned', async () => {
    const whole = await buildExt4Disk({
      sizeMiB: 24,
      files: { '/etc/hello.txt': 'hello ext4\n' },
      fillMiB: 2,
    });
    expect(statSync(whole).size).toBe(24 * 1024 * 1024);
    expect(
      execFileSync('debugfs', ['-R', 'cat /etc/hello.txt', whole], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }),
    ).toBe('hello ext4\n');
    expect(
      execFileSync('debugfs', ['-R', 'stat /fill.bin', whole], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }),
    ).toMatch(/Size: 2097152/);
    const parted = await buildExt4Disk({ sizeMiB: 24, files: { '/a.txt': 'a' }, partitioned: true });
    const mbr = readAt(parted, 0, 512);
    expect(mbr.readUInt16LE(510)).toBe(0xaa55);
    expect(mbr[446 + 4]).toBe(0x83);
    expect(mbr.readUInt32LE(446 + 8)).toBe(2048);
    expect(readAt(parted, 1024 * 1024 + 1024 + 56, 2).readUInt16LE(0)).toBe(0xef53); // ext4 superblock magic
    // Same recipe, same bytes (fixed UUIDs and times): caches and digests are stable.
    expect(await buildExt4Disk({ sizeMiB: 24, files: { '/a.txt': 'a' }, partitioned: true })).toBe(parted);
  });

  it('composes: a custom variant serving HTTP on 8006 next to RDP, and a custom init that powers off', async () => {
    const web = await startVm({
      ...(await guestKernelBoot('web', {
        variants: { web: 'orb_net_up\norb_rdp_serve\norb_http_serve 8006 /www' },
        files: { '/www/index.html': 'orb web ok\n' },
      })),
      memoryMiB: 192,
      network: { forwards: [{ guestPort: 8006 }, { guestPort: 3389 }] },
      name: 'guest-web',
    });
    const custom = await startVm({
      kernel: guestKernel().path,
      initrd: await buildInitramfs({
        init: 'mount -t proc proc /proc\necho INSTALLER-DONE $(cat /etc/flavour)\npoweroff -f\n',
        files: { '/etc/flavour': 'installer' },
      }),
      append: 'console=ttyS0 quiet panic=-1',
      memoryMiB: 192,
      name: 'guest-custom',
    });
    try {
      await web.waitForSerial('http-listening 8006', 150_000);
      const res = await fetch(`http://127.0.0.1:${web.ports[8006]}/index.html`);
      expect(await res.text()).toBe('orb web ok\n');
      expect(web.ports[3389]).toBeGreaterThan(0);
      const exit = await custom.waitForExit(150_000);
      expect(exit.guestInitiated).toBe(true);
      expect(custom.serialText()).toContain('INSTALLER-DONE installer');
    } finally {
      await Promise.all([web.dispose(), custom.dispose()]);
    }
  });
});
