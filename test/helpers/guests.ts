/**
 * The test suite's guests: the builders live in src/guest/ (orb demo uses them too); this module
 * re-exports them and adds fixtures only tests need (ext4 disks with content).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { cached, fileData, type GuestFile } from '../../src/guest/initramfs.js';

export * from '../../src/guest/guests.js';
export { guestCacheDir as testCacheDir } from '../../src/guest/initramfs.js';

const exec = promisify(execFile);

export interface Ext4DiskOptions {
  /** total image size in MiB */
  sizeMiB: number;
  /** files to put in the file system by path */
  files?: Record<string, GuestFile>;
  /** additionally write this many MiB of pseudo-random (incompressible, deterministic) data in /fill.bin */
  fillMiB?: number;
  /** an MBR partition table with one Linux partition starting at 1 MiB (default: whole-disk file system) */
  partitioned?: boolean;
  label?: string;
}

/** Deterministic incompressible bytes (xorshift), so cached fixtures are reproducible. */
function pseudoRandom(bytes: number, seed = 0x9e3779b9): Buffer {
  const buf = Buffer.alloc(bytes);
  let x = seed >>> 0;
  for (let i = 0; i + 4 <= bytes; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, i);
  }
  return buf;
}

/** Writes a DOS partition table with one partition (sfdisk is not always installed; this is 16 bytes). */
async function writeMbr(img: string, startLba: number, sectors: number, type: number): Promise<void> {
  const mbr = Buffer.alloc(512);
  mbr.writeUInt32LE(0x6f726221, 440); // disk signature
  const e = 446;
  mbr[e] = 0x00; // not active
  mbr.set([0xfe, 0xff, 0xff], e + 1); // CHS unused: LBA only
  mbr[e + 4] = type;
  mbr.set([0xfe, 0xff, 0xff], e + 5);
  mbr.writeUInt32LE(startLba, e + 8);
  mbr.writeUInt32LE(sectors, e + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const fh = await open(img, 'r+');
  try {
    await fh.write(mbr, 0, 512, 0);
  } finally {
    await fh.close();
  }
}

/** A raw disk with a real ext4 file system and content (mkfs.ext4 -d, no root). Returns the cached path. */
export function buildExt4Disk(opts: Ext4DiskOptions): Promise<string> {
  const recipe = { ...opts, files: opts.files ?? {} };
  return cached('ext4disk', recipe, '.img', async (img) => {
    const work = await mkdtemp(join(tmpdir(), 'orb-ext4-'));
    try {
      const root = join(work, 'root');
      await mkdir(root);
      for (const [path, f] of Object.entries(opts.files ?? {})) {
        const local = join(root, path);
        await mkdir(dirname(local), { recursive: true });
        const { data, mode } = fileData(f);
        await writeFile(local, data, { mode });
      }
      if (opts.fillMiB) await writeFile(join(root, 'fill.bin'), pseudoRandom(opts.fillMiB * 1024 * 1024));
      await exec('truncate', ['-s', `${opts.sizeMiB}M`, img]);
      const offset = opts.partitioned ? 1024 * 1024 : 0;
      const fsBytes = opts.sizeMiB * 1024 * 1024 - offset;
      // Fixed UUID and hash seed: the same recipe gives the same bytes.
      const args = [
        '-q',
        '-F',
        '-t',
        'ext4',
        '-L',
        opts.label ?? 'orbdata',
        '-U',
        '6f7262d0-0000-4000-8000-000000000001',
        '-E',
        `offset=${offset},hash_seed=6f7262d0-0000-4000-8000-000000000002,root_owner=0:0`,
        '-d',
        root,
        img,
        `${fsBytes / 1024}k`,
      ];
      await exec('mkfs.ext4', args, { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' } });
      if (opts.partitioned) await writeMbr(img, 2048, fsBytes / 512, 0x83);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}
