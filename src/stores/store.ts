import type { Readable } from 'node:stream';
import type { Descriptor } from '../formats/oci-media.js';

/**
 * Where images travel to and from. publish/pull work on this interface only; each backend
 * (OCI registry, OCI layout directory, S3, GitLab packages, GitHub releases, HTTPS) implements
 * what it can. Blobs are content-addressed (`sha256:<hex>`); manifests are looked up by tag.
 */
/**
 * Where a blob's bytes also lie in a local file (`putBlob`'s fourth argument): a store may read
 * them from there directly (from a worker thread) instead of through `open`.
 */
export interface BlobFile {
  path: string;
  /** offset of the blob's first byte in the file */
  start: number;
}

/** What getBlob returns: the stream and the bytes [offset, end) of the blob it carries. */
export interface BlobRead {
  stream: Readable;
  offset: number;
  end?: number;
}

export interface BlobStore {
  /** human-readable location, secrets removed */
  describe(): string;
  /** size of the blob if the store already has it */
  statBlob(digest: string): Promise<number | undefined>;
  /**
   * Upload a blob. `open(offset)` returns the blob's bytes from `offset`, so an interrupted
   * upload can resume where the store says it stopped. Verifies the digest before committing.
   * `onBytes(n)` reports progress; n is negative when the store had to go back (it restarted the
   * blob, or the server kept fewer bytes than were sent), so a running sum stays exact.
   * Retries (backoff, Retry-After, token refresh) are the store's job; it throws an OrbError
   * only when it gave up.
   */
  putBlob(
    desc: Descriptor,
    open: (offset: number) => Readable,
    onBytes?: (n: number) => void,
    file?: BlobFile,
  ): Promise<void>;
  /**
   * Read a blob from `offset` up to `end` (exclusive; default: the blob's end), with a ranged
   * request where the store supports it. The returned `offset` is where the stream really
   * starts: 0 when the server ignored the range, in which case the caller must start that blob
   * over (never append). `end`, when returned, is where the stream stops (the blob's size when
   * the server ignored the range); the caller still counts what arrives. The stream errors when
   * the connection drops; the caller resumes with another getBlob from what it has. The caller
   * verifies size and digest.
   */
  getBlob(desc: Descriptor, offset?: number, end?: number): Promise<BlobRead>;
  /** Store a manifest under one or more tags (none: by digest only); returns its digest. */
  putManifest(bytes: Buffer, mediaType: string, tags: readonly string[]): Promise<string>;
  /** Fetch a manifest by tag or digest (bytes verified against the digest when one was asked for). */
  getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }>;
  /**
   * Optional: a plain HTTP(S) GET that returns the blob (Range allowed), for transfer worker
   * threads: URL and headers (credentials included; redirects are followed without them going
   * to another host). Called again with `refresh` after the server refused them (401/403), so
   * an expired token is renewed once. Stores without it are read through getBlob.
   */
  httpSource?(desc: Descriptor, refresh?: boolean): Promise<{ url: string; headers: Record<string, string> }>;
  /**
   * Optional: the last httpSource for `desc` failed for `why`. True when it was a mirror, which is
   * now skipped for this blob: ask httpSource again (the next mirror or the origin).
   */
  sourceFailed?(desc: Descriptor, why: string): boolean;
  /** The largest blob the store accepts (GitHub assets, GitLab files, S3 objects); none: no known limit. */
  readonly maxBlobSize?: number;
  /** The most blobs (config and layers) one image version may have in the store (GitHub: assets per release). */
  readonly maxBlobCount?: number;
  /** Optional: mount a blob from another repository of the same registry without uploading. */
  mountBlob?(desc: Descriptor, fromRepository: string): Promise<boolean>;
  /** Optional: manifests whose `subject` is `digest` (OCI referrers), filtered by artifactType. */
  listReferrers?(digest: string, artifactType?: string): Promise<Descriptor[]>;
  /**
   * Optional: extra result values after a publish or pull (pre-signed URLs, ...), merged into the
   * command's outputs; declare their names with registerStoreOutputs (open.ts).
   */
  publishedOutputs?():
    Record<string, string | number | boolean> | Promise<Record<string, string | number | boolean>>;
  /** Optional: release connections; called once when publish/pull is done with the store. */
  close?(): Promise<void>;
}
