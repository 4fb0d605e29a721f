import { hash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import zlib from 'node:zlib';
import { ZstdFrameDecoder } from '../formats/zstd-context.js';
import { zstdFrameHeader } from '../formats/zstd-frame.js';
import { RunWriter } from './run-writer.js';

/**
 * The work of a v2 pull that touches block bytes, run in worker threads (hash-worker.ts in
 * `blocks` mode) so decoding and hashing gigabytes never occupy the main thread:
 *
 *   frames  decode zstd frames (the spec's rules: declared size = blocks x block size, output
 *           capped, window bounded), check every needed slot's sha256 against its entry, and
 *           only then write the slot to every disk offset that uses it;
 *   base    read blocks of a local base disk, hash them, and write those that match the wanted
 *           digest to their destinations (same offset or moved content); report every digest
 *           read so the caller can find moved blocks.
 *
 * Zero blocks are never written (the output is sparse; a device is zeroed by the caller). The
 * last block is clipped to the disk size. Pure Node built-ins plus the zstd header reader.
 */
/**
 * A digest that owns its 32 bytes: a view into the index's digest table would make every message
 * to a worker copy the whole table (structured clone copies a view's entire buffer).
 */
export function ownDigest(idx: { digests: Buffer }, i: number): Uint8Array {
  return new Uint8Array(idx.digests.subarray(i * 32, i * 32 + 32));
}

export interface SlotWrite {
  slot: number;
  /** sha256 of the block (32 bytes) */
  digest: Uint8Array;
  /** disk offsets to write it to */
  offsets: number[];
}

export interface FrameJob {
  /** frame number, for the reply */
  f: number;
  /** where the frame starts in `data` */
  at: number;
  length: number;
  blocks: number;
  slots: SlotWrite[];
}

export interface BaseItem {
  /** offset of the block in the base */
  src: number;
  digest: Uint8Array;
  /** where to write it when it matches */
  dst: number[];
}

export type BlockOp =
  | { op: 'frames'; data: Uint8Array; frames: FrameJob[] }
  | { op: 'base'; path: string; size: number; items: BaseItem[]; write: boolean; collect: boolean };

export interface FramesReply {
  op: 'frames';
  /** frames that did not decode or verify (nothing of them was written) */
  bad: { f: number; why: string }[];
  /** blocks written */
  blocks: number;
}

export interface BaseReply {
  op: 'base';
  /** 1 where the base block matched (and was written when asked) */
  matched: Uint8Array;
  /** sha256 of every block read, 32 bytes each (when `collect`) */
  digests?: Uint8Array;
}

export type BlockReply = FramesReply | BaseReply;

export interface BlockWorkerData {
  mode: 'blocks';
  /** the output (`.partial` or a device) */
  out: string;
  /** disk size: the last block is clipped to it */
  size: number;
  blockSize: number;
  /** one Int32 in shared memory: the threads of one pull take turns writing the output */
  writeLock?: Int32Array;
}

/** verified blocks gathered for one turn of writing (per thread) */
const TURN_BYTES = 16 << 20;

const MAX_WINDOW_LOG = 23;
const MAX_WINDOW = 2 ** MAX_WINDOW_LOG;

/**
 * decodeFrame's rules (src/formats/disk-index-decode.ts), repeated because a worker thread run
 * from the sources (tests) cannot load disk-index.ts under Node's type stripping: the declared
 * content size must be blocks x block size, the window at most 8 MiB, the output capped.
 */
export function decodeFrameBytes(
  compressed: Uint8Array,
  blocks: number,
  blockSize: number,
  decoder?: ZstdFrameDecoder,
  into?: Buffer,
  at = 0,
): Buffer {
  const want = blocks * blockSize;
  const h = zstdFrameHeader(compressed);
  if (!h) throw new Error('is not a zstd frame');
  if (h.contentSize !== want)
    throw new Error(`declares ${h.contentSize ?? 'no'} bytes, the index says ${want}`);
  if (h.windowSize > MAX_WINDOW) throw new Error(`needs a ${h.windowSize}-byte window`);
  // the reused context; a frame it cannot decode whole is decoded again below for the error
  const fast = decoder?.decode(compressed, want, into, at);
  if (fast) return fast;
  let out: Buffer;
  try {
    // one output buffer of the declared size: no growing and joining of 16 KiB pieces
    out = zlib.zstdDecompressSync(compressed, { maxOutputLength: want, chunkSize: want });
  } catch (err) {
    throw new Error(`does not decompress: ${(err as Error).message}`);
  }
  if (out.length !== want) throw new Error(`decompressed to ${out.length} bytes, not ${want}`);
  return out;
}

export function createBlockOps(d: BlockWorkerData): { run(m: BlockOp): BlockReply; close(): void } {
  const bases = new Map<string, number>();
  const bs = d.blockSize;
  const decoder = new ZstdFrameDecoder(MAX_WINDOW_LOG);
  const writer = new RunWriter(d.out, d.size, d.writeLock);
  // verified blocks wait here for one turn of writing; a frame (at most 8 MiB, checked below) and
  // a block (at most 1 MiB, the index's rule) always fit
  const turn = Buffer.allocUnsafe(TURN_BYTES + 1);
  let used = 0;
  const endTurn = () => {
    writer.flush(turn);
    used = 0;
  };
  /** room for `n` more bytes and the decoder's spare byte: ends the turn when it is full */
  const room = (n: number) => {
    if (used + n + 1 > turn.length) endTurn();
  };

  const frames = (data: Uint8Array, jobs: FrameJob[]): BlockReply => {
    const bad: { f: number; why: string }[] = [];
    let blocks = 0;
    try {
      for (const j of jobs) {
        let raw: Buffer;
        const want = j.blocks * bs;
        try {
          if (j.at < 0 || j.at + j.length > data.length) throw new Error('lies outside the bytes received');
          // the index allows at most 1 MiB per frame; this thread cannot load its rules, so bound it here too
          if (!Number.isSafeInteger(want) || want <= 0 || want > MAX_WINDOW)
            throw new Error(`holds ${j.blocks} blocks`);
          room(want);
          raw = decodeFrameBytes(data.subarray(j.at, j.at + j.length), j.blocks, bs, decoder, turn, used);
        } catch (e) {
          bad.push({ f: j.f, why: (e as Error).message });
          continue;
        }
        // the one-shot fallback decodes elsewhere
        if (raw.buffer !== turn.buffer || raw.byteOffset !== turn.byteOffset + used) turn.set(raw, used);
        // every slot verified before any is queued: a bad frame leaves nothing behind
        let why: string | undefined;
        for (const s of j.slots) {
          const got = hash('sha256', turn.subarray(used + s.slot * bs, used + (s.slot + 1) * bs), 'buffer');
          if (!got.equals(s.digest)) {
            why = `block ${s.slot} has sha256 ${got.toString('hex').slice(0, 12)}, the index says ${Buffer.from(s.digest).toString('hex').slice(0, 12)}`;
            break;
          }
        }
        if (why) {
          bad.push({ f: j.f, why });
          continue;
        }
        for (const s of j.slots) {
          for (const o of s.offsets) writer.add(o, used + s.slot * bs, bs);
          blocks += s.offsets.length;
        }
        used += want;
      }
    } finally {
      endTurn();
    }
    return { op: 'frames', bad, blocks };
  };

  const base = (m: Extract<BlockOp, { op: 'base' }>): BlockReply => {
    let fd = bases.get(m.path);
    if (fd === undefined) bases.set(m.path, (fd = openSync(m.path, 'r')));
    const matched = new Uint8Array(m.items.length);
    const digests = m.collect ? new Uint8Array(32 * m.items.length) : undefined;
    try {
      m.items.forEach((it, i) => {
        room(bs);
        const block = turn.subarray(used, used + bs);
        block.fill(0);
        const n = Math.max(0, Math.min(bs, m.size - it.src));
        for (let got = 0; got < n;) {
          const r = readSync(fd, block, got, n - got, it.src + got);
          if (r === 0) break;
          got += r;
        }
        const h = hash('sha256', block, 'buffer');
        digests?.set(h, 32 * i);
        if (!h.equals(it.digest)) return;
        matched[i] = 1;
        if (!m.write) return;
        for (const o of it.dst) writer.add(o, used, bs);
        used += bs;
      });
    } finally {
      endTurn();
    }
    return { op: 'base', matched, ...(digests ? { digests } : {}) };
  };

  return {
    run: (m) => (m.op === 'frames' ? frames(m.data, m.frames) : base(m)),
    close: () => {
      writer.close();
      for (const fd of bases.values()) closeSync(fd);
      bases.clear();
    },
  };
}
