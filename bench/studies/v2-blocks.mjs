#!/usr/bin/env node
// Study for the chunked format v2 (docs/chunked-format.md): simulates candidate designs on the
// update pair built by bench/fixtures/update-pair.mjs and prints one table.
//
//   nice npx node bench/studies/v2-blocks.mjs PAIRDIR [--sample 4] [--workers 2] [--json out.json]
//
// For each block size (16 KiB .. 1 MiB) and compression unit (each block alone, or runs of
// consecutive stored blocks packed into zstd frames of at most 256 KiB / 512 KiB / 1 MiB),
// blocks deduplicated by sha256, zstd level 3:
//   first    stored size of v1 / `zstd -3 -T0` of the same bytes as one stream
//   down     update download (new frames a client with v1 needs, whole frame per needed block,
//            plus the v2 index, or plus the index patch against v1's index) / floor
//   up       publisher upload (new packs + full index) / floor
//   idx      compressed binary index of v1, and the patch v2-against-v1 (zstd --patch-from)
//   idx60    index size scaled to a disk with 60 GB of compressed data
//   miss     mean compressed bytes a lazy-boot miss fetches (the frame holding the block)
//   cpu      zstd CPU seconds per GiB of stored input, thread CPU time
// floor = the changed 4 KiB blocks of v2 compressed with zstd -3 (pair.json).
// --sample K measures the first image on every K-th 16 MiB region (default 4, 1 = whole disk); the
// update side is always measured whole. Block identity at size B is the sha256 over the 16 KiB
// sub-block digests, which is equal exactly when the blocks are (up to sha256 collisions), so the
// disks are hashed once.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import * as zlib from 'node:zlib';

const KiB = 1024;
const MiB = 1 << 20;
const SUB = 16 * KiB;
const REGION = 16 * MiB;
const ZC = zlib.constants;

if (!isMainThread) {
  // worker: compress frames (contiguous disk ranges) and report compressed sizes and CPU time
  const fds = new Map();
  parentPort.on('message', ({ id, file, frames, level }) => {
    if (!fds.has(file)) fds.set(file, fs.openSync(file, 'r'));
    const fd = fds.get(file);
    const t0 = process.threadCpuUsage();
    const sizes = new Float64Array(frames.length / 2);
    const buf = Buffer.allocUnsafe(2 * MiB);
    for (let i = 0; i < sizes.length; i++) {
      const len = frames[2 * i + 1];
      fs.readSync(fd, buf, 0, len, frames[2 * i]);
      sizes[i] = zlib.zstdCompressSync(buf.subarray(0, len), {
        params: { [ZC.ZSTD_c_compressionLevel]: level, [ZC.ZSTD_c_checksumFlag]: 0 },
      }).length;
    }
    const t = process.threadCpuUsage(t0);
    parentPort.postMessage({ id, sizes, cpu: (t.user + t.system) / 1e6 });
  });
}

function parseArgs(argv) {
  const a = { dir: '', sample: 4, workers: 2, json: '' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--sample') a.sample = Number(argv[++i]);
    else if (argv[i] === '--workers') a.workers = Number(argv[++i]);
    else if (argv[i] === '--json') a.json = argv[++i];
    else if (argv[i] === '--only')
      a.only = argv[++i]; // BLOCK_KIB:FRAME_KIB, e.g. 32:256
    else if (!a.dir) a.dir = argv[i];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!a.dir) throw new Error('usage: v2-blocks.mjs PAIRDIR [--sample 4] [--workers 2] [--json FILE]');
  return a;
}

/** sha256 of every 16 KiB sub-block (zero sub-blocks get an all-zero digest). */
function hashDisk(file) {
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  const n = Math.ceil(size / SUB);
  const digests = Buffer.alloc(n * 32);
  const buf = Buffer.alloc(8 * MiB);
  const zero = Buffer.alloc(SUB);
  for (let off = 0; off < size; off += buf.length) {
    const got = fs.readSync(fd, buf, 0, buf.length, off);
    for (let p = 0; p < got; p += SUB) {
      const blk = buf.subarray(p, p + SUB);
      if (blk.equals(zero)) continue;
      createHash('sha256')
        .update(blk)
        .digest()
        .copy(digests, ((off + p) / SUB) * 32);
    }
  }
  fs.closeSync(fd);
  return { size, digests };
}

/** Per block of size B: identity (hex, or null for an all-zero block). */
function blockIds(disk, B) {
  const per = B / SUB;
  const n = Math.ceil(disk.size / B);
  const ids = new Array(n);
  const zero32 = Buffer.alloc(32);
  for (let i = 0; i < n; i++) {
    const subs = disk.digests.subarray(i * per * 32, Math.min((i + 1) * per * 32, disk.digests.length));
    let allZero = true;
    for (let s = 0; s < subs.length; s += 32) if (!subs.subarray(s, s + 32).equals(zero32)) allZero = false;
    ids[i] = allZero
      ? null
      : per === 1
        ? subs.toString('hex')
        : createHash('sha256').update(subs).digest('hex');
  }
  return ids;
}

/**
 * Frames for the blocks to store (stored[i] true), runs of consecutive stored blocks cut at F
 * bytes (F = 0: each block alone) and, when `keep` is given, at region boundaries and to
 * sampled regions only. Returns [offset, length, ...] in disk order and each block's frame.
 */
function planFrames(stored, B, F, size, keep) {
  const frames = [];
  const perFrame = F ? Math.max(1, Math.floor(F / B)) : 1;
  let cur = -1;
  let inCur = 0;
  for (let i = 0; i < stored.length; i++) {
    const off = i * B;
    if (!stored[i] || (keep && !keep(off))) {
      cur = -1;
      continue;
    }
    const len = Math.min(B, size - off);
    const newRegion = keep && off % REGION === 0;
    if (cur >= 0 && inCur < perFrame && !newRegion) {
      frames[2 * cur + 1] += len;
      inCur++;
    } else {
      cur = frames.length / 2;
      frames.push(off, len);
      inCur = 1;
    }
  }
  return frames;
}

class Pool {
  constructor(n) {
    this.workers = Array.from({ length: n }, () => new Worker(fileURLToPath(import.meta.url)));
    this.next = 0;
    this.pending = new Map();
    for (const w of this.workers)
      w.on('message', (m) => {
        this.pending.get(m.id)(m);
        this.pending.delete(m.id);
      });
  }
  /** Compress frames in batches of about 64 MiB spread over the workers. */
  async compress(file, frames) {
    const batches = [];
    let start = 0;
    let bytes = 0;
    for (let i = 0; i < frames.length / 2; i++) {
      bytes += frames[2 * i + 1];
      if (bytes >= 64 * MiB || i === frames.length / 2 - 1) {
        batches.push([start, i + 1]);
        start = i + 1;
        bytes = 0;
      }
    }
    const res = await Promise.all(
      batches.map(([s, e]) => {
        const id = this.next++;
        const w = this.workers[id % this.workers.length];
        return new Promise((resolve) => {
          this.pending.set(id, resolve);
          w.postMessage({ id, file, frames: Float64Array.from(frames.slice(2 * s, 2 * e)), level: 3 });
        });
      }),
    );
    const sizes = new Float64Array(frames.length / 2);
    let cpu = 0;
    res.forEach((r, k) => {
      sizes.set(r.sizes, batches[k][0]);
      cpu += r.cpu;
    });
    return { sizes, cpu };
  }
  close() {
    for (const w of this.workers) w.terminate();
  }
}

const varint = (out, v) => {
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
};
const zigzag = (v) => (v >= 0 ? 2 * v : -2 * v - 1);

/**
 * The binary index as specified in the design (docs/chunked-format.md), uncompressed:
 * frame table (pack delta, compressed length, block count) then one entry per non-zero block
 * (gap in blocks, sha256, frame reference). Tables are append-only across versions so an
 * index patch against the base is small.
 */
function encodeIndex(ids, frameTable, where) {
  const out = [];
  for (const c of [0x4f, 0x52, 0x42, 0x49, 0x44, 0x58, 0x0d, 0x0a]) out.push(c); // magic
  varint(out, frameTable.length);
  let prevPack = 0;
  for (const f of frameTable) {
    varint(out, f.pack - prevPack);
    prevPack = f.pack;
    varint(out, f.clen);
    varint(out, f.blocks);
  }
  let prevEnd = 0;
  let prevFrame = -1;
  let prevSlot = -1;
  const bytes = [Buffer.from(out)];
  for (let i = 0; i < ids.length; i++) {
    if (!ids[i]) continue;
    const e = [];
    varint(e, i - prevEnd);
    prevEnd = i + 1;
    const [frame, slot] = where(ids[i]);
    if (frame === prevFrame && slot === prevSlot + 1) e.push(0);
    else {
      varint(e, 1 + zigzag(frame - prevFrame - 1));
      varint(e, slot);
    }
    prevFrame = frame;
    prevSlot = slot;
    bytes.push(Buffer.from(e), Buffer.from(ids[i], 'hex'));
  }
  return Buffer.concat(bytes);
}

/**
 * Structural index patch against the base index: new frame records, then runs of disk blocks
 * whose entry differs from the base's entry at the same block (gap, count, then per block a
 * zero flag or its frame reference and sha256). Applying it needs only the base index.
 */
function structuralPatch(v1, loc1, v2, loc2, newFrames) {
  const out = [];
  varint(out, newFrames.length);
  for (const f of newFrames) {
    varint(out, f.clen);
    varint(out, f.blocks);
  }
  const parts = [Buffer.from(out)];
  const n = Math.max(v1.length, v2.length);
  let prevEnd = 0;
  for (let i = 0; i < n;) {
    const differs = (k) =>
      k < n && (v1[k] !== v2[k] || (v2[k] && String(loc1.get(v1[k])) !== String(loc2.get(v2[k]))));
    if (!differs(i)) {
      i++;
      continue;
    }
    let j = i;
    while (differs(j)) j++;
    const h = [];
    varint(h, i - prevEnd);
    varint(h, j - i);
    parts.push(Buffer.from(h));
    for (let k = i; k < j; k++) {
      if (!v2[k]) {
        parts.push(Buffer.from([0]));
        continue;
      }
      const [frame, slot] = loc2.get(v2[k]);
      const e = [1];
      varint(e, frame);
      varint(e, slot);
      parts.push(Buffer.from(e), Buffer.from(v2[k], 'hex'));
    }
    prevEnd = j;
    i = j;
  }
  return Buffer.concat(parts);
}

/**
 * A fresh pull of v2 by Range: live frames (referenced by v2) in pack order, ranges merged over
 * gaps of dead frames shorter than 256 KiB, split at 1 GiB pack boundaries. Frame sizes of the
 * base pack are measured when the whole disk is compressed (--sample 1), else estimated.
 */
function freshPull(v2, loc2, ft, baseFrames) {
  const live = new Uint8Array(ft.length);
  for (const id of v2) if (id) live[loc2.get(id)[0]] = 1;
  let ranges = 0;
  let read = 0;
  let liveBytes = 0;
  let deadBase = 0;
  let base = 0;
  for (const [from, to] of [
    [0, baseFrames],
    [baseFrames, ft.length],
  ]) {
    let off = 0;
    let end = -Infinity; // end of the open range
    for (let i = from; i < to; i++) {
      const len = ft[i].clen;
      const packStart = Math.floor(off / 2 ** 30) !== Math.floor(end / 2 ** 30);
      if (from === 0) base += len;
      if (live[i]) {
        liveBytes += len;
        if (!packStart && off - end < 256 * KiB) read += off - end + len;
        else {
          ranges++;
          read += len;
        }
        end = off + len;
      } else if (from === 0) deadBase += len;
      off += len;
    }
  }
  return { ranges, read, live: liveBytes, deadBase, base };
}

const zstdLen = (buf, level) =>
  zlib.zstdCompressSync(buf, { params: { [ZC.ZSTD_c_compressionLevel]: level } }).length;
function patchLen(base, next, dir) {
  const a = join(dir, `.idx-base-${process.pid}`);
  const b = join(dir, `.idx-next-${process.pid}`);
  fs.writeFileSync(a, base);
  fs.writeFileSync(b, next);
  try {
    const r = spawnSync('zstd', ['-19', '-q', '-c', '--long=27', `--patch-from=${a}`, b], {
      maxBuffer: 1 << 30,
    });
    if (r.status !== 0) throw new Error(`zstd --patch-from failed: ${r.stderr}`);
    return r.stdout.length;
  } finally {
    fs.rmSync(a, { force: true });
    fs.rmSync(b, { force: true });
  }
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const tStart = Date.now();
  const meta = JSON.parse(fs.readFileSync(join(a.dir, 'pair.json'), 'utf8'));
  const v1File = join(a.dir, 'v1.raw');
  const v2File = join(a.dir, 'v2.raw');
  const floor = meta.floorBytes;
  const log = (s) => process.stderr.write(`[${((Date.now() - tStart) / 1000).toFixed(0)}s] ${s}\n`);
  const keep = a.sample > 1 ? (off) => Math.floor(off / REGION) % a.sample === 0 : null;

  log('hashing v1 and v2 (16 KiB sub-blocks)');
  let t = process.cpuUsage();
  const d1 = hashDisk(v1File);
  const d2 = hashDisk(v2File);
  t = process.cpuUsage(t);
  const hashCpu = (t.user + t.system) / 1e6;

  // baseline: one zstd -3 -T0 stream over the same bytes the first-image figures cover
  log(`baseline: zstd -3 -T0 over ${a.sample > 1 ? `every ${a.sample}th 16 MiB region` : 'the whole disk'}`);
  const sampleFile = join(a.dir, `.sample-${process.pid}`);
  let baseFile = v1File;
  if (keep) {
    const fd = fs.openSync(v1File, 'r');
    const out = fs.openSync(sampleFile, 'w');
    const buf = Buffer.alloc(REGION);
    for (let off = 0; off < d1.size; off += REGION)
      if (keep(off)) fs.writeSync(out, buf, 0, fs.readSync(fd, buf, 0, REGION, off));
    fs.closeSync(fd);
    fs.closeSync(out);
    baseFile = sampleFile;
  }
  const tz = Date.now();
  const zstdStream = Number(
    execFileSync('sh', ['-c', `zstd -3 -T0 -q -c "$1" | wc -c`, 'sh', baseFile], { encoding: 'utf8' }).trim(),
  );
  const zstdSeconds = (Date.now() - tz) / 1000;
  fs.rmSync(sampleFile, { force: true });

  const pool = new Pool(a.workers);
  const rows = [];
  const configs = [];
  for (const B of [16, 32, 64, 128, 256, 1024].map((k) => k * KiB))
    for (const F of [0, 256 * KiB, 512 * KiB, MiB])
      if ((F === 0 || F > B) && (!a.only || a.only === `${B / KiB}:${F / KiB}`)) configs.push({ B, F });
  const idsCache = new Map();
  for (const { B, F } of configs) {
    if (!idsCache.has(B)) {
      idsCache.clear(); // one block size at a time keeps memory bounded
      idsCache.set(B, { v1: blockIds(d1, B), v2: blockIds(d2, B) });
    }
    const { v1, v2 } = idsCache.get(B);
    const unit = F ? `runs <= ${F / KiB} KiB` : 'each block alone';
    log(`B=${B / KiB} KiB, ${unit}`);
    // v1: store each distinct non-zero block once, in disk order
    const seen = new Set();
    const stored1 = v1.map((id) => (id && !seen.has(id) ? (seen.add(id), true) : false));
    const storedCount1 = stored1.filter(Boolean).length;
    // when sampling, dedupe within the sample only, so blocks that repeat an unsampled block
    // are not counted as free (the baseline stream compresses them)
    const seenS = new Set();
    const storedS = keep
      ? v1.map((id, i) => (id && keep(i * B) && !seenS.has(id) ? (seenS.add(id), true) : false))
      : stored1;
    const fr1 = planFrames(storedS, B, F, d1.size, keep);
    const c1 = await pool.compress(v1File, fr1);
    const first = c1.sizes.reduce((s, x) => s + x, 0);
    const in1 = fr1.filter((_, i) => i % 2 === 1).reduce((s, x) => s + x, 0);
    // lazy-boot miss: mean compressed size of the frame holding a block, weighted by blocks
    let missNum = 0;
    for (let i = 0; i < c1.sizes.length; i++) missNum += c1.sizes[i] * Math.ceil(fr1[2 * i + 1] / B);
    const miss = missNum / (in1 / B);
    // v2: only blocks v1 lacks are stored, in new frames of the update's pack
    const seen2 = new Set(seen);
    const stored2 = v2.map((id) => (id && !seen2.has(id) ? (seen2.add(id), true) : false));
    const fr2 = planFrames(stored2, B, F, d2.size, null);
    const c2 = await pool.compress(v2File, fr2);
    const newPack = c2.sizes.reduce((s, x) => s + x, 0);
    // indexes: the v1 index covers the whole v1 (not the sample) so frames come from a full plan
    const full1 = keep ? planFrames(stored1, B, F, d1.size, null) : fr1;
    const ratio1 = first / in1; // estimate of frame clen from the measured ratio when sampled
    const ft1 = [];
    const loc = new Map();
    for (let i = 0; i < full1.length / 2; i++) {
      const blocks = Math.ceil(full1[2 * i + 1] / B);
      ft1.push({ pack: 0, clen: keep ? Math.round(full1[2 * i + 1] * ratio1) : c1.sizes[i], blocks });
      for (let s = 0; s < blocks; s++) loc.set(v1[full1[2 * i] / B + s], [i, s]);
    }
    const idx1 = encodeIndex(v1, ft1, (id) => loc.get(id));
    const ft2 = [...ft1];
    const loc2 = new Map(loc);
    for (let i = 0; i < fr2.length / 2; i++) {
      const blocks = Math.ceil(fr2[2 * i + 1] / B);
      ft2.push({ pack: 1, clen: c2.sizes[i], blocks });
      for (let s = 0; s < blocks; s++) loc2.set(v2[fr2[2 * i] / B + s], [ft1.length + i, s]);
    }
    const idx2 = encodeIndex(v2, ft2, (id) => loc2.get(id));
    const fresh = freshPull(v2, loc2, ft2, ft1.length);
    const idx1z = zstdLen(idx1, 19);
    const idx2z = zstdLen(idx2, 19);
    const patch = patchLen(idx1, idx2, a.dir);
    const spatch = zstdLen(structuralPatch(v1, loc, v2, loc2, ft2.slice(ft1.length)), 19);
    const entries1 = v1.filter(Boolean).length;
    const fullCompressed = keep ? first * (storedCount1 / (in1 / B)) : first;
    rows.push({
      blockKiB: B / KiB,
      frameKiB: F / KiB,
      unit,
      firstVsZstd: first / zstdStream,
      downloadVsFloor: (newPack + idx2z) / floor,
      downloadPatchVsFloor: (newPack + spatch) / floor,
      uploadVsFloor: (newPack + idx2z) / floor,
      newPackBytes: newPack,
      newFrames: fr2.length / 2,
      indexV1: idx1z,
      indexV2: idx2z,
      indexPatch: patch,
      indexPatchStructural: spatch,
      indexBytesPerEntry: idx1z / entries1,
      index60GB: (idx1z / fullCompressed) * 60e9,
      missKiB: miss / KiB,
      duplicateBlocksV1: 1 - storedCount1 / entries1,
      freshRanges: fresh.ranges,
      freshReadVsLive: fresh.read / fresh.live,
      deadInBasePack: fresh.deadBase / fresh.base,
      cpuSecPerGiB:
        (c1.cpu + c2.cpu) / ((in1 + fr2.filter((_, i) => i % 2).reduce((s, x) => s + x, 0)) / 2 ** 30),
    });
  }
  pool.close();

  const f2 = (x) => x.toFixed(2);
  const kb = (x) => (x / KiB).toFixed(0);
  const out = [
    `pair: ${a.dir} (recipe ${meta.recipe}); floor ${(floor / MiB).toFixed(1)} MiB = ${meta.changedBlocks4k} changed 4 KiB blocks, zstd -3`,
    `first image measured on ${a.sample > 1 ? `1/${a.sample} of the disk (every ${a.sample}th 16 MiB region)` : 'the whole disk'}; zstd -3 -T0 stream of it: ${(zstdStream / MiB).toFixed(1)} MiB in ${zstdSeconds.toFixed(1)} s`,
    `hashing (sha256, 16 KiB, both disks): ${hashCpu.toFixed(1)} s CPU`,
    `v1 non-zero blocks that repeat an earlier block (stored once): ${rows
      .map((r) => `${r.blockKiB} KiB ${(100 * r.duplicateBlocksV1).toFixed(1)}%`)
      .filter((x, i, all) => all.indexOf(x) === i)
      .join(', ')}`,
    '',
    '| block | compressed as | first vs zstd -3 | download vs floor (full index / structural index patch) | upload vs floor | index v1 (KiB, zstd) | index v2 patch: zstd --patch-from / structural (KiB) | index at 60 GB compressed (MB) | lazy miss fetch (KiB) | zstd CPU s/GiB | fresh pull of v2: ranges / bytes read vs live / dead share of v1 pack |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.blockKiB} KiB | ${r.unit} | ${f2(r.firstVsZstd)}x | ${f2(r.downloadVsFloor)}x / ${f2(r.downloadPatchVsFloor)}x | ${f2(r.uploadVsFloor)}x | ${kb(r.indexV1)} | ${kb(r.indexPatch)} / ${kb(r.indexPatchStructural)} | ${(r.index60GB / 1e6).toFixed(1)} | ${r.missKiB.toFixed(0)} | ${f2(r.cpuSecPerGiB)} | ${r.freshRanges} / ${f2(r.freshReadVsLive)}x / ${(100 * r.deadInBasePack).toFixed(1)}% |`,
    ),
    '',
    `run time ${((Date.now() - tStart) / 1000).toFixed(0)} s (load average ${execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).split(' ')[0]})`,
  ];
  process.stdout.write(out.join('\n') + '\n');
  if (a.json)
    fs.writeFileSync(
      a.json,
      JSON.stringify({ meta, zstdStream, zstdSeconds, hashCpu, sample: a.sample, rows }, null, 2),
    );
}

if (isMainThread) await main();
