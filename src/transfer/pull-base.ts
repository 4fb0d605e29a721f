import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import { MANIFEST_SCHEMA, manifestImagePath, type OrbManifest } from '../core/stage-manifest-file.js';
import { LayoutStore } from '../stores/layout.js';
import { DISK_CHUNK_RAW, type Descriptor } from '../formats/oci-media.js';
import { parseLayoutRef } from '../oci/reference.js';
import { deviceSize } from './block-device.js';
import { decodeChunk, sha256Async } from './check-chunk.js';
import { inspectImage } from '../image/inspect.js';
import { openDiskReader, type DiskReader } from '../image/reader.js';
import { makePlan, resolveManifest, type Region } from './pull-plan.js';
import { detectFileFormat } from '../formats/file-format.js';

/**
 * `--base`: a local earlier version whose unchanged chunks are taken instead of downloaded.
 * Nothing from the base is trusted: every region taken is checked against the new manifest's
 * chunk digest. Bases: a disk (the output of an earlier pull: raw read directly, qcow2 and
 * others through qemu-nbd) read at the same offsets, a chunked layout (oci-layout:DIR:TAG or its
 * directory) looked up by chunk digest, or an orb stage manifest naming either.
 */
export interface BaseSource {
  describe: string;
  /** the verified bytes of `region` from the base, or undefined when the base differs there */
  lookup(region: Region): Promise<Buffer | undefined>;
  close(): Promise<void>;
}

class RawBase implements BaseSource {
  constructor(
    readonly describe: string,
    private readonly fh: FileHandle,
    private readonly size: number,
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

class LayoutBase implements BaseSource {
  constructor(
    readonly describe: string,
    private readonly store: LayoutStore,
    private readonly chunks: Map<string, { blob: Descriptor; kind: 'zstd' | 'raw'; length: number }>,
  ) {}
  async lookup(region: Region): Promise<Buffer | undefined> {
    const c = this.chunks.get(region.digest);
    if (!c || c.length !== region.length) return undefined;
    let blob: Buffer;
    try {
      blob = await this.store.layout.readBytes(c.blob.digest);
    } catch {
      return undefined; // missing or corrupt in the base: download instead
    }
    return decodeChunk(c.kind, blob, region.length, region.digest, `base ${this.describe}`).catch(
      () => undefined,
    );
  }
  async close(): Promise<void> {}
}

async function layoutBase(dir: string, tag: string | undefined, display: string): Promise<BaseSource> {
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
  const chunks = new Map<string, { blob: Descriptor; kind: 'zstd' | 'raw'; length: number }>();
  for (const u of plan.units) {
    if (u.kind === 'part') continue;
    for (const r of u.regions)
      chunks.set(r.digest, {
        blob: u.blob,
        kind: u.blob.mediaType === DISK_CHUNK_RAW ? 'raw' : 'zstd',
        length: r.length,
      });
  }
  return new LayoutBase(display, store, chunks);
}

/** qcow2, vhdx, vmdk, ...: read through the disk reader of src/image (qemu-nbd), skipping holes. */
class DiskBase implements BaseSource {
  constructor(
    readonly describe: string,
    private readonly reader: DiskReader,
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

async function fileBase(path: string, display: string): Promise<BaseSource> {
  const fh = await open(path, 'r');
  const head = Buffer.alloc(512);
  await fh.read(head, 0, 512, 0);
  const format = detectFileFormat(head);
  if (format === 'raw') {
    const size = (await fh.stat()).size;
    return new RawBase(display, fh, size);
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

export async function openBase(spec: string): Promise<BaseSource> {
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
  if (st.isBlockDevice()) return new RawBase(spec, await open(path, 'r'), await deviceSize(path));
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
