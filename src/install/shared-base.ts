import { randomInt } from 'node:crypto';
import { open, readdir, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { OrbError } from '../core/errors.js';
import { sha256File } from '../core/fsutil.js';
import type { Logger } from '../core/log.js';
import { readManifest, type OrbManifest } from '../core/stage-manifest-file.js';
import { formatBytes } from '../core/progress.js';
import { sha256Async } from '../transfer/part-check.js';
import { isZero } from '../transfer/pull-output.js';
import { contentSegments, type Plan } from '../transfer/pull-plan.js';

/**
 * `orb install --base-dir PATH`: the golden disk lives once on a file share (NFS/SMB, mounted
 * read-only by the admin) and each client keeps only its qcow2 overlay. The share was filled by
 * `orb pull REF --output PATH/NAME.img --manifest PATH/NAME.img.orb.json`.
 *
 * Which file: the stage manifest beside it whose recorded content sha256 is the image's. A
 * manifest is a small JSON file anyone can copy next to another disk, so the disk itself is
 * checked too, without reading all of it:
 *   - it is a regular file of exactly the image's virtual size;
 *   - `sample` (default): SAMPLES data chunks, the first and last and the rest chosen at random
 *     on every run (so a fleet of clients covers the disk between them), each hashed and
 *     compared with the chunk digest the published manifest names, and a few ranges the image
 *     has no data in read back as zeros. Wrong-disk and truncated-copy mistakes fail this;
 *     a deliberately forged disk that differs only outside the samples does not;
 *   - `full`: the whole disk hashed and compared with the content sha256 (reads it all once).
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
  const want = plan.contentDigest.replace(/^sha256:/, '');
  const seen: string[] = [];
  for (const mp of await candidates(resolve(dir))) {
    const m = await readManifest(mp).catch(() => undefined);
    if (!m?.image.contentSha256) continue;
    seen.push(`${basename(mp)} (${m.image.contentSha256.slice(0, 12)})`);
    if (m.image.contentSha256 !== want) continue;
    if (m.image.format !== 'raw')
      throw new OrbError('input', `${mp} describes a ${m.image.format} disk; a shared base must be raw`, {
        hint: `pull it to the share again as raw: orb pull REF --output ${imagePathOnShare(mp, m)} --manifest ${mp}`,
      });
    const path = imagePathOnShare(mp, m);
    const checked = await verifySharedBase(path, plan, o);
    o.log.info(`shared base ${path}: ${checked}`);
    return { path, manifestPath: mp, manifest: m, checked };
  }
  throw new OrbError('input', `no disk in ${dir} is this image (content sha256 ${want.slice(0, 12)})`, {
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
  if (o.verify === 'full') {
    const sha = await sha256File(path);
    if (`sha256:${sha}` !== plan.contentDigest) throw refuse(`its sha256 is ${sha}`);
    return `whole disk verified (${formatBytes(plan.size)} read)`;
  }
  const segments = contentSegments(plan);
  const data = segments.filter((s) => !s.zero);
  const zeros = segments.filter((s) => s.zero);
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
    const sampled = pick(data, SAMPLES);
    for (const r of sampled) {
      const d = await sha256Async(await readAt(r.offset, r.length));
      if (d !== r.digest) throw refuse(`the chunk at offset ${r.offset} differs`);
    }
    const zsampled = pick(zeros, ZERO_SAMPLES);
    for (const z of zsampled) {
      if (!isZero(await readAt(z.offset, Math.min(z.length, ZERO_PROBE))))
        throw refuse(`offset ${z.offset} holds data where the image has none`);
    }
    return `${sampled.length} of ${data.length} chunks and ${zsampled.length} empty ranges match (${formatBytes(read)} read; --verify-base full reads it all)`;
  } finally {
    await fh.close();
  }
}
