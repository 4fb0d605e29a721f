import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { HttpsStore } from '../../src/stores/https.js';
import { parseS3Ref, S3Store, type S3StoreOptions } from '../../src/stores/s3.js';
import { MiB } from '../../src/stores/s3-multipart.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { buildLayout, makeDisk, pattern, type BuiltLayout } from '../helpers/oci-images.js';
import { startS3rver, type S3Server } from '../helpers/s3rver.js';

/** publish and pull engines over the S3 store, against s3rver behind the fault-injection proxy. */
let s3: S3Server;
let proxy: FaultProxy;
let dir: string;
let v1: BuiltLayout;
let v2: BuiltLayout;
let sum1: string;
let sum2: string;
const log = silentLogger;
const progress = () => nullProgress;
const CHUNK = 1 << 20;

function store(prefix: string, extra: Partial<S3StoreOptions> = {}): S3Store {
  return new S3Store(parseS3Ref(`s3://${s3.bucket}/${prefix}`), {
    endpoint: proxy.url,
    pathStyle: true,
    log,
    partSize: 5 * MiB,
    concurrency: 3,
    ...extra,
  });
}

beforeAll(async () => {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  process.env.ORB_HTTP_BACKOFF_MS = '20';
  s3 = await startS3rver();
  proxy = await startFaultProxy(s3.endpoint);
  dir = mkdtempSync(join(tmpdir(), 'orb-s3-transfer-'));
  // 50 chunks of 1 MiB; version 2 changes one chunk in 50 (2%)
  sum1 = makeDisk(join(dir, 'v1.raw'), { size: 50 * CHUNK, chunkSize: CHUNK, random: true });
  sum2 = makeDisk(join(dir, 'v2.raw'), {
    size: 50 * CHUNK,
    chunkSize: CHUNK,
    random: true,
    seed: (i) => (i === 10 ? 999 : i + 1),
  });
  v1 = await buildLayout(join(dir, 'v1.raw'), join(dir, 'layout1'), 'v1', CHUNK);
  v2 = await buildLayout(join(dir, 'v2.raw'), join(dir, 'layout2'), 'v2', CHUNK);
});
afterAll(async () => {
  await proxy?.stop();
  await s3?.close();
  rmSync(dir, { recursive: true, force: true });
});
beforeEach(() => {
  proxy.clear();
  proxy.log.length = 0;
});

describe('S3 publish and pull (engines over the S3 store)', () => {
  it('round-trips a chunked image, skips what exists, and updates with only the changed chunks', async () => {
    const r1 = await publish({
      source: v1.dir,
      target: store('img'),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r1.digest).toBe(v1.manifestDigest);
    expect(r1.reference).toBe(`s3://${s3.bucket}/img@${v1.manifestDigest}`);
    const out1 = join(dir, 'out1.raw');
    await pull({
      source: store('img'),
      ref: 'v1',
      display: 'img:v1',
      output: out1,
      format: 'raw',
      concurrency: 4,
      log,
      progress,
    });
    expect(await sha256File(out1)).toBe(sum1);
    // again: nothing to upload
    const again = await publish({
      source: v1.dir,
      target: store('img'),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(again.bytesUploaded).toBe(0);
    // version 2: about 2% of the bytes go up, and a pull with --base downloads about 2%
    const r2 = await publish({
      source: v2.dir,
      target: store('img'),
      tags: ['v2'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r2.bytesUploaded).toBeLessThan(r1.bytesUploaded * 0.05);
    const out2 = join(dir, 'out2.raw');
    const p2 = await pull({
      source: store('img'),
      ref: 'v2',
      display: 'img:v2',
      output: out2,
      format: 'raw',
      base: out1,
      concurrency: 4,
      log,
      progress,
    });
    expect(await sha256File(out2)).toBe(sum2);
    expect(p2.bytesDownloaded).toBeLessThan(r1.bytesTotal * 0.05);
    // pinned by digest
    const out3 = join(dir, 'out3.raw');
    await pull({
      source: store('img'),
      ref: v1.manifestDigest,
      display: 'pinned',
      output: out3,
      format: 'raw',
      concurrency: 2,
      log,
      progress,
    });
    expect(await sha256File(out3)).toBe(sum1);
  });

  it('survives resets and 503 with Retry-After on upload and on download', async () => {
    proxy.add({
      method: 'PUT',
      path: /\/blobs\/sha256\//,
      skip: 3,
      times: 2,
      action: { type: 'reset-request', afterBytes: 200_000, forward: true },
    });
    proxy.add({
      method: 'HEAD',
      times: 1,
      action: { type: 'status', status: 503, headers: { 'retry-after': '1' }, body: '' },
    });
    const t0 = Date.now();
    const r = await publish({
      source: v1.dir,
      target: store('faults'),
      tags: ['v1'],
      concurrency: 3,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r.digest).toBe(v1.manifestDigest);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(proxy.log.filter((e) => e.fault).length).toBe(3);
    proxy.clear();
    proxy.add({
      method: 'GET',
      path: /\/blobs\/sha256\//,
      skip: 2,
      times: 2,
      action: { type: 'reset-response', afterBytes: 300_000 },
    });
    proxy.add({
      method: 'GET',
      path: /\/blobs\/sha256\//,
      skip: 6,
      times: 1,
      action: { type: 'status', status: 503, headers: { 'retry-after': '0' }, body: '' },
    });
    const out = join(dir, 'faults.raw');
    await pull({
      source: store('faults'),
      ref: 'v1',
      display: 'faults',
      output: out,
      format: 'raw',
      concurrency: 3,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum1);
  });

  it('rejects a flipped byte on pull and never writes the output from bad data', async () => {
    await publish({
      source: v1.dir,
      target: store('flip'),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    // every copy of one blob arrives corrupted
    proxy.add({
      method: 'GET',
      path: /\/blobs\/sha256\/(?!.*tags)/,
      skip: 3,
      action: { type: 'flip', offset: 1000 },
    });
    const out = join(dir, 'flip.raw');
    await expect(
      pull({
        source: store('flip'),
        ref: 'v1',
        display: 'flip',
        output: out,
        format: 'raw',
        concurrency: 2,
        log,
        progress,
      }),
    ).rejects.toThrow(/digest|sha256|integrity|mismatch/i);
    expect(() => rmSync(out)).toThrow(); // the output path does not exist
  });

  it('publishes a single file in multipart parts, resumes the interrupted part upload, and pulls it back', async () => {
    const file = join(dir, 'disk.img');
    writeFileSync(file, Buffer.concat([pattern(7, 23 * MiB), Buffer.alloc(1 * MiB)]));
    const sum = await sha256File(file);
    process.env.ORB_HTTP_ATTEMPTS = '1';
    // the fifth part upload keeps failing: the publish stops, the multipart upload is kept
    proxy.add({
      method: 'PUT',
      path: /partNumber=5/,
      action: { type: 'status', status: 500, body: '<Error><Code>InternalError</Code></Error>' },
    });
    await expect(
      publish({
        source: file,
        target: store('file', { singlePutLimit: 8 * MiB }),
        tags: ['f1'],
        concurrency: 1,
        partSize: 1 << 30,
        log,
        progress,
      }),
    ).rejects.toThrow();
    delete process.env.ORB_HTTP_ATTEMPTS;
    expect((await s3.uploads()).length).toBe(1);
    proxy.clear();
    proxy.log.length = 0;
    const r = await publish({
      source: file,
      target: store('file', { singlePutLimit: 8 * MiB }),
      tags: ['f1'],
      concurrency: 2,
      partSize: 1 << 30,
      log,
      progress,
    });
    const partPuts = proxy.log.filter((e) => e.method === 'PUT' && /partNumber=/.test(e.url)).length;
    expect(partPuts).toBe(1); // parts 1-4 were already there; only part 5 (the last) went up
    expect(await s3.uploads()).toEqual([]);
    const out = join(dir, 'file.out');
    const p = await pull({
      source: store('file', { connections: 4 }),
      ref: 'f1',
      display: 'file',
      output: out,
      format: 'auto',
      concurrency: 2,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum);
    expect(p.contentSha256.replace(/^sha256:/, '')).toBe(sum);
    expect(r.artifactType).toBe('application/vnd.orb.file.v1');
  });

  it('pulls anonymously (a public bucket) when no AWS credentials exist', async () => {
    await publish({
      source: v1.dir,
      target: store('public'),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    const saved = {
      id: process.env.AWS_ACCESS_KEY_ID,
      key: process.env.AWS_SECRET_ACCESS_KEY,
      imds: process.env.AWS_EC2_METADATA_DISABLED,
    };
    delete process.env.AWS_ACCESS_KEY_ID;
    delete process.env.AWS_SECRET_ACCESS_KEY;
    process.env.AWS_EC2_METADATA_DISABLED = 'true'; // no instance metadata lookups off loopback
    try {
      proxy.log.length = 0;
      const out = join(dir, 'public.raw');
      await pull({
        source: store('public'),
        ref: 'v1',
        display: 'public',
        output: out,
        format: 'raw',
        concurrency: 4,
        log,
        progress,
      });
      expect(await sha256File(out)).toBe(sum1);
      // unsigned requests only
      expect(proxy.log.every((e) => !e.headers.authorization && !/X-Amz-Signature/.test(e.url))).toBe(true);
    } finally {
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.key;
      if (saved.imds === undefined) delete process.env.AWS_EC2_METADATA_DISABLED;
      else process.env.AWS_EC2_METADATA_DISABLED = saved.imds;
    }
  });

  it('pre-signs an image that pulls over plain HTTPS without credentials', async () => {
    const s = store('presigned', { presignSeconds: 600 });
    await publish({
      source: v1.dir,
      target: s,
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    const url = s.publishedOutputs()['presigned-url']!;
    expect(url).toMatch(/X-Amz-Expires=600/);
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, key: process.env.AWS_SECRET_ACCESS_KEY };
    delete process.env.AWS_ACCESS_KEY_ID;
    delete process.env.AWS_SECRET_ACCESS_KEY;
    try {
      const out = join(dir, 'presigned.raw');
      await pull({
        source: new HttpsStore(url, { log }),
        ref: 'v1',
        display: 'presigned',
        output: out,
        format: 'raw',
        concurrency: 4,
        log,
        progress,
      });
      expect(await sha256File(out)).toBe(sum1);
    } finally {
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.key;
    }
  });
});
