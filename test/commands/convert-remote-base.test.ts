import { createHash, randomBytes } from 'node:crypto';
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
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../../src/stores/schemes.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { convertImage } from '../../src/image/convert.js';
import { readChunkedLayout } from '../../src/image/chunked/read.js';
import { ANN_BASE_DIGEST, ANN_BASE_REFERENCE, type ImageManifest } from '../../src/formats/oci-media.js';
import { openStore } from '../../src/stores/open.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { loadPublishedBase } from '../../src/transfer/remote-base.js';
import { orb } from '../helpers/cli.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { smallDisk } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * `orb convert --base oci://...` (issue 15 point 2): v1 is published and its layout deleted; v2
 * is converted against the published v1 (only its manifest, config and index travel), publish of
 * v2 uploads only the new packs + index + config + manifest, and a pull of v2 on the pulled v1 is
 * byte-identical. Needs `npm run build` (the convert runs through bin/orb.js).
 */
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));
writeFileSync(join(process.env.DOCKER_CONFIG, 'config.json'), '{"auths":{}}\n');

let reg: Registry;
let proxy: FaultProxy;
let dir: string;
let v2raw: string;
let layout2: string;
let v1packs: string[];
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
const opts = { log: silentLogger, progress: () => nullProgress, concurrency: 2, partSize: 1 << 30 };
const store = async (ref: string) => (await openStore(ref, { log: silentLogger, options: {} })).store;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-rbase-'));
  reg = await startRegistry();
  proxy = await startFaultProxy(reg.url);
  const v1raw = join(dir, 'v1.raw');
  copyFileSync(smallDisk(), v1raw);
  // v2: a few scattered 4 KiB changes
  v2raw = join(dir, 'v2.raw');
  copyFileSync(v1raw, v2raw);
  const fd = openSync(v2raw, 'r+');
  for (const mib of [1, 5, 9, 17, 30, 41]) writeSync(fd, randomBytes(4096), 0, 4096, mib * (1 << 20) + 8192);
  closeSync(fd);
  const layout1 = join(dir, 'layout1');
  await convertImage({
    input: v1raw,
    output: layout1,
    format: 'chunked',
    packSize: 1 << 20,
    manifest: false,
  });
  v1packs = (await readChunkedLayout(layout1)).packs.map((p) => p.digest);
  await publish({
    ...opts,
    source: layout1,
    target: await store(`oci://${reg.host}/rb/disk:v1`),
    tags: ['v1'],
  });
  rmSync(layout1, { recursive: true, force: true });
  rmSync(v1raw);
}, 180_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('orb convert --base REF (a published image)', () => {
  it('reads only the manifest, config and index of the base, and references its packs', async () => {
    layout2 = join(dir, 'layout2');
    const from = proxy.log.length;
    const base = `oci://${proxy.host}/rb/disk:v1`;
    const r = await orb(
      ['convert', v2raw, '--output', layout2, '--format', 'chunked', '--pack-size', '1M', '--base', base],
      { DOCKER_CONFIG: process.env.DOCKER_CONFIG },
    );
    expect(r.code, r.stderr).toBe(0);
    const gets = proxy.log.slice(from).filter((e) => e.method === 'GET');
    // manifest by tag, then config and index: no pack
    expect(gets.filter((e) => /\/blobs\//.test(e.url))).toHaveLength(2);
    for (const p of v1packs) expect(gets.some((e) => e.url.includes(p))).toBe(false);
    const m = JSON.parse(
      readFileSync(join(layout2, 'blobs/sha256', (await readIndexDigest(layout2)).slice(7)), 'utf8'),
    ) as ImageManifest;
    expect(m.annotations?.[ANN_BASE_REFERENCE]).toBe(base);
    expect(m.annotations?.[ANN_BASE_DIGEST]).toMatch(/^sha256:/);
    const listed = m.layers.slice(1).map((l) => l.digest);
    expect(listed.filter((d) => v1packs.includes(d)).length).toBeGreaterThan(0);
    // reading the layout locally says where the packs live
    await expect(readChunkedLayout(layout2)).rejects.toThrow(/lives in the base oci:\/\//);
    const raw = await orb(['convert', layout2, '--output', join(dir, 'x.raw'), '--format', 'raw']);
    expect(raw.code).not.toBe(0);
    expect(raw.stderr).toMatch(/is not in this layout: it lives in the base oci:\/\/[^ ]+\/rb\/disk:v1/);
  }, 120_000);

  it('publish of v2 uploads only the new packs, the index and the config', async () => {
    const img = await readChunkedLayout(layout2, undefined, { packs: false });
    const fresh = img.packs.filter((p) => !v1packs.includes(p.digest));
    const from = proxy.log.length;
    const r = await publish({
      ...opts,
      source: layout2,
      target: await store(`oci://${proxy.host}/rb/disk:v2`),
      tags: ['v2'],
    });
    const want = [img.indexDescriptor, img.manifest.config, ...fresh];
    expect(r.blobsUploaded).toBe(want.length);
    expect(r.bytesUploaded).toBe(want.reduce((n, d) => n + d.size, 0));
    expect(r.blobsMounted).toBe(0);
    // six 4 KiB changes: a small fraction of the image goes up
    expect(r.bytesUploaded).toBeLessThan(r.bytesTotal / 10);
    if (process.env.ORB_TEST_MEASURE)
      console.log(
        `MEASURE publish v2: ${r.bytesUploaded} of ${r.bytesTotal} bytes, ${r.blobsUploaded} of ${r.blobs} blobs`,
      );
    // on the wire: one finishing PUT per uploaded blob, then the manifest
    const puts = proxy.log.slice(from).filter((e) => e.method === 'PUT');
    const blobPuts = puts
      .filter((e) => /digest=sha256/.test(e.url))
      .map((e) => /digest=(sha256[^&]+)/.exec(e.url)![1]!);
    expect(blobPuts.map(decodeURIComponent).sort()).toEqual(want.map((d) => d.digest).sort());
    expect(puts.filter((e) => /\/manifests\//.test(e.url))).toHaveLength(1);
  }, 120_000);

  it('orb pull v2 with --base the pulled v1 is byte-identical', async () => {
    const src = await store(`oci://${reg.host}/rb/disk`);
    const p = { ...opts, source: src, format: 'raw' as const, display: 'rb/disk' };
    await pull({ ...p, ref: 'v1', output: join(dir, 'p1.raw') });
    const r = await pull({ ...p, ref: 'v2', output: join(dir, 'p2.raw'), base: join(dir, 'p1.raw') });
    expect(sha(join(dir, 'p2.raw'))).toBe(sha(v2raw));
    expect(r.chunksReused).toBeGreaterThan(0);
  }, 120_000);

  it('publish to another repository of the registry mounts the base packs', async () => {
    const img = await readChunkedLayout(layout2, undefined, { packs: false });
    const based = img.packs.filter((p) => v1packs.includes(p.digest));
    const r = await publish({
      ...opts,
      source: layout2,
      target: await store(`oci://${proxy.host}/other/disk:v2`),
      tags: ['v2'],
    });
    expect(r.blobsMounted).toBe(based.length);
    expect(r.blobsUploaded).toBe(img.packs.length - based.length + 2);
  }, 120_000);

  it('publish to a store that cannot mount refuses before uploading anything', async () => {
    const target = join(dir, 'elsewhere');
    await expect(
      publish({ ...opts, source: layout2, target: await store(`oci-layout:${target}:v2`), tags: ['v2'] }),
    ).rejects.toThrow(/pack\(s\) of the base oci:\/\/.*nothing was uploaded/);
    const s = await store(`oci-layout:${target}:v2`);
    const img = await readChunkedLayout(layout2, undefined, { packs: false });
    for (const d of [img.indexDescriptor, ...img.packs]) expect(await s.statBlob(d.digest)).toBeUndefined();
  }, 60_000);

  it('repacks against a published base without reading its packs: a self-contained image', async () => {
    // the blocks of the packs a repack drops are compressed again from the new disk's own
    // bytes, so only the base's manifest, config and index travel, as without a repack
    const from = proxy.log.length;
    const opened = await openStore(`oci://${proxy.host}/rb/disk:v1`, { log: silentLogger, options: {} });
    const base = await loadPublishedBase(opened);
    const out = join(dir, 'repack');
    const r = await convertImage({
      input: v2raw,
      output: out,
      format: 'chunked',
      packSize: 1 << 20,
      remoteBases: [base],
      repack: true,
      manifest: false,
    });
    // every block compressed again from v2, nothing referenced: the six changed blocks are new,
    // all the others are the base's, repacked
    expect(r.chunked!.reused).toBe(0);
    expect(r.chunked!.fresh - r.chunked!.repacked).toBe(6);
    expect(r.chunked!.newPacks).toBe(r.chunked!.packs);
    const gets = proxy.log.slice(from).filter((e) => e.method === 'GET' && /\/blobs\//.test(e.url));
    for (const p of v1packs) expect(gets.some((e) => e.url.includes(p))).toBe(false);
    // every pack it lists is in the layout (unchanged packs come out byte-identical to the
    // base's, content-addressed): it reads and converts back without the base
    await readChunkedLayout(out);
    const back = join(dir, 'repack.raw');
    const c = await orb(['convert', out, '--output', back, '--format', 'raw']);
    expect(c.code, c.stderr).toBe(0);
    expect(sha(back)).toBe(sha(v2raw));
    // and the same content identity as the v2 converted against the base without a repack
    const d1 = await orb(['digest', out, '--json']);
    const d2 = await orb(['digest', v2raw, '--json']);
    expect(JSON.parse(d1.stdout)['content-digest']).toBe(JSON.parse(d2.stdout)['content-digest']);
  }, 120_000);
});

async function readIndexDigest(layout: string): Promise<string> {
  const idx = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as {
    manifests: { digest: string }[];
  };
  return idx.manifests.at(-1)!.digest;
}
