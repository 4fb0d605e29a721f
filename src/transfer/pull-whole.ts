import { createHash } from 'node:crypto';
import type { DiskIndex } from '../formats/disk-index.js';
import type { PackRange } from './pull-ranges.js';

/**
 * A pack that is mostly needed is fetched whole, but as consecutive ranges of at most `cap` bytes
 * cut at frame boundaries and requested in parallel like any other range: measured on an 860 MB
 * pack from a registry on loopback, that took 1 s less CPU than one stream (each range lands in a
 * buffer of its own, without joining stream chunks). Every byte of the pack is fetched, and the
 * ranges are hashed in pack order (OrderedDigest), so the whole blob is still checked against its
 * digest, beside each needed block against its own sha256.
 */
export interface WholeRun {
  pack: number;
  pieces: PackRange[];
  digest: OrderedDigest;
}

/** The pieces of each pack in `whole`: [0, size) cut at frame starts, needed frames listed. */
export function wholeRuns(
  idx: DiskIndex,
  whole: { pack: number; frames: number[] }[],
  cap: number,
): WholeRun[] {
  if (!whole.length) return [];
  const wanted = new Map(whole.map((w) => [w.pack, new Set(w.frames)]));
  const starts = new Map<number, number[]>();
  for (let f = 0; f < idx.frameCount; f++) {
    const p = idx.framePack[f]!;
    if (wanted.has(p)) {
      let list = starts.get(p);
      if (!list) starts.set(p, (list = []));
      list.push(f);
    }
  }
  return whole.map(({ pack }) => {
    const size = idx.packs[pack]!.size;
    const need = wanted.get(pack)!;
    const pieces: PackRange[] = [];
    let cur: PackRange = { pack, start: 0, end: 0, frames: [] };
    // frames of a pack are in offset order (the format guarantees it)
    for (const f of starts.get(pack) ?? []) {
      const off = idx.frameOffset[f]!;
      const end = off + idx.frameLength[f]!;
      if (end - cur.start > cap && off > cur.start) {
        cur.end = off;
        pieces.push(cur);
        cur = { pack, start: off, end: off, frames: [] };
      }
      if (need.has(f)) cur.frames.push(f);
    }
    cur.end = size;
    pieces.push(cur);
    return { pack, pieces, digest: new OrderedDigest(pieces.length) };
  });
}

/**
 * sha256 over pieces that arrive in any order, fed in order: a piece waits for its turn (the
 * pieces before it are already being fetched: they were started first). `abandon` releases every
 * waiter (the pack went to another path, or the pull failed), so nothing waits forever.
 */
export class OrderedDigest {
  private next = 0;
  private readonly hash = createHash('sha256');
  private readonly waiters = new Map<number, () => void>();
  abandoned = false;

  constructor(readonly count: number) {}

  /** Resolves when piece `i` may be fed; false when the run was abandoned. */
  async turn(i: number): Promise<boolean> {
    if (!this.abandoned && i !== this.next) await new Promise<void>((r) => this.waiters.set(i, r));
    return !this.abandoned;
  }

  /** Hashes piece `i` (its turn came); returns the digest after the last piece. */
  feed(i: number, data: Uint8Array): string | undefined {
    if (i !== this.next) throw new Error(`piece ${i} fed out of order (expected ${this.next})`);
    this.hash.update(data);
    this.next++;
    this.waiters.get(this.next)?.();
    this.waiters.delete(this.next);
    return this.next === this.count ? 'sha256:' + this.hash.digest('hex') : undefined;
  }

  abandon(): void {
    this.abandoned = true;
    for (const w of this.waiters.values()) w();
    this.waiters.clear();
  }
}
