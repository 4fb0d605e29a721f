import { stat } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import { MAX_CONFIG_BYTES } from '../core/untrusted.js';
import type { Progress } from '../core/progress.js';
import { MAX_INDEX_BLOB } from '../formats/disk-index.js';
import { checkDiskV2Config, checkDiskV2Manifest, loadDiskIndex } from '../oci/disk-v2.js';
import { readSmallBlob } from '../stores/layout.js';
import type { OpenedStore } from '../stores/open.js';
import { resolveManifest } from '../transfer/pull-plan.js';
import { isChunkedLayout, parseLayoutRef, readChunkedLayout } from './chunked/read.js';
import { diskContentRoot } from './content-root.js';
import { inspectImage } from './inspect.js';
import { openDiskReader } from './reader.js';
import { defaultThreads, WorkerPool } from './workers.js';

/**
 * `orb digest`: the content identity (orb2 root, docs/chunked-format-v2.md "Content identity")
 * of a disk file, a chunked layout or a published image. The same disk gives the same root in
 * every form: raw, qcow2, its layout, the pulled disk.
 */
export interface DigestResult {
  contentDigest: string;
  /** 'disk' (a file was read: its data extents only), 'layout' or 'store' (the index was read) */
  kind: 'disk' | 'layout' | 'store';
  virtualSize: number;
  /** disk files: bytes read (data extents); layouts and stores: the index blob's size */
  readBytes: number;
}

/** A local path (file or layout directory) or `oci-layout:DIR[:TAG]`, versus a store reference. */
export async function isLocalInput(ref: string): Promise<boolean> {
  if (ref.startsWith('oci-layout:')) return true;
  if (/^[a-z][a-z0-9+.-]*:\/\//.test(ref)) return false;
  return !!(await stat(ref).catch(() => undefined));
}

/** Root of a local disk file or layout. */
export async function localContentDigest(
  ref: string,
  o: { threads?: number; progress?: (label: string, total?: number) => Progress; signal?: AbortSignal } = {},
): Promise<DigestResult> {
  const { dir, tag } = parseLayoutRef(ref);
  if (
    ref.startsWith('oci-layout:') ||
    ((await stat(dir).catch(() => undefined))?.isDirectory() && (await isChunkedLayout(dir)))
  ) {
    // the index's root was recomputed from its entries and checked against config and manifest
    const img = await readChunkedLayout(dir, tag, { packs: false });
    return {
      contentDigest: img.index.contentDigest,
      kind: 'layout',
      virtualSize: img.index.virtualSize,
      readBytes: img.indexDescriptor.size,
    };
  }
  const info = await inspectImage(ref, o.signal ? { signal: o.signal } : {});
  const reader = await openDiskReader(info, { signal: o.signal });
  const pool = new WorkerPool(Math.max(1, o.threads ?? defaultThreads()));
  try {
    const root = await diskContentRoot(
      reader,
      pool,
      o.progress?.('digest', reader.extents.dataBytes > 0 ? info.virtualSize : 0),
      o.signal,
    );
    return {
      contentDigest: root,
      kind: 'disk',
      virtualSize: info.virtualSize,
      readBytes: reader.extents.dataBytes,
    };
  } finally {
    await reader.close().catch(() => undefined);
    await pool.close();
  }
}

/** Root of a published image: only the manifest, the config and the index are downloaded. */
export async function storeContentDigest(opened: OpenedStore): Promise<DigestResult> {
  const { store, display } = opened;
  const { manifest } = await resolveManifest(store, opened.tag ?? 'latest', display);
  const layers = checkDiskV2Manifest(manifest, display);
  const config = checkDiskV2Config(await readSmallBlob(store, manifest.config, MAX_CONFIG_BYTES), display);
  if (layers.index.size > MAX_INDEX_BLOB)
    throw new OrbError(
      'input',
      `${display}: the index is ${layers.index.size} bytes, more than ${MAX_INDEX_BLOB}`,
    );
  const blob = await readSmallBlob(store, layers.index, MAX_INDEX_BLOB);
  const idx = loadDiskIndex(blob, manifest, config, layers, display);
  return {
    contentDigest: idx.contentDigest,
    kind: 'store',
    virtualSize: idx.virtualSize,
    readBytes: blob.length,
  };
}
