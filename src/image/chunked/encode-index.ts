import { copyFile, link, rename, rm, constants as fsc } from 'node:fs/promises';
import { OrbError } from '../../core/errors.js';
import { IndexBuilder, MAX_PACKS, type DiskIndex, type PackRef } from '../../formats/disk-index.js';
import type { OciLayout } from '../../oci/layout.js';
import type { BaseImage } from './image.js';

/** Base packs the new index references: where each is now, to link into the output layout. */
export type BaseRefs = { from: OciLayout | undefined; pack: PackRef }[];

export interface IndexParts {
  virtualSize: number;
  bases: readonly BaseImage[];
  newPacks: readonly PackRef[];
  /** new frames by number; `pack` counts new packs from 0 */
  frames: { count: number; pack: Uint32Array; offset: Float64Array; length: Uint32Array; blocks: Uint8Array };
  /** entries in disk order; `ref` is a new frame number, or `baseFlag` + a global base frame */
  entries: {
    count: number;
    block: Float64Array;
    ref: Uint32Array;
    slot: Uint8Array;
    digest(i: number): Uint8Array;
  };
  baseFlag: number;
  /** the content root fed while scanning; the index's own root must equal it */
  root: string;
}

/**
 * The new index: pack table = the bases' packs that some entry still references (base order,
 * a pack shared by two bases listed once) + the new packs; frame table = the referenced base
 * frames (by pack, then offset; frames nobody references are dropped) + the new frames.
 */
export function buildIndex(p: IndexParts): { index: DiskIndex; baseRefs: BaseRefs } {
  const b = new IndexBuilder(p.virtualSize);
  const firstFrame: number[] = [];
  let total = 0;
  for (const base of p.bases) {
    firstFrame.push(total);
    total += base.index.frameCount;
  }
  const used = new Uint8Array(total);
  for (let i = 0; i < p.entries.count; i++) {
    const r = p.entries.ref[i]!;
    if (r >= p.baseFlag) used[r - p.baseFlag] = 1;
  }
  // base packs still referenced, in base order
  const packOf = new Map<string, number>();
  const baseRefs: BaseRefs = [];
  const usedPack = p.bases.map((base) => new Uint8Array(base.index.packs.length));
  p.bases.forEach((base, k) => {
    for (let f = 0; f < base.index.frameCount; f++)
      if (used[firstFrame[k]! + f]) usedPack[k]![base.index.framePack[f]!] = 1;
    base.index.packs.forEach((pack, i) => {
      if (!usedPack[k]![i] || packOf.has(pack.digest)) return;
      packOf.set(pack.digest, b.addPack(pack));
      baseRefs.push({ from: base.layout, pack });
    });
  });
  // referenced base frames, deduplicated across bases, in (pack, offset) order
  const frameOf = new Int32Array(total).fill(-1);
  const byKey = new Map<string, number[]>();
  const order: { pack: number; offset: number; length: number; blocks: number; globals: number[] }[] = [];
  p.bases.forEach((base, k) => {
    const idx = base.index;
    for (let f = 0; f < idx.frameCount; f++) {
      const g = firstFrame[k]! + f;
      if (!used[g]) continue;
      const pack = packOf.get(idx.packs[idx.framePack[f]!]!.digest)!;
      const key = `${pack}:${idx.frameOffset[f]}`;
      const same = byKey.get(key);
      if (same) {
        same.push(g);
        continue;
      }
      const globals = [g];
      byKey.set(key, globals);
      order.push({
        pack,
        offset: idx.frameOffset[f]!,
        length: idx.frameLength[f]!,
        blocks: idx.frameBlocks[f]!,
        globals,
      });
    }
  });
  order.sort((x, y) => x.pack - y.pack || x.offset - y.offset);
  for (const fr of order) {
    const id = b.addFrame(fr.pack, fr.offset, fr.length, fr.blocks);
    for (const g of fr.globals) frameOf[g] = id;
  }
  const baseFrames = order.length;
  const firstNewPack = b.packs.length;
  if (firstNewPack + p.newPacks.length > MAX_PACKS)
    throw new OrbError(
      'input',
      `the image would list ${firstNewPack + p.newPacks.length} packs (${firstNewPack} kept from the base, ${p.newPacks.length} new); the format allows ${MAX_PACKS}`,
      { hint: 'convert with a larger --pack-size (or --repack to start over in fresh packs)' },
    );
  for (const pack of p.newPacks) b.addPack(pack);
  for (let f = 0; f < p.frames.count; f++)
    b.addFrame(
      firstNewPack + p.frames.pack[f]!,
      p.frames.offset[f]!,
      p.frames.length[f]!,
      p.frames.blocks[f]!,
    );
  for (let i = 0; i < p.entries.count; i++) {
    const r = p.entries.ref[i]!;
    const frame = r >= p.baseFlag ? frameOf[r - p.baseFlag]! : baseFrames + r;
    b.addEntry(p.entries.block[i]!, frame, p.entries.slot[i]!, p.entries.digest(i));
  }
  const index = b.finish();
  if (index.contentDigest !== p.root)
    throw new OrbError(
      'internal',
      `the index's content root ${index.contentDigest} is not the scan's ${p.root}`,
    );
  return { index, baseRefs };
}

/**
 * Hard-links (copies across file systems, reflink where possible) the base packs the new image
 * references into `layout`, so the layout stays self-contained. Returns the paths it created.
 */
export async function linkBasePacks(layout: OciLayout, refs: BaseRefs): Promise<string[]> {
  const created: string[] = [];
  for (const { from, pack } of refs) {
    // a published base's packs stay in its store (the manifest's ANN_BASE_* say which)
    if (!from) continue;
    if ((await layout.blobSize(pack.digest)) === pack.size) continue;
    const src = from.blobPath(pack.digest);
    if ((await from.blobSize(pack.digest)) !== pack.size)
      throw new OrbError(
        'input',
        `base pack ${pack.digest} is missing or has the wrong size in ${from.dir}`,
        {
          hint: 'the --base layout is incomplete; convert without --base or restore it',
        },
      );
    const dest = layout.blobPath(pack.digest);
    const tmp = `${dest}.${process.pid}.partial`;
    await rm(tmp, { force: true });
    await link(src, tmp).catch(() => copyFile(src, tmp, fsc.COPYFILE_FICLONE));
    await rename(tmp, dest);
    created.push(dest);
  }
  return created;
}
