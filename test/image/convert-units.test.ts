import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBandwidth, recommend } from '../../src/image/bench/report.js';
import { runBench } from '../../src/image/bench/run.js';
import { localContentDigest } from '../../src/image/digest.js';
import { convertImage } from '../../src/image/convert.js';
import { sampleRanges } from '../../src/image/estimate.js';
import { Extents } from '../../src/image/extents.js';
import { MiB, noise, qemuCompare, sha256File, smallDisk, text } from '../helpers/images.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'orb-units-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('Extents', () => {
  it('merges touching ranges and clips queries', () => {
    const e = new Extents(100);
    e.add(0, 10);
    e.add(10, 5);
    e.add(40, 10);
    e.add(90, 10);
    expect([...e.ranges()]).toEqual([
      [0, 15],
      [40, 50],
      [90, 100],
    ]);
    expect(e.dataBytes).toBe(35);
    expect(e.within(12, 45)).toEqual([
      [12, 15],
      [40, 45],
    ]);
    expect(e.within(15, 40)).toEqual([]);
    expect(e.within(95, 100)).toEqual([[95, 100]]);
  });

  it('sampleRanges spreads slices over the data and stays inside it', () => {
    const e = new Extents(1000 * MiB);
    e.add(0, 100 * MiB);
    e.add(500 * MiB, 300 * MiB);
    const s = sampleRanges(e, 40 * MiB, 4 * MiB);
    expect(s.length).toBe(10);
    for (const [a, n] of s) expect(e.within(a, a + n)).toEqual([[a, a + n]]);
    // proportional: about a quarter of the slices in the first (100 MiB of 400) range
    expect(s.filter(([a]) => a < 100 * MiB).length).toBeGreaterThanOrEqual(2);
    expect(s.filter(([a]) => a >= 500 * MiB).length).toBeGreaterThanOrEqual(7);
    const all = sampleRanges(e, 1000 * MiB, 64 * MiB);
    expect(all.reduce((t, [, n]) => t + n, 0)).toBe(400 * MiB);
  });
});

describe('the raw-file hasher', () => {
  it('reads ahead only as far as the conversion allows, then hashes data and holes like the disk', async () => {
    const { Hasher } = await import('../../src/image/workers.js');
    const { createHash } = await import('node:crypto');
    const { readFileSync } = await import('node:fs');
    const path = join(dir, 'ahead.raw');
    const fd = openSync(path, 'w');
    writeSync(fd, noise('a1', 8 * MiB), 0, 8 * MiB, 0);
    writeSync(fd, noise('a2', 8 * MiB), 0, 8 * MiB, 40 * MiB);
    // 1000 bytes past the last full sector: read as zeros up to the 512-byte boundary
    writeSync(fd, noise('a3', 1000), 0, 1000, 60 * MiB);
    closeSync(fd);
    const size = 60 * MiB + 1024;
    const e = new Extents(size);
    e.add(0, 8 * MiB);
    e.add(40 * MiB, 8 * MiB);
    e.add(60 * MiB, 1024);
    const want = createHash('sha256')
      .update(Buffer.concat([readFileSync(path), Buffer.alloc(24)]))
      .digest('hex');
    const h = new Hasher();
    try {
      h.readAhead({ path, fileSize: 60 * MiB + 1000 }, e, 4 * MiB);
      let done = false;
      const digest = h.digest().then((d) => ((done = true), d));
      await new Promise((r) => setTimeout(r, 300));
      // 4 MiB of data past offset 0 is all it may read before the conversion moves
      expect(done).toBe(false);
      h.scanned(40 * MiB);
      await new Promise((r) => setTimeout(r, 300));
      expect(done).toBe(false);
      h.scanned(size);
      expect(await digest).toBe('sha256:' + want);
    } finally {
      await h.close();
    }
  });

  it('says so when the file is shorter than when the conversion started', async () => {
    const { Hasher } = await import('../../src/image/workers.js');
    const path = join(dir, 'short.raw');
    const fd = openSync(path, 'w');
    writeSync(fd, noise('a4', MiB), 0, MiB, 0);
    closeSync(fd);
    const e = new Extents(4 * MiB);
    e.add(0, 4 * MiB);
    const h = new Hasher();
    try {
      h.readAhead({ path, fileSize: 4 * MiB }, e);
      h.scanned(4 * MiB);
      await expect(h.digest()).rejects.toThrow(/ended at 1048576 bytes while reading; was it truncated/);
    } finally {
      await h.close();
    }
  });
});

describe('bench report', () => {
  it('parses bandwidths in bits and bytes', () => {
    expect(parseBandwidth('100Mbit')).toBe(12.5e6);
    expect(parseBandwidth('1Gbit/s')).toBe(125e6);
    expect(parseBandwidth('1 Gbps')).toBe(125e6);
    expect(parseBandwidth('50MB/s')).toBe(50e6);
    expect(parseBandwidth('12MiB/s')).toBe(12 * MiB);
    expect(() => parseBandwidth('fast')).toThrow(/not valid/);
  });

  it('recommends the shortest delivery and prefers chunked within 5%', () => {
    const m = (id: string, deliverySeconds: number) =>
      ({
        id,
        label: id,
        deliverySeconds,
        predicted: { outBytes: 1e9, compressSeconds: 1, decompressSeconds: 1 },
      }) as never;
    expect(recommend([m('zstd-3', 100), m('lz4', 80), m('chunked', 120)], 12.5e6).id).toBe('lz4');
    expect(recommend([m('zstd-3', 100), m('chunked', 104)], 12.5e6).id).toBe('chunked');
  });

  it('predicts the full image from a sample and reports the error against a full run', async () => {
    const rep = await runBench({
      input: smallDisk(),
      methods: ['zstd-3', 'chunked'],
      sampleBytes: 8 * MiB,
      zeroSampleBytes: 8 * MiB,
      full: true,
      workDir: dir,
    });
    expect(rep.sampled).toBe(true);
    expect(rep.methods.map((x) => x.id)).toEqual(['zstd-3', 'chunked']);
    for (const x of rep.methods) {
      expect(x.full).toBeDefined();
      // 8 MiB of 27 MiB of data: the size prediction is within 35% even on such a small sample
      expect(Math.abs(x.full!.sizeErrorPct)).toBeLessThan(35);
      expect(x.data.peakRss).toBeGreaterThan(0);
    }
    expect(['zstd-3', 'chunked']).toContain(rep.recommended);
  });
});

describe('odd sizes', () => {
  it('a disk whose size is not a multiple of the cluster or chunk size round-trips', async () => {
    const p = join(dir, 'odd.raw');
    const size = 5 * MiB + 3 * 512;
    const fd = openSync(p, 'w');
    writeSync(fd, text('odd', 2 * MiB), 0, 2 * MiB, 0);
    writeSync(fd, noise('odd-tail', 4096), 0, 4096, size - 4096);
    closeSync(fd);
    execFileSync('truncate', ['-s', String(size), p]);
    const q = await convertImage({ input: p, output: join(dir, 'odd.qcow2'), format: 'qcow2', verify: true });
    expect(qemuCompare(p, 'raw', q.path, 'qcow2').same).toBe(true);
    const c = await convertImage({
      input: p,
      output: join(dir, 'odd.chunked'),
      format: 'chunked',
      verify: true,
    });
    // the last block is partial: hashed zero-padded, and the decoded disk keeps the odd size
    expect(c.contentDigest).toBe((await localContentDigest(p)).contentDigest);
    const back = await convertImage({ input: c.path, output: join(dir, 'odd-back.raw'), format: 'raw' });
    expect(sha256File(back.path)).toBe(sha256File(p));
    expect(back.contentDigest).toBe(c.contentDigest);
  });

  it('a raw file whose size is not a multiple of 512 is read as QEMU reads it (rounded up with zeros)', async () => {
    const p = join(dir, 'odd511.raw');
    const fd = openSync(p, 'w');
    writeSync(fd, noise('odd511', 4096 + 511), 0, 4096 + 511, MiB - 4096);
    closeSync(fd);
    const q = await convertImage({
      input: p,
      output: join(dir, 'odd511.qcow2'),
      format: 'qcow2',
      verify: true,
    });
    expect(q.virtualSize).toBe(MiB + 512);
    const z = await convertImage({
      input: p,
      output: join(dir, 'odd511.raw.zst'),
      format: 'raw.zst',
      verify: true,
    });
    expect(z.contentSha256).toBe(q.contentSha256);
    const decoded = execFileSync('zstd', ['-d', '-c', z.path], { maxBuffer: 8 * MiB });
    expect(decoded.subarray(0, MiB + 511).equals(execFileSync('cat', [p], { maxBuffer: 8 * MiB }))).toBe(
      true,
    );
    expect(decoded.subarray(MiB + 511).equals(Buffer.alloc(1))).toBe(true);
  });
});
