import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveFile } from './file-server.js';

/**
 * A local server for the subset of the GitLab REST API v4 that orb calls, following GitLab's
 * documentation (generic packages, packages API):
 *   PUT    /projects/:id/packages/generic/:package_name/:package_version/:file_name[?select=package_file&status=]
 *   GET    /projects/:id/packages/generic/:package_name/:package_version/:file_name   (newest file of a name; Range)
 *   GET    /projects/:id/packages?package_type=&package_name=&package_version=&page=&per_page=
 *   GET    /projects/:id/packages/:package_id/package_files?page=&per_page=
 *   DELETE /projects/:id/packages/:package_id/package_files/:package_file_id
 * Auth headers PRIVATE-TOKEN, JOB-TOKEN, Deploy-Token or HTTP Basic with a token as password
 * (401 otherwise); pagination with
 * X-Next-Page/X-Total; 201 Created for uploads; names validated with the documented rules.
 * Knobs: per-file size limit, downloads redirected to a separate "object storage" origin,
 * uploads failing (5xx or reset), job tokens refused on list endpoints, concurrent package
 * creation answering 500 (the documented race), no file_sha256 in answers.
 */
export interface FakeGitlab {
  api: string;
  project: string;
  tokens: { private: string; job: string; deploy: string };
  requests: { method: string; path: string; auth?: string }[];
  /** authorization headers seen by the object-storage origin (must stay empty) */
  leakedAuth: string[];
  files: GlFile[];
  knobs: {
    maxFileSize?: number;
    redirectDownloads?: boolean;
    failUpload?: (fileName: string) => 500 | 503 | 'reset' | undefined;
    jobTokenCannotList?: boolean;
    raceOnCreate?: boolean;
    noSha256?: boolean;
    /** store different bytes than received (a corrupting backend) */
    corrupt?: (fileName: string) => boolean;
  };
  close(): Promise<void>;
}

interface GlPackage {
  id: number;
  name: string;
  version: string;
  package_type: 'generic';
  created_at: string;
}

interface GlFile {
  id: number;
  package_id: number;
  file_name: string;
  size: number;
  sha256: string;
  md5: string;
  sha1: string;
  path: string;
  created_at: string;
}

const NAME_RE = /^[A-Za-z0-9._-]+$/;
const VERSION_RE = /^(\.?[\w+-]+\.?)+$/;

function json(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

function fileJson(f: GlFile, noSha: boolean) {
  return {
    id: f.id,
    package_id: f.package_id,
    created_at: f.created_at,
    updated_at: f.created_at,
    size: f.size,
    file_store: 1,
    file_md5: f.md5,
    file_sha1: f.sha1,
    file_name: f.file_name,
    file_sha256: noSha ? null : f.sha256,
  };
}

function page<T>(items: T[], url: URL): { items: T[]; headers: Record<string, string> } {
  const per = Math.min(100, Number(url.searchParams.get('per_page') ?? 20) || 20);
  const p = Math.max(1, Number(url.searchParams.get('page') ?? 1) || 1);
  const slice = items.slice((p - 1) * per, p * per);
  const pages = Math.max(1, Math.ceil(items.length / per));
  return {
    items: slice,
    headers: {
      'x-page': String(p),
      'x-per-page': String(per),
      'x-total': String(items.length),
      'x-total-pages': String(pages),
      'x-next-page': p < pages ? String(p + 1) : '',
    },
  };
}

export async function startFakeGitlab(project = 'group/images'): Promise<FakeGitlab> {
  const dir = await mkdtemp(join(tmpdir(), 'orb-fake-gitlab-'));
  const tokens = {
    private: 'glpat-' + randomBytes(10).toString('hex'),
    job: 'job-' + randomBytes(10).toString('hex'),
    deploy: 'gldt-' + randomBytes(10).toString('hex'),
  };
  const packages: GlPackage[] = [];
  const files: GlFile[] = [];
  const requests: FakeGitlab['requests'] = [];
  const leakedAuth: string[] = [];
  const knobs: FakeGitlab['knobs'] = {};
  let nextId = 1;
  let creating = 0;

  // "Object storage" on its own origin: downloads may be redirected here with a signed link.
  const objectTokens = new Map<string, GlFile>();
  const objects = http.createServer((req, res) => {
    for (const h of ['private-token', 'job-token', 'deploy-token', 'authorization'])
      if (req.headers[h]) leakedAuth.push(h);
    const tok = new URL(req.url ?? '/', 'http://x').searchParams.get('sig') ?? '';
    const f = objectTokens.get(tok);
    if (!f) return json(res, 403, { message: 'signature does not match' });
    serveFile(req, res, f.path, f.size, { 'content-type': 'application/octet-stream' });
  });
  await new Promise<void>((r) => objects.listen(0, '127.0.0.1', r));
  const objectsUrl = `http://127.0.0.1:${(objects.address() as AddressInfo).port}`;

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    // Split before decoding: the project path is URL-encoded (group%2Fimages).
    const seg = url.pathname.split('/').filter(Boolean);
    // HTTP Basic: the generic package API takes any token as the password (user name ignored)
    const basic = /^Basic (.+)$/i.exec(String(req.headers.authorization ?? ''));
    const basicPassword = basic
      ? Buffer.from(basic[1]!, 'base64').toString('utf8').split(':').slice(1).join(':')
      : undefined;
    const auth = req.headers['private-token']
      ? 'private'
      : req.headers['job-token']
        ? 'job'
        : req.headers['deploy-token']
          ? 'deploy'
          : basic
            ? 'basic'
            : undefined;
    requests.push({ method: req.method ?? 'GET', path: url.pathname, ...(auth ? { auth } : {}) });
    if (seg[0] !== 'api' || seg[1] !== 'v4' || seg[2] !== 'projects' || !seg[3])
      return json(res, 404, { error: '404 Not Found' });
    const valid =
      (auth === 'private' && req.headers['private-token'] === tokens.private) ||
      (auth === 'job' && req.headers['job-token'] === tokens.job) ||
      (auth === 'deploy' && req.headers['deploy-token'] === tokens.deploy) ||
      (auth === 'basic' && [tokens.private, tokens.job, tokens.deploy].includes(basicPassword ?? ''));
    if (!valid) {
      req.resume();
      return json(res, 401, { message: '401 Unauthorized' });
    }
    const proj = decodeURIComponent(seg[3]);
    if (proj !== project && proj !== '42') {
      req.resume();
      return json(res, 404, { message: '404 Project Not Found' });
    }
    const rest = seg.slice(4).map(decodeURIComponent);
    // generic package files
    if (rest[0] === 'packages' && rest[1] === 'generic' && rest.length === 5) {
      const [, , name, version, fileName] = rest as [string, string, string, string, string];
      if (!NAME_RE.test(name)) return json(res, 400, { error: 'package_name is invalid' });
      if (!VERSION_RE.test(version)) return json(res, 400, { error: 'package_version is invalid' });
      if (!NAME_RE.test(fileName)) return json(res, 400, { error: 'file_name is invalid' });
      if (req.method === 'PUT') {
        const length = Number(req.headers['content-length']);
        if (knobs.maxFileSize !== undefined && length > knobs.maxFileSize) {
          req.resume();
          return json(res, 413, { message: '413 Request Entity Too Large' });
        }
        const fault = knobs.failUpload?.(fileName);
        if (fault === 'reset') {
          req.socket.destroy();
          return;
        }
        if (fault) {
          req.resume();
          return json(res, fault, { message: `${fault} Internal Server Error` });
        }
        let pkg = packages.find((p) => p.name === name && p.version === version);
        if (!pkg && knobs.raceOnCreate && creating > 0) {
          req.resume();
          return json(res, 500, { message: '500 Internal Server Error' });
        }
        if (!pkg) creating++;
        const id = nextId++;
        const path = join(dir, `file-${id}`);
        const sha256 = createHash('sha256');
        const md5 = createHash('md5');
        const sha1 = createHash('sha1');
        let size = 0;
        const out = createWriteStream(path);
        const ok = await new Promise<boolean>((resolve) => {
          req.on('data', (c: Buffer) => {
            let b = c;
            if (knobs.corrupt?.(fileName) && size === 0 && b.length) {
              b = Buffer.from(b);
              b[0] = b[0]! ^ 0xff;
            }
            size += b.length;
            sha256.update(b);
            md5.update(b);
            sha1.update(b);
            out.write(b);
          });
          req.on('end', () => out.end(() => resolve(true)));
          req.on('error', () => resolve(false));
          req.on('aborted', () => resolve(false));
        });
        if (!pkg) creating--;
        if (!ok || size !== length) {
          await rm(path, { force: true });
          if (!res.headersSent && !res.destroyed)
            json(res, 400, { message: '400 Bad request - incomplete body' });
          return;
        }
        pkg = packages.find((p) => p.name === name && p.version === version);
        if (!pkg) {
          pkg = {
            id: nextId++,
            name,
            version,
            package_type: 'generic',
            created_at: new Date().toISOString(),
          };
          packages.push(pkg);
        }
        const f: GlFile = {
          id,
          package_id: pkg.id,
          file_name: fileName,
          size,
          sha256: sha256.digest('hex'),
          md5: md5.digest('hex'),
          sha1: sha1.digest('hex'),
          path,
          created_at: new Date().toISOString(),
        };
        files.push(f);
        return url.searchParams.get('select') === 'package_file'
          ? json(res, 201, fileJson(f, knobs.noSha256 === true))
          : json(res, 201, { message: '201 Created' });
      }
      if (req.method === 'GET' || req.method === 'HEAD') {
        const pkg = packages.find((p) => p.name === name && p.version === version);
        const f =
          pkg && [...files].reverse().find((x) => x.package_id === pkg.id && x.file_name === fileName);
        if (!f) return json(res, 404, { message: '404 Not Found' });
        if (knobs.redirectDownloads) {
          const sig = randomBytes(8).toString('hex');
          objectTokens.set(sig, f);
          res.writeHead(302, { location: `${objectsUrl}/packages/${f.id}/${fileName}?sig=${sig}` });
          res.end();
          return;
        }
        return serveFile(req, res, f.path, f.size, { 'content-type': 'application/octet-stream' });
      }
    }
    if (
      rest[0] === 'packages' &&
      req.method === 'GET' &&
      (rest.length === 1 || rest[2] === 'package_files')
    ) {
      if (auth === 'job' && knobs.jobTokenCannotList) return json(res, 403, { message: '403 Forbidden' });
      if (rest.length === 1) {
        const type = url.searchParams.get('package_type');
        const name = url.searchParams.get('package_name');
        const version = url.searchParams.get('package_version');
        const list = packages.filter(
          (p) =>
            (!type || p.package_type === type) &&
            (!name || p.name.includes(name)) &&
            (!version || p.version === version),
        );
        const pg = page(list, url);
        return json(res, 200, pg.items, pg.headers);
      }
      const pid = Number(rest[1]);
      if (!packages.some((p) => p.id === pid)) return json(res, 404, { message: '404 Package Not Found' });
      const pg = page(
        files.filter((f) => f.package_id === pid).map((f) => fileJson(f, knobs.noSha256 === true)),
        url,
      );
      return json(res, 200, pg.items, pg.headers);
    }
    if (rest[0] === 'packages' && rest[2] === 'package_files' && rest[3] && req.method === 'DELETE') {
      const i = files.findIndex((f) => f.id === Number(rest[3]) && f.package_id === Number(rest[1]));
      if (i < 0) return json(res, 404, { message: '404 Not Found' });
      await rm(files[i]!.path, { force: true });
      files.splice(i, 1);
      res.writeHead(204).end();
      return;
    }
    req.resume();
    json(res, 404, { error: '404 Not Found' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    api: `http://127.0.0.1:${port}/api/v4`,
    project,
    tokens,
    requests,
    leakedAuth,
    files,
    knobs,
    async close() {
      server.closeAllConnections();
      objects.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await new Promise<void>((r) => objects.close(() => r()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
