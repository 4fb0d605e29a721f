import { MAX_MANIFEST_BYTES } from '../core/untrusted.js';
import { Octokit } from '@octokit/rest';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { OrbError, UsageError } from '../core/errors.js';
import { mask, type Logger } from '../core/log.js';
import { formatBytes } from '../core/progress.js';
import type { Descriptor } from '../formats/oci-media.js';
import { checkUrlScheme, HttpStatusError, withRetries } from './https-client.js';
import { RemoteFile } from './https-file.js';
import {
  assetName,
  githubInputs,
  mergeNotes,
  NOTES_BEGIN,
  NOTES_END,
  parseGithubRef,
  releaseNotes,
  type GithubRef,
} from './github-release-ref.js';

export {
  assetName,
  githubInputs,
  mergeNotes,
  parseGithubRef,
  releaseNotes,
  type GithubRef,
} from './github-release-ref.js';
import { registerStoreInputs, registerStoreOutputs, type OpenedStore, type StoreOptions } from './open.js';
import type { BlobRead, BlobStore } from './store.js';
import { checkManifestBytes } from './manifest-check.js';
import { HashTap } from './hash-tap.js';

/**
 * `github-release://OWNER/REPO/TAG`: a GitHub release (created when missing) with one asset per
 * blob (`sha256-<hex>`, each under GitHub's 2 GiB asset limit), the manifest as `manifest.json`
 * (and by digest), and release notes listing the digests and the exact `orb pull` command.
 * API calls go through @octokit/rest (base URL configurable for GitHub Enterprise Server and
 * tests); assets are uploaded to the release's documented `upload_url` and streamed, and their
 * SHA-256 (GitHub's asset `digest`, or ours) is checked before they count.
 */
export const GITHUB_MAX_ASSET = 2 * 1024 ** 3 - 1;
export const GITHUB_MAX_ASSETS = 1000;
interface Asset {
  id: number;
  name: string;
  size: number;
  state: string;
  url: string;
  browser_download_url: string;
  digest?: string | null;
}

interface Release {
  id: number;
  tag_name: string;
  html_url: string;
  upload_url: string;
  body?: string | null;
}

function status(err: unknown): number | undefined {
  const s = (err as { status?: unknown })?.status;
  return typeof s === 'number' ? s : undefined;
}

/** Octokit errors to our errors: keeps the status (retry policy) and says what to do. */
function ghError(err: unknown, what: string): Error {
  if (err instanceof OrbError) return err;
  const st = status(err);
  if (st === undefined) return err as Error;
  const headers = ((err as { response?: { headers?: Record<string, string> } }).response?.headers ??
    {}) as Record<string, string>;
  let retryAfter: number | undefined;
  if (headers['retry-after']) retryAfter = Number(headers['retry-after']) * 1000;
  else if (headers['x-ratelimit-remaining'] === '0' && headers['x-ratelimit-reset'])
    retryAfter = Math.max(0, Number(headers['x-ratelimit-reset']) * 1000 - Date.now());
  const rateLimited = st === 429 || (st === 403 && retryAfter !== undefined);
  const hint =
    st === 401
      ? 'the token is missing or invalid: set GITHUB_TOKEN or --github-token'
      : st === 403 && !rateLimited
        ? "the token lacks permission: publishing needs 'contents: write' (permissions: contents: write in the workflow)"
        : st === 404
          ? 'check OWNER/REPO and that the token can see the repository'
          : undefined;
  // Rate limits are retried like 429 (HttpStatusError counts 429 as retryable).
  return new HttpStatusError(
    rateLimited ? 429 : st,
    what,
    `${what}: HTTP ${st} (${(err as Error).message})`,
    retryAfter,
    hint,
  );
}

export interface GithubOptions {
  api: string;
  token?: string;
  connections?: number;
  /** commit for a new tag (GITHUB_SHA in Actions) */
  targetCommitish?: string;
  log: Logger;
  signal?: AbortSignal;
}

export class GithubReleaseStore implements BlobStore {
  readonly maxBlobSize = GITHUB_MAX_ASSET;
  /** the manifest goes up twice besides the blobs: by digest and as manifest.json */
  readonly maxBlobCount = GITHUB_MAX_ASSETS - 2;
  private readonly octokit: Octokit;
  private release?: Release;
  private assets?: Map<string, Asset>;
  private extraOutputs: Record<string, string> = {};

  constructor(
    readonly ref: GithubRef,
    private readonly o: GithubOptions,
  ) {
    checkUrlScheme(new URL(o.api));
    if (o.token) mask(o.token);
    this.octokit = new Octokit({
      ...(o.token ? { auth: o.token } : {}),
      baseUrl: o.api.replace(/\/+$/, ''),
      userAgent: 'orb-actions',
      log: { debug: () => {}, info: () => {}, warn: (m: string) => o.log.debug(m), error: () => {} },
      ...(o.signal ? { request: { signal: o.signal } } : {}),
    });
  }

  describe(): string {
    return `github-release://${this.ref.owner}/${this.ref.repo}/${this.ref.tag}`;
  }

  private call<T>(fn: () => Promise<T>, what: string): Promise<T> {
    return withRetries(
      async () => {
        try {
          return await fn();
        } catch (err) {
          throw ghError(err, what);
        }
      },
      { what, log: this.o.log, ...(this.o.signal ? { signal: this.o.signal } : {}) },
    );
  }

  private releaseP?: Promise<Release | undefined>;

  /** The release of the tag (created once when `create`, however many uploads ask at once). */
  private async getRelease(create: boolean): Promise<Release | undefined> {
    if (this.release) return this.release;
    const pending = this.releaseP;
    if (pending) {
      const r = await pending.catch(() => undefined);
      if (r || !create) return r;
    }
    if (this.releaseP === pending) this.releaseP = this.findOrCreate(create);
    const r = await this.releaseP;
    if (r) this.release = r;
    else this.releaseP = undefined;
    return r;
  }

  private async findOrCreate(create: boolean): Promise<Release | undefined> {
    const { owner, repo, tag } = this.ref;
    const find = async () => {
      try {
        return (
          await this.call(
            () => this.octokit.rest.repos.getReleaseByTag({ owner, repo, tag }),
            `find release ${tag}`,
          )
        ).data as Release;
      } catch (err) {
        if (err instanceof HttpStatusError && err.status === 404) return undefined;
        throw err;
      }
    };
    const found = await find();
    if (found || !create) return found;
    this.o.log.info(`creating release ${tag} in ${owner}/${repo}`);
    try {
      return (
        await this.call(
          () =>
            this.octokit.rest.repos.createRelease({
              owner,
              repo,
              tag_name: tag,
              name: tag,
              body: `${NOTES_BEGIN}\nUploading a disk image with orb…\n${NOTES_END}`,
              ...(this.o.targetCommitish ? { target_commitish: this.o.targetCommitish } : {}),
            }),
          `create release ${tag}`,
        )
      ).data as Release;
    } catch (err) {
      // another publish created it meanwhile
      if (err instanceof HttpStatusError && err.status === 422) {
        const again = await find();
        if (again) return again;
      }
      throw err;
    }
  }

  private assetsP?: Promise<Map<string, Asset>>;

  private listAssets(refresh = false): Promise<Map<string, Asset>> {
    if (this.assets && !refresh) return Promise.resolve(this.assets);
    if (!this.assetsP || refresh) {
      const p = this.fetchAssets();
      this.assetsP = p;
      p.catch(() => {
        if (this.assetsP === p) this.assetsP = undefined;
      });
    }
    return this.assetsP;
  }

  private async fetchAssets(): Promise<Map<string, Asset>> {
    const rel = await this.getRelease(false);
    const map = new Map<string, Asset>();
    if (rel) {
      const { owner, repo } = this.ref;
      for (let page = 1; ; page++) {
        const res = await this.call(
          () =>
            this.octokit.rest.repos.listReleaseAssets({
              owner,
              repo,
              release_id: rel.id,
              per_page: 100,
              page,
            }),
          'list release assets',
        );
        for (const a of res.data as Asset[]) map.set(a.name, a);
        if ((res.data as Asset[]).length < 100) break;
      }
    }
    this.assets = map;
    return map;
  }

  async statBlob(digest: string): Promise<number | undefined> {
    const a = (await this.listAssets()).get(assetName(digest));
    if (!a || a.state !== 'uploaded') return undefined;
    if (a.digest && a.digest !== digest) return undefined;
    return a.size;
  }

  private async deleteAsset(a: Asset): Promise<void> {
    const { owner, repo } = this.ref;
    await this.call(
      () => this.octokit.rest.repos.deleteReleaseAsset({ owner, repo, asset_id: a.id }),
      `delete asset ${a.name}`,
    );
    this.assets?.delete(a.name);
  }

  private async upload(
    name: string,
    size: number,
    open: () => Readable,
    expected: string,
    onBytes?: (n: number) => void,
  ): Promise<Asset> {
    if (size > GITHUB_MAX_ASSET) {
      throw new UsageError(
        `${name} is ${formatBytes(size)}, over GitHub's 2 GiB release asset limit`,
        'publish with --part-size 2000MiB (or smaller), or a chunked image',
      );
    }
    const rel = (await this.getRelease(true))!;
    const assets = await this.listAssets();
    const old = assets.get(name);
    if (old) await this.deleteAsset(old); // a failed ("starter") or mismatching earlier upload
    if (assets.size >= GITHUB_MAX_ASSETS) {
      throw new UsageError(
        `release ${this.ref.tag} already has ${assets.size} assets, GitHub's limit`,
        'convert with a larger --pack-size so the image needs fewer blobs',
      );
    }
    return withRetries(
      async () => {
        const tap = new HashTap(onBytes);
        let asset: Asset;
        try {
          const res = await this.octokit.request({
            method: 'POST',
            url: rel.upload_url,
            name,
            headers: { 'content-type': 'application/octet-stream', 'content-length': size },
            data: tap.from(open()),
          });
          asset = res.data as Asset;
        } catch (err) {
          if (tap.sent) onBytes?.(-tap.sent);
          // a broken upload can leave a "starter" asset that blocks the name
          const left = (await this.listAssets(true).catch(() => undefined))?.get(name);
          if (left) await this.deleteAsset(left).catch(() => undefined);
          throw ghError(err, `upload ${name}`);
        }
        const local = tap.digest();
        const sent = tap.sent;
        const remote = asset.digest ?? undefined;
        if (local !== expected || sent !== size || asset.size !== size || (remote && remote !== expected)) {
          await this.deleteAsset(asset).catch(() => undefined);
          throw new OrbError(
            'integrity',
            `${name}: GitHub stored ${remote ?? '?'} (${asset.size} bytes), we sent ${local} (${sent} bytes), expected ${expected}; the asset was deleted`,
          );
        }
        this.assets?.set(name, asset);
        return asset;
      },
      { what: `upload ${name}`, log: this.o.log, ...(this.o.signal ? { signal: this.o.signal } : {}) },
    );
  }

  async putBlob(
    desc: Descriptor,
    open: (offset: number) => Readable,
    onBytes?: (n: number) => void,
  ): Promise<void> {
    await this.upload(assetName(desc.digest), desc.size, () => open(0), desc.digest, onBytes);
  }

  private file(a: Asset, what: string, size: number): RemoteFile {
    // With a token: the API asset URL (private repositories too); it redirects to storage,
    // where the token must not follow (request() drops auth headers on other origins).
    const withToken = !!this.o.token;
    return new RemoteFile(withToken ? a.url : a.browser_download_url, {
      headers: { accept: 'application/octet-stream' },
      ...(withToken ? { authHeaders: { authorization: `Bearer ${this.o.token}` } } : {}),
      connections: size > 64 << 20 ? (this.o.connections ?? 8) : 1,
      log: this.o.log,
      ...(this.o.signal ? { signal: this.o.signal } : {}),
      what,
    });
  }

  /**
   * For the pull engine's transfer threads: the asset API URL with the token (GitHub redirects it
   * to storage, where those threads do not send the Authorization header), or the public
   * download URL without one.
   */
  async httpSource(
    desc: Descriptor,
    refresh = false,
  ): Promise<{ url: string; headers: Record<string, string> }> {
    const a = (await this.listAssets(refresh)).get(assetName(desc.digest));
    if (!a || a.state !== 'uploaded')
      throw new OrbError('input', `${this.describe()} has no asset for blob ${desc.digest}`, {
        hint: 'publish the image again',
      });
    return this.o.token
      ? {
          url: a.url,
          headers: { authorization: `Bearer ${this.o.token}`, accept: 'application/octet-stream' },
        }
      : { url: a.browser_download_url, headers: {} };
  }

  async getBlob(desc: Descriptor, offset = 0, end?: number): Promise<BlobRead> {
    const a = (await this.listAssets()).get(assetName(desc.digest));
    if (!a || a.state !== 'uploaded')
      throw new OrbError('input', `${this.describe()} has no asset for blob ${desc.digest}`, {
        hint: 'publish the image again',
      });
    return this.file(a, `download ${a.name}`, a.size).read(offset, end);
  }

  async putManifest(bytes: Buffer, _mediaType: string, tags: readonly string[]): Promise<string> {
    const extra = tags.filter((t) => t !== this.ref.tag);
    if (extra.length) {
      throw new UsageError(
        `a GitHub release has one tag; cannot also tag ${extra.join(', ')}`,
        `publish again to github-release://${this.ref.owner}/${this.ref.repo}/<tag>`,
      );
    }
    const digest = 'sha256:' + createHash('sha256').update(bytes).digest('hex');
    if ((await this.statBlob(digest)) === undefined)
      await this.upload(assetName(digest), bytes.length, () => Readable.from([bytes]), digest);
    await this.upload('manifest.json', bytes.length, () => Readable.from([bytes]), digest);
    const rel = (await this.getRelease(true))!;
    const body = mergeNotes(rel.body ?? '', releaseNotes(this.ref, digest, bytes));
    const { owner, repo } = this.ref;
    await this.call(
      () => this.octokit.rest.repos.updateRelease({ owner, repo, release_id: rel.id, body }),
      'write release notes',
    );
    this.extraOutputs['release-url'] = rel.html_url;
    return digest;
  }

  publishedOutputs(): Record<string, string> {
    return { ...this.extraOutputs };
  }

  async getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    const pinned = ref.startsWith('sha256:');
    const name = pinned ? assetName(ref) : 'manifest.json';
    const a = (await this.listAssets()).get(name);
    if (!a || a.state !== 'uploaded') {
      const rel = await this.getRelease(false);
      throw new OrbError(
        'input',
        rel
          ? `release ${this.ref.tag} of ${this.ref.owner}/${this.ref.repo} has no ${name}`
          : `no release ${this.ref.tag} in ${this.ref.owner}/${this.ref.repo}`,
        {
          hint: 'check the tag; publish with orb publish --to github-release://OWNER/REPO/TAG',
        },
      );
    }
    const bytes = await this.file(a, `read ${name}`, a.size).text(MAX_MANIFEST_BYTES);
    return checkManifestBytes(bytes, ref, this.describe());
  }
}

export async function openGithubRelease(ref: string, opts: StoreOptions): Promise<OpenedStore> {
  const r = parseGithubRef(ref);
  const o = opts.options;
  const str = (k: string) => (typeof o[k] === 'string' && o[k] !== '' ? (o[k] as string) : undefined);
  const api = str('github-api-url') ?? process.env.GITHUB_API_URL ?? 'https://api.github.com';
  const token = str('github-token') ?? (process.env.GITHUB_TOKEN || process.env.GH_TOKEN || undefined);
  const sha = process.env.GITHUB_REPOSITORY === `${r.owner}/${r.repo}` ? process.env.GITHUB_SHA : undefined;
  const store = new GithubReleaseStore(r, {
    api,
    ...(token ? { token } : {}),
    ...(sha ? { targetCommitish: sha } : {}),
    ...(typeof o['connections'] === 'number' ? { connections: o['connections'] } : {}),
    log: opts.log,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  return { store, tag: r.digest ?? r.tag, display: `${store.describe()}${r.digest ? '@' + r.digest : ''}` };
}

registerStoreInputs(['publish', 'pull'], githubInputs);
registerStoreOutputs(
  ['publish'],
  [{ name: 'release-url', description: 'GitHub releases: web page of the release' }],
);
