#!/usr/bin/env node
// Conversion benchmark: orb convert against the tools people run by hand, each figure a ratio
// measured in the same run (rounds interleaved, best of each kept, so a busy machine slows both
// sides alike):
//   qcow2+zstd   orb convert --format qcow2        vs qemu-img convert -c -o compression_type=zstd  (<= 1.1x)
//   raw.zst      orb convert --format raw.zst -3   vs zstd -T0 -3                                   (<= 1.1x)
//   chunked      orb convert --format chunked -3   vs zstd -T0 -3   (<= 1.0x time, <= 1.03x size)
//   peak memory  RSS of orb and its children < 512 MiB, also on a sparse disk of 64 GiB virtual
// plus the pull-side decode speed and `orb bench` predictions checked against full runs (the
// chunked format's block and pack study is bench/chunked.bench.mjs).
//
// The test image is an ext4 file system built without root (mkfs.ext4 -d) from real files under
// /usr, cached in .cache/bench/. Uses the built CLI (bin/orb.js -> dist/). Writes
// bench/results/convert.json. Environment: ORB_BENCH_ROUNDS (default 2), ORB_BENCH_SPARSE_GIB
// (default 64), ORB_BENCH_QUICK=1 (smaller image, for trying the script).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { timed } = await import(join(root, 'bench/timed.mjs'));
const MiB = 1 << 20;
const GiB = 1 << 30;
const QUICK = process.env.ORB_BENCH_QUICK === '1';
const ROUNDS = Number(process.env.ORB_BENCH_ROUNDS || 2);
const SPARSE = Number(process.env.ORB_BENCH_SPARSE_GIB || (QUICK ? 16 : 64)) * GiB;
const cache = join(root, '.cache', 'bench');
const work = join(cache, 'work');
const orbBin = join(root, 'bin/orb.js');
mkdirSync(cache, { recursive: true });
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
process.on('SIGINT', () => {
  rmSync(work, { recursive: true, force: true });
  process.exit(130);
});

const fmtB = (n) => (n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / MiB).toFixed(1)} MiB`);
const log = (s) => process.stderr.write(s + '\n');

const orb = (args) => timed(process.execPath, [orbBin, ...args]);
const size = (p) => {
  const st = statSync(p);
  if (!st.isDirectory()) return st.size;
  return readdirSync(p, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .reduce((s, e) => s + statSync(join(e.parentPath, e.name)).size, 0);
};

// ---------------------------------------------------------------- test images
function buildFsImage() {
  const dirs = QUICK
    ? ['/usr/share']
    : ['/usr/lib/x86_64-linux-gnu', '/usr/share', '/usr/bin', '/usr/lib/jvm', '/usr/lib/llvm-14'].filter(
        existsSync,
      );
  const virtual = QUICK ? 2 * GiB : 6 * GiB;
  const key = createHash('sha256')
    .update(JSON.stringify({ v: 2, dirs, virtual }))
    .digest('hex')
    .slice(0, 12);
  const img = join(cache, `fs-${key}.raw`);
  if (existsSync(img)) return img;
  log(`building the test image from ${dirs.join(', ')} (once; cached as ${img})`);
  const src = join(cache, `src-${process.pid}`);
  mkdirSync(src, { recursive: true });
  for (const d of dirs) {
    // hard links when /usr is on the same file system (no copy), a copy otherwise
    try {
      execFileSync('cp', ['-al', d, src], { stdio: 'ignore' });
    } catch {
      execFileSync('cp', ['-a', d, src], { stdio: 'ignore' });
    }
  }
  const tmp = `${img}.building`;
  try {
    execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', src, tmp, `${virtual / MiB}M`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
  renameSync(tmp, img);
  return img;
}

/** A sparse disk of `virtual` bytes with 512 MiB of the file-system image's data spread over it. */
function buildSparse(fsImg, virtual) {
  const img = join(cache, `sparse-${virtual / GiB}g.raw`);
  if (existsSync(img)) return img;
  const src = openSync(fsImg, 'r');
  const tmp = `${img}.building`;
  const dst = openSync(tmp, 'w');
  const buf = Buffer.alloc(8 * MiB);
  const fsSize = statSync(fsImg).size;
  for (let i = 0; i < 64; i++) {
    const from = Math.floor((i * (fsSize - buf.length)) / 64 / MiB) * MiB;
    const n = readSync(src, buf, 0, buf.length, from);
    writeSync(dst, buf, 0, n, Math.floor(((i + 0.5) * virtual) / 64 / MiB) * MiB);
  }
  closeSync(src);
  closeSync(dst);
  execFileSync('truncate', ['-s', String(virtual), tmp]);
  renameSync(tmp, img);
  return img;
}

// ---------------------------------------------------------------- main comparisons
const fsImg = buildFsImage();
const sparse = buildSparse(fsImg, SPARSE);
const allocated = Number(execFileSync('stat', ['-c', '%b', fsImg], { encoding: 'utf8' })) * 512;
log(
  `image: ${fsImg}: ${fmtB(statSync(fsImg).size)} virtual, ${fmtB(allocated)} allocated; ${availableParallelism()} cores`,
);
execFileSync('cat', [fsImg], { stdio: ['ignore', 'ignore', 'ignore'] }); // warm the page cache for both sides alike

const cases = {
  'qemu-img qcow2+zstd': () =>
    timed('qemu-img', [
      'convert',
      '-c',
      '-f',
      'raw',
      '-O',
      'qcow2',
      '-o',
      'compression_type=zstd',
      fsImg,
      join(work, 'ref.qcow2'),
    ]),
  'orb qcow2+zstd': () =>
    orb(['convert', fsImg, '--output', join(work, 'orb.qcow2'), '--format', 'qcow2', '--json']),
  'zstd -T0 -3': () => timed('zstd', ['-q', '-f', '-T0', '-3', fsImg, '-o', join(work, 'ref.zst')]),
  'orb raw.zst -3': () =>
    orb([
      'convert',
      fsImg,
      '--output',
      join(work, 'orb.raw.zst'),
      '--format',
      'raw.zst',
      '--level',
      '3',
      '--json',
    ]),
  'orb chunked -3': () =>
    orb([
      'convert',
      fsImg,
      '--output',
      join(work, 'orb.chunked'),
      '--format',
      'chunked',
      '--level',
      '3',
      '--json',
    ]),
};
const outputs = {
  'qemu-img qcow2+zstd': 'ref.qcow2',
  'orb qcow2+zstd': 'orb.qcow2',
  'zstd -T0 -3': 'ref.zst',
  'orb raw.zst -3': 'orb.raw.zst',
  'orb chunked -3': 'orb.chunked',
};
const best = {};
const loadStart = loadavg()[0];
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, fn] of Object.entries(cases)) {
    rmSync(join(work, outputs[name]), { recursive: true, force: true });
    rmSync(join(work, outputs[name] + '.orb.json'), { force: true });
    const r = await fn();
    const bytes = size(join(work, outputs[name]));
    log(
      `  round ${round + 1}: ${name.padEnd(22)} ${r.seconds.toFixed(2).padStart(7)} s  cpu ${r.cpu.toFixed(1).padStart(5)} s  ${fmtB(bytes).padStart(11)}  peak RSS ${fmtB(r.peak)}  (load ${loadavg()[0].toFixed(1)})`,
    );
    const b = best[name];
    if (!b || r.seconds < b.seconds)
      best[name] = {
        seconds: r.seconds,
        cpu: Math.min(r.cpu, b?.cpu ?? Infinity),
        bytes,
        peak: Math.max(r.peak, b?.peak ?? 0),
        json: r.out.trim().startsWith('{') ? JSON.parse(r.out) : undefined,
      };
    else {
      b.peak = Math.max(b.peak, r.peak);
      b.cpu = Math.min(b.cpu, r.cpu);
    }
  }
}
// the orb outputs decode to the input (independent checks)
execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', fsImg, join(work, 'orb.qcow2')]);
await orb([
  'convert',
  join(work, 'orb.chunked'),
  '--output',
  join(work, 'decoded.raw'),
  '--format',
  'raw',
  '--json',
]);
execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', fsImg, join(work, 'decoded.raw')]);
rmSync(join(work, 'decoded.raw'), { force: true });

// ---------------------------------------------------------------- memory on a huge sparse disk
const sparseRuns = {};
for (const format of ['chunked', 'qcow2']) {
  const out = join(work, `sparse.${format}`);
  const r = await orb(['convert', sparse, '--output', out, '--format', format, '--json']);
  sparseRuns[format] = { seconds: r.seconds, peak: r.peak, bytes: size(out) };
  log(
    `  sparse ${fmtB(SPARSE)} -> ${format.padEnd(8)} ${r.seconds.toFixed(1).padStart(6)} s  ${fmtB(size(out)).padStart(11)}  peak RSS ${fmtB(r.peak)}`,
  );
  rmSync(out, { recursive: true, force: true });
}

// ---------------------------------------------------------------- orb bench predictions
const reportPath = join(work, 'bench.json');
await orb([
  'bench',
  fsImg,
  '--full',
  '--methods',
  'qcow2-zstd,zstd-3,chunked,lz4',
  '--sample-size',
  '256M',
  '--report',
  reportPath,
  '--json',
]);
const rep = JSON.parse(readFileSync(reportPath, 'utf8'));
const predictions = rep.methods.map((m) => ({
  method: m.id,
  predictedBytes: m.predicted.outBytes,
  fullBytes: m.full?.outBytes,
  sizeErrorPct: m.full?.sizeErrorPct,
  predictedSeconds: m.predicted.compressSeconds,
  fullSeconds: m.full?.compressSeconds,
  timeErrorPct: m.full?.timeErrorPct,
}));

// ---------------------------------------------------------------- claims
const q = (k) => best[k];
const claims = [
  {
    claim: 'qcow2+zstd time vs qemu-img convert -c zstd',
    value: q('orb qcow2+zstd').seconds / q('qemu-img qcow2+zstd').seconds,
    limit: 1.1,
  },
  {
    claim: 'raw.zst -3 time vs zstd -T0 -3',
    value: q('orb raw.zst -3').seconds / q('zstd -T0 -3').seconds,
    limit: 1.1,
  },
  {
    claim: 'chunked -3 time vs zstd -T0 -3',
    value: q('orb chunked -3').seconds / q('zstd -T0 -3').seconds,
    limit: 1.0,
  },
  {
    claim: 'chunked -3 size vs zstd -T0 -3',
    value: q('orb chunked -3').bytes / q('zstd -T0 -3').bytes,
    limit: 1.03,
  },
  {
    claim: 'peak RSS of orb + children (MiB, all runs)',
    value:
      Math.max(
        ...Object.entries(best)
          .filter(([k]) => k.startsWith('orb'))
          .map(([, v]) => v.peak),
        ...Object.values(sparseRuns).map((r) => r.peak),
      ) / MiB,
    limit: 512,
  },
];
for (const c of claims) c.ok = c.value <= c.limit;

log('');
log('case                        seconds   cpu s       size   peak RSS');
for (const [k, v] of Object.entries(best))
  log(
    `${k.padEnd(24)} ${v.seconds.toFixed(2).padStart(10)} ${v.cpu.toFixed(1).padStart(7)} ${fmtB(v.bytes).padStart(10)} ${fmtB(v.peak).padStart(10)}`,
  );
// CPU time does not depend on what else runs; wall time does (the claims are on wall time)
log(
  `cpu ratios: qcow2 ${(q('orb qcow2+zstd').cpu / q('qemu-img qcow2+zstd').cpu).toFixed(2)}, raw.zst ${(q('orb raw.zst -3').cpu / q('zstd -T0 -3').cpu).toFixed(2)}, chunked ${(q('orb chunked -3').cpu / q('zstd -T0 -3').cpu).toFixed(2)}; load average ${loadStart.toFixed(1)} at start, ${loadavg()[0].toFixed(1)} at end on ${availableParallelism()} cores`,
);
if (loadStart > availableParallelism() * 0.5)
  log(
    'warning: the machine was busy; wall-time ratios favour tools that run more threads than there are cores',
  );
log('');
log('claim                                          ratio   limit');
for (const c of claims)
  log(
    `${c.ok ? 'ok  ' : 'FAIL'} ${c.claim.padEnd(42)} ${c.value.toFixed(3).padStart(7)} ${String(c.limit).padStart(7)}`,
  );
log('');
log('orb bench predictions (sample 256 MiB) vs full runs:');
for (const p of predictions)
  log(
    `  ${p.method.padEnd(11)} size ${fmtB(p.predictedBytes)} vs ${p.fullBytes ? fmtB(p.fullBytes) : '-'} (${p.sizeErrorPct?.toFixed(1) ?? '-'}%), time ${p.predictedSeconds.toFixed(1)} s vs ${p.fullSeconds?.toFixed(1) ?? '-'} s (${p.timeErrorPct?.toFixed(1) ?? '-'}%)`,
  );

mkdirSync(join(root, 'bench/results'), { recursive: true });
writeFileSync(
  join(root, 'bench/results/convert.json'),
  JSON.stringify(
    {
      date: new Date().toISOString(),
      cores: availableParallelism(),
      loadAverage: { start: loadStart, end: loadavg()[0] },
      image: { virtualBytes: statSync(fsImg).size, allocatedBytes: allocated },
      rounds: ROUNDS,
      best,
      sparse: { virtualBytes: SPARSE, runs: sparseRuns },
      predictions,
      recommended: rep.recommended,
      claims,
    },
    (k, v) => (k === 'json' ? undefined : v),
    2,
  ) + '\n',
);
rmSync(work, { recursive: true, force: true });
process.exitCode = claims.every((c) => c.ok) ? 0 : 1;
