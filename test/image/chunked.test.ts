import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  openSync,
  closeSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { convertImage } from '../../src/image/convert.js';
import { decodeChunked, decompressChunk, readChunkedLayout } from '../../src/image/chunked/index.js';
import {
  ANN_CHUNK_DIGEST,
  ANN_CHUNK_LENGTH,
  ANN_CHUNK_OFFSET,
  ANN_REF_NAME,
  DISK_ARTIFACT,
  DISK_CHUNK_RAW,
  DISK_CHUNK_ZSTD,
  DISK_CONFIG,
} from '../../src/formats/oci-media.js';
import { GiB, MiB, noise, qemuCompare, sha256File, smallDisk, sparseDisk } from '../helpers/images.js';

let dir: string;
let raw: string;
let rawSha: string;
const CHUNK = 1 * MiB;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'orb-chunked-'));
  raw = smallDisk();
  rawSha = sha256File(raw);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const out = (name: string) => join(dir, name);

/** Non-zero chunks of a raw file, counted independently of orb's code. */
function nonZeroChunks(path: string, chunk: number): number[] {
  const data = readFileSync(path);
  const zero = Buffer.alloc(chunk);
  const found: number[] = [];
  for (let off = 0; off < data.length; off += chunk) {
    const c = data.subarray(off, Math.min(data.length, off + chunk));
    if (!c.equals(zero.subarray(0, c.length))) found.push(off);
  }
  return found;
}

describe('the chunked OCI layout', () => {
  let layout: string;
  beforeAll(async () => {
    layout = out('v1');
    const r = await convertImage({
      input: raw,
      output: layout,
      format: 'chunked',
      chunkSize: CHUNK,
      verify: true,
    });
    expect(r.contentSha256).toBe(rawSha);
  });

  it('is a standard OCI image layout with our artifact type, config and chunk annotations', async () => {
    expect(JSON.parse(readFileSync(join(layout, 'oci-layout'), 'utf8'))).toEqual({
      imageLayoutVersion: '1.0.0',
    });
    const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
    expect(index.manifests).toHaveLength(1);
    expect(index.manifests[0].annotations[ANN_REF_NAME]).toBe('latest');
    const img = await readChunkedLayout(layout);
    expect(img.manifest.artifactType).toBe(DISK_ARTIFACT);
    expect(img.manifest.config.mediaType).toBe(DISK_CONFIG);
    expect(img.config).toMatchObject({
      schema: 'orb-disk/v1',
      virtualSize: statSync(raw).size,
      chunkSize: CHUNK,
      contentDigest: `sha256:${rawSha}`,
      sourceFormat: 'raw',
      compression: 'zstd',
      level: 3,
    });
    // text compresses; the random files are kept raw (zstd would only make them larger)
    expect(new Set(img.manifest.layers.map((l) => l.mediaType))).toEqual(
      new Set([DISK_CHUNK_ZSTD, DISK_CHUNK_RAW]),
    );
    for (const l of img.manifest.layers) {
      expect(Number(l.annotations![ANN_CHUNK_OFFSET]) % CHUNK).toBe(0);
      expect(Number(l.annotations![ANN_CHUNK_LENGTH])).toBe(CHUNK);
      expect(l.annotations![ANN_CHUNK_DIGEST]).toMatch(/^sha256:[a-f0-9]{64}$/);
    }
    // every blob is named by its own sha256
    for (const f of readdirSync(join(layout, 'blobs/sha256'))) {
      expect(
        createHash('sha256')
          .update(readFileSync(join(layout, 'blobs/sha256', f)))
          .digest('hex'),
      ).toBe(f);
    }
  });

  it('stores exactly the non-zero chunks', async () => {
    const img = await readChunkedLayout(layout);
    expect(img.chunks.map((c) => c.offset)).toEqual(nonZeroChunks(raw, CHUNK));
    expect(img.chunks.length).toBeLessThan(statSync(raw).size / CHUNK);
  });

  it('skopeo inspect reads it', () => {
    const img = JSON.parse(execFileSync('skopeo', ['inspect', `oci:${layout}:latest`], { encoding: 'utf8' }));
    const manifestDigest = readChunkedLayout(layout).then((i) => i.manifestDigest);
    return manifestDigest.then((d) => {
      expect(img.Digest).toBe(d);
      expect(img.Architecture).toBe('amd64');
      const rawManifest = JSON.parse(
        execFileSync('skopeo', ['inspect', '--raw', `oci:${layout}:latest`], { encoding: 'utf8' }),
      );
      expect(rawManifest.artifactType).toBe(DISK_ARTIFACT);
    });
  });

  it('survives skopeo copy to another layout with the same digests', async () => {
    const copy = out('skopeo-copy');
    execFileSync('skopeo', ['copy', '--preserve-digests', `oci:${layout}:latest`, `oci:${copy}:latest`], {
      stdio: 'pipe',
    });
    expect((await readChunkedLayout(copy)).manifestDigest).toBe(
      (await readChunkedLayout(layout)).manifestDigest,
    );
    const r = await decodeChunked({ layout: copy, output: out('from-copy.raw'), format: 'raw' });
    expect(r.contentSha256).toBe(rawSha);
  });

  it('decodes to a byte-identical sparse raw and to a qcow2', async () => {
    const r = await decodeChunked({ layout, output: out('decoded.raw'), format: 'raw' });
    expect(sha256File(r.path)).toBe(rawSha);
    const q = await decodeChunked({
      layout,
      tag: 'latest',
      output: out('decoded.qcow2'),
      format: 'qcow2',
      verify: true,
    });
    expect(q.contentSha256).toBe(rawSha);
    execFileSync('qemu-img', ['check', q.path]);
    expect(qemuCompare(raw, 'raw', q.path, 'qcow2').same).toBe(true);
  });

  it('decompressChunk checks the uncompressed digest; a flipped byte is rejected', async () => {
    const img = await readChunkedLayout(layout);
    const c = img.chunks[0]!;
    const plain = await decompressChunk(img.layout, c);
    expect('sha256:' + createHash('sha256').update(plain).digest('hex')).toBe(c.digest);
    const bad = out('corrupt');
    execFileSync('cp', ['-r', layout, bad]);
    const blob = join(bad, 'blobs/sha256', c.blob.digest.slice(7));
    const bytes = readFileSync(blob);
    const mid = bytes.length >> 1;
    bytes[mid] = bytes[mid]! ^ 0xff;
    writeFileSync(blob, bytes);
    const badImg = await readChunkedLayout(bad);
    await expect(decompressChunk(badImg.layout, badImg.chunks[0]!)).rejects.toMatchObject({
      kind: 'integrity',
    });
    const err = await decodeChunked({ layout: bad, output: out('never.raw'), format: 'raw' }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OrbError);
    expect(existsSync(out('never.raw'))).toBe(false);
    expect(existsSync(out('never.raw.partial'))).toBe(false);
  });
});

describe('--base: a new version costs time in proportion to what changed', () => {
  it('reuses unchanged chunks without compressing them again', async () => {
    const v1 = out('base-v1');
    const r1 = await convertImage({ input: raw, output: v1, format: 'chunked', chunkSize: CHUNK });
    const stored1 = r1.chunked!.stored;
    // v2: two data chunks changed, one zero chunk gets data
    const v2raw = out('v2.raw');
    copyFileSync(raw, v2raw);
    const nz = nonZeroChunks(raw, CHUNK);
    const zeroChunk = [...Array(statSync(raw).size / CHUNK).keys()]
      .map((i) => i * CHUNK)
      .find((o) => !nz.includes(o))!;
    const fd = openSync(v2raw, 'r+');
    for (const at of [nz[3]! + 4096, nz[10]! + 8192, zeroChunk + 100])
      writeSync(fd, noise(`change${at}`, 4096), 0, 4096, at);
    closeSync(fd);

    const r2 = await convertImage({
      input: v2raw,
      output: out('base-v2'),
      format: 'chunked',
      chunkSize: CHUNK,
      base: [v1],
      verify: true,
    });
    expect(r2.chunked!.compressed).toBe(3);
    expect(r2.chunked!.reused).toBe(stored1 - 2);
    expect(r2.contentSha256).toBe(sha256File(v2raw));
    // the reused blobs are hard links, not copies
    const img2 = await readChunkedLayout(out('base-v2'));
    const reusedBlob = img2.chunks.find((c) => c.offset === nz[0])!.blob.digest.slice(7);
    expect(statSync(join(out('base-v2'), 'blobs/sha256', reusedBlob)).nlink).toBeGreaterThan(1);
    const back = await decodeChunked({ layout: out('base-v2'), output: out('v2-back.raw'), format: 'raw' });
    expect(sha256File(back.path)).toBe(sha256File(v2raw));
  });

  it('adds a tag to an existing layout, reusing its blobs; the old tag still decodes', async () => {
    const shared = out('shared');
    await convertImage({ input: raw, output: shared, format: 'chunked', chunkSize: CHUNK, tag: 'v1' });
    const v2raw = out('v2b.raw');
    copyFileSync(raw, v2raw);
    const fd = openSync(v2raw, 'r+');
    writeSync(fd, noise('v2b', 4096), 0, 4096, nonZeroChunks(raw, CHUNK)[5]!);
    closeSync(fd);
    const r = await convertImage({
      input: v2raw,
      output: shared,
      format: 'chunked',
      chunkSize: CHUNK,
      tag: 'v2',
    });
    expect(r.chunked!.compressed).toBe(1);
    const index = JSON.parse(readFileSync(join(shared, 'index.json'), 'utf8'));
    expect(
      index.manifests.map((m: { annotations: Record<string, string> }) => m.annotations[ANN_REF_NAME]).sort(),
    ).toEqual(['v1', 'v2']);
    expect(
      (await decodeChunked({ layout: shared, tag: 'v1', output: out('v1-again.raw'), format: 'raw' }))
        .contentSha256,
    ).toBe(rawSha);
  });

  it('a failed run into an existing layout leaves its index and blobs as they were', async () => {
    const shared = out('shared2');
    await convertImage({ input: raw, output: shared, format: 'chunked', chunkSize: CHUNK, tag: 'v1' });
    const before = {
      index: readFileSync(join(shared, 'index.json'), 'utf8'),
      blobs: readdirSync(join(shared, 'blobs/sha256')).sort(),
    };
    const controller = new AbortController();
    let units = 0;
    const err = await convertImage({
      input: sparseDisk(4 * GiB),
      output: shared,
      format: 'chunked',
      chunkSize: CHUNK,
      tag: 'v2',
      signal: controller.signal,
      progress: () => ({
        add: () => (++units > 2000 ? controller.abort() : undefined),
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

describe('a large sparse disk', () => {
  it('stores only its data chunks at the default chunk size', async () => {
    const big = sparseDisk(4 * GiB);
    const r = await convertImage({ input: big, output: out('big'), format: 'chunked' });
    expect(r.chunked!.chunks).toBe((4 * GiB) / (16 * MiB));
    expect(r.chunked!.stored).toBe(6);
    expect(r.outputBytes).toBeLessThan(16 * MiB);
  });
});
