import type { Extents } from './extents.js';
import type { DiskReader } from './reader.js';
import type { WorkerPool } from './workers.js';

/**
 * Evenly spaced slices of the data extents, about `budget` bytes in all: what a benchmark or
 * a size estimate reads instead of the whole disk. Offsets are 64 KiB aligned so qcow2 clusters
 * and file-system blocks line up as they would in a full run.
 */
export function sampleRanges(extents: Extents, budget: number, slice: number): [number, number][] {
  const total = extents.dataBytes;
  const out: [number, number][] = [];
  if (total <= budget) {
    for (const [a, b] of extents.ranges())
      for (let p = a; p < b; p += slice) out.push([p, Math.min(slice, b - p)]);
    return out;
  }
  const n = Math.max(1, Math.ceil(budget / slice));
  const step = total / n;
  const ranges = [...extents.ranges()];
  let ri = 0;
  let before = 0; // data bytes in ranges before ranges[ri]
  for (let k = 0; k < n; k++) {
    const want = Math.floor(k * step + step / 2);
    while (ri < ranges.length && before + (ranges[ri]![1] - ranges[ri]![0]) <= want) {
      before += ranges[ri]![1] - ranges[ri]![0];
      ri++;
    }
    const r = ranges[ri];
    if (!r) break;
    let start = r[0] + (want - before);
    start -= start % 65536;
    start = Math.max(start, r[0]);
    const len = Math.min(slice, r[1] - start);
    if (len <= 0) continue;
    const last = out[out.length - 1];
    if (last && start < last[0] + last[1]) continue;
    out.push([start, len]);
  }
  return out;
}

/** Read the given ranges into one buffer (for sampling; small by construction). */
export async function readRanges(
  reader: DiskReader,
  ranges: [number, number][],
  target: Uint8Array,
): Promise<number> {
  let pos = 0;
  for (const [a, len] of ranges) {
    if (pos + len > target.length) break;
    await reader.read(a, target.subarray(pos, pos + len));
    pos += len;
  }
  return pos;
}

export type EstimateFormat = 'qcow2' | 'raw' | 'raw.zst' | 'chunked';

/**
 * Estimated output size, from compressing a sample of the data at the chosen settings, so a
 * runner that cannot hold the result fails in seconds rather than after an hour. A margin of
 * 15% covers sample error; the run still stops cleanly on a full disk if the guess is wrong.
 */
export async function estimateOutputBytes(
  reader: DiskReader,
  pool: WorkerPool,
  o: { format: EstimateFormat; level: number; codec?: 'zstd' | 'zlib' | 'none'; clusterSize?: number },
): Promise<{ bytes: number; ratio: number }> {
  const data = reader.extents.dataBytes;
  if (o.format === 'raw' || o.codec === 'none' || data === 0) {
    return {
      bytes: data + (o.format === 'qcow2' ? metadataBytes(reader.virtualSize, o.clusterSize ?? 65536) : 0),
      ratio: 1,
    };
  }
  const slice = 4 << 20;
  const ranges = sampleRanges(reader.extents, 64 << 20, slice);
  const sab = new SharedArrayBuffer(ranges.reduce((s, r) => s + r[1], 0));
  const n = await readRanges(reader, ranges, new Uint8Array(sab));
  let compressed = 0;
  const jobs: Promise<void>[] = [];
  for (let off = 0; off < n; off += slice) {
    const len = Math.min(slice, n - off);
    const msg =
      o.format === 'qcow2'
        ? {
            task: 'clusters',
            sab,
            off,
            len,
            clusterSize: o.clusterSize ?? 65536,
            codec: o.codec ?? 'zstd',
            level: o.level,
          }
        : { task: 'frame', sab, off, len, level: o.level };
    jobs.push(
      pool.run(msg).then((r) => {
        if (r.zero) return;
        if (r.sizes) {
          const sizes = r.sizes as Int32Array;
          const cs = o.clusterSize ?? 65536;
          for (const s of sizes) compressed += s > 0 ? s : s === -2 ? cs : 0;
        } else compressed += (r.data as Uint8Array).length;
      }),
    );
  }
  await Promise.all(jobs);
  const ratio = n > 0 ? compressed / n : 1;
  const meta = o.format === 'qcow2' ? metadataBytes(reader.virtualSize, o.clusterSize ?? 65536) : 1 << 20;
  return { bytes: Math.ceil(data * ratio * 1.15) + meta, ratio };
}

function metadataBytes(virtualSize: number, cs: number): number {
  // L2 tables (8 bytes per guest cluster) + refcounts + header, generously
  return Math.ceil(virtualSize / cs) * 8 + 4 * cs + (1 << 20);
}
