import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { OrbError } from './errors.js';
import { writeFileAtomic } from './fsutil.js';
import { MANIFEST_SCHEMA, type OrbManifest, type StageInput } from '../formats/stage-manifest.js';
import { MAX_VIRTUAL_SIZE, boundedInt, isObject, parseJsonObject, quoteUntrusted } from './untrusted.js';

/** Largest stage manifest read (they are a few KiB). */
export const MAX_STAGE_MANIFEST_BYTES = 1 << 20;

/** Reading and writing a stage manifest file; its schema and file-name rule are in src/formats/stage-manifest.ts. */
export * from '../formats/stage-manifest.js';

export async function readManifest(path: string): Promise<OrbManifest> {
  let bytes: Buffer;
  try {
    // A stage manifest is a few KiB; a bigger file is not one (and is not read into memory).
    if ((await stat(path)).size > MAX_STAGE_MANIFEST_BYTES)
      throw new Error(`it is more than ${MAX_STAGE_MANIFEST_BYTES} bytes`);
    bytes = await readFile(path);
  } catch (err) {
    throw new OrbError('input', `cannot read manifest ${path}: ${(err as Error).message}`, { cause: err });
  }
  const m = parseJsonObject(bytes, `manifest ${path}`, MAX_STAGE_MANIFEST_BYTES);
  const image = m.image;
  if (m.schema !== MANIFEST_SCHEMA || !isObject(image) || typeof image.path !== 'string' || !image.path) {
    throw new OrbError('input', `${path} is not an orb manifest (schema ${quoteUntrusted(m.schema)})`);
  }
  if (image.virtualSize !== undefined)
    boundedInt(image.virtualSize, `manifest ${path} image.virtualSize`, 1, MAX_VIRTUAL_SIZE, false);
  if (image.fileSize !== undefined)
    boundedInt(image.fileSize, `manifest ${path} image.fileSize`, 0, MAX_VIRTUAL_SIZE, false);
  return m as unknown as OrbManifest;
}

export async function writeManifest(path: string, m: OrbManifest): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(m, null, 2) + '\n');
}

/** Reads a stage manifest as a next stage's input: the manifest plus its provenance record. */
export async function readStageInput(path: string): Promise<{ manifest: OrbManifest; input: StageInput }> {
  const bytes = await readFile(path).catch((err: unknown) => {
    throw new OrbError('input', `cannot read manifest ${path}: ${(err as Error).message}`, { cause: err });
  });
  const manifest = await readManifest(path);
  return {
    manifest,
    input: {
      stage: manifest.stage,
      path,
      sha256: 'sha256:' + createHash('sha256').update(bytes).digest('hex'),
    },
  };
}
