import { mkdtemp, open, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OrbError } from '../../core/errors.js';
import { ensureFreeSpace } from '../../core/fsutil.js';
import { silentLogger, type Logger } from '../../core/log.js';
import { formatBytes } from '../../core/progress.js';
import { sampleRanges } from '../estimate.js';
import { inspectImage } from '../inspect.js';
import { openDiskReader } from '../reader.js';
import { METHODS, type Method } from './methods.js';
import { recommend, type BenchReport, type Measure, type MethodResult } from './report.js';
import { RssSampler } from './rss.js';

/**
 * `orb bench`: measure each method on a sample drawn evenly from the image's data extents (plus
 * a run of zeros, which the CLI tools must read and the orb formats skip), and predict the full
 * image from the two rates. With `full`, also run each method on the whole image and report how
 * far the prediction was off.
 */
export interface BenchOptions {
  input: string;
  sampleBytes?: number;
  /** bytes of zeros measured separately (default 256 MiB; x8 for orb formats, which only hash them) */
  zeroSampleBytes?: number;
  full?: boolean;
  methods?: string[];
  /** bytes per second of the link to clients, for the recommendation */
  bandwidth?: number;
  workDir?: string;
  threads?: number;
  log?: Logger;
  signal?: AbortSignal;
}

export type { BenchReport, Measure, MethodResult } from './report.js';

async function copyFileRange(from: string, to: string, n: number): Promise<void> {
  const src = await open(from, 'r');
  const buf = Buffer.alloc(n);
  await src.read(buf, 0, n, 0);
  await src.close();
  const dst = await open(to, 'w');
  await dst.write(buf);
  await dst.close();
}

async function measure(
  m: Method,
  input: string,
  dir: string,
  o: BenchOptions,
  includeSelf: boolean,
): Promise<Measure & { inBytes: number }> {
  const rss = new RssSampler(process.pid, includeSelf).start();
  const t0 = performance.now();
  const out = await m.compress(input, dir, { threads: o.threads, signal: o.signal });
  const compressSeconds = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  await m.decompress(out.path, dir, { threads: o.threads, signal: o.signal });
  const decompressSeconds = (performance.now() - t1) / 1000;
  const peakRss = rss.stop();
  await rm(out.path, { recursive: true, force: true });
  return { inBytes: 0, outBytes: out.bytes, compressSeconds, decompressSeconds, peakRss };
}

export async function runBench(o: BenchOptions): Promise<BenchReport> {
  const log = o.log ?? silentLogger;
  const info = await inspectImage(o.input, { signal: o.signal });
  const reader = await openDiskReader(info, { signal: o.signal });
  const dataBytes = reader.extents.dataBytes;
  const zeroBytes = info.virtualSize - dataBytes;
  const budget = o.sampleBytes ?? 256 << 20;
  // many small slices: disk data is heterogeneous (text, binaries, already-compressed files)
  const ranges = sampleRanges(reader.extents, budget, 1 << 20);
  const sampleBytes = ranges.reduce((s, r) => s + r[1], 0);
  const work = await mkdtemp(join(o.workDir ?? tmpdir(), 'orb-bench-'));
  const selected = o.methods?.length ? METHODS.filter((m) => o.methods!.includes(m.id)) : METHODS;
  const unknown = (o.methods ?? []).filter((id) => !METHODS.some((m) => m.id === id));
  if (unknown.length)
    throw new OrbError('usage', `unknown bench method(s): ${unknown.join(', ')}`, {
      hint: `methods: ${METHODS.map((m) => m.id).join(', ')}`,
    });
  const skipped: { id: string; why: string }[] = [];
  const results: MethodResult[] = [];
  try {
    // sample + its largest output + a decoded copy must fit
    await ensureFreeSpace(work, sampleBytes * 3, 'the benchmark sample');
    const sample = join(work, 'sample.raw');
    const fh = await open(sample, 'w');
    const buf = Buffer.alloc(4 << 20);
    let pos = 0;
    for (const [a, len] of ranges) {
      const view = buf.subarray(0, len);
      await reader.read(a, view);
      await fh.write(view, 0, len, pos);
      pos += len;
    }
    await fh.close();
    await reader.close();
    log.info(
      `bench: ${formatBytes(sampleBytes)} sample from ${formatBytes(dataBytes)} of data (${ranges.length} slices); ${formatBytes(zeroBytes)} zeros`,
    );
    const zeroSample = o.zeroSampleBytes ?? 256 << 20;
    const zeros = join(work, 'zeros.raw');
    await open(zeros, 'w').then((f) => f.close());
    const tiny = join(work, 'tiny.raw');
    await copyFileRange(sample, tiny, Math.min(sampleBytes, 4 << 20));
    for (const m of selected) {
      if (!m.available()) {
        skipped.push({ id: m.id, why: 'tool not installed' });
        continue;
      }
      if (o.signal?.aborted) throw new OrbError('interrupted', 'interrupted');
      log.info(`bench: ${m.label}`);
      // Fixed costs (thread start, tool start) measured on 4 MiB and not scaled with size.
      const fixed = await measure(m, tiny, work, o, m.skipsZeros);
      const d = await measure(m, sample, work, o, m.skipsZeros);
      d.inBytes = sampleBytes;
      let z: Measure | undefined;
      // orb formats skip zeros (only hashing them), so a larger run keeps fixed costs small
      const zs = Math.min(zeroBytes, m.skipsZeros ? zeroSample * 8 : zeroSample);
      if (zs > 0) {
        await truncate(zeros, zs);
        z = await measure(m, zeros, work, o, m.skipsZeros);
        z.inBytes = zs;
      }
      const scaleD = dataBytes / Math.max(1, sampleBytes);
      const scaleZ = z ? zeroBytes / z.inBytes : 0;
      const varying = (k: 'compressSeconds' | 'decompressSeconds') =>
        fixed[k] + Math.max(0, d[k] - fixed[k]) * scaleD + (z ? Math.max(0, z[k] - fixed[k]) * scaleZ : 0);
      const predicted = {
        outBytes: Math.round(d.outBytes * scaleD + (z ? z.outBytes * scaleZ : 0)),
        compressSeconds: varying('compressSeconds'),
        decompressSeconds: varying('decompressSeconds'),
      };
      const r: MethodResult = {
        id: m.id,
        label: m.label,
        data: d,
        ...(z ? { zeros: z } : {}),
        predicted,
        deliverySeconds: 0,
        ratio: d.inBytes / Math.max(1, d.outBytes),
        compressMBps: d.inBytes / 1e6 / d.compressSeconds,
        decompressMBps: d.inBytes / 1e6 / d.decompressSeconds,
      };
      if (o.full) {
        if (!m.skipsZeros && info.format !== 'raw')
          skipped.push({
            id: `${m.id} (full)`,
            why: `${m.id} reads raw files only; the input is ${info.format}`,
          });
        else {
          log.info(`bench: ${m.label} on the whole image`);
          // the output plus the decoded copy (dense for the CLI tools)
          await ensureFreeSpace(
            work,
            predicted.outBytes * 1.2 + (m.skipsZeros ? dataBytes : info.virtualSize),
            'the full benchmark run',
          );
          const f = await measure(m, info.path, work, o, m.skipsZeros);
          f.inBytes = info.virtualSize;
          r.full = {
            ...f,
            sizeErrorPct: (100 * (predicted.outBytes - f.outBytes)) / Math.max(1, f.outBytes),
            timeErrorPct:
              (100 * (predicted.compressSeconds - f.compressSeconds)) / Math.max(1e-9, f.compressSeconds),
          };
        }
      }
      results.push(r);
    }
  } finally {
    await reader.close().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
  const bandwidth = o.bandwidth ?? 100e6 / 8;
  for (const r of results)
    r.deliverySeconds =
      r.predicted.compressSeconds + r.predicted.outBytes / bandwidth + r.predicted.decompressSeconds;
  const rec = recommend(results, bandwidth);
  return {
    input: o.input,
    inputFormat: info.format,
    virtualSize: info.virtualSize,
    dataBytes,
    zeroBytes,
    sampleBytes,
    sampled: sampleBytes < dataBytes,
    bandwidth,
    methods: results,
    skipped,
    recommended: rec.id,
    reason: rec.reason,
  };
}
