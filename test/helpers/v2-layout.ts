import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { DiskIndex } from '../../src/formats/disk-index.js';
import type { Descriptor, ImageManifest } from '../../src/formats/oci-media.js';
import { OciLayout } from '../../src/oci/layout.js';
import { writeV2Image } from './v2-images.js';

export { pushV2 } from './v2-images.js';

/**
 * A chunked v2 image built from bytes in memory into an OCI layout (writeV2Image of
 * test/helpers/v2-images.ts, which reads a file), with a BIOS test build record, in the shape
 * the serve, lazy install and lazy smoke tests read.
 */
export interface V2Image {
  dir: string;
  tag: string;
  manifest: ImageManifest;
  manifestBytes: Buffer;
  manifestDigest: string;
  contentDigest: string;
  index: DiskIndex;
  packs: Descriptor[];
  /** compressed bytes of all packs */
  packBytes: number;
}

export async function buildV2Layout(
  disk: Buffer,
  dir: string,
  tag: string,
  opts: { packSize?: number } = {},
): Promise<V2Image> {
  mkdirSync(dir, { recursive: true });
  const raw = `${dir}.raw`;
  writeFileSync(raw, disk);
  try {
    const img = await writeV2Image(raw, dir, tag, {
      ...(opts.packSize ? { packSize: opts.packSize } : {}),
      build: { os: 'test', arch: 'x86_64', firmware: 'bios' },
    });
    return {
      dir,
      tag,
      manifest: img.manifest,
      manifestBytes: readFileSync(new OciLayout(dir).blobPath(img.manifestDigest)),
      manifestDigest: img.manifestDigest,
      contentDigest: img.index.contentDigest,
      index: img.index,
      packs: img.packs,
      packBytes: img.packs.reduce((n, p) => n + p.size, 0),
    };
  } finally {
    rmSync(raw, { force: true });
  }
}
