import { parseDigest } from '../core/untrusted.js';
import type { Readable } from 'node:stream';
import { UsageError } from '../core/errors.js';
import type { InputSpec } from '../core/inputs.js';
import { registerStoreInputs, type OpenedStore, type StoreOptions } from './open.js';
import type { BlobFile, BlobRead, BlobStore } from './store.js';
import { HttpWorkers } from '../net/http-workers.js';
import { sha256Digest } from '../oci/layout.js';
import type { Descriptor } from '../formats/oci-media.js';
import { formatRegistryRef, parseRegistryRef } from '../oci/reference.js';
import { RegistryClient, type RegistryClientOptions } from '../oci/registry.js';
import { DEFAULT_HOSTS_DIR, loadMirrors, mirrorUrl } from '../oci/mirrors.js';
import { addFallbackReferrer, listReferrers } from '../oci/referrers.js';
import { uploadBlob } from '../oci/upload.js';

/** `oci://HOST/REPO:TAG` as a BlobStore. */
export const DEFAULT_UPLOAD_CHUNK = 512 << 20;

export class RegistryStore implements BlobStore {
  constructor(
    readonly client: RegistryClient,
    private readonly uploadChunkSize = DEFAULT_UPLOAD_CHUNK,
  ) {}

  describe(): string {
    return `oci://${this.client.host}/${this.client.repository}`;
  }

  async statBlob(digest: string): Promise<number | undefined> {
    const size = await this.client.headBlob(digest);
    return size === undefined ? undefined : Math.max(0, size);
  }

  async putBlob(
    desc: Descriptor,
    open: (offset: number) => Readable,
    onBytes?: (n: number) => void,
    file?: BlobFile,
  ): Promise<void> {
    // Bodies read from files are sent by worker threads: several uploads keep several cores busy.
    if (file) this.client.http.workers ??= new HttpWorkers(4, this.client.signal);
    await uploadBlob(this.client, desc, open, { chunkSize: this.uploadChunkSize }, onBytes, file);
  }

  /** The blob GET with a current token, for pull's transfer workers. */
  async httpSource(
    desc: Descriptor,
    refresh = false,
  ): Promise<{ url: string; headers: Record<string, string> }> {
    const digest = parseDigest(desc.digest, 'blob digest').digest;
    const viaMirror = await this.mirrorSource(digest);
    if (viaMirror) return viaMirror;
    this.viaMirror.delete(digest);
    await this.client.ping();
    const scopes = [this.client.pullScope];
    if (refresh) this.client.auth.invalidate(scopes, this.lastAuth);
    const authz = await this.client.auth.header(scopes);
    this.lastAuth = authz;
    return {
      url: this.client.url(
        `/v2/${this.client.repository}/blobs/${parseDigest(desc.digest, 'blob digest').digest}`,
      ),
      headers: authz ? { authorization: authz } : {},
    };
  }
  private lastAuth: string | undefined;
  /** digest -> the mirror the last httpSource named for it */
  private readonly viaMirror = new Map<string, string>();
  /** digest -> mirrors that failed it (mid-transfer, wrong bytes) and are skipped for it */
  private readonly badMirrors = new Map<string, Set<string>>();

  sourceFailed(desc: Descriptor, why: string): boolean {
    const origin = this.viaMirror.get(desc.digest);
    const m = this.client.mirrors?.config.mirrors.find((x) => x.origin === origin);
    if (!origin || !m) return false;
    this.viaMirror.delete(desc.digest);
    let bad = this.badMirrors.get(desc.digest);
    if (!bad) this.badMirrors.set(desc.digest, (bad = new Set()));
    bad.add(origin);
    this.client.mirrors!.skip(m, `blob ${desc.digest.slice(0, 19)}: ${why}`);
    return true;
  }

  /**
   * The first mirror that has the blob (HEAD), for the transfer workers. Mirrors with their own
   * ca or skip_verify are left to the in-process path: the workers trust the default CAs only.
   */
  private async mirrorSource(
    digest: string,
  ): Promise<{ url: string; headers: Record<string, string> } | undefined> {
    const set = this.client.mirrors;
    if (!set) return undefined;
    const bad = this.badMirrors.get(digest);
    for (const m of set.candidates(digest)) {
      if (m.customTls || bad?.has(m.origin)) continue;
      try {
        const res = await set.send(m, 'HEAD', 'blobs', digest, {});
        await res.discard();
        if (res.status === 200) {
          this.viaMirror.set(digest, m.origin);
          const authz = await set.authorization(m);
          return {
            url: mirrorUrl(m, this.client.host, this.client.repository, 'blobs', digest),
            headers: { ...m.headers, ...(authz ? { authorization: authz } : {}) },
          };
        }
        set.skip(m, `HTTP ${res.status} for blob ${digest.slice(0, 19)}`);
      } catch (err) {
        set.skip(m, (err as Error).message);
      }
    }
    return undefined;
  }

  async getBlob(desc: Descriptor, offset = 0, end?: number): Promise<BlobRead> {
    const r = await this.client.getBlob(desc.digest, desc.size, offset, end);
    return { stream: r.res.stream, offset: r.offset, end: r.end };
  }

  async putManifest(bytes: Buffer, mediaType: string, tags: readonly string[]): Promise<string> {
    const refs = tags.length ? tags : [sha256Digest(bytes)];
    let digest = '';
    let subjectHandled = false;
    for (const ref of refs) {
      const r = await this.client.putManifest(bytes, mediaType, ref);
      digest = r.digest;
      subjectHandled ||= r.subjectHandled;
    }
    const parsed = JSON.parse(bytes.toString('utf8')) as {
      subject?: Descriptor;
      artifactType?: string;
      annotations?: Record<string, string>;
      config?: Descriptor;
    };
    if (parsed.subject && !subjectHandled) {
      // The registry has no referrers API: keep the spec's fallback index tag up to date.
      await addFallbackReferrer(this.client, parsed.subject.digest, {
        mediaType,
        digest,
        size: bytes.length,
        ...((parsed.artifactType ?? parsed.config?.mediaType)
          ? { artifactType: parsed.artifactType ?? parsed.config!.mediaType }
          : {}),
        ...(parsed.annotations ? { annotations: parsed.annotations } : {}),
      });
    }
    return digest;
  }

  getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    return this.client.getManifest(ref);
  }

  /** Cross-repository mount: the registry links the blob without a byte uploaded. */
  async mountBlob(desc: Descriptor, fromRepository: string): Promise<boolean> {
    if (fromRepository === this.client.repository) return false;
    const res = await this.client.request({
      method: 'POST',
      path: `/v2/${this.client.repository}/blobs/uploads/?mount=${encodeURIComponent(parseDigest(desc.digest, 'blob digest').digest)}&from=${encodeURIComponent(fromRepository)}`,
      scopes: [this.client.pushScope, `repository:${fromRepository}:pull`],
      what: `mount blob ${desc.digest.slice(7, 19)} from ${fromRepository}`,
      accept: [201, 202, 404],
    });
    await res.discard();
    if (res.status === 201) return true;
    // 202: the registry opened an upload session instead; close it so it does not linger.
    const loc = res.header('location');
    if (res.status === 202 && loc) {
      await this.client
        .request({
          method: 'DELETE',
          path: new URL(loc, res.url).toString(),
          scopes: [this.client.pushScope],
          what: 'cancel upload session',
          accept: [204, 404, 400, 405],
        })
        .then((r) => r.discard())
        .catch(() => undefined);
    }
    return false;
  }

  listReferrers(digest: string, artifactType?: string): Promise<Descriptor[]> {
    return listReferrers(this.client, digest, artifactType);
  }

  async close(): Promise<void> {
    await this.client.http.workers?.close();
    this.client.http.workers = undefined;
    this.client.close();
  }
}

export function registryClientFor(
  ref: string,
  opts: StoreOptions,
  extra: Partial<RegistryClientOptions> = {},
): RegistryClient {
  const r = parseRegistryRef(ref);
  const o = opts.options;
  const concurrency = typeof o.concurrency === 'number' ? o.concurrency : 4;
  return new RegistryClient({
    ref: r,
    plainHttp: o['plain-http'] === true,
    credentials: { username: str(o.username), password: str(o.password) },
    log: opts.log,
    signal: opts.signal,
    maxSockets: concurrency + 4,
    // only pull-side commands declare the mirror inputs: publish always talks to the origin
    ...('hosts-dir' in o || 'mirror' in o
      ? {
          mirrors: loadMirrors({
            host: r.host,
            mirrors: str(o.mirror)?.split(',') ?? [],
            hostsDir: str(o['hosts-dir']) ?? DEFAULT_HOSTS_DIR,
            maxSockets: concurrency + 4,
            log: opts.log,
          }),
        }
      : {}),
    ...extra,
  });
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

export async function openRegistryStore(ref: string, opts: StoreOptions): Promise<OpenedStore> {
  const r = parseRegistryRef(ref);
  const chunk = opts.options['upload-chunk-size'];
  if (chunk !== undefined && (typeof chunk !== 'number' || chunk < 0))
    throw new UsageError(`upload-chunk-size must be a size (got ${String(chunk)})`);
  const client = registryClientFor(ref, opts);
  const store = new RegistryStore(client, typeof chunk === 'number' ? chunk : DEFAULT_UPLOAD_CHUNK);
  const tag = r.digest ?? r.tag;
  return { store, ...(tag ? { tag } : {}), display: formatRegistryRef(r) };
}

export const mirrorInputs: InputSpec[] = [
  {
    name: 'mirror',
    type: 'list',
    env: ['ORB_REGISTRY_MIRRORS'],
    description:
      'registry mirror URL tried before the origin for blobs and manifests named by digest (repeatable, in order; containerd-style ?ns=HOST); every digest is still verified',
  },
  {
    name: 'hosts-dir',
    type: 'string',
    default: DEFAULT_HOSTS_DIR,
    description:
      'containerd-style mirror configuration: HOST/hosts.toml (else _default/hosts.toml) under this directory, with server and [host."URL"] capabilities, header, override_path, ca, skip_verify',
  },
];
registerStoreInputs(['pull'], mirrorInputs);
