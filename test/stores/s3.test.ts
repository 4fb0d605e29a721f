import { CopyObjectCommand, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../../src/core/log.js';
import type { Descriptor, ImageIndex } from '../../src/formats/oci-media.js';
import { HttpsStore } from '../../src/stores/https.js';
import { choosePartSize, MAX_PARTS, MiB } from '../../src/stores/s3-multipart.js';
import { formatS3Ref, parseS3Ref, S3Store, type S3StoreOptions } from '../../src/stores/s3.js';
import { startS3rver, type S3Server } from '../helpers/s3rver.js';

let s3: S3Server;
let prefixN = 0;
const warnings: string[] = [];
const log: Logger = { ...silentLogger, warn: (m) => warnings.push(m), info: (m) => warnings.push(m) };

function blob(size: number): { data: Buffer; desc: Descriptor } {
  const data = randomBytes(size);
  return {
    data,
    desc: {
      mediaType: 'application/octet-stream',
      digest: 'sha256:' + createHash('sha256').update(data).digest('hex'),
      size,
    },
  };
}
const opener = (data: Buffer) => (offset: number) => Readable.from([data.subarray(offset)]);
async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

function store(extra: Partial<S3StoreOptions> = {}, prefix = `p${++prefixN}/img`): S3Store {
  return new S3Store(parseS3Ref(`s3://${s3.bucket}/${prefix}:v1`), {
    endpoint: s3.endpoint,
    pathStyle: true,
    partSize: 5 * MiB,
    concurrency: 3,
    log,
    ...extra,
  });
}

const uploadParts = () => s3.log.filter((l) => l.method === 'PUT' && /partNumber=/.test(l.query)).length;

beforeAll(async () => {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  process.env.ORB_HTTP_BACKOFF_MS = '10';
  s3 = await startS3rver();
});
afterAll(async () => {
  await s3.close();
});
beforeEach(() => {
  s3.knobs.failPart = undefined;
  s3.knobs.rejectChecksums = false;
  s3.log.length = 0;
  warnings.length = 0;
  delete process.env.ORB_HTTP_ATTEMPTS;
});

describe('S3 references and part sizes', () => {
  it('parses bucket, prefix, tag and digest', () => {
    expect(parseS3Ref('s3://b/a/b/c:v2')).toEqual({ bucket: 'b', prefix: 'a/b/c/', tag: 'v2' });
    expect(parseS3Ref('s3://b')).toEqual({ bucket: 'b', prefix: '' });
    const d = 'sha256:' + 'a'.repeat(64);
    expect(parseS3Ref(`s3://b/x@${d}`)).toEqual({ bucket: 'b', prefix: 'x/', digest: d });
    expect(formatS3Ref(parseS3Ref('s3://b/a/b:v2'), 'v2')).toBe('s3://b/a/b:v2');
    expect(() => parseS3Ref('s3:/b')).toThrow(/not an S3 reference/);
  });
  it('raises the part size so 5 TiB fits in 10,000 parts', () => {
    const tib5 = 5 * 1024 ** 4;
    const ps = choosePartSize(tib5, 16 * MiB);
    expect(Math.ceil(tib5 / ps)).toBeLessThanOrEqual(MAX_PARTS);
    expect(ps % MiB).toBe(0);
    expect(choosePartSize(100 * MiB, 16 * MiB)).toBe(16 * MiB);
    expect(choosePartSize(100 * MiB, 1 * MiB)).toBe(5 * MiB);
    expect(() => choosePartSize(tib5 + 1, 16 * MiB)).toThrow(/5 TiB/);
  });
  it('refuses pre-signed URLs longer than 7 days', () => {
    expect(() => store({ presignSeconds: 8 * 86400 })).toThrow(
      expect.objectContaining({
        message: expect.stringMatching(/longer than S3 allows/),
        hint: expect.stringMatching(/at most 7 days/),
      }),
    );
  });
});

describe('S3 store against s3rver', () => {
  it('puts, stats and gets a small blob with its SHA-256 in metadata', async () => {
    const s = store();
    const { data, desc } = blob(100_000);
    expect(await s.statBlob(desc.digest)).toBeUndefined();
    await s.putBlob(desc, opener(data));
    expect(await s.statBlob(desc.digest)).toBe(desc.size);
    const { stream } = await s.getBlob(desc);
    expect((await readAll(stream)).equals(data)).toBe(true);
    const { stream: tail } = await s.getBlob(desc, 99_000);
    expect((await readAll(tail)).equals(data.subarray(99_000))).toBe(true);
  });

  it('uploads a large blob in concurrent parts and downloads it over parallel ranges', async () => {
    const s = store({ singlePutLimit: 8 * MiB, connections: 4 });
    const { data, desc } = blob(70 * MiB + 4321);
    let reported = 0;
    await s.putBlob(desc, opener(data), (n) => (reported += n));
    expect(reported).toBe(desc.size);
    expect(uploadParts()).toBe(Math.ceil(desc.size / (5 * MiB)));
    expect(await s3.uploads()).toEqual([]);
    s3.log.length = 0;
    const got = await readAll((await s.getBlob(desc)).stream);
    expect(createHash('sha256').update(got).digest('hex')).toBe(desc.digest.slice(7));
    expect(s3.log.filter((l) => l.method === 'GET').length).toBeGreaterThanOrEqual(8);
    // the server does not echo S3 checksums: we fell back and said so
    expect(warnings.join('\n')).toMatch(/does not implement S3 checksums/);
  });

  it('rejects a source that does not match its digest and aborts the multipart upload', async () => {
    const s = store({ singlePutLimit: 8 * MiB });
    const { data, desc } = blob(12 * MiB);
    const bad = Buffer.from(data);
    bad[7 * MiB] = bad[7 * MiB]! ^ 1;
    await expect(s.putBlob(desc, opener(bad))).rejects.toThrow(/SHA-256 is sha256:[a-f0-9]+, not/);
    expect(await s3.uploads()).toEqual([]);
    expect(await s.statBlob(desc.digest)).toBeUndefined();
    const small = blob(1000);
    await expect(s.putBlob(small.desc, opener(Buffer.alloc(1000)))).rejects.toThrow(
      /does not match its content/,
    );
  });

  it('keeps an interrupted upload and resumes it from the parts already stored', async () => {
    process.env.ORB_HTTP_ATTEMPTS = '2';
    const s = store({ singlePutLimit: 8 * MiB, concurrency: 2 });
    const { data, desc } = blob(31 * MiB);
    s3.knobs.failPart = (n) => (n >= 4 ? 503 : undefined);
    await expect(s.putBlob(desc, opener(data))).rejects.toThrow(/SlowDown|503/);
    const left = await s3.uploads();
    expect(left).toHaveLength(1);
    expect(left[0]!.parts).toBe(3);
    expect(warnings.join('\n')).toMatch(/kept: rerun the same publish to resume/);
    s3.knobs.failPart = undefined;
    s3.log.length = 0;
    const again = store({ singlePutLimit: 8 * MiB, concurrency: 2 }, s.ref.prefix.replace(/\/$/, ''));
    await again.putBlob(desc, opener(data));
    expect(uploadParts()).toBe(7 - 3);
    expect(await s3.uploads()).toEqual([]);
    expect((await readAll((await again.getBlob(desc)).stream)).equals(data)).toBe(true);
  });

  it('does not reuse a stored part whose bytes differ from the local ones', async () => {
    process.env.ORB_HTTP_ATTEMPTS = '1';
    const prefix = `p${++prefixN}/img`;
    const { data, desc } = blob(16 * MiB);
    const wrong = Buffer.from(data);
    wrong[100] = wrong[100]! ^ 1; // part 1 differs
    s3.knobs.failPart = (n) => (n >= 3 ? 503 : undefined);
    const first = store({ singlePutLimit: 8 * MiB, concurrency: 1 }, prefix);
    await expect(first.putBlob(desc, opener(wrong))).rejects.toThrow();
    expect((await s3.uploads())[0]?.parts).toBe(2);
    s3.knobs.failPart = undefined;
    s3.log.length = 0;
    await store({ singlePutLimit: 8 * MiB }, prefix).putBlob(desc, opener(data));
    // part 1 re-sent (its MD5 differs), part 2 reused, parts 3-4 new
    expect(uploadParts()).toBe(3);
    expect((await readAll((await first.getBlob(desc)).stream)).equals(data)).toBe(true);
  });

  it('retries parts after connection resets', async () => {
    const s = store({ singlePutLimit: 8 * MiB });
    const { data, desc } = blob(20 * MiB);
    const seen = new Map<number, number>();
    s3.knobs.failPart = (n) => {
      seen.set(n, (seen.get(n) ?? 0) + 1);
      return seen.get(n) === 1 && n % 2 === 0 ? 'reset' : undefined;
    };
    await s.putBlob(desc, opener(data));
    expect((await readAll((await s.getBlob(desc)).stream)).equals(data)).toBe(true);
  });

  it('falls back when the server rejects S3 checksum headers', async () => {
    s3.knobs.rejectChecksums = true;
    const s = store({ singlePutLimit: 8 * MiB });
    const small = blob(5000);
    await s.putBlob(small.desc, opener(small.data));
    const big = blob(11 * MiB);
    await s.putBlob(big.desc, opener(big.data));
    expect((await readAll((await s.getBlob(big.desc)).stream)).equals(big.data)).toBe(true);
    expect(warnings.join('\n')).toMatch(/rejects S3 checksums/);
  });

  it('stores manifests by digest, tags as pointers, and an OCI index', async () => {
    const s = store();
    const cfg = blob(100);
    await s.putBlob(cfg.desc, opener(cfg.data));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: cfg.desc,
        layers: [],
      }),
    );
    const digest = await s.putManifest(manifest, 'application/vnd.oci.image.manifest.v1+json', [
      'v1',
      'latest',
    ]);
    expect(digest).toBe('sha256:' + createHash('sha256').update(manifest).digest('hex'));
    for (const ref of ['v1', 'latest', digest])
      expect((await s.getManifest(ref)).bytes.equals(manifest)).toBe(true);
    await expect(s.getManifest('nope')).rejects.toThrow(/no tag 'nope'/);
    const client = new S3Client({
      endpoint: s3.endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      credentials: s3.credentials,
    });
    const res = await client.send(
      new GetObjectCommand({ Bucket: s3.bucket, Key: `${s.ref.prefix}index.json` }),
    );
    const index = JSON.parse(await res.Body!.transformToString()) as ImageIndex;
    expect(index.manifests.map((m) => m.annotations?.['org.opencontainers.image.ref.name']).sort()).toEqual([
      'latest',
      'v1',
    ]);
    expect(index.manifests.every((m) => m.digest === digest)).toBe(true);
    client.destroy();
  });

  it('pre-signs the manifest and blobs so orb pulls them over plain HTTPS', async () => {
    const s = store({ presignSeconds: 3600, singlePutLimit: 8 * MiB });
    const layer = blob(9 * MiB);
    const cfg = blob(50);
    await s.putBlob(layer.desc, opener(layer.data));
    await s.putBlob(cfg.desc, opener(cfg.data));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: cfg.desc,
        layers: [layer.desc],
      }),
    );
    const digest = await s.putManifest(manifest, 'application/vnd.oci.image.manifest.v1+json', ['v1']);
    const out = s.publishedOutputs();
    expect(out['presigned-url']).toMatch(/X-Amz-Signature=/);
    expect(out['presigned-file-url']).toMatch(/X-Amz-Expires=3600/);
    const h = new HttpsStore(out['presigned-url']!, { log: silentLogger, connections: 2 });
    const m = await h.getManifest('v1');
    expect(m.digest).toBe(digest);
    expect((await readAll((await h.getBlob(layer.desc)).stream)).equals(layer.data)).toBe(true);
    // the single file URL carries the digest in x-amz-meta-sha256, so it pulls verified on its own
    const single = new HttpsStore(out['presigned-file-url']!, { log: silentLogger });
    const sm = JSON.parse((await single.getManifest('x')).bytes.toString()) as { layers: Descriptor[] };
    expect(sm.layers[0]!.digest).toBe(layer.desc.digest);
  });

  it('refuses a blob whose recorded SHA-256 differs from the one asked for', async () => {
    const s = store();
    const a = blob(2000);
    await s.putBlob(a.desc, opener(a.data));
    // copy it (metadata included) to the key of another digest: a wrong object under that name
    const other = { ...a.desc, digest: 'sha256:' + 'b'.repeat(64) };
    const client = new S3Client({
      endpoint: s3.endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      credentials: s3.credentials,
    });
    await client.send(
      new CopyObjectCommand({
        Bucket: s3.bucket,
        Key: s.blobKey(other.digest),
        CopySource: `${s3.bucket}/${s.blobKey(a.desc.digest)}`,
      }),
    );
    client.destroy();
    expect(await s.statBlob(other.digest)).toBeUndefined();
    const err = await s
      .getBlob(other)
      .then((r) => readAll(r.stream))
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(String(err)).toMatch(/records SHA-256/);
  });
});
