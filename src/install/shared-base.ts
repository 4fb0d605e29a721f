import { randomInt } from 'node:crypto';
import { open, readdir, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { readManifest, type OrbManifest } from '../core/stage-manifest-file.js';
import { formatBytes } from '../core/progress.js';
import { sha256Async } from '../transfer/part-check.js';
import { isZero } from '../transfer/pull-output.js';
import { entryDigest } from '../formats/disk-index.js';
import { localContentDigest } from '../image/digest.js';
import type { Plan } from '../transfer/pull-plan.js';

/**
 * `orb install --base-dir PATH`: the golden disk lives once on a file share (NFS/SMB, mounted
 * read-only by the admin) and each client keeps only its qcow2 overlay. The share was filled by
 * `orb pull REF --output PATH/NAME.img --manifest PATH/NAME.img.orb.json`.
 *
 * Which file: the stage manifest beside it whose recorded content digest is the image's. A
 * manifest is a small JSON file anyone can copy next to another disk, so the disk itself is
 * checked too, without reading all of it:
 *   - it is a regular file of exactly the image's virtual size;
 *   - `sample` (default): SAMPLES stored blocks, the first and last and the rest chosen at random
 *     on every run (so a fleet of clients covers the disk between them), each hashed and
 *     compared with the block digest the image's index names, and a few blocks the image has
 *     no data in read back as zeros. Wrong-disk and truncated-copy mistakes fail this; a
 *     deliberately forged disk that differs only outside the samples does not;
 *   - `full`: the content root of the whole disk (its data extents read once, holes not) compared
 *     with the image's.
 * The base is only ever opened read-only; nothing is written, chmod-ed or renamed on the share.
 */
export type BaseVerify = 'sample' | 'full';

export const SAMPLES = 24;
const ZERO_SAMPLES = 4;
const ZERO_PROBE = 64 << 10;

export interface SharedBase {
  path: string;
  manifestPath: string;
  manifest: OrbManifest;
  checked: string;
}

async function candidates(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new OrbError('environment', `cannot read --base-dir ${dir}: ${(err as Error).message}`, {
      hint: 'mount the share first (read-only is enough), or fix the path',
      cause: err,
    });
  }
  return names.filter((n) => n.endsWith('.orb.json')).map((n) => join(dir, n));
}

/** The disk a manifest on the share describes: beside it (the share is mounted elsewhere than where pull ran). */
function imagePathOnShare(manifestPath: string, m: OrbManifest): string {
  return join(resolve(manifestPath, '..'), basename(m.image.path));
}

export async function findSharedBase(
  dir: string,
  plan: Plan,
  o: { verify: BaseVerify; log: Logger; signal?: AbortSignal },
): Promise<SharedBase> {
  const want = plan.contentDigest;
  const short = (d: string) => d.replace(/^orb2:sha256:/, '').slice(0, 12);
  const seen: string[] = [];
  for (const mp of await candidates(resolve(dir))) {
    const m = await readManifest(mp).catch(() => undefined);
    if (!m?.image.contentDigest) continue;
    seen.push(`${basename(mp)} (${short(m.image.contentDigest)})`);
    if (m.image.contentDigest !== want) continue;
    if (m.image.format !== 'raw')
      throw new OrbError('input', `${mp} describes a ${m.image.format} disk; a shared base must be raw`, {
        hint: `pull it to the share again as raw: orb pull REF --output ${imagePathOnShare(mp, m)} --manifest ${mp}`,
      });
    const path = imagePathOnShare(mp, m);
    const checked = await verifySharedBase(path, plan, o);
    o.log.info(`shared base ${path}: ${checked}`);
    return { path, manifestPath: mp, manifest: m, checked };
  }
  throw new OrbError('input', `no disk in ${dir} is this image (content digest ${short(want)})`, {
    hint:
      (seen.length ? `the share holds ${seen.join(', ')}. ` : 'the share holds no orb manifest. ') +
      `Put the image there once (as its admin): orb pull REF --output ${join(dir, 'NAME.img')} --manifest ${join(dir, 'NAME.img.orb.json')}`,
  });
}

function pick<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  const chosen = new Set<number>([0, items.length - 1]);
  while (chosen.size < n) chosen.add(randomInt(items.length));
  return [...chosen].sort((a, b) => a - b).map((i) => items[i]!);
}

export async function verifySharedBase(
  path: string,
  plan: Plan,
  o: { verify: BaseVerify; signal?: AbortSignal },
): Promise<string> {
  const st = await stat(path).catch(() => undefined);
  const refuse = (why: string) =>
    new OrbError('integrity', `the shared base ${path} is not this image: ${why}`, {
      hint: 'the manifest beside it was copied or the disk changed: ask the admin to pull the image to the share again',
    });
  if (!st?.isFile()) throw refuse('no such regular file');
  if (st.size !== plan.size) throw refuse(`it has ${st.size} bytes, the image ${plan.size}`);
  const idx = plan.index;
  if (!idx) throw refuse('the image is not a chunked disk');
  if (o.verify === 'full') {
    const r = await localContentDigest(path, o.signal ? { signal: o.signal } : {});
    if (r.contentDigest !== plan.contentDigest) throw refuse(`its content digest is ${r.contentDigest}`);
    return `whole disk verified (${formatBytes(r.readBytes)} of data read)`;
  }
  // zero blocks: the blocks between entries (and after the last)
  const zeroBlocks: number[] = [];
  for (let i = 0, next = 0; i <= idx.entryCount && zeroBlocks.length < 4096; i++) {
    const b = i < idx.entryCount ? idx.entryBlock[i]! : idx.blockCount;
    if (b > next) zeroBlocks.push(next, b - 1);
    next = b + 1;
  }
  const entries = Array.from({ length: idx.entryCount }, (_, i) => i);
  const fh = await open(path, 'r');
  let read = 0;
  try {
    const readAt = async (offset: number, length: number): Promise<Buffer> => {
      o.signal?.throwIfAborted();
      const buf = Buffer.alloc(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
        if (!bytesRead) break;
        got += bytesRead;
      }
      read += length;
      return buf;
    };
    const sampled = pick(entries, SAMPLES);
    for (const e of sampled) {
      const offset = idx.entryBlock[e]! * idx.blockSize;
      // the last block of a disk whose size is not a multiple of the block reads zero-padded
      const block = await readAt(offset, Math.min(idx.blockSize, plan.size - offset));
      const padded =
        block.length === idx.blockSize
          ? block
          : Buffer.concat([block, Buffer.alloc(idx.blockSize - block.length)]);
      const d = await sha256Async(padded);
      if (d !== 'sha256:' + entryDigest(idx, e).toString('hex'))
        throw refuse(`the block at offset ${offset} differs`);
    }
    const zsampled = pick(zeroBlocks, ZERO_SAMPLES);
    for (const b of zsampled) {
      const offset = b * idx.blockSize;
      if (!isZero(await readAt(offset, Math.min(idx.blockSize, ZERO_PROBE, plan.size - offset))))
        throw refuse(`offset ${offset} holds data where the image has none`);
    }
    return `${sampled.length} of ${idx.entryCount} blocks and ${zsampled.length} empty blocks match (${formatBytes(read)} read; --verify-base full reads the data once)`;
  } finally {
    await fh.close();
  }
}
