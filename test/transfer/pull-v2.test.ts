import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { RegistryClient } from '../../src/oci/registry.js';
import type { BlobStore } from '../../src/stores/store.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { planFetches } from '../../src/transfer/pull-ranges.js';
import { defaultRetryPolicy } from '../../src/net/retry.js';
import { pattern } from '../helpers/oci-images.js';
import { pushV2, writeV2Image, writeV2Variant, type V2Image } from '../helpers/v2-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';

/**
 * The v2 pull engine end to end (docs/chunked-format.md, "Pull planning"): exact bytes back
 * from a layout and a registry, only the changed blocks fetched with a base, adjacent frames in
 * one request, stores that ignore Range, resumption, and hostile packs.
 */
process.env.ORB_RETRY_BASE_MS = '10';
process.env.ORB_JOURNAL_INTERVAL_MS = '20';
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));

const B = 32 << 10;
const BLOCKS = 384; // 12 MiB disk
let dir: string;
let reg: Registry;
let proxy: FaultProxy;
let v1: V2Image;
let v2: V2Image;
let sum1: string;
let sum2: string;

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const fileSha = (p: string) => sha(readFileSync(p));

function writeDisk(path: string, block: (i: number) => Buffer | undefined): string {
  const fd = openSync(path, 'w');
  const all = Buffer.alloc(BLOCKS * B);
  ftruncateSync(fd, BLOCKS * B);
  for (let i = 0; i < BLOCKS; i++) {
    const b = block(i);
    if (!b) continue;
    writeSync(fd, b, 0, B, i * B);
    b.copy(all, i * B);
  }
  closeSync(fd);
  return sha(all);
}

// v1: compressible blocks, every 5th zero, blocks 40..47 repeat 0..7 (dedupe)
const block1 = (i: number) =>
  i % 5 === 4 ? undefined : pattern(i >= 40 && i < 48 ? i - 40 + 1 : i + 1, B, true);
// v2: 6 blocks changed, block 100's content copied to block 4 (a zero block of v1), one new
// zero, and block 150's content moved to block 9 (zero in v1) leaving 150 zero
const changed = new Set([10, 11, 12, 200, 201, 300]);
const block2 = (i: number) => {
  if (i === 4) return block1(100);
  if (i === 9) return block1(150);
  if (i === 250 || i === 150) return undefined;
  if (changed.has(i)) return pattern(5000 + i, B, true);
  return block1(i);
};

const lines: string[] = [];
const log: Logger = {
  ...silentLogger,
  info: (m: string) => void lines.push(m),
  warn: (m: string) => void lines.push(m),
} as Logger;

function layout(d = join(dir, 'layout')): LayoutStore {
  return new LayoutStore(d);
}

function registry(repo: string, host = reg.host): RegistryStore {
  return new RegistryStore(
    new RegistryClient({
      ref: { host, apiHost: host, repository: repo },
      credentials: null,
      log: silentLogger,
    }),
  );
}

const opts = (source: BlobStore, ref: string, output: string) => ({
  source,
  ref,
  display: ref,
  output,
  format: 'raw' as const,
  concurrency: 4,
  log,
  progress: () => nullProgress,
});

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-pv2-'));
  sum1 = writeDisk(join(dir, 'v1.raw'), block1);
  sum2 = writeDisk(join(dir, 'v2.raw'), block2);
  v1 = await writeV2Image(join(dir, 'v1.raw'), join(dir, 'layout'), 'v1', { packSize: 1 << 20 });
  v2 = await writeV2Image(join(dir, 'v2.raw'), join(dir, 'layout'), 'v2', { packSize: 1 << 20, base: v1 });
  reg = await startRegistry();
  proxy = await startFaultProxy(reg.url);
  for (const tag of ['v1', 'v2'])
    await publish({
      source: `oci-layout:${join(dir, 'layout')}:${tag}`,
      target: registry('pv2/disk'),
      tags: [tag],
      concurrency: 4,
      partSize: 1 << 30,
      log: silentLogger,
      progress: () => nullProgress,
    });
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('v2 pull', () => {
  it('the test images are what the format says: several packs, dedupe, a base reused', () => {
    expect(v1.index.packs.length).toBeGreaterThan(2);
    expect(v1.index.entryCount).toBe(
      Array.from({ length: BLOCKS }, (_, i) => block1(i)).filter(Boolean).length,
    );
    // blocks 40..47 repeat 0..7 (4 and 44 are zero): 7 stored once
    expect(v1.index.frameBlocks.reduce((a, b) => a + b, 0)).toBe(v1.index.entryCount - 7);
    // v2 lists v1's packs and adds one small pack of new blocks
    expect(v2.packs.slice(0, v1.packs.length)).toEqual(v1.packs);
    expect(v2.packs.length).toBe(v1.packs.length + 1);
  });

  it('a fresh pull from a layout is byte-identical and sparse, and reports the content root', async () => {
    const out = join(dir, 'fresh.raw');
    const r = await pull({ ...opts(layout(), 'v1', out), manifestPath: join(dir, 'fresh.orb.json') });
    expect(fileSha(out)).toBe(sum1);
    expect(r.contentDigest).toBe(v1.index.contentDigest);
    expect(r.contentSha256).toBeUndefined();
    expect(r.chunks).toBe(v1.index.entryCount);
    expect(statSync(out).blocks * 512).toBeLessThan(BLOCKS * B);
    const m = JSON.parse(readFileSync(join(dir, 'fresh.orb.json'), 'utf8')) as {
      image: { contentDigest: string };
    };
    expect(m.image.contentDigest).toBe(v1.index.contentDigest);
    expect(readdirSync(dir).filter((f) => f.includes('.partial'))).toEqual([]);
  });

  it('a fresh pull through a registry is byte-identical; most packs come whole', async () => {
    const out = join(dir, 'reg.raw');
    const r = await pull(opts(registry('pv2/disk'), 'v2', out));
    expect(fileSha(out)).toBe(sum2);
    expect(r.contentDigest).toBe(v2.index.contentDigest);
    expect(r.wholePacks! + r.ranges!).toBeGreaterThan(0);
  });

  it('--base with the earlier disk fetches only the changed blocks; moved content is copied', async () => {
    const out = join(dir, 'upd.raw');
    lines.length = 0;
    const before = proxy.log.length;
    const r = await pull({ ...opts(registry('pv2/disk', proxy.host), 'v2', out), base: join(dir, 'v1.raw') });
    const gets = proxy.log.slice(before).filter((e) => /\/blobs\/sha256:/.test(e.url) && e.method === 'GET');
    expect(fileSha(out)).toBe(sum2);
    // 6 changed blocks, compressed, in one small pack; block 4 came from v1's block 100
    expect(r.chunksDownloaded).toBe(changed.size);
    expect(r.chunksReused).toBe(v2.index.entryCount - changed.size);
    expect(lines.some((l) => /moved content/.test(l))).toBe(true);
    const newPack = v2.packs[v2.packs.length - 1]!;
    expect(r.bytesDownloaded).toBeLessThanOrEqual(newPack.size);
    // on the wire: the config, the index and the new pack, nothing of the old packs
    const packGets = gets.filter((e) => v2.packs.some((p) => e.url.includes(p.digest)));
    expect(packGets.map((e) => e.url.split('/').pop())).toEqual([newPack.digest]);
    const wire = gets.reduce((a, e) => a + (e.bytes ?? 0), 0);
    expect(wire).toBe(newPack.size + v2.indexBlob.length + v2.manifest.config.size);
  });

  it('--base with a v2 layout decodes unchanged blocks from its packs', async () => {
    const out = join(dir, 'upd2.raw');
    const r = await pull({
      ...opts(registry('pv2/disk'), 'v2', out),
      base: `oci-layout:${join(dir, 'layout')}:v1`,
    });
    expect(fileSha(out)).toBe(sum2);
    expect(r.chunksDownloaded).toBe(changed.size);
  });

  it('coalesces adjacent frames into one range and caps ranges; a mostly needed pack comes whole', () => {
    const idx = v1.index;
    const need = new Uint8Array(idx.frameCount).fill(1);
    const all = planFetches(idx, need);
    expect(all.whole.length).toBe(idx.packs.length);
    expect(all.ranges).toEqual([]);
    // every other frame of pack 0: gaps under 256 KiB merge into one range
    const some = new Uint8Array(idx.frameCount);
    for (let f = 0; f < idx.frameCount; f++) if (idx.framePack[f] === 0 && f % 2 === 0) some[f] = 1;
    const p = planFetches(idx, some, { whole: 2 });
    expect(p.ranges.length).toBe(1);
    const capped = planFetches(idx, some, { whole: 2, cap: 40 << 10, gap: 1 });
    expect(capped.ranges.length).toBe(some.reduce((a, b) => a + b, 0));
  });

  it('going back (v1 over the v2 disk) reads a few ranges of the old packs', async () => {
    const out = join(dir, 'back.raw');
    const before = proxy.log.length;
    const r = await pull({ ...opts(registry('pv2/disk', proxy.host), 'v1', out), base: join(dir, 'v2.raw') });
    const blobGets = proxy.log
      .slice(before)
      .filter((e) => /\/blobs\/sha256:/.test(e.url) && e.method === 'GET');
    expect(fileSha(out)).toBe(sum1);
    expect(r.wholePacks).toBe(0);
    // one request per needed frame at most (frames far apart here; merging is tested on the planner)
    const frames = new Set<number>();
    for (let i = 0; i < v1.index.entryCount; i++) {
      const blk = v1.index.entryBlock[i]!;
      if (changed.has(blk) || blk === 250) frames.add(v1.index.entryFrame[i]!);
    }
    expect(r.ranges).toBeGreaterThan(0);
    expect(r.ranges).toBeLessThanOrEqual(frames.size);
    // config and index, then one ranged GET per range, nothing else
    const ranged = blobGets.filter((e) => e.headers.range);
    expect(ranged.length).toBe(r.ranges);
    expect(ranged.reduce((a, e) => a + (e.bytes ?? 0), 0)).toBe(r.bytesDownloaded);
    const packBytes = v1.packs.reduce((a, p) => a + p.size, 0);
    expect(r.bytesDownloaded).toBeLessThan(packBytes / 4);
  });

  it('a store that ignores Range: whole packs, said once', async () => {
    const rule = proxy.add({ header: 'range', action: { type: 'ignore-range' } });
    try {
      lines.length = 0;
      // v1 over a v2 disk: a few frames of v1's packs, normally ranges
      const out = join(dir, 'norange.raw');
      const r = await pull({
        ...opts(registry('pv2/disk', proxy.host), 'v1', out),
        base: join(dir, 'v2.raw'),
      });
      expect(fileSha(out)).toBe(sum1);
      expect(r.ranges).toBe(0);
      expect(lines.filter((l) => /ignores HTTP Range/.test(l)).length).toBe(1);
      expect(r.wholePacks).toBeGreaterThan(0);
    } finally {
      proxy.remove(rule);
    }
  });

  it('resumes after a reset mid-range, fetching only what is missing', async () => {
    const out = join(dir, 'resume.raw');
    const rule = proxy.add({
      path: /\/blobs\//,
      skip: 3,
      action: { type: 'reset-response', afterBytes: 100_000 },
    });
    const prev = process.env.ORB_RETRY_ATTEMPTS;
    process.env.ORB_RETRY_ATTEMPTS = '1';
    let failed: unknown;
    try {
      await pull({
        ...opts(registry('pv2/disk', proxy.host), 'v1', out),
        retry: { ...defaultRetryPolicy(), attempts: 1, baseDelayMs: 1 },
      });
    } catch (err) {
      failed = err;
    } finally {
      proxy.remove(rule);
      if (prev === undefined) delete process.env.ORB_RETRY_ATTEMPTS;
      else process.env.ORB_RETRY_ATTEMPTS = prev;
    }
    expect(failed).toBeInstanceOf(OrbError);
    expect(existsSync(out + '.partial')).toBe(true);
    expect(existsSync(out)).toBe(false);
    const r = await pull(opts(registry('pv2/disk', proxy.host), 'v1', out));
    expect(fileSha(out)).toBe(sum1);
    expect(r.bytesResumed).toBeGreaterThan(0);
    expect(r.bytesDownloaded).toBeLessThan(v1.packs.reduce((a, p) => a + p.size, 0));
  });
});

describe('v2 pull: resume inside ranges', () => {
  it('a connection reset mid-range fails the run; the rerun fetches only the missing frames', async () => {
    const out = join(dir, 'resume-range.raw');
    // v1 over the v2 disk needs a few ranges of v1's packs; the second ranged GET is cut
    const rule = proxy.add({
      header: 'range',
      skip: 1,
      times: 1,
      action: { type: 'reset-response', afterBytes: 5000 },
    });
    let failed: unknown;
    try {
      await pull({
        ...opts(registry('pv2/disk', proxy.host), 'v1', out),
        base: join(dir, 'v2.raw'),
        concurrency: 1,
        retry: { ...defaultRetryPolicy(), attempts: 1, baseDelayMs: 1 },
      });
    } catch (err) {
      failed = err;
    } finally {
      proxy.remove(rule);
    }
    expect(failed).toBeInstanceOf(OrbError);
    expect((failed as OrbError).hint).toMatch(/run the same command again/);
    expect(existsSync(out)).toBe(false);
    const journal = readFileSync(out + '.partial.journal', 'utf8');
    expect(journal).toMatch(/"f":\[/);
    const before = proxy.log.length;
    const r = await pull({
      ...opts(registry('pv2/disk', proxy.host), 'v1', out),
      base: join(dir, 'v2.raw'),
      concurrency: 1,
    });
    expect(fileSha(out)).toBe(sum1);
    expect(r.bytesResumed).toBeGreaterThan(0);
    const ranged = proxy.log.slice(before).filter((e) => e.headers.range);
    expect(ranged.length).toBe(r.ranges);
    expect(r.ranges).toBeGreaterThan(0);
  });
});

describe('v2 pull: a disk whose size is not a multiple of the block size', () => {
  it('the last block is clipped: the output has the exact size and bytes, fresh and with a base', async () => {
    const size = 10 * B + 4096;
    const a = join(dir, 'odd1.raw');
    const b = join(dir, 'odd2.raw');
    for (const [p, seed] of [
      [a, 1],
      [b, 2],
    ] as const) {
      const fd = openSync(p, 'w');
      ftruncateSync(fd, size);
      writeSync(fd, pattern(seed, 3 * B, true), 0, 3 * B, 0);
      // the tail: data right up to the last byte
      writeSync(fd, pattern(seed + 10, B + 4096, true), 0, B + 4096, 9 * B);
      closeSync(fd);
    }
    const L = join(dir, 'odd');
    const i1 = await writeV2Image(a, L, 'a');
    await writeV2Image(b, L, 'b', { base: i1 });
    const out = join(dir, 'odd-out.raw');
    await pull(opts(layout(L), 'a', out));
    expect(statSync(out).size).toBe(size);
    expect(fileSha(out)).toBe(fileSha(a));
    const out2 = join(dir, 'odd-out2.raw');
    await pull({ ...opts(layout(L), 'b', out2), base: out });
    expect(statSync(out2).size).toBe(size);
    expect(fileSha(out2)).toBe(fileSha(b));
  });
});

describe('v2 pull: a corrupt pack from a store that ignores Range', () => {
  it('the frame cannot be fetched alone: an integrity error that says so, nothing at the output path', async () => {
    const f = 2;
    const p = v1.index.framePack[f]!;
    const bytes = Buffer.from(v1.packBytes[p]!);
    const at = v1.index.frameOffset[f]! + 40;
    bytes[at] = bytes[at]! ^ 0xff;
    const bad = await writeV2Variant(v1, join(dir, 'layout'), 'bad', {
      packBytes: Object.assign([], { [p]: bytes }),
    });
    await pushV2(bad, registry('pv2/bad'), 'bad');
    const rule = proxy.add({ header: 'range', action: { type: 'ignore-range' } });
    const out = join(dir, 'bad.raw');
    try {
      const err = await pull(opts(registry('pv2/bad', proxy.host), 'bad', out)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OrbError);
      expect((err as OrbError).kind).toBe('integrity');
      expect((err as OrbError).message).toContain(`frame ${f} of pack ${bad.packs[p]!.digest}`);
      expect((err as OrbError).message).toMatch(/does not serve byte ranges/);
      expect(existsSync(out)).toBe(false);
    } finally {
      proxy.remove(rule);
    }
  });
});
