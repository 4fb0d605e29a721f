import { createHash, type Hash } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import type { PackRef } from '../../formats/disk-index.js';
import type { OciLayout } from '../../oci/layout.js';

/**
 * Appends frames to pack blobs of a layout (docs/chunked-format-v2.md, "Pack"): each pack is
 * written as `<blobs>/<n>.<pid>.partial`, hashed while written (no second read), and renamed to
 * its digest when it is closed: when the next frame would take it past `packSize`, or at the end.
 * Frames arrive in disk order, so a pack's frames are in offset order by construction.
 */
export class PackWriter {
  readonly packs: PackRef[] = [];
  /** final blob paths this writer created (for a rollback in an existing layout) */
  readonly created: string[] = [];
  private cur: { fh: FileHandle; tmp: string; hash: Hash; size: number } | undefined;
  private serial = 0;

  constructor(
    private readonly layout: OciLayout,
    private readonly packSize: number,
  ) {}

  /** bytes of the packs written so far, the open one included */
  get bytes(): number {
    return this.packs.reduce((n, p) => n + p.size, 0) + (this.cur?.size ?? 0);
  }

  /** Appends one frame; returns the new pack's number (0 = first new pack) and the offset in it. */
  async append(frame: Uint8Array): Promise<{ pack: number; offset: number }> {
    if (this.cur && this.cur.size > 0 && this.cur.size + frame.length > this.packSize) await this.close();
    if (!this.cur) {
      const tmp = `${this.layout.blobPath(`sha256:${'0'.repeat(64)}`).slice(0, -64)}pack-${this.serial++}.${process.pid}.partial`;
      this.cur = { fh: await open(tmp, 'w'), tmp, hash: createHash('sha256'), size: 0 };
    }
    const c = this.cur;
    const offset = c.size;
    for (let done = 0; done < frame.length;) {
      const { bytesWritten } = await c.fh.write(frame, done, frame.length - done, offset + done);
      done += bytesWritten;
    }
    c.hash.update(frame);
    c.size += frame.length;
    return { pack: this.packs.length, offset };
  }

  /** Closes the open pack (if any) under its digest. */
  async close(): Promise<void> {
    const c = this.cur;
    if (!c) return;
    this.cur = undefined;
    await c.fh.close();
    const digest = 'sha256:' + c.hash.digest('hex');
    const dest = this.layout.blobPath(digest);
    // an equal pack already in the layout (same frames again) is not ours to remove on rollback
    if ((await this.layout.blobSize(digest)) === c.size) await rm(c.tmp, { force: true });
    else {
      await rename(c.tmp, dest);
      this.created.push(dest);
    }
    this.packs.push({ digest, size: c.size });
  }

  /** Removes the open pack's temporary file; packs already closed stay (see `created`). */
  async abort(): Promise<void> {
    const c = this.cur;
    this.cur = undefined;
    if (!c) return;
    await c.fh.close().catch(() => undefined);
    await rm(c.tmp, { force: true });
  }
}
