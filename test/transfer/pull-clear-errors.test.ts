import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { environmentError } from '../../src/core/fsutil.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { OciLayout } from '../../src/oci/layout.js';
import {
  ANN_CHUNK_DIGEST,
  ANN_CHUNK_LENGTH,
  ANN_CHUNK_OFFSET,
  DISK_ARTIFACT,
  DISK_CHUNK_ZSTD,
  OCI_MANIFEST,
  type ImageManifest,
} from '../../src/formats/oci-media.js';
import { pull } from '../../src/transfer/pull.js';
import { buildLayout, makeDisk } from '../helpers/oci-images.js';

/**
 * Issue 13, finding 6: failures that used to surface raw or leave debris. The free-space check
 * runs before the `.partial` exists (a refused pull leaves nothing); after a whole-content
 * mismatch the hint does not promise a partial that was deleted, and no empty `.partial.d/` is
 * left; EFBIG, EROFS and ENOSPC become environment errors with a hint.
 */
const CHUNK = 64 << 10;
let root: string;
let layout: OciLayout;
let base: ImageManifest;
let config: Record<string, unknown>;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'orb-clear-'));
  makeDisk(join(root, 'disk.raw'), { size: CHUNK * 4, chunkSize: CHUNK, data: () => true });
  const built = await buildLayout(join(root, 'disk.raw'), join(root, 'layout'), 'good', CHUNK);
  rmSync(join(root, 'disk.raw'));
  layout = new OciLayout(built.dir);
  base = JSON.parse((await layout.readBytes(built.manifestDigest)).toString('utf8')) as ImageManifest;
  config = JSON.parse((await layout.readBytes(base.config.digest)).toString('utf8')) as Record<
    string,
    unknown
  >;
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

async function tagged(m: ImageManifest, tag: string): Promise<void> {
  const d = await layout.putBytes(JSON.stringify(m));
  await layout.tag(
    { mediaType: OCI_MANIFEST, digest: d.digest, size: d.size, artifactType: DISK_ARTIFACT },
    tag,
  );
}

function pullTo(tag: string, output: string) {
  return pull({
    source: new LayoutStore(layout.dir),
    ref: tag,
    display: tag,
    output,
    format: 'raw',
    concurrency: 2,
    log: silentLogger,
    progress: () => nullProgress,
  }).catch((e: unknown) => e as OrbError);
}

describe('pull failures are clear and leave nothing they do not promise', () => {
  it('checks free space before creating the partial: a refused pull creates no file or folder', async () => {
    const s = statfsSync(root);
    const free = s.bavail * s.bsize;
    const big = 128 << 20; // the largest chunk the format allows
    const n = Math.min(Math.ceil(free / big) + 8, 20_000);
    const blob = base.layers[0]!;
    // n distinct regions of one (never fetched) blob: more data than the disk has room for
    const layers = Array.from({ length: n }, (_, i) => ({
      mediaType: DISK_CHUNK_ZSTD,
      digest: blob.digest,
      size: blob.size,
      annotations: {
        [ANN_CHUNK_OFFSET]: String(i * big),
        [ANN_CHUNK_LENGTH]: String(big),
        [ANN_CHUNK_DIGEST]: blob.annotations![ANN_CHUNK_DIGEST]!,
      },
    }));
    const cfg = await layout.putBytes(JSON.stringify({ ...config, virtualSize: n * big }));
    await tagged({ ...base, config: { ...base.config, digest: cfg.digest, size: cfg.size }, layers }, 'huge');
    const out = join(root, 'new', 'sub', 'disk.raw');
    const err = await pullTo('huge', out);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe('environment');
    expect((err as OrbError).message).toMatch(/not enough free disk/);
    expect((err as OrbError).hint).toBeTruthy();
    expect(existsSync(join(root, 'new'))).toBe(false);
  });

  it('after a whole-content mismatch: the hint does not claim a kept partial, and nothing is left', async () => {
    const cfg = await layout.putBytes(
      JSON.stringify({ ...config, contentDigest: `sha256:${'1'.repeat(64)}` }),
    );
    await tagged({ ...base, config: { ...base.config, digest: cfg.digest, size: cfg.size } }, 'liar');
    mkdirSync(join(root, 'out'));
    const out = join(root, 'out', 'disk.raw');
    const err = await pullTo('liar', out);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe('integrity');
    expect((err as OrbError).message).toMatch(/the image says sha256:1111/);
    expect((err as OrbError).hint ?? '').not.toMatch(/kept/);
    expect(readdirSync(join(root, 'out'))).toEqual([]);
  });

  it('a spooled pull that fails leaves no empty .partial.d/ behind', async () => {
    // memoryBudget 0: every compressed chunk goes through the spool folder
    const cfg = await layout.putBytes(
      JSON.stringify({ ...config, contentDigest: `sha256:${'2'.repeat(64)}` }),
    );
    await tagged({ ...base, config: { ...base.config, digest: cfg.digest, size: cfg.size } }, 'liar2');
    mkdirSync(join(root, 'out2'));
    const err = await pull({
      source: new LayoutStore(layout.dir),
      ref: 'liar2',
      display: 'liar2',
      output: join(root, 'out2', 'disk.raw'),
      format: 'raw',
      concurrency: 2,
      memoryBudget: 1,
      log: silentLogger,
      progress: () => nullProgress,
    }).catch((e: unknown) => e as OrbError);
    expect((err as OrbError).kind).toBe('integrity');
    expect(readdirSync(join(root, 'out2'))).toEqual([]);
  });

  it('EFBIG, EROFS, ENOSPC and EDQUOT become environment errors with a hint; others pass through', () => {
    for (const code of ['EFBIG', 'EROFS', 'ENOSPC', 'EDQUOT']) {
      const raw = Object.assign(new Error(`${code}: raw node message`), {
        code,
        path: '/x/disk.raw.partial',
      });
      const e = environmentError(raw, 'pulling img to /x/disk.raw') as OrbError;
      expect(e).toBeInstanceOf(OrbError);
      expect(e.kind).toBe('environment');
      expect(e.message).toContain(code);
      expect(e.message).toContain('/x/disk.raw.partial');
      expect(e.hint).toBeTruthy();
      expect(e.cause).toBe(raw);
    }
    const other = Object.assign(new Error('nope'), { code: 'EACCES' });
    expect(environmentError(other, 'x')).toBe(other);
  });
});
