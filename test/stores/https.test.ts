import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import { FILE_ARTIFACT, type ImageManifest } from '../../src/formats/oci-media.js';
import { HttpsStore, PRESIGNED_SCHEMA, type PresignedBundle } from '../../src/stores/https.js';
import { startFileServer, type FileServer } from '../helpers/file-server.js';

const SIZE = 20 * 1024 * 1024 + 12345;
let dir: string;
let data: Buffer;
let hex: string;
let server: FileServer;

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

beforeAll(async () => {
  process.env.ORB_HTTP_BACKOFF_MS = '20';
  dir = await mkdtemp(join(tmpdir(), 'orb-https-'));
  data = randomBytes(SIZE);
  hex = createHash('sha256').update(data).digest('hex');
  await writeFile(join(dir, 'disk.qcow2'), data);
  await writeFile(join(dir, 'side.img'), data);
  await writeFile(join(dir, 'side.img.sha256'), `${hex}  side.img\n`);
  server = await startFileServer(dir);
});

afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

function store(path: string, extra: Partial<ConstructorParameters<typeof HttpsStore>[1]> = {}) {
  return new HttpsStore(`${server.url}${path}`, { log: silentLogger, connections: 4, ...extra });
}

describe('https:// single files', () => {
  it('presents a file as a one-part file artifact with the digest from the URL fragment', async () => {
    const s = store(`/disk.qcow2#sha256=${hex}`);
    const m = await s.getManifest('latest');
    const man = JSON.parse(m.bytes.toString()) as ImageManifest;
    expect(man.artifactType).toBe(FILE_ARTIFACT);
    expect(man.layers[0]).toMatchObject({ digest: `sha256:${hex}`, size: SIZE });
    const { stream, offset } = await s.getBlob(man.layers[0]!);
    expect(offset).toBe(0);
    const got = await readAll(stream);
    expect(createHash('sha256').update(got).digest('hex')).toBe(hex);
    // several ranged requests were made in parallel (8 MiB segments)
    expect(
      server.requests.filter((r) => r.path === '/disk.qcow2' && r.range && r.range !== 'bytes=0-0').length,
    ).toBeGreaterThanOrEqual(3);
  });

  it('resumes from an offset with a Range request', async () => {
    const s = store('/disk.qcow2', { digest: `sha256:${hex}` });
    const man = JSON.parse((await s.getManifest('x')).bytes.toString()) as ImageManifest;
    const { stream, offset } = await s.getBlob(man.layers[0]!, 10_000_000);
    expect(offset).toBe(10_000_000);
    expect((await readAll(stream)).equals(data.subarray(10_000_000))).toBe(true);
  });

  it('finds a published .sha256 file beside the file', async () => {
    const man = JSON.parse((await store('/side.img').getManifest('x')).bytes.toString()) as ImageManifest;
    expect(man.layers[0]!.digest).toBe(`sha256:${hex}`);
  });

  it('uses a digest published in response headers (S3 object metadata)', async () => {
    const srv = await startFileServer(dir, { headers: () => ({ 'x-amz-meta-sha256': hex }) });
    try {
      const s = new HttpsStore(`${srv.url}/disk.qcow2`, { log: silentLogger });
      const man = JSON.parse((await s.getManifest('x')).bytes.toString()) as ImageManifest;
      expect(man.layers[0]!.digest).toBe(`sha256:${hex}`);
    } finally {
      await srv.close();
    }
  });

  it('refuses to pull without any digest to verify against', async () => {
    await expect(store('/disk.qcow2').getManifest('x')).rejects.toThrow(/no SHA-256 is known/);
  });

  it('restarts at offset 0 when the server ignores Range', async () => {
    const srv = await startFileServer(dir, { ignoreRange: true });
    try {
      const s = new HttpsStore(`${srv.url}/disk.qcow2#sha256=${hex}`, { log: silentLogger });
      const man = JSON.parse((await s.getManifest('x')).bytes.toString()) as ImageManifest;
      const { stream, offset } = await s.getBlob(man.layers[0]!, 5000);
      expect(offset).toBe(0);
      expect((await readAll(stream)).equals(data)).toBe(true);
    } finally {
      await srv.close();
    }
  });

  it('continues a segment from where the connection dropped', async () => {
    let cuts = 0;
    const srv = await startFileServer(dir, {
      breakAfter: (_p, range) => (range && range !== 'bytes=0-0' && cuts++ < 3 ? 3_000_000 : undefined),
    });
    try {
      const s = new HttpsStore(`${srv.url}/disk.qcow2#sha256=${hex}`, { log: silentLogger, connections: 3 });
      const man = JSON.parse((await s.getManifest('x')).bytes.toString()) as ImageManifest;
      const got = await readAll((await s.getBlob(man.layers[0]!)).stream);
      expect(got.equals(data)).toBe(true);
      expect(cuts).toBeGreaterThanOrEqual(3);
      // the resumed requests start in the middle of a segment
      expect(
        srv.requests.some(
          (r) =>
            r.range &&
            /^bytes=(\d+)-/.exec(r.range)![1]! !== '0' &&
            Number(/^bytes=(\d+)-/.exec(r.range)![1]) % (8 << 20) !== 0,
        ),
      ).toBe(true);
    } finally {
      await srv.close();
    }
  });

  it('reports a pre-signed URL that expires mid-download', async () => {
    const date = new Date(Date.now() - 60_000).toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
    let n = 0;
    const srv = await startFileServer(dir, {
      status: (_p, range) => (range && range !== 'bytes=0-0' && n++ >= 1 ? 403 : undefined),
    });
    try {
      const url = `${srv.url}/disk.qcow2?X-Amz-Date=${date}&X-Amz-Expires=30&X-Amz-Signature=abc#sha256=${hex}`;
      const s = new HttpsStore(url, { log: silentLogger, connections: 2 });
      const man = JSON.parse((await s.getManifest('x')).bytes.toString()) as ImageManifest;
      // the first segment arrives, the second range request meets the expiry
      const { stream } = await s.getBlob(man.layers[0]!);
      const err = await readAll(stream).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(String(err)).toMatch(/pre-signed URL expired at/);
      expect((err as { hint?: string }).hint).toMatch(/new pre-signed URL/);
      expect(s.describe()).not.toContain('abc');
    } finally {
      await srv.close();
    }
  });

  it('pulls through a pre-signed bundle: manifest plus one URL per blob', async () => {
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      layers: [],
    });
    const bundle: PresignedBundle = {
      schema: PRESIGNED_SCHEMA,
      expires: new Date(Date.now() + 3600_000).toISOString(),
      reference: 's3://bucket/prefix:v1',
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: 'sha256:' + createHash('sha256').update(manifest).digest('hex'),
      manifest,
      blobs: { [`sha256:${hex}`]: `${server.url}/disk.qcow2` },
    };
    await writeFile(join(dir, 'bundle.json'), JSON.stringify(bundle));
    const s = store('/bundle.json');
    const m = await s.getManifest('v1');
    expect(m.bytes.toString()).toBe(manifest);
    expect(m.digest).toBe(bundle.digest);
    const got = await readAll(
      (await s.getBlob({ mediaType: 'x', digest: `sha256:${hex}`, size: SIZE })).stream,
    );
    expect(got.equals(data)).toBe(true);
  });
});

describe('https:// pulls through the pull engine', () => {
  it('pulls a qcow2 file, verifies it and converts it to raw', async () => {
    const { execFileSync } = await import('node:child_process');
    const { pull } = await import('../../src/transfer/pull.js');
    const { sha256File } = await import('../../src/core/fsutil.js');
    const { nullProgress } = await import('../../src/core/progress.js');
    const raw = join(dir, 'src.raw');
    await writeFile(raw, Buffer.concat([randomBytes(3 << 20), Buffer.alloc(5 << 20), randomBytes(1 << 20)]));
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, join(dir, 'src.qcow2')]);
    const qhex = await sha256File(join(dir, 'src.qcow2'));
    const out = join(dir, 'pulled.raw');
    const r = await pull({
      source: store(`/src.qcow2#sha256=${qhex}`),
      ref: 'latest',
      display: 'https',
      output: out,
      format: 'raw',
      concurrency: 2,
      log: silentLogger,
      progress: () => nullProgress,
    });
    expect(await sha256File(out)).toBe(await sha256File(raw));
    expect(r.contentSha256.replace(/^sha256:/, '')).toBe(qhex);
  });
});

describe('https:// pulls through the fault-injection proxy', () => {
  it('continues after resets, waits out 503 with Retry-After, and restarts when Range is ignored', async () => {
    const { startFaultProxy } = await import('../helpers/fault-proxy.js');
    const { pull } = await import('../../src/transfer/pull.js');
    const { sha256File } = await import('../../src/core/fsutil.js');
    const { nullProgress } = await import('../../src/core/progress.js');
    const proxy = await startFaultProxy(server.url);
    try {
      const url = `${proxy.url}/disk.qcow2#sha256=${hex}`;
      const run = (out: string) =>
        pull({
          source: new HttpsStore(url, { log: silentLogger, connections: 3 }),
          ref: 'latest',
          display: 'proxy',
          output: join(dir, out),
          format: 'auto',
          concurrency: 1,
          log: silentLogger,
          progress: () => nullProgress,
        });
      proxy.add({
        method: 'GET',
        path: /disk\.qcow2/,
        header: 'range',
        skip: 2,
        times: 2,
        action: { type: 'reset-response', afterBytes: 1_000_000 },
      });
      proxy.add({
        method: 'GET',
        path: /disk\.qcow2/,
        skip: 3,
        times: 1,
        action: { type: 'status', status: 503, headers: { 'retry-after': '1' }, body: '' },
      });
      const t0 = Date.now();
      await run('p1.bin');
      expect(await sha256File(join(dir, 'p1.bin'))).toBe(hex);
      // the 503 said Retry-After: 1 (the zero-copy path waits it out before asking again)
      expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
      expect(proxy.log.filter((e) => e.fault).length).toBe(3);
      proxy.clear();
      proxy.add({ method: 'GET', path: /disk\.qcow2/, action: { type: 'ignore-range' } });
      await run('p2.bin');
      expect(await sha256File(join(dir, 'p2.bin'))).toBe(hex);
      proxy.clear();
      // a corrupted byte on the way: never written as the output
      proxy.add({
        method: 'GET',
        path: /disk\.qcow2/,
        header: 'range',
        skip: 1,
        action: { type: 'flip', offset: 12345 },
      });
      await expect(run('p3.bin')).rejects.toThrow(/digest/);
      await expect(sha256File(join(dir, 'p3.bin'))).rejects.toThrow();
    } finally {
      await proxy.stop();
    }
  });
});

describe('renewing a refused URL', () => {
  it('asks its owner for a fresh URL when the current one is refused mid-download', async () => {
    const { RemoteFile } = await import('../../src/stores/https-file.js');
    let n = 0;
    // URLs carrying sig=old stop working after the first two requests (an expired signature)
    const srv = await startFileServer(dir, {
      status: (_p, _r, url) => (url?.includes('sig=old') && n++ >= 2 ? 403 : undefined),
    });
    try {
      let renewed = 0;
      const f = new RemoteFile(`${srv.url}/disk.qcow2?sig=old`, {
        connections: 2,
        log: silentLogger,
        what: 'renew',
        refreshUrl: async () => {
          renewed++;
          return `${srv.url}/disk.qcow2?sig=new`;
        },
      });
      const got = await readAll((await f.read(0)).stream);
      expect(got.equals(data)).toBe(true);
      expect(renewed).toBeGreaterThanOrEqual(1);
    } finally {
      await srv.close();
    }
  });
});
