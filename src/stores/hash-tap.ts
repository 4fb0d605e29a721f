import { createHash } from 'node:crypto';
import { Transform, type Readable, type TransformCallback } from 'node:stream';

/**
 * A pass-through that hashes and counts a blob's bytes on their way to a store, so a store can
 * compare what it sent with the digest and size the server says it kept.
 */
export class HashTap extends Transform {
  private readonly hash = createHash('sha256');
  sent = 0;

  constructor(private readonly onBytes?: (n: number) => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.sent += chunk.length;
    this.onBytes?.(chunk.length);
    cb(null, chunk);
  }

  /** `src` piped through this tap; an error of the source fails the tap. */
  from(src: Readable): this {
    src.on('error', (e) => this.destroy(e));
    return src.pipe(this);
  }

  digest(): string {
    return 'sha256:' + this.hash.digest('hex');
  }
}
