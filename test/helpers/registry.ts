import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createPrivateKey, createSign, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedCert } from './certs.js';

/**
 * Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with its own config and storage in a
 * temp dir. With `auth: 'token'` a token server (in this process) issues JWTs the registry
 * trusts, so the bearer flow of real registries (GHCR, GitLab, Docker Hub) is exercised:
 * anonymous pull tokens, basic credentials exchanged for a token, token expiry.
 */
export interface RegistryOptions {
  auth?: 'none' | 'token';
  /** token auth: user -> password accepted by the token server */
  users?: Record<string, string>;
  /** token auth: repositories anonymous users may pull (glob-free exact names or '*') */
  anonymousPull?: string[];
  /** token lifetime in seconds */
  tokenSeconds?: number;
  /** pull-through cache mode: the upstream registry URL (distribution's `proxy.remoteurl`) */
  proxyRemote?: string;
  /** serve https with this certificate and key (PEM files) */
  tls?: { cert: string; key: string };
}

export interface TokenRequest {
  auth: 'anonymous' | 'basic' | 'refresh';
  user?: string;
  scope: string[];
}

export interface Registry {
  /** host:port */
  host: string;
  url: string;
  dir: string;
  /** token auth only */
  tokenUrl?: string;
  tokenRequests: TokenRequest[];
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

async function startTokenServer(
  opts: RegistryOptions,
  certDer: Buffer,
  keyPem: string,
  log: TokenRequest[],
): Promise<{ server: Server; url: string }> {
  const key = createPrivateKey(keyPem);
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const scopes = u.searchParams
      .getAll('scope')
      .flatMap((s) => s.split(' '))
      .filter(Boolean);
    let user: string | undefined;
    const authz = req.headers.authorization;
    if (authz?.startsWith('Basic ')) {
      const [name, ...rest] = Buffer.from(authz.slice(6), 'base64').toString().split(':');
      if (opts.users?.[name!] !== rest.join(':')) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"bad credentials"}');
        return;
      }
      user = name;
    }
    log.push({ auth: user ? 'basic' : 'anonymous', ...(user ? { user } : {}), scope: scopes });
    const access = scopes.map((s) => {
      const [type, name, actions] = s.split(':');
      const allowed = (actions ?? '').split(',').filter((a) => {
        if (user) return true;
        return a === 'pull' && (opts.anonymousPull?.includes('*') || opts.anonymousPull?.includes(name!));
      });
      return { type, name, actions: allowed };
    });
    const now = Math.floor(Date.now() / 1000);
    const lifetime = opts.tokenSeconds ?? 300;
    const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] };
    const claims = {
      iss: 'orb-test-issuer',
      sub: user ?? '',
      aud: 'orb-test-registry',
      exp: now + lifetime,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access,
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = createSign('RSA-SHA256').update(signingInput).sign(key);
    const token = `${signingInput}.${b64url(sig)}`;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        token,
        access_token: token,
        expires_in: lifetime,
        issued_at: new Date().toISOString(),
      }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/token` };
}

async function waitReady(url: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited (${child.exitCode}): ${stderr()}`);
    try {
      if (url.startsWith('https:')) {
        // a self-signed test certificate: listening is enough
        const u = new URL(url);
        await new Promise<void>((ok, no) => {
          const s = connect(Number(u.port), u.hostname, () => (s.end(), ok()));
          s.on('error', no);
        });
        return;
      }
      const res = await fetch(`${url}/v2/`);
      if (res.status === 200 || res.status === 401) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`docker-registry did not answer within 20 s: ${stderr()}`);
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const dir = mkdtempSync(join(tmpdir(), 'orb-registry-'));
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const tokenRequests: TokenRequest[] = [];
  let token: { server: Server; url: string } | undefined;
  let authYaml = '';
  if (opts.auth === 'token') {
    selfSignedCert({
      cert: join(dir, 'token.crt'),
      key: join(dir, 'token.key'),
      subject: '/CN=orb-test-token',
    });
    const der = execFileSync('openssl', ['x509', '-in', join(dir, 'token.crt'), '-outform', 'DER']);
    token = await startTokenServer(opts, der, readFileSync(join(dir, 'token.key'), 'utf8'), tokenRequests);
    authYaml = [
      'auth:',
      '  token:',
      `    realm: ${token.url}`,
      '    service: orb-test-registry',
      '    issuer: orb-test-issuer',
      `    rootcertbundle: ${join(dir, 'token.crt')}`,
    ].join('\n');
  }
  const config = [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(dir, 'data')}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: ${host}`,
    `  secret: ${randomBytes(16).toString('hex')}`,
    ...(opts.tls ? ['  tls:', `    certificate: ${opts.tls.cert}`, `    key: ${opts.tls.key}`] : []),
    authYaml,
    ...(opts.proxyRemote ? ['proxy:', `  remoteurl: ${opts.proxyRemote}`] : []),
  ].join('\n');
  writeFileSync(join(dir, 'config.yml'), config + '\n');
  // Under setpriv --pdeathsig the kernel stops the registry if this process dies without
  // reaching afterAll (a crashed or killed test worker).
  const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
  const argv = ['docker-registry', 'serve', join(dir, 'config.yml')];
  const child = setpriv
    ? spawn(setpriv, ['--pdeathsig', 'KILL', '--', ...argv], { stdio: ['ignore', 'ignore', 'pipe'] })
    : spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const url = `${opts.tls ? 'https' : 'http'}://${host}`;
  try {
    await waitReady(url, child, () => err);
  } catch (e) {
    child.kill('SIGKILL');
    token?.server.close();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    host,
    url,
    dir,
    ...(token ? { tokenUrl: token.url } : {}),
    tokenRequests,
    async stop() {
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      if (token) await new Promise<void>((r) => token.server.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
