import { createHash, hash as sha256Of } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import zlib from 'node:zlib';
import { ZstdFrameEncoder } from '../formats/zstd-context.js';
import { zstdFrameHeader } from '../formats/zstd-frame.js';

/**
 * The compression/hash worker thread (started by workers.ts; bundled as dist/orb/compress-worker.js).
 * Tasks work on views of SharedArrayBuffer slots that the main thread filled, so disk bytes are
 * never copied between threads. Results that are new bytes (compressed data) are transferred.
 *
 *   blocks   per 32 KiB block of the unit (the last one zero-padded): zero flag and sha256
 *            (chunked format v2: the main thread deduplicates by these digests)
 *   frames   zstd frames (content size in the header, no checksum) of runs of blocks of the
 *            unit, concatenated; the main thread appends them to a pack
 *   unframe  decode one frame of a pack (bounds of src/formats/disk-index-decode.ts) and hash
 *            each of its blocks; the main thread compares with the index and uses the bytes
 *   frame    zero check, else one zstd frame (raw.zst is a sequence of frames)
 *   clusters per qcow2 cluster: -1 zero, n compressed bytes, -2 stored uncompressed (cluster
 *            bytes included), all packed in one buffer
 *   zeromap  one bit per `block` bytes: 1 = holds data (for sparse raw output)
 *   hash     whole-disk sha256, fed in order (dedicated worker)
 *   hashFile whole-disk sha256 of a raw file read by the hash worker itself, a bounded distance
 *            ahead of the conversion (see Hasher.readAhead)
 */
export interface TaskMessage {
  id: number;
  task: string;
  sab: SharedArrayBuffer;
  off: number;
  len: number;
  level: number;
  clusterSize: number;
  codec: 'zlib' | 'zstd' | 'none';
  block: number;
  /** frames: [first block, block count] pairs, blocks counted from `off` */
  runs: Uint32Array;
  /** unframe: one compressed frame of `blocks` blocks of `block` bytes */
  data: Uint8Array;
  blocks: number;
  zeros: number;
  path: string;
  fileSize: number;
  size: number;
  ranges: [number, number][];
  progress: SharedArrayBuffer;
  lead: number;
}

type Result = Record<string, unknown> & { transfer?: ArrayBuffer[] };

const ZERO = Buffer.alloc(1 << 20);
const C = zlib.constants;

/** `parts` in one ArrayBuffer of their own, so it can be transferred back to the caller. */
function joined(parts: readonly Uint8Array[], total: number): Uint8Array<ArrayBuffer> {
  const data = new Uint8Array(total);
  let p = 0;
  for (const z of parts) {
    data.set(z, p);
    p += z.length;
  }
  return data;
}

export function isZero(buf: Buffer): boolean {
  for (let p = 0; p < buf.length; p += ZERO.length) {
    const n = Math.min(ZERO.length, buf.length - p);
    if (Buffer.compare(buf.subarray(p, p + n), n === ZERO.length ? ZERO : ZERO.subarray(0, n)) !== 0)
      return false;
  }
  return true;
}

function zstd(buf: Buffer, level: number): Buffer {
  return zlib.zstdCompressSync(buf, {
    params: { [C.ZSTD_c_compressionLevel]: level, [C.ZSTD_c_checksumFlag]: 0 },
    pledgedSrcSize: buf.length,
    // one output buffer for a cluster, few for a chunk: less garbage for the collector
    chunkSize: Math.min(4 << 20, buf.length + 1024),
  });
}

const sha256 = (b: Uint8Array): Buffer => sha256Of('sha256', b, 'buffer');

function view(m: TaskMessage): Buffer {
  return Buffer.from(m.sab, m.off, m.len);
}

/** Transferable only when the buffer owns its whole ArrayBuffer; otherwise copy. */
function asTransfer(b: Buffer): Uint8Array<ArrayBuffer> {
  if (b.byteOffset === 0 && b.buffer.byteLength === b.length && b.buffer instanceof ArrayBuffer)
    return new Uint8Array(b.buffer);
  const out = new Uint8Array(b.length);
  out.set(b);
  return out;
}

function hashZeros(h: ReturnType<typeof createHash>, n: number): void {
  while (n > 0) {
    const k = Math.min(n, ZERO.length);
    h.update(k === ZERO.length ? ZERO : ZERO.subarray(0, k));
    n -= k;
  }
}

/** Block `i` of a unit view, zero-padded to `bs` when the unit ends inside it (the disk's tail). */
function blockOf(buf: Buffer, i: number, bs: number): Buffer {
  const b = buf.subarray(i * bs, Math.min(buf.length, (i + 1) * bs));
  if (b.length === bs) return b;
  const pad = Buffer.alloc(bs);
  b.copy(pad);
  return pad;
}

/** One task per worker at a time; the running hash is the thread's state. */
export function makeTasks(): Record<string, (m: TaskMessage) => Result> {
  let hash = createHash('sha256');
  // one compression context per level and one output buffer, reused task after task
  const encoders: Record<number, ZstdFrameEncoder> = {};
  let scratch = Buffer.alloc(0);
  return {
    blocks(m) {
      const buf = view(m);
      const n = Math.ceil(buf.length / m.block);
      const zero = new Uint8Array(n);
      const digests = new Uint8Array(n * 32);
      for (let i = 0; i < n; i++) {
        const b = blockOf(buf, i, m.block);
        if (isZero(b)) zero[i] = 1;
        else digests.set(sha256(b), i * 32);
      }
      return { zero, digests, transfer: [zero.buffer, digests.buffer] };
    },
    frames(m) {
      const buf = view(m);
      const lengths = new Uint32Array(m.runs.length / 2);
      let room = 0;
      for (let r = 0; r < lengths.length; r++) room += ZstdFrameEncoder.bound(m.runs[2 * r + 1]! * m.block);
      if (scratch.length < room) scratch = Buffer.allocUnsafe(room);
      const enc = (encoders[m.level] ??= new ZstdFrameEncoder(m.level));
      let total = 0;
      for (let r = 0; r < lengths.length; r++) {
        const first = m.runs[2 * r]!;
        const count = m.runs[2 * r + 1]!;
        const end = (first + count) * m.block;
        let plain = buf.subarray(first * m.block, Math.min(buf.length, end));
        if (plain.length < count * m.block) {
          const pad = Buffer.alloc(count * m.block);
          plain.copy(pad);
          plain = pad;
        }
        // frames go one after another into the thread's scratch buffer, the task's result is
        // one exact copy of them
        let n = enc.encode(plain, scratch, total);
        if (n === undefined) {
          const z = zstd(plain, m.level);
          scratch.set(z, total);
          n = z.length;
        }
        lengths[r] = n;
        total += n;
      }
      const data = new Uint8Array(total);
      data.set(scratch.subarray(0, total));
      return { lengths, data, transfer: [lengths.buffer, data.buffer] };
    },
    unframe(m) {
      // The bounds of decodeFrame (src/formats/disk-index-decode.ts, not imported: its module
      // does not load in a test's type-stripped worker); on any failure the main thread decodes
      // the frame again with decodeFrame to raise the reader's own error.
      const want = m.blocks * m.block;
      const h = zstdFrameHeader(m.data);
      if (!h || h.contentSize !== want || h.windowSize > 8 << 20) return { bad: 'frame header' };
      let plain: Buffer;
      try {
        plain = zlib.zstdDecompressSync(m.data, { maxOutputLength: want });
      } catch (err) {
        return { bad: (err as Error).message };
      }
      if (plain.length !== want) return { bad: `decompressed to ${plain.length} bytes` };
      const digests = new Uint8Array(m.blocks * 32);
      for (let i = 0; i < m.blocks; i++)
        digests.set(sha256(plain.subarray(i * m.block, (i + 1) * m.block)), i * 32);
      const data = asTransfer(plain);
      return { data, digests, transfer: [data.buffer, digests.buffer] };
    },
    frame(m) {
      const buf = view(m);
      if (isZero(buf)) return { zero: true };
      const data = asTransfer(zstd(buf, m.level));
      return { data, transfer: [data.buffer] };
    },
    clusters(m) {
      const buf = view(m);
      const cs = m.clusterSize;
      const n = Math.ceil(buf.length / cs);
      const sizes = new Int32Array(n);
      const parts: Buffer[] = [];
      let total = 0;
      for (let i = 0; i < n; i++) {
        let c = buf.subarray(i * cs, Math.min(buf.length, (i + 1) * cs));
        if (isZero(c)) {
          sizes[i] = -1;
          continue;
        }
        if (c.length < cs) {
          const pad = Buffer.alloc(cs);
          c.copy(pad);
          c = pad;
        }
        // -2: stored uncompressed; its bytes are copied into the result so the slot is free at once
        const z =
          m.codec === 'none'
            ? undefined
            : m.codec === 'zlib'
              ? zlib.deflateRawSync(c, { level: m.level, windowBits: 12, memLevel: 9 })
              : zstd(c, m.level);
        if (!z || z.length >= cs) {
          sizes[i] = -2;
          parts.push(Buffer.from(c));
          total += cs;
          continue;
        }
        sizes[i] = z.length;
        parts.push(z);
        total += z.length;
      }
      const data = joined(parts, total);
      return { sizes, data, transfer: [sizes.buffer, data.buffer] };
    },
    zeromap(m) {
      const buf = view(m);
      const n = Math.ceil(buf.length / m.block);
      const bits = new Uint8Array(n);
      for (let i = 0; i < n; i++)
        bits[i] = isZero(buf.subarray(i * m.block, Math.min(buf.length, (i + 1) * m.block))) ? 0 : 1;
      return { bits, transfer: [bits.buffer] };
    },
    hash(m) {
      if (m.zeros) hashZeros(hash, m.zeros);
      else hash.update(view(m));
      return {};
    },
    hashFile: hashFile,
    digest() {
      const hex = hash.digest('hex');
      hash = createHash('sha256');
      return { hex };
    },
  };
}

function hashFile(m: TaskMessage): Result {
  const h = createHash('sha256');
  const scanned = new BigInt64Array(m.progress);
  const buf = Buffer.allocUnsafe(4 << 20);
  // data bytes before offset x (holes cost no reading, so the lead counts data only)
  const before = [0];
  for (const [a, b] of m.ranges) before.push(before[before.length - 1]! + (b - a));
  const dataBefore = (x: number): number => {
    let lo = 0;
    let hi = m.ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (m.ranges[mid]![1] <= x) lo = mid + 1;
      else hi = mid;
    }
    return before[lo]! + (lo < m.ranges.length ? Math.max(0, x - m.ranges[lo]![0]) : 0);
  };
  let fd: number | undefined;
  try {
    fd = openSync(m.path, 'r');
    let pos = 0;
    for (const [a, b] of m.ranges) {
      hashZeros(h, a - pos);
      for (let p = a; p < b;) {
        // stay within m.lead bytes of data of the conversion's reads: what we read is still in
        // the page cache when the conversion reads it
        const mine = dataBefore(p);
        for (
          let seen = Atomics.load(scanned, 0);
          mine - dataBefore(Number(seen)) > m.lead;
          seen = Atomics.load(scanned, 0)
        ) {
          Atomics.wait(scanned, 0, seen, 200);
        }
        const want = Math.min(buf.length, b - p);
        // QEMU rounds a raw disk up to 512 bytes and reads the rest as zeros
        const inFile = Math.max(0, Math.min(want, m.fileSize - p));
        for (let got = 0; got < inFile;) {
          const n = readSync(fd, buf, got, inFile - got, p + got);
          if (n === 0)
            throw new Error(
              `${m.path} ended at ${p + got} bytes while reading; was it truncated during the conversion?`,
            );
          got += n;
        }
        if (want > inFile) buf.fill(0, inFile, want);
        h.update(buf.subarray(0, want));
        p += want;
      }
      pos = b;
    }
    hashZeros(h, m.size - pos);
  } catch (err) {
    return { error: String((err as Error)?.message ?? err), kind: 'input' };
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return { hex: h.digest('hex') };
}

/**
 * Compressed outputs live outside the V8 heap, which stays tiny, so V8 collects them late and
 * dead buffers pile up (measured: ~100 MB per thread). A full collection once 32 MiB of them are
 * outside the heap costs ~5% CPU on qcow2 (at 8 MiB: 15%; at 64 MiB: 3% but +80 MiB RSS).
 * (V8 flags are process-wide: once set, later threads already have a global gc.)
 */
function collector(): () => void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === 'function') return g;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

// Only in a thread workers.ts started (not when a test imports this file).
if (parentPort && (workerData as { role?: string } | undefined)?.role === 'orb-compress') {
  const port = parentPort;
  const collect = collector();
  const tasks = makeTasks();
  port.on('message', (m: TaskMessage) => {
    let res: Result;
    try {
      const task = tasks[m.task];
      if (!task) throw new Error(`unknown task ${m.task}`);
      res = task(m);
    } catch (err) {
      res = { error: String((err as Error)?.message ?? err), kind: 'internal' };
    }
    const transfer = res.transfer ?? [];
    delete res.transfer;
    res.id = m.id;
    port.postMessage(res, transfer);
    // collect only when compressed outputs have piled up (a full collection costs ~1 ms)
    if (m.task !== 'hash' && m.task !== 'hashFile' && getHeapStatistics().external_memory > 32 * 1024 * 1024)
      collect();
  });
}
