#!/usr/bin/env node
// Prototype of `orb digest` for format v2 (docs/chunked-format.md, "Content identity"), to
// measure that its cost follows the data, not the disk size:
//
//   nice npx node bench/studies/v2-digest.mjs DISK.raw [DISK2.raw ...] [--workers 2]
//
// Data extents come from `qemu-img map` (SEEK_DATA/SEEK_HOLE on raw files), so holes are never
// read; the 32 KiB blocks inside data are hashed in worker threads; all-zero blocks and holes
// become zero runs. Prints the root, bytes read and wall/CPU time per disk.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';

const B = 32 * 1024;
const LOG2B = 15;

if (!isMainThread) {
  // worker: hash blocks [first, last) of a file; zero blocks get an all-zero digest slot
  parentPort.on('message', ({ id, file, first, last }) => {
    const fd = fs.openSync(file, 'r');
    const out = Buffer.alloc((last - first) * 32);
    const zero = Buffer.alloc(B);
    const buf = Buffer.alloc(4 << 20);
    const t0 = process.threadCpuUsage();
    for (let b = first; b < last;) {
      const n = Math.min(last - b, buf.length / B);
      const got = fs.readSync(fd, buf, 0, n * B, b * B);
      if (got < n * B) buf.fill(0, got, n * B); // the last block is zero-padded
      for (let k = 0; k < n; k++) {
        const blk = buf.subarray(k * B, (k + 1) * B);
        if (!blk.equals(zero))
          createHash('sha256')
            .update(blk)
            .digest()
            .copy(out, (b + k - first) * 32);
      }
      b += n;
    }
    fs.closeSync(fd);
    const t = process.threadCpuUsage(t0);
    parentPort.postMessage({ id, out, cpu: (t.user + t.system) / 1e6 }, [out.buffer]);
  });
}

/** Block ranges holding data, from qemu-img map (allocation, not content). */
function dataBlocks(file) {
  const map = JSON.parse(
    execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', file], {
      encoding: 'utf8',
      maxBuffer: 1 << 28,
    }),
  );
  const ranges = [];
  for (const e of map) {
    if (e.zero || !e.data) continue;
    const first = Math.floor(e.start / B);
    const last = Math.ceil((e.start + e.length) / B);
    const prev = ranges[ranges.length - 1];
    if (prev && prev[1] >= first) prev[1] = Math.max(prev[1], last);
    else ranges.push([first, last]);
  }
  return ranges;
}

async function digest(file, workers) {
  const t0 = Date.now();
  const size = fs.statSync(file).size;
  const nblocks = Math.ceil(size / B);
  const ranges = dataBlocks(file);
  // split into tasks of at most 64 MiB so both workers stay busy
  const tasks = [];
  for (const [f, l] of ranges) for (let s = f; s < l; s += 2048) tasks.push([s, Math.min(l, s + 2048)]);
  let next = 0;
  let cpu = 0;
  const results = new Array(tasks.length);
  await Promise.all(
    workers.map(
      (w) =>
        new Promise((resolve) => {
          const pump = () => {
            if (next >= tasks.length) return resolve();
            const id = next++;
            w.once('message', (m) => {
              results[m.id] = Buffer.from(m.out.buffer, m.out.byteOffset, m.out.byteLength);
              cpu += m.cpu;
              pump();
            });
            w.postMessage({ id, file, first: tasks[id][0], last: tasks[id][1] });
          };
          pump();
        }),
    ),
  );
  // root over ordered records: maximal zero runs and non-zero block digests
  const h = createHash('sha256');
  const head = Buffer.alloc(12 + 8 + 1);
  head.write('orb-disk-v2\0', 0, 'latin1');
  head.writeBigUInt64LE(BigInt(size), 12);
  head.writeUInt8(LOG2B, 20);
  h.update(head);
  const zero32 = Buffer.alloc(32);
  let run = 0;
  let at = 0;
  let dataBytes = 0;
  const flush = () => {
    if (!run) return;
    const r = Buffer.alloc(9);
    r.writeBigUInt64LE(BigInt(run), 1);
    h.update(r);
    run = 0;
  };
  tasks.forEach(([f, l], i) => {
    run += f - at; // hole before this task
    dataBytes += (l - f) * B;
    for (let k = 0; k < l - f; k++) {
      const d = results[i].subarray(k * 32, k * 32 + 32);
      if (d.equals(zero32)) run++;
      else {
        flush();
        h.update(Buffer.from([1]));
        h.update(d);
      }
    }
    at = l;
  });
  run += nblocks - at;
  flush();
  return {
    file,
    root: `orb2:sha256:${h.digest('hex')}`,
    virtual: size,
    dataBytes,
    seconds: (Date.now() - t0) / 1000,
    cpu,
  };
}

if (isMainThread) {
  const args = process.argv.slice(2);
  const wi = args.indexOf('--workers');
  const n = wi >= 0 ? Number(args.splice(wi, 2)[1]) : 2;
  const workers = Array.from({ length: n }, () => new Worker(fileURLToPath(import.meta.url)));
  for (const f of args) {
    const r = await digest(f, workers);
    process.stdout.write(
      `${r.root}  ${f}: virtual ${(r.virtual / 2 ** 30).toFixed(0)} GiB, read ${(r.dataBytes / 2 ** 30).toFixed(2)} GiB, ${r.seconds.toFixed(1)} s wall, ${r.cpu.toFixed(1)} s hashing CPU\n`,
    );
  }
  for (const w of workers) w.terminate();
}
