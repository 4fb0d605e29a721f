import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { DiskIndex } from '../formats/disk-index.js';
import { DISK_V2_ARTIFACT, type DiskV2Config, type ImageManifest } from '../formats/oci-media.js';
import type { BlobStore } from '../stores/store.js';
import { readRange } from '../transfer/range-read.js';
import { readDiskV2, resolveManifest } from '../transfer/pull-plan.js';
import type { RangeFetcher } from './lazy-disk.js';

/**
 * The chunked v2 disk behind a reference: manifest, config and index fetched and checked (the
 * same checks `orb pull` runs), nothing of the packs yet.
 */
export interface OpenedDisk {
  manifest: ImageManifest;
  manifestDigest: string;
  config: DiskV2Config;
  index: DiskIndex;
}

export async function openDiskV2(store: BlobStore, ref: string, display: string): Promise<OpenedDisk> {
  const { manifest, digest } = await resolveManifest(store, ref, display);
  if ((manifest.artifactType ?? manifest.config.mediaType) !== DISK_V2_ARTIFACT)
    throw new OrbError('input', `${display} is not a chunked disk image (${DISK_V2_ARTIFACT})`, {
      hint: 'orb serve serves images published from `orb convert --format chunked`; pull other kinds with orb pull',
    });
  const { config, index } = await readDiskV2(store, manifest, display);
  return { manifest, manifestDigest: digest, config, index };
}

/**
 * Range reads of packs from `store`. Its own retries are short: the lazy disk decides how long a
 * read may wait for an unreachable store, and a booting guest should not sit behind a 15-minute
 * retry policy.
 */
export function storeFetcher(store: BlobStore, log: Logger): RangeFetcher {
  const retry = {
    attempts: 3,
    baseDelayMs: 200,
    maxDelayMs: 2000,
    maxRetryAfterMs: 10_000,
    maxTotalMs: 5000,
  };
  return async (pack, start, length, signal) => {
    const desc = { mediaType: 'application/octet-stream', digest: pack.digest, size: pack.size };
    const got = await readRange(store, desc, start, length, { signal, retry, log, idleMs: 20_000 });
    if (!Buffer.isBuffer(got))
      throw new OrbError('input', `${store.describe()} ignores Range requests (${got.why})`, {
        hint: 'orb serve fetches blocks by Range; use orb pull with this store',
      });
    return got;
  };
}
