import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { deviceSize } from '../../src/transfer/block-device.js';
import { pull } from '../../src/transfer/pull.js';
import { orb } from '../helpers/cli.js';
import { makeDisk } from '../helpers/oci-images.js';
import { writeV2Image, type V2Image } from '../helpers/v2-images.js';

/**
 * `orb pull --output /dev/loopN`: a loop device on a sparse file stands for a Kubernetes PVC with
 * volumeMode: Block. The device starts full of random bytes (a recycled volume), so zero ranges
 * that are not zeroed would show when read back. Needs root (losetup); skipped otherwise.
 */
const MiB = 1 << 20;
const CHUNK = MiB;
const SIZE = 16 * MiB;
const canLoop = process.getuid?.() === 0 && existsSync('/dev/loop-control');
let dir: string;
const loops: string[] = [];
let dev: string;
let small: string;
let v1: V2Image;
let v2: V2Image;
let sum1: string;
let sum2: string;
/** 32 KiB blocks per 1 MiB chunk of the test disks */
const PER = CHUNK / (32 << 10);

function losetup(file: string): string {
  const d = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
  loops.push(d);
  return d;
}

/** Bytes the kernel wrote to a block device (sysfs stat: sectors written, field 7). */
function writtenBytes(d: string): number {
  const f = readFileSync(`/sys/block/${d.replace('/dev/', '')}/stat`, 'utf8')
    .trim()
    .split(/\s+/);
  return Number(f[6]) * 512;
}

/** sha256 of the first `n` bytes of a device (or file). */
function headSha(path: string, n: number): string {
  const fd = openSync(path, 'r');
  const h = createHash('sha256');
  const buf = Buffer.alloc(4 * MiB);
  try {
    for (let at = 0; at < n;) {
      const got = readSync(fd, buf, 0, Math.min(buf.length, n - at), at);
      if (!got) throw new Error(`${path} ended at ${at}`);
      h.update(buf.subarray(0, got));
      at += got;
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

const opts = (layout: string, tag: string, output: string) => ({
  source: new LayoutStore(layout),
  ref: tag,
  display: `oci-layout:${layout}:${tag}`,
  output,
  format: 'auto' as const,
  concurrency: 3,
  log: silentLogger,
  progress: () => nullProgress,
});

describe.skipIf(!canLoop)('pull to a block device (loop device)', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'orb-blk-'));
    process.env.ORB_STATE_DIR = join(dir, 'state');
    // v1: 3 of 4 chunks hold data. v2: chunks 1 and 5 changed, chunk 2 now zero, chunk 3 now data.
    sum1 = makeDisk(join(dir, 'v1.raw'), { size: SIZE, chunkSize: CHUNK });
    sum2 = makeDisk(join(dir, 'v2.raw'), {
      size: SIZE,
      chunkSize: CHUNK,
      data: (i) => (i === 2 ? false : i === 3 ? true : i % 4 !== 3),
      seed: (i) => (i === 1 || i === 5 ? 100 + i : i + 1),
    });
    v1 = await writeV2Image(join(dir, 'v1.raw'), join(dir, 'v1'), 'v1', { packSize: 4 * MiB });
    v2 = await writeV2Image(join(dir, 'v2.raw'), join(dir, 'v2'), 'v2', { packSize: 4 * MiB, base: v1 });
    // the backing files: sparse, then filled with old bytes as a reused volume would be
    const back = join(dir, 'pvc.img');
    const fd = openSync(back, 'w');
    for (let at = 0; at < SIZE + 4 * MiB; at += 4 * MiB) writeSync(fd, randomBytes(4 * MiB), 0, 4 * MiB, at);
    closeSync(fd);
    dev = losetup(back);
    execFileSync('truncate', ['-s', String(8 * MiB), join(dir, 'small.img')]);
    small = losetup(join(dir, 'small.img'));
  });

  afterAll(() => {
    for (const d of loops) {
      try {
        execFileSync('losetup', ['-d', d]);
      } catch {
        /* already gone */
      }
    }
    delete process.env.ORB_STATE_DIR;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reports the device size from sysfs', async () => {
    expect(await deviceSize(dev)).toBe(SIZE + 4 * MiB);
  });

  it('writes the disk in place, zeroing the ranges without data, and reads back identical', async () => {
    const r = await pull(opts(v1.dir, 'v1', dev));
    expect(r.path).toBe(dev);
    expect(r.format).toBe('raw');
    expect(headSha(dev, SIZE)).toBe(sum1);
    // nothing was created beside the device, and the journal was removed from the state dir
    expect(existsSync(`${dev}.partial`)).toBe(false);
    expect(readdirSync(join(dir, 'state'))).toEqual([]);
  });

  it('updates in place with --base being the device: only changed blocks are downloaded', async () => {
    const before = writtenBytes(dev);
    const r = await pull({ ...opts(v2.dir, 'v2', dev), base: dev });
    const written = writtenBytes(dev) - before;
    expect(headSha(dev, SIZE)).toBe(sum2);
    // the kernel's count of bytes written to the device: 3 changed chunks and 1 zeroed, not 12
    console.log(`in-place update wrote ${written / MiB} MiB to ${dev}`);
    expect(written).toBeLessThanOrEqual(5 * MiB);
    // v2 holds 12 data chunks (chunk 2 went to zero, chunk 3 came in); new or changed: 1, 3 and 5
    expect(r.chunksDownloaded).toBe(3 * PER);
    expect(r.chunksReused).toBe(9 * PER);
  });

  it('orb pull --output /dev/loopN --base /dev/loopN through the CLI bundle', async () => {
    // back to v1 in place, as the Kubernetes Job runs it
    const r = await orb(['pull', `oci-layout:${v1.dir}:v1`, '--output', dev, '--base', dev, '--json'], {
      ORB_STATE_DIR: join(dir, 'state'),
    });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({
      path: dev,
      format: 'raw',
      'chunks-downloaded': 3 * PER,
      'chunks-reused': 9 * PER,
    });
    expect(out['content-digest']).toBe(v1.index.contentDigest);
    expect(headSha(dev, SIZE)).toBe(sum1);
  });

  it('refuses a device smaller than the disk, before writing anything', async () => {
    const before = headSha(small, 8 * MiB);
    await expect(pull(opts(v1.dir, 'v1', small))).rejects.toThrow(/holds 8\.0 MiB .*needs 16\.0 MiB/);
    expect(headSha(small, 8 * MiB)).toBe(before);
  });

  it('refuses --format qcow2 on a device', async () => {
    await expect(pull({ ...opts(v1.dir, 'v1', dev), format: 'qcow2' })).rejects.toThrow(/cannot be written/);
  });
});
