/**
 * The chunked disk format v2 (docs/chunked-format.md): public API for the other stages.
 *
 *   readChunkedLayout(dir, tag?)      → ChunkedImage: manifest, DiskV2Config, DiskIndex and pack
 *                                       descriptors, all checked by src/oci/disk-v2.ts. `tag`
 *                                       defaults to the layout's only orb disk, else `latest`; a
 *                                       `sha256:...` manifest digest works too.
 *   LayoutReader                      → DiskReader over a layout: frames read from the pack
 *                                       files, every block checked against its sha256.
 *   decodeChunked({layout, tag, output, format: 'raw'|'qcow2'})
 *                                     → ConvertResult: a byte-identical sparse raw disk or a qcow2.
 *   encodeChunked({input, output, tag, base, packSize, ...})
 *                                     → ConvertResult: `orb convert --format chunked` as a function.
 *   parseLayoutRef('oci-layout:DIR:TAG') → { dir, tag }
 *
 * Media types and annotations are the constants in src/formats/oci-media.ts.
 */
import { convertImage, type ConvertOptions, type ConvertResult } from '../convert.js';
import type { Qcow2Compression } from '../qcow2.js';

export {
  readChunkedLayout,
  parseLayoutRef,
  isChunkedLayout,
  indexExtents,
  LayoutReader,
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
