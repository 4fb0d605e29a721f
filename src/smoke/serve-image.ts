import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { trackPath } from '../core/cleanup.js';
import { OrbError } from '../core/errors.js';
import { newManifest, writeManifest, type BuildInfo } from '../core/stage-manifest-file.js';
import { LazyDisk } from '../serve/lazy-disk.js';
import { startNbdServer } from '../serve/nbd-server.js';
import { openDiskV2, storeFetcher } from '../serve/open-image.js';
import { writeProfile } from '../serve/profile.js';
import { openStore } from '../stores/open.js';
import { partitioningOf, type DiskFacts } from './disk.js';
import type { Logger } from '../core/log.js';
import type { StoreOptions } from '../stores/open.js';

export interface ServedImage {
  kind: 'reference';
  /** the cache being filled (not a whole disk: boot `disk`) */
  path: string;
  /** stage manifest with the published build facts */
  manifest: string;
  display: string;
  /** what QEMU opens: the NBD export */
  disk: DiskFacts;
  served(): { bytesFetched: number; bytesLocal: number };
  /** writes the boot profile (blocks in first-read order) */
  saveProfile(path: string): Promise<void>;
  dispose(): Promise<void>;
}

/**
 * A published chunked image booted through `orb serve` instead of being pulled: the VM's overlay
 * backs onto an NBD export whose blocks are fetched (and verified) as the boot reads them, so a
 * runner smoke-tests an image larger than its disk and the boot starts at once. The cache of
 * fetched blocks lives in a temporary folder that `dispose` removes.
 */
export async function serveImage(
  ref: string,
  opts: { log: Logger; signal?: AbortSignal; store: StoreOptions; pullDir?: string },
): Promise<ServedImage | undefined> {
  const root = opts.pullDir ?? (process.env.RUNNER_TEMP || tmpdir());
  await mkdir(root, { recursive: true });
  const opened = await openStore(ref, opts.store);
  let img;
  try {
    img = await openDiskV2(opened.store, opened.tag ?? 'latest', opened.display);
  } catch (err) {
    await opened.store.close?.();
    // Not a chunked disk (a published qcow2 file): the caller pulls it.
    if (err instanceof OrbError && err.kind === 'input' && /is not a chunked disk image/.test(err.message))
      return undefined;
    throw err;
  }
  const dir = await mkdtemp(join(root, 'orb-smoke-serve-'));
  const tracked = trackPath(dir);
  const cache = join(dir, 'disk.raw');
  let disk: LazyDisk | undefined;
  let server: Awaited<ReturnType<typeof startNbdServer>> | undefined;
  const dispose = async () => {
    await server?.close();
    await disk?.close();
    await opened.store.close?.();
    await rm(dir, { recursive: true, force: true });
    tracked.keep();
  };
  try {
    disk = await LazyDisk.open({
      index: img.index,
      display: opened.display,
      cache,
      fetch: storeFetcher(opened.store, opts.log),
      log: opts.log,
    });
    const d = disk;
    const socket = join(dir, 'nbd.sock');
    server = await startNbdServer({
      source: {
        size: d.size,
        read: (offset, length, signal) => d.read(offset, length, signal),
        status: (offset, length) => Promise.resolve(d.status(offset, length)),
      },
      exportName: 'disk',
      socket,
      log: opts.log,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    const partitioning = partitioningOf(await d.read(0, 512), opened.display);
    // QEMU opens the export as the overlay's raw backing: reconnect-delay holds guest I/O across a
    // dropped connection instead of failing it.
    const qemu = `json:${JSON.stringify({
      driver: 'raw',
      file: { driver: 'nbd', server: { type: 'unix', path: socket }, export: 'disk', 'reconnect-delay': 10 },
    })}`;
    const facts: DiskFacts = {
      path: cache,
      format: 'raw',
      virtualSize: d.size,
      fileSize: 0,
      external: [socket],
      qemu,
      partitioning,
      suggestedFirmware: partitioning === 'gpt' ? 'uefi' : 'bios',
    };
    const manifestPath = join(dir, 'disk.raw.orb.json');
    const m = newManifest(
      'serve',
      { path: cache, format: 'raw', virtualSize: d.size, fileSize: 0 },
      { published: { reference: opened.display, digest: img.manifestDigest } },
    );
    if (img.config.build) m.build = img.config.build as BuildInfo;
    await writeManifest(manifestPath, m);
    opts.log.info(
      `booting ${opened.display} through orb serve: blocks are fetched as the guest reads them (--full-pull downloads it first)`,
    );
    return {
      kind: 'reference',
      path: cache,
      manifest: manifestPath,
      display: opened.display,
      disk: facts,
      served: () => ({ bytesFetched: d.stats.bytesFetched, bytesLocal: d.map.localBytes() }),
      saveProfile: (path: string) => writeProfile(path, img.index, d.profile),
      dispose,
    };
  } catch (err) {
    await dispose();
    throw err;
  }
}
