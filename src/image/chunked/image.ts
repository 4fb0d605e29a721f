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
