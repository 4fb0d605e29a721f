import { readFile } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fsutil.js';
import { boundedInt, parseJsonObject, untrustedError } from '../core/untrusted.js';
import type { DiskIndex } from '../formats/disk-index.js';

/**
 * A boot profile: the non-zero blocks a boot read, in the order it first read them. `orb
 * smoke-test` records one when it boots through `orb serve`; `orb serve --profile` fetches those
 * blocks first, so a later boot finds its working set local (issue 16, point 3). Tied to one
 * image by its content digest: block numbers mean nothing for another disk.
 */
export const PROFILE_SCHEMA = 'orb-boot-profile/v1';
const MAX_PROFILE_BYTES = 64 << 20;

export interface BootProfile {
  schema: typeof PROFILE_SCHEMA;
  contentDigest: string;
  blockSize: number;
  blocks: number[];
}

export async function writeProfile(path: string, idx: DiskIndex, blocks: readonly number[]): Promise<void> {
  const p: BootProfile = {
    schema: PROFILE_SCHEMA,
    contentDigest: idx.contentDigest,
    blockSize: idx.blockSize,
    blocks: [...blocks],
  };
  await writeFileAtomic(path, JSON.stringify(p) + '\n');
}

/** The profile's blocks, checked against `idx` (another image's profile is refused). */
export async function readProfile(path: string, idx: DiskIndex): Promise<number[]> {
  const bytes = await readFile(path).catch((err: Error) => {
    throw new OrbError('input', `boot profile ${path}: ${err.message}`);
  });
  const p = parseJsonObject(bytes, `boot profile ${path}`, MAX_PROFILE_BYTES);
  if (p.schema !== PROFILE_SCHEMA)
    throw untrustedError(`boot profile ${path} schema`, `is not ${PROFILE_SCHEMA}`, p.schema);
  if (p.contentDigest !== idx.contentDigest)
    throw new OrbError(
      'input',
      `boot profile ${path} is for another image (${String(p.contentDigest).slice(0, 80)})`,
      {
        hint: `record one for ${idx.contentDigest} with orb smoke-test, or serve without --profile`,
      },
    );
  if (!Array.isArray(p.blocks) || p.blocks.length > idx.entryCount)
    throw untrustedError(`boot profile ${path} blocks`, `is not a list of at most ${idx.entryCount} blocks`);
  return p.blocks.map((b, i) =>
    boundedInt(b, `boot profile ${path} blocks[${i}]`, 0, idx.blockCount - 1, false),
  );
}
