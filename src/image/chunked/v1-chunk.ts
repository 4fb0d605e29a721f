import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { zstdDecompress } from 'node:zlib';
import { OrbError } from '../../core/errors.js';
import { DISK_CHUNK_RAW } from '../../formats/oci-media.js';
import type { ChunkRef } from '../../formats/chunked-index.js';

/**
 * TEMPORARY: the v1 chunk decoder that src/transfer/check-chunk.ts (the v1 pull, being replaced
 * on the v2-pull branch) still imports. Nothing in src/image uses it; delete this file with the
 * v1 pull at merge.
 */
const inflate = promisify(zstdDecompress);

export async function decodeChunkBlob(blob: Buffer, chunk: ChunkRef): Promise<Buffer> {
  let plain: Buffer;
  if (chunk.blob.mediaType === DISK_CHUNK_RAW) plain = blob;
  else {
    try {
      plain = await inflate(blob, { maxOutputLength: chunk.length });
    } catch (err) {
      throw new OrbError(
        'integrity',
        `chunk at offset ${chunk.offset} does not decompress: ${(err as Error).message}`,
      );
    }
  }
  if (
    plain.length !== chunk.length ||
    'sha256:' + createHash('sha256').update(plain).digest('hex') !== chunk.digest
  )
    throw new OrbError(
      'integrity',
      `chunk at offset ${chunk.offset} decodes to other bytes than its digest ${chunk.digest}`,
    );
  return plain;
}
