import type { Descriptor } from './oci-media.js';

/**
 * The chunk index of a chunked disk image (docs/chunked-format.md): the manifest's layers, one per
 * stored chunk, each annotated with where its bytes go in the disk.
 */
/** One stored chunk: where it goes in the disk and which blob holds it. */
export interface ChunkRef {
  index: number;
  offset: number;
  length: number;
  /** sha256:<hex> of the uncompressed bytes */
  digest: string;
  /** the layer descriptor (blob digest, size, media type) */
  blob: Descriptor;
}
