import { basename, dirname, relative } from 'node:path';
import {
  newManifest,
  stageManifestPath,
  writeManifest,
  type BuildInfo,
  type ImageFormat,
  type OrbManifest,
  type StageInput,
} from '../core/stage-manifest-file.js';

/**
 * The convert stage's hand-over manifest, written beside the output as `<output>.orb.json`
 * (for a chunked layout directory too: beside it, not inside, so the layout stays a plain OCI
 * layout). The next stage (publish) takes it as its input.
 */
/** What the manifest records of a conversion (a ConvertResult; declared here so convert.ts can import this file). */
export interface ConvertedImage {
  path: string;
  format: string;
  virtualSize: number;
  outputBytes: number;
  sha256: string;
  contentSha256?: string;
  contentDigest?: string;
  chunked?: {
    tag: string;
    manifestDigest: string;
    blockSize: number;
    blocks: number;
    stored: number;
    packs: number;
  };
}

export async function writeStageManifest(
  r: ConvertedImage,
  src: { manifest?: OrbManifest; input?: StageInput },
  build: BuildInfo | undefined,
): Promise<string> {
  const path = stageManifestPath(r.path);
  const image: OrbManifest['image'] = {
    path: relative(dirname(path), r.path) || basename(r.path),
    format: r.format as ImageFormat,
    virtualSize: r.virtualSize,
    fileSize: r.outputBytes,
    // plain files: the sha256 of the disk; chunked: the orb2 content root (no whole-disk hash)
    ...(r.contentSha256 ? { contentSha256: r.contentSha256 } : {}),
    ...(r.contentDigest ? { contentDigest: r.contentDigest } : {}),
  };
  if (r.format !== 'chunked') image.sha256 = r.sha256;
  if (r.chunked) {
    image.chunked = {
      layout: image.path,
      tag: r.chunked.tag,
      manifestDigest: r.chunked.manifestDigest,
      blockSize: r.chunked.blockSize,
      blocks: r.chunked.blocks,
      storedBlocks: r.chunked.stored,
      packs: r.chunked.packs,
    };
  }
  const extra: Partial<OrbManifest> = {};
  if (build) extra.build = build;
  if (src.input) extra.input = src.input;
  await writeManifest(path, newManifest('convert', image, extra));
  return path;
}
