import { OrbError } from '../core/errors.js';
import { MAX_CONFIG_BYTES } from '../core/untrusted.js';
import { MAX_INDEX_BLOB } from '../formats/disk-index.js';
import type { DigestResult } from '../image/digest.js';
import { checkDiskV2Config, checkDiskV2Manifest, loadDiskIndex } from '../oci/disk-v2.js';
import { readSmallBlob } from '../stores/layout.js';
import type { OpenedStore } from '../stores/open.js';
import { resolveManifest } from './pull-plan.js';

/**
 * `orb digest REF` for a published image (any store): the content identity comes from the index,
 * validated as a pull validates it, so nothing but the manifest, the config and the index is
 * downloaded. Local disks and layouts are src/image/digest.ts.
 */
/** Root of a published image: only the manifest, the config and the index are downloaded. */
export async function storeContentDigest(opened: OpenedStore): Promise<DigestResult> {
  const { store, display } = opened;
  const { manifest } = await resolveManifest(store, opened.tag ?? 'latest', display);
  const layers = checkDiskV2Manifest(manifest, display);
  const config = checkDiskV2Config(await readSmallBlob(store, manifest.config, MAX_CONFIG_BYTES), display);
  if (layers.index.size > MAX_INDEX_BLOB)
    throw new OrbError(
      'input',
      `${display}: the index is ${layers.index.size} bytes, more than ${MAX_INDEX_BLOB}`,
    );
  const blob = await readSmallBlob(store, layers.index, MAX_INDEX_BLOB);
  const idx = loadDiskIndex(blob, manifest, config, layers, display);
  return {
    contentDigest: idx.contentDigest,
    kind: 'store',
    virtualSize: idx.virtualSize,
    readBytes: blob.length,
  };
}
