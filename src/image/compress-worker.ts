import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync, renameSync, writeFileSync } from 'node:fs';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort, threadId, workerData } from 'node:worker_threads';
import zlib from 'node:zlib';

/**
 * The compression/hash worker thread (started by workers.ts; bundled as dist/orb/compress-worker.js).
 * Tasks work on views of SharedArrayBuffer slots that the main thread filled, so disk bytes are
 * never copied between threads. Results that are new bytes (compressed data) are transferred.
 *
 *   chunk    zero check, sha256 of the bytes; if that digest is in `base`, stop (reuse); else
 *            zstd at `level` (one frame), sha256 of the frame, and write it as a blob into `blobs`
 *   frame    zero check, else one zstd frame (raw.zst is a sequence of frames)
 *   clusters per qcow2 cluster: -1 zero, n compressed bytes, -2 stored uncompressed (cluster
 *            bytes included), all packed in one buffer
 *   zeromap  one bit per `block` bytes: 1 = holds data (for sparse raw output)
 *   inflate  zstd-decompress a chunk blob into a slot and check its sha256
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
  blobs: string;
  clusterSize: number;
  codec: 'zlib' | 'zstd' | 'none';
  block: number;
  raw: boolean;
  data: Uint8Array;
  offset: number;
  digest: string;
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

function view(m: TaskMessage): Buffer {
  return Buffer.from(m.sab, m.off, m.len);
}

function sha256(b: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

/** Transferable only when the buffer owns its whole ArrayBuffer; otherwise copy. */
function asTransfer(b: Buffer): Uint8Array<ArrayBuffer> {
  if (b.byteOffset === 0 && b.buffer.byteLength === b.length && b.buffer instanceof ArrayBuffer)
    return new Uint8Array(b.buffer);
  const out = new Uint8Array(b.length);
  out.set(b);
  return out;
}

/** Content-addressed write: temp file, then rename (atomic; a concurrent equal write is harmless). */
function putBlob(dir: string, digest: string, bytes: Uint8Array): boolean {
  const path = `${dir}/${digest.slice(7)}`;
  if (existsSync(path)) return false;
  const tmp = `${path}.${process.pid}-${threadId}.partial`;
  writeFileSync(tmp, bytes);
  renameSync(tmp, path);
  return true;
}

function hashZeros(h: ReturnType<typeof createHash>, n: number): void {
  while (n > 0) {
    const k = Math.min(n, ZERO.length);
    h.update(k === ZERO.length ? ZERO : ZERO.subarray(0, k));
    n -= k;
  }
}

/** One task per worker at a time; `base` and the running hash are the thread's state. */
export function makeTasks(base: ReadonlySet<string>): Record<string, (m: TaskMessage) => Result> {
  let hash = createHash('sha256');
  return {
    chunk(m) {
      const buf = view(m);
      if (isZero(buf)) return { zero: true };
      const digest = sha256(buf);
      if (base.has(digest)) return { digest, reused: true };
      const z = zstd(buf, m.level);
      // the worker writes the blob itself: compressed bytes never travel to the main thread
      if (z.length >= buf.length)
        return {
          digest,
          raw: true,
          blobDigest: digest,
          size: buf.length,
          created: putBlob(m.blobs, digest, buf),
        };
      const blobDigest = sha256(z);
      return { digest, blobDigest, size: z.length, created: putBlob(m.blobs, blobDigest, z) };
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
      const data = new Uint8Array(total);
      let p = 0;
      for (const z of parts) {
        data.set(z, p);
        p += z.length;
      }
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
    inflate(m) {
      const out = view(m);
      let plain: Buffer;
      if (m.raw) plain = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
      else {
        try {
          plain = zlib.zstdDecompressSync(m.data, { maxOutputLength: Math.max(1, m.len) });
        } catch (err) {
          return {
            error: `chunk at offset ${m.offset} does not decompress: ${(err as Error).message}`,
            kind: 'integrity',
          };
        }
      }
      if (plain.length !== m.len)
        return {
          error: `chunk at offset ${m.offset} decompresses to ${plain.length} bytes, expected ${m.len}`,
          kind: 'integrity',
        };
      const digest = sha256(plain);
      if (digest !== m.digest)
        return {
          error: `chunk at offset ${m.offset} has digest ${digest}, expected ${m.digest}`,
          kind: 'integrity',
        };
      out.set(plain);
      return {};
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
  const tasks = makeTasks(new Set((workerData as { base?: string[] } | undefined)?.base ?? []));
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
