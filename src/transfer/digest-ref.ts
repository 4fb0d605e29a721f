import type { DigestResult } from '../image/digest.js';
import type { OpenedStore } from '../stores/open.js';
import { readPublishedIndex } from './remote-base.js';

/**
 * `orb digest REF` for a published image (any store): the content identity comes from the index,
 * validated as a pull validates it, so nothing but the manifest, the config and the index is
 * downloaded. Local disks and layouts are src/image/digest.ts.
 */
/** Root of a published image: only the manifest, the config and the index are downloaded. */
export async function storeContentDigest(opened: OpenedStore): Promise<DigestResult> {
  const p = await readPublishedIndex(opened);
  return {
    contentDigest: p.index.contentDigest,
    kind: 'store',
    virtualSize: p.index.virtualSize,
    readBytes: p.indexBytes,
  };
}
