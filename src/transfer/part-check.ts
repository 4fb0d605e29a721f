import { createHash, webcrypto } from 'node:crypto';
import { OrbError } from '../core/errors.js';

export function sha256(data: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/** sha256 on libuv's thread pool (WebCrypto), so hashing many parts uses every core. */
export async function sha256Async(data: Uint8Array): Promise<string> {
  return 'sha256:' + Buffer.from(await webcrypto.subtle.digest('SHA-256', data)).toString('hex');
}

/** A file artifact's part: its bytes are the content, checked against length and digest. */
export async function checkPart(
  blob: Buffer,
  length: number,
  digest: string,
  where: string,
): Promise<Buffer> {
  if (blob.length !== length || (await sha256Async(blob)) !== digest)
    throw new OrbError('integrity', `${where}: the part does not match its digest`);
  return blob;
}
