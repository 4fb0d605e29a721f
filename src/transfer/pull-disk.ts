import { OrbError } from '../core/errors.js';
import { formatBytes } from '../core/progress.js';
import type { DiskIndex } from '../formats/disk-index.js';
import { ownDigest, type FrameJob, type FramesReply } from './block-ops.js';
import { RangeIgnored, readRange } from './range-read.js';
import { fromBase } from './pull-from-base.js';
import { planFetches, type PackRange } from './pull-ranges.js';
import { ByteBudget, runPool } from './pool.js';
import { fetchWholePack } from './pull-pack.js';
import type { DiskPullContext } from './pull-disk-context.js';

/**
 * The v2 disk pull (docs/chunked-format.md, "Pull planning"): which blocks are needed (all,
 * minus what the journal says an earlier run wrote, minus what a base provides), which frames
 * hold them, which byte ranges of which packs to ask for; then the requests in parallel, frames
 * decoded and every block checked against its sha256 by worker threads before it is written.
 * The content identity is the index's root, proven block by block: no pass over the output.
 */
export type { DiskPullContext } from './pull-disk-context.js';

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
    // a store without Range cannot send the frame alone: the pack's own fetch was the only try
    let again = `${why} (the store does not serve byte ranges, so it was not fetched again)`;
    if (!(data instanceof RangeIgnored)) {
      const r = await c.pool.run<FramesReply>({
        op: 'frames',
        data,
        frames: jobsOf([f], idx.frameOffset[f]!),
      });
      if (!r.bad.length) return finished([f], r.blocks);
      again = `${r.bad[0]!.why}, twice`;
    }
    throw new OrbError('integrity', `${c.display}: ${where} ${again}`, {
      hint: 'the pack is corrupt in the store or on the way; nothing of that frame was written',
    });
  };
  /** `give`: the caller owns `data` and does not use it again (it moves to a worker thread). */
  const decode = async (data: Buffer, frames: number[], base: number, give = false) => {
    const r = await c.pool.run<FramesReply>(
      {
        op: 'frames',
        data,
        frames: jobsOf(frames, base),
      },
      give,
    );
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
  const tasks: Task[] = [
    ...plan.whole.map((w) => ({ pack: w.pack, frames: w.frames })),
    ...plan.ranges.map((range) => ({ range })),
  ];
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
      const hold = Math.min(len, budget.capacity);
      await budget.acquire(hold);
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
        await decode(data, r.frames, r.start, true);
      } finally {
        budget.release(hold);
      }
    },
    c.signal,
  );
  // packs of a store that ignores Range: once each, whatever the ranges were
  await runPool(
    [...fallback.entries()],
    c.concurrency,
    ([pack, frames]) =>
      whole(
        pack,
        frames.sort((a, b) => a - b),
      ),
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
        else bySlot.set(slot, { slot, digest: ownDigest(idx, i), offsets: [offset] });
      }
      return [...bySlot.values()];
    },
  };
}
