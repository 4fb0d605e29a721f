#!/usr/bin/env node
// Lazy boot benchmark (issue 16): a real Debian 12 guest (systemd, xrdp; src/guest/debian.ts,
// cached by recipe) converted to a chunked v2 image, published to docker-registry on 127.0.0.1,
// and read back through a byte-counting proxy in the same run:
//   (a) `orb smoke-test` through the lazy export: bytes on the wire / the image's compressed
//       bytes (claim: at most 25%) and seconds from the command's start to RDP answering;
//   (b) the whole image fetched first (`orb pull`), then booted: seconds to RDP;
//   (c) (a) again after `orb publish --boot-profile` attached the profile (a) recorded.
// One boot per variant (TCG is slow). Exits 1 when the 25% claim fails.
// Run standalone (`node bench/lazy-boot.bench.mjs`, after `npm run build`) or through bench/run.mjs.
// Environment: ORB_BENCH_DIR (work folder), ORB_BENCH_ACCEL (default tcg), ORB_BENCH_TIMEOUT (s, default 1500).
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { registerHooks } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// The registry helper is TypeScript importing its siblings by their .js names.
registerHooks({
  resolve(spec, ctx, next) {
    try {
      return next(spec, ctx);
    } catch (err) {
      if (spec.endsWith('.js') && ctx.parentURL?.endsWith('.ts')) return next(spec.slice(0, -3) + '.ts', ctx);
      throw err;
    }
  },
});
const { startRegistry } = await import(join(root, 'test/helpers/registry.ts'));
const { buildDebianImage } = await import(join(root, 'lib/guest/debian.js'));

const CLAIM = 0.25;
const ACCEL = process.env.ORB_BENCH_ACCEL || 'tcg';
const TIMEOUT = process.env.ORB_BENCH_TIMEOUT || '1500';
const MB = 1e6;

function orb(args, label) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, [join(root, 'bin/orb.js'), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ORB_PROGRESS_INTERVAL_MS: '60000' },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      err += d;
      for (const line of String(d).split('\n'))
        if (/RDP answered|lazily|boot profile|error/.test(line))
          process.stderr.write(`  [${label}] ${line}\n`);
    });
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code !== 0) reject(new Error(`orb ${args[0]} (${label}) failed (${code}): ${err.slice(-1500)}`));
      else resolve({ out: out.trim() ? JSON.parse(out) : {}, err, seconds });
    });
  });
}

/** A reverse proxy in front of the registry counting the bytes of every response body. */
async function countingProxy(target) {
  const t = new URL(target);
  const stats = { bytes: 0, requests: 0 };
  const server = http.createServer((req, res) => {
    stats.requests++;
    const up = http.request(
      { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.on('data', (c) => (stats.bytes += c.length));
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    host: `127.0.0.1:${server.address().port}`,
    stats,
    reset: () => Object.assign(stats, { bytes: 0, requests: 0 }),
    stop: () => new Promise((r) => server.close(r)),
  };
}

/** `orb convert --format chunked`: the image every variant below boots. */
async function convert(raw, dir) {
  const out = join(dir, 'orb-convert');
  await orb(['convert', raw, '--format', 'chunked', '--output', out, '--tag', 'v1', '--json'], 'convert');
  const idx = JSON.parse(readFileSync(join(out, 'index.json'), 'utf8'));
  const m = JSON.parse(readFileSync(join(out, 'blobs', 'sha256', idx.manifests[0].digest.slice(7)), 'utf8'));
  const compressedBytes = [m.config, ...m.layers].reduce((n, d) => n + d.size, 0) + idx.manifests[0].size;
  return { layout: out, compressedBytes, via: 'orb convert --format chunked' };
}

/** `orb pull` of everything (verified), the boot-after-download reference. */
async function fullFetch(ref, out) {
  await orb(['pull', ref, '--output', out, '--json'], 'pull');
  return 'orb pull';
}

/** Where the lazy boot's bytes went: blocks read, frames touched, how compressible they were. */
async function analyse(layout, profilePath) {
  await import(join(root, 'lib/stores/schemes.js'));
  const { openStore } = await import(join(root, 'lib/stores/open.js'));
  const { openDiskV2 } = await import(join(root, 'lib/serve/open-image.js'));
  const { decodeBootProfile } = await import(join(root, 'lib/formats/boot-profile.js'));
  const log = { info() {}, warn() {}, error() {}, debug() {} };
  const opened = await openStore(`oci-layout:${layout}:v1`, { log, options: {} });
  const { index: idx } = await openDiskV2(opened.store, 'v1', layout);
  const { blocks } = decodeBootProfile(readFileSync(profilePath), idx);
  const { BlockMap } = await import(join(root, 'lib/serve/block-map.js'));
  const map = new BlockMap(idx);
  const frames = new Set();
  let blockOnly = 0;
  for (const b of blocks) {
    const e = map.entryOf(b);
    if (e < 0) continue;
    const f = idx.entryFrame[e];
    frames.add(f);
    blockOnly += idx.frameLength[f] / idx.frameBlocks[f];
  }
  let compressed = 0;
  let frameBlocks = 0;
  let incompressible = 0;
  for (const f of frames) {
    compressed += idx.frameLength[f];
    frameBlocks += idx.frameBlocks[f];
    if (idx.frameLength[f] > 0.9 * idx.frameBlocks[f] * idx.blockSize) incompressible += idx.frameLength[f];
  }
  return {
    blocksRead: blocks.length,
    readBytes: blocks.length * idx.blockSize,
    frames: frames.size,
    frameBlocks,
    compressed,
    incompressible,
    blockOnly: Math.round(blockOnly),
  };
}

async function main() {
  const work = mkdtempSync(join(process.env.ORB_BENCH_DIR || tmpdir(), 'orb-lazy-bench-'));
  const reg = await startRegistry();
  const proxy = await countingProxy(reg.url);
  const smoke = [
    '--accelerator',
    ACCEL,
    '--timeout',
    TIMEOUT,
    '--memory',
    '1G',
    '--json',
    '--screenshot-interval',
    '30',
  ];
  try {
    const t0 = Date.now();
    const raw = await buildDebianImage({ log: (l) => process.stderr.write(`debian image: ${l}\n`) });
    process.stderr.write(`Debian guest ${raw} (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
    const conv = await convert(raw, work);
    const direct = `oci://${reg.host}/bench/debian:v1`;
    const viaProxy = `oci://${proxy.host}/bench/debian:v1`;
    await orb(['publish', `oci-layout:${conv.layout}:v1`, '--to', direct, '--json'], 'publish');
    process.stderr.write(`published ${(conv.compressedBytes / MB).toFixed(1)} MB compressed (${conv.via})\n`);

    proxy.reset();
    const a = await orb(
      ['smoke-test', '--image', viaProxy, ...smoke, '--evidence-dir', join(work, 'ev-lazy')],
      'lazy',
    );
    const lazy = {
      wire: proxy.stats.bytes,
      requests: proxy.stats.requests,
      rdp: a.out['seconds-to-rdp-total'],
      reported: a.out['bytes-fetched'],
      lazy: a.out.lazy,
    };

    proxy.reset();
    const t1 = process.hrtime.bigint();
    const via = await fullFetch(viaProxy, join(work, 'full.img'));
    const fetchSeconds = Number(process.hrtime.bigint() - t1) / 1e9;
    const fullWire = proxy.stats.bytes;
    const b = await orb(
      ['smoke-test', '--image', join(work, 'full.img'), ...smoke, '--evidence-dir', join(work, 'ev-full')],
      'pull-then-boot',
    );
    const full = { wire: fullWire, fetchSeconds, rdp: fetchSeconds + b.out['seconds-to-rdp-total'], via };
    rmSync(join(work, 'full.img'), { force: true });

    await orb(
      [
        'publish',
        `oci-layout:${conv.layout}:v1`,
        '--to',
        direct,
        '--boot-profile',
        a.out['boot-profile'],
        '--json',
      ],
      'publish profile',
    );
    proxy.reset();
    const c = await orb(
      ['smoke-test', '--image', viaProxy, ...smoke, '--evidence-dir', join(work, 'ev-profiled')],
      'lazy+profile',
    );
    const profiled = {
      wire: proxy.stats.bytes,
      rdp: c.out['seconds-to-rdp-total'],
      blocks: a.out['boot-profile-blocks'],
    };

    const why = await analyse(conv.layout, a.out['boot-profile']);
    const frac = (n) => n / conv.compressedBytes;
    const pct = (n) => `${(100 * frac(n)).toFixed(1)}%`;
    console.log(
      `\nlazy boot of a Debian 12 guest (${ACCEL}), image ${(conv.compressedBytes / MB).toFixed(1)} MB compressed:`,
    );
    console.log(
      `  (a) lazy smoke-test      ${(lazy.wire / MB).toFixed(1).padStart(8)} MB on the wire (${pct(lazy.wire)})  RDP after ${lazy.rdp} s`,
    );
    console.log(
      `  (b) ${full.via.padEnd(20)}${(full.wire / MB).toFixed(1).padStart(8)} MB on the wire (${pct(full.wire)})  RDP after ${full.rdp.toFixed(1)} s (fetch ${full.fetchSeconds.toFixed(1)} s)`,
    );
    console.log(
      `  (c) lazy + boot profile  ${(profiled.wire / MB).toFixed(1).padStart(8)} MB on the wire (${pct(profiled.wire)})  RDP after ${profiled.rdp} s (${profiled.blocks} blocks)`,
    );
    console.log(
      `  time to RDP, lazy / pull-then-boot: ${(lazy.rdp / full.rdp).toFixed(2)}; with the profile: ${(profiled.rdp / full.rdp).toFixed(2)}`,
    );
    console.log(
      `  the boot read ${why.blocksRead} blocks (${(why.readBytes / MB).toFixed(1)} MB) in ${why.frames} frames holding ${why.frameBlocks} blocks ` +
        `(${(why.frameBlocks / why.blocksRead).toFixed(2)}x); those frames are ${(why.compressed / MB).toFixed(1)} MB compressed, ` +
        `${(why.incompressible / MB).toFixed(1)} MB of it in frames that do not compress (ratio > 0.9: kernel, initramfs); ` +
        `fetching only the blocks read would take about ${(why.blockOnly / MB).toFixed(1)} MB (${pct(why.blockOnly)})`,
    );
    const ok = frac(lazy.wire) <= CLAIM;
    console.log(
      `  claim: a lazy boot fetches at most ${CLAIM * 100}% of the compressed image: ${ok ? 'holds' : 'FAILS'}`,
    );
    const result = {
      accelerator: ACCEL,
      converter: conv.via,
      compressedBytes: conv.compressedBytes,
      lazy: { ...lazy, fraction: frac(lazy.wire) },
      full,
      profiled: { ...profiled, fraction: frac(profiled.wire) },
      rdpRatio: lazy.rdp / full.rdp,
      boot: why,
      claim: { maxFraction: CLAIM, holds: ok },
    };
    mkdirSync(join(root, 'bench/results'), { recursive: true });
    writeFileSync(join(root, 'bench/results/lazy-boot.json'), JSON.stringify(result, null, 2) + '\n');
    if (!ok) process.exitCode = 1;
  } finally {
    await proxy.stop();
    await reg.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
