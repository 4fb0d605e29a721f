import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  statfsSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { environmentError } from '../../src/core/fsutil.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { OciLayout } from '../../src/oci/layout.js';
import { BLOCK_SIZE, IndexBuilder, MAX_ENTRIES } from '../../src/formats/disk-index.js';
import { ANN_CONTENT_DIGEST, OCI_MANIFEST, type ImageManifest } from '../../src/formats/oci-media.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { pattern } from '../helpers/oci-images.js';
import { compressFrame, writeV2Variant, writeV2Image, type V2Image } from '../helpers/v2-images.js';

/**
 * Issue 13, finding 6: failures that used to surface raw or leave debris. The free-space check
 * runs before the `.partial` exists (a refused pull leaves nothing); an image whose parts
 * disagree is refused before anything is written (disks) or, for a file whose whole does not
 * match, with a hint that promises no partial; EFBIG, EROFS and ENOSPC become environment
 * errors with a hint.
 */
let root: string;
let layout: OciLayout;
let img: V2Image;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'orb-clear-'));
  const fd = openSync(join(root, 'disk.raw'), 'w');
  for (let i = 0; i < 8; i++) writeSync(fd, pattern(i + 1, BLOCK_SIZE, true), 0, BLOCK_SIZE, i * BLOCK_SIZE);
  closeSync(fd);
  img = await writeV2Image(join(root, 'disk.raw'), join(root, 'layout'), 'good');
  rmSync(join(root, 'disk.raw'));
  layout = new OciLayout(img.dir);
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

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
    // twice the free space: other processes on this machine change it while the test runs, and
    // a pull that passed the check would really write that much
    const n = Math.ceil((2 * free) / BLOCK_SIZE);
    if (n > MAX_ENTRIES) return; // more room than the format can fill: nothing to refuse
    // n blocks of data, all the same (deduplicated) block: one tiny frame, more data than the disk has room for
    const block = pattern(1, BLOCK_SIZE, true);
    const frame = compressFrame(block);
    const digest = createHash('sha256').update(block).digest();
    const b = new IndexBuilder(n * BLOCK_SIZE);
    const p = await layout.putBytes(frame);
    b.addPack({ digest: p.digest, size: frame.length });
    b.addFrame(0, 0, frame.length, 1);
    for (let i = 0; i < n; i++) b.addEntry(i, 0, 0, digest);
    const index = b.finish();
    await writeV2Variant(
      {
        ...img,
        index,
        packs: [{ mediaType: img.packs[0]!.mediaType, digest: p.digest, size: frame.length }],
        packBytes: [frame],
        config: { ...img.config, virtualSize: n * BLOCK_SIZE, contentDigest: index.contentDigest },
        manifest: { ...img.manifest, annotations: { [ANN_CONTENT_DIGEST]: index.contentDigest } },
      },
      layout.dir,
      'huge',
      {},
    );
    const out = join(root, 'new', 'sub', 'disk.raw');
    const err = await pullTo('huge', out);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe('environment');
    expect((err as OrbError).message).toMatch(/not enough free disk/);
    expect((err as OrbError).hint).toBeTruthy();
    expect(existsSync(join(root, 'new'))).toBe(false);
  }, 300_000);

  it('a disk whose config and index disagree on the content digest: refused before anything exists', async () => {
    const other = `orb2:sha256:${'1'.repeat(64)}`;
    const v = await writeV2Variant(img, layout.dir, 'liar', {});
    const cfg = await layout.putBytes(JSON.stringify({ ...v.config, contentDigest: other }));
    const m: ImageManifest = {
      ...v.manifest,
      config: { ...v.manifest.config, digest: cfg.digest, size: cfg.size },
      annotations: { [ANN_CONTENT_DIGEST]: other },
    };
    const d = await layout.putBytes(JSON.stringify(m));
    await layout.tag({ mediaType: OCI_MANIFEST, digest: d.digest, size: d.size }, 'liar');
    mkdirSync(join(root, 'out'));
    const err = await pullTo('liar', join(root, 'out', 'disk.raw'));
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).message).toMatch(/content digest/);
    expect(readdirSync(join(root, 'out'))).toEqual([]);
  });

  it('a file whose whole does not match: the hint does not claim a kept partial, and nothing is left', async () => {
    writeFileSync(join(root, 'f.qcow2.zst'), pattern(3, 100_000, true));
    const fl = join(root, 'flayout');
    await publish({
      source: join(root, 'f.qcow2.zst'),
      target: new LayoutStore(fl),
      tags: ['f'],
      concurrency: 2,
      partSize: 30_000,
      log: silentLogger,
      progress: () => nullProgress,
    });
    const fo = new OciLayout(fl);
    const m = JSON.parse(
      (await fo.readBytes((await fo.resolve('f')).digest)).toString('utf8'),
    ) as ImageManifest;
    m.annotations = { ...m.annotations, [ANN_CONTENT_DIGEST]: `sha256:${'1'.repeat(64)}` };
    const d = await fo.putBytes(JSON.stringify(m));
    await fo.tag({ mediaType: OCI_MANIFEST, digest: d.digest, size: d.size }, 'liar');
    mkdirSync(join(root, 'out3'));
    const err = await pull({
      source: new LayoutStore(fl),
      ref: 'liar',
      display: 'liar',
      output: join(root, 'out3', 'f.bin'),
      format: 'auto',
      concurrency: 2,
      log: silentLogger,
      progress: () => nullProgress,
    }).catch((e: unknown) => e as OrbError);
    expect((err as OrbError).kind).toBe('integrity');
    expect((err as OrbError).message).toMatch(/the image says sha256:1111/);
    expect((err as OrbError).hint ?? '').not.toMatch(/kept/);
    expect(readdirSync(join(root, 'out3'))).toEqual([]);
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
