import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { sha256File } from '../../src/core/fsutil.js';
import { silentLogger } from '../../src/core/log.js';
import { newManifest, writeManifest, readManifest } from '../../src/core/stage-manifest-file.js';
import { nullProgress, type Progress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { RegistryClient } from '../../src/oci/registry.js';
import { FILE_ARTIFACT, OCI_MANIFEST } from '../../src/formats/oci-media.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { makeDisk, sha256 } from '../helpers/oci-images.js';
import { writeV2Image, type V2Image } from '../helpers/v2-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * publish and pull end to end against docker-registry on 127.0.0.1 and local OCI layouts: exact
 * bytes back, only changed chunks uploaded and downloaded, --base, qcow2 output, single files in
 * parts, resumption after an interruption, stage manifests, mounts, referrers.
 */
process.env.ORB_RETRY_BASE_MS = '20';
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));

const log = silentLogger;
const progress = () => nullProgress;
const CHUNK = 256 << 10;
const CHUNKS = 50;
let reg: Registry;
let dir: string;
let v1: V2Image;
let v2: V2Image;
/** 32 KiB blocks per 256 KiB chunk of the test disks */
const PER = 8;
const stored = (i: V2Image) => i.packs.reduce((a, p) => a + p.size, 0);
let sum1: string;
let sum2: string;

function store(repo: string): RegistryStore {
  return new RegistryStore(
    new RegistryClient({
      ref: { host: reg.host, apiHost: reg.host, repository: repo },
      credentials: null,
      log,
    }),
  );
}

beforeAll(async () => {
  reg = await startRegistry();
  dir = mkdtempSync(join(tmpdir(), 'orb-pp-'));
  // 50 chunks of compressible data, one in five zero; v2 changes one chunk (2%)
  const spec = { size: CHUNK * CHUNKS, chunkSize: CHUNK, data: (i: number) => i % 5 !== 4 };
  sum1 = makeDisk(join(dir, 'v1.raw'), spec);
  sum2 = makeDisk(join(dir, 'v2.raw'), { ...spec, seed: (i) => (i === 7 ? 999 : i + 1) });
  v1 = await writeV2Image(join(dir, 'v1.raw'), join(dir, 'layout'), 'v1', { packSize: 2 << 20 });
  v2 = await writeV2Image(join(dir, 'v2.raw'), join(dir, 'layout'), 'v2', { packSize: 2 << 20, base: v1 });
});

afterAll(async () => {
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('chunked images through a registry', () => {
  let first: Awaited<ReturnType<typeof publish>>;
  let pulled1: Awaited<ReturnType<typeof pull>>;

  it('publishes, then pulls back the exact disk, sparse', async () => {
    first = await publish({
      source: `oci-layout:${v1.dir}:v1`,
      target: store('pp/disk'),
      tags: ['v1', 'stable'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(first.digest).toBe(v1.manifestDigest);
    expect(first.bytesUploaded).toBe(first.bytesTotal);
    expect(first.reference).toBe(`oci://${reg.host}/pp/disk@${v1.manifestDigest}`);
    const out = join(dir, 'p1.raw');
    pulled1 = await pull({
      source: store('pp/disk'),
      ref: 'stable',
      display: 'stable',
      output: out,
      format: 'auto',
      concurrency: 4,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum1);
    expect(pulled1.contentDigest).toBe(v1.index.contentDigest);
    expect(pulled1.format).toBe('raw');
    // zero chunks are holes
    expect(statSync(out).blocks * 512).toBeLessThan(statSync(out).size);
    expect(existsSync(`${out}.partial`) || existsSync(`${out}.partial.journal`)).toBe(false);
  });

  it('republishing uploads nothing; a version with 2% changed uploads about 2%', async () => {
    const again = await publish({
      source: v1.dir,
      sourceTag: 'v1',
      target: store('pp/disk'),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(again.bytesUploaded).toBe(0);
    expect(again.bytesSkipped).toBe(again.bytesTotal);
    const second = await publish({
      source: `oci-layout:${v2.dir}:v2`,
      target: store('pp/disk'),
      tags: ['v2'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(second.blobsUploaded).toBe(3); // the new pack, the index and the config
    expect(second.bytesUploaded / first.bytesUploaded).toBeLessThan(0.05);
  });

  it('--base takes unchanged blocks from the earlier raw disk and downloads about 2%', async () => {
    const out = join(dir, 'p2.raw');
    const r = await pull({
      source: store('pp/disk'),
      ref: 'v2',
      display: 'v2',
      output: out,
      format: 'raw',
      base: join(dir, 'p1.raw'),
      concurrency: 4,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum2);
    expect(r.chunksDownloaded).toBe(PER);
    expect(r.bytesDownloaded / pulled1.bytesDownloaded).toBeLessThan(0.05);
    expect(r.bytesReused).toBe(39 * CHUNK);
  });

  it('--base can be a chunked layout', async () => {
    const out = join(dir, 'p2b.raw');
    const r = await pull({
      source: store('pp/disk'),
      ref: 'v2',
      display: 'v2',
      output: out,
      format: 'raw',
      base: `oci-layout:${v1.dir}:v1`,
      concurrency: 4,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum2);
    expect(r.chunksDownloaded).toBe(PER);
  });

  it('--base can be a qcow2 disk (read through qemu-nbd)', async () => {
    const q = join(dir, 'p1.qcow2');
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'p1.raw'), q]);
    const out = join(dir, 'p2c.raw');
    const r = await pull({
      source: store('pp/disk'),
      ref: 'v2',
      display: 'v2',
      output: out,
      format: 'raw',
      base: q,
      concurrency: 4,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum2);
    expect(r.chunksDownloaded).toBe(PER);
  });

  it('writes qcow2 on request, identical in content', async () => {
    const out = join(dir, 'p2.qcow2');
    const r = await pull({
      source: store('pp/disk'),
      ref: 'v2',
      display: 'v2',
      output: out,
      format: 'qcow2',
      concurrency: 4,
      log,
      progress,
    });
    expect(r.format).toBe('qcow2');
    expect(readFileSync(out).subarray(0, 4).toString('latin1')).toBe('QFI\xfb');
    execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', join(dir, 'v2.raw'), out]);
  });

  it('continues an interrupted pull where it stopped', async () => {
    const out = join(dir, 'resume.raw');
    const ac = new AbortController();
    let seen = 0;
    const stopHalfway = (): Progress => ({
      ...nullProgress,
      add(n: number) {
        seen += n;
        // one pack at a time: the first is done, the second's range is in flight and lost (a range
        // is decoded when it is complete)
        if (seen > stored(v1) / 2) ac.abort();
      },
    });
    const err = await pull({
      source: store('pp/disk'),
      ref: 'v1',
      display: 'v1',
      output: out,
      format: 'raw',
      concurrency: 1,
      log,
      progress: stopHalfway,
      signal: ac.signal,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe('interrupted');
    expect((err as OrbError).hint).toContain('run the same command again');
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.partial`)).toBe(true);
    const r = await pull({
      source: store('pp/disk'),
      ref: 'v1',
      display: 'v1',
      output: out,
      format: 'raw',
      concurrency: 2,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum1);
    expect(r.bytesResumed).toBeGreaterThan(0);
    expect(r.bytesDownloaded).toBeLessThan(pulled1.bytesDownloaded);
  });

  it('mounts blobs from another repository instead of uploading them', async () => {
    const r = await publish({
      source: v1.dir,
      sourceTag: 'v1',
      target: store('pp/other'),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      mountFrom: ['pp/disk'],
      log,
      progress,
    });
    expect(r.bytesUploaded).toBe(0);
    expect(r.blobsMounted).toBe(r.blobs);
  });

  it('attaches an artifact to a manifest (subject) and finds it as a referrer', async () => {
    const note = join(dir, 'notes.txt');
    writeFileSync(note, 'release notes\n');
    const r = await publish({
      source: note,
      target: store('pp/disk'),
      tags: [],
      subject: 'v1',
      concurrency: 1,
      partSize: 1 << 30,
      log,
      progress,
    });
    const refs = await store('pp/disk').listReferrers(v1.manifestDigest);
    expect(refs.map((d) => d.digest)).toContain(r.digest);
    expect(refs.find((d) => d.digest === r.digest)!.artifactType).toBe(FILE_ARTIFACT);
  });

  it('refuses a manifest of another artifact type, creating no output', async () => {
    const s = store('pp/container');
    const layer = Buffer.from('not a disk');
    const cfg = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    for (const b of [layer, cfg])
      await s.putBlob({ mediaType: 'x', digest: sha256(b), size: b.length }, () => Readable.from([b]));
    const manifest = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: {
        mediaType: 'application/vnd.oci.image.config.v1+json',
        digest: sha256(cfg),
        size: cfg.length,
      },
      layers: [
        { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length },
      ],
    };
    await s.putManifest(Buffer.from(JSON.stringify(manifest)), OCI_MANIFEST, ['app']);
    const out = join(dir, 'container.raw');
    const err = await pull({
      source: s,
      ref: 'app',
      display: 'oci://x/pp/container:app',
      output: out,
      format: 'auto',
      concurrency: 1,
      log,
      progress,
    }).catch((e: unknown) => e);
    expect((err as OrbError).message).toMatch(/container image/);
    expect(existsSync(out)).toBe(false);
  });
});

describe('what orb convert writes', () => {
  it('a layout from the chunked encoder travels through the registry unchanged', async () => {
    const { encodeChunked } = await import('../../src/image/chunked/index.js');
    const out = join(dir, 'encoded');
    await encodeChunked({
      input: join(dir, 'v1.raw'),
      output: out,
      tag: 'enc',
      packSize: 1 << 20,
      manifest: false,
      log,
    });
    const r = await publish({
      source: `oci-layout:${out}:enc`,
      target: store('pp/encoded'),
      tags: ['enc'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    const back = join(dir, 'encoded.raw');
    const p = await pull({
      source: store('pp/encoded'),
      ref: 'enc',
      display: 'enc',
      output: back,
      format: 'raw',
      concurrency: 4,
      log,
      progress,
    });
    expect(p.digest).toBe(r.digest);
    expect(await sha256File(back)).toBe(sum1);
  });
});

describe('single files and local layouts', () => {
  it('a qcow2 goes up in parts and comes back identical (or converted to raw)', async () => {
    const q = join(dir, 'disk.qcow2');
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'v1.raw'), q]);
    const r = await publish({
      source: q,
      target: store('pp/file'),
      tags: ['q'],
      concurrency: 3,
      partSize: 1 << 20,
      log,
      progress,
    });
    expect(r.artifactType).toBe(FILE_ARTIFACT);
    const m = JSON.parse((await store('pp/file').getManifest('q')).bytes.toString()) as {
      layers: { annotations: Record<string, string> }[];
    };
    expect(m.layers.length).toBe(Math.ceil(statSync(q).size / (1 << 20)));
    expect(m.layers[1]!.annotations['org.opencontainers.image.title']).toBe('disk.qcow2.part002');
    const back = join(dir, 'back.qcow2');
    const p = await pull({
      source: store('pp/file'),
      ref: 'q',
      display: 'q',
      output: back,
      format: 'auto',
      concurrency: 3,
      log,
      progress,
    });
    expect(p.format).toBe('qcow2');
    expect(await sha256File(back)).toBe(await sha256File(q));
    const raw = join(dir, 'back.raw');
    await pull({
      source: store('pp/file'),
      ref: 'q',
      display: 'q',
      output: raw,
      format: 'raw',
      concurrency: 3,
      log,
      progress,
    });
    expect(await sha256File(raw)).toBe(sum1);
  });

  it('a .zst file pulled as raw becomes the sparse disk', async () => {
    const z = join(dir, 'disk.raw.zst');
    execFileSync('zstd', ['-q', '-f', '-3', join(dir, 'v1.raw'), '-o', z]);
    await publish({
      source: z,
      target: store('pp/zst'),
      tags: ['z'],
      concurrency: 2,
      partSize: 8 * 2 ** 30,
      log,
      progress,
    });
    const raw = join(dir, 'from-zst.raw');
    const p = await pull({
      source: store('pp/zst'),
      ref: 'z',
      display: 'z',
      output: raw,
      format: 'raw',
      concurrency: 2,
      log,
      progress,
    });
    expect(p.format).toBe('raw');
    expect(await sha256File(raw)).toBe(sum1);
    expect(statSync(raw).blocks * 512).toBeLessThan(statSync(raw).size);
  });

  it('oci-layout: is a target and a source; publish writes its own stage manifest beside its input', async () => {
    const target = join(dir, 'published-layout');
    const stage = join(dir, 'layout.orb.json');
    await writeManifest(
      stage,
      newManifest('convert', {
        path: 'layout',
        format: 'chunked',
        virtualSize: CHUNK * CHUNKS,
        fileSize: CHUNK * CHUNKS,
        chunked: {
          layout: 'layout',
          tag: 'v1',
          manifestDigest: v1.manifestDigest,
          blockSize: 32 << 10,
          blocks: (CHUNK * CHUNKS) / (32 << 10),
          storedBlocks: v1.index.entryCount,
          packs: v1.packs.length,
        },
      }),
    );
    const before = readFileSync(stage);
    const r = await publish({
      source: stage,
      target: new LayoutStore(target),
      tags: ['v1'],
      concurrency: 2,
      partSize: 1 << 30,
      log,
      progress,
    });
    expect(r.digest).toBe(v1.manifestDigest);
    expect(readFileSync(stage).equals(before)).toBe(true);
    expect(r.manifestPath).toBe(join(dir, 'layout.published.orb.json'));
    const m = await readManifest(r.manifestPath!);
    expect(m.stage).toBe('publish');
    expect(m.published?.digest).toBe(v1.manifestDigest);
    expect(m.image.format).toBe('chunked');
    expect(m.input).toMatchObject({ stage: 'convert', path: stage });
    const out = join(dir, 'from-layout.raw');
    const pm = join(dir, 'pulled.json');
    await pull({
      source: new LayoutStore(target),
      ref: 'v1',
      display: 'layout',
      output: out,
      format: 'raw',
      concurrency: 2,
      manifestPath: pm,
      log,
      progress,
    });
    expect(await sha256File(out)).toBe(sum1);
    const pulled = await readManifest(pm);
    expect(pulled.image.contentDigest).toBe(v1.index.contentDigest);
    expect(pulled.stage).toBe('pull');
  });
});

describe('independent client: skopeo', () => {
  it('inspects our artifact raw, is refused as a container image, and copies between our layout and the registry keeping digests', async () => {
    await publish({
      source: v1.dir,
      sourceTag: 'v1',
      target: store('pp/skopeo'),
      tags: ['v1'],
      concurrency: 4,
      partSize: 1 << 30,
      log,
      progress,
    });
    const raw = JSON.parse(
      execFileSync(
        'skopeo',
        ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/pp/skopeo:v1`],
        { encoding: 'utf8' },
      ),
    ) as {
      artifactType: string;
      annotations: Record<string, string>;
      layers: { mediaType: string }[];
    };
    expect(raw.artifactType).toBe('application/vnd.orb.disk.v2');
    expect(raw.annotations['dev.orb.content.digest']).toBe(v1.index.contentDigest);
    expect(raw.layers[0]!.mediaType).toBe('application/vnd.orb.disk.index.v2+zstd');
    // an image-specific operation is refused cleanly: it is not a container image
    let refusal = '';
    try {
      execFileSync('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/pp/skopeo:v1`], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (err) {
      refusal = String((err as { stderr?: string }).stderr ?? err);
    }
    expect(refusal).toMatch(/unsupported image-specific operation on artifact/);
    // our layout -> registry with skopeo: same digest as our publish
    execFileSync('skopeo', [
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      `oci:${v1.dir}:v2`,
      `docker://${reg.host}/pp/skopeo:v2`,
    ]);
    expect((await store('pp/skopeo').getManifest('v2')).digest).toBe(v2.manifestDigest);
    // registry -> a new layout with skopeo; we pull from that layout
    const copy = join(dir, 'skopeo-layout');
    execFileSync('skopeo', [
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      `docker://${reg.host}/pp/skopeo:v1`,
      `oci:${copy}:v1`,
    ]);
    const out = join(dir, 'skopeo.raw');
    const r = await pull({
      source: new LayoutStore(copy),
      ref: 'v1',
      display: 'copy',
      output: out,
      format: 'raw',
      concurrency: 2,
      log,
      progress,
    });
    expect(r.digest).toBe(v1.manifestDigest);
    expect(await sha256File(out)).toBe(sum1);
  });
});
