import { createHash } from 'node:crypto';
import {
  MAX_MANIFEST_BYTES,
  isObject,
  sha256Digest,
  shortString,
  untrustedError,
} from '../core/untrusted.js';
import { Readable } from 'node:stream';
import { OrbError, UsageError } from '../core/errors.js';
import type { InputSpec } from '../core/inputs.js';
import type { Logger } from '../core/log.js';
import {
  ANN_CONTENT_DIGEST,
  ANN_FILE_FORMAT,
  ANN_FILE_SIZE,
  ANN_PART_FILE,
  ANN_PART_INDEX,
  ANN_PART_OFFSET,
  ANN_TITLE,
  FILE_ARTIFACT,
  FILE_PART,
  EMPTY_CONFIG,
  OCI_MANIFEST,
  type Descriptor,
  type ImageManifest,
} from '../formats/oci-media.js';
import { detectFileFormat } from '../formats/file-format.js';
import { checkUrlScheme, redactUrl } from './https-client.js';
import { digestFromHeaders, RemoteFile } from './https-file.js';
import { registerStoreInputs, type OpenedStore, type StoreOptions } from './open.js';
import type { BlobRead, BlobStore } from './store.js';

/**
 * `https://...` (and `http://` on loopback) as a pull source:
 *  - a single file (qcow2, raw, .zst): presented as a one-part file artifact, verified against a
 *    digest given in the URL fragment (`#sha256=<hex>`), the `digest` option, a digest the server
 *    publishes in its headers (S3 `x-amz-meta-sha256`, RFC 9530 `Repr-Digest`) or a `.sha256`
 *    file beside it;
 *  - a pre-signed bundle written by `orb publish --to s3://... --presign` (orb-presigned/v1): the
 *    manifest plus one pre-signed URL per blob, so chunked images pull from S3 without credentials.
 */
export const PRESIGNED_SCHEMA = 'orb-presigned/v1';

export interface PresignedBundle {
  schema: typeof PRESIGNED_SCHEMA;
  /** ISO time the URLs stop working */
  expires: string;
  /** where it was published (no secrets) */
  reference: string;
  mediaType: string;
  digest: string;
  /** the manifest's exact bytes (its digest must stay the same) */
  manifest: string;
  blobs: Record<string, string>;
}

export const httpsInputs: InputSpec[] = [
  {
    name: 'digest',
    type: 'string',
    description:
      'https:// sources: expected sha256:<hex> of the file (otherwise taken from #sha256= in the URL, the server headers or a .sha256 file beside it)',
  },
  {
    name: 'connections',
    type: 'integer',
    default: 8,
    min: 1,
    max: 32,
    description: 'parallel ranged connections per large file download (https://, S3, GitLab, GitHub)',
  },
];

const EMPTY_JSON = Buffer.from('{}');
const EMPTY_DESC: Descriptor = { ...EMPTY_CONFIG };

function sha(buf: Buffer): string {
  return 'sha256:' + createHash('sha256').update(buf).digest('hex');
}

function normalizeDigest(text: string): string {
  const t = text.trim().toLowerCase();
  const m = /^(?:sha256[:=])?([a-f0-9]{64})$/.exec(t);
  if (!m) throw new UsageError(`'${text}' is not a SHA-256 digest`, 'give sha256:<64 hex digits>');
  return 'sha256:' + m[1];
}

export function fileName(url: URL): string {
  const last = decodeURIComponent(url.pathname.split('/').filter(Boolean).pop() ?? 'download');
  // a plain name pull accepts (safeFileName): no separators, at most 255 bytes, not . or ..
  const name = last.replace(/[^A-Za-z0-9._+-]/g, '_').slice(-200);
  return /^\.*$/.test(name) ? 'download' : name;
}

/** The one-part file-artifact manifest that stands for a plain file (as publish builds them). */
export function singleFileManifest(name: string, digest: string, size: number, format: string): Buffer {
  const m: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: FILE_ARTIFACT,
    config: EMPTY_DESC,
    layers: [
      {
        mediaType: FILE_PART,
        digest,
        size,
        annotations: {
          [ANN_TITLE]: name,
          [ANN_PART_FILE]: name,
          [ANN_PART_INDEX]: '0',
          [ANN_PART_OFFSET]: '0',
        },
      },
    ],
    annotations: {
      [ANN_TITLE]: name,
      [ANN_CONTENT_DIGEST]: digest,
      [ANN_FILE_FORMAT]: format,
      [ANN_FILE_SIZE]: String(size),
    },
  };
  return Buffer.from(JSON.stringify(m));
}

interface Resolved {
  manifest: Buffer;
  mediaType: string;
  digest: string;
  files: Map<string, RemoteFile>;
}

export class HttpsStore implements BlobStore {
  private resolved?: Promise<Resolved>;
  readonly url: URL;
  constructor(
    href: string,
    private readonly opts: {
      digest?: string;
      connections?: number;
      log: Logger;
      signal?: AbortSignal;
      plainHttp?: boolean;
    },
  ) {
    this.url = new URL(href);
    checkUrlScheme(this.url, opts.plainHttp);
  }

  describe(): string {
    return redactUrl(this.url.href);
  }

  private file(href: string, what: string): RemoteFile {
    return new RemoteFile(href, {
      connections: this.opts.connections ?? 8,
      log: this.opts.log,
      ...(this.opts.signal ? { signal: this.opts.signal } : {}),
      what,
    });
  }

  private resolve(): Promise<Resolved> {
    this.resolved ??= this.doResolve();
    return this.resolved;
  }

  private async doResolve(): Promise<Resolved> {
    const fragment = this.url.hash.replace(/^#/, '');
    const href = new URL(this.url.href);
    href.hash = '';
    const main = this.file(href.href, `download ${fileName(href)}`);
    const probe = await main.probe();
    const looksJson = /json/i.test(probe.contentType) || href.pathname.endsWith('.json');
    if (looksJson && probe.size < MAX_MANIFEST_BYTES) {
      const body = await main.text();
      let doc: Partial<PresignedBundle> | undefined;
      try {
        doc = JSON.parse(body.toString('utf8')) as Partial<PresignedBundle>;
      } catch {
        doc = undefined;
      }
      if (doc?.schema === PRESIGNED_SCHEMA) return this.fromBundle(doc as PresignedBundle);
    }
    const name = fileName(href);
    const digest = await this.fileDigest(fragment, probe.headers, href);
    const files = new Map([[digest, main]]);
    const format = detectFileFormat(Buffer.concat([await main.head(512), Buffer.alloc(8)]));
    return {
      manifest: singleFileManifest(name, digest, probe.size, format),
      mediaType: OCI_MANIFEST,
      digest: '',
      files,
    };
  }

  /**
   * Set once a pre-signed bundle is resolved (chunked images: many blobs, fetched by the pull
   * engine's transfer threads). A single file stays on getBlob, whose parallel ranges speed up
   * one big download.
   */
  httpSource?: (
    desc: Descriptor,
    refresh?: boolean,
  ) => Promise<{ url: string; headers: Record<string, string> }>;

  private fromBundle(b: PresignedBundle): Resolved {
    // The bundle is a file anyone could have written: its digests become map keys and log lines.
    sha256Digest(b.digest, 'pre-signed bundle digest');
    shortString(b.reference, 'pre-signed bundle reference', 1024);
    shortString(b.expires, 'pre-signed bundle expires', 64);
    if (!isObject(b.blobs)) throw untrustedError('pre-signed bundle blobs', 'is not an object', b.blobs);
    for (const [d, u] of Object.entries(b.blobs)) {
      sha256Digest(d, 'pre-signed bundle blob digest');
      if (typeof u !== 'string' || !/^https?:\/\//.test(u))
        throw untrustedError(`pre-signed bundle blobs[${d.slice(0, 19)}]`, 'is not an http(s) URL');
    }
    if (typeof b.manifest !== 'string') throw untrustedError('pre-signed bundle manifest', 'is not a string');
    const manifest = Buffer.from(b.manifest, 'utf8');
    if (sha(manifest) !== b.digest)
      throw new OrbError(
        'integrity',
        `the pre-signed bundle at ${this.describe()} carries a manifest that does not match its digest ${b.digest}`,
      );
    const expires = Date.parse(b.expires);
    if (Number.isFinite(expires) && expires < Date.now()) {
      throw new OrbError('input', `the pre-signed URLs of ${b.reference} expired at ${b.expires}`, {
        hint: 'ask the publisher for new ones (orb publish --presign, at most 7 days)',
      });
    }
    this.httpSource = async (desc, refresh) => {
      const url = b.blobs[desc.digest];
      if (!url)
        throw new OrbError(
          'input',
          `the pre-signed bundle of ${b.reference} has no URL for blob ${desc.digest}`,
        );
      if (refresh) {
        // the server refused the signed URL: it expired (or was revoked); no fresh one exists here
        throw new OrbError(
          'network',
          `the pre-signed URLs of ${b.reference} were refused${Date.parse(b.expires) < Date.now() ? `: they expired at ${b.expires}` : ''}`,
          {
            hint: 'ask the publisher for a new pre-signed URL (orb publish --presign, at most 7 days) and rerun: the download resumes from what is already on disk',
          },
        );
      }
      return { url, headers: {} };
    };
    const files = new Map<string, RemoteFile>();
    for (const [digest, url] of Object.entries(b.blobs))
      files.set(digest, this.file(url, `download blob ${digest.slice(7, 19)} of ${b.reference}`));
    this.opts.log.info(
      `pre-signed bundle of ${b.reference}: ${files.size} blobs, URLs valid until ${b.expires}`,
    );
    return { manifest, mediaType: b.mediaType, digest: b.digest, files };
  }

  private async fileDigest(fragment: string, headers: Record<string, unknown>, href: URL): Promise<string> {
    if (this.opts.digest) return normalizeDigest(this.opts.digest);
    const frag = /(?:^|&)sha256[=:]([a-fA-F0-9]{64})(?:&|$)/.exec(fragment);
    if (frag) return 'sha256:' + frag[1]!.toLowerCase();
    const fromHeaders = digestFromHeaders(headers as never);
    if (fromHeaders) return 'sha256:' + fromHeaders;
    // A side file only makes sense for plain URLs: a pre-signed signature covers one object only.
    if (!href.search) {
      for (const suffix of ['.sha256', '.sha256sum']) {
        try {
          const side = this.file(href.href + suffix, 'fetch checksum file');
          const text = (await side.text(4096)).toString('utf8');
          const m = /\b([a-fA-F0-9]{64})\b/.exec(text);
          if (m) return 'sha256:' + m[1]!.toLowerCase();
        } catch {
          /* not published */
        }
      }
    }
    throw new OrbError(
      'input',
      `no SHA-256 is known for ${this.describe()}, so the download could not be verified`,
      {
        hint: 'append #sha256=<hex> to the URL or pass --digest sha256:<hex> (publishers: put a .sha256 file beside it)',
      },
    );
  }

  async statBlob(digest: string): Promise<number | undefined> {
    const r = await this.resolve();
    const f = r.files.get(digest);
    return f ? (await f.probe()).size : digest === EMPTY_DESC.digest ? 2 : undefined;
  }

  async putBlob(): Promise<void> {
    throw new UsageError(
      'https:// URLs are a pull source only',
      'publish to s3://, gitlab://, github-release:// or oci:// and pull from the URL it gives',
    );
  }

  async putManifest(): Promise<string> {
    throw new UsageError('https:// URLs are a pull source only');
  }

  async getBlob(desc: Descriptor, offset = 0, end?: number): Promise<BlobRead> {
    if (desc.digest === EMPTY_DESC.digest)
      return {
        stream: Readable.from([EMPTY_JSON.subarray(offset, end)]),
        offset,
        end: end ?? EMPTY_JSON.length,
      };
    const r = await this.resolve();
    const f = r.files.get(desc.digest);
    if (!f) throw new OrbError('input', `${this.describe()} has no blob ${desc.digest}`);
    return f.read(offset, end);
  }

  async getManifest(_ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    const r = await this.resolve();
    return { bytes: r.manifest, mediaType: r.mediaType, digest: r.digest || sha(r.manifest) };
  }
}

export async function openHttps(ref: string, opts: StoreOptions): Promise<OpenedStore> {
  const o = opts.options;
  const store = new HttpsStore(ref, {
    log: opts.log,
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(typeof o['digest'] === 'string' && o['digest'] ? { digest: o['digest'] } : {}),
    ...(typeof o['connections'] === 'number' ? { connections: o['connections'] } : {}),
    plainHttp: o['plain-http'] === true,
  });
  return { store, display: store.describe() };
}

registerStoreInputs(['pull'], httpsInputs);
