import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { hostsFile, loadMirrors } from '../../src/oci/mirrors.js';
import { RegistryClient } from '../../src/oci/registry.js';
import { RegistryStore, registryClientFor } from '../../src/stores/registry.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { orb } from '../helpers/cli.js';
import { buildLayout, makeDisk, type BuiltLayout } from '../helpers/oci-images.js';
import { freePort, startRegistry, type Registry } from '../helpers/registry.js';

/**
 * Registry mirrors against real servers on 127.0.0.1: an origin docker-registry behind a
 * counting proxy, and a second docker-registry in proxy mode (pull-through cache) as the mirror,
 * itself behind a counting proxy that can also serve it under another path (override_path).
 */
process.env.ORB_RETRY_BASE_MS = '20';
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));

interface Counter {
  host: string;
  url: string;
  requests: { method: string; url: string; headers: http.IncomingHttpHeaders }[];
  /** response body bytes of blob GETs */
  blobBytes: number;
  /** flip every byte of blob GET bodies (a mirror sending wrong bytes) */
  corrupt: boolean;
  reset(): void;
  stop(): Promise<void>;
}

/** A pass-through HTTP proxy in front of `target` that counts; `/mirror-api/` maps to `/v2/`. */
async function startCounter(target: string): Promise<Counter> {
  const up = new URL(target);
  const c = { requests: [], blobBytes: 0, corrupt: false } as unknown as Counter;
  const server = http.createServer((req, res) => {
    c.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    const path = (req.url ?? '/').replace(/^\/mirror-api\//, '/v2/');
    const out = http.request(
      {
        host: up.hostname,
        port: up.port,
        method: req.method,
        path,
        headers: { ...req.headers, host: up.host },
      },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        if (req.method === 'GET' && /\/blobs\/sha256:/.test(path)) {
          r.on('data', (d: Buffer) => (c.blobBytes += d.length));
          if (c.corrupt) {
            r.on('data', (d: Buffer) => res.write(d.map((b) => b ^ 0xff)));
            r.on('end', () => res.end());
            return;
          }
        }
        r.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  c.host = `127.0.0.1:${port}`;
  c.url = `http://${c.host}`;
  c.reset = () => {
    c.requests.length = 0;
    c.blobBytes = 0;
  };
  c.stop = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return c;
}

function recorder(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const push = (m: string) => lines.push(m);
  return { lines, info: push, warn: push, error: push, debug: () => {} };
}

let origin: Registry;
let mirror: Registry;
let atOrigin: Counter;
let atMirror: Counter;
let dir: string;
let layout: BuiltLayout;
let diskSum: string;
let blobTotal: number;

beforeAll(async () => {
  origin = await startRegistry();
  atOrigin = await startCounter(origin.url);
  mirror = await startRegistry({ proxyRemote: atOrigin.url });
  atMirror = await startCounter(mirror.url);
  dir = mkdtempSync(join(tmpdir(), 'orb-mirrors-'));
  const raw = join(dir, 'disk.raw');
  diskSum = makeDisk(raw, { size: 4 << 20, chunkSize: 1 << 20, random: true });
  layout = await buildLayout(raw, join(dir, 'layout'), 'v1', 1 << 20);
  const r = await publish({
    source: layout.dir,
    target: new RegistryStore(
      new RegistryClient({
        ref: { host: origin.host, apiHost: origin.host, repository: 'mirrors/img' },
        credentials: null,
        log: silentLogger,
      }),
    ),
    tags: ['v1'],
    concurrency: 2,
    partSize: 1 << 30,
    log: silentLogger,
    progress: () => nullProgress,
  });
  blobTotal = r.bytesTotal;
}, 60_000);

afterAll(async () => {
  await atMirror?.stop();
  await atOrigin?.stop();
  await mirror?.stop();
  await origin?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function pullWith(options: Record<string, string>, log: Logger = silentLogger): Promise<string> {
  const out = join(dir, `out-${Math.random().toString(36).slice(2)}.raw`);
  const client = registryClientFor(`oci://${atOrigin.host}/mirrors/img:v1`, {
    log,
    options: { 'hosts-dir': join(dir, 'no-such-dir'), ...options },
  });
  await pull({
    source: new RegistryStore(client),
    ref: 'v1',
    display: 'mirrors',
    output: out,
    format: 'raw',
    concurrency: 2,
    log,
    progress: () => nullProgress,
  });
  expect(await sha256File(out)).toBe(diskSum);
  rmSync(out, { force: true });
  return out;
}

describe('registry mirrors', () => {
  it('sends blobs through a pull-through mirror; the second pull costs the origin no blob bytes', async () => {
    atOrigin.reset();
    atMirror.reset();
    await pullWith({ mirror: atMirror.url });
    // first pull: the mirror fetched every blob from the origin once
    expect(atOrigin.blobBytes).toBeGreaterThanOrEqual(blobTotal);
    expect(atMirror.blobBytes).toBeGreaterThanOrEqual(blobTotal);
    const blobAsks = atMirror.requests.filter((r) => /\/blobs\/sha256:/.test(r.url));
    expect(blobAsks.length).toBeGreaterThan(0);
    for (const r of blobAsks) expect(r.url).toContain(`?ns=${encodeURIComponent(atOrigin.host)}`);
    // the tag resolved at the origin (no resolve capability for --mirror), never at the mirror
    expect(atOrigin.requests.some((r) => r.method === 'GET' && /\/manifests\/v1$/.test(r.url))).toBe(true);
    expect(atMirror.requests.some((r) => /\/manifests\/v1/.test(r.url))).toBe(false);

    atOrigin.reset();
    atMirror.reset();
    await pullWith({ mirror: atMirror.url });
    expect(atOrigin.blobBytes).toBe(0);
    expect(atMirror.blobBytes).toBeGreaterThanOrEqual(blobTotal);
  }, 60_000);

  it('skips a dead mirror (closed port) and says so once, then uses the origin', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const log = recorder();
    atOrigin.reset();
    await pullWith({ mirror: dead }, log);
    expect(atOrigin.blobBytes).toBeGreaterThanOrEqual(blobTotal);
    const said = log.lines.filter((l) => l.includes(`mirror ${dead}`));
    expect(said).toHaveLength(1);
  }, 60_000);

  it('honours hosts.toml from _default: server, order, override_path, header, capabilities', async () => {
    const hostsDir = join(dir, 'certs.d');
    const dead = `http://127.0.0.1:${await freePort()}`;
    mkdirSync(join(hostsDir, '_default'), { recursive: true });
    writeFileSync(
      join(hostsDir, '_default', 'hosts.toml'),
      [
        `server = "${atOrigin.url}"`,
        '',
        `[host."${dead}"]`,
        '  capabilities = ["pull", "resolve"]',
        '',
        `[host."${atMirror.url}/mirror-api"]`,
        '  capabilities = ["pull"]',
        '  override_path = true',
        '  [host."' + atMirror.url + '/mirror-api".header]',
        '    x-orb-mirror = "office"',
        '',
      ].join('\n'),
    );
    expect(hostsFile(hostsDir, atOrigin.host)).toBe(join(hostsDir, '_default', 'hosts.toml'));
    const cfg = loadMirrors({ host: atOrigin.host, hostsDir });
    expect(cfg.server).toBe(`${atOrigin.url}/`);
    expect(cfg.mirrors.map((m) => [m.origin, m.apiPath])).toEqual([
      [dead, '/v2'],
      [atMirror.url, '/mirror-api'],
    ]);
    for (const m of cfg.mirrors) m.http.close();

    atOrigin.reset();
    atMirror.reset();
    const log = recorder();
    await pullWith({ 'hosts-dir': hostsDir }, log);
    const viaPrefix = atMirror.requests.filter((r) => r.url.startsWith('/mirror-api/mirrors/img/blobs/'));
    expect(viaPrefix.length).toBeGreaterThan(0);
    for (const r of viaPrefix) expect(r.headers['x-orb-mirror']).toBe('office');
    // the mirror had them cached from the first test: nothing from the origin
    expect(atOrigin.blobBytes).toBe(0);
    expect(log.lines.filter((l) => l.includes(`mirror ${dead}`))).toHaveLength(1);
  }, 60_000);

  it('prefers HOST/hosts.toml over _default, and never sends origin credentials to a mirror', async () => {
    const hostsDir = join(dir, 'certs2.d');
    mkdirSync(join(hostsDir, '_default'), { recursive: true });
    mkdirSync(join(hostsDir, atOrigin.host), { recursive: true });
    writeFileSync(join(hostsDir, '_default', 'hosts.toml'), `[host."http://127.0.0.1:9"]\n`);
    writeFileSync(
      join(hostsDir, atOrigin.host, 'hosts.toml'),
      `[host."${atMirror.url}"]\n  capabilities = ["pull", "resolve"]\n`,
    );
    atMirror.reset();
    await pullWith({ 'hosts-dir': hostsDir, username: 'someone', password: 'origin-secret' });
    // resolve allowed: the tag came from the mirror too
    expect(atMirror.requests.some((r) => /\/manifests\/v1\?ns=/.test(r.url))).toBe(true);
    for (const r of atMirror.requests) expect(JSON.stringify(r.headers)).not.toContain('b3JpZ2luLXNlY3JldA');
    for (const r of atMirror.requests) expect(r.headers.authorization ?? '').not.toMatch(/^Basic/);
  }, 60_000);

  it('the orb CLI takes mirrors from ORB_REGISTRY_MIRRORS and --hosts-dir (bundle)', async () => {
    atOrigin.reset();
    atMirror.reset();
    const out = join(dir, 'cli.raw');
    const r = await orb(
      ['pull', `oci://${atOrigin.host}/mirrors/img:v1`, '--output', out, '--hosts-dir', join(dir, 'none')],
      { ORB_REGISTRY_MIRRORS: `http://127.0.0.1:${await freePort()},${atMirror.url}` },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(await sha256File(out)).toBe(diskSum);
    expect(atMirror.requests.some((q) => /\/blobs\/sha256:.*\?ns=/.test(q.url))).toBe(true);
    expect(atOrigin.blobBytes).toBe(0);
    expect(r.stderr + r.stdout).toMatch(/mirror http:\/\/127\.0\.0\.1:\d+: .*using the next/);
  }, 60_000);

  it('drops a mirror that sends wrong bytes for a blob and takes it from the origin', async () => {
    atMirror.corrupt = true;
    try {
      atOrigin.reset();
      const log = recorder();
      await pullWith({ mirror: atMirror.url }, log);
      // every blob came from the origin after the mirror's copy failed its digest
      expect(atOrigin.blobBytes).toBeGreaterThanOrEqual(blobTotal);
      expect(log.lines.filter((l) => l.includes(`mirror ${atMirror.url}`))).toHaveLength(1);
    } finally {
      atMirror.corrupt = false;
    }
  }, 60_000);
});
