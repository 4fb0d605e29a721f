import { createInterface } from 'node:readline';
import { OrbError } from '../core/errors.js';
import { requireTool, spawnTracked } from '../core/proc.js';
import { qemuNameOf } from './untrusted.js';
import { lastLines } from './tool-output.js';

/**
 * Where the data is: the ranges of the guest-visible disk that may hold non-zero bytes. The
 * rest reads as zeros and is never read, compressed or stored. Kept as two flat number arrays
 * (16 bytes per range) because a fragmented 150 GB image can have hundreds of thousands.
 */
export class Extents {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  constructor(readonly virtualSize: number) {}

  /** Add a data range; ranges must come in ascending order. Touching ranges merge. */
  add(start: number, length: number): void {
    if (length <= 0) return;
    const n = this.ends.length;
    if (n > 0 && this.ends[n - 1]! >= start) {
      this.ends[n - 1] = Math.max(this.ends[n - 1]!, start + length);
      return;
    }
    this.starts.push(start);
    this.ends.push(start + length);
  }

  get count(): number {
    return this.starts.length;
  }

  /** bytes inside data ranges (what has to be read) */
  get dataBytes(): number {
    let sum = 0;
    for (let i = 0; i < this.starts.length; i++) sum += this.ends[i]! - this.starts[i]!;
    return sum;
  }

  /** The data ranges intersecting [start, end), clipped to it. */
  within(start: number, end: number): [number, number][] {
    const out: [number, number][] = [];
    // binary search for the first range ending after `start`
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! <= start) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.starts.length && this.starts[i]! < end; i++) {
      out.push([Math.max(start, this.starts[i]!), Math.min(end, this.ends[i]!)]);
    }
    return out;
  }

  *ranges(): Generator<[number, number]> {
    for (let i = 0; i < this.starts.length; i++) yield [this.starts[i]!, this.ends[i]!];
  }

  static full(virtualSize: number): Extents {
    const e = new Extents(virtualSize);
    e.add(0, virtualSize);
    return e;
  }
}

interface MapEntry {
  start: number;
  length: number;
  zero: boolean;
  data: boolean;
  present?: boolean;
}

/**
 * `qemu-img map --output=json`, parsed line by line as it streams (one entry per line): the
 * output for a compressed qcow2 has one entry per cluster and must not be held whole in memory.
 * For raw files qemu-img asks the file system (SEEK_DATA/SEEK_HOLE), so holes are found
 * without reading them.
 */
export async function mapImage(
  info: { path: string; format: string; qemu?: string },
  virtualSize: number,
  signal?: AbortSignal,
): Promise<Extents> {
  const path = info.path;
  const qemuImg = requireTool('qemu-img', 'qemu-utils');
  const child = spawnTracked(qemuImg, ['map', '-U', '--output=json', qemuNameOf(info)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const onAbort = () => child.kill('SIGTERM');
  signal?.addEventListener('abort', onAbort, { once: true });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 8192) stderr += d;
  });
  const exit = new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve(code));
  });
  const extents = new Extents(virtualSize);
  let covered = 0;
  const lines = createInterface({ input: child.stdout!, crlfDelay: Infinity });
  for await (const raw of lines) {
    const line = raw
      .trim()
      .replace(/^\[/, '')
      .replace(/[,\]]+$/, '');
    if (!line.startsWith('{')) continue;
    let e: MapEntry;
    try {
      e = JSON.parse(line) as MapEntry;
    } catch {
      throw new OrbError('internal', `unexpected qemu-img map line: ${line.slice(0, 120)}`);
    }
    // zero: reads as zeros (hole, zero cluster, unallocated without backing file)
    if (!e.zero) extents.add(e.start, e.length);
    covered = Math.max(covered, e.start + e.length);
  }
  const code = await exit;
  signal?.removeEventListener('abort', onAbort);
  if (signal?.aborted) throw new OrbError('interrupted', 'interrupted while mapping the input');
  if (code !== 0) {
    throw new OrbError('input', `qemu-img map failed on ${path}: ${lastLines(stderr)}`, {
      hint: 'the image is damaged or truncated',
    });
  }
  if (covered < virtualSize) {
    // Should not happen; reading everything is always correct, only slower.
    extents.add(covered, virtualSize - covered);
  }
  return extents;
}
