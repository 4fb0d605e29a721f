import { createHash, webcrypto } from 'node:crypto';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { OrbError } from '../core/errors.js';

/**
 * Decoding one chunk of the disk format: zstd (on libuv's thread pool, off the main thread),
 * then the length and sha256 of the result checked against the manifest's annotations.
 */
const zstdDecompress = promisify(zlib.zstdDecompress) as (buf: Buffer, opts?: zlib.ZstdOptions) => Promise<Buffer>;

export function sha256(data: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/** sha256 on libuv's thread pool (WebCrypto), so hashing many chunks uses every core. */
export async function sha256Async(data: Uint8Array): Promise<string> {
  return 'sha256:' + Buffer.from(await webcrypto.subtle.digest('SHA-256', data)).toString('hex');
}

export async function decodeChunk(kind: 'zstd' | 'raw' | 'part', blob: Buffer, length: number, digest: string, where: string): Promise<Buffer> {
  let out: Buffer;
  if (kind === 'zstd') {
    try {
      out = await zstdDecompress(blob, { maxOutputLength: Math.max(1, length) });
    } catch (err) {
      throw new OrbError('integrity', `${where}: the chunk does not decompress (${(err as Error).message})`);
    }
  } else out = blob;
  if (out.length !== length) throw new OrbError('integrity', `${where}: the chunk holds ${out.length} bytes, the manifest says ${length}`);
  const got = await sha256Async(out);
  if (got !== digest) throw new OrbError('integrity', `${where}: the chunk's content has digest ${got}, the manifest says ${digest}`);
  return out;
}
