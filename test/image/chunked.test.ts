import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { convertImage } from '../../src/image/convert.js';
import { decodeChunked, readChunkedLayout } from '../../src/image/chunked/index.js';
import { writeDiskV2Manifest } from '../../src/image/chunked/manifest.js';
import { localContentDigest } from '../../src/image/digest.js';
import { BLOCK_SIZE, FRAME_BLOCKS, IndexBuilder, entryDigest } from '../../src/formats/disk-index.js';
import {
  ANN_CONTENT_DIGEST,
  ANN_REF_NAME,
  DISK_V2_ARTIFACT,
  DISK_V2_CONFIG,
  DISK_V2_INDEX,
  DISK_V2_PACK,
} from '../../src/formats/oci-media.js';
import { OciLayout } from '../../src/oci/layout.js';
import { RssSampler } from '../../src/image/bench/rss.js';
import {
  GiB,
  MiB,
  inFormat,
  noise,
  qemuCompare,
  sha256File,
  smallDisk,
  sparseDisk,
  text,
} from '../helpers/images.js';

let dir: string;
let raw: string;
let rawSha: string;
let rawRoot: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-chunked-'));
  raw = smallDisk();
  rawSha = sha256File(raw);
  rawRoot = (await localContentDigest(raw)).contentDigest;
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const out = (name: string) => join(dir, name);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Offsets of the non-zero 32 KiB blocks of a raw file, found without orb's code. */
function nonZeroBlocks(path: string): number[] {
  const data = readFileSync(path);
  const found: number[] = [];
  for (let off = 0; off < data.length; off += BLOCK_SIZE) {
    const b = data.subarray(off, Math.min(data.length, off + BLOCK_SIZE));
    if (b.some((x) => x !== 0)) found.push(off / BLOCK_SIZE);
  }
  return found;
}

/** The same error, whatever went wrong, and no output left behind. */
async function refused(layout: string, name: string): Promise<OrbError> {
  const err = await decodeChunked({ layout, output: out(name), format: 'raw' }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OrbError);
  expect(existsSync(out(name))).toBe(false);
  expect(existsSync(out(`${name}.partial`))).toBe(false);
  return err as OrbError;
}

describe('convert --format chunked (v2)', () => {
  let layout: string;
  beforeAll(async () => {
    layout = out('v1');
    const r = await convertImage({ input: raw, output: layout, format: 'chunked', verify: true });
    expect(r.contentDigest).toBe(rawRoot);
    expect(r.contentSha256).toBeUndefined();
  }, 120_000);

  it('is an OCI layout with the v2 artifact: config, index layer, pack layers, content annotation', async () => {
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
    expect(index.manifests).toHaveLength(1);
    expect(index.manifests[0].annotations[ANN_REF_NAME]).toBe('latest');
    const img = await readChunkedLayout(layout);
    const m = img.manifest;
    expect(m.artifactType).toBe(DISK_V2_ARTIFACT);
    expect(m.config.mediaType).toBe(DISK_V2_CONFIG);
    expect(m.layers[0]!.mediaType).toBe(DISK_V2_INDEX);
    expect(m.layers.slice(1).every((l) => l.mediaType === DISK_V2_PACK)).toBe(true);
    expect(m.annotations?.[ANN_CONTENT_DIGEST]).toBe(rawRoot);
    expect(img.config).toMatchObject({
      schema: 'orb-disk/v2',
      blockSize: BLOCK_SIZE,
      contentDigest: rawRoot,
    });
    // every blob is named by its digest; no temporary file is left
    for (const f of readdirSync(join(layout, 'blobs/sha256'))) {
      expect(f).toMatch(/^[0-9a-f]{64}$/);
      expect(sha(readFileSync(join(layout, 'blobs/sha256', f)))).toBe(f);
    }
  });

  it('the same root from the raw disk, its qcow2, its layout and the decoded disk', async () => {
    expect((await localContentDigest(inFormat(raw, 'qcow2'))).contentDigest).toBe(rawRoot);
    expect(await localContentDigest(layout)).toMatchObject({ contentDigest: rawRoot, kind: 'layout' });
    const back = await decodeChunked({ layout, output: out('back.raw'), format: 'raw' });
    expect(sha256File(back.path)).toBe(rawSha);
    expect(back.contentDigest).toBe(rawRoot);
    const q = await decodeChunked({ layout, output: out('back.qcow2'), format: 'qcow2', verify: true });
    expect(qemuCompare(raw, 'raw', q.path, 'qcow2').same).toBe(true);
  });

  it('stores exactly the non-zero blocks, and holes cost no entry', async () => {
    const img = await readChunkedLayout(layout);
    const blocks = Array.from(img.index.entryBlock);
    expect(blocks).toEqual(nonZeroBlocks(raw));
    expect(img.index.entryCount).toBeLessThan(statSync(raw).size / BLOCK_SIZE);
    // frames hold at most FRAME_BLOCKS blocks (1 MiB) and each entry's digest is its block's sha256
    expect(Math.max(...img.index.frameBlocks)).toBeLessThanOrEqual(FRAME_BLOCKS);
    const data = readFileSync(raw);
    const e = 7;
    const b = img.index.entryBlock[e]!;
    expect(entryDigest(img.index, e).toString('hex')).toBe(
      sha(data.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE)),
    );
  });

  it('skopeo inspect --raw reads the manifest; skopeo copy keeps the digests', async () => {
    const rawManifest = JSON.parse(
      execFileSync('skopeo', ['inspect', '--raw', `oci:${layout}:latest`], { encoding: 'utf8' }),
    );
    expect(rawManifest.artifactType).toBe(DISK_V2_ARTIFACT);
    const copy = out('skopeo-copy');
    execFileSync('skopeo', ['copy', '--preserve-digests', `oci:${layout}:latest`, `oci:${copy}:latest`], {
      stdio: 'pipe',
    });
    expect((await readChunkedLayout(copy)).manifestDigest).toBe(
      (await readChunkedLayout(layout)).manifestDigest,
    );
  });
});

describe('blocks are stored once', () => {
  it('a repeated block is stored once, a written block of zeros not at all', async () => {
    const p = out('repeat.raw');
    const a = noise('A', BLOCK_SIZE);
    const fd = openSync(p, 'w');
    for (const at of [0, MiB, 5 * MiB + BLOCK_SIZE]) writeSync(fd, a, 0, a.length, at);
    writeSync(fd, text('B', BLOCK_SIZE), 0, BLOCK_SIZE, 2 * MiB);
    writeSync(fd, Buffer.alloc(4 * BLOCK_SIZE), 0, 4 * BLOCK_SIZE, 3 * MiB); // allocated zeros
    closeSync(fd);
    truncateSync(p, 8 * MiB);
    const r = await convertImage({ input: p, output: out('repeat'), format: 'chunked', verify: true });
    expect(r.chunked).toMatchObject({ fresh: 2, duplicate: 2, zero: 256 - 4, stored: 4, frames: 2 });
    const img = await readChunkedLayout(out('repeat'));
    const f = img.index.entryFrame;
    expect(f[0]).toBe(f[1]);
    expect(f[3]).toBe(f[0]);
    expect(img.index.packs[0]!.size).toBeLessThan(2 * BLOCK_SIZE);
    expect(r.contentDigest).toBe((await localContentDigest(p)).contentDigest);
    const back = await decodeChunked({
      layout: out('repeat'),
      output: out('repeat-back.raw'),
      format: 'raw',
    });
    expect(sha256File(back.path)).toBe(sha256File(p));
  });

  it('--pack-size caps every pack; the layout still decodes', async () => {
    const r = await convertImage({
      input: raw,
      output: out('small-packs'),
      format: 'chunked',
      packSize: MiB,
    });
    const img = await readChunkedLayout(out('small-packs'));
    expect(r.chunked!.packs).toBeGreaterThan(3);
    expect(img.packs.length).toBe(r.chunked!.packs);
    for (const p of img.packs) expect(p.size).toBeLessThanOrEqual(MiB);
    expect(r.contentDigest).toBe(rawRoot);
    const back = await decodeChunked({
      layout: out('small-packs'),
      output: out('small-packs.raw'),
      format: 'raw',
    });
    expect(sha256File(back.path)).toBe(rawSha);
  });
});

describe('--base: a new version stores only the blocks that changed', () => {
  /** v1 with 4 KiB writes at scattered offsets: inside data and in a zero region */
  function update(name: string, offsets: number[]): string {
    const p = out(name);
    copyFileSync(raw, p);
    const fd = openSync(p, 'r+');
    for (const at of offsets) writeSync(fd, noise(`change${at}`, 4096), 0, 4096, at);
    closeSync(fd);
    return p;
  }

  it('references the base frames, links its packs, and writes a small new pack', async () => {
    const v1 = out('base-v1');
    const r1 = await convertImage({ input: raw, output: v1, format: 'chunked' });
    const nz = nonZeroBlocks(raw);
    const zeroBlock = [...Array(statSync(raw).size / BLOCK_SIZE).keys()].find((b) => !nz.includes(b))!;
    const touched = [nz[3]!, nz[40]!, nz[200]!, nz[nz.length - 2]!];
    const v2raw = update('v2.raw', [
      ...touched.map((b) => b * BLOCK_SIZE + 8192),
      zeroBlock * BLOCK_SIZE + 4096,
    ]);
    const r2 = await convertImage({
      input: v2raw,
      output: out('base-v2'),
      format: 'chunked',
      base: [v1],
      verify: true,
    });
    expect(r2.chunked!.fresh).toBe(5);
    expect(r2.chunked!.reused + r2.chunked!.duplicate).toBe(r1.chunked!.stored - 4);
    expect(r2.chunked!.newPacks).toBe(1);
    expect(r2.chunked!.newPackBytes).toBeLessThan(5 * BLOCK_SIZE + 4096);
    expect(r2.contentDigest).toBe((await localContentDigest(v2raw)).contentDigest);
    const img2 = await readChunkedLayout(out('base-v2'));
    const img1 = await readChunkedLayout(v1);
    // base packs first (base order), the new pack last; base packs are hard links
    expect(img2.packs.slice(0, -1).map((p) => p.digest)).toEqual(img1.packs.map((p) => p.digest));
    const linked = img1.packs[0]!.digest.slice(7);
    expect(statSync(join(out('base-v2'), 'blobs/sha256', linked)).nlink).toBeGreaterThan(1);
    const back = await decodeChunked({ layout: out('base-v2'), output: out('v2-back.raw'), format: 'raw' });
    expect(sha256File(back.path)).toBe(sha256File(v2raw));
  });

  it('--repack compresses every block again into fresh packs: no base pack is listed', async () => {
    const v1 = out('repack-v1');
    await convertImage({ input: raw, output: v1, format: 'chunked' });
    const r = await convertImage({
      input: raw,
      output: out('repacked'),
      format: 'chunked',
      base: [v1],
      repack: true,
    });
    expect(r.chunked).toMatchObject({ reused: 0, repacked: r.chunked!.fresh });
    // every listed pack was written by this run (compression is deterministic: same bytes as v1's)
    expect(r.chunked!.newPacks).toBe(r.chunked!.packs);
    expect(r.chunked!.newPackBytes).toBe((await readChunkedLayout(v1)).packs.reduce((n, p) => n + p.size, 0));
    expect(r.contentDigest).toBe(rawRoot);
  });

  it('adding a version to a layout uses its existing tag as the base; a failed run leaves it as it was', async () => {
    const shared = out('shared');
    await convertImage({ input: raw, output: shared, format: 'chunked', tag: 'v1' });
    const v2raw = update('v2b.raw', [nonZeroBlocks(raw)[5]! * BLOCK_SIZE]);
    const r = await convertImage({ input: v2raw, output: shared, format: 'chunked', tag: 'v2' });
    expect(r.chunked!.fresh).toBe(1);
    const index = JSON.parse(readFileSync(join(shared, 'index.json'), 'utf8'));
    expect(
      index.manifests.map((m: { annotations: Record<string, string> }) => m.annotations[ANN_REF_NAME]).sort(),
    ).toEqual(['v1', 'v2']);
    expect(
      (await decodeChunked({ layout: shared, tag: 'v1', output: out('v1-again.raw'), format: 'raw' }))
        .contentDigest,
    ).toBe(rawRoot);
    const before = {
      index: readFileSync(join(shared, 'index.json'), 'utf8'),
      blobs: readdirSync(join(shared, 'blobs/sha256')).sort(),
    };
    const controller = new AbortController();
    let units = 0;
    const err = await convertImage({
      input: update('v3.raw', [0]),
      output: shared,
      format: 'chunked',
      tag: 'v3',
      signal: controller.signal,
      progress: () => ({
        add: () => (++units > 3 ? controller.abort() : undefined),
        set() {},
        setTotal() {},
        done() {},
      }),
    }).catch((e: unknown) => e);
    expect((err as OrbError).kind).toBe('interrupted');
    expect(readFileSync(join(shared, 'index.json'), 'utf8')).toBe(before.index);
    expect(readdirSync(join(shared, 'blobs/sha256')).sort()).toEqual(before.blobs);
  });
});

describe('bad input: a clear error and nothing written', () => {
  let good: string;
  beforeAll(async () => {
    good = out('good');
    await convertImage({ input: raw, output: good, format: 'chunked' });
  }, 120_000);
  const copyOf = (name: string) => {
    const p = out(name);
    execFileSync('cp', ['-r', good, p]);
    return p;
  };

  it('a truncated pack', async () => {
    const bad = copyOf('truncated');
    const img = await readChunkedLayout(bad);
    const pack = join(bad, 'blobs/sha256', img.packs[0]!.digest.slice(7));
    truncateSync(pack, statSync(pack).size - 100);
    const err = await refused(bad, 'truncated.raw');
    expect(err.message).toMatch(/pack sha256:[0-9a-f]+ is \d+ bytes, the manifest says/);
  });

  it('a corrupted frame', async () => {
    const bad = copyOf('corrupt');
    const img = await readChunkedLayout(bad);
    const pack = join(bad, 'blobs/sha256', img.packs[0]!.digest.slice(7));
    const bytes = readFileSync(pack);
    const at = img.index.frameOffset[3]! + (img.index.frameLength[3]! >> 1);
    bytes[at] = bytes[at]! ^ 0xff;
    writeFileSync(pack, bytes);
    const err = await refused(bad, 'corrupt.raw');
    expect(err.kind).toBe('integrity');
    expect(err.message).toMatch(/frame 3|block \d+ \(frame 3/);
  });

  /** A hand-made layout: one pack of the given frames, the index as the test states it. */
  async function crafted(
    name: string,
    pack: Buffer,
    frames: [number, number, number][],
    entries: [number, number, number, Buffer][],
  ): Promise<string> {
    const d = out(name);
    const layout = new OciLayout(d);
    await layout.init();
    const p = await layout.putBytes(pack);
    const b = new IndexBuilder(4 * MiB);
    b.addPack(p);
    for (const [offset, length, blocks] of frames) b.addFrame(0, offset, length, blocks);
    for (const [block, frame, slot, digest] of entries) b.addEntry(block, frame, slot, digest);
    const m = await writeDiskV2Manifest(layout, b.finish(), { sourceFormat: 'raw', level: 3 });
    await layout.tag(m.descriptor, 'latest');
    return d;
  }
  const zstd = (b: Buffer) => zlib.zstdCompressSync(b, { pledgedSrcSize: b.length });

  it('an index that points outside its pack', async () => {
    const block = text('x', BLOCK_SIZE);
    const frame = zstd(block);
    const d = await crafted(
      'outside',
      frame,
      [[10, frame.length, 1]],
      [[0, 0, 0, createHash('sha256').update(block).digest()]],
    );
    const err = await refused(d, 'outside.raw');
    expect(err.message).toMatch(/index/);
    expect(err.message).toMatch(/frame 0/);
  });

  it('a frame that decompresses to more than its blocks', async () => {
    const two = text('y', 2 * BLOCK_SIZE);
    const frame = zstd(two);
    const d = await crafted(
      'toolong',
      frame,
      [[0, frame.length, 1]],
      [[0, 0, 0, createHash('sha256').update(two.subarray(0, BLOCK_SIZE)).digest()]],
    );
    const err = await refused(d, 'toolong.raw');
    expect(err.kind).toBe('integrity');
    expect(err.message).toMatch(/declares 65536 bytes, the index says 32768/);
  });

  it('a block whose bytes are not its digest', async () => {
    const block = text('z', BLOCK_SIZE);
    const frame = zstd(block);
    const d = await crafted(
      'wrongdigest',
      frame,
      [[0, frame.length, 1]],
      [[0, 0, 0, createHash('sha256').update('other').digest()]],
    );
    const err = await refused(d, 'wrongdigest.raw');
    expect(err.kind).toBe('integrity');
    expect(err.message).toMatch(/other bytes than its sha256/);
  });
});

describe('cost follows the data', () => {
  it('a 32 GiB sparse disk: only its data is read and stored, memory bounded', async () => {
    const big = sparseDisk(32 * GiB);
    const rss = new RssSampler().start();
    const r = await convertImage({ input: big, output: out('big'), format: 'chunked' });
    const peak = rss.stop();
    expect(peak).toBeLessThan(512 * MiB);
    expect(r.chunked).toMatchObject({ blocks: (32 * GiB) / BLOCK_SIZE, stored: (12 * MiB) / BLOCK_SIZE });
    expect(r.outputBytes).toBeLessThan(12 * MiB);
    const d = await localContentDigest(big);
    expect(d).toMatchObject({ contentDigest: r.contentDigest, readBytes: 12 * MiB });
  });
});
