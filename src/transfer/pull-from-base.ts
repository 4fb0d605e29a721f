import { createHash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { mapImage } from '../image/extents.js';
import { formatBytes } from '../core/progress.js';
import { entryDigest } from '../formats/disk-index.js';
import { ownDigest, type BaseReply, type FrameJob, type FramesReply } from './block-ops.js';
import { DigestLookup } from './digest-lookup.js';
import type { Base } from './pull-base.js';
import type { DiskPullContext } from './pull-disk-context.js';
import { runPool } from './pool.js';

const BASE_BATCH = 512;

/**
 * Blocks from the base. A disk: the block at the same offset, read and hashed by the workers
 * (written when it matches); then blocks the base holds at another offset (moved content,
 * found among the digests just read) copied the same way. A v2 layout: blocks found by digest
 * in its index, decoded from its packs and verified like downloaded frames.
 */
export async function fromBase(c: DiskPullContext, done: Uint8Array): Promise<number> {
  const idx = c.index;
  const b = c.base!;
  const bs = idx.blockSize;
  const todo: number[] = [];
  for (let i = 0; i < idx.entryCount; i++) if (!done[i]) todo.push(i);
  const progress = c.progress(`reusing from ${b.describe}`, todo.length * bs);
  let reused = 0;
  if (b.kind === 'layout') reused = await fromLayout(c, b, todo, done);
  else if (b.kind === 'raw') {
    // same offset first; the digests of the blocks that differ find moved content
    const batches: number[][] = [];
    for (let k = 0; k < todo.length; k += BASE_BATCH) batches.push(todo.slice(k, k + BASE_BATCH));
    const seenParts: { offsets: number[]; digests: Uint8Array }[] = [];
    await runPool(
      batches,
      4,
      async (batch) => {
        const r = await c.pool.run<BaseReply>({
          op: 'base',
          path: b.path,
          size: b.size,
          items: batch.map((i) => ({
            src: idx.entryBlock[i]! * bs,
            digest: ownDigest(idx, i),
            dst: [idx.entryBlock[i]! * bs],
          })),
          write: !c.inPlace,
          collect: true,
        });
        batch.forEach((i, k) => {
          if (!r.matched[k]) return;
          done[i] = 1;
          reused++;
        });
        // every block read (matching or not) may be the source of moved content elsewhere
        if (r.digests)
          seenParts.push({ offsets: batch.map((i) => idx.entryBlock[i]! * bs), digests: r.digests });
        progress.add(batch.length * bs);
      },
      c.signal,
    );
    // The base's data where the new disk has none (content moved away from there): read only
    // when blocks are still needed, and only the base's data extents (holes cost nothing).
    if (!c.inPlace && todo.some((i) => !done[i])) seenParts.push(...(await elsewhere(c, b)));
    // moved content: a needed block whose digest the base holds elsewhere (among those read).
    // Not when the base is the output device itself: a copy could overwrite the source of another.
    const offsets = c.inPlace ? [] : seenParts.flatMap((p) => p.offsets);
    if (offsets.length) {
      const lookup = new DigestLookup(Buffer.concat(seenParts.map((p) => p.digests)), offsets.length);
      const moved: { i: number; src: number }[] = [];
      for (let i = 0; i < idx.entryCount; i++) {
        if (done[i]) continue;
        const k = lookup.find(entryDigest(idx, i));
        if (k >= 0) moved.push({ i, src: offsets[k]! });
      }
      for (let k = 0; k < moved.length; k += BASE_BATCH) {
        const batch = moved.slice(k, k + BASE_BATCH);
        const r = await c.pool.run<BaseReply>({
          op: 'base',
          path: b.path,
          size: b.size,
          items: batch.map(({ i, src }) => ({
            src,
            digest: ownDigest(idx, i),
            dst: [idx.entryBlock[i]! * bs],
          })),
          write: true,
          collect: false,
        });
        batch.forEach(({ i }, j) => {
          if (r.matched[j]) {
            done[i] = 1;
            reused++;
          }
        });
      }
      if (moved.length)
        c.log.info(`${moved.length} blocks found at other offsets of ${b.describe} (moved content)`);
    }
  } else {
    // qcow2 and others through qemu-nbd: read here, hashed on the thread pool, written here
    const fh = await open(c.pool.outPath, 'r+');
    try {
      const buf = Buffer.alloc(bs);
      for (const i of todo) {
        const off = idx.entryBlock[i]! * bs;
        const n = Math.min(bs, b.reader.virtualSize - off);
        if (n <= 0 || !b.reader.extents.within(off, off + n).length) continue;
        buf.fill(0);
        await b.reader.read(off, buf.subarray(0, n));
        if (!createHash('sha256').update(buf).digest().equals(entryDigest(idx, i))) continue;
        await fh.write(buf, 0, Math.min(bs, idx.virtualSize - off), off);
        done[i] = 1;
        reused++;
      }
    } finally {
      await fh.close();
    }
  }
  progress.done(`reused ${formatBytes(reused * bs)} (${reused} blocks) from ${b.describe}`);
  return reused;
}

async function fromLayout(
  c: DiskPullContext,
  b: Extract<Base, { kind: 'layout' }>,
  todo: number[],
  done: Uint8Array,
): Promise<number> {
  const idx = c.index;
  const bi = b.index;
  // base frame -> the new entries it provides
  const byFrame = new Map<number, { slot: number; i: number }[]>();
  for (const i of todo) {
    const k = b.lookup.find(entryDigest(idx, i));
    if (k < 0) continue;
    const f = bi.entryFrame[k]!;
    const list = byFrame.get(f) ?? [];
    list.push({ slot: bi.entrySlot[k]!, i });
    byFrame.set(f, list);
  }
  let reused = 0;
  await runPool(
    [...byFrame.entries()],
    4,
    async ([f, list]) => {
      const pack = bi.packs[bi.framePack[f]!]!;
      let data: Buffer;
      try {
        const fh = await open(b.store.layout.blobPath(pack.digest), 'r');
        try {
          data = Buffer.alloc(bi.frameLength[f]!);
          const { bytesRead } = await fh.read(data, 0, data.length, bi.frameOffset[f]!);
          if (bytesRead !== data.length) return; // a short base pack: download instead
        } finally {
          await fh.close();
        }
      } catch {
        return; // missing in the base: download instead
      }
      const slots = new Map<number, FrameJob['slots'][number]>();
      for (const { slot, i } of list) {
        const s = slots.get(slot);
        const off = idx.entryBlock[i]! * idx.blockSize;
        if (s) s.offsets.push(off);
        else slots.set(slot, { slot, digest: ownDigest(idx, i), offsets: [off] });
      }
      const r = await c.pool.run<FramesReply>({
        op: 'frames',
        data,
        frames: [{ f, at: 0, length: data.length, blocks: bi.frameBlocks[f]!, slots: [...slots.values()] }],
      });
      if (r.bad.length) return; // a damaged base frame: those blocks are downloaded
      for (const { i } of list) done[i] = 1;
      reused += list.length;
    },
    c.signal,
  );
  return reused;
}

/**
 * Digests of the base's data blocks at offsets the first pass did not read (where the new disk
 * is zero), found through the base's allocation map (qemu-img map: SEEK_DATA/SEEK_HOLE), so a
 * mostly empty base costs its data, not its size. A base whose map cannot be read is skipped.
 */
async function elsewhere(
  c: DiskPullContext,
  b: Extract<Base, { kind: 'raw' }>,
): Promise<{ offsets: number[]; digests: Uint8Array }[]> {
  const bs = c.index.blockSize;
  let extents: [number, number][];
  try {
    if (!(await stat(b.path)).isFile()) return [];
    extents = (await mapImage({ path: b.path, format: 'raw' }, b.size, c.signal)).within(0, b.size);
  } catch {
    return [];
  }
  // the first pass read the base at every entry's offset: skip those (entries are in block order)
  const eb = c.index.entryBlock;
  const isEntry = (blk: number) => {
    let lo = 0;
    let hi = c.index.entryCount;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (eb[mid]! < blk) lo = mid + 1;
      else hi = mid;
    }
    return lo < c.index.entryCount && eb[lo] === blk;
  };
  const offsets: number[] = [];
  for (const [s, e] of extents)
    for (let o = Math.floor(s / bs) * bs; o < e; o += bs) if (!isEntry(o / bs)) offsets.push(o);
  const out: { offsets: number[]; digests: Uint8Array }[] = [];
  const none = new Uint8Array(32); // matches no block: the op only hashes
  for (let k = 0; k < offsets.length; k += BASE_BATCH) {
    const batch = offsets.slice(k, k + BASE_BATCH);
    const r = await c.pool.run<BaseReply>({
      op: 'base',
      path: b.path,
      size: b.size,
      items: batch.map((src) => ({ src, digest: none, dst: [] })),
      write: false,
      collect: true,
    });
    if (r.digests) out.push({ offsets: batch, digests: r.digests });
  }
  return out;
}
