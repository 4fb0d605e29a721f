import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { MAX_MANIFEST_BYTES, isObject, parseJsonObject } from '../core/untrusted.js';
import {
  BOOT_PROFILE_ARTIFACT,
  MAX_PROFILE_BYTES,
  BootProfileError,
  decodeBootProfile as decodeProfileBytes,
  type BootProfile,
} from '../formats/boot-profile.js';
import type { DiskIndex } from '../formats/disk-index.js';
import {
  ANN_CONTENT_DIGEST,
  ANN_CREATED,
  EMPTY_CONFIG,
  OCI_MANIFEST,
  type Descriptor,
  type ImageManifest,
} from '../formats/oci-media.js';
import { readSmallBlob } from '../stores/layout.js';
import type { BlobStore } from '../stores/store.js';
import type { LazyDisk } from './lazy-disk.js';
import { openDiskV2 } from './open-image.js';

/** Decodes a stored profile; a malformed one is an input error that says how to get a good one. */
function decodeBootProfile(
  ...args: Parameters<typeof decodeProfileBytes>
): ReturnType<typeof decodeProfileBytes> {
  try {
    return decodeProfileBytes(...args);
  } catch (err) {
    if (!(err instanceof BootProfileError)) throw err;
    throw new OrbError(err.internal ? 'internal' : 'input', err.message, {
      hint: 'record it again with orb smoke-test on this image and attach it with orb publish --boot-profile',
    });
  }
}

/**
 * Boot profiles in stores: attached to a published disk as an OCI referrer artifact (subject =
 * the disk's manifest, artifactType BOOT_PROFILE_ARTIFACT, one layer = the profile blob), or,
 * in stores without referrers, as a manifest tagged `<tag>.boot-profile` whose subject still
 * names the disk. Either way the profile is taken only when its subject is the manifest being
 * served and it decodes as a profile of that very disk.
 */
export const PROFILE_TAG_SUFFIX = '.boot-profile';

export interface AttachResult {
  digest: string;
  /** how it is found again: 'referrer', or the tag */
  via: string;
  blocks: number;
}

/** Publishes `blob` as the boot profile of the disk manifest `subject` (a digest) in `store`. */
export async function attachBootProfile(o: {
  store: BlobStore;
  subject: string;
  /** the tag the disk was published under (the fallback tag is derived from it) */
  tag: string;
  blob: Buffer;
  display: string;
  log: Logger;
}): Promise<AttachResult> {
  // By its tag: not every store finds a manifest by digest (release assets, packages).
  const img = await openDiskV2(o.store, o.tag, o.display);
  if (img.manifestDigest !== o.subject)
    throw new OrbError(
      'input',
      `${o.display} now names ${img.manifestDigest.slice(0, 19)}, not the ${o.subject.slice(0, 19)} just published`,
      { hint: 'another publish moved the tag: attach the profile again' },
    );
  // The same checks a reader runs: a profile of another disk is refused before it is published.
  const profile = decodeBootProfile(o.blob, img.index, 'the boot profile');
  const subjectBytes = (await o.store.getManifest(o.tag)).bytes;
  if (`sha256:${createHash('sha256').update(subjectBytes).digest('hex')}` !== o.subject)
    throw new OrbError('input', `${o.display} moved while the boot profile was attached`, {
      hint: 'attach the profile again',
    });
  const layer = await putBytes(o.store, o.blob, BOOT_PROFILE_ARTIFACT);
  await putBytes(o.store, Buffer.from('{}'), EMPTY_CONFIG.mediaType);
  const manifest: ImageManifest & { subject: Descriptor } = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: BOOT_PROFILE_ARTIFACT,
    config: { ...EMPTY_CONFIG },
    layers: [layer],
    subject: { mediaType: OCI_MANIFEST, digest: img.manifestDigest, size: subjectBytes.length },
    annotations: {
      [ANN_CONTENT_DIGEST]: img.index.contentDigest,
      [ANN_CREATED]: new Date().toISOString(),
    },
  };
  const bytes = Buffer.from(JSON.stringify(manifest));
  const referrers = typeof o.store.listReferrers === 'function';
  const tags = referrers ? [] : [`${o.tag}${PROFILE_TAG_SUFFIX}`];
  const digest = await o.store.putManifest(bytes, OCI_MANIFEST, tags);
  const via = referrers ? 'referrer' : `tag ${tags[0]}`;
  o.log.info(
    `boot profile (${profile.blocks.length} blocks, ${o.blob.length} bytes) attached to ${img.manifestDigest.slice(0, 19)} as a ${via}`,
  );
  return { digest, via, blocks: profile.blocks.length };
}

/** `orb publish --boot-profile FILE`: reads the file (bounded) and attaches it. */
export async function attachProfileFile(
  file: string,
  store: BlobStore,
  subject: string,
  tag: string,
  display: string,
  log: Logger,
): Promise<AttachResult> {
  const st = await stat(file).catch(() => undefined);
  if (!st?.isFile())
    throw new OrbError('input', `boot profile ${file} does not exist`, {
      hint: 'give the boot-profile output of orb smoke-test (boot-profile.bin in its evidence directory)',
    });
  if (st.size > MAX_PROFILE_BYTES)
    throw new OrbError('input', `boot profile ${file}: ${st.size} bytes (at most ${MAX_PROFILE_BYTES})`);
  return attachBootProfile({ store, subject, tag, blob: await readFile(file), display, log });
}

async function putBytes(store: BlobStore, data: Buffer, mediaType: string): Promise<Descriptor> {
  const desc = {
    mediaType,
    digest: `sha256:${createHash('sha256').update(data).digest('hex')}`,
    size: data.length,
  };
  if ((await store.statBlob(desc.digest)) !== desc.size)
    await store.putBlob(desc, (offset) => Readable.from([data.subarray(offset)]));
  return desc;
}

/**
 * The boot profile of the disk manifest `manifestDigest` in `store`, as block numbers in the
 * order a boot read them (for the background fill's `profile`), or undefined when it has none.
 * A profile that is damaged, for another disk or out of bounds is ignored with a warning: the
 * disk serves as well without it.
 */
export async function loadBootProfile(
  store: BlobStore,
  manifestDigest: string,
  idx: DiskIndex,
  o: { tag?: string; log?: Logger; display?: string } = {},
): Promise<number[] | undefined> {
  try {
    return (await findBootProfile(store, manifestDigest, idx, o))?.blocks;
  } catch (err) {
    if (!(err instanceof OrbError) || err.kind === 'interrupted' || err.kind === 'internal') throw err;
    o.log?.warn(`boot profile ignored: ${err.message}`);
    return undefined;
  }
}

/** As loadBootProfile, but a bad profile throws (OrbError 'input'). */
export async function findBootProfile(
  store: BlobStore,
  manifestDigest: string,
  idx: DiskIndex,
  o: { tag?: string; log?: Logger; display?: string } = {},
): Promise<(BootProfile & { digest: string; bytes: number }) | undefined> {
  const display = o.display ?? store.describe();
  let candidates: string[] = [];
  if (typeof store.listReferrers === 'function') {
    const list = await store.listReferrers(manifestDigest, BOOT_PROFILE_ARTIFACT);
    // The newest first: a profile recorded again replaces the older one.
    candidates = list
      .map((d) => ({ d, at: d.annotations?.[ANN_CREATED] ?? '' }))
      .sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0))
      .map((x) => x.d.digest);
  } else if (o.tag && !o.tag.startsWith('sha256:')) {
    candidates = [`${o.tag}${PROFILE_TAG_SUFFIX}`];
  }
  // Only the newest is tried: an older one is stale by definition.
  for (const ref of candidates.slice(0, 1)) {
    let got;
    try {
      got = await store.getManifest(ref);
    } catch (err) {
      // No fallback tag: the image has no profile.
      if (err instanceof OrbError && err.kind === 'input' && !ref.startsWith('sha256:')) return undefined;
      throw err;
    }
    const where = `${display}: boot profile ${got.digest.slice(0, 19)}`;
    const m = parseJsonObject(got.bytes, where, MAX_MANIFEST_BYTES);
    const subject = m.subject;
    if (!isObject(subject) || subject.digest !== manifestDigest)
      throw new OrbError('input', `${where} belongs to another manifest, not ${manifestDigest.slice(0, 19)}`);
    if (m.artifactType !== BOOT_PROFILE_ARTIFACT || !Array.isArray(m.layers) || m.layers.length !== 1)
      throw new OrbError(
        'input',
        `${where} is not a boot profile artifact (${BOOT_PROFILE_ARTIFACT}, one layer)`,
      );
    const layer = m.layers[0] as Descriptor;
    if (!isObject(layer) || typeof layer.digest !== 'string' || typeof layer.size !== 'number')
      throw new OrbError('input', `${where}: its layer is not a descriptor`);
    if (layer.size > MAX_PROFILE_BYTES)
      throw new OrbError('input', `${where}: ${layer.size} bytes (at most ${MAX_PROFILE_BYTES})`);
    const blob = await readSmallBlob(store, layer, MAX_PROFILE_BYTES);
    const profile = decodeBootProfile(blob, idx, where);
    o.log?.info(`${where}: ${profile.blocks.length} blocks the boot reads, fetched first`);
    return { ...profile, digest: got.digest, bytes: got.bytes.length + blob.length };
  }
  return undefined;
}

/**
 * Fetches the frames holding `blocks`, in that order, and stops: the boot's working set only,
 * not the whole disk (a smoke test on a small runner must not fill its disk). Demand reads go
 * first; resolves when done or the disk closes, never rejects.
 */
export async function prefetchBlocks(
  disk: LazyDisk,
  blocks: readonly number[],
  o: { concurrency?: number; batchFrames?: number } = {},
): Promise<void> {
  const { idx } = disk.map;
  const frames: number[] = [];
  const given = new Uint8Array(idx.frameCount);
  for (const b of blocks) {
    const e = disk.map.entryOf(b);
    if (e < 0) continue;
    const f = idx.entryFrame[e]!;
    if (given[f]) continue;
    given[f] = 1;
    frames.push(f);
  }
  let next = 0;
  const batch = o.batchFrames ?? 8;
  const worker = async () => {
    while (next < frames.length && !disk.signal.aborted) {
      await disk.demandIdle();
      const take: number[] = [];
      while (take.length < batch && next < frames.length) {
        const f = frames[next++]!;
        if (!disk.isInflight(f) && !disk.map.frameLocal(f) && !disk.badFrames.has(f)) take.push(f);
      }
      if (!take.length) continue;
      await Promise.allSettled(disk.fetchFrames(take, 'fill').values());
    }
  };
  await Promise.all(Array.from({ length: o.concurrency ?? 2 }, worker));
}
