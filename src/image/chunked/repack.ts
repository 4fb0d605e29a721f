import type { DiskIndex } from '../../formats/disk-index.js';

/**
 * Fragmentation policy (docs/chunked-format.md, "Fragmentation and repacking"). Every update adds
 * packs and leaves frames nobody references in older packs. Pulls are not affected (they fetch
 * referenced frames by Range, whatever pack holds them); what grows is storage and the layer
 * count. So a new version built on a base:
 *  - rewrites the live blocks of every base pack whose live share has fallen below half, so that
 *    pack stops being listed (its upload costs at most half a pack);
 *  - starts over with fresh packs when the base already lists more than LAYER_REPACK packs, so a
 *    manifest stays far below ECR's ~500 layers.
 * The live share is measured in the base's own index (bytes of the frames it references against
 * the pack's size): blocks that die in this update count at the next one.
 */
export const LAYER_REPACK = 400;
export const MIN_LIVE_SHARE = 0.5;

export interface RepackDecision {
  /** base pack numbers whose live blocks are compressed again into new packs */
  rewrite: Set<number>;
  /** every base block is compressed again (the base still saves hashing nothing) */
  full: boolean;
  /** one line for the log, or undefined when nothing is repacked */
  reason?: string;
}

export function decideRepack(base: DiskIndex, force = false): RepackDecision {
  if (force || base.packs.length > LAYER_REPACK) {
    return {
      rewrite: new Set(base.packs.map((_, i) => i)),
      full: true,
      reason: force
        ? 'repacking every block into fresh packs (--repack)'
        : `the base lists ${base.packs.length} packs (more than ${LAYER_REPACK}): repacking every block into fresh packs`,
    };
  }
  const live = new Float64Array(base.packs.length);
  for (let f = 0; f < base.frameCount; f++) live[base.framePack[f]!]! += base.frameLength[f]!;
  const rewrite = new Set<number>();
  for (let p = 0; p < base.packs.length; p++)
    if (live[p]! < MIN_LIVE_SHARE * base.packs[p]!.size) rewrite.add(p);
  if (!rewrite.size) return { rewrite, full: false };
  const share = [...rewrite].map((p) => `${Math.round((100 * live[p]!) / base.packs[p]!.size)}%`).join(', ');
  return {
    rewrite,
    full: false,
    reason: `rewriting the live blocks of ${rewrite.size} base pack(s) less than half live (${share})`,
  };
}

/** Whether a base block in frame `f` may be referenced as it is (its pack is kept). */
export function keepsFrame(base: DiskIndex, d: RepackDecision, f: number): boolean {
  return !d.full && !d.rewrite.has(base.framePack[f]!);
}
