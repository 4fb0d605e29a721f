import { createHash, webcrypto } from 'node:crypto';
import { OrbError } from '../core/errors.js';
import { decodeChunkBlob } from '../image/chunked/index.js';
import { DISK_CHUNK_RAW, DISK_CHUNK_ZSTD } from '../formats/oci-media.js';

export function sha256(data: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/** sha256 on libuv's thread pool (WebCrypto), so hashing many chunks uses every core. */
export async function sha256Async(data: Uint8Array): Promise<string> {
  return 'sha256:' + Buffer.from(await webcrypto.subtle.digest('SHA-256', data)).toString('hex');
}

/**
 * Decodes and verifies one chunk with the chunked format's own decoder (src/image/chunked):
 * zstd or raw, then its length and uncompressed sha256 against the manifest's annotations.
 */
export async function decodeChunk(
  kind: 'zstd' | 'raw' | 'part',
  blob: Buffer,
  length: number,
  digest: string,
  where: string,
): Promise<Buffer> {
  if (kind === 'part') {
    if (blob.length !== length || (await sha256Async(blob)) !== digest)
      throw new OrbError('integrity', `${where}: the part does not match its digest`);
    return blob;
  }
  const chunk = {
    index: 0,
    offset: 0,
    length,
    digest,
    blob: { mediaType: kind === 'zstd' ? DISK_CHUNK_ZSTD : DISK_CHUNK_RAW, digest: '', size: blob.length },
  };
  try {
    return await decodeChunkBlob(blob, chunk);
  } catch (err) {
    if (err instanceof OrbError)
      throw new OrbError(err.kind, `${where}: ${err.message.replace(/^chunk at offset 0:? ?/, '')}`, {
        cause: err,
      });
    throw err;
  }
}
