import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import {
  MAX_MANIFEST_BYTES,
  parseJsonObject,
  sha256Digest as checkSha256,
  untrustedError,
} from '../core/untrusted.js';
import {
  ANN_REF_NAME,
  OCI_INDEX,
  OCI_MANIFEST,
  type Descriptor,
  type ImageIndex,
} from '../formats/oci-media.js';

/**
 * An OCI image layout directory (image-spec "image-layout"): `oci-layout`, `index.json`,
 * `blobs/sha256/<hex>`. Tools such as skopeo read it as `oci:DIR:TAG`.
 */
export function parseDigest(digest: string, field = 'digest'): string {
  // Checked here too, not only where manifests are parsed: this is the one place a digest becomes a path.
  return checkSha256(digest, field).slice('sha256:'.length);
}

export function sha256Digest(data: Uint8Array | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

export class OciLayout {
  constructor(readonly dir: string) {}

  blobPath(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', parseDigest(digest));
  }

  async init(): Promise<void> {
    await mkdir(join(this.dir, 'blobs', 'sha256'), { recursive: true });
    const marker = join(this.dir, 'oci-layout');
    if (!(await stat(marker).catch(() => undefined))) {
      await writeFile(marker, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    }
    const index = join(this.dir, 'index.json');
    if (!(await stat(index).catch(() => undefined))) {
      await this.writeIndex({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] });
    }
  }

  async isLayout(): Promise<boolean> {
    return !!(await stat(join(this.dir, 'oci-layout')).catch(() => undefined));
  }

  async blobSize(digest: string): Promise<number | undefined> {
    const s = await stat(this.blobPath(digest)).catch(() => undefined);
    return s?.isFile() ? s.size : undefined;
  }

  /** Write a small blob (config, manifest) atomically; returns its descriptor fields. */
  async putBytes(data: Uint8Array | string): Promise<{ digest: string; size: number }> {
    const digest = sha256Digest(data);
    const path = this.blobPath(digest);
    if ((await this.blobSize(digest)) === undefined) {
      const tmp = `${path}.partial`;
      await writeFile(tmp, data);
      await rename(tmp, path);
    }
    return { digest, size: typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength };
  }

  /** A whole small blob (manifest, config), refused past `max` bytes before it is read. */
  async readBytes(digest: string, max = MAX_MANIFEST_BYTES): Promise<Buffer> {
    const size = await this.blobSize(digest);
    if (size !== undefined && size > max)
      throw new OrbError(
        'input',
        `blob ${digest} in ${this.dir} is ${size} bytes, more than the ${max} expected`,
      );
    const data = await readFile(this.blobPath(digest)).catch((err: Error) => {
      throw new OrbError('input', `blob ${digest} is missing from ${this.dir}: ${err.message}`);
    });
    if (sha256Digest(data) !== digest)
      throw new OrbError('integrity', `blob ${digest} in ${this.dir} is corrupt (digest mismatch)`);
    return data;
  }

  openBlob(digest: string, offset = 0): Readable {
    return createReadStream(this.blobPath(digest), { start: offset, highWaterMark: 1 << 20 });
  }

  async readIndex(): Promise<ImageIndex> {
    try {
      const path = join(this.dir, 'index.json');
      if ((await stat(path)).size > MAX_MANIFEST_BYTES)
        throw untrustedError(`${path}`, `is more than ${MAX_MANIFEST_BYTES} bytes`);
      const index = parseJsonObject(await readFile(path), path, MAX_MANIFEST_BYTES);
      if (!Array.isArray(index.manifests))
        throw untrustedError(`${path} manifests`, 'is not an array', index.manifests);
      return index as unknown as ImageIndex;
    } catch (err) {
      if (err instanceof OrbError) throw err;
      throw new OrbError('input', `${this.dir} is not an OCI image layout (no readable index.json)`, {
        cause: err,
      });
    }
  }

  private async writeIndex(index: ImageIndex): Promise<void> {
    const path = join(this.dir, 'index.json');
    await writeFile(`${path}.partial`, JSON.stringify(index, null, 2));
    await rename(`${path}.partial`, path);
  }

  /** Point `tag` at a manifest (replacing an older manifest of that tag). */
  async tag(manifest: Descriptor, tag: string): Promise<void> {
    const index = await this.readIndex();
    index.manifests = index.manifests.filter((m) => m.annotations?.[ANN_REF_NAME] !== tag);
    index.manifests.push({
      mediaType: manifest.mediaType || OCI_MANIFEST,
      digest: manifest.digest,
      size: manifest.size,
      ...(manifest.artifactType ? { artifactType: manifest.artifactType } : {}),
      annotations: { ...(manifest.annotations ?? {}), [ANN_REF_NAME]: tag },
    });
    await this.writeIndex(index);
  }

  async resolve(ref: string): Promise<Descriptor> {
    if (ref.startsWith('sha256:')) {
      const size = await this.blobSize(ref);
      if (size === undefined) throw new OrbError('input', `no manifest ${ref} in ${this.dir}`);
      return { mediaType: OCI_MANIFEST, digest: ref, size };
    }
    const index = await this.readIndex();
    const found = index.manifests.find((m) => m.annotations?.[ANN_REF_NAME] === ref);
    if (!found) {
      const tags = index.manifests.map((m) => m.annotations?.[ANN_REF_NAME]).filter(Boolean);
      throw new OrbError('input', `no tag '${ref}' in ${this.dir}`, {
        hint: tags.length ? `tags there: ${tags.join(', ')}` : 'the layout is empty',
      });
    }
    return found;
  }

  async removeBlob(digest: string): Promise<void> {
    await rm(this.blobPath(digest), { force: true });
  }
}
