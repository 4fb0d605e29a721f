import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/log.js';
import type { Descriptor } from '../../src/formats/oci-media.js';
import type { RetryPolicy } from '../../src/net/retry.js';
import { loadMirrors } from '../../src/oci/mirrors.js';
import { RegistryClient } from '../../src/oci/registry.js';
import type { BlobStore } from '../../src/stores/store.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { readRange, RangeIgnored, type ReadRangeOptions } from '../../src/transfer/range-read.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * Bounded range reads of a pack against the real servers the suite runs: docker-registry (token
 * auth, a storage redirect to another host, a mirror), with the fault proxy in front for wrong
 * answers, cut connections and busy servers. The other stores are in range-read-stores.test.ts.
 */
process.env.ORB_RETRY_BASE_MS = '10';
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));

const fast: RetryPolicy = {
  attempts: 4,
  baseDelayMs: 10,
  maxDelayMs: 40,
  maxRetryAfterMs: 5_000,
  maxTotalMs: 20_000,
};
const opts: ReadRangeOptions = { retry: fast, idleMs: 10_000 };

const data = randomBytes((2 << 20) + 777);
const desc: Descriptor = {
  mediaType: 'application/octet-stream',
  digest: 'sha256:' + createHash('sha256').update(data).digest('hex'),
  size: data.length,
};
const blobPath = new RegExp(`/blobs/${desc.digest}`);

let reg: Registry;
let plain: Registry;
let front: FaultProxy;
let storage: FaultProxy;
const alice = { username: 'alice', password: 'wonderland' };

function client(host: string, repo: string, credentials: typeof alice | null, mirrors?: string[]) {
  return new RegistryClient({
    ref: { host, apiHost: host, repository: repo },
    credentials,
    log: silentLogger,
    ...(mirrors ? { mirrors: loadMirrors({ host, mirrors }) } : {}),
  });
}
/** a fresh store: nothing cached from earlier tests */
const origin = () => new RegistryStore(client(front.host, 'ranges/pack', alice));

async function expectBytes(store: BlobStore, start: number, length: number, o = opts): Promise<void> {
  const got = await readRange(store, desc, start, length, o);
  expect(got).toBeInstanceOf(Buffer);
  expect((got as Buffer).length).toBe(length);
  expect((got as Buffer).equals(data.subarray(start, start + length))).toBe(true);
}

async function failure(p: Promise<unknown>): Promise<OrbError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(OrbError);
  return err as OrbError;
}

const blobGets = (p: FaultProxy) => p.log.filter((e) => e.method === 'GET' && blobPath.test(e.url));

beforeAll(async () => {
  reg = await startRegistry({ auth: 'token', users: { alice: 'wonderland' } });
  plain = await startRegistry();
  front = await startFaultProxy(reg.url);
  storage = await startFaultProxy(plain.url);
  const open = () => Readable.from([data]);
  await new RegistryStore(client(reg.host, 'ranges/pack', alice)).putBlob(desc, open);
  // "object storage" and a mirror: another registry holding the same blob
  await new RegistryStore(client(plain.host, 'store/pack', null)).putBlob(desc, open);
  await new RegistryStore(client(plain.host, 'ranges/pack', null)).putBlob(desc, open);
}, 60_000);

afterAll(async () => {
  await front?.stop();
  await storage?.stop();
  await reg?.stop();
  await plain?.stop();
});

// plain http:// is received by the raw-socket reader (fast-get.ts); https:// and chunked answers
// by the regular client: both run every case
describe.each([
  ['raw-socket reader', false],
  ['regular HTTP client', true],
])('readRange from an OCI registry (%s)', (_name, regular) => {
  beforeAll(() => {
    if (regular) process.env.ORB_NO_FAST_GET = '1';
  });
  afterAll(() => {
    delete process.env.ORB_NO_FAST_GET;
  });

  it('returns exactly the bytes asked for, many ranges in parallel, one Range each', async () => {
    front.clear();
    front.log.length = 0;
    const s = origin();
    await expectBytes(s, 0, 1);
    await expectBytes(s, desc.size - 1, 1);
    await expectBytes(s, 0, desc.size);
    const ranges: [number, number][] = [];
    for (let i = 0; i < 24; i++) {
      const start = Math.floor(Math.random() * (desc.size - 1));
      ranges.push([start, 1 + Math.floor(Math.random() * Math.min(300_000, desc.size - start - 1))]);
    }
    await Promise.all(ranges.map(([a, n]) => expectBytes(s, a, n)));
    const gets = blobGets(front);
    expect(gets.length).toBe(27);
    for (const [a, n] of ranges)
      expect(gets.some((g) => g.headers.range === `bytes=${a}-${a + n - 1}`)).toBe(true);
    expect(gets.every((g) => /^Bearer /.test(String(g.headers.authorization)))).toBe(true);
  });

  it('an empty range needs no request; a range outside the blob is a caller bug', async () => {
    expect((await readRange(origin(), desc, 5, 0)) as Buffer).toHaveLength(0);
    await expect(readRange(origin(), desc, desc.size - 10, 11)).rejects.toThrow(/bad range/);
  });

  it('a redirect to storage on another host keeps Range and drops Authorization; its URL is reused, and re-resolved once refused', async () => {
    front.clear();
    front.log.length = 0;
    storage.log.length = 0;
    const signed = `${storage.url}/v2/store/pack/blobs/${desc.digest}?X-Amz-Signature=s3cr3t`;
    front.add({
      method: 'GET',
      path: blobPath,
      action: { type: 'status', status: 307, headers: { location: signed } },
    });
    const s = origin();
    await expectBytes(s, 1000, 50_000);
    expect(blobGets(front)).toHaveLength(1);
    expect(blobGets(front)[0]!.headers.authorization).toMatch(/^Bearer /);
    const hit = blobGets(storage);
    expect(hit).toHaveLength(1);
    expect(hit[0]!.headers.range).toBe('bytes=1000-50999');
    expect(hit[0]!.headers.authorization).toBeUndefined();
    // the next ranges of this pack go straight to storage
    await Promise.all([
      expectBytes(s, 0, 10),
      expectBytes(s, 70_000, 4096),
      expectBytes(s, desc.size - 5, 5),
    ]);
    expect(blobGets(front)).toHaveLength(1);
    expect(blobGets(storage)).toHaveLength(4);
    // the signed URL expired: storage refuses it, the registry is asked for a new one
    storage.add({ method: 'GET', path: blobPath, times: 1, action: { type: 'status', status: 403 } });
    await expectBytes(s, 123_456, 654_321);
    expect(blobGets(front)).toHaveLength(2);
    expect(blobGets(storage)).toHaveLength(6);
    expect(blobGets(storage).every((g) => g.headers.authorization === undefined)).toBe(true);
    storage.clear();
  });

  it('a server that ignores Range is reported as such, without downloading the blob', async () => {
    front.clear();
    front.add({ method: 'GET', path: blobPath, action: { type: 'ignore-range' } });
    const got = await readRange(origin(), desc, 4096, 8192, opts);
    expect(got).toBeInstanceOf(RangeIgnored);
    expect((got as RangeIgnored).why).toMatch(/ignored the Range/);
    // asking for the whole blob, a 200 is the answer
    await expectBytes(origin(), 0, desc.size);
    front.clear();
  });

  it('refuses a wrong Content-Range, a wrong total, a long body, a short one and 416', async () => {
    const range = (start: number, end: number, total = desc.size) => `bytes ${start}-${end}/${total}`;
    const cases: { headers: Record<string, string>; body?: string; error: RegExp }[] = [
      {
        headers: { 'content-range': range(101, 200) },
        body: 'x'.repeat(100),
        error: /Content-Range "bytes 101-200/,
      },
      {
        headers: { 'content-range': range(100, 199, desc.size + 1) },
        body: 'x'.repeat(100),
        error: /Content-Range/,
      },
      { headers: { 'content-range': range(100, 209) }, body: 'x'.repeat(110), error: /Content-Range/ },
      // right head, then more bytes than asked for (chunked, so nothing stops them)
      { headers: { 'content-range': range(100, 199) }, body: 'x'.repeat(5000), error: /more bytes than/ },
      {
        headers: { 'content-range': range(100, 199), 'content-length': '90' },
        body: 'x'.repeat(90),
        error: /answered 90 bytes for a range of 100/,
      },
    ];
    for (const c of cases) {
      front.clear();
      front.add({
        method: 'GET',
        path: blobPath,
        action: { type: 'status', status: 206, headers: c.headers, body: c.body ?? '' },
      });
      const err = await failure(readRange(origin(), desc, 100, 100, opts));
      expect(err.kind).toBe('integrity');
      expect(err.message).toMatch(c.error);
    }
    // a copy shorter than the manifest says: the proxy ends the body early, with a matching length
    front.clear();
    front.add({ method: 'GET', path: blobPath, action: { type: 'truncate-response', bytes: 150 } });
    expect((await failure(readRange(origin(), desc, 100, 100, opts))).message).toMatch(/answered 50 bytes/);
    front.clear();
    front.add({ method: 'GET', path: blobPath, action: { type: 'truncate-response', bytes: 50 } });
    expect((await failure(readRange(origin(), desc, 100, 100, opts))).message).toMatch(/HTTP 416/);
    front.clear();
  });

  it('a connection cut mid-range continues from the byte where it stopped', async () => {
    front.clear();
    front.log.length = 0;
    front.add({
      method: 'GET',
      path: blobPath,
      times: 2,
      action: { type: 'reset-response', afterBytes: 200_000 },
    });
    let counted = 0;
    await expectBytes(origin(), 5000, 1 << 20, { ...opts, onBytes: (n) => (counted += n) });
    expect(counted).toBe(1 << 20);
    const starts = blobGets(front).map((g) => Number(/bytes=(\d+)-/.exec(String(g.headers.range))![1]));
    expect(starts).toHaveLength(3);
    expect(starts[0]).toBe(5000);
    expect(starts[1]).toBeGreaterThan(5000);
    expect(starts[2]).toBeGreaterThan(starts[1]!);
    expect(blobGets(front).every((g) => g.headers.range!.endsWith(`-${5000 + (1 << 20) - 1}`))).toBe(true);
    front.clear();
  });

  it('a stalled answer is dropped after idleMs and asked again', async () => {
    front.clear();
    front.log.length = 0;
    front.add({ method: 'GET', path: blobPath, times: 1, action: { type: 'delay', ms: 1500 } });
    await expectBytes(origin(), 7, 7000, { ...opts, idleMs: 300 });
    expect(blobGets(front)).toHaveLength(2);
    front.clear();
  });

  it('retries 5xx and 429 (Retry-After honoured), and gives up after the attempts', async () => {
    front.clear();
    front.log.length = 0;
    front.add({ method: 'GET', path: blobPath, times: 2, action: { type: 'status', status: 503 } });
    front.add({
      method: 'GET',
      path: blobPath,
      times: 1,
      action: { type: 'status', status: 429, headers: { 'retry-after': '1' } },
    });
    const t0 = Date.now();
    await expectBytes(origin(), 42, 4242);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
    expect(blobGets(front)).toHaveLength(4);
    front.clear();
    front.log.length = 0;
    front.add({ method: 'GET', path: blobPath, action: { type: 'status', status: 502 } });
    const err = await failure(readRange(origin(), desc, 0, 10, opts));
    expect(err.kind).toBe('network');
    expect(err.message).toMatch(/HTTP 502/);
    expect(blobGets(front)).toHaveLength(fast.attempts);
    // a wait longer than the policy allows is not waited for
    front.clear();
    front.add({
      method: 'GET',
      path: blobPath,
      action: { type: 'status', status: 429, headers: { 'retry-after': '3600' } },
    });
    expect((await failure(readRange(origin(), desc, 0, 10, opts))).message).toMatch(/retry .* after 3600 s/);
    front.clear();
  });

  it('a refused token is renewed once; a second refusal is an error', async () => {
    front.clear();
    const s = origin();
    await expectBytes(s, 0, 100);
    const tokens = reg.tokenRequests.length;
    front.add({ method: 'GET', path: blobPath, times: 1, action: { type: 'status', status: 401 } });
    await expectBytes(s, 100, 100);
    expect(reg.tokenRequests.length).toBe(tokens + 1);
    front.clear();
    front.add({ method: 'GET', path: blobPath, action: { type: 'status', status: 403 } });
    const err = await failure(readRange(s, desc, 0, 10, opts));
    expect(err.message).toMatch(/refused \(HTTP 403/);
    front.clear();
  });

  it('a mirror that answers wrongly is skipped for the origin', async () => {
    const mirror = await startFaultProxy(plain.url);
    try {
      front.clear();
      front.log.length = 0;
      const s = new RegistryStore(client(front.host, 'ranges/pack', alice, [mirror.url]));
      await expectBytes(s, 10, 1000);
      expect(blobGets(mirror).filter((g) => g.headers.range === 'bytes=10-1009')).toHaveLength(1);
      expect(blobGets(front)).toHaveLength(0);
      mirror.add({
        method: 'GET',
        path: blobPath,
        action: {
          type: 'status',
          status: 206,
          headers: { 'content-range': 'bytes 0-99/5' },
          body: 'y'.repeat(100),
        },
      });
      await expectBytes(s, 20, 100);
      expect(blobGets(front)).toHaveLength(1);
      expect(blobGets(front)[0]!.headers.range).toBe('bytes=20-119');
    } finally {
      await mirror.stop();
    }
  });

  it('stops at once when aborted', async () => {
    front.clear();
    front.add({
      method: 'GET',
      path: blobPath,
      action: { type: 'status', status: 503, headers: { 'retry-after': '2' } },
    });
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 200);
    const t0 = Date.now();
    const err = await failure(readRange(origin(), desc, 0, 10, { ...opts, signal: ctl.signal }));
    expect(err.kind).toBe('interrupted');
    expect(Date.now() - t0).toBeLessThan(1500);
    front.clear();
  });

  it('getBlob with an end reads only [offset, end)', async () => {
    front.clear();
    front.log.length = 0;
    const r = await origin().getBlob(desc, 300, 400);
    expect(r.offset).toBe(300);
    expect(r.end).toBe(400);
    const parts: Buffer[] = [];
    for await (const c of r.stream) parts.push(c as Buffer);
    expect(Buffer.concat(parts).equals(data.subarray(300, 400))).toBe(true);
    expect(blobGets(front)[0]!.headers.range).toBe('bytes=300-399');
  });
});
