import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatBytes } from '../core/progress.js';
import { run, which } from '../core/proc.js';
import { isZero } from './pull-output.js';

/**
 * `orb pull --output /dev/XYZ`: the disk is written in place on a block device (what a
 * Kubernetes PVC with `volumeMode: Block` gives a pod). A device cannot be created, renamed,
 * truncated or given a `.partial` sibling, and it does not read back zeros where nothing was
 * written (a recycled volume holds its previous tenant's bytes), so:
 *  - the journal and spool live in a state directory (ORB_STATE_DIR, default the temp dir);
 *  - the ranges the image has no data in are read, and only the pieces that are not already
 *    zero are zeroed: with `blkdiscard --zeroout` (BLKZEROOUT: the device zeroes, often by
 *    unmapping, without the bytes crossing the bus) when util-linux has it, else by writing
 *    zeros. Discard alone (BLKDISCARD) is not used: a device may keep old data after it.
 *    Reading first costs a read of the empty ranges but no write where the device already
 *    reads zeros: a fresh thin volume, or an in-place update whose zero ranges did not change.
 */
export interface BlockTarget {
  path: string;
  size: number;
  journalPath: string;
  spoolDir: string;
}

export async function isBlockDevice(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isBlockDevice() ?? false;
}

/** Bytes of a block device (stat says 0): sysfs by device number, else `blockdev --getsize64`. */
export async function deviceSize(path: string): Promise<number> {
  const st = await stat(path);
  const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
  const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
  const sectors = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8').catch(() => '');
  if (/^\d+\s*$/.test(sectors)) return Number(sectors) * 512;
  const blockdev = sbin('blockdev');
  if (blockdev) {
    const r = await run(blockdev, ['--getsize64', path]);
    if (r.code === 0 && /^\d+\s*$/.test(r.stdout)) return Number(r.stdout);
  }
  // Last resort: the kernel reports the end of a device to a seek; Node has no lseek, so read.
  const fh = await open(path, 'r');
  try {
    let lo = 0;
    let hi = 2 ** 50;
    const b = Buffer.alloc(1);
    while (lo < hi) {
      const mid = Math.floor((lo + hi + 1) / 2);
      const { bytesRead } = await fh.read(b, 0, 1, mid - 1);
      if (bytesRead === 1) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  } finally {
    await fh.close();
  }
}

/** Device output checks, before anything is written: raw only, and room for the whole disk. */
export async function blockTarget(
  path: string,
  need: { size: number; kind: 'disk' | 'file'; format: string },
): Promise<BlockTarget> {
  if (need.format !== 'raw' && need.format !== 'auto')
    throw new UsageError(
      `--format ${need.format} cannot be written to the block device ${path}`,
      'a device holds the raw disk: drop --format, or pull to a file to get a qcow2',
    );
  const size = await deviceSize(path);
  if (size < need.size)
    throw new OrbError(
      'environment',
      `${path} holds ${formatBytes(size)} (${size} bytes); the image needs ${formatBytes(need.size)} (${need.size} bytes)`,
      {
        hint: `give a device (or a PersistentVolumeClaim with volumeMode: Block) of at least ${Math.ceil(need.size / 2 ** 30)} GiB`,
      },
    );
  const state = process.env.ORB_STATE_DIR || tmpdir();
  const key = `orb-pull${path.replace(/[^A-Za-z0-9]+/g, '-')}`;
  return { path, size, journalPath: join(state, `${key}.journal`), spoolDir: join(state, `${key}.d`) };
}

const PIECE = 4 << 20;

/** util-linux lives in /usr/sbin, which a non-login PATH (a container's) may lack. */
const sbin = (cmd: string) => which(cmd, `${process.env.PATH ?? ''}:/usr/sbin:/sbin`);

/**
 * Makes every `ranges` entry read back as zeros, writing only where it does not already.
 * Returns the bytes that had to be zeroed.
 */
export async function zeroRanges(
  fh: FileHandle,
  path: string,
  ranges: readonly { offset: number; length: number }[],
  log: Logger,
  signal?: AbortSignal,
): Promise<number> {
  const buf = Buffer.allocUnsafe(PIECE);
  const dirty: { offset: number; length: number }[] = [];
  for (const r of ranges) {
    for (let at = r.offset; at < r.offset + r.length; at += PIECE) {
      signal?.throwIfAborted();
      const n = Math.min(PIECE, r.offset + r.length - at);
      let got = 0;
      while (got < n) {
        const { bytesRead } = await fh.read(buf, got, n - got, at + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got === n && isZero(buf.subarray(0, n))) continue;
      const last = dirty[dirty.length - 1];
      if (last && last.offset + last.length === at) last.length += n;
      else dirty.push({ offset: at, length: n });
    }
  }
  const total = dirty.reduce((a, d) => a + d.length, 0);
  if (!total) return 0;
  log.info(`zeroing ${formatBytes(total)} of ${path} that the image has no data in`);
  const blkdiscard = sbin('blkdiscard');
  const zeros = Buffer.alloc(PIECE);
  for (const d of dirty) {
    // BLKZEROOUT wants whole logical sectors; every range here starts and ends on a chunk edge
    // or the disk's end, which a device of 512- or 4096-byte sectors divides.
    if (blkdiscard && d.offset % 512 === 0 && d.length % 512 === 0) {
      const r = await run(blkdiscard, ['--zeroout', '-o', String(d.offset), '-l', String(d.length), path]);
      if (r.code === 0) continue;
      log.debug(`blkdiscard --zeroout failed (${r.stderr.trim()}): writing zeros`);
    }
    for (let at = d.offset; at < d.offset + d.length;) {
      const n = Math.min(PIECE, d.offset + d.length - at);
      const { bytesWritten } = await fh.write(zeros, 0, n, at);
      at += bytesWritten;
    }
  }
  return total;
}
