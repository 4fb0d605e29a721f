import '../stores/schemes.js';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { trackPath } from '../core/cleanup.js';
import { OrbError } from '../core/errors.js';
import { newManifest, writeManifest, type BuildInfo } from '../core/stage-manifest-file.js';
import { BlockRecorder, encodeBootProfile } from '../formats/boot-profile.js';
import { DISK_V2_ARTIFACT } from '../formats/oci-media.js';
import { findBootProfile, prefetchBlocks } from '../serve/boot-profile.js';
import { LazyDisk } from '../serve/lazy-disk.js';
import { startNbdServer, type NbdServer } from '../serve/nbd-server.js';
import { openDiskV2, storeFetcher } from '../serve/open-image.js';
import { openStore } from '../stores/open.js';
import { resolveManifest } from '../transfer/pull-plan.js';
import type { DiskFacts } from './disk.js';
import type { SmokeResult } from './types.js';
import {
  looksLikeReference,
  resolveImageSource,
  type ImageSource,
  type SourceOptions,
} from './open-image.js';

/**
 * A published chunked disk booted before it is downloaded: the serve machinery runs in this
 * process (a LazyDisk behind an NBD server on a private Unix socket) and QEMU reads the disk
 * through a throw-away qcow2 overlay backed by that socket. Only the blocks the boot reads are
 * fetched (each verified before QEMU sees it); nothing fills in the background, so a runner
 * with little disk smoke-tests an image it could not hold. The reads are recorded, in order of
 * first read, as the image's boot profile.
 *
 * In-process rather than `orb serve --json` as a child: the recorder and the byte counters are
 * plain objects here (no second protocol to parse), and one process owns one cleanup path.
 */
export interface LazyImage {
  /** the NBD URI QEMU's overlay is backed by */
  uri: string;
  display: string;
  /** a stage manifest written from the published config (firmware, OS), when it had a build */
  manifest?: string;
  manifestDigest: string;
  contentDigest: string;
  virtualSize: number;
  /** compressed bytes of the image's packs (what a full pull fetches, besides metadata) */
  compressedBytes: number;
  /** the disk as smokeTest needs it, inspected without a local file */
  facts: DiskFacts;
  /** whether a published boot profile was prefetched */
  profileUsed: boolean;
  /** compressed bytes of packs fetched so far (the blocks read; Range requests) */
  bytesFetched(): number;
  /** bytes of metadata fetched: manifest, config, index, boot profile */
  metadataBytes: number;
  /** stops recording: the boot is over */
  freezeProfile(): void;
  /** the recorded profile blob (blocks read until freezeProfile) */
  profile(): { blob: Buffer; blocks: number; truncated: boolean };
  dispose(): Promise<void>;
}

export interface LazyOptions extends SourceOptions {
  /** fetch the published boot profile's blocks first (default true) */
  prefetch?: boolean;
}

/**
 * Opens `ref` lazily. Undefined when the reference is not a chunked v2 disk (a published qcow2
 * file): the caller pulls it instead.
 */
export async function openLazyImage(ref: string, opts: LazyOptions): Promise<LazyImage | undefined> {
  const opened = await openStore(ref, opts.store);
  const tag = opened.tag ?? 'latest';
  let metaBytes = 0;
  const cleanups: (() => Promise<unknown>)[] = [async () => opened.store.close?.()];
  const undo = async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  };
  try {
    const { manifest, digest } = await resolveManifest(opened.store, tag, opened.display);
    if ((manifest.artifactType ?? manifest.config.mediaType) !== DISK_V2_ARTIFACT) {
      await undo();
      return undefined;
    }
    const img = await openDiskV2(opened.store, digest, opened.display);
    metaBytes += JSON.stringify(manifest).length + img.manifest.config.size + img.manifest.layers[0]!.size;
    const root = opts.pullDir ?? (process.env.RUNNER_TEMP || tmpdir());
    await mkdir(root, { recursive: true });
    const dir = await mkdtemp(join(root, 'orb-smoke-lazy-'));
    const tracked = trackPath(dir);
    cleanups.push(async () => {
      await rm(dir, { recursive: true, force: true });
      tracked.keep();
    });
    const disk = await LazyDisk.open({
      index: img.index,
      display: opened.display,
      cache: join(dir, 'disk.raw'),
      fetch: storeFetcher(opened.store, opts.log),
      log: opts.log,
      retryMs: 60_000,
    });
    cleanups.push(() => disk.close());
    const { idx } = disk.map;
    const socket = join(dir, 'nbd.sock');
    const recorder = new BlockRecorder(idx.virtualSize, idx.blockSize, (b) => disk.map.entryOf(b) >= 0);
    const server: NbdServer = await startNbdServer({
      source: {
        size: disk.size,
        read: (offset, length, signal) => {
          recorder.note(offset, length);
          return disk.read(offset, length, signal);
        },
        status: (offset, length) => Promise.resolve(disk.status(offset, length)),
      },
      exportName: 'disk',
      socket,
      log: opts.log,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    cleanups.push(() => server.close());

    let profileUsed = false;
    if (opts.prefetch !== false) {
      const found = await findBootProfile(opened.store, digest, idx, {
        tag,
        log: opts.log,
        display: opened.display,
      }).catch((err: unknown) => {
        if (!(err instanceof OrbError) || err.kind === 'interrupted' || err.kind === 'internal') throw err;
        opts.log.warn(`boot profile ignored: ${err.message}`);
        return undefined;
      });
      if (found) {
        profileUsed = true;
        metaBytes += found.bytes;
        void prefetchBlocks(disk, found.blocks);
      }
    }

    // What inspectDisk learns from a file, from the disk itself: the first sector decides the firmware.
    const partitioning = partitioningOf(await disk.read(0, 512), opened.display);
    // QEMU opens the export as the overlay's raw backing; reconnect-delay holds guest I/O across
    // a dropped connection instead of failing it.
    const qemu = `json:${JSON.stringify({
      driver: 'raw',
      file: { driver: 'nbd', server: { type: 'unix', path: socket }, export: 'disk', 'reconnect-delay': 10 },
    })}`;
    const facts: DiskFacts = {
      path: join(dir, 'disk.raw'),
      format: 'raw',
      qemu,
      external: [socket],
      virtualSize: disk.size,
      fileSize: img.index.packs.reduce((n, p) => n + p.size, 0),
      partitioning,
      suggestedFirmware: partitioning === 'gpt' ? 'uefi' : 'bios',
    };

    let stage: string | undefined;
    const build = img.config.build as BuildInfo | undefined;
    if (build) {
      stage = join(dir, 'image.orb.json');
      const m = newManifest(
        'pull',
        { path: facts.path, format: 'raw', virtualSize: disk.size, fileSize: 0 },
        { published: { reference: `${opened.display}@${digest}`, digest } },
      );
      m.build = build;
      await writeManifest(stage, m);
    }
    opts.log.info(
      `booting ${opened.display} through orb serve (in this process, ${server.uri}): blocks are fetched and verified as the guest reads them, nothing is filled in the background (--full-pull downloads it first)`,
    );
    return {
      uri: server.uri,
      display: opened.display,
      ...(stage ? { manifest: stage } : {}),
      manifestDigest: digest,
      contentDigest: idx.contentDigest,
      virtualSize: disk.size,
      compressedBytes: facts.fileSize,
      facts,
      profileUsed,
      bytesFetched: () => disk.stats.bytesFetched,
      metadataBytes: metaBytes,
      freezeProfile: () => recorder.freeze(),
      profile: () => {
        recorder.freeze();
        return {
          blob: encodeBootProfile({
            virtualSize: idx.virtualSize,
            blockSize: idx.blockSize,
            contentDigest: idx.contentDigest,
            blocks: recorder.blocks,
          }),
          blocks: recorder.blocks.length,
          truncated: recorder.full,
        };
      },
      dispose: undo,
    };
  } catch (err) {
    await undo();
    throw err;
  }
}

/**
 * What smoke-test boots: a remote chunked disk lazily (unless `fullPull`), anything else as
 * resolveImageSource gives it (a local file, or a pull).
 */
export async function openSmokeImage(
  text: string,
  opts: LazyOptions & { fullPull: boolean },
): Promise<{ image: ImageSource; lazy?: LazyImage }> {
  let ref: string | undefined;
  if (looksLikeReference(text)) ref = text;
  else if (await stat(join(resolve(text), 'oci-layout')).catch(() => undefined))
    ref = `oci-layout:${resolve(text)}`;
  if (ref && !opts.fullPull) {
    const lazy = await openLazyImage(ref, opts);
    if (lazy)
      return {
        lazy,
        image: {
          kind: ref.startsWith('oci-layout:') ? 'layout' : 'reference',
          path: lazy.uri,
          ...(lazy.manifest ? { manifest: lazy.manifest } : {}),
          display: lazy.display,
          dispose: lazy.dispose,
        },
      };
    opts.log.info(`${text} is not a chunked v2 disk (it cannot be served block by block): pulling it first`);
  }
  return { image: await resolveImageSource(text, opts) };
}

/** The boot profile a lazy boot recorded, written into the evidence when RDP answered. */
export async function saveProfile(
  lazy: LazyImage,
  result: SmokeResult,
  log: SourceOptions['log'],
): Promise<{ path: string; blocks: number } | undefined> {
  if (result.timings.rdpReady === undefined) {
    log.info('no boot profile kept: RDP never answered, so the reads are not a boot');
    return undefined;
  }
  const p = lazy.profile();
  const path = join(result.evidenceDir, 'boot-profile.bin');
  await writeFile(path, p.blob);
  log.info(
    `boot profile: ${p.blocks} blocks in order of first read (${p.blob.length} bytes) in ${path}${p.truncated ? ' (truncated at its limit)' : ''}; attach it with orb publish --boot-profile`,
  );
  return { path, blocks: p.blocks };
}

/** As inspectDisk judges a file's first sector: a boot signature, and MBR or GPT. */
function partitioningOf(sector: Buffer, display: string): DiskFacts['partitioning'] {
  if (sector.every((b) => b === 0) || sector[510] !== 0x55 || sector[511] !== 0xaa)
    throw new OrbError(
      'input',
      `${display} is not a bootable disk image: its first sector has no boot signature (55 AA)`,
      { hint: 'this is not a whole-disk image, or the wrong image was published' },
    );
  let partitioning: DiskFacts['partitioning'] = 'none';
  for (let i = 0; i < 4; i++) {
    const type = sector[446 + i * 16 + 4]!;
    if (type === 0xee) partitioning = 'gpt';
    else if (type !== 0 && partitioning === 'none') partitioning = 'mbr';
  }
  return partitioning;
}
