import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import type { Descriptor } from '../../src/formats/oci-media.js';
import type { RetryPolicy } from '../../src/net/retry.js';
import { GithubReleaseStore, parseGithubRef } from '../../src/stores/github-release.js';
import { GitlabStore, parseGitlabRef } from '../../src/stores/gitlab.js';
import { HttpsStore } from '../../src/stores/https.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { parseS3Ref, S3Store } from '../../src/stores/s3.js';
import type { BlobStore } from '../../src/stores/store.js';
import { readRange, RangeIgnored, type ReadRangeOptions } from '../../src/transfer/range-read.js';
import { startFakeGithub, type FakeGithub } from '../helpers/fake-github.js';
import { startFakeGitlab, type FakeGitlab } from '../helpers/fake-gitlab.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { startFileServer } from '../helpers/file-server.js';
import { startS3rver, type S3Server } from '../helpers/s3rver.js';

/**
 * readRange from every other store orb supports, each against the server the suite runs for it:
 * oci-layout: (positioned file reads), S3 (s3rver: pre-signed ranged GETs, and getBlob's ranged
 * GetObject), GitLab generic packages and GitHub release assets (local API servers that redirect
 * downloads to an "object storage" origin), and a plain https:// file (a Range file server).
 */
process.env.ORB_RETRY_BASE_MS = '10';

const fast: RetryPolicy = {
  attempts: 4,
  baseDelayMs: 10,
  maxDelayMs: 40,
  maxRetryAfterMs: 5_000,
  maxTotalMs: 20_000,
};
const opts: ReadRangeOptions = { retry: fast, idleMs: 10_000 };

const data = randomBytes((1 << 20) + 4321);
const hex = createHash('sha256').update(data).digest('hex');
const desc: Descriptor = {
  mediaType: 'application/octet-stream',
  digest: 'sha256:' + hex,
  size: data.length,
};
const open = () => Readable.from([data]);

/** a few ranges: first byte, last byte, the whole blob, and some in the middle, in parallel */
const RANGES: [number, number][] = [
  [0, 1],
  [desc.size - 1, 1],
  [0, desc.size],
  [1, 65_536],
  [300_001, 400_000],
  [desc.size - 70_000, 70_000],
];

async function checkRanges(store: BlobStore, ranges = RANGES): Promise<void> {
  const got = await Promise.all(ranges.map(([a, n]) => readRange(store, desc, a, n, opts)));
  ranges.forEach(([a, n], i) => {
    expect(got[i]).toBeInstanceOf(Buffer);
    expect((got[i] as Buffer).equals(data.subarray(a, a + n))).toBe(true);
  });
}

async function checkGetBlob(store: BlobStore, a: number, b: number): Promise<void> {
  const r = await store.getBlob(desc, a, b);
  expect([r.offset, r.end]).toEqual([a, b]);
  const parts: Buffer[] = [];
  for await (const c of r.stream) parts.push(c as Buffer);
  expect(Buffer.concat(parts).equals(data.subarray(a, b))).toBe(true);
}

const dir = mkdtempSync(join(tmpdir(), 'orb-range-stores-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('oci-layout:', () => {
  it('reads ranges with positioned reads of the blob file', async () => {
    const s = new LayoutStore(join(dir, 'layout'));
    await s.putBlob(desc, open);
    expect((s as BlobStore).httpSource).toBeUndefined();
    await checkRanges(s);
    await checkGetBlob(s, 17, 1017);
    await checkGetBlob(s, desc.size - 3, desc.size);
  });
});

describe('S3 (s3rver)', () => {
  let s3: S3Server;
  beforeAll(async () => {
    process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
    process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
    s3 = await startS3rver();
  });
  afterAll(async () => {
    await s3?.close();
  });
  const store = (endpoint: string, prefix: string) =>
    new S3Store(parseS3Ref(`s3://${s3.bucket}/${prefix}:v1`), {
      endpoint,
      pathStyle: true,
      log: silentLogger,
    });

  // s3rver reads `bytes=0-0` as "from 0 to the end" (a falsy end) and answers the whole object
  // as a 206: real S3 does not, and readRange refuses that answer (below)
  const S3_RANGES = RANGES.filter(([a, n]) => a !== 0 || n !== 1);

  it('pre-signed ranged GETs; getBlob with an end is one ranged GetObject', async () => {
    const s = store(s3.endpoint, 'a/img');
    await s.putBlob(desc, open);
    s3.log.length = 0;
    await checkRanges(s, S3_RANGES);
    expect(s3.log.filter((l) => l.method === 'GET')).toHaveLength(S3_RANGES.length);
    s3.log.length = 0;
    await checkGetBlob(s, 1000, 2000);
    expect(s3.log.filter((l) => l.method === 'GET')).toHaveLength(1);
    // s3rver's answer to bytes=0-0: a 206 naming another range than the one asked for
    await expect(readRange(s, desc, 0, 1, opts)).rejects.toThrow(
      /asked .* for bytes 0-0\/\d+, it answered Content-Range "bytes 0-\d+/,
    );
  });

  it('a refused pre-signed URL is signed again once', async () => {
    const proxy = await startFaultProxy(s3.endpoint);
    try {
      const s = store(proxy.url, 'b/img');
      await s.putBlob(desc, open);
      await checkRanges(s, S3_RANGES);
      proxy.log.length = 0;
      proxy.add({
        method: 'GET',
        times: 1,
        action: { type: 'status', status: 403, body: '<Error><Code>AccessDenied</Code></Error>' },
      });
      const got = await readRange(s, desc, 5, 5, opts);
      expect((got as Buffer).equals(data.subarray(5, 10))).toBe(true);
      const gets = proxy.log.filter((l) => l.method === 'GET');
      expect(gets).toHaveLength(2);
      expect(gets.every((g) => g.headers.range === 'bytes=5-9' && /X-Amz-Signature=/.test(g.url))).toBe(true);
    } finally {
      await proxy.stop();
    }
  });
});

describe('GitLab generic packages (local API server)', () => {
  let gl: FakeGitlab;
  beforeAll(async () => {
    gl = await startFakeGitlab();
  });
  afterAll(async () => {
    await gl?.close();
  });

  it('follows the redirect to object storage with Range and without the token', async () => {
    const s = new GitlabStore(parseGitlabRef(`gitlab://${gl.project}/packs/1.0.0`), {
      api: gl.api,
      token: gl.tokens.private,
      log: silentLogger,
    });
    await s.putBlob(desc, open);
    gl.knobs.redirectDownloads = true;
    gl.requests.length = 0;
    await checkRanges(s);
    const downloads = gl.requests.filter((r) => r.method === 'GET' && r.path.includes('/packages/generic/'));
    expect(downloads.length).toBeGreaterThanOrEqual(1);
    expect(downloads.every((r) => r.auth === 'basic')).toBe(true);
    expect(gl.leakedAuth).toEqual([]);
    await checkGetBlob(s, 4096, 8192);
    expect(gl.leakedAuth).toEqual([]);
  });
});

describe('GitHub release assets (local API server)', () => {
  let gh: FakeGithub;
  beforeAll(async () => {
    gh = await startFakeGithub();
  });
  afterAll(async () => {
    await gh?.close();
  });

  it('reads through the asset API redirect to storage, the token left behind', async () => {
    const ref = parseGithubRef(`github-release://${gh.owner}/${gh.repo}/packs-1`);
    const s = new GithubReleaseStore(ref, { api: gh.api, token: gh.token, log: silentLogger });
    await s.putBlob(desc, open);
    gh.requests.length = 0;
    await checkRanges(s);
    const storage = gh.requests.filter((r) => r.host === 'storage');
    expect(storage.length).toBeGreaterThanOrEqual(RANGES.length);
    expect(storage.every((r) => !r.auth)).toBe(true);
    expect(gh.leakedAuth).toBe(0);
    await checkGetBlob(s, 0, 100);
    // anonymous: the public download URL, redirected the same way
    const anon = new GithubReleaseStore(ref, { api: gh.api, log: silentLogger });
    await checkRanges(anon);
    expect(gh.leakedAuth).toBe(0);
  });
});

describe('https:// file', () => {
  it('reads ranges through getBlob; reports a server that ignores Range; resumes a cut connection', async () => {
    const root = join(dir, 'www');
    rmSync(root, { recursive: true, force: true });
    const { mkdirSync } = await import('node:fs');
    mkdirSync(root);
    writeFileSync(join(root, 'pack.bin'), data);
    const srv = await startFileServer(root);
    try {
      const s = new HttpsStore(`${srv.url}/pack.bin#sha256=${hex}`, { log: silentLogger });
      expect(s.httpSource).toBeUndefined();
      await checkRanges(s);
      expect(srv.requests.some((r) => r.range === 'bytes=300001-700000')).toBe(true);
      await checkGetBlob(s, 10, 20);
      // a connection cut mid-range continues where it stopped
      srv.options.breakAfter = (_p, range) => (range === 'bytes=2000-501999' ? 100_000 : undefined);
      srv.requests.length = 0;
      const got = await readRange(s, desc, 2000, 500_000, opts);
      expect((got as Buffer).equals(data.subarray(2000, 502_000))).toBe(true);
      expect(srv.requests.length).toBeGreaterThanOrEqual(2);
      expect(srv.requests.at(-1)!.range).toMatch(/^bytes=\d+-501999$/);
      srv.options.breakAfter = undefined;
      // a server that ignores Range: said so, not downloaded
      srv.options.ignoreRange = true;
      const again = new HttpsStore(`${srv.url}/pack.bin#sha256=${hex}`, { log: silentLogger });
      expect(await readRange(again, desc, 100, 100, opts)).toBeInstanceOf(RangeIgnored);
      const whole = await readRange(again, desc, 0, desc.size, opts);
      expect((whole as Buffer).equals(data)).toBe(true);
    } finally {
      await srv.close();
    }
  });
});
