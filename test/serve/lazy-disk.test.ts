import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/log.js';
import {
  BLOCK_SIZE,
  ContentRoot,
  FRAME_BLOCKS,
  ZERO_BLOCK_DIGEST,
  type PackRef,
} from '../../src/formats/disk-index.js';
import { OciLayout } from '../../src/oci/layout.js';
import { Filler } from '../../src/serve/fill.js';
import { LazyDisk, type RangeFetcher } from '../../src/serve/lazy-disk.js';
import { openDiskV2 } from '../../src/serve/open-image.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { pattern } from '../helpers/oci-images.js';
import { buildV2Layout, type V2Image } from '../helpers/v2-layout.js';

const B = BLOCK_SIZE;

/** 6 MiB + 4.5 KiB: text, zeros, random, repeats (across and inside frames), a partial last block. */
function makeDisk(): Buffer {
  const d = Buffer.alloc(6 * 1024 * 1024 + 4608);
  pattern(1, 16 * B, true).copy(d, 0);
  randomBytes(20 * B).copy(d, 41 * B);
  d.copy(d, 61 * B, 0, 10 * B);
  const same = pattern(7, B, true);
  same.copy(d, 71 * B);
  same.copy(d, 72 * B);
  for (let b = 80; b < 190; b += 3) pattern(100 + b, B, b % 2 === 0).copy(d, b * B);
  pattern(9, d.length - 192 * B).copy(d, 192 * B);
  return d;
}

interface Fetcher {
  fetch: RangeFetcher;
  calls: number;
  bytes: number;
  /** return true to fail this call (an unreachable store) */
  fail?: (call: number) => boolean;
  /** return true to flip a byte of this answer */
  flip?: (call: number) => boolean;
}

function layoutFetcher(dir: string): Fetcher {
  const layout = new OciLayout(dir);
  const f: Fetcher = {
    calls: 0,
    bytes: 0,
    fetch: async (pack: PackRef, start: number, length: number) => {
      const call = ++f.calls;
      if (f.fail?.(call)) throw new OrbError('network', `connection refused (call ${call})`);
      const fh = await open(layout.blobPath(pack.digest), 'r');
      try {
        const buf = Buffer.alloc(length);
        await fh.read(buf, 0, length, start);
        f.bytes += length;
        if (f.flip?.(call)) buf[length >> 1]! ^= 0xff;
        return buf;
      } finally {
        await fh.close();
      }
    },
  };
  return f;
}

function memLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    info: (m) => lines.push(`info ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    error: (m) => lines.push(`error ${m}`),
    debug: () => {},
  };
}

let root: string;
let disk: Buffer;
let image: V2Image;
let n = 0;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'orb-lazy-'));
  disk = makeDisk();
  image = await buildV2Layout(disk, join(root, 'layout'), 'v1', { packSize: 1 << 20 });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function openDisk(f: Fetcher, opts: { cache?: string; retryMs?: number } = {}) {
  const log = memLog();
  const cache = opts.cache ?? join(root, `c${++n}`, 'disk.raw');
  const d = await LazyDisk.open({
    index: image.index,
    display: 'test',
    cache,
    fetch: f.fetch,
    log,
    retryMs: opts.retryMs ?? 10_000,
    flushMs: 200,
  });
  return { d, log, cache };
}

/** compressed bytes of the frames holding blocks [first, end) */
function framesBytes(first: number, end: number): number {
  const idx = image.index;
  const frames = new Set<number>();
  for (let e = 0; e < idx.entryCount; e++)
    if (idx.entryBlock[e]! >= first && idx.entryBlock[e]! < end) frames.add(idx.entryFrame[e]!);
  let n = 0;
  for (const f of frames) n += idx.frameLength[f]!;
  return n;
}

function rootOf(bytes: Buffer): string {
  const r = new ContentRoot(bytes.length);
  for (let at = 0; at < bytes.length; at += B) {
    const blk = Buffer.alloc(B);
    bytes.copy(blk, 0, at, at + B);
    const dg = createHash('sha256').update(blk).digest();
    if (dg.equals(ZERO_BLOCK_DIGEST)) r.zeros(1);
    else r.block(dg);
  }
  return r.digest();
}

describe('LazyDisk', () => {
  it('opens the image from a layout store with the checks pull runs', async () => {
    const store = new LayoutStore(image.dir);
    const opened = await openDiskV2(store, 'v1', 'oci-layout:test');
    expect(opened.index.contentDigest).toBe(image.contentDigest);
    expect(opened.index.entryCount).toBe(image.index.entryCount);
    expect(image.index.packs.length).toBeGreaterThan(1);
  });

  it('answers reads with the original bytes, fetching only the frames they need', async () => {
    const f = layoutFetcher(image.dir);
    const { d } = await openDisk(f);
    // zero blocks: no fetch
    expect((await d.read(16 * B, 20 * B)).equals(disk.subarray(16 * B, 36 * B))).toBe(true);
    expect(f.calls).toBe(0);
    const ranges: [number, number][] = [
      [0, 4096],
      [3 * B + 100, 2 * B],
      [45 * B - 512, 10 * B],
      [63 * B, 512],
      [71 * B, 2 * B],
      [disk.length - 9000, 9000],
    ];
    let want = 0;
    for (const [off, len] of ranges) {
      const before = f.bytes;
      const got = await d.read(off, len);
      expect(got.equals(disk.subarray(off, off + len)), `range ${off}+${len}`).toBe(true);
      const first = Math.floor(off / B);
      const fetched = f.bytes - before;
      // at most the frames of those blocks (less when an earlier read brought some)
      expect(fetched).toBeLessThanOrEqual(framesBytes(first, Math.ceil((off + len) / B)));
      want += fetched;
    }
    expect(d.stats.bytesFetched).toBe(want);
    expect(want).toBeLessThan(image.packBytes / 2);
    // again: all local now
    const calls = f.calls;
    for (const [off, len] of ranges)
      expect((await d.read(off, len)).equals(disk.subarray(off, off + len))).toBe(true);
    expect(f.calls).toBe(calls);
    // the status of zero runs and data runs
    const st = d.status(0, disk.length);
    expect(st[0]).toEqual({ length: 16 * B, zero: false });
    expect(st[1]).toEqual({ length: 25 * B, zero: true });
    expect(st.reduce((s, r) => s + r.length, 0)).toBe(disk.length);
    await d.close();
  });

  it('fetches a frame once for concurrent reads of it', async () => {
    const f = layoutFetcher(image.dir);
    const { d } = await openDisk(f);
    // every block of the first frame, each read twice, all at once
    const blocks = Array.from({ length: 2 * FRAME_BLOCKS }, (_, i) => i % FRAME_BLOCKS);
    const reads = await Promise.all(blocks.map((i) => d.read(i * B, B)));
    reads.forEach((r, k) => expect(r.equals(disk.subarray(blocks[k]! * B, (blocks[k]! + 1) * B))).toBe(true));
    expect(f.calls).toBe(1);
    expect(d.stats.frames).toBe(1);
    await d.close();
  });

  it('fills to the verified disk, with the same content digest, and reopens complete', async () => {
    const f = layoutFetcher(image.dir);
    const { d, cache } = await openDisk(f);
    const fill = new Filler(d, {});
    void fill.start();
    await d.whenComplete();
    expect(readFileSync(cache).equals(disk)).toBe(true);
    expect(rootOf(readFileSync(cache))).toBe(image.contentDigest);
    expect(existsSync(`${cache}.partial`)).toBe(false);
    expect(d.stats.bytesFetched).toBe(image.packBytes);
    await d.close();
    const again = layoutFetcher(image.dir);
    const { d: d2 } = await openDisk(again, { cache });
    expect(d2.complete).toBe(true);
    expect((await d2.read(0, disk.length)).equals(disk)).toBe(true);
    expect(again.calls).toBe(0);
    await d2.close();
  });

  it('continues after a restart from what is local', async () => {
    const f = layoutFetcher(image.dir);
    const { d, cache } = await openDisk(f);
    await d.read(0, 100 * B);
    const local = d.map.localCount;
    const first = f.bytes;
    await d.close();
    const g = layoutFetcher(image.dir);
    const { d: d2, log } = await openDisk(g, { cache });
    expect(d2.map.localCount).toBe(local);
    expect(log.lines.some((l) => l.includes('resuming'))).toBe(true);
    void new Filler(d2, {}).start();
    await d2.whenComplete();
    expect(first + g.bytes).toBe(image.packBytes);
    expect(readFileSync(cache).equals(disk)).toBe(true);
    await d2.close();
  });

  it('rejects a corrupted frame, fetches it again once, and never serves unverified bytes', async () => {
    const f = layoutFetcher(image.dir);
    f.flip = (call) => call === 1;
    const { d, log } = await openDisk(f);
    expect((await d.read(0, B)).equals(disk.subarray(0, B))).toBe(true);
    expect(d.stats.corrupt).toBe(1);
    expect(f.calls).toBe(2);
    expect(log.lines.some((l) => l.startsWith('warn') && l.includes('fetching the frame again'))).toBe(true);
    f.flip = () => true;
    const err = await d.read(45 * B, B).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe('integrity');
    expect(d.map.isLocal(d.map.entryOf(45))).toBe(false);
    // nothing of the bad frame reached the cache file
    const fh = await open(d.partialPath, 'r');
    const buf = Buffer.alloc(B);
    await fh.read(buf, 0, B, 45 * B);
    await fh.close();
    expect(buf.equals(Buffer.alloc(B))).toBe(true);
    f.flip = undefined;
    expect((await d.read(45 * B, B)).equals(disk.subarray(45 * B, 46 * B))).toBe(true);
    await d.close();
  });

  it('waits for an unreachable store with backoff, then fails the read with a clear line', async () => {
    const f = layoutFetcher(image.dir);
    f.fail = (call) => call <= 3;
    const { d, log } = await openDisk(f);
    expect((await d.read(80 * B, B)).equals(disk.subarray(80 * B, 81 * B))).toBe(true);
    expect(log.lines.some((l) => l.includes('the store answers again'))).toBe(true);
    await d.close();
    const g = layoutFetcher(image.dir);
    g.fail = () => true;
    const { d: d2, log: log2 } = await openDisk(g, { retryMs: 1200 });
    const t0 = Date.now();
    const err = await d2.read(80 * B, B).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1100);
    expect((err as OrbError).kind).toBe('network');
    expect(log2.lines.some((l) => l.startsWith('error') && l.includes('I/O error'))).toBe(true);
    expect(g.calls).toBeGreaterThan(2);
    await d2.close();
  });

  it('limits the fill rate and lets reads go first', async () => {
    const f = layoutFetcher(image.dir);
    const { d } = await openDisk(f);
    const rate = 1 << 20;
    const t0 = Date.now();
    const fill = new Filler(d, { rate, concurrency: 1 });
    void fill.start();
    await new Promise((r) => setTimeout(r, 300));
    const t1 = Date.now();
    expect((await d.read(disk.length - B, B)).equals(disk.subarray(disk.length - B))).toBe(true);
    expect(Date.now() - t1).toBeLessThan(1000);
    await d.whenComplete();
    const seconds = (Date.now() - t0) / 1000;
    expect(seconds).toBeGreaterThanOrEqual((d.stats.fillBytes - (512 << 10)) / rate);
    await d.close();
  });

  it('fills the blocks of a boot profile first, in its order', async () => {
    const g = layoutFetcher(image.dir);
    const order: number[] = [];
    const fetch = g.fetch;
    g.fetch = (pack, start, length, signal) => {
      order.push(start);
      return fetch(pack, start, length, signal);
    };
    const { d } = await openDisk(g);
    // a zero block (20) in a profile is skipped, not refused
    await new Filler(d, { profile: [182, 45, 20, 0], concurrency: 1, batchBytes: 1 }).start();
    const idx = image.index;
    const frameOf = (block: number) => idx.entryFrame[d.map.entryOf(block)]!;
    expect(order.slice(0, 3)).toEqual([182, 45, 0].map((b) => idx.frameOffset[frameOf(b)]));
    expect(d.complete).toBe(true);
    await d.close();
  });

  it.runIf(process.getuid?.() === 0)(
    'stops filling on a full disk and keeps serving verified bytes',
    async () => {
      const mnt = join(root, 'small');
      mkdirSync(mnt);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
      try {
        const f = layoutFetcher(image.dir);
        const { d, log } = await openDisk(f, { cache: join(mnt, 'disk.raw') });
        await new Filler(d, {}).start();
        expect(d.diskFull).toBe(true);
        expect(d.complete).toBe(false);
        expect(log.lines.some((l) => l.includes('the disk is full'))).toBe(true);
        expect((await d.read(0, disk.length)).equals(disk)).toBe(true);
        await d.close();
      } finally {
        execFileSync('umount', [mnt]);
      }
    },
  );
});
