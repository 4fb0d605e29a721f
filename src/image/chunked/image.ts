import type { DiskIndex } from '../../formats/disk-index.js';
import type { Descriptor, DiskV2Config, ImageManifest } from '../../formats/oci-media.js';
import type { OciLayout } from '../../oci/layout.js';

/** A chunked (v2) image in a local OCI layout, every part checked (src/oci/disk-v2.ts). */
export interface ChunkedImage {
  layout: OciLayout;
  tag: string;
  manifest: ImageManifest;
  manifestDigest: string;
  manifestSize: number;
  config: DiskV2Config;
  /** layers[0] */
  indexDescriptor: Descriptor;
  index: DiskIndex;
  /** layers[1..]: the packs, in the index's pack-table order */
  packs: Descriptor[];
  /** index + packs (compressed bytes the image occupies) */
  storedBytes: number;
}

/**
 * An earlier version whose blocks a conversion references instead of storing again. A local
 * base has `layout` (its packs are linked into the output); a published base (`orb convert
 * --base oci://...`, resolved by the command layer from its manifest, config and index only) has
 * `reference`: its packs stay in that store and the output's manifest says so (ANN_BASE_*).
 */
export interface BaseImage {
  index: DiskIndex;
  /** the packs, in the index's pack-table order */
  packs: Descriptor[];
  manifestDigest: string;
  /** for logs */
  display: string;
  layout?: OciLayout;
  /** the store reference without credentials (published bases only) */
  reference?: string;
}

/** A local layout's image as a base. */
export function layoutBase(img: ChunkedImage): BaseImage {
  return {
    index: img.index,
    packs: img.packs,
    manifestDigest: img.manifestDigest,
    display: `${img.layout.dir}:${img.tag}`,
    layout: img.layout,
  };
}
