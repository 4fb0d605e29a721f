import { createHash } from 'node:crypto';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { OrbError } from '../../core/errors.js';
import {
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  MAX_VIRTUAL_SIZE,
  checkDescriptor,
  checkTag,
  clip,
  parseJsonObject,
  quoteUntrusted,
  untrustedError,
} from '../../core/untrusted.js';
import { entryDigest, MAX_INDEX_BLOB, type DiskIndex } from '../../formats/disk-index.js';
import { ANN_BASE_REFERENCE, DISK_V2_ARTIFACT, type ImageManifest } from '../../formats/oci-media.js';
import {
  checkDiskV2Config,
  checkDiskV2Manifest,
  decodeIndexFrame,
  loadDiskIndex,
} from '../../oci/disk-v2.js';
import { OciLayout } from '../../oci/layout.js';
import { Extents } from '../extents.js';
import type { DiskReader, ImageInfo } from '../disk.js';
import type { WorkerPool } from '../workers.js';
import type { ChunkedImage } from './image.js';

export type { ChunkedImage } from './image.js';

export async function isChunkedLayout(dir: string): Promise<boolean> {
  return !!(await stat(join(dir, 'oci-layout')).catch(() => undefined));
}

/** `oci-layout:DIR[:TAG]` or a plain directory path → directory and tag (if given). */
export function parseLayoutRef(ref: string): { dir: string; tag?: string } {
  if (!ref.startsWith('oci-layout:')) return { dir: ref };
  const rest = ref.slice('oci-layout:'.length);
  const i = rest.lastIndexOf(':');
  return i > 0 ? { dir: rest.slice(0, i), tag: rest.slice(i + 1) } : { dir: rest };
}

export interface ReadLayoutOptions {
  /** check that every pack blob is present with its size (default true; `orb digest` needs none) */
  packs?: boolean;
}

/**
 * Reads and validates the manifest, config and index of a chunked image. `tag` defaults to the
 * layout's only orb disk, else `latest`; a `sha256:...` manifest digest works too.
 */
export async function readChunkedLayout(
  dir: string,
  tag?: string,
  opts: ReadLayoutOptions = {},
): Promise<ChunkedImage> {
  const layout = new OciLayout(dir);
  if (!(await layout.isLayout())) {
    throw new OrbError('input', `${dir} is not an OCI image layout (no oci-layout file)`, {
      hint: 'give a directory written by orb convert --format chunked',
    });
  }
  if (tag === undefined) {
    const disks = (await layout.readIndex()).manifests.filter((m) => m.artifactType === DISK_V2_ARTIFACT);
    tag =
      disks.length === 1
        ? checkTag(
            disks[0]!.annotations?.['org.opencontainers.image.ref.name'] ?? 'latest',
            `${dir}/index.json ref.name`,
          )
        : 'latest';
  }
  const desc = await layout.resolve(tag);
  const where = `${dir}:${clip(tag)}`;
  if (desc.size > MAX_MANIFEST_BYTES)
    throw untrustedError(`${where}: manifest size`, `is more than ${MAX_MANIFEST_BYTES} bytes`, desc.size);
  const bytes = await layout.readBytes(desc.digest);
  const json = parseJsonObject(bytes, `${where}: manifest`, MAX_MANIFEST_BYTES);
  if (json.artifactType !== DISK_V2_ARTIFACT) {
    throw new OrbError(
      'input',
      `${where} is not an orb disk image of format v2 (artifactType ${quoteUntrusted(json.artifactType)})`,
      { hint: 'give a layout written by orb convert --format chunked (this version)' },
    );
  }
  if (!Array.isArray(json.layers))
    throw untrustedError(`${where}: manifest layers`, 'is not an array', json.layers);
  const manifest: ImageManifest = {
    ...(json as unknown as ImageManifest),
    config: checkDescriptor(json.config, `${where}: manifest config`, MAX_CONFIG_BYTES),
    layers: json.layers.map((l, i) =>
      checkDescriptor(l, `${where}: manifest layers[${i}]`, MAX_VIRTUAL_SIZE),
    ),
  };
  const layers = checkDiskV2Manifest(manifest, where);
  const config = checkDiskV2Config(await layout.readBytes(manifest.config.digest, MAX_CONFIG_BYTES), where);
  const blob = await layout.readBytes(layers.index.digest, MAX_INDEX_BLOB);
  if (blob.length !== layers.index.size)
    throw untrustedError(
      `${where}: index`,
      `is ${blob.length} bytes, the manifest says ${layers.index.size}`,
    );
  const index = loadDiskIndex(blob, manifest, config, layers, where);
  if (opts.packs !== false) {
    for (const p of layers.packs) {
      const size = await layout.blobSize(p.digest);
      const base = manifest.annotations?.[ANN_BASE_REFERENCE];
      if (size === undefined && typeof base === 'string')
        throw new OrbError(
          'input',
          `${where}: pack ${p.digest} is not in this layout: it lives in the base ${clip(base, 200)} (converted with --base from a published image)`,
          {
            hint: 'publish this layout (orb publish skips or mounts the base packs) and orb pull it, or convert again with a local layout as --base',
          },
        );
      if (size !== p.size)
        throw new OrbError(
          'input',
          `${where}: pack ${p.digest} is ${size === undefined ? 'missing' : `${size} bytes, the manifest says ${p.size}`}`,
          { hint: 'the layout is incomplete or truncated: copy it again from its source' },
        );
    }
  }
  return {
    layout,
    tag,
    manifest,
    manifestDigest: desc.digest,
    manifestSize: bytes.length,
    config,
    indexDescriptor: layers.index,
    index,
    packs: layers.packs,
    storedBytes: layers.index.size + layers.packs.reduce((n, p) => n + p.size, 0),
  };
}

/** The disk ranges of an index's entries (zero blocks are holes). */
export function indexExtents(idx: DiskIndex): Extents {
  const e = new Extents(idx.virtualSize);
  for (let i = 0; i < idx.entryCount; i++) {
    const start = idx.entryBlock[i]! * idx.blockSize;
    e.add(start, Math.min(idx.blockSize, idx.virtualSize - start));
  }
  return e;
}

/** A decoded frame and which of its slots were checked against their digest. */
interface Frame {
  data: Buffer;
  checked: Uint8Array;
  /** sha256 of each slot, when a worker decoded the frame (else computed here on first use) */
  digests?: Uint8Array;
}

/**
 * A DiskReader over a chunked layout: frames are read from the pack files with positioned reads,
 * decoded (size bounds from the index), and each block is checked against its sha256 before any
 * of its bytes are used. Blocks without an entry are zeros (and outside `extents`).
 */
export class LayoutReader implements DiskReader {
  readonly extents: Extents;
  private readonly frames = new Map<number, Promise<Frame>>();
  private readonly files = new Map<number, Promise<FileHandle>>();
  private readonly display: string;
  /** worker threads that decode and hash frames (set by the conversion; else the main thread does) */
  pool: WorkerPool | undefined;

  constructor(
    readonly info: ImageInfo,
    readonly img: ChunkedImage,
  ) {
    this.extents = indexExtents(img.index);
    this.display = `${img.layout.dir}:${clip(img.tag)}`;
  }
  get virtualSize(): number {
    return this.img.config.virtualSize;
  }

  /** index of the first entry whose block is >= `block` */
  private entryAt(block: number): number {
    const b = this.img.index.entryBlock;
    let lo = 0;
    let hi = this.img.index.entryCount;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (b[mid]! < block) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private packFile(p: number): Promise<FileHandle> {
    let f = this.files.get(p);
    if (!f) {
      const digest = this.img.packs[p]!.digest;
      f = open(this.img.layout.blobPath(digest), 'r').catch((err: Error) => {
        throw new OrbError('input', `${this.display}: pack ${digest} cannot be opened: ${err.message}`);
      });
      this.files.set(p, f);
    }
    return f;
  }

  private async load(f: number): Promise<Frame> {
    const idx = this.img.index;
    const p = idx.framePack[f]!;
    const len = idx.frameLength[f]!;
    const at = idx.frameOffset[f]!;
    const buf = Buffer.allocUnsafe(len);
    const fh = await this.packFile(p);
    for (let got = 0; got < len;) {
      const { bytesRead } = await fh.read(buf, got, len - got, at + got);
      if (bytesRead === 0)
        throw new OrbError(
          'integrity',
          `${this.display}: pack ${idx.packs[p]!.digest} ends at ${at + got} bytes, inside frame ${f} (${at}+${len})`,
          { hint: 'the pack was truncated after the layout was written: copy the layout again' },
        );
      got += bytesRead;
    }
    const blocks = idx.frameBlocks[f]!;
    if (this.pool) {
      // not transferred: on a bad frame the bytes are decoded again here for the error message
      const r = await this.pool.run({ task: 'unframe', data: buf, blocks, block: idx.blockSize });
      if (r.bad !== undefined) decodeIndexFrame(idx, f, buf, this.display);
      if (r.bad !== undefined)
        throw new OrbError('integrity', `${this.display}: frame ${f}: ${String(r.bad)}`);
      const data = r.data as Uint8Array;
      return {
        data: Buffer.from(data.buffer, data.byteOffset, data.byteLength),
        checked: new Uint8Array(blocks),
        digests: r.digests as Uint8Array,
      };
    }
    return { data: decodeIndexFrame(idx, f, buf, this.display), checked: new Uint8Array(blocks) };
  }

  private frame(f: number): Promise<Frame> {
    let p = this.frames.get(f);
    if (!p) {
      p = this.load(f);
      this.frames.set(f, p);
      // reads come in disk order: keep the few most recent frames
      while (this.frames.size > 128) this.frames.delete(this.frames.keys().next().value!);
    }
    return p;
  }

  /** The 32 KiB of entry `e`, checked against its digest. */
  private async block(e: number): Promise<Buffer> {
    const idx = this.img.index;
    const f = idx.entryFrame[e]!;
    const s = idx.entrySlot[e]!;
    const fr = await this.frame(f);
    const bytes = fr.data.subarray(s * idx.blockSize, (s + 1) * idx.blockSize);
    if (!fr.checked[s]) {
      const got = fr.digests
        ? Buffer.from(fr.digests.buffer, fr.digests.byteOffset + s * 32, 32)
        : createHash('sha256').update(bytes).digest();
      if (!got.equals(entryDigest(idx, e)))
        throw new OrbError(
          'integrity',
          `${this.display}: block ${idx.entryBlock[e]} (frame ${f}, slot ${s}) decodes to other bytes than its sha256 in the index`,
          { hint: 'the pack is corrupt; nothing of that block was used' },
        );
      fr.checked[s] = 1;
    }
    return bytes;
  }

  async read(offset: number, target: Uint8Array): Promise<void> {
    const idx = this.img.index;
    const bs = idx.blockSize;
    const end = offset + target.length;
    let pos = offset;
    let e = this.entryAt(Math.floor(offset / bs));
    // start every frame this read needs at once, so workers decode them in parallel
    for (let i = e; i < idx.entryCount && idx.entryBlock[i]! * bs < end; i++)
      this.frame(idx.entryFrame[i]!).catch(() => undefined);
    while (pos < end) {
      const block = Math.floor(pos / bs);
      while (e < idx.entryCount && idx.entryBlock[e]! < block) e++;
      const next = e < idx.entryCount ? idx.entryBlock[e]! * bs : Infinity;
      if (next > pos) {
        const stop = Math.min(end, next);
        target.fill(0, pos - offset, stop - offset);
        pos = stop;
        continue;
      }
      const data = await this.block(e);
      const stop = Math.min(end, (block + 1) * bs);
      target.set(data.subarray(pos - block * bs, stop - block * bs), pos - offset);
      pos = stop;
      e++;
    }
  }

  async close(): Promise<void> {
    this.frames.clear();
    const files = [...this.files.values()];
    this.files.clear();
    for (const f of files) await f.then((h) => h.close()).catch(() => undefined);
  }
}

export async function openChunkedReader(info: ImageInfo): Promise<DiskReader> {
  const { dir, tag } = parseLayoutRef(info.path);
  return new LayoutReader(info, info.layout ?? (await readChunkedLayout(dir, info.tag ?? tag)));
}
