import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import {
  manifestImagePath,
  newManifest,
  stageManifestPath,
  writeManifest,
  type OrbManifest,
} from '../core/stage-manifest-file.js';
import { formatBytes, type Progress } from '../core/progress.js';
import { readSmallBlob } from '../stores/layout.js';
import { DISK_V2_ARTIFACT, OCI_MANIFEST, type ImageManifest } from '../formats/oci-media.js';
import { checkDiskV2Config } from '../oci/disk-v2.js';
import { isDigest, TAG_RE } from '../oci/reference.js';
import { checkRegistryLimits, type RegistryLimits } from '../stores/registry-limits.js';
import type { BlobStore } from '../stores/store.js';
import { runPool } from './pool.js';
import { prepareSource, type PreparedArtifact, type SourceBlob } from './publish-source.js';

/**
 * Publish engine, generic over BlobStore: prepare the artifact, ask the target which blobs it
 * already has (those are skipped, or mounted from a sibling repository), upload the rest in
 * parallel, and only then push the manifest under every tag, so a tag never points at a
 * manifest whose blobs are missing (two publishes racing for one tag leave it on one complete
 * manifest: the last one pushed).
 */
export interface PublishOptions {
  source: string;
  /** tag inside a layout source */
  sourceTag?: string;
  target: BlobStore;
  /** tags to push (the first is the main one); empty: push by digest only */
  tags: readonly string[];
  concurrency: number;
  /** single files are split into parts of at most this size */
  partSize: number;
  /** repositories of the same registry to mount blobs from */
  mountFrom?: readonly string[];
  /** digest or tag (in the target) of a manifest this artifact refers to (OCI referrers) */
  subject?: string;
  /** extra manifest annotations (changes the digest of a layout's manifest) */
  annotations?: Record<string, string>;
  /**
   * where to write publish's own stage manifest (default: when the source is a stage manifest,
   * `<image>.published.orb.json` beside the image); the input's manifest is never edited
   */
  manifestPath?: string;
  /** what the target registry accepts (layer count and size, manifest size): checked before any upload */
  registryLimits?: RegistryLimits;
  log: Logger;
  progress(label: string, total?: number): Progress;
  signal?: AbortSignal;
}

export interface PublishResult {
  digest: string;
  /** pullable reference by digest */
  reference: string;
  tags: string[];
  artifactType: string;
  contentDigest?: string;
  blobs: number;
  blobsUploaded: number;
  blobsSkipped: number;
  blobsMounted: number;
  bytesTotal: number;
  bytesUploaded: number;
  bytesSkipped: number;
  seconds: number;
  manifestPath?: string;
}

async function applySubjectAndAnnotations(p: PreparedArtifact, opts: PublishOptions): Promise<void> {
  if (!opts.subject && !opts.annotations) return;
  const manifest: ImageManifest = JSON.parse(p.manifestBytes.toString('utf8')) as ImageManifest;
  if (opts.annotations) manifest.annotations = { ...(manifest.annotations ?? {}), ...opts.annotations };
  if (opts.subject) {
    if (!isDigest(opts.subject) && !TAG_RE.test(opts.subject))
      throw new UsageError(`subject '${opts.subject}' is neither a digest nor a tag`);
    const s = await opts.target.getManifest(opts.subject);
    manifest.subject = { mediaType: s.mediaType || OCI_MANIFEST, digest: s.digest, size: s.bytes.length };
  }
  p.manifest = manifest;
  p.manifestBytes = Buffer.from(JSON.stringify(manifest));
}

export async function publish(opts: PublishOptions): Promise<PublishResult> {
  const started = Date.now();
  const log = opts.log;
  if (!(opts.partSize >= 1)) throw new UsageError(`part size ${opts.partSize} is not a positive size`);
  if (!(opts.concurrency >= 1)) throw new UsageError(`concurrency ${opts.concurrency} must be at least 1`);
  for (const t of opts.tags)
    if (!TAG_RE.test(t))
      throw new UsageError(`'${t}' is not a valid tag`, 'tags are up to 128 letters, digits, _ . and -');
  const prepared = await prepareSource(opts.source, {
    partSize: opts.partSize,
    log,
    progress: opts.progress,
    ...(opts.sourceTag ? { tag: opts.sourceTag } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  await applySubjectAndAnnotations(prepared, opts);
  const target = opts.target;
  const bytesTotal = prepared.blobs.reduce((a, b) => a + b.desc.size, 0);
  log.info(
    `publishing ${prepared.describe} (${prepared.blobs.length} blobs, ${formatBytes(bytesTotal)}) to ${target.describe()}`,
  );

  if (opts.registryLimits)
    checkRegistryLimits(
      opts.registryLimits,
      {
        describe: prepared.describe,
        layers: prepared.manifest.layers,
        manifestBytes: prepared.manifestBytes.length,
        singleFile: prepared.artifactType !== DISK_V2_ARTIFACT,
      },
      log,
    );

  // A store that caps the files of one version (GitHub: 1000 assets per release) refuses the
  // image now, not at the thousandth upload.
  if (target.maxBlobCount !== undefined && prepared.blobs.length > target.maxBlobCount) {
    const factor = Math.ceil(prepared.blobs.length / target.maxBlobCount);
    throw new UsageError(
      `${prepared.describe} has ${prepared.blobs.length} blobs; ${target.describe()} holds at most ${target.maxBlobCount}`,
      `convert with a --pack-size at least ${factor}x larger, or publish to a registry or S3`,
    );
  }

  // A pack above the store's object cap (GitHub assets < 2 GiB, GitLab files 5 GB) is refused
  // before anything goes up, with the convert option that makes it fit.
  const cap = target.maxBlobSize;
  const tooBig = cap === undefined ? undefined : prepared.blobs.find((b) => b.desc.size > cap);
  if (tooBig && cap !== undefined)
    throw new UsageError(
      `${prepared.describe} has a blob of ${formatBytes(tooBig.desc.size)}; ${target.describe()} accepts at most ${formatBytes(cap)} per object`,
      prepared.artifactType === DISK_V2_ARTIFACT
        ? `convert with --pack-size ${Math.floor(cap / (1 << 20))}MiB or smaller; nothing was uploaded`
        : `publish with --part-size ${Math.floor(cap / (1 << 20))}MiB or smaller; nothing was uploaded`,
    );

  // 1. What does the target have already?
  const present = new Set<string>();
  await runPool(
    prepared.blobs,
    Math.min(16, opts.concurrency * 2),
    async (b) => {
      const size = await target.statBlob(b.desc.digest);
      if (size !== undefined && (size === b.desc.size || size === 0)) present.add(b.desc.digest);
    },
    opts.signal,
  );
  let missing = prepared.blobs.filter((b) => !present.has(b.desc.digest));

  // 2. Cross-repository mounts cost no upload.
  let mounted = 0;
  let bytesMounted = 0;
  if (missing.length && opts.mountFrom?.length && target.mountBlob) {
    const mount = target.mountBlob.bind(target);
    const done = new Set<string>();
    await runPool(
      missing,
      Math.min(8, opts.concurrency * 2),
      async (b) => {
        for (const from of opts.mountFrom!) {
          if (await mount(b.desc, from).catch(() => false)) {
            done.add(b.desc.digest);
            mounted++;
            bytesMounted += b.desc.size;
            return;
          }
        }
      },
      opts.signal,
    );
    missing = missing.filter((b) => !done.has(b.desc.digest));
    if (mounted)
      log.info(`mounted ${mounted} blobs (${formatBytes(bytesMounted)}) from ${opts.mountFrom.join(', ')}`);
  }
  const fromBase = await placeBaseBlobs(missing, opts);
  missing = fromBase.missing;
  mounted += fromBase.mounted;
  const toUpload = missing.reduce((a, b) => a + b.desc.size, 0);
  const skipped = bytesTotal - toUpload;
  log.info(
    `${prepared.blobs.length - missing.length} of ${prepared.blobs.length} blobs already there (${formatBytes(skipped)} skipped); uploading ${missing.length} (${formatBytes(toUpload)})`,
  );

  // 3. Upload the rest, largest first so the tail of the transfer is not one big blob alone.
  const progress = opts.progress('uploading', toUpload);
  // progress is told in steps of 1 MiB: per-packet calls would cost more than the upload
  let unreported = 0;
  const count = (n: number) => {
    unreported += n;
    if (unreported >= 1 << 20 || unreported < 0) {
      progress.add(unreported);
      unreported = 0;
    }
  };
  missing.sort((a, b) => b.desc.size - a.desc.size);
  await runPool(
    missing,
    opts.concurrency,
    async (b) => {
      await target.putBlob(b.desc, (offset) => b.open(offset), count, b.file);
    },
    opts.signal,
  );
  progress.add(unreported);
  progress.done();

  // 4. The manifest, under every tag, only now that every blob it names is there.
  const digest = await target.putManifest(prepared.manifestBytes, prepared.mediaType, opts.tags);
  const reference = `${target.describe()}@${digest}`;
  const seconds = (Date.now() - started) / 1000;
  log.info(
    `published ${reference}${opts.tags.length ? ` (tags: ${opts.tags.join(', ')})` : ''} in ${seconds.toFixed(1)} s`,
  );

  const result: PublishResult = {
    digest,
    reference,
    tags: [...opts.tags],
    artifactType: prepared.artifactType,
    ...(prepared.contentDigest ? { contentDigest: prepared.contentDigest } : {}),
    blobs: prepared.blobs.length,
    blobsUploaded: missing.length,
    blobsSkipped: prepared.blobs.length - missing.length - mounted,
    blobsMounted: mounted,
    bytesTotal,
    bytesUploaded: toUpload,
    bytesSkipped: skipped,
    seconds,
  };
  const manifestPath = publishManifestPath(opts.manifestPath, prepared);
  if (manifestPath) {
    await writePublishManifest(manifestPath, prepared, result, target);
    result.manifestPath = manifestPath;
  }
  return result;
}

/**
 * Packs of a published base (`orb convert --base REF`) are not in the layout: each must already
 * be in the target, or be mounted from the base's repository when the target is another
 * repository of the same registry. Anything else is refused before a byte is uploaded.
 */
async function placeBaseBlobs(
  missing: SourceBlob[],
  opts: PublishOptions,
): Promise<{ missing: SourceBlob[]; mounted: number }> {
  const absent = missing.filter((b) => b.inBase);
  if (!absent.length) return { missing, mounted: 0 };
  const target = opts.target;
  const done = new Set<string>();
  const base = absent[0]!.inBase!;
  const from = sameRegistryRepository(base, target.describe());
  if (from && target.mountBlob) {
    const mount = target.mountBlob.bind(target);
    await runPool(
      absent,
      Math.min(8, opts.concurrency * 2),
      async (b) => {
        if (await mount(b.desc, from).catch(() => false)) done.add(b.desc.digest);
      },
      opts.signal,
    );
    const bytes = absent.filter((b) => done.has(b.desc.digest)).reduce((n, b) => n + b.desc.size, 0);
    if (done.size) opts.log.info(`mounted ${done.size} base packs (${formatBytes(bytes)}) from ${from}`);
  }
  const left = absent.filter((b) => !done.has(b.desc.digest));
  if (left.length)
    throw new OrbError(
      'input',
      `${left.length} pack(s) of the base ${base} are neither in ${target.describe()} nor mountable from it (first: ${left[0]!.desc.digest}); nothing was uploaded`,
      {
        hint: from
          ? `the registry refused to mount them from ${from}: check that the credentials can read it, or publish to the base's repository`
          : "publish to the base's repository (or another repository of its registry, which mounts them), or convert with a local layout as --base",
      },
    );
  return { missing: missing.filter((b) => !b.inBase), mounted: done.size };
}

/** The base's repository when `base` and `target` are oci:// references to one registry host. */
function sameRegistryRepository(base: string, target: string): string | undefined {
  const m = /^oci:\/\/([^/]+)\/([^:@]+)/.exec(base);
  const t = /^oci:\/\/([^/]+)\//.exec(target);
  return m && t && m[1] === t[1] ? m[2] : undefined;
}

function publishManifestPath(given: string | undefined, p: PreparedArtifact): string | undefined {
  const input = p.stageManifest;
  if (given && input && resolve(given) === resolve(input.path)) {
    throw new UsageError(
      `--manifest names the ${input.manifest.stage} stage's manifest, which publish reads and never edits`,
      'leave --manifest out (publish writes <image>.published.orb.json) or name a new file',
    );
  }
  if (given) return given;
  return input ? stageManifestPath(manifestImagePath(input.path, input.manifest), 'publish') : undefined;
}

/** Publish's own stage manifest: the input's image and build facts, plus where it went. */
async function writePublishManifest(
  path: string,
  p: PreparedArtifact,
  r: PublishResult,
  target: BlobStore,
): Promise<void> {
  const input = p.stageManifest;
  const m = input
    ? newManifest('publish', rebase(input.manifest, input.path, path), {
        ...(input.manifest.build ? { build: input.manifest.build } : {}),
        input: input.record,
      })
    : await describeImage(p, target);
  m.published = {
    reference: r.reference,
    digest: r.digest,
    tags: r.tags,
    artifactType: r.artifactType,
    ...(r.contentDigest ? { contentDigest: r.contentDigest } : {}),
    bytesUploaded: r.bytesUploaded,
    bytesSkipped: r.bytesSkipped,
    at: new Date().toISOString(),
  };
  await writeManifest(path, m);
}

/** The input's image section with its paths made relative to where the new manifest goes. */
function rebase(m: OrbManifest, from: string, to: string): OrbManifest['image'] {
  const at = (rel: string) => {
    const abs = isAbsolute(rel) ? rel : resolve(dirname(from), rel);
    return relative(dirname(resolve(to)), abs) || '.';
  };
  const image = { ...m.image, path: at(m.image.path) };
  if (m.image.chunked) image.chunked = { ...m.image.chunked, layout: at(m.image.chunked.layout) };
  return image;
}

async function describeImage(p: PreparedArtifact, target: BlobStore): Promise<OrbManifest> {
  if (p.image) return newManifest('publish', p.image);
  let virtualSize = 0;
  let contentDigest: string | undefined;
  if (p.artifactType === DISK_V2_ARTIFACT) {
    const cfg = checkDiskV2Config(await readSmallBlob(target, p.manifest.config), p.describe);
    virtualSize = cfg.virtualSize;
    contentDigest = cfg.contentDigest;
  }
  const fileSize = p.blobs.reduce((a, b) => a + b.desc.size, 0);
  return newManifest('publish', {
    path: p.describe.replace(/^oci-layout:/, '').replace(/:[^:/]*$/, ''),
    format: 'chunked',
    virtualSize,
    fileSize,
    ...(contentDigest ? { contentDigest } : {}),
  });
}
