import type { DiskIndex } from '../formats/disk-index.js';

/**
 * Needed frames -> what to ask the store for (docs/chunked-format.md, "Pull planning"): frames of
 * one pack closer than `gap` bytes share a request (reading the gap costs less than a round trip),
 * a merged range stops growing at `cap` (work spreads over the parallel connections and a retry
 * repeats little), and a pack whose needed bytes are at least `whole` of it is fetched whole, in
 * one stream checked against its digest (pull-pack.ts).
 */
export interface PackRange {
  pack: number;
  start: number;
  end: number;
  /** frames inside [start, end), in offset order */
  frames: number[];
}

export interface FetchPlan {
  ranges: PackRange[];
  /** packs fetched whole, with the frames needed from each */
  whole: { pack: number; frames: number[] }[];
  /** bytes on the wire: ranges (gaps included) plus whole packs */
  bytes: number;
}

export interface RangeOptions {
  gap?: number;
  cap?: number;
  whole?: number;
}

export const RANGE_GAP = 256 << 10;
// Measured on an 860 MB pack from a registry on loopback (2 cores): 8 MiB ranges, 4 at a time,
// at about 400 MB peak RSS; 32 MiB ranges went past 540 MB.
export const RANGE_CAP = 8 << 20;
export const WHOLE_PACK_SHARE = 0.75;

export function planFetches(idx: DiskIndex, need: Uint8Array, o: RangeOptions = {}): FetchPlan {
  const gap = o.gap ?? RANGE_GAP;
  const cap = o.cap ?? RANGE_CAP;
  const share = o.whole ?? WHOLE_PACK_SHARE;
  const byPack: number[][] = idx.packs.map(() => []);
  // frames of a pack are listed in offset order (the format guarantees it)
  for (let f = 0; f < idx.frameCount; f++) if (need[f]) byPack[idx.framePack[f]!]!.push(f);
  const plan: FetchPlan = { ranges: [], whole: [], bytes: 0 };
  byPack.forEach((frames, pack) => {
    if (!frames.length) return;
    const size = idx.packs[pack]!.size;
    let needed = 0;
    for (const f of frames) needed += idx.frameLength[f]!;
    if (needed >= share * size) {
      plan.whole.push({ pack, frames });
      plan.bytes += size;
      return;
    }
    let cur: PackRange | undefined;
    for (const f of frames) {
      const start = idx.frameOffset[f]!;
      const end = start + idx.frameLength[f]!;
      if (cur && start - cur.end < gap && end - cur.start <= cap) {
        cur.end = end;
        cur.frames.push(f);
        continue;
      }
      if (cur) plan.ranges.push(cur);
      cur = { pack, start, end, frames: [f] };
    }
    if (cur) plan.ranges.push(cur);
  });
  for (const r of plan.ranges) plan.bytes += r.end - r.start;
  return plan;
}
