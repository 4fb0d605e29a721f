import { execFileSync } from 'node:child_process';
import {
  copyFileSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
  closeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOverlay, inspectDisk } from '../../src/smoke/disk.js';
import { testGuestDisk } from '../helpers/guests.js';

let dir: string;
let guest: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-smoke-disk-'));
  guest = await testGuestDisk('rdp');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, data: Buffer): string {
  const p = join(dir, name);
  writeFileSync(p, data);
  return p;
}

/** Overwrites bytes at an offset (damaging a copy). */
function poke(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, data, 0, data.length, offset);
  closeSync(fd);
}

describe('image preflight', () => {
  it('accepts the raw test guest and the same disk as qcow2', async () => {
    const raw = await inspectDisk(guest);
    expect(raw).toMatchObject({ format: 'raw', suggestedFirmware: 'bios' });
    expect(raw.virtualSize).toBe(48 * 1024 * 1024);
    const q = join(dir, 'guest.qcow2');
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', guest, q]);
    expect(await inspectDisk(q)).toMatchObject({
      format: 'qcow2',
      check: 'clean',
      virtualSize: raw.virtualSize,
    });
  });

  it('suggests UEFI for a GPT disk', async () => {
    const mbr = Buffer.alloc(1024 * 1024);
    mbr[446 + 4] = 0xee; // protective MBR entry
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    expect(await inspectDisk(file('gpt.img', mbr))).toMatchObject({
      partitioning: 'gpt',
      suggestedFirmware: 'uefi',
    });
  });

  it('refuses damaged qcow2 metadata, naming what qemu-img check found', async () => {
    const q = join(dir, 'bad.qcow2');
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', guest, q]);
    const header = readFileSync(q).subarray(0, 64);
    const l1 = Number(header.readBigUInt64BE(40));
    poke(q, l1, Buffer.alloc(16, 0xff));
    await expect(inspectDisk(q)).rejects.toThrow(
      /bad\.qcow2 is not a bootable disk image: qemu-img check found its qcow2 metadata damaged: \d+ corruptions/,
    );
  });

  it('refuses a truncated qcow2, an empty file, blank and foreign data, compressed images', async () => {
    const q = join(dir, 'trunc.qcow2');
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', guest, q]);
    writeFileSync(q, readFileSync(q).subarray(0, 100));
    await expect(inspectDisk(q)).rejects.toThrow(
      /trunc\.qcow2 is not a bootable disk image: .*header too short/,
    );
    await expect(inspectDisk(file('empty.img', Buffer.alloc(0)))).rejects.toThrow(/the file is empty/);
    await expect(inspectDisk(file('zero.img', Buffer.alloc(1 << 20)))).rejects.toThrow(
      /first sector is empty/,
    );
    const text = Buffer.alloc(1 << 20, 'not a disk image, just text\n');
    await expect(inspectDisk(file('text.img', text))).rejects.toThrow(/no boot signature/);
    await expect(
      inspectDisk(file('odd.img', readFileSync(guest).subarray(0, 1000 * 1000 + 7))),
    ).rejects.toThrow(/not a multiple of 512: likely a truncated copy/);
    const zst = file('guest.img.zst', zstdCompressSync(readFileSync(guest).subarray(0, 1 << 20)));
    await expect(inspectDisk(zst)).rejects.toThrow(/zstd-compressed/);
    await expect(inspectDisk(join(dir, 'missing.img'))).rejects.toThrow(/does not exist/);
  });

  it('creates an overlay that leaves the image untouched', async () => {
    const copy = join(dir, 'copy.img');
    copyFileSync(guest, copy);
    const before = readFileSync(copy);
    const facts = await inspectDisk(copy);
    const overlay = join(dir, 'ov.qcow2');
    await createOverlay(facts, overlay);
    // write through the overlay as a guest would
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 1M', overlay], { stdio: 'ignore' });
    expect(readFileSync(copy).equals(before)).toBe(true);
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', overlay], { encoding: 'utf8' }),
    ) as Record<string, string>;
    expect(info['backing-filename']).toBe(copy);
    expect(info['backing-filename-format']).toBe('raw');
  });
});
