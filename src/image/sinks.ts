import { createHash, type Hash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { zstdCompressSync, constants as zc } from 'node:zlib';
import { Qcow2Writer, type Qcow2Compression } from './qcow2.js';
import { InOrder, type Unit, type UnitSink } from './scan.js';
import type { WorkerPool } from './workers.js';

/**
 * Output writers for the single-file formats. Each receives units from scanDisk (possibly
 * several at once), lets the worker pool do the CPU work, and writes in the order its file
 * format needs.
 */

async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Sparse raw: only blocks holding a non-zero byte are written; the rest stay holes. */
export class RawSink implements UnitSink {
  static readonly BLOCK = 4096;
  /** bytes written (non-zero blocks) */
  dataBytes = 0;
  private constructor(
    private readonly fh: FileHandle,
    private readonly pool: WorkerPool,
    private readonly size: number,
  ) {}
  static async create(path: string, size: number, pool: WorkerPool): Promise<RawSink> {
    return new RawSink(await open(path, 'w'), pool, size);
  }
  async process(u: Unit): Promise<void> {
    if (u.hole) return;
    const r = await this.pool.run({
      task: 'zeromap',
      sab: u.sab,
      off: 0,
      len: u.length,
      block: RawSink.BLOCK,
    });
    const bits = r.bits as Uint8Array;
    const bytes = new Uint8Array(u.sab!, 0, u.length);
    for (let i = 0; i < bits.length;) {
      if (!bits[i]) {
        i++;
        continue;
      }
      let j = i;
      while (j < bits.length && bits[j]) j++;
      const a = i * RawSink.BLOCK;
      const b = Math.min(u.length, j * RawSink.BLOCK);
      await writeAll(this.fh, bytes.subarray(a, b), u.offset + a);
      this.dataBytes += b - a;
      i = j;
    }
  }
  async finish(): Promise<number> {
    await this.fh.truncate(this.size);
    await this.fh.sync();
    await this.fh.close();
    return this.size;
  }
  async abort(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

/**
 * raw.zst: one zstd stream made of one frame per unit (RFC 8878: a stream is one or more
 * frames; `zstd -d` and every library decode it as one). Independent frames let all cores
 * compress, and a run of zeros costs one small cached frame instead of compressing zeros.
 */
/**
 * Writers of sequential files: compression results are written in unit order, but the unit's
 * slot is released as soon as its compression is done. At most `maxPending` results wait for
 * their turn (bounded memory); a write failure fails the next unit and `drain()`.
 */
class OrderedWrites {
  private readonly order = new InOrder();
  private readonly pending = new Set<Promise<void>>();
  private failure: unknown;
  constructor(private readonly maxPending: number) {}
  async add<T>(index: number, work: Promise<T> | T, write: (r: T) => Promise<void> | void): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    const seq = this.order.sequence(index, work, write);
    const tracked = seq.catch((err: unknown) => {
      this.failure ??= err;
    });
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
    await work;
    while (this.pending.size > this.maxPending && this.failure === undefined)
      await Promise.race(this.pending);
    if (this.failure !== undefined) throw this.failure;
  }
  async drain(): Promise<void> {
    while (this.pending.size) await Promise.all([...this.pending]);
    if (this.failure !== undefined) throw this.failure;
  }
}

export class ZstSink implements UnitSink {
  private readonly order: OrderedWrites;
  private pos = 0;
  private readonly zeroFrames = new Map<number, Buffer>();
  private readonly hash: Hash = createHash('sha256');
  /** byte offset of each frame, for tools that want random access */
  readonly frames: number[] = [];
  private constructor(
    private readonly fh: FileHandle,
    private readonly pool: WorkerPool,
    private readonly level: number,
  ) {
    this.order = new OrderedWrites(pool.size + 2);
  }
  static async create(path: string, pool: WorkerPool, level: number): Promise<ZstSink> {
    return new ZstSink(await open(path, 'w'), pool, level);
  }
  private zeroFrame(len: number): Buffer {
    let f = this.zeroFrames.get(len);
    if (!f) {
      f = zstdCompressSync(Buffer.alloc(len), {
        params: { [zc.ZSTD_c_compressionLevel]: this.level },
        pledgedSrcSize: len,
      } as object);
      this.zeroFrames.set(len, f);
    }
    return f;
  }
  process(u: Unit): Promise<void> {
    const work = u.hole
      ? undefined
      : this.pool.run({ task: 'frame', sab: u.sab, off: 0, len: u.length, level: this.level });
    return this.order.add(u.index, work, async (r) => {
      const data = !r || r.zero ? this.zeroFrame(u.length) : (r.data as Uint8Array);
      this.frames.push(this.pos);
      this.hash.update(data);
      await writeAll(this.fh, data, this.pos);
      this.pos += data.length;
    });
  }
  /** Returns the file size and its sha256 (hashed as written: the file is written in order). */
  async finish(): Promise<{ bytes: number; sha256: string }> {
    await this.order.drain();
    await this.fh.sync();
    await this.fh.close();
    return { bytes: this.pos, sha256: 'sha256:' + this.hash.digest('hex') };
  }
  async abort(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

export class Qcow2Sink implements UnitSink {
  private readonly order: OrderedWrites;
  private constructor(
    private readonly writer: Qcow2Writer,
    private readonly pool: WorkerPool,
    private readonly codec: Qcow2Compression,
    private readonly level: number,
  ) {
    this.order = new OrderedWrites(pool.size + 2);
  }
  static async create(
    path: string,
    o: {
      virtualSize: number;
      clusterSize: number;
      compression: Qcow2Compression;
      level: number;
      pool: WorkerPool;
    },
  ): Promise<Qcow2Sink> {
    const w = await Qcow2Writer.create(path, {
      virtualSize: o.virtualSize,
      clusterSize: o.clusterSize,
      compression: o.compression,
    });
    return new Qcow2Sink(w, o.pool, o.compression, o.level);
  }
  process(u: Unit): Promise<void> {
    const work = u.hole
      ? undefined
      : this.pool.run({
          task: 'clusters',
          sab: u.sab,
          off: 0,
          len: u.length,
          clusterSize: this.writer.clusterSize,
          codec: this.codec,
          level: this.level,
        });
    return this.order.add(u.index, work, async (r) => {
      if (!r) return;
      await this.writer.addUnit(u.offset, r.sizes as Int32Array, r.data as Uint8Array);
    });
  }
  async finish(): Promise<number> {
    await this.order.drain();
    return this.writer.finish();
  }
  abort(): Promise<void> {
    return this.writer.abort();
  }
}
