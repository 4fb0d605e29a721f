import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import { MANIFEST_SCHEMA, manifestImagePath, type OrbManifest } from '../core/stage-manifest-file.js';
import { LayoutStore } from '../stores/layout.js';
import { parseLayoutRef } from '../oci/reference.js';
import { deviceSize } from './block-device.js';
import { sha256Async } from './part-check.js';
import type { DiskIndex } from '../formats/disk-index.js';
import { DigestLookup } from './digest-lookup.js';
import { inspectImage } from '../image/inspect.js';
import { openDiskReader, type DiskReader } from '../image/reader.js';
import { makePlan, resolveManifest, type Region } from './pull-plan.js';
import { detectFileFormat } from '../formats/file-format.js';

/**
 * `--base`: a local earlier version whose unchanged blocks (or file parts) are taken instead of
 * downloaded. Nothing from the base is trusted: every block taken is checked against the new
 * index's digest (file parts against their part digest). Bases: a disk (the output of an earlier
 * pull: raw files and devices read directly by worker threads, qcow2 and others through
 * qemu-nbd), a chunked v2 layout (oci-layout:DIR:TAG or its directory) looked up by block
 * digest, or an orb stage manifest naming either.
 */
export interface BaseSource {
  describe: string;
  /** the verified bytes of `region` from the base, or undefined when the base differs there */
  lookup(region: Region): Promise<Buffer | undefined>;
  close(): Promise<void>;
}

export class RawBase implements BaseSource {
  readonly kind = 'raw' as const;
  constructor(
    readonly describe: string,
    private readonly fh: FileHandle,
    readonly size: number,
    readonly path: string,
  ) {}
  async lookup(region: Region): Promise<Buffer | undefined> {
    if (region.offset + region.length > this.size) return undefined;
    const buf = Buffer.allocUnsafe(region.length);
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, region.offset + done);
      if (bytesRead === 0) return undefined;
      done += bytesRead;
    }
    return (await sha256Async(buf)) === region.digest ? buf : undefined;
  }
  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

/**
 * A chunked v2 layout as a base: its index (checked like a downloaded one) and a lookup by block
 * digest. Blocks found are decoded from its packs (positioned reads) and verified like any
 * downloaded frame; nothing of it is trusted.
 */
export interface LayoutDiskBase {
  kind: 'layout';
  describe: string;
  store: LayoutStore;
  index: DiskIndex;
  lookup: DigestLookup;
}

async function layoutBase(dir: string, tag: string | undefined, display: string): Promise<LayoutDiskBase> {
  const store = new LayoutStore(dir);
  let ref = tag;
  if (!ref) {
    const tags = await store.tags();
    ref = tags.length === 1 ? tags[0] : tags.includes('latest') ? 'latest' : undefined;
    if (!ref)
      throw new UsageError(
        `base ${display} holds several tags (${tags.join(', ')})`,
        'name one as oci-layout:DIR:TAG',
      );
  }
  const { manifest, digest } = await resolveManifest(store, ref!, display);
  const plan = await makePlan(store, manifest, digest, display);
  if (!plan.index)
    throw new UsageError(
      `base ${display} is a file, not a disk image`,
      'give a disk or a chunked disk layout',
    );
  const index = plan.index;
  return {
    kind: 'layout',
    describe: display,
    store,
    index,
    lookup: new DigestLookup(index.digests, index.entryCount),
  };
}

/** qcow2, vhdx, vmdk, ...: read through the disk reader of src/image (qemu-nbd), skipping holes. */
export class DiskBase implements BaseSource {
  readonly kind = 'reader' as const;
  constructor(
    readonly describe: string,
    readonly reader: DiskReader,
  ) {}
  async lookup(region: Region): Promise<Buffer | undefined> {
    if (region.offset + region.length > this.reader.virtualSize) return undefined;
    // a region the base holds no data in reads as zeros, and stored chunks are never all zero
    if (!this.reader.extents.within(region.offset, region.offset + region.length).length) return undefined;
    const buf = Buffer.allocUnsafe(region.length);
    await this.reader.read(region.offset, buf);
    return (await sha256Async(buf)) === region.digest ? buf : undefined;
  }
  async close(): Promise<void> {
    await this.reader.close();
  }
}

async function fileBase(path: string, display: string): Promise<RawBase | DiskBase> {
  const fh = await open(path, 'r');
  const head = Buffer.alloc(512);
  await fh.read(head, 0, 512, 0);
  const format = detectFileFormat(head);
  if (format === 'raw') {
    const size = (await fh.stat()).size;
    return new RawBase(display, fh, size, path);
  }
  await fh.close();
  if (format === 'qcow2' || format === 'vhdx' || format === 'vmdk') {
    const info = await inspectImage(path);
    return new DiskBase(display, await openDiskReader(info));
  }
  throw new UsageError(
    `base ${display} is ${format}; a base must be a disk image (raw, qcow2, ...) or a chunked layout`,
    'give the disk an earlier pull wrote, or its chunked layout',
  );
}

export type Base = RawBase | DiskBase | LayoutDiskBase;

export async function closeBase(b: Base | undefined): Promise<void> {
  if (b && b.kind !== 'layout') await b.close();
}

export async function openBase(spec: string): Promise<Base> {
  if (/^[a-z][a-z0-9+.-]*:\/\//.test(spec)) {
    throw new UsageError(
      `--base must be local (a raw disk, a chunked layout or an orb manifest), not '${spec}'`,
      'pull the earlier version once, then give its path as --base',
    );
  }
  if (spec.startsWith('oci-layout:')) {
    const r = parseLayoutRef(spec);
    return layoutBase(resolve(r.dir), r.digest ?? r.tag, spec);
  }
  const path = resolve(spec);
  const st = await stat(path).catch(() => undefined);
  if (!st) throw new UsageError(`base '${spec}' does not exist`);
  if (st.isDirectory()) return layoutBase(path, undefined, spec);
  // a block device (an in-place update of `orb pull --output /dev/XYZ`) holds a raw disk (stat says size 0: never read it as a manifest)
  if (st.isBlockDevice()) return new RawBase(spec, await open(path, 'r'), await deviceSize(path), path);
  if (st.size < 4 << 20) {
    const text = await readFile(path, 'utf8').catch(() => '');
    if (text.startsWith('{')) {
      let m: OrbManifest | undefined;
      try {
        const j = JSON.parse(text) as OrbManifest;
        if (j.schema === MANIFEST_SCHEMA) m = j;
      } catch {
        /* a small raw disk that starts with '{' */
      }
      if (m) {
        const image = manifestImagePath(path, m);
        if (m.image.format === 'chunked') {
          return layoutBase(
            m.image.chunked?.layout ? resolve(dirname(path), m.image.chunked.layout) : image,
            m.image.chunked?.tag,
            spec,
          );
        }
        return fileBase(image, spec);
      }
    }
  }
  if (!st.isFile()) throw new OrbError('input', `base '${spec}' is not a regular file`);
  return fileBase(path, spec);
}
