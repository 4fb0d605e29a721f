import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { sha256File } from '../../src/core/fsutil.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { OciLayout } from '../../src/oci/layout.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { RegistryClient } from '../../src/oci/registry.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { buildLayout, makeDisk, type BuiltLayout } from '../helpers/oci-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * Fault injection between our client and a real registry (docker-registry on 127.0.0.1): resets
 * in the middle of blobs, 503/429 with Retry-After, 401 mid-push, flipped bytes, a server that
 * ignores Range, truncated blobs, and two publishes racing for one tag.
 */
process.env.ORB_RETRY_BASE_MS = '20';
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));

const log = silentLogger;
const progress = () => nullProgress;
let reg: Registry;
let proxy: FaultProxy;
let dir: string;
let layout: BuiltLayout;
let diskSum: string;

function store(repo: string, chunk = 512 << 20, host = proxy.host): RegistryStore {
  return new RegistryStore(
    new RegistryClient({ ref: { host, apiHost: host, repository: repo }, credentials: null, log }),
    chunk,
  );
}

function putsByDigest(p: FaultProxy): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of p.log) {
    const d = /[?&]digest=(sha256(?:%3A|:)[a-f0-9]{64})/.exec(e.url)?.[1]?.replace('%3A', ':');
    if (e.method === 'PUT' && d) m.set(d, (m.get(d) ?? 0) + 1);
  }
  return m;
}

/** The packs of a chunked layout (layers[0] is its index, too small to break in the middle). */
async function layerDigests(l: BuiltLayout): Promise<{ digest: string; size: number }[]> {
  const ol = new OciLayout(l.dir);
  const m = JSON.parse((await ol.readBytes(l.manifestDigest)).toString()) as {
    layers: { digest: string; size: number }[];
  };
  return m.layers.slice(1);
}

beforeAll(async () => {
  reg = await startRegistry();
  proxy = await startFaultProxy(reg.url);
  dir = mkdtempSync(join(tmpdir(), 'orb-faults-'));
  const raw = join(dir, 'disk.raw');
  // incompressible 1 MiB chunks (stored raw), one zero chunk in four
  diskSum = makeDisk(raw, { size: 8 << 20, chunkSize: 1 << 20, random: true });
  layout = await buildLayout(raw, join(dir, 'layout'), 'v1', 1 << 20);
});

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('publish through faults', () => {
  it('waits out 503 and 429 with Retry-After, then succeeds', async () => {
    proxy.clear();
    proxy.add({
      method: 'HEAD',
      path: /\/blobs\/sha256:/,
      times: 1,
      action: { type: 'status', status: 503, headers: { 'retry-after': '1' } },
    });
    proxy.add({
      method: 'PUT',
      path: /\/manifests\//,
      times: 1,
      action: { type: 'status', status: 429, headers: { 'retry-after': '1' } },
    });
    const t0 = Date.now();
    const r = await publish({
      source: layout.dir,
      target: store('faults/retry'),
      tags: ['v1'],
      concurrency: 3,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r.digest).toBe(layout.manifestDigest);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(2000);
    expect(proxy.log.filter((e) => e.fault === 'status')).toHaveLength(2);
  });

  it('a connection reset in the middle of a blob restarts that blob only, not the artifact', async () => {
    proxy.clear();
    proxy.log.length = 0;
    const [big] = await layerDigests(layout);
    proxy.add({
      method: 'PUT',
      path: new RegExp(`digest=${big!.digest.replace(':', '(:|%3A)')}`),
      times: 1,
      action: { type: 'reset-request', afterBytes: 300_000, forward: true },
    });
    const r = await publish({
      source: layout.dir,
      target: store('faults/reset'),
      tags: ['v1'],
      concurrency: 2,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r.bytesUploaded).toBe(r.bytesTotal);
    const puts = putsByDigest(proxy);
    expect(puts.get(big!.digest)).toBe(2);
    for (const [d, n] of puts) if (d !== big!.digest) expect(n, d).toBe(1);
    // the registry has the artifact, complete
    const out = join(dir, 'reset.raw');
    await pull({
      source: store('faults/reset', undefined, reg.host),
      ref: 'v1',
      display: 'reset',
      output: out,
      format: 'raw',
      concurrency: 4,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(diskSum);
  });

  it('a chunked upload interrupted mid-PATCH resumes at the offset the registry reports', async () => {
    proxy.clear();
    proxy.log.length = 0;
    // 1 MiB blobs in 256 KiB PATCHes; the third PATCH of the first blob dies before reaching the registry
    proxy.add({
      method: 'PATCH',
      path: /\/blobs\/uploads\//,
      skip: 2,
      times: 1,
      action: { type: 'reset-request', afterBytes: 100_000, forward: false },
    });
    const r = await publish({
      source: layout.dir,
      target: store('faults/patch', 256 << 10),
      tags: ['v1'],
      concurrency: 1,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r.digest).toBe(layout.manifestDigest);
    const i = proxy.log.findIndex((e) => e.fault === 'reset-request');
    const after = proxy.log.slice(i + 1);
    // status query, then the PATCH continues at 512 KiB instead of starting over
    expect(after[0]!.method).toBe('GET');
    const next = after.find((e) => e.method === 'PATCH')!;
    expect(next.headers['content-range']).toBe(`${512 << 10}-${(768 << 10) - 1}`);
  });

  it('a registry that caps request bodies gets smaller PATCHes, from where the upload stands', async () => {
    proxy.clear();
    proxy.log.length = 0;
    const file = join(dir, 'big.bin');
    writeFileSync(file, randomBytes(6 << 20));
    // like GHCR: a body over the cap is refused with 416 "exceeds the maximum permissible limit"
    proxy.add({
      method: 'PATCH',
      when: (req) => Number(req.headers['content-length']) > 2_500_000,
      action: {
        type: 'status',
        status: 416,
        body: JSON.stringify({
          errors: [
            {
              code: 'RANGE_INVALID',
              message: 'the request body is too large and exceeds the maximum permissible limit of 2.4MiB',
            },
          ],
        }),
      },
    });
    await publish({
      source: file,
      target: store('faults/cap', 4 << 20),
      tags: ['v1'],
      concurrency: 1,
      partSize: 1 << 30,
      log,
      progress,
    });
    const patches = proxy.log.filter((e) => e.method === 'PATCH');
    expect(patches[0]!.status).toBe(416);
    expect(
      patches.slice(1).every((e) => e.status === 202 && Number(e.headers['content-length']) <= 2 << 20),
    ).toBe(true);
    const back = join(dir, 'big.back');
    await pull({
      source: store('faults/cap', undefined, reg.host),
      ref: 'v1',
      display: 'cap',
      output: back,
      format: 'auto',
      concurrency: 2,
      log,
      progress,
    });
    expect(await sha256File(back)).toBe(await sha256File(file));
  });

  it('a 401 in the middle of a push refreshes the token once', async () => {
    const treg = await startRegistry({ auth: 'token', users: { alice: 'wonderland' } });
    const tproxy = await startFaultProxy(treg.url);
    try {
      const challenge = `Bearer realm="${treg.tokenUrl}",service="orb-test-registry",scope="repository:auth/disk:pull,push"`;
      tproxy.add({
        method: 'PUT',
        path: /\/blobs\/uploads\//,
        skip: 2,
        times: 1,
        action: { type: 'status', status: 401, headers: { 'www-authenticate': challenge } },
      });
      const client = new RegistryClient({
        ref: { host: tproxy.host, apiHost: tproxy.host, repository: 'auth/disk' },
        credentials: { username: 'alice', password: 'wonderland' },
        log,
      });
      const r = await publish({
        source: layout.dir,
        target: new RegistryStore(client),
        tags: ['v1'],
        concurrency: 1,
        partSize: 1 << 30,
        log,
        progress,
      });
      expect(r.digest).toBe(layout.manifestDigest);
      const pushTokens = treg.tokenRequests.filter((t) => t.scope.some((s) => s.includes('push')));
      expect(pushTokens).toHaveLength(2); // the first, and exactly one refresh
      expect(pushTokens.every((t) => t.auth === 'basic' && t.user === 'alice')).toBe(true);

      // a registry that keeps refusing: one refresh, then a clear error
      tproxy.clear();
      treg.tokenRequests.length = 0;
      tproxy.add({
        method: 'HEAD',
        action: { type: 'status', status: 401, headers: { 'www-authenticate': challenge } },
      });
      const c2 = new RegistryClient({
        ref: { host: tproxy.host, apiHost: tproxy.host, repository: 'auth/disk' },
        credentials: { username: 'alice', password: 'wonderland' },
        log,
      });
      const err = await publish({
        source: layout.dir,
        target: new RegistryStore(c2),
        tags: ['v2'],
        concurrency: 1,
        partSize: 1 << 30,
        log,
        progress,
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OrbError);
      expect((err as OrbError).message).toMatch(/refused .*401/);
      expect(treg.tokenRequests.length).toBeLessThanOrEqual(2);
    } finally {
      await tproxy.stop();
      await treg.stop();
    }
  });

  it('two publishes racing for one tag leave it on one complete manifest', async () => {
    const raw2 = join(dir, 'disk2.raw');
    const sum2 = makeDisk(raw2, { size: 8 << 20, chunkSize: 1 << 20, random: true, seed: (i) => 100 + i });
    const l2 = await buildLayout(raw2, join(dir, 'layout2'), 'v1', 1 << 20);
    proxy.clear();
    const [a, b] = await Promise.all([
      publish({
        source: layout.dir,
        target: store('faults/race'),
        tags: ['same'],
        concurrency: 2,
        partSize: 1 << 30,
        log,
        progress,
      }),
      publish({
        source: l2.dir,
        target: store('faults/race'),
        tags: ['same'],
        concurrency: 2,
        partSize: 1 << 30,
        log,
        progress,
      }),
    ]);
    const now = await store('faults/race').getManifest('same');
    expect([a.digest, b.digest]).toContain(now.digest);
    const out = join(dir, 'race.raw');
    await pull({
      source: store('faults/race'),
      ref: 'same',
      display: 'race',
      output: out,
      format: 'raw',
      concurrency: 4,
      log,
      progress,
    });
    expect([diskSum, sum2]).toContain(await sha256File(out));
  });
});

describe('pull through faults', () => {
  beforeAll(async () => {
    proxy.clear();
    await publish({
      source: layout.dir,
      target: store('faults/pull', undefined, reg.host),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
  });

  it('a reset in the middle of a blob continues with a Range request', async () => {
    proxy.clear();
    proxy.log.length = 0;
    const [first] = await layerDigests(layout);
    proxy.add({
      method: 'GET',
      path: new RegExp(`/blobs/${first!.digest}`),
      times: 1,
      action: { type: 'reset-response', afterBytes: 400_000 },
    });
    const out = join(dir, 'range.raw');
    const r = await pull({
      source: store('faults/pull'),
      ref: 'v1',
      display: 'range',
      output: out,
      format: 'raw',
      concurrency: 3,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(diskSum);
    const gets = proxy.log.filter((e) => e.method === 'GET' && e.url.includes(first!.digest));
    expect(gets).toHaveLength(2);
    expect(gets[1]!.headers.range).toMatch(/^bytes=[1-9]\d*-$/);
    // only the rest of the blob went over the wire again (the download counts the packs' bytes)
    const packs = await layerDigests(layout);
    expect(r.bytesDownloaded).toBe(packs.reduce((a, p) => a + p.size, 0));
  });

  it('a server that ignores Range restarts that blob and never appends', async () => {
    proxy.clear();
    proxy.log.length = 0;
    const [first] = await layerDigests(layout);
    const path = new RegExp(`/blobs/${first!.digest}`);
    proxy.add({ method: 'GET', path, times: 1, action: { type: 'reset-response', afterBytes: 400_000 } });
    proxy.add({ method: 'GET', path, action: { type: 'ignore-range' } });
    const out = join(dir, 'norange.raw');
    await pull({
      source: store('faults/pull'),
      ref: 'v1',
      display: 'norange',
      output: out,
      format: 'raw',
      concurrency: 3,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(diskSum);
    const gets = proxy.log.filter((e) => e.method === 'GET' && e.url.includes(first!.digest));
    expect(gets[1]!.headers.range).toBeDefined();
    expect(gets[1]!.status).toBe(200);
  });

  it('a flipped byte is rejected, the output never appears, and a rerun finishes the job', async () => {
    proxy.clear();
    const layers = await layerDigests(layout);
    const bad = layers[2]!;
    proxy.add({
      method: 'GET',
      path: new RegExp(`/blobs/${bad.digest}`),
      action: { type: 'flip', offset: 1234 },
    });
    const out = join(dir, 'flip.raw');
    const err = await pull({
      source: store('faults/pull'),
      ref: 'v1',
      display: 'flip',
      output: out,
      format: 'raw',
      concurrency: 1,
      log,
      progress,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe('integrity');
    expect((err as OrbError).message).toContain(bad.digest);
    expect(existsSync(out)).toBe(false);
    proxy.clear();
    const r = await pull({
      source: store('faults/pull'),
      ref: 'v1',
      display: 'flip',
      output: out,
      format: 'raw',
      concurrency: 1,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(diskSum);
    expect(r.bytesResumed).toBeGreaterThan(0);
    expect(existsSync(`${out}.partial`)).toBe(false);
  });

  it('a truncated blob is a clear error and leaves no output', async () => {
    proxy.clear();
    const [first] = await layerDigests(layout);
    proxy.add({
      method: 'GET',
      path: new RegExp(`/blobs/${first!.digest}`),
      action: { type: 'truncate-response', bytes: 1000 },
    });
    const out = join(dir, 'trunc.raw');
    const err = await pull({
      source: store('faults/pull'),
      ref: 'v1',
      display: 'trunc',
      output: out,
      format: 'raw',
      concurrency: 2,
      log,
      progress,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).message).toMatch(/truncated/);
    expect(existsSync(out)).toBe(false);
    proxy.clear();
  });
});
