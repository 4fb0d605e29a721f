import '../stores/schemes.js';
import { defineCommand, type Inputs } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import type { InputSpec, OutputSpec } from '../core/inputs.js';
import type { Logger } from '../core/log.js';
import { formatBytes } from '../core/progress.js';
import { openStore, storeInputs, storeOutputs, type StoreOptions } from '../stores/open.js';
import { partSizeForProfile, PROFILE_NAMES, resolveProfile } from '../stores/registry-limits.js';
import type { BlobStore } from '../stores/store.js';
import { publish } from '../transfer/publish.js';

/** Inputs shared by publish and pull: how to reach the store. */
export const accessInputs: InputSpec[] = [
  {
    name: 'plain-http',
    type: 'boolean',
    default: false,
    description: 'talk plain HTTP to the registry (only when asked; loopback hosts always may)',
  },
  {
    name: 'username',
    type: 'string',
    env: ['ORB_REGISTRY_USERNAME'],
    description:
      'registry user name (default: GITHUB_TOKEN for ghcr.io, CI_REGISTRY_USER for GitLab, docker config.json)',
  },
  {
    name: 'password',
    type: 'string',
    secret: true,
    env: ['ORB_REGISTRY_PASSWORD'],
    description: 'registry password or token',
  },
  { name: 's3-endpoint', type: 'string', description: 'S3-compatible endpoint URL for s3:// references' },
  {
    name: 's3-path-style',
    type: 'boolean',
    default: false,
    description: 'use path-style S3 addressing (MinIO, Ceph, s3rver)',
  },
];

/** Every input value, keyed by input name, for the store factories. */
export function storeOptions(
  inputs: Inputs,
  specs: readonly InputSpec[],
  ctx: { log: StoreOptions['log']; signal: AbortSignal },
): StoreOptions {
  const options: StoreOptions['options'] = {};
  for (const s of specs) {
    if (s.type === 'list') {
      const v = inputs.list(s.name);
      if (v.length) options[s.name] = v.join(',');
    } else if (inputs.has(s.name)) {
      const v =
        s.type === 'boolean'
          ? inputs.bool(s.name)
          : s.type === 'string' || s.type === 'enum'
            ? inputs.string(s.name)
            : inputs.number(s.name);
      options[s.name] = v;
    } else if (s.type === 'boolean') options[s.name] = false;
  }
  return { log: ctx.log, signal: ctx.signal, options };
}

const own: InputSpec[] = [
  {
    name: 'source',
    type: 'string',
    required: true,
    positional: 0,
    description:
      'what to publish: a chunked layout (directory or oci-layout:DIR:TAG), a qcow2 or .zst file, or an orb stage manifest',
  },
  {
    name: 'to',
    type: 'string',
    required: true,
    description: 'where: oci://HOST[:PORT]/REPO:TAG or oci-layout:DIR:TAG (and the other registered schemes)',
  },
  { name: 'tags', type: 'list', description: 'more tags for the same manifest' },
  {
    name: 'concurrency',
    type: 'integer',
    default: 4,
    min: 1,
    max: 64,
    description: 'blobs uploaded at once',
  },
  {
    name: 'part-size',
    type: 'size',
    default: '8GiB',
    min: 1 << 20,
    description: 'a single file is split into parts of at most this size (GHCR rejects layers over 10 GB)',
  },
  {
    name: 'upload-chunk-size',
    type: 'size',
    default: '512MiB',
    min: 0,
    description:
      'blobs larger than this go up in resumable PATCH requests of this size (0: one request per blob)',
  },
  {
    name: 'mount-from',
    type: 'list',
    description: 'repositories on the same registry to mount existing blobs from instead of uploading them',
  },
  {
    name: 'subject',
    type: 'string',
    description: 'digest or tag of a manifest this artifact refers to (OCI referrers)',
  },
  { name: 'annotations', type: 'list', description: 'KEY=VALUE annotations to add to the manifest' },
  {
    name: 'registry-profile',
    type: 'enum',
    choices: ['auto', 'none', ...PROFILE_NAMES],
    default: 'auto',
    description:
      "the target registry's limits (layers, layer size, manifest size), checked before uploading: auto from the host (ghcr.io, ECR, registry.gitlab.com, Docker Hub, quay.io); name one for other hosts (harbor, a self-managed gitlab), none to skip",
  },
  {
    name: 'manifest',
    type: 'string',
    description:
      "where to write publish's own stage manifest (default, when the source is a stage manifest: <image>.published.orb.json); the input's manifest is never edited",
  },
  ...accessInputs,
];
const inputs = [...own, ...storeInputs('publish', own)];

const ownOutputs: OutputSpec[] = [
  { name: 'digest', description: 'digest of the pushed manifest' },
  { name: 'reference', description: 'pullable reference by digest (for orb pull)' },
  { name: 'tags', description: 'tags pushed, comma-separated' },
  { name: 'artifact-type', description: 'artifactType of the manifest' },
  {
    name: 'content-digest',
    description: 'disk images: the orb2 content identity (orb digest); files: sha256 of the whole file',
  },
  { name: 'bytes-uploaded', description: 'bytes of blobs uploaded' },
  { name: 'bytes-skipped', description: 'bytes of blobs the target already had (or mounted)' },
  { name: 'bytes-total', description: 'bytes of all blobs of the artifact' },
  { name: 'blobs-uploaded', description: 'number of blobs uploaded' },
  { name: 'blobs-skipped', description: 'number of blobs already there' },
  { name: 'blobs-mounted', description: 'number of blobs mounted from another repository' },
  { name: 'seconds', description: 'wall time' },
  { name: 'mb-per-second', description: 'upload rate in MB/s' },
];

export default defineCommand({
  name: 'publish',
  title: 'Publish a disk image to an OCI registry (or another store), uploading only what changed',
  description:
    'Uploads a chunked layout, a qcow2 or a .zst file to oci://HOST/REPO:TAG or oci-layout:DIR:TAG. Blobs the target already has are skipped, ' +
    'the rest go up in parallel with resumable uploads and retries; the manifest is pushed last, under every tag.',
  action: true,
  usage: 'SOURCE --to TARGET',
  inputs,
  outputs: [...ownOutputs, ...storeOutputs('publish', ownOutputs)],
  async run(inp, ctx) {
    const annotations: Record<string, string> = {};
    for (const a of inp.list('annotations')) {
      const eq = a.indexOf('=');
      if (eq <= 0) throw new UsageError(`annotation '${a}' is not KEY=VALUE`);
      annotations[a.slice(0, eq)] = a.slice(eq + 1);
    }
    const limits = resolveProfile(inp.string('registry-profile'), inp.string('to'));
    const opened = await openStore(inp.string('to'), storeOptions(inp, inputs, ctx));
    try {
      const main = opened.tag ?? 'latest';
      if (main.startsWith('sha256:'))
        throw new UsageError(
          `cannot publish to a digest (${opened.display})`,
          'name a tag: oci://HOST/REPO:TAG',
        );
      const tags = [...new Set([main, ...inp.list('tags')])];
      const r = await publish({
        source: inp.string('source'),
        target: opened.store,
        tags,
        concurrency: inp.number('concurrency'),
        partSize: partSizeForProfile(
          limits,
          partSizeFor(opened.store, inp.number('part-size'), ctx.log),
          ctx.log,
        ),
        ...(limits ? { registryLimits: limits } : {}),
        ...(inp.list('mount-from').length ? { mountFrom: inp.list('mount-from') } : {}),
        ...(inp.optString('subject') ? { subject: inp.string('subject') } : {}),
        ...(Object.keys(annotations).length ? { annotations } : {}),
        ...(inp.optString('manifest') ? { manifestPath: inp.string('manifest') } : {}),
        log: ctx.log,
        progress: ctx.progress,
        signal: ctx.signal,
      });
      ctx.summary
        .heading('publish')
        .table(
          ['', ''],
          [
            ['reference', r.reference],
            ['tags', r.tags.join(', ')],
            ['uploaded', `${formatBytes(r.bytesUploaded)} (${r.blobsUploaded} blobs)`],
            ['skipped', `${formatBytes(r.bytesSkipped)} (${r.blobsSkipped + r.blobsMounted} blobs)`],
            ['time', `${r.seconds.toFixed(1)} s`],
          ],
        )
        .code(`orb pull ${r.reference} --output disk.img`, 'sh');
      const extra = (await opened.store.publishedOutputs?.()) ?? {};
      return {
        digest: r.digest,
        reference: r.reference,
        tags: r.tags.join(','),
        'artifact-type': r.artifactType,
        'content-digest': r.contentDigest ?? '',
        'bytes-uploaded': r.bytesUploaded,
        'bytes-skipped': r.bytesSkipped,
        'bytes-total': r.bytesTotal,
        'blobs-uploaded': r.blobsUploaded,
        'blobs-skipped': r.blobsSkipped,
        'blobs-mounted': r.blobsMounted,
        seconds: Number(r.seconds.toFixed(2)),
        'mb-per-second': r.seconds > 0 ? Number((r.bytesUploaded / 1e6 / r.seconds).toFixed(1)) : 0,
        ...extra,
      };
    } finally {
      await opened.store.close?.();
    }
  },
});

/**
 * A single file's parts must fit the store's largest blob: a 20 GB qcow2 published to a GitHub
 * release with the 8 GiB default would otherwise fail only after its first upload.
 */
export function partSizeFor(store: BlobStore, asked: number, log: Logger): number {
  const max = store.maxBlobSize;
  if (max === undefined || asked <= max) return asked;
  const capped = Math.floor(max / (1 << 20)) * (1 << 20);
  log.info(
    `part size ${formatBytes(asked)} exceeds what ${store.describe()} accepts per file: using ${formatBytes(capped)}`,
  );
  return capped;
}
