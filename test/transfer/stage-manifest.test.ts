import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/log.js';
import { readManifest, stageManifestPath } from '../../src/core/stage-manifest-file.js';
import { nullProgress } from '../../src/core/progress.js';
import { convertImage } from '../../src/image/convert.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { resolveImageSource } from '../../src/smoke/open-image.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import { sha256File, smallDisk } from '../helpers/images.js';

/**
 * The stage manifest flows one way: each stage reads its input's manifest, never edits it, and
 * writes its own beside its output; build facts reach pull and smoke-test on every path.
 */
const log = silentLogger;
const progress = () => nullProgress;
const build = { os: 'linux', arch: 'x86_64', firmware: 'uefi', tpm: true, adminUser: 'ops' } as const;

let dir: string;
let raw: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'orb-stage-'));
  raw = smallDisk();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('one file-name rule', () => {
  it('puts a stage manifest beside its output, and publish beside what it published', () => {
    expect(stageManifestPath('/x/disk.img')).toBe('/x/disk.img.orb.json');
    expect(stageManifestPath('/x/image.oci', 'publish')).toBe('/x/image.oci.published.orb.json');
  });
});

for (const format of ['raw.zst', 'qcow2', 'chunked'] as const) {
  describe(`convert -> publish -> pull -> smoke-test source, ${format}`, () => {
    it('chains manifests without editing any, and build facts reach pull and smoke-test', async () => {
      const ext = format === 'chunked' ? 'oci' : format;
      const conv = await convertImage({
        input: raw,
        output: join(dir, `img-${format}.${ext}`),
        format,
        build,
      });
      const convManifest = conv.manifest!;
      expect(convManifest).toBe(stageManifestPath(conv.path));
      const convBytes = readFileSync(convManifest);

      const target = join(dir, `published-${format}`);
      const pub = await publish({
        source: convManifest,
        target: new LayoutStore(target),
        tags: ['v1'],
        concurrency: 2,
        partSize: 1 << 30,
        log,
        progress,
      });
      // the convert manifest is read, not edited
      expect(readFileSync(convManifest).equals(convBytes)).toBe(true);
      const pubManifest = await readManifest(pub.manifestPath!);
      expect(pub.manifestPath).toBe(stageManifestPath(conv.path, 'publish'));
      expect(pubManifest.stage).toBe('publish');
      expect(pubManifest.build).toMatchObject(build);
      expect(pubManifest.input).toMatchObject({ stage: 'convert', path: convManifest });
      expect(pubManifest.published?.digest).toBe(pub.digest);
      const pubBytes = readFileSync(pub.manifestPath!);

      const pulledPath = join(dir, `pulled-${format}`);
      const pulled = await pull({
        source: new LayoutStore(target),
        ref: 'v1',
        display: 'layout',
        output: pulledPath,
        format: 'auto',
        concurrency: 2,
        manifestPath: stageManifestPath(pulledPath),
        log,
        progress,
      });
      expect(readFileSync(pub.manifestPath!).equals(pubBytes)).toBe(true);
      const pullManifest = await readManifest(pulled.manifestPath!);
      expect(pullManifest.stage).toBe('pull');
      expect(pullManifest.build).toMatchObject(build);
      expect(pullManifest.published?.digest).toBe(pub.digest);
      if (format === 'chunked') expect(sha256File(pulled.path)).toBe(sha256File(raw));

      // smoke-test's source resolution pulls the published image and hands over its own manifest
      const src = await resolveImageSource(`oci-layout:${target}:v1`, {
        log,
        progress,
        store: { log, options: {} },
        pullDir: join(dir, `smoke-${format}`),
      });
      try {
        expect(src.manifest).toBeDefined();
        expect((await readManifest(src.manifest!)).build).toMatchObject(build);
      } finally {
        await src.dispose();
      }
    });
  });
}

describe('publish never edits its input manifest', () => {
  it('refuses --manifest naming the input stage manifest', async () => {
    const conv = await convertImage({
      input: raw,
      output: join(dir, 'refuse.raw.zst'),
      format: 'raw.zst',
      build,
    });
    const before = readFileSync(conv.manifest!);
    const err = await publish({
      source: conv.manifest!,
      target: new LayoutStore(join(dir, 'refuse-target')),
      tags: ['v1'],
      concurrency: 1,
      partSize: 1 << 30,
      manifestPath: conv.manifest!,
      log,
      progress,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).message).toContain('never edits');
    expect(readFileSync(conv.manifest!).equals(before)).toBe(true);
  });
});
