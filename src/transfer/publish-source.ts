import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { OrbError, UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import {
  MANIFEST_SCHEMA,
  manifestImagePath,
  readStageInput,
  type OrbManifest,
  type StageInput,
} from '../core/stage-manifest-file.js';
import type { Progress } from '../core/progress.js';
import { LayoutStore } from '../stores/layout.js';
import {
  ANN_BASE_REFERENCE,
  ANN_CONTENT_DIGEST,
  ANN_FILE_FORMAT,
  ANN_FILE_SIZE,
  ANN_PART_FILE,
  ANN_PART_INDEX,
  ANN_PART_OFFSET,
  ANN_TITLE,
  DISK_V2_ARTIFACT,
  FILE_ARTIFACT,
  FILE_CONFIG,
  FILE_PART,
  OCI_INDEX,
  OCI_MANIFEST,
  type Descriptor,
  type FileConfig,
  type ImageManifest,
} from '../formats/oci-media.js';
import { parseLayoutRef } from '../oci/reference.js';
import { detectFileFormat } from '../formats/file-format.js';

/**
 * What publish sends: a manifest and the blobs it names, each with a way to read it from any
 * offset (uploads resume mid-blob). Sources: a chunked OCI layout (as `orb convert` writes it;
 * its manifest goes up byte for byte, so the digest is the same everywhere), a single file
 * (qcow2, .zst, ...) split into parts under a size limit, or a stage manifest naming either.
 */
export interface SourceBlob {
  desc: Descriptor;
  open(offset: number): Readable;
  /** where the bytes lie in a local file, when they do */
  file?: { path: string; start: number };
  /**
   * not in the source: a pack of the published base the layout was converted on (its manifest's
   * dev.orb.base.reference); publish finds it in the target or mounts it, never uploads it
   */
  inBase?: string;
}

export interface PreparedArtifact {
  manifest: ImageManifest;
  manifestBytes: Buffer;
  mediaType: string;
  /** config first, then layers; unique by digest */
  blobs: SourceBlob[];
  artifactType: string;
  /** sha256:<hex> of the disk content or the file, when known */
  contentDigest?: string;
  /** what was published, for messages */
  describe: string;
  /** the stage manifest the source was given as (read, never edited) */
  stageManifest?: { path: string; manifest: OrbManifest; record: StageInput };
  image?: { path: string; format: OrbManifest['image']['format']; virtualSize: number; fileSize: number };
}

export interface SourceOptions {
  /** tag inside a layout source when the reference names none */
  tag?: string;
  /** single files are split into parts of at most this many bytes */
  partSize: number;
  log: Logger;
  progress(label: string, total?: number): Progress;
  signal?: AbortSignal;
}

export async function prepareSource(source: string, opts: SourceOptions): Promise<PreparedArtifact> {
  if (source.startsWith('oci-layout:')) {
    const r = parseLayoutRef(source);
    return fromLayout(resolve(r.dir), r.digest ?? r.tag ?? opts.tag, opts);
  }
  const path = resolve(source);
  const st = await stat(path).catch(() => undefined);
  if (!st)
    throw new UsageError(
      `source '${source}' does not exist`,
      'give a chunked layout directory (orb convert --format chunked), a qcow2 or .zst file, or an orb manifest',
    );
  if (st.isDirectory()) return fromLayout(path, opts.tag, opts);
  if (!st.isFile()) throw new UsageError(`source '${source}' is neither a file nor a directory`);
  const head = await readHead(path, 512);
  if (head[0] === 0x7b && st.size < 4 << 20) {
    let read: { manifest: OrbManifest; input: StageInput } | undefined;
    try {
      const j = JSON.parse(await readFile(path, 'utf8')) as { schema?: string };
      if (j.schema === MANIFEST_SCHEMA) read = await readStageInput(path);
    } catch {
      /* not a manifest: publish the file as it is */
    }
    if (read) {
      const m = read.manifest;
      const imagePath = manifestImagePath(path, m);
      const prepared =
        m.image.format === 'chunked'
          ? await fromLayout(
              m.image.chunked?.layout ? resolve(path, '..', m.image.chunked.layout) : imagePath,
              m.image.chunked?.tag ?? opts.tag,
              opts,
            )
          : await fromFile(imagePath, opts, m);
      return { ...prepared, stageManifest: { path, manifest: m, record: read.input } };
    }
  }
  return fromFile(path, opts);
}

async function readHead(path: string, n: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function fromLayout(
  dir: string,
  tag: string | undefined,
  opts: SourceOptions,
): Promise<PreparedArtifact> {
  const store = new LayoutStore(dir);
  if (!(await store.layout.isLayout())) {
    throw new UsageError(
      `${dir} is a directory but not an OCI image layout`,
      'give the directory orb convert --format chunked wrote, or a file',
    );
  }
  if (!tag) {
    const tags = await store.tags();
    if (tags.length === 1) tag = tags[0];
    else if (tags.includes('latest')) tag = 'latest';
    else
      throw new UsageError(
        `${dir} holds ${tags.length ? 'several tags (' + tags.join(', ') + ')' : 'no tagged manifest'}`,
        'name one as oci-layout:DIR:TAG',
      );
  }
  const m = await store.getManifest(tag!);
  const manifest = JSON.parse(m.bytes.toString('utf8')) as ImageManifest;
  if (m.mediaType === OCI_INDEX || (manifest as { manifests?: unknown }).manifests) {
    throw new OrbError('input', `${dir}:${tag} is an image index; orb publishes single manifests`, {
      hint: 'name the tag of one manifest',
    });
  }
  const seen = new Set<string>();
  const blobs: SourceBlob[] = [];
  for (const d of [manifest.config, ...manifest.layers]) {
    if (seen.has(d.digest)) continue;
    seen.add(d.digest);
    const size = await store.statBlob(d.digest);
    const base = manifest.annotations?.[ANN_BASE_REFERENCE];
    if (size === undefined && typeof base === 'string' && d !== manifest.config && d !== manifest.layers[0]) {
      blobs.push({
        desc: d,
        inBase: base,
        open: () => {
          throw new OrbError('internal', `blob ${d.digest} lives in ${base}, not in ${dir}`);
        },
      });
      continue;
    }
    if (size === undefined) {
      throw new OrbError('input', `${dir} is incomplete: blob ${d.digest} named by ${tag} is missing`, {
        hint: 'convert the image again',
      });
    }
    if (size !== d.size)
      throw new OrbError(
        'integrity',
        `${dir}: blob ${d.digest} has ${size} bytes, the manifest says ${d.size}`,
      );
    blobs.push({
      desc: d,
      open: (offset) => store.layout.openBlob(d.digest, offset),
      file: { path: store.layout.blobPath(d.digest), start: 0 },
    });
  }
  const artifactType = manifest.artifactType ?? manifest.config.mediaType;
  if (artifactType !== DISK_V2_ARTIFACT && artifactType !== FILE_ARTIFACT) {
    opts.log.warn(`${dir}:${tag} is ${artifactType}, not an orb disk image; publishing it unchanged`);
  }
  const contentDigest = manifest.annotations?.[ANN_CONTENT_DIGEST];
  return {
    manifest,
    manifestBytes: m.bytes,
    mediaType: m.mediaType || OCI_MANIFEST,
    blobs,
    artifactType,
    ...(contentDigest ? { contentDigest } : {}),
    describe: `oci-layout:${dir}:${tag}`,
  };
}

/** One sequential read: the digest of every part and of the whole file. */
async function hashParts(
  path: string,
  size: number,
  partSize: number,
  opts: SourceOptions,
): Promise<{ parts: string[]; whole: string }> {
  const whole = createHash('sha256');
  const parts: string[] = [];
  let part = createHash('sha256');
  let inPart = 0;
  const progress = opts.progress(`hashing ${basename(path)}`, size);
  for await (const chunk of createReadStream(path, {
    highWaterMark: 4 << 20,
    ...(opts.signal ? { signal: opts.signal } : {}),
  })) {
    let buf = chunk as Buffer;
    whole.update(buf);
    while (buf.length) {
      const take = Math.min(buf.length, partSize - inPart);
      part.update(buf.subarray(0, take));
      inPart += take;
      buf = buf.subarray(take);
      if (inPart === partSize) {
        parts.push('sha256:' + part.digest('hex'));
        part = createHash('sha256');
        inPart = 0;
      }
    }
    progress.add((chunk as Buffer).length);
  }
  if (inPart > 0 || parts.length === 0) parts.push('sha256:' + part.digest('hex'));
  progress.done();
  return { parts, whole: 'sha256:' + whole.digest('hex') };
}

async function fromFile(path: string, opts: SourceOptions, stage?: OrbManifest): Promise<PreparedArtifact> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw new UsageError(`source '${path}' is not a file`);
  const format = detectFileFormat(await readHead(path, 512));
  if (format === 'raw') {
    opts.log.warn(
      `${basename(path)} looks like an uncompressed raw disk: publishing it as is uploads every zero. ` +
        "'orb convert --format chunked' stores no zeros and lets updates upload only what changed",
    );
  }
  const { parts, whole } = await hashParts(path, st.size, opts.partSize, opts);
  const name = basename(path);
  const layers: Descriptor[] = parts.map((digest, i) => {
    const offset = i * opts.partSize;
    const size = Math.min(opts.partSize, st.size - offset);
    return {
      mediaType: FILE_PART,
      digest,
      size,
      annotations: {
        // oras pull writes each layer to its title: give parts names that `cat` puts back in order.
        [ANN_TITLE]: parts.length === 1 ? name : `${name}.part${String(i + 1).padStart(3, '0')}`,
        [ANN_PART_FILE]: name,
        [ANN_PART_INDEX]: String(i),
        [ANN_PART_OFFSET]: String(offset),
      },
    };
  });
  const config: FileConfig = {
    schema: 'orb-file/v1',
    format,
    fileSize: st.size,
    ...(stage?.image.virtualSize ? { virtualSize: stage.image.virtualSize } : {}),
    contentDigest: whole,
    ...(stage?.build ? { build: stage.build } : {}),
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDesc: Descriptor = {
    mediaType: FILE_CONFIG,
    digest: 'sha256:' + createHash('sha256').update(configBytes).digest('hex'),
    size: configBytes.length,
  };
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: FILE_ARTIFACT,
    config: configDesc,
    layers,
    annotations: {
      [ANN_TITLE]: name,
      [ANN_CONTENT_DIGEST]: whole,
      [ANN_FILE_FORMAT]: format,
      [ANN_FILE_SIZE]: String(st.size),
    },
  };
  const blobs: SourceBlob[] = [
    { desc: configDesc, open: (offset) => Readable.from([configBytes.subarray(offset)]) },
  ];
  const seen = new Set<string>();
  for (const d of layers) {
    if (seen.has(d.digest)) continue; // identical parts (a file of zeros) go up once
    seen.add(d.digest);
    const start = Number(d.annotations![ANN_PART_OFFSET]);
    blobs.push({
      desc: d,
      file: { path, start },
      open: (offset) =>
        offset >= d.size
          ? Readable.from([])
          : createReadStream(path, {
              start: start + offset,
              end: start + d.size - 1,
              highWaterMark: 1 << 20,
            }),
    });
  }
  return {
    manifest,
    manifestBytes: Buffer.from(JSON.stringify(manifest)),
    mediaType: OCI_MANIFEST,
    blobs,
    artifactType: FILE_ARTIFACT,
    contentDigest: whole,
    describe: name,
    image: {
      path,
      format: format === 'raw.zst' || format === 'qcow2' ? format : 'raw',
      virtualSize: stage?.image.virtualSize ?? st.size,
      fileSize: st.size,
    },
  };
}
