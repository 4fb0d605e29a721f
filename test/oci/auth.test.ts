import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { sha256File } from '../../src/core/fsutil.js';
import { redact, silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { parseChallenge } from '../../src/oci/auth.js';
import { blobUrls, expiresIn } from '../../src/oci/blob-url.js';
import { resolveCredentials } from '../../src/oci/credentials.js';
import { parseRetryAfter } from '../../src/net/retry.js';
import { isLoopbackHost } from '../../src/net/loopback.js';
import { parseLayoutRef, parseRegistryRef } from '../../src/oci/reference.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { RegistryClient } from '../../src/oci/registry.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { buildLayout, makeDisk, sha256, type BuiltLayout } from '../helpers/oci-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * References, challenges and credentials (pure), then the bearer flow against docker-registry
 * with a token server: credentials from docker config.json, anonymous pull tokens, a refused
 * anonymous push, and anonymous blob URLs (direct and redirected).
 */
process.env.ORB_RETRY_BASE_MS = '20';
const log = silentLogger;
const progress = () => nullProgress;

describe('references, challenges, credentials', () => {
  it('parses oci:// and oci-layout: references strictly', () => {
    expect(parseRegistryRef('oci://ghcr.io/acme/win11:2025-06')).toEqual({
      host: 'ghcr.io',
      apiHost: 'ghcr.io',
      repository: 'acme/win11',
      tag: '2025-06',
    });
    const d = `sha256:${'a'.repeat(64)}`;
    expect(parseRegistryRef(`oci://127.0.0.1:5000/x/y@${d}`)).toMatchObject({
      host: '127.0.0.1:5000',
      repository: 'x/y',
      digest: d,
    });
    expect(parseRegistryRef('oci://docker.io/ubuntu:24.04')).toMatchObject({
      apiHost: 'registry-1.docker.io',
      repository: 'library/ubuntu',
    });
    expect(() => parseRegistryRef('oci://ghcr.io/Acme/Win')).toThrow(/repository name/);
    expect(() => parseRegistryRef('oci://ghcr.io')).toThrow(/no registry host and repository/);
    expect(() => parseRegistryRef('oci://ghcr.io/a:b:c')).toThrow();
    expect(parseLayoutRef('oci-layout:/tmp/l:v1')).toEqual({ dir: '/tmp/l', tag: 'v1' });
    expect(parseLayoutRef('oci-layout:./out/layout')).toEqual({ dir: './out/layout' });
    expect(isLoopbackHost('127.0.0.1:5000')).toBe(true);
    expect(isLoopbackHost('localhost')).toBe(true);
    expect(isLoopbackHost('ghcr.io')).toBe(false);
  });

  it('parses WWW-Authenticate challenges and Retry-After', () => {
    expect(
      parseChallenge('Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull"'),
    ).toEqual({
      scheme: 'bearer',
      realm: 'https://ghcr.io/token',
      service: 'ghcr.io',
      scope: 'repository:a/b:pull',
    });
    expect(parseChallenge('Basic realm="Registry Realm"')).toEqual({
      scheme: 'basic',
      realm: 'Registry Realm',
    });
    expect(parseRetryAfter('3')).toBe(3000);
    expect(parseRetryAfter(new Date(Date.now() + 5000).toUTCString())).toBeGreaterThan(3000);
    expect(parseRetryAfter('soon')).toBeUndefined();
  });

  it('finds credentials: explicit, GITHUB_TOKEN for ghcr.io, GitLab CI, docker config.json (base64 auth)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'orb-cred-'));
    try {
      writeFileSync(
        join(dir, 'config.json'),
        JSON.stringify({
          auths: {
            'registry.example.com': { auth: Buffer.from('bob:s3cr3t:with:colons').toString('base64') },
            'https://other.example': { username: 'u', password: 'pw1' },
          },
        }),
      );
      const env = { DOCKER_CONFIG: dir, HOME: dir };
      expect(resolveCredentials('registry.example.com', { env })).toMatchObject({
        username: 'bob',
        password: 's3cr3t:with:colons',
      });
      expect(resolveCredentials('other.example', { env })).toMatchObject({ username: 'u', password: 'pw1' });
      expect(resolveCredentials('nowhere.example', { env })).toBeUndefined();
      expect(
        resolveCredentials('ghcr.io', {
          env: { ...env, GITHUB_TOKEN: 'ghs_token123', GITHUB_ACTOR: 'octo' },
        }),
      ).toMatchObject({ username: 'octo', password: 'ghs_token123', source: 'GITHUB_TOKEN' });
      const gl = {
        ...env,
        CI_REGISTRY: 'registry.gitlab.example:5050',
        CI_REGISTRY_USER: 'gitlab-ci-token',
        CI_REGISTRY_PASSWORD: 'glcbt-xyz',
      };
      expect(resolveCredentials('registry.gitlab.example:5050', { env: gl })).toMatchObject({
        username: 'gitlab-ci-token',
        password: 'glcbt-xyz',
      });
      expect(resolveCredentials('x.example', { env, username: 'me', password: 'given' })).toMatchObject({
        username: 'me',
        password: 'given',
      });
      // every secret found is masked from then on
      expect(redact('token ghs_token123 and s3cr3t:with:colons')).not.toMatch(/ghs_token123|s3cr3t/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('speaks plain HTTP only when asked or on loopback', () => {
    const c = (host: string, plainHttp?: boolean) =>
      new RegistryClient({
        ref: { host, apiHost: host, repository: 'a/b' },
        credentials: null,
        log,
        ...(plainHttp ? { plainHttp } : {}),
      });
    expect(c('registry.example:5000').base).toBe('https://registry.example:5000');
    expect(c('registry.example:5000', true).base).toBe('http://registry.example:5000');
    expect(c('127.0.0.1:5000').base).toBe('http://127.0.0.1:5000');
    expect(c('localhost:5000').base).toBe('http://localhost:5000');
  });

  it('reads the expiry of pre-signed URLs', () => {
    const now = Date.UTC(2025, 0, 1, 12, 0, 0);
    expect(
      expiresIn('https://s3.example/b?X-Amz-Date=20250101T120000Z&X-Amz-Expires=600&X-Amz-Signature=x', now),
    ).toBe(600);
    expect(expiresIn('https://blob.example/c?se=2025-01-01T12%3A10%3A00Z&sig=x', now)).toBe(600);
    expect(expiresIn('https://cdn.example/c?Expires=' + (now / 1000 + 60), now)).toBe(60);
  });
});

describe('basic auth in front of docker-registry', () => {
  it('answers a Basic challenge with the credentials, and says what to do without them', async () => {
    const reg = await startRegistry();
    const front = await startFaultProxy(reg.url);
    const dir = mkdtempSync(join(tmpdir(), 'orb-basic-'));
    try {
      front.add({ action: { type: 'basic-auth', user: 'ci', password: 'p4ss:word' } });
      const sum = makeDisk(join(dir, 'd.raw'), { size: 2 << 20, chunkSize: 512 << 10 });
      const l = await buildLayout(join(dir, 'd.raw'), join(dir, 'layout'), 'v1', 512 << 10);
      const client = (credentials: ConstructorParameters<typeof RegistryClient>[0]['credentials']) =>
        new RegistryStore(
          new RegistryClient({
            ref: { host: front.host, apiHost: front.host, repository: 'basic/disk' },
            credentials,
            log,
          }),
        );
      const r = await publish({
        source: l.dir,
        target: client({ username: 'ci', password: 'p4ss:word' }),
        tags: ['v1'],
        concurrency: 2,
        partSize: 1 << 30,
        log,
        progress,
      });
      expect(r.digest).toBe(l.manifestDigest);
      const out = join(dir, 'o.raw');
      await pull({
        source: client({ username: 'ci', password: 'p4ss:word' }),
        ref: 'v1',
        display: 'basic',
        output: out,
        format: 'raw',
        concurrency: 2,
        log,
        progress,
      });
      expect(await sha256File(out)).toBe(sum);
      const err = await pull({
        source: client(null),
        ref: 'v1',
        display: 'basic',
        output: join(dir, 'x.raw'),
        format: 'raw',
        concurrency: 1,
        log,
        progress,
      }).catch((e: unknown) => e);
      expect((err as OrbError).message).toMatch(/asks for a user name and password/);
      expect((err as OrbError).hint).toMatch(/docker login/);
    } finally {
      await front.stop();
      await reg.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('token auth against docker-registry', () => {
  let reg: Registry;
  let plain: Registry;
  let dir: string;
  let layout: BuiltLayout;
  let sum: string;
  let dockerConfig: string;

  beforeAll(async () => {
    reg = await startRegistry({
      auth: 'token',
      users: { alice: 'wonderland' },
      anonymousPull: ['public/disk'],
    });
    plain = await startRegistry();
    dir = mkdtempSync(join(tmpdir(), 'orb-auth-'));
    sum = makeDisk(join(dir, 'd.raw'), { size: 4 << 20, chunkSize: 512 << 10 });
    layout = await buildLayout(join(dir, 'd.raw'), join(dir, 'layout'), 'v1', 512 << 10);
    dockerConfig = join(dir, 'docker');
    mkdirSync(dockerConfig);
    writeFileSync(
      join(dockerConfig, 'config.json'),
      JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from('alice:wonderland').toString('base64') } } }),
    );
  });
  afterAll(async () => {
    await reg?.stop();
    await plain?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (
    repo: string,
    credentials: ConstructorParameters<typeof RegistryClient>[0]['credentials'],
    host = reg.host,
  ) => new RegistryClient({ ref: { host, apiHost: host, repository: repo }, credentials, log });

  it('publishes with credentials from docker config.json (bearer tokens from the challenge)', async () => {
    const r = await publish({
      source: layout.dir,
      target: new RegistryStore(client('public/disk', { env: { DOCKER_CONFIG: dockerConfig, HOME: dir } })),
      tags: ['v1'],
      concurrency: 3,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r.digest).toBe(layout.manifestDigest);
    expect(
      reg.tokenRequests.some(
        (t) =>
          t.auth === 'basic' && t.user === 'alice' && t.scope.includes('repository:public/disk:pull,push'),
      ),
    ).toBe(true);
  });

  it('pulls a public repository with an anonymous token', async () => {
    reg.tokenRequests.length = 0;
    const out = join(dir, 'anon.raw');
    await pull({
      source: new RegistryStore(client('public/disk', null)),
      ref: 'v1',
      display: 'anon',
      output: out,
      format: 'raw',
      concurrency: 3,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum);
    expect(reg.tokenRequests.length).toBeGreaterThan(0);
    expect(reg.tokenRequests.every((t) => t.auth === 'anonymous')).toBe(true);
  });

  it('refuses an anonymous push with a hint about credentials', async () => {
    const err = await publish({
      source: layout.dir,
      target: new RegistryStore(client('private/disk', null)),
      tags: ['v1'],
      concurrency: 1,
      partSize: 1 << 30,
      log,
      progress,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).message).toMatch(/401|denied|refused/);
    expect((err as OrbError).hint).toMatch(/docker login|username/);
  });

  it('rejects wrong credentials at the token service', async () => {
    const err = await client('public/disk', { username: 'alice', password: 'wrong' })
      .headBlob(layout.manifestDigest)
      .catch((e: unknown) => e);
    expect((err as OrbError).message).toMatch(/token service .* rejected credentials/);
  });

  it('blob-url: a registry that serves blobs itself gets its direct URL and the anonymous token endpoint', async () => {
    const urls = await blobUrls(`oci://${reg.host}/public/disk:v1`, { log });
    expect(urls.length).toBe(layout.blobs - 1);
    expect(urls.every((u) => u.direct)).toBe(true);
    expect(urls[0]!.tokenUrl).toContain('scope=repository%3Apublic%2Fdisk%3Apull');
    // the printed recipe works: anonymous token, then curl-like GET
    const token = ((await (await fetch(urls[0]!.tokenUrl!)).json()) as { token: string }).token;
    const body = Buffer.from(
      await (await fetch(urls[0]!.url, { headers: { authorization: `Bearer ${token}` } })).arrayBuffer(),
    );
    expect(sha256(body)).toBe(urls[0]!.digest);
  });

  it('blob-url: a storage redirect is printed, not followed; pull follows it without sending our token there', async () => {
    // the blob lives in "storage" (another registry behind a logging proxy); ours redirects to it
    await publish({
      source: layout.dir,
      target: new RegistryStore(client('store/disk', null, plain.host)),
      tags: ['v1'],
      concurrency: 3,
      partSize: 1 << 30,
      log,
      progress,
    });
    const storage = await startFaultProxy(plain.url);
    const front = await startFaultProxy(reg.url);
    try {
      const presign = '?X-Amz-Date=20990101T000000Z&X-Amz-Expires=900&X-Amz-Signature=abc';
      // each layer redirects to its pre-signed "storage" URL (the config is served directly)
      for (const l of (
        JSON.parse((await client('public/disk', null).getManifest('v1')).bytes.toString()) as {
          layers: { digest: string }[];
        }
      ).layers) {
        front.add({
          method: 'GET',
          path: new RegExp(`/v2/public/disk/blobs/${l.digest}`),
          action: {
            type: 'status',
            status: 307,
            headers: { location: `${storage.url}/v2/store/disk/blobs/${l.digest}${presign}` },
          },
        });
      }
      const urls = await blobUrls(`oci://${front.host}/public/disk:v1`, { log });
      expect(urls[0]!.direct).toBe(false);
      expect(urls[0]!.url.startsWith(storage.url)).toBe(true);
      expect(urls[0]!.expiresIn).toBeGreaterThan(3600);
      expect(storage.log).toHaveLength(0); // printed, not followed

      const out = join(dir, 'redirected.raw');
      await pull({
        source: new RegistryStore(client('public/disk', null, front.host)),
        ref: 'v1',
        display: 'redir',
        output: out,
        format: 'raw',
        concurrency: 3,
        log,
        progress,
      });
      expect(await sha256File(out)).toBe(sum);
      expect(storage.log.length).toBe(layout.blobs - 1);
      expect(storage.log.every((e) => e.headers.authorization === undefined)).toBe(true);
    } finally {
      await front.stop();
      await storage.stop();
    }
  });
});
