#!/usr/bin/env node
// Stores benchmark (issue 5): S3 publish/pull of a multi-GiB image against the AWS SDK's own
// Upload/GetObject moving the same bytes with the same concurrency, both against s3rver on
// loopback; and a ranged parallel HTTP download against curl from the same static server
// (busybox httpd). Prints a table of ratios (ours / reference speed; >= 0.9 is the target) and
// writes bench/results/stores.json. Uses lib/ (npm run build). ORB_BENCH_GIB sets the image size.
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  readFileSync,
  mkdtempSync,
  rmSync,
  writeFileSync,
  mkdirSync,
  openSync,
  writeSync,
  closeSync,
} from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const lib = (p) => import(join(root, 'lib', p));
const { S3Client, GetObjectCommand } = await import('@aws-sdk/client-s3');
const { Upload } = await import('@aws-sdk/lib-storage');
const { S3Store, parseS3Ref } = await lib('stores/s3.js');
const { HttpsStore } = await lib('stores/https.js');
const { RemoteFile } = await lib('stores/https-file.js');
const { publish } = await lib('transfer/publish.js');
const { pull } = await lib('transfer/pull.js');
const { OciLayout } = await lib('oci/layout.js');

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const SIZE = Math.round(Number(process.env.ORB_BENCH_GIB ?? 2) * GiB);
const CHUNK = 32 * MiB;
const CONCURRENCY = 4;
const ROUNDS = Number(process.env.ORB_BENCH_ROUNDS ?? 3);
// the single-object cases move the first OBJECT bytes of the image (s3rver is slow at multipart)
const OBJECT = Math.min(SIZE, 1 * GiB);
const silent = { info() {}, warn() {}, error() {}, debug() {} };
const progress = () => ({ add() {}, set() {}, setTotal() {}, done() {} });
const dir = mkdtempSync(join(tmpdir(), 'orb-bench-stores-'));
const children = [];
const cleanup = () => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

const log = (m) => process.stderr.write(m + '\n');

async function freePort() {
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => res(p));
    });
  });
}

// ---------- data: one random file, and the same disk as a chunked layout (orb convert) ----------
log(`preparing a ${(SIZE / GiB).toFixed(1)} GiB image in ${dir}`);
const file = join(dir, 'disk.img');
const layoutDir = join(dir, 'layout');
{
  const fd = openSync(file, 'w');
  const whole = createHash('sha256');
  const first = createHash('sha256');
  const buf = Buffer.allocUnsafe(CHUNK);
  for (let off = 0; off < SIZE; off += CHUNK) {
    const n = Math.min(CHUNK, SIZE - off);
    const chunk = buf.subarray(0, n);
    randomFillSync(chunk);
    writeSync(fd, chunk, 0, n, off);
    whole.update(chunk);
    if (off < OBJECT) first.update(chunk.subarray(0, Math.min(n, OBJECT - off)));
  }
  closeSync(fd);
  // the real encoder; 32 MiB packs keep about as many blobs as before for the per-blob SDK side
  const args = ['convert', file, '--output', layoutDir, '--format', 'chunked', '--tag', 'v1'];
  const conv = spawnSync(
    process.execPath,
    [join(root, 'bin/orb.js'), ...args, '--pack-size', String(CHUNK), '--json'],
    { encoding: 'utf8', maxBuffer: 1 << 24, env: { ...process.env, ORB_PROGRESS_INTERVAL_MS: '600000' } },
  );
  if (conv.status !== 0) throw new Error(`orb convert failed: ${conv.stderr.slice(-800)}`);
  const out = JSON.parse(conv.stdout);
  const manifest = JSON.parse(
    readFileSync(new OciLayout(layoutDir).blobPath(out['manifest-digest']), 'utf8'),
  );
  // index and packs: the blobs both sides move
  const layers = manifest.layers;
  var image = {
    fileSha256: 'sha256:' + whole.digest('hex'),
    contentDigest: out['content-digest'],
    layers,
    bytes: layers.reduce((a, l) => a + l.size, 0),
    objectDigest: 'sha256:' + first.digest('hex'),
  };
}
const fileHex = image.fileSha256.slice(7);

// ---------- s3rver in its own process (so it does not share our event loop) ----------
const s3port = await freePort();
const s3dir = join(dir, 's3');
mkdirSync(s3dir);
const s3rver = spawn(
  process.execPath,
  [
    '--input-type=module',
    '-e',
    `import S3rver from 's3rver'; const s = new S3rver({ port: ${s3port}, address: '127.0.0.1', silent: true, directory: ${JSON.stringify(s3dir)}, configureBuckets: [{ name: 'bench' }] }); await s.run(); console.log('ready');`,
  ],
  { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] },
);
children.push(s3rver);
await new Promise((res, rej) => {
  s3rver.stdout.on('data', (d) => String(d).includes('ready') && res());
  s3rver.on('exit', (c) => rej(new Error(`s3rver exited ${c}`)));
});
const endpoint = `http://127.0.0.1:${s3port}`;
process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
// The reference: the SDK as users get it (default checksum behaviour), same agent limits.
const sdk = new S3Client({
  endpoint,
  forcePathStyle: true,
  region: 'us-east-1',
  requestHandler: { httpAgent: { keepAlive: true, maxSockets: 64 } },
});
const store = (prefix, extra = {}) =>
  new S3Store(parseS3Ref(`s3://bench/${prefix}`), {
    endpoint,
    pathStyle: true,
    log: silent,
    concurrency: CONCURRENCY,
    connections: CONCURRENCY,
    ...extra,
  });

async function pool(items, n, fn) {
  let i = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (i < items.length) await fn(items[i++]);
    }),
  );
}

async function time(fn) {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Positional writes of a stream into an open file. */
async function writeAt(fh, stream, at) {
  let pos = at;
  for await (const c of stream) {
    let done = 0;
    while (done < c.length) done += (await fh.write(c, done, c.length - done, pos + done)).bytesWritten;
    pos += c.length;
  }
}

/** N ranged GetObject requests in parallel, each a contiguous slice of the object. */
async function sdkRangedGet(key, size, out) {
  const fh = await open(out, 'w');
  await fh.truncate(size);
  const slice = Math.ceil(size / CONCURRENCY / MiB) * MiB;
  const slices = [];
  for (let s = 0; s < size; s += slice) slices.push([s, Math.min(size, s + slice) - 1]);
  await Promise.all(
    slices.map(async ([s, e]) => {
      const r = await sdk.send(new GetObjectCommand({ Bucket: 'bench', Key: key, Range: `bytes=${s}-${e}` }));
      await writeAt(fh, r.Body, s);
    }),
  );
  await fh.datasync(); // orb pull syncs its output before reporting success; so does the reference
  await fh.close();
}

const cases = [];
/** claim: the ratio must be >= 0.9 (the targets); info rows show the full cost alongside */
function measure(name, bytes, ours, reference, refName, claim = true) {
  cases.push({ name, bytes, ours, reference, refName, claim });
}

// 1. chunked image: orb publish / orb pull (engines + S3 store) vs SDK Upload / GetObject per blob
let round = 0;
measure(
  `S3 upload, chunked image (${image.layers.length} blobs of <= 32 MiB, ${CONCURRENCY} at once)`,
  image.bytes,
  async () => {
    const r = await publish({
      source: layoutDir,
      target: store(`ours${round}`),
      tags: ['v1'],
      concurrency: CONCURRENCY,
      partSize: 8 * GiB,
      log: silent,
      progress,
    });
    if (r.bytesUploaded < image.bytes) throw new Error('not everything was uploaded');
  },
  async () => {
    await pool(image.layers, CONCURRENCY, async (l) => {
      const up = new Upload({
        client: sdk,
        params: {
          Bucket: 'bench',
          Key: `ref${round}/blobs/${l.digest.slice(7)}`,
          Body: createReadStream(new OciLayout(layoutDir).blobPath(l.digest)),
        },
        queueSize: 1,
        partSize: 64 * MiB,
      });
      await up.done();
    });
  },
  'SDK Upload per blob',
);
measure(
  `S3 download, chunked image (orb pull, verified, ${CONCURRENCY} at once)`,
  image.bytes,
  async () => {
    const out = join(dir, 'pulled.raw');
    const r = await pull({
      source: store(`ours${round}`),
      ref: 'v1',
      display: 'bench',
      output: out,
      format: 'raw',
      concurrency: CONCURRENCY,
      log: silent,
      progress,
    });
    if (r.contentDigest !== image.contentDigest) throw new Error('content digest mismatch');
    await rm(out, { force: true });
  },
  async () => {
    // the same blobs into one file, each at its own offset (packs are zstd frames: no decoding)
    const out = join(dir, 'ref.raw');
    const fh = await open(out, 'w');
    await fh.truncate(image.bytes);
    const at = new Map();
    image.layers.reduce((o, l) => (at.set(l.digest, o), o + l.size), 0);
    await pool(image.layers, CONCURRENCY, async (l) => {
      const r = await sdk.send(
        new GetObjectCommand({ Bucket: 'bench', Key: `ref${round}/blobs/${l.digest.slice(7)}` }),
      );
      await writeAt(fh, r.Body, at.get(l.digest));
    });
    await fh.datasync();
    await fh.close();
    await rm(out, { force: true });
  },
  'SDK GetObject per blob',
);
// 2. one big object: multipart upload (16 MiB parts) and ranged parallel download
const fileDesc = { mediaType: 'application/octet-stream', digest: image.objectDigest, size: OBJECT };
measure(
  `S3 upload, one ${(OBJECT / GiB).toFixed(1)} GiB object (multipart, 16 MiB parts, ${CONCURRENCY} at once)`,
  OBJECT,
  async () => {
    await store(`oursfile${round}`, { partSize: 16 * MiB }).putBlob(fileDesc, (offset) =>
      createReadStream(file, { start: offset, end: OBJECT - 1, highWaterMark: 1 << 20 }),
    );
  },
  async () => {
    const up = new Upload({
      client: sdk,
      params: {
        Bucket: 'bench',
        Key: `reffile${round}`,
        Body: createReadStream(file, { end: OBJECT - 1, highWaterMark: 1 << 20 }),
        // Upload takes the size from the file on disk otherwise
        ContentLength: OBJECT,
      },
      queueSize: CONCURRENCY,
      partSize: 16 * MiB,
    });
    await up.done();
  },
  'SDK Upload (same part size and queue)',
);
// store level: the bytes the S3 store delivers, written in order (verification is the pull engine's,
// measured in the chunked case above), against the same ranged requests made with the SDK
measure(
  `S3 download, one ${(OBJECT / GiB).toFixed(1)} GiB object, store level (${CONCURRENCY} ranged connections)`,
  OBJECT,
  async () => {
    const out = join(dir, 'oursfile.bin');
    const { stream } = await store(`oursfile${round}`).getBlob(fileDesc);
    const fh = await open(out, 'w');
    let pos = 0;
    for await (const c of stream) {
      let done = 0;
      while (done < c.length) done += (await fh.write(c, done, c.length - done, pos + done)).bytesWritten;
      pos += c.length;
    }
    await fh.datasync();
    await fh.close();
    if (pos !== OBJECT) throw new Error('short download');
    await rm(out, { force: true });
  },
  async () => {
    const out = join(dir, 'reffile.bin');
    await sdkRangedGet(`reffile${round}`, OBJECT, out);
    await rm(out, { force: true });
  },
  `SDK GetObject, ${CONCURRENCY} ranges`,
  false,
);

// 3. plain HTTP: ranged parallel download vs curl, same static server
const curl = spawnSync('curl', ['--version']).status === 0;
const busybox = spawnSync('busybox', ['--list']).stdout?.toString().includes('httpd');
let httpUrl;
if (curl && busybox) {
  const port = await freePort();
  const www = join(dir, 'www');
  mkdirSync(www);
  writeFileSync(join(www, 'placeholder'), '');
  // same bytes, served by busybox httpd (sendfile, Range support)
  spawnSync('ln', [file, join(www, 'disk.img')]);
  const httpd = spawn('busybox', ['httpd', '-f', '-p', `127.0.0.1:${port}`, '-h', www], { stdio: 'ignore' });
  children.push(httpd);
  await new Promise((r) => setTimeout(r, 300));
  httpUrl = `http://127.0.0.1:${port}/disk.img`;
  measure(
    `HTTP download of ${(SIZE / GiB).toFixed(1)} GiB (orb pull https://, 8 ranged connections, verified)`,
    SIZE,
    async () => {
      const out = join(dir, 'http.img');
      const r = await pull({
        source: new HttpsStore(`${httpUrl}#sha256=${fileHex}`, { log: silent, connections: 8 }),
        ref: 'latest',
        display: 'http',
        output: out,
        format: 'auto',
        concurrency: 1,
        log: silent,
        progress,
      });
      if (r.contentSha256 !== fileHex) throw new Error('digest mismatch');
      await rm(out, { force: true });
    },
    async () => {
      const out = join(dir, 'curl.img');
      const r = spawnSync('curl', ['-sS', '-o', out, httpUrl]);
      if (r.status !== 0) throw new Error(`curl failed: ${r.stderr}`);
      spawnSync('sync', [out]); // orb pull syncs its output; so does the reference
      await rm(out, { force: true });
    },
    'curl (one connection) + sync',
    false,
  );
  measure(
    `HTTP download of ${(SIZE / GiB).toFixed(1)} GiB, ranged downloader (store level, 8 connections, to disk)`,
    SIZE,
    async () => {
      const out = join(dir, 'http2.img');
      const f = new RemoteFile(httpUrl, { connections: 8, log: silent, what: 'bench' });
      const { stream } = await f.read(0);
      await pipeline(stream, createWriteStream(out, { highWaterMark: 8 << 20 }));
      await rm(out, { force: true });
    },
    async () => {
      const out = join(dir, 'curl2.img');
      const r = spawnSync('curl', ['-sS', '-o', out, httpUrl]);
      if (r.status !== 0) throw new Error(`curl failed: ${r.stderr}`);
      await rm(out, { force: true });
    },
    'curl (one connection)',
  );
} else log('curl or busybox httpd missing: skipping the HTTP case');

// Run: each case ROUNDS times, ours and reference alternating which goes first; the median time
// of each counts (the machine is shared: single runs swing by tens of percent).
const median = (xs) => {
  const v = [...xs].sort((x, y) => x - y);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};
const results = [];
for (const c of cases) {
  const times = { ours: [], ref: [] };
  for (round = 0; round < ROUNDS; round++) {
    let o, r;
    if (round % 2 === 0) {
      o = await time(c.ours);
      r = await time(c.reference);
    } else {
      r = await time(c.reference);
      o = await time(c.ours);
    }
    times.ours.push(o);
    times.ref.push(r);
    log(`  ${c.name}: round ${round + 1}: orb ${o.toFixed(2)} s, ${c.refName} ${r.toFixed(2)} s`);
  }
  const ours = median(times.ours);
  const ref = median(times.ref);
  results.push({
    case: c.name,
    reference: c.refName,
    bytes: c.bytes,
    orbSeconds: times.ours.map((t) => +t.toFixed(3)),
    referenceSeconds: times.ref.map((t) => +t.toFixed(3)),
    orbMBps: +(c.bytes / 1e6 / ours).toFixed(1),
    referenceMBps: +(c.bytes / 1e6 / ref).toFixed(1),
    ratio: +(ref / ours).toFixed(2),
    claim: c.claim,
  });
}

const width = Math.max(...results.map((r) => r.case.length));
console.log(
  `\nstores benchmark: ${(SIZE / GiB).toFixed(1)} GiB image, s3rver and busybox httpd on loopback, median of ${ROUNDS} rounds`,
);
console.log(
  `${'case'.padEnd(width)}  ${'orb MB/s'.padStart(9)}  ${'ref MB/s'.padStart(9)}  ratio  target  reference`,
);
for (const r of results) {
  console.log(
    `${r.case.padEnd(width)}  ${String(r.orbMBps).padStart(9)}  ${String(r.referenceMBps).padStart(9)}  ${r.ratio.toFixed(2).padStart(5)}  ${(r.claim ? '>= 0.9' : 'info').padEnd(6)}  ${r.reference}${r.claim && r.ratio < 0.9 ? '   (TARGET MISSED)' : ''}`,
  );
}
const pass = results.every((r) => !r.claim || r.ratio >= 0.9);
console.log(`stores bench: ${pass ? 'all targets met' : 'TARGET MISSED'}`);
mkdirSync(join(root, 'bench', 'results'), { recursive: true });
writeFileSync(
  join(root, 'bench', 'results', 'stores.json'),
  JSON.stringify(
    {
      name: 'stores',
      date: new Date().toISOString(),
      sizeBytes: SIZE,
      concurrency: CONCURRENCY,
      rounds: ROUNDS,
      results,
      pass,
    },
    null,
    2,
  ) + '\n',
);
sdk.destroy();
process.exit(pass ? 0 : 1); // children (s3rver, httpd) are stopped by the exit handler
