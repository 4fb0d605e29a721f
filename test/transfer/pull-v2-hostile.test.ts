import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createZstdCompress } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import type { Descriptor } from '../../src/formats/oci-media.js';
import type { BlobStore } from '../../src/stores/store.js';
import { pull } from '../../src/transfer/pull.js';
import { defaultRetryPolicy } from '../../src/net/retry.js';
import { pattern } from '../helpers/oci-images.js';
import { compressFrame, writeV2Image, writeV2Variant, type V2Image } from '../helpers/v2-images.js';

/**
 * Hostile v2 images (issue 15, "Bad input"): a truncated or corrupted pack, an index that points
 * outside its pack, a frame that decompresses to more than its blocks, a Range answer with the
 * wrong bytes or length. Each is a clear error; nothing appears at the output path, and what was
 * fetched stays only in `<output>.partial`.
 */
process.env.ORB_RETRY_BASE_MS = '1';
process.env.ORB_JOURNAL_INTERVAL_MS = '20';

const B = 32 << 10;
const BLOCKS = 128;
let dir: string;
let L: string;
let img: V2Image;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-pv2h-'));
  L = join(dir, 'layout');
  const fd = openSync(join(dir, 'disk.raw'), 'w');
  ftruncateSync(fd, BLOCKS * B);
  for (let i = 0; i < BLOCKS; i++) if (i % 3 !== 2) writeSync(fd, pattern(i + 1, B, true), 0, B, i * B);
  closeSync(fd);
  img = await writeV2Image(join(dir, 'disk.raw'), L, 'good', { packSize: 512 << 10 });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const retry = { ...defaultRetryPolicy(), attempts: 2, baseDelayMs: 1, maxDelayMs: 2 };
const run = (source: BlobStore, tag: string, out: string, base?: string) =>
  pull({
    source,
    ref: tag,
    display: `oci-layout:${L}:${tag}`,
    output: out,
    format: 'raw',
    concurrency: 3,
    retry,
    log: silentLogger,
    progress: () => nullProgress,
    ...(base ? { base } : {}),
  });

async function refused(p: Promise<unknown>): Promise<OrbError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(OrbError);
    return err as OrbError;
  }
  throw new Error('the pull was not refused');
}

/** Only `<name>.partial` and its journal may exist for a refused pull into `folder/<name>`. */
function onlyPartial(folder: string, name: string): void {
  expect(existsSync(join(folder, name))).toBe(false);
  for (const f of readdirSync(folder)) expect(f.startsWith(`${name}.partial`)).toBe(true);
}

const outDir = () => mkdtempSync(join(dir, 'out-'));

describe('hostile v2 images', () => {
  it('the unmutated image pulls (the mutations below are what breaks it)', async () => {
    const o = outDir();
    const r = await run(new LayoutStore(L), 'good', join(o, 'd.raw'));
    expect(r.contentDigest).toBe(img.index.contentDigest);
  });

  it('a truncated pack: an integrity error, nothing at the output path', async () => {
    const cut = img.packBytes[0]!.subarray(0, img.packBytes[0]!.length - 1000);
    // the manifest and index keep the pack's real digest and size; the store holds fewer bytes
    const bad = await writeV2Variant(img, L, 'truncated', {});
    const store = withPack(new LayoutStore(L), bad.packs[0]!, cut);
    const o = outDir();
    const e = await refused(run(store, 'truncated', join(o, 'd.raw')));
    expect(e.kind).toBe('integrity');
    expect(e.message).toMatch(/truncated|sends only/);
    onlyPartial(o, 'd.raw');
  });

  it('a corrupted pack: the bad frame is fetched once more, then refused naming pack and offset', async () => {
    const f = 3;
    const p = img.index.framePack[f]!;
    const bytes = Buffer.from(img.packBytes[p]!);
    const at = img.index.frameOffset[f]! + Math.floor(img.index.frameLength[f]! / 2);
    bytes[at] = bytes[at]! ^ 0xff;
    // a pack whose digest matches its (corrupt) bytes: only the blocks can tell
    const bad = await writeV2Variant(img, L, 'corrupt', { packBytes: Object.assign([], { [p]: bytes }) });
    const o = outDir();
    const e = await refused(run(new LayoutStore(L), 'corrupt', join(o, 'd.raw')));
    expect(e.kind).toBe('integrity');
    expect(e.message).toContain(bad.packs[p]!.digest);
    expect(e.message).toContain(`at byte ${img.index.frameOffset[f]}`);
    expect(e.message).toMatch(/twice/);
    onlyPartial(o, 'd.raw');
  });

  it('an index that points outside its pack: refused before any output exists', async () => {
    await writeV2Variant(img, L, 'outside', {
      mutate: (idx) => {
        const last = idx.frameCount - 1;
        idx.frameLength[last] = idx.frameLength[last]! + 4096;
      },
    });
    const o = outDir();
    const e = await refused(run(new LayoutStore(L), 'outside', join(o, 'd.raw')));
    expect(e.message).toMatch(/index/);
    expect(readdirSync(o)).toEqual([]);
  });

  it('an index whose entries name a slot past their frame: refused before any output exists', async () => {
    await writeV2Variant(img, L, 'slot', {
      mutate: (idx) => {
        idx.entrySlot[0] = idx.frameBlocks[idx.entryFrame[0]!]!;
      },
    });
    const o = outDir();
    await refused(run(new LayoutStore(L), 'slot', join(o, 'd.raw')));
    expect(readdirSync(o)).toEqual([]);
  });

  it('a frame that decompresses to more than its blocks (declared, or undeclared): refused', async () => {
    const f = 0;
    const p = img.index.framePack[f]!;
    const blocks = img.index.frameBlocks[f]!;
    for (const [tag, frame] of [
      ['bigger', compressFrame(Buffer.concat([pattern(7, blocks * B, true), pattern(8, B, true)]))],
      ['undeclared', await streamCompress(pattern(7, (blocks + 1) * B, true))],
    ] as const) {
      const start = img.index.frameOffset[f]!;
      const old = img.packBytes[p]!;
      const bytes = Buffer.concat([
        old.subarray(0, start),
        frame,
        old.subarray(start + img.index.frameLength[f]!),
      ]);
      const delta = frame.length - img.index.frameLength[f]!;
      await writeV2Variant(img, L, tag, {
        packBytes: Object.assign([], { [p]: bytes }),
        mutate: (idx) => {
          idx.frameLength[f] = frame.length;
          for (let g = 0; g < idx.frameCount; g++)
            if (g !== f && idx.framePack[g] === p && idx.frameOffset[g]! > start)
              idx.frameOffset[g] = idx.frameOffset[g]! + delta;
        },
      });
      const o = outDir();
      const e = await refused(run(new LayoutStore(L), tag, join(o, 'd.raw')));
      expect(e.kind).toBe('integrity');
      expect(e.message).toMatch(/declares (no|\d+) bytes, the index says/);
      onlyPartial(o, 'd.raw');
    }
  });

  it('a Range answer with the wrong bytes: fetched once more, then refused; an empty one: truncated; both resumable', async () => {
    // a base that holds everything but a few blocks, so the rest comes as ranges
    const base = join(dir, 'base.raw');
    const fd = openSync(base, 'w');
    ftruncateSync(fd, BLOCKS * B);
    for (let i = 0; i < BLOCKS; i++)
      if (i % 3 !== 2 && i !== 60) writeSync(fd, pattern(i + 1, B, true), 0, B, i * B);
    closeSync(fd);
    const o = outDir();
    const shifted = rangeFault(new LayoutStore(L), (b) => Buffer.concat([b.subarray(1), Buffer.alloc(1)]));
    const e = await refused(run(shifted, 'good', join(o, 'd.raw'), base));
    expect(e.kind).toBe('integrity');
    expect(e.message).toMatch(/twice/);
    onlyPartial(o, 'd.raw');
    const o2 = outDir();
    // a store that sends more than the range asked for is refused as such
    const o3 = outDir();
    const longer = rangeFault(new LayoutStore(L), (b) => Buffer.concat([b, Buffer.alloc(10)]), true);
    const e3 = await refused(run(longer, 'good', join(o3, 'd.raw'), base));
    expect(e3.message).toMatch(/more bytes than asked/);
    onlyPartial(o3, 'd.raw');
    // a short answer is continued from where it stopped; one that never brings the bytes fails
    const short = rangeFault(new LayoutStore(L), () => Buffer.alloc(0), true);
    const e2 = await refused(run(short, 'good', join(o2, 'd.raw'), base));
    expect(e2.kind).toBe('integrity');
    expect(e2.message).toMatch(/truncated: the server sends only 0 of/);
    onlyPartial(o2, 'd.raw');
    // and the honest store finishes what was started
    const r = await run(new LayoutStore(L), 'good', join(o2, 'd.raw'), base);
    expect(r.contentDigest).toBe(img.index.contentDigest);
  });
});

/** A store that serves `bytes` for `pack` (whatever it holds). */
function withPack(inner: BlobStore, pack: Descriptor, bytes: Buffer): BlobStore {
  const s = Object.create(inner) as BlobStore;
  s.getBlob = async (desc, offset = 0) => {
    if (desc.digest !== pack.digest) return inner.getBlob(desc, offset);
    return { stream: Readable.from([bytes.subarray(Math.min(offset, bytes.length))]), offset };
  };
  return s;
}

/** A store whose ranged answers (offset > 0) are rewritten by `f`. */
function rangeFault(inner: LayoutStore, f: (b: Buffer) => Buffer, _whole = false): BlobStore {
  const s = Object.create(inner) as BlobStore;
  s.getBlob = (async (desc: Descriptor, offset = 0, end?: number) => {
    const r = await inner.getBlob(desc, offset, end);
    if (end === undefined) return r;
    const parts: Buffer[] = [];
    for await (const c of r.stream) parts.push(c as Buffer);
    const all = Buffer.concat(parts);
    const out = f(all);
    return { stream: Readable.from([out]), offset };
  }) as BlobStore['getBlob'];
  return s;
}

async function streamCompress(data: Buffer): Promise<Buffer> {
  const z = createZstdCompress();
  const parts: Buffer[] = [];
  z.on('data', (c: Buffer) => parts.push(c));
  const done = new Promise((r) => z.on('end', r));
  z.end(data);
  await done;
  return Buffer.concat(parts);
}
