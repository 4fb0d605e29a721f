import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { OrbError, UsageError } from '../core/errors.js';
import type { OpenedStore, StoreOptions } from './open.js';
import type { BlobRead, BlobStore } from './store.js';
import { OciLayout, sha256Digest } from '../oci/layout.js';
import { OCI_MANIFEST, type Descriptor } from '../formats/oci-media.js';
import { parseLayoutRef } from '../oci/reference.js';
import { HashTap } from './hash-tap.js';

/**
 * `oci-layout:DIR:TAG` as a BlobStore: the embedded default, so publish and pull work on one
 * machine with no registry. Blobs are written to a unique temporary name, verified against their
 * digest and renamed; index.json updates take a lock so concurrent publishes to one layout keep
 * every tag on one complete manifest.
 */
export class LayoutStore implements BlobStore {
  readonly layout: OciLayout;
  private ready: Promise<void> | undefined;

  constructor(readonly dir: string) {
    this.layout = new OciLayout(dir);
  }

  /** Creates the layout once, under the index lock (parallel uploads and other processes race here). */
  private init(): Promise<void> {
    this.ready ??= (async () => {
      await mkdir(this.dir, { recursive: true });
      await withLock(join(this.dir, 'index.json.lock'), () => this.layout.init());
    })();
    return this.ready;
  }

  describe(): string {
    return `oci-layout:${this.dir}`;
  }

  statBlob(digest: string): Promise<number | undefined> {
    return this.layout.blobSize(digest);
  }

  async putBlob(
    desc: Descriptor,
    open: (offset: number) => Readable,
    onBytes?: (n: number) => void,
  ): Promise<void> {
    await this.init();
    const final = this.layout.blobPath(desc.digest);
    if ((await this.layout.blobSize(desc.digest)) === desc.size) return;
    const tmp = `${final}.${process.pid}.${randomBytes(4).toString('hex')}.partial`;
    const tap = new HashTap(onBytes);
    try {
      await pipeline(open(0), tap, createWriteStream(tmp));
      const got = tap.digest();
      const n = tap.sent;
      if (n !== desc.size || got !== desc.digest) {
        throw new OrbError(
          'integrity',
          `blob ${desc.digest}: the source gave ${n} bytes with digest ${got} (expected ${desc.size} bytes)`,
          {
            hint: 'the source changed while it was being published, or it is corrupt',
          },
        );
      }
      await rename(tmp, final);
    } catch (err) {
      await rm(tmp, { force: true });
      onBytes?.(-tap.sent);
      throw err;
    }
  }

  async getBlob(desc: Descriptor, offset = 0, end?: number): Promise<BlobRead> {
    const size = await this.layout.blobSize(desc.digest);
    if (size === undefined) {
      throw new OrbError('input', `blob ${desc.digest} is missing from ${this.dir}`, {
        hint: 'the layout is incomplete; publish or convert it again',
      });
    }
    // positioned reads of [start, stop): a pack's range costs what it reads, not the pack
    const stop = Math.min(end ?? size, size);
    const start = Math.min(offset, stop);
    if (start === stop) return { stream: Readable.from([]), offset: start, end: stop };
    return {
      stream: createReadStream(this.layout.blobPath(desc.digest), {
        start,
        end: stop - 1,
        highWaterMark: Math.min(1 << 20, stop - start),
      }),
      offset: start,
      end: stop,
    };
  }

  async putManifest(bytes: Buffer, mediaType: string, tags: readonly string[]): Promise<string> {
    await this.init();
    const parsed = JSON.parse(bytes.toString('utf8')) as { artifactType?: string };
    // Blob and index writes of small files use fixed temporary names in OciLayout: serialize them.
    return withLock(join(this.dir, 'index.json.lock'), async () => {
      const { digest, size } = await this.layout.putBytes(bytes);
      for (const tag of tags) {
        await this.layout.tag(
          {
            mediaType: mediaType || OCI_MANIFEST,
            digest,
            size,
            ...(parsed.artifactType ? { artifactType: parsed.artifactType } : {}),
          },
          tag,
        );
      }
      return digest;
    });
  }

  async getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    if (!(await this.layout.isLayout())) {
      throw new OrbError('input', `${this.dir} is not an OCI image layout (no oci-layout file)`, {
        hint: 'give the directory that orb convert --format chunked wrote, as oci-layout:DIR:TAG',
      });
    }
    const desc = await this.layout.resolve(ref);
    const bytes = await this.layout.readBytes(desc.digest);
    return { bytes, mediaType: desc.mediaType || OCI_MANIFEST, digest: sha256Digest(bytes) };
  }

  /** Tags in the layout's index.json. */
  async tags(): Promise<string[]> {
    const index = await this.layout.readIndex();
    return index.manifests
      .map((m) => m.annotations?.['org.opencontainers.image.ref.name'])
      .filter((t): t is string => !!t);
  }
}

/** A directory lock (mkdir is atomic); a lock older than `staleMs` is taken over. */
export async function withLock<T>(path: string, fn: () => Promise<T>, staleMs = 60_000): Promise<T> {
  const deadline = Date.now() + 5 * staleMs;
  for (;;) {
    try {
      await mkdir(path);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const s = await stat(path).catch(() => undefined);
      if (s && Date.now() - s.mtimeMs > staleMs) {
        await rm(path, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline)
        throw new OrbError('environment', `${path} stays locked`, {
          hint: 'remove it if no other orb process is running',
        });
      await new Promise((r) => setTimeout(r, 20 + Math.random() * 50));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(path, { recursive: true, force: true });
  }
}

export async function openLayoutStore(ref: string, _opts: StoreOptions): Promise<OpenedStore> {
  const r = parseLayoutRef(ref);
  if (!r.dir) throw new UsageError(`'${ref}' names no directory`, 'write it as oci-layout:DIR:TAG');
  const dir = resolve(r.dir);
  const tag = r.digest ?? r.tag;
  return {
    store: new LayoutStore(dir),
    ...(tag ? { tag } : {}),
    display: `oci-layout:${r.dir}${r.tag ? ':' + r.tag : ''}${r.digest ? '@' + r.digest : ''}`,
  };
}

/** Reads a whole (small) blob from a store, verifying size and digest. */
export async function readSmallBlob(store: BlobStore, desc: Descriptor, limit = 16 << 20): Promise<Buffer> {
  if (desc.size > limit)
    throw new OrbError('input', `blob ${desc.digest} is ${desc.size} bytes, more than the ${limit} expected`);
  const { stream } = await store.getBlob(desc, 0);
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    n += (c as Buffer).length;
    if (n > desc.size) {
      stream.destroy();
      break;
    }
    parts.push(c as Buffer);
  }
  const data = Buffer.concat(parts);
  if (data.length !== desc.size || sha256Digest(data) !== desc.digest) {
    throw new OrbError(
      'integrity',
      `blob ${desc.digest} from ${store.describe()} is corrupt (size or digest mismatch)`,
    );
  }
  return data;
}
