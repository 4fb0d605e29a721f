import type { Readable } from 'node:stream';
import type { Descriptor } from '../oci/media.js';

/**
 * Where images travel to and from. publish/pull work on this interface only; each backend
 * (OCI registry, OCI layout directory, S3, GitLab packages, GitHub releases, HTTPS) implements
 * what it can. Blobs are content-addressed (`sha256:<hex>`); manifests are looked up by tag.
 */
export interface BlobStore {
  /** human-readable location, secrets removed */
  describe(): string;
  /** size of the blob if the store already has it */
  statBlob(digest: string): Promise<number | undefined>;
  /**
   * Upload a blob. `open(offset)` returns the blob's bytes from `offset`, so an interrupted
   * upload can resume where the store says it stopped. Verifies the digest before committing.
   */
  putBlob(desc: Descriptor, open: (offset: number) => Readable, onBytes?: (n: number) => void): Promise<void>;
  /** Read a blob from `offset` (a ranged request where the store supports it). */
  getBlob(desc: Descriptor, offset?: number): Promise<{ stream: Readable; offset: number }>;
  /** Store a manifest under one or more tags; returns its digest. */
  putManifest(bytes: Buffer, mediaType: string, tags: readonly string[]): Promise<string>;
  /** Fetch a manifest by tag or digest. */
  getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }>;
  /** Optional: mount a blob from another repository of the same registry without uploading. */
  mountBlob?(desc: Descriptor, fromRepository: string): Promise<boolean>;
}
