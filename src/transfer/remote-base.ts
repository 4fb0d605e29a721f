import type { DiskIndex } from '../formats/disk-index.js';
import type { Descriptor } from '../formats/oci-media.js';
import type { BaseImage } from '../image/chunked/image.js';
import type { OpenedStore } from '../stores/open.js';
import { readDiskV2, resolveManifest } from './pull-plan.js';

export interface PublishedIndex {
  manifestDigest: string;
  index: DiskIndex;
  packs: Descriptor[];
  /** bytes of the index blob */
  indexBytes: number;
}

/**
 * The index of a published image, validated as a pull validates it: only the manifest, the
 * config and the index are downloaded (no pack).
 */
export async function readPublishedIndex(opened: OpenedStore): Promise<PublishedIndex> {
  const { store, display } = opened;
  const { manifest, digest } = await resolveManifest(store, opened.tag ?? 'latest', display);
  const { layers, index, indexBytes } = await readDiskV2(store, manifest, display);
  return { manifestDigest: digest, index, packs: layers.packs, indexBytes };
}

/**
 * `orb convert --base REF` with a published image: what the encoder needs to reference its
 * blocks. Its packs stay in the store; the output's manifest names REF (without credentials:
 * `display` never carries them) and the base manifest digest, so publish can skip or mount them.
 */
export async function loadPublishedBase(opened: OpenedStore): Promise<BaseImage> {
  const p = await readPublishedIndex(opened);
  return {
    index: p.index,
    packs: p.packs,
    manifestDigest: p.manifestDigest,
    display: `${opened.display}@${p.manifestDigest}`,
    reference: opened.display,
  };
}
