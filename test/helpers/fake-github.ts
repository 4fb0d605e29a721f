import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveFile } from './file-server.js';

/**
 * A local server for the subset of the GitHub REST API (releases and release assets) that orb
 * calls, following GitHub's documentation:
 *   GET    /repos/:owner/:repo/releases/tags/:tag            (404 when missing; drafts excluded)
 *   POST   /repos/:owner/:repo/releases                      (201; 422 already_exists)
 *   PATCH  /repos/:owner/:repo/releases/:id
 *   GET    /repos/:owner/:repo/releases/:id/assets?per_page=&page=   (Link rel="next")
 *   POST   {upload_url}?name=&label=  on a separate "uploads" origin (Content-Length required;
 *          422 already_exists for a taken name; 201 with the asset, `digest` sha256:<hex>)
 *   GET    /repos/:owner/:repo/releases/assets/:id  (Accept: application/octet-stream -> 302 to
 *          signed storage on another origin; otherwise the asset JSON)
 *   DELETE /repos/:owner/:repo/releases/assets/:id          (204)
 *   GET    /:owner/:repo/releases/download/:tag/:name        (browser_download_url -> 302)
 * Auth: `Authorization: Bearer|token <token>` (401 Bad credentials); a private repo answers 404
 * to anonymous reads, as GitHub does. Knobs: asset size limit, failing or truncated uploads
 * (which leave a "starter" asset, as GitHub does), no `digest` field (older GHES), corruption.
 */
export interface FakeGithub {
  api: string;
  token: string;
  owner: string;
  repo: string;
  releases: GhRelease[];
  requests: { method: string; path: string; auth: boolean; host: 'api' | 'uploads' | 'storage' }[];
  leakedAuth: number;
  knobs: {
    private?: boolean;
    maxAssetSize?: number;
    noDigest?: boolean;
    failUpload?: (name: string) => 500 | 502 | 'reset' | undefined;
    corrupt?: (name: string) => boolean;
  };
  close(): Promise<void>;
}

interface GhAsset {
  id: number;
  name: string;
  label: string | null;
  content_type: string;
  state: 'uploaded' | 'starter';
  size: number;
  digest: string;
  path: string;
  created_at: string;
}

interface GhRelease {
  id: number;
  tag_name: string;
  name: string;
  body: string;
  draft: boolean;
  target_commitish: string;
  assets: GhAsset[];
}

function json(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

export async function startFakeGithub(owner = 'octo', repo = 'images'): Promise<FakeGithub> {
  const dir = await mkdtemp(join(tmpdir(), 'orb-fake-github-'));
  const token = 'ghs_' + randomBytes(12).toString('hex');
  const releases: GhRelease[] = [];
  const requests: FakeGithub['requests'] = [];
  const knobs: FakeGithub['knobs'] = {};
  const state = { leaked: 0 };
  let nextId = 100;
  const signed = new Map<string, GhAsset>();
  let api = '';
  let uploads = '';
  let storage = '';

  const authOf = (req: http.IncomingMessage): 'ok' | 'none' | 'bad' => {
    const h = req.headers.authorization;
    if (!h) return 'none';
    return h === `Bearer ${token}` || h === `token ${token}` ? 'ok' : 'bad';
  };
  const assetJson = (a: GhAsset) => ({
    id: a.id,
    name: a.name,
    label: a.label,
    content_type: a.content_type,
    state: a.state,
    size: a.size,
    ...(knobs.noDigest ? {} : { digest: `sha256:${a.digest}` }),
    download_count: 0,
    created_at: a.created_at,
    updated_at: a.created_at,
    url: `${api}/repos/${owner}/${repo}/releases/assets/${a.id}`,
    browser_download_url: `${api}/${owner}/${repo}/releases/download/${encodeURIComponent(releases.find((r) => r.assets.includes(a))?.tag_name ?? '')}/${encodeURIComponent(a.name)}`,
  });
  const releaseJson = (r: GhRelease) => ({
    id: r.id,
    tag_name: r.tag_name,
    name: r.name,
    body: r.body,
    draft: r.draft,
    prerelease: false,
    target_commitish: r.target_commitish,
    html_url: `${api}/${owner}/${repo}/releases/tag/${encodeURIComponent(r.tag_name)}`,
    url: `${api}/repos/${owner}/${repo}/releases/${r.id}`,
    assets_url: `${api}/repos/${owner}/${repo}/releases/${r.id}/assets`,
    upload_url: `${uploads}/repos/${owner}/${repo}/releases/${r.id}/assets{?name,label}`,
    assets: r.assets.map(assetJson),
  });
  const redirectToStorage = (res: http.ServerResponse, a: GhAsset) => {
    const sig = randomBytes(8).toString('hex');
    signed.set(sig, a);
    res.writeHead(302, { location: `${storage}/objects/${a.id}?sig=${sig}` });
    res.end();
  };
  const readBody = async (req: http.IncomingMessage): Promise<unknown> => {
    const parts: Buffer[] = [];
    for await (const c of req) parts.push(c as Buffer);
    const text = Buffer.concat(parts).toString('utf8');
    return text ? JSON.parse(text) : {};
  };

  const apiServer = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const seg = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const auth = authOf(req);
    requests.push({ method: req.method ?? 'GET', path: url.pathname, auth: auth === 'ok', host: 'api' });
    if (auth === 'bad') {
      req.resume();
      return json(res, 401, {
        message: 'Bad credentials',
        documentation_url: 'https://docs.github.com/rest',
      });
    }
    const notFound = () =>
      json(res, 404, { message: 'Not Found', documentation_url: 'https://docs.github.com/rest' });
    const canRead = auth === 'ok' || !knobs.private;
    // browser_download_url
    if (
      seg[0] === owner &&
      seg[1] === repo &&
      seg[2] === 'releases' &&
      seg[3] === 'download' &&
      req.method === 'GET'
    ) {
      const r = releases.find((x) => x.tag_name === seg[4] && !x.draft);
      const a = r?.assets.find((x) => x.name === seg[5] && x.state === 'uploaded');
      if (!a || !canRead) return notFound();
      return redirectToStorage(res, a);
    }
    if (seg[0] !== 'repos' || seg[1] !== owner || seg[2] !== repo || seg[3] !== 'releases') return notFound();
    if (!canRead) return notFound();
    const write = req.method !== 'GET' && req.method !== 'HEAD';
    if (write && auth !== 'ok') {
      req.resume();
      return json(res, 401, { message: 'Requires authentication' });
    }
    if (seg[4] === 'tags' && seg[5] && req.method === 'GET') {
      const r = releases.find((x) => x.tag_name === seg[5] && !x.draft);
      return r ? json(res, 200, releaseJson(r)) : notFound();
    }
    if (seg.length === 4 && req.method === 'POST') {
      const b = (await readBody(req)) as {
        tag_name?: string;
        name?: string;
        body?: string;
        draft?: boolean;
        target_commitish?: string;
      };
      if (!b.tag_name)
        return json(res, 422, {
          message: 'Validation Failed',
          errors: [{ resource: 'Release', code: 'missing_field', field: 'tag_name' }],
        });
      if (releases.some((x) => x.tag_name === b.tag_name)) {
        return json(res, 422, {
          message: 'Validation Failed',
          errors: [{ resource: 'Release', code: 'already_exists', field: 'tag_name' }],
        });
      }
      const r: GhRelease = {
        id: nextId++,
        tag_name: b.tag_name,
        name: b.name ?? b.tag_name,
        body: b.body ?? '',
        draft: b.draft === true,
        target_commitish: b.target_commitish ?? 'main',
        assets: [],
      };
      releases.push(r);
      return json(res, 201, releaseJson(r));
    }
    if (seg[4] === 'assets' && seg[5]) {
      const id = Number(seg[5]);
      const r = releases.find((x) => x.assets.some((a) => a.id === id));
      const a = r?.assets.find((x) => x.id === id);
      if (!r || !a) return notFound();
      if (req.method === 'DELETE') {
        r.assets.splice(r.assets.indexOf(a), 1);
        await rm(a.path, { force: true });
        res.writeHead(204).end();
        return;
      }
      if (req.method === 'GET') {
        if (req.headers.accept === 'application/octet-stream') return redirectToStorage(res, a);
        return json(res, 200, assetJson(a));
      }
    }
    const rel = releases.find((x) => x.id === Number(seg[4]));
    if (!rel) return notFound();
    if (seg.length === 5 && req.method === 'PATCH') {
      const b = (await readBody(req)) as { body?: string; name?: string };
      if (b.body !== undefined) rel.body = b.body;
      if (b.name !== undefined) rel.name = b.name;
      return json(res, 200, releaseJson(rel));
    }
    if (seg[5] === 'assets' && req.method === 'GET') {
      const per = Math.min(100, Number(url.searchParams.get('per_page') ?? 30) || 30);
      const page = Math.max(1, Number(url.searchParams.get('page') ?? 1) || 1);
      const items = rel.assets.slice((page - 1) * per, page * per).map(assetJson);
      const more = page * per < rel.assets.length;
      return json(
        res,
        200,
        items,
        more ? { link: `<${api}${url.pathname}?per_page=${per}&page=${page + 1}>; rel="next"` } : {},
      );
    }
    notFound();
  });

  const uploadServer = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const seg = url.pathname.split('/').filter(Boolean);
    const auth = authOf(req);
    requests.push({ method: req.method ?? 'POST', path: url.pathname, auth: auth === 'ok', host: 'uploads' });
    if (auth !== 'ok') {
      req.resume();
      return json(res, 401, { message: 'Bad credentials' });
    }
    const rel = releases.find((x) => x.id === Number(seg[4]));
    const name = url.searchParams.get('name');
    if (req.method !== 'POST' || !rel || seg[5] !== 'assets' || !name) {
      req.resume();
      return json(res, 404, { message: 'Not Found' });
    }
    const length = Number(req.headers['content-length']);
    if (!Number.isFinite(length)) {
      req.resume();
      return json(res, 411, { message: 'Length Required' });
    }
    if (knobs.maxAssetSize !== undefined && length > knobs.maxAssetSize) {
      req.resume();
      return json(res, 422, {
        message: 'Validation Failed',
        errors: [
          {
            resource: 'ReleaseAsset',
            code: 'custom',
            field: 'size',
            message: 'size must be less than 2 GiB',
          },
        ],
      });
    }
    if (rel.assets.some((a) => a.name === name)) {
      req.resume();
      return json(res, 422, {
        message: 'Validation Failed',
        errors: [{ resource: 'ReleaseAsset', code: 'already_exists', field: 'name' }],
      });
    }
    const asset: GhAsset = {
      id: nextId++,
      name,
      label: url.searchParams.get('label'),
      content_type: String(req.headers['content-type'] ?? 'application/octet-stream'),
      state: 'starter',
      size: 0,
      digest: '',
      path: join(dir, `asset-${nextId}`),
      created_at: new Date().toISOString(),
    };
    rel.assets.push(asset); // GitHub shows a broken upload as a "starter" asset
    const fault = knobs.failUpload?.(name);
    if (fault === 'reset') {
      req.socket.destroy();
      return;
    }
    const hash = createHash('sha256');
    const out = createWriteStream(asset.path);
    const ok = await new Promise<boolean>((resolve) => {
      req.on('data', (c: Buffer) => {
        let b = c;
        if (knobs.corrupt?.(name) && asset.size === 0 && b.length) {
          b = Buffer.from(b);
          b[0] = b[0]! ^ 0xff;
        }
        asset.size += b.length;
        hash.update(b);
        out.write(b);
      });
      req.on('end', () => out.end(() => resolve(true)));
      req.on('aborted', () => resolve(false));
      req.on('error', () => resolve(false));
    });
    if (fault) return json(res, fault, { message: 'Server Error' });
    if (!ok || asset.size !== length) {
      if (!res.destroyed) json(res, 400, { message: 'Bad Request' });
      return;
    }
    asset.state = 'uploaded';
    asset.digest = hash.digest('hex');
    json(res, 201, assetJson(asset));
  });

  const storageServer = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.headers.authorization) state.leaked++;
    requests.push({
      method: req.method ?? 'GET',
      path: url.pathname,
      auth: !!req.headers.authorization,
      host: 'storage',
    });
    const a = signed.get(url.searchParams.get('sig') ?? '');
    if (!a) return json(res, 403, { message: 'Request has expired' });
    serveFile(req, res, a.path, a.size, { 'content-type': 'application/octet-stream' });
  });

  api = await listen(apiServer);
  uploads = await listen(uploadServer);
  storage = await listen(storageServer);
  return {
    api,
    token,
    owner,
    repo,
    releases,
    requests,
    get leakedAuth() {
      return state.leaked;
    },
    knobs,
    async close() {
      for (const s of [apiServer, uploadServer, storageServer]) {
        s.closeAllConnections();
        await new Promise<void>((r) => s.close(() => r()));
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
