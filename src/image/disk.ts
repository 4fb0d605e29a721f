import type { Extents } from './extents.js';
import type { ChunkedImage } from './chunked/read.js';

/**
 * What a disk image is, found by reading its header (src/image/untrusted.ts, never QEMU's probe
 * and never the file name: `.img` may be raw or qcow2 and a renamed file must not be misread).
 */
export const INPUT_FORMATS = ['raw', 'qcow2', 'vhdx', 'vmdk', 'vdi', 'vpc', 'chunked'] as const;
export type InputFormat = (typeof INPUT_FORMATS)[number];

export interface ImageInfo {
  path: string;
  format: InputFormat;
  virtualSize: number;
  /** bytes the input occupies on disk (allocated blocks of the file, or the layout's blobs) */
  fileBytes: number;
  /** qcow2 cluster size when the input has one */
  clusterSize?: number;
  /** qcow2: zlib or zstd */
  compressionType?: string;
  /** chunked: the tag read */
  tag?: string;
  /** chunked: orb2:sha256:<hex>, the content root of its index (every block is checked as read) */
  contentDigest?: string;
  /** chunked: the layout as read and checked by inspect (not read twice) */
  layout?: ChunkedImage;
  /** the name QEMU must open it by (format and every named file pinned); absent for chunked */
  qemu?: string;
  /** other files the image names that the user allowed (read as part of it) */
  external?: string[];
}

/**
 * Random access to the guest-visible bytes of a disk image, whatever its format, plus the map
 * of where data can be (everything outside `extents` reads as zeros and is never read).
 */
export interface DiskReader {
  readonly info: ImageInfo;
  readonly virtualSize: number;
  readonly extents: Extents;
  /** set when the disk is a raw file read directly: another thread may read it too */
  readonly file?: { path: string; fileSize: number };
  /** Fill `target` with the disk bytes starting at `offset` (offset + length <= virtualSize). */
  read(offset: number, target: Uint8Array): Promise<void>;
  close(): Promise<void>;
}
