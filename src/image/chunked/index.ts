/**
 * The chunked disk format (docs/chunked-format.md): public API for the other stages.
 *
 *   readChunkedLayout(dir, tag?)      → ChunkedImage: validated manifest, DiskConfig, chunk list
 *                                       (offset, length, uncompressed digest, blob descriptor) in
 *                                       disk order; gaps between chunks are zeros. `tag` defaults
 *                                       to the layout's only orb disk, else `latest`; a
 *                                       `sha256:...` manifest digest works too.
 *   decompressChunk(layout, chunk)    → Buffer: reads the blob, checks its digest, decompresses
 *                                       and checks the uncompressed sha256 (integrity errors).
 *   decodeChunkBlob(blob, chunk)      → Buffer: the same for a blob already in memory.
 *   decodeChunked({layout, tag, output, format: 'raw'|'qcow2'})
 *                                     → ConvertResult: a byte-identical sparse raw disk or a
 *                                       qcow2, written as <output>.partial and renamed only after
 *                                       the whole-disk sha256 matched DiskConfig.contentDigest.
 *   encodeChunked({input, output, tag, base, ...})
 *                                     → ConvertResult: `orb convert --format chunked` as a function.
 *   parseLayoutRef('oci-layout:DIR:TAG') → { dir, tag }
 *
 * Media types and annotations are the constants in src/formats/oci-media.ts.
 */
import { convertImage, type ConvertOptions, type ConvertResult } from '../convert.js';
import type { Qcow2Compression } from '../qcow2.js';

export {
  readChunkedLayout,
  decompressChunk,
  decodeChunkBlob,
  parseLayoutRef,
  isChunkedLayout,
  type ChunkRef,
  type ChunkedImage,
} from './read.js';

export interface DecodeOptions extends Pick<
  ConvertOptions,
  'log' | 'progress' | 'signal' | 'threads' | 'verify'
> {
  /** layout directory */
  layout: string;
  /** default: the layout's only disk, else latest */
  tag?: string;
  output: string;
  format: 'raw' | 'qcow2';
  /** qcow2 only: cluster compression; default none (a pull should not spend CPU recompressing) */
  compression?: Qcow2Compression;
  /** write <output>.orb.json (default false: the caller, e.g. pull, writes its own) */
  manifest?: boolean;
}

export function decodeChunked(o: DecodeOptions): Promise<ConvertResult> {
  return convertImage({
    input: `oci-layout:${o.layout}${o.tag ? `:${o.tag}` : ''}`,
    output: o.output,
    format: o.format,
    compression: o.compression ?? 'none',
    manifest: o.manifest ?? false,
    ...(o.verify !== undefined ? { verify: o.verify } : {}),
    ...(o.threads ? { threads: o.threads } : {}),
    ...(o.log ? { log: o.log } : {}),
    ...(o.progress ? { progress: o.progress } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
  });
}

export function encodeChunked(o: Omit<ConvertOptions, 'format'>): Promise<ConvertResult> {
  return convertImage({ ...o, format: 'chunked' });
}
