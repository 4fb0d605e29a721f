import { open } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatBytes, type Progress } from '../core/progress.js';
import type { RetryPolicy } from '../net/retry.js';
import { entryDigest, type DiskIndex } from '../formats/disk-index.js';
import type { Descriptor } from '../formats/oci-media.js';
import type { BlobStore } from '../stores/store.js';
import type { BaseReply, FrameJob, FramesReply } from './block-ops.js';
import type { BlockPool } from './block-pool.js';
import { DigestLookup } from './digest-lookup.js';
import { RangeIgnored, readRange } from './range-read.js';
import type { Base } from './pull-base.js';
import type { Journal } from './pull-journal.js';
import { planFetches, type PackRange } from './pull-ranges.js';
import { ByteBudget, runPool } from './pool.js';
import { fetchWholePack } from './pull-pack.js';

/**
 * The v2 disk pull (docs/chunked-format-v2.md, "Pull planning"): which blocks are needed (all,
 * minus what the journal says an earlier run wrote, minus what a base provides), which frames
 * hold them, which byte ranges of which packs to ask for; then the requests in parallel, frames
 * decoded and every block checked against its sha256 by worker threads before it is written.
 * The content identity is the index's root, proven block by block: no pass over the output.
 */
export interface DiskPullContext {
  store: BlobStore;
  display: string;
  index: DiskIndex;
  packs: Descriptor[];
  pool: BlockPool;
  journal: Journal;
  base?: Base | undefined;
  /** the base is the output device itself: blocks found in place are not written again */
  inPlace: boolean;
  concurrency: number;
  retry: RetryPolicy;
  log: Logger;
  progress(label: string, total?: number): Progress;
  signal?: AbortSignal | undefined;
  memoryBudget: number;
}

export interface DiskPullStats {
  bytesDownloaded: number;
  bytesReused: number;
  bytesResumed: number;
  blocks: number;
  blocksDownloaded: number;
  blocksReused: number;
  frames: number;
  ranges: number;
  wholePacks: number;
}

const BASE_BATCH = 512;

export async function pullDisk(c: DiskPullContext): Promise<DiskPullStats> {
  const idx = c.index;
  const bs = idx.blockSize;
  const st: DiskPullStats = {
    bytesDownloaded: 0,
    bytesReused: 0,
    bytesResumed: 0,
    blocks: idx.entryCount,
    blocksDownloaded: 0,
    blocksReused: 0,
    frames: 0,
    ranges: 0,
    wholePacks: 0,
  };
  // 1. What is already there: frames an earlier run finished (every entry using them was written).
  const done = new Uint8Array(idx.entryCount);
  if (c.journal.frames.size) {
    let n = 0;
    for (let i = 0; i < idx.entryCount; i++)
      if (c.journal.frames.has(idx.entryFrame[i]!)) {
        done[i] = 1;
        n++;
      }
    st.bytesResumed = n * bs;
    if (n) c.log.info(`resuming: ${n} blocks (${formatBytes(n * bs)}) already in place from an earlier run`);
  }

  // 2. What the base provides, verified block by block.
  if (c.base) {
    const reused = await fromBase(c, done);
    st.blocksReused = reused;
    st.bytesReused = reused * bs;
  }

  // 3. Needed blocks -> frames -> ranges.
  const need = new Uint8Array(idx.frameCount);
  for (let i = 0; i < idx.entryCount; i++) if (!done[i]) need[idx.entryFrame[i]!] = 1;
  const users = frameUsers(idx, done);
  const plan = planFetches(idx, need);
  const progress = c.progress('downloading', plan.bytes);
  let unreported = 0;
  const onBytes = (n: number) => {
    st.bytesDownloaded += n;
    unreported += n;
    if (unreported >= 1 << 20) {
      progress.add(unreported);
      unreported = 0;
    }
  };
  const jobsOf = (frames: number[], base: number): FrameJob[] =>
    frames.map((f) => ({
      f,
      at: idx.frameOffset[f]! - base,
      length: idx.frameLength[f]!,
      blocks: idx.frameBlocks[f]!,
      slots: users.slots(f),
    }));
  const finished = (frames: number[], blocks: number) => {
    c.journal.framesDone(frames);
    st.frames += frames.length;
    st.blocksDownloaded += blocks;
  };
  /** A frame that failed to decode or verify: fetched alone once more, then an integrity error. */
  const retryFrame = async (f: number, why: string) => {
    const pack = c.packs[idx.framePack[f]!]!;
    const where = `frame ${f} of pack ${pack.digest} at byte ${idx.frameOffset[f]} (${idx.frameLength[f]} bytes)`;
    c.log.warn(`${c.display}: ${where} ${why}; fetching it again`);
    const data = await readRange(c.store, pack, idx.frameOffset[f]!, idx.frameLength[f]!, {
      signal: c.signal,
      retry: c.retry,
      log: c.log,
      onBytes,
    });
    let again = why;
    if (!(data instanceof RangeIgnored)) {
      const r = await c.pool.run<FramesReply>({
        op: 'frames',
        data,
        frames: jobsOf([f], idx.frameOffset[f]!),
      });
      if (!r.bad.length) return finished([f], r.blocks);
      again = r.bad[0]!.why;
    }
    throw new OrbError('integrity', `${c.display}: ${where} ${again}, twice`, {
      hint: 'the pack is corrupt in the store or on the way; nothing of that frame was written',
    });
  };
  const decode = async (data: Buffer, frames: number[], base: number) => {
    const r = await c.pool.run<FramesReply>({
      op: 'frames',
      data,
      frames: jobsOf(frames, base),
    });
    const bad = new Set(r.bad.map((b) => b.f));
    finished(
      frames.filter((f) => !bad.has(f)),
      r.blocks,
    );
    for (const b of r.bad) await retryFrame(b.f, b.why);
  };

  const budget = new ByteBudget(c.memoryBudget);
  let ignored = false;
  const fallback = new Map<number, number[]>();
  const toWhole = (r: PackRange) => {
    const list = fallback.get(r.pack) ?? [];
    list.push(...r.frames);
    fallback.set(r.pack, list);
  };
  type Task = { range: PackRange } | { pack: number; frames: number[] };
  const tasks: Task[] = [...plan.whole.map((w) => ({ pack: w.pack, frames: w.frames })), ...plan.ranges.map((range) => ({ range }))];
  const whole = async (pack: number, frames: number[]) => {
    st.wholePacks++;
    await fetchWholePack({
      store: c.store,
      desc: c.packs[pack]!,
      index: idx,
      frames,
      decode,
      budget,
      retry: c.retry,
      log: c.log,
      signal: c.signal,
      onBytes,
    });
  };
  await runPool(
    tasks,
    c.concurrency,
    async (t) => {
      if ('pack' in t) return whole(t.pack, t.frames);
      const r = t.range;
      if (ignored) return toWhole(r);
      const len = r.end - r.start;
      await budget.acquire(len);
      try {
        const data = await readRange(c.store, c.packs[r.pack]!, r.start, len, {
          signal: c.signal,
          retry: c.retry,
          log: c.log,
          onBytes,
        });
        if (data instanceof RangeIgnored) {
          if (!ignored)
            c.log.info(
              `${c.store.describe()} ignores HTTP Range requests (${data.why}): fetching whole packs instead, each checked against its digest`,
            );
          ignored = true;
          return toWhole(r);
        }
        st.ranges++;
        await decode(data, r.frames, r.start);
      } finally {
        budget.release(len);
      }
    },
    c.signal,
  );
  // packs of a store that ignores Range: once each, whatever the ranges were
  await runPool(
    [...fallback.entries()],
    c.concurrency,
    ([pack, frames]) => whole(pack, frames.sort((a, b) => a - b)),
    c.signal,
  );
  progress.add(unreported);
  progress.done();
  return st;
}

/** For every frame: the slots still needed and the disk offsets each one goes to. */
function frameUsers(idx: DiskIndex, done: Uint8Array): { slots(f: number): FrameJob['slots'] } {
  // compressed sparse rows: entries grouped by frame, without an object per entry
  const start = new Uint32Array(idx.frameCount + 1);
  for (let i = 0; i < idx.entryCount; i++) if (!done[i]) start[idx.entryFrame[i]! + 1]!++;
  for (let f = 0; f < idx.frameCount; f++) start[f + 1]! += start[f]!;
  const fill = start.slice(0, idx.frameCount);
  const rows = new Uint32Array(start[idx.frameCount]!);
  for (let i = 0; i < idx.entryCount; i++) if (!done[i]) rows[fill[idx.entryFrame[i]!]!++] = i;
  return {
    slots(f) {
      const bySlot = new Map<number, FrameJob['slots'][number]>();
      for (let k = start[f]!; k < start[f + 1]!; k++) {
        const i = rows[k]!;
        const slot = idx.entrySlot[i]!;
        const s = bySlot.get(slot);
        const offset = idx.entryBlock[i]! * idx.blockSize;
        if (s) s.offsets.push(offset);
        else bySlot.set(slot, { slot, digest: entryDigest(idx, i), offsets: [offset] });
      }
      return [...bySlot.values()];
    },
  };
}

/**
 * Blocks from the base. A disk: the block at the same offset, read and hashed by the workers
 * (written when it matches); then blocks the base holds at another offset (moved content,
 * found among the digests just read) copied the same way. A v2 layout: blocks found by digest
 * in its index, decoded from its packs and verified like downloaded frames.
 */
async function fromBase(c: DiskPullContext, done: Uint8Array): Promise<number> {
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
          items: batch.map((i) => ({ src: idx.entryBlock[i]! * bs, digest: entryDigest(idx, i), dst: [idx.entryBlock[i]! * bs] })),
          write: !c.inPlace,
          collect: true,
        });
        batch.forEach((i, k) => {
          if (!r.matched[k]) return;
          done[i] = 1;
          reused++;
        });
        // every block read (matching or not) may be the source of moved content elsewhere
        if (r.digests) seenParts.push({ offsets: batch.map((i) => idx.entryBlock[i]! * bs), digests: r.digests });
        progress.add(batch.length * bs);
      },
      c.signal,
    );
    // moved content: a needed block whose digest the base holds elsewhere (among those read)
    const offsets = seenParts.flatMap((p) => p.offsets);
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
          items: batch.map(({ i, src }) => ({ src, digest: entryDigest(idx, i), dst: [idx.entryBlock[i]! * bs] })),
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
      if (moved.length) c.log.info(`${moved.length} blocks found at other offsets of ${b.describe} (moved content)`);
    }
  } else {
    // qcow2 and others through qemu-nbd: read here, hashed on the thread pool, written here
    const { createHash } = await import('node:crypto');
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
        else slots.set(slot, { slot, digest: entryDigest(idx, i), offsets: [off] });
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
