import { MAX_MANIFEST_BYTES } from '../core/untrusted.js';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { OrbError, UsageError } from '../core/errors.js';
import { mask, type Logger } from '../core/log.js';
import { formatBytes } from '../core/progress.js';
import type { Descriptor } from '../formats/oci-media.js';
import {
  checkUrlScheme,
  HttpStatusError,
  readBody,
  request,
  statusError,
  withRetries,
} from './https-client.js';
import { RemoteFile } from './https-file.js';
import { blobFileName, gitlabInputs, parseGitlabRef, type GitlabRef } from './gitlab-ref.js';

export { blobFileName, gitlabInputs, parseGitlabRef, type GitlabRef } from './gitlab-ref.js';
import { registerStoreInputs, registerStoreOutputs, type OpenedStore, type StoreOptions } from './open.js';
import type { BlobRead, BlobStore } from './store.js';
import { checkManifestBytes } from './manifest-check.js';
import { HashTap } from './hash-tap.js';

/**
 * `gitlab://PROJECT/PACKAGE/VERSION`: a GitLab generic package. One package file per blob
 * (`sha256-<hex>`, within GitLab.com's 5 GB per-file limit), the manifest as `manifest.json`
 * (the newest upload of a name wins, so republishing a version moves it). The SHA-256 GitLab
 * computed is checked after each upload (`select=package_file`); a file whose digest differs is
 * deleted again. Auth: a token input (PRIVATE-TOKEN, or Deploy-Token for `gldt-` tokens) or
 * CI_JOB_TOKEN (JOB-TOKEN); API base: an input or CI_API_V4_URL.
 */
export const GITLAB_MAX_FILE = 5_000_000_000;
interface PackageFile {
  id: number;
  package_id: number;
  file_name: string;
  size: number;
  file_sha256?: string | null;
  created_at?: string;
}

interface Pkg {
  id: number;
  name: string;
  version: string;
  _links?: { web_path?: string };
}

export interface GitlabOptions {
  api: string;
  token?: string;
  jobToken?: string;
  connections?: number;
  log: Logger;
  signal?: AbortSignal;
}

export class GitlabStore implements BlobStore {
  readonly maxBlobSize = GITLAB_MAX_FILE;
  private readonly api: string;
  private readonly auth: Record<string, string>;
  private files?: Map<string, PackageFile>;
  private pkg?: Pkg;
  /** GitLab asks for serial uploads until the package exists (concurrent creates race to 500s). */
  private creating?: Promise<void>;
  private extraOutputs: Record<string, string> = {};

  constructor(
    readonly ref: GitlabRef,
    private readonly o: GitlabOptions,
  ) {
    this.api = o.api.replace(/\/+$/, '');
    checkUrlScheme(new URL(this.api));
    if (o.token) {
      mask(o.token);
      this.auth = { [o.token.startsWith('gldt-') ? 'deploy-token' : 'private-token']: o.token };
    } else if (o.jobToken) {
      mask(o.jobToken);
      this.auth = { 'job-token': o.jobToken };
    } else this.auth = {};
  }

  /** The reference (publish appends @digest to it for the pullable reference). */
  describe(): string {
    return `gitlab://${this.ref.project}/${this.ref.pkg}/${this.ref.version}`;
  }

  private projectPath(): string {
    return `${this.api}/projects/${encodeURIComponent(this.ref.project)}`;
  }

  fileUrl(name: string): string {
    return `${this.projectPath()}/packages/generic/${encodeURIComponent(this.ref.pkg)}/${encodeURIComponent(this.ref.version)}/${encodeURIComponent(name)}`;
  }

  private req() {
    return { authHeaders: this.auth, log: this.o.log, ...(this.o.signal ? { signal: this.o.signal } : {}) };
  }

  /** The package of this name and version, and its files by name (newest file of a name wins). */
  private filesP?: Promise<Map<string, PackageFile>>;

  private listFiles(refresh = false): Promise<Map<string, PackageFile>> {
    if (this.files && !refresh) return Promise.resolve(this.files);
    if (!this.filesP || refresh) {
      const p = this.fetchFiles(refresh);
      this.filesP = p;
      p.catch(() => {
        if (this.filesP === p) this.filesP = undefined;
      });
    }
    return this.filesP;
  }

  private async fetchFiles(refresh: boolean): Promise<Map<string, PackageFile>> {
    const files = new Map<string, PackageFile>();
    if (!this.pkg || refresh) {
      const q = new URLSearchParams({
        package_type: 'generic',
        package_name: this.ref.pkg,
        package_version: this.ref.version,
        per_page: '100',
      });
      for (let page = 1; page;) {
        q.set('page', String(page));
        const res = await this.getPage<Pkg[]>(`${this.projectPath()}/packages?${q}`, 'list GitLab packages');
        this.pkg =
          res.items.find((p) => p.name === this.ref.pkg && p.version === this.ref.version) ?? this.pkg;
        page = this.pkg ? 0 : res.next;
      }
    }
    if (this.pkg) {
      for (let page = 1; page;) {
        const res = await this.getPage<PackageFile[]>(
          `${this.projectPath()}/packages/${this.pkg.id}/package_files?per_page=100&page=${page}`,
          'list package files',
        );
        for (const f of res.items) {
          const prev = files.get(f.file_name);
          if (!prev || f.id > prev.id) files.set(f.file_name, f);
        }
        page = res.next;
      }
    }
    this.files = files;
    return files;
  }

  private async getPage<T>(url: string, what: string): Promise<{ items: T; next: number }> {
    return withRetries(
      async () => {
        const res = await request(url, { ...this.req(), headers: { accept: 'application/json' } });
        if (res.status !== 200) throw await statusError(res, what);
        const items = JSON.parse((await readBody(res)).toString('utf8')) as T;
        const next = Number(res.headers['x-next-page'] || 0);
        return { items, next: Number.isFinite(next) ? next : 0 };
      },
      { what, log: this.o.log, ...(this.o.signal ? { signal: this.o.signal } : {}) },
    );
  }

  async statBlob(digest: string): Promise<number | undefined> {
    const name = blobFileName(digest);
    let files: Map<string, PackageFile> | undefined;
    try {
      files = await this.listFiles();
    } catch (err) {
      // Job tokens may not list packages: ask the download endpoint instead.
      if (!(err instanceof HttpStatusError) || (err.status !== 401 && err.status !== 403)) throw err;
      this.o.log.debug(`cannot list package files (${err.message}); checking the file itself`);
      try {
        return (
          await new RemoteFile(this.fileUrl(name), {
            authHeaders: this.auth,
            log: this.o.log,
            what: `check ${name}`,
          }).probe()
        ).size;
      } catch (e) {
        if (e instanceof HttpStatusError && e.status === 404) return undefined;
        throw e;
      }
    }
    const f = files.get(name);
    if (!f) return undefined;
    // A file under our name whose recorded SHA-256 differs is not this blob.
    if (f.file_sha256 && `sha256:${f.file_sha256}` !== digest) return undefined;
    return f.size;
  }

  private async upload(
    name: string,
    size: number,
    open: () => Readable,
    expected: string,
    onBytes?: (n: number) => void,
  ): Promise<PackageFile> {
    if (size > GITLAB_MAX_FILE) {
      throw new UsageError(
        `${name} is ${formatBytes(size)}, over GitLab's 5 GB per-file limit`,
        'publish with a smaller --part-size (parts of a single file) or a chunked image',
      );
    }
    const url = `${this.fileUrl(name)}?select=package_file&status=default`;
    return withRetries(
      async () => {
        const tap = new HashTap(onBytes);
        const body = () => tap.from(open());
        let res;
        try {
          res = await request(url, {
            ...this.req(),
            method: 'PUT',
            headers: {
              'content-type': 'application/octet-stream',
              'content-length': String(size),
              accept: 'application/json',
            },
            body,
            timeoutMs: 300_000,
          });
        } catch (err) {
          if (tap.sent) onBytes?.(-tap.sent);
          throw err;
        }
        if (res.status !== 200 && res.status !== 201) {
          if (tap.sent) onBytes?.(-tap.sent);
          throw await statusError(res, `upload ${name} to GitLab`);
        }
        const pf = JSON.parse((await readBody(res)).toString('utf8')) as PackageFile;
        const local = tap.digest();
        const sent = tap.sent;
        const remote = pf.file_sha256 ? `sha256:${pf.file_sha256}` : undefined;
        if (
          local !== expected ||
          sent !== size ||
          (remote && remote !== expected) ||
          (pf.size !== undefined && pf.size !== size)
        ) {
          await this.deleteFile(pf).catch(() => undefined);
          throw new OrbError(
            'integrity',
            `${name}: GitLab stored ${remote ?? 'an unknown digest'} (${pf.size} bytes), we sent ${local} (${sent} bytes), expected ${expected}; the file was deleted again`,
          );
        }
        if (!remote) this.o.log.debug(`GitLab did not report file_sha256 for ${name}; verified locally`);
        return pf;
      },
      { what: `upload ${name}`, log: this.o.log, ...(this.o.signal ? { signal: this.o.signal } : {}) },
    );
  }

  private async deleteFile(pf: PackageFile): Promise<void> {
    if (!pf.package_id || !pf.id) return;
    const res = await request(`${this.projectPath()}/packages/${pf.package_id}/package_files/${pf.id}`, {
      ...this.req(),
      method: 'DELETE',
    });
    res.body.resume();
  }

  private async gate<T>(fn: () => Promise<T>): Promise<T> {
    while (!this.pkg && this.creating) await this.creating;
    if (this.pkg) return fn();
    let done!: () => void;
    this.creating = new Promise<void>((r) => (done = r));
    try {
      return await fn();
    } finally {
      done();
      this.creating = undefined;
    }
  }

  private remember(pf: PackageFile): void {
    this.pkg ??= { id: pf.package_id, name: this.ref.pkg, version: this.ref.version };
    this.files?.set(pf.file_name, pf);
  }

  async putBlob(
    desc: Descriptor,
    open: (offset: number) => Readable,
    onBytes?: (n: number) => void,
  ): Promise<void> {
    const name = blobFileName(desc.digest);
    await this.listFiles().catch(() => undefined);
    const pf = await this.gate(() => this.upload(name, desc.size, () => open(0), desc.digest, onBytes));
    this.remember(pf);
  }

  /**
   * For the pull engine's transfer threads: the package file URL with the token as HTTP Basic
   * auth (which the generic package API documents for every token type); `Authorization` is the
   * header those threads drop when GitLab redirects to object storage on another host.
   */
  async httpSource(desc: Descriptor): Promise<{ url: string; headers: Record<string, string> }> {
    const token = this.o.token ?? this.o.jobToken;
    const user = this.o.token ? 'orb' : 'gitlab-ci-token';
    return {
      url: this.fileUrl(blobFileName(desc.digest)),
      headers: token ? { authorization: 'Basic ' + Buffer.from(`${user}:${token}`).toString('base64') } : {},
    };
  }

  async getBlob(desc: Descriptor, offset = 0, end?: number): Promise<BlobRead> {
    const f = new RemoteFile(this.fileUrl(blobFileName(desc.digest)), {
      authHeaders: this.auth,
      connections: desc.size > 64 << 20 ? (this.o.connections ?? 8) : 1,
      log: this.o.log,
      ...(this.o.signal ? { signal: this.o.signal } : {}),
      what: `download ${desc.digest.slice(0, 19)} from GitLab`,
    });
    return f.read(offset, end);
  }

  async putManifest(bytes: Buffer, _mediaType: string, tags: readonly string[]): Promise<string> {
    const extra = tags.filter((t) => t !== this.ref.version);
    if (extra.length) {
      throw new UsageError(
        `GitLab generic packages are addressed by version; cannot also tag ${extra.join(', ')}`,
        `publish again to gitlab://${this.ref.project}/${this.ref.pkg}/<version> for another version`,
      );
    }
    const digest = 'sha256:' + createHash('sha256').update(bytes).digest('hex');
    // by digest (pinned pulls keep working after the version is republished), then as the version
    if ((await this.statBlob(digest)) === undefined) {
      this.remember(
        await this.gate(() =>
          this.upload(blobFileName(digest), bytes.length, () => bufferStream(bytes), digest),
        ),
      );
    }
    const pf = await this.gate(() =>
      this.upload('manifest.json', bytes.length, () => bufferStream(bytes), digest),
    );
    this.remember(pf);
    const web = this.api.replace(/\/api\/v4$/, '');
    this.extraOutputs['package-url'] = `${web}/${this.ref.project}/-/packages/${pf.package_id}`;
    return digest;
  }

  publishedOutputs(): Record<string, string> {
    return { ...this.extraOutputs };
  }

  async getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    const pinned = ref.startsWith('sha256:');
    const name = pinned ? blobFileName(ref) : 'manifest.json';
    const f = new RemoteFile(this.fileUrl(name), {
      authHeaders: this.auth,
      log: this.o.log,
      what: `read manifest of ${this.describe()}`,
    });
    let bytes: Buffer;
    try {
      bytes = await f.text(MAX_MANIFEST_BYTES);
    } catch (err) {
      if (err instanceof HttpStatusError && err.status === 404) {
        throw new OrbError(
          'input',
          pinned ? `${this.describe()} has no manifest ${ref}` : `${this.describe()} has no manifest.json`,
          {
            hint: 'check the project, package and version; publish with orb publish --to gitlab://...',
          },
        );
      }
      throw err;
    }
    return checkManifestBytes(bytes, ref, this.describe());
  }
}

function bufferStream(b: Buffer): Readable {
  return Readable.from([b]);
}

export async function openGitlab(ref: string, opts: StoreOptions): Promise<OpenedStore> {
  const r = parseGitlabRef(ref);
  const o = opts.options;
  const str = (k: string) => (typeof o[k] === 'string' && o[k] !== '' ? (o[k] as string) : undefined);
  const api = str('gitlab-url') ?? process.env.CI_API_V4_URL ?? 'https://gitlab.com/api/v4';
  const token = str('gitlab-token');
  const jobToken = process.env.CI_JOB_TOKEN || undefined;
  const store = new GitlabStore(r, {
    api,
    ...(token ? { token } : {}),
    ...(jobToken ? { jobToken } : {}),
    ...(typeof o['connections'] === 'number' ? { connections: o['connections'] } : {}),
    log: opts.log,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  return {
    store,
    tag: r.digest ?? r.version,
    display: `gitlab://${r.project}/${r.pkg}/${r.version}${r.digest ? '@' + r.digest : ''}`,
  };
}

registerStoreInputs(['publish', 'pull'], gitlabInputs);
registerStoreOutputs(
  ['publish'],
  [{ name: 'package-url', description: 'GitLab: web page of the published package' }],
);
