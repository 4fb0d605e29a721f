import { createHash } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { makeAgents, sendOnce } from '../../src/net/http.js';
import { bypassed, proxyFor } from '../../src/net/proxy.js';
import { HttpClient } from '../../src/oci/http.js';
import { RegistryClient } from '../../src/oci/registry.js';
import { uploadBlob } from '../../src/oci/upload.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { OCI_MANIFEST } from '../../src/formats/oci-media.js';
import { buildLayout, makeDisk } from '../helpers/oci-images.js';
import { startS3rver } from '../helpers/s3rver.js';
import { makeS3Client } from '../../src/stores/s3-client.js';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { selfSignedCert } from '../helpers/certs.js';

/**
 * HTTPS_PROXY / HTTP_PROXY / NO_PROXY: curl's matching rules, and real traffic through a small
 * proxy written here (CONNECT tunnels for https, absolute-URI requests for http) to an https
 * docker-registry with a self-signed certificate and a plain-http one.
 */
process.env.ORB_RETRY_BASE_MS = '20';
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));
const PROXY_VARS = [
  'HTTPS_PROXY',
  'https_proxy',
  'HTTP_PROXY',
  'http_proxy',
  'NO_PROXY',
  'no_proxy',
  'ALL_PROXY',
  'all_proxy',
];
const saved = Object.fromEntries(PROXY_VARS.map((k) => [k, process.env[k]]));
const clearProxyEnv = () => {
  for (const k of PROXY_VARS) delete process.env[k];
};
clearProxyEnv();

interface TestProxy {
  url: string;
  connects: string[];
  absolute: string[];
  /** bytes carried in both directions */
  bytes: number;
  stop(): Promise<void>;
}

async function startProxy(): Promise<TestProxy> {
  const p = { connects: [] as string[], absolute: [] as string[], bytes: 0 } as TestProxy;
  const tunnels = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    // an http target: the request line carries the absolute URI
    p.absolute.push(req.url ?? '');
    const u = new URL(req.url ?? '');
    const out = http.request(
      {
        host: u.hostname,
        port: u.port,
        method: req.method,
        path: u.pathname + u.search,
        headers: req.headers,
      },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.on('data', (d: Buffer) => (p.bytes += d.length));
        r.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    p.connects.push(req.url ?? '');
    tunnels.add(client);
    client.on('close', () => tunnels.delete(client));
    const [host, port] = (req.url ?? '').split(/:(?=\d+$)/);
    const up = net.connect(Number(port), host!, () => {
      client.write('HTTP/1.1 200 Connection established\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    up.on('data', (d: Buffer) => (p.bytes += d.length));
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  p.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  p.stop = () =>
    new Promise<void>((r) => {
      for (const s of tunnels) s.destroy();
      server.closeAllConnections();
      server.close(() => r());
    });
  return p;
}

describe('NO_PROXY and the proxy variables (curl rules)', () => {
  const u = (s: string) => new URL(s);
  it('matches names with their subdomains, a leading dot or not, and * for everything', () => {
    expect(bypassed(u('https://ghcr.io/'), 'ghcr.io')).toBe(true);
    expect(bypassed(u('https://pkg.ghcr.io/'), 'ghcr.io')).toBe(true);
    expect(bypassed(u('https://pkg.ghcr.io/'), '.ghcr.io')).toBe(true);
    expect(bypassed(u('https://notghcr.io/'), 'ghcr.io')).toBe(false);
    expect(bypassed(u('https://anything/'), 'x, *')).toBe(true);
    expect(bypassed(u('https://a.example/'), ' example.org , a.example ')).toBe(true);
  });
  it('matches IPs exactly or by CIDR, ports only when given, and has no implicit loopback bypass', () => {
    expect(bypassed(u('http://127.0.0.1:5000/'), '')).toBe(false);
    expect(bypassed(u('http://localhost:5000/'), 'example.org')).toBe(false);
    expect(bypassed(u('http://127.0.0.1:5000/'), '127.0.0.1')).toBe(true);
    expect(bypassed(u('http://127.0.0.2:5000/'), '127.0.0.0/8')).toBe(true);
    expect(bypassed(u('http://10.1.2.3/'), '10.0.0.0/16')).toBe(false);
    expect(bypassed(u('http://[::1]:5000/'), '::1')).toBe(true);
    expect(bypassed(u('http://127.0.0.1:5000/'), '127.0.0.1:5000')).toBe(true);
    expect(bypassed(u('http://127.0.0.1:5001/'), '127.0.0.1:5000')).toBe(false);
    expect(bypassed(u('https://reg.example/'), 'reg.example:443')).toBe(true);
  });
  it('reads the lower-case variable first, picks by the target scheme, and honours NO_PROXY', () => {
    const env = { HTTPS_PROXY: 'http://upper:1', https_proxy: 'http://lower:2', HTTP_PROXY: 'plain:3' };
    expect(proxyFor(u('https://x.example/'), env)?.url.host).toBe('lower:2');
    expect(proxyFor(u('http://x.example/'), env)?.url.host).toBe('plain:3');
    expect(proxyFor(u('http://x.example/'), { ...env, NO_PROXY: 'ample' })).toBeDefined();
    expect(proxyFor(u('http://x.example/'), { ...env, no_proxy: 'x.example' })).toBeUndefined();
    expect(proxyFor(u('http://x.example/'), {})).toBeUndefined();
    expect(proxyFor(u('https://x/'), { https_proxy: 'http://me:p%40ss@p:8' })?.auth).toBe(
      'Basic ' + Buffer.from('me:p@ss').toString('base64'),
    );
  });
});

let dir: string;
let tlsReg: Registry;
let plainReg: Registry;
let proxy: TestProxy;
let ca: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-proxy-'));
  selfSignedCert({
    cert: join(dir, 'cert.pem'),
    key: join(dir, 'key.pem'),
    subject: '/CN=127.0.0.1',
    ip: '127.0.0.1',
  });
  ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
  tlsReg = await startRegistry({ tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') } });
  plainReg = await startRegistry();
  proxy = await startProxy();
}, 60_000);

afterEach(clearProxyEnv);

afterAll(async () => {
  await proxy?.stop();
  await tlsReg?.stop();
  await plainReg?.stop();
  rmSync(dir, { recursive: true, force: true });
  for (const [k, v] of Object.entries(saved)) if (v !== undefined) process.env[k] = v;
});

function tlsClient(repository: string): RegistryClient {
  return new RegistryClient({
    ref: { host: tlsReg.host, apiHost: tlsReg.host, repository },
    credentials: null,
    log: silentLogger,
    http: new HttpClient({ maxSockets: 4, tls: { ca: [ca] } }),
    // loopback means plain http unless a hosts.toml `server` says https
    mirrors: { mirrors: [], server: tlsReg.url },
  });
}

describe('traffic through the proxy', () => {
  it('tunnels https registry traffic with CONNECT when HTTPS_PROXY is set', async () => {
    process.env.HTTPS_PROXY = proxy.url;
    const client = tlsClient('proxy/tls');
    const blob = Buffer.alloc(300_000, 7);
    const digest = 'sha256:' + createHash('sha256').update(blob).digest('hex');
    await uploadBlob(
      client,
      { mediaType: 'application/octet-stream', digest, size: blob.length },
      () => Readable.from([blob]),
      {
        chunkSize: 512 << 20,
      },
    );
    const config = Buffer.from('{}');
    const configDigest = 'sha256:' + createHash('sha256').update(config).digest('hex');
    await uploadBlob(
      client,
      { mediaType: 'application/vnd.oci.empty.v1+json', digest: configDigest, size: 2 },
      () => Readable.from([config]),
      { chunkSize: 512 << 20 },
    );
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: configDigest, size: 2 },
        layers: [{ mediaType: 'application/octet-stream', digest, size: blob.length }],
      }),
    );
    await client.putManifest(manifest, OCI_MANIFEST, 'v1');
    const m = await client.getManifest('v1');
    expect(m.bytes.equals(manifest)).toBe(true);
    const { res } = await client.getBlob(digest, blob.length);
    expect((await res.buffer()).equals(blob)).toBe(true);
    client.close();
    expect(proxy.connects).toContain(tlsReg.host);
    expect(proxy.bytes).toBeGreaterThan(blob.length);
  }, 60_000);

  it('goes direct when NO_PROXY names the host (and only then)', async () => {
    process.env.HTTPS_PROXY = proxy.url;
    process.env.NO_PROXY = 'example.org,127.0.0.1';
    proxy.connects.length = 0;
    const agents = makeAgents(2, { ca: [ca] });
    const res = await sendOnce({ url: new URL(`${tlsReg.url}/v2/`), agents });
    res.resume();
    expect(res.statusCode).toBe(200);
    expect(proxy.connects).toHaveLength(0);
    agents.https.destroy();
  });

  it('sends plain-http pulls (fast path and workers included) to HTTP_PROXY with absolute URIs', async () => {
    const raw = join(dir, 'disk.raw');
    const sum = makeDisk(raw, { size: 2 << 20, chunkSize: 1 << 20, random: true });
    const layout = await buildLayout(raw, join(dir, 'layout'), 'v1', 1 << 20);
    const store = () =>
      new RegistryStore(
        new RegistryClient({
          ref: { host: plainReg.host, apiHost: plainReg.host, repository: 'proxy/plain' },
          credentials: null,
          log: silentLogger,
        }),
      );
    await publish({
      source: layout.dir,
      target: store(),
      tags: ['v1'],
      concurrency: 2,
      partSize: 1 << 30,
      log: silentLogger,
      progress: () => nullProgress,
    });
    process.env.http_proxy = proxy.url;
    proxy.absolute.length = 0;
    const out = join(dir, 'out.raw');
    await pull({
      source: store(),
      ref: 'v1',
      display: 'plain',
      output: out,
      format: 'raw',
      concurrency: 2,
      log: silentLogger,
      progress: () => nullProgress,
    });
    expect(await sha256File(out)).toBe(sum);
    expect(
      proxy.absolute.some((u) => u.startsWith(`http://${plainReg.host}/v2/proxy/plain/manifests/v1`)),
    ).toBe(true);
    expect(
      proxy.absolute.some((u) => u.startsWith(`http://${plainReg.host}/v2/proxy/plain/blobs/sha256:`)),
    ).toBe(true);
  }, 60_000);

  it('carries the S3 store (AWS SDK) through the proxy with CONNECT', async () => {
    const s3 = await startS3rver();
    process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
    try {
      process.env.HTTP_PROXY = proxy.url;
      proxy.connects.length = 0;
      const { client } = await makeS3Client({ endpoint: s3.endpoint, pathStyle: true, log: silentLogger });
      const body = Buffer.alloc(100_000, 3);
      await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'via-proxy', Body: body }));
      const got = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: 'via-proxy' }));
      expect(Buffer.from(await got.Body!.transformToByteArray()).equals(body)).toBe(true);
      client.destroy();
      expect(proxy.connects).toContain(`127.0.0.1:${s3.port}`);
    } finally {
      clearProxyEnv();
      await s3.close();
    }
  }, 60_000);
});
