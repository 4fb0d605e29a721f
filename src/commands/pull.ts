import '../stores/schemes.js';
import { resolve } from 'node:path';
import { defineCommand } from '../core/command.js';
import type { InputSpec, OutputSpec } from '../core/inputs.js';
import { stageManifestPath } from '../core/stage-manifest-file.js';
import { formatBytes } from '../core/progress.js';
import { openStore, storeInputs, storeOutputs } from '../stores/open.js';
import { pull } from '../transfer/pull.js';
import type { OutputFormat } from '../transfer/pull-output.js';
import { accessInputs, storeOptions } from './publish.js';

const own: InputSpec[] = [
  {
    name: 'ref',
    type: 'string',
    required: true,
    positional: 0,
    description: 'what to pull: oci://HOST[:PORT]/REPO:TAG (or @sha256:...) or oci-layout:DIR:TAG',
  },
  {
    name: 'output',
    type: 'string',
    required: true,
    alias: 'o',
    description: 'path of the disk (or file) to write; appears only once verified',
  },
  {
    name: 'format',
    type: 'enum',
    choices: ['auto', 'raw', 'qcow2'],
    default: 'auto',
    description: 'raw (sparse) or qcow2; auto: raw for disk images, the published format for files',
  },
  {
    name: 'base',
    type: 'string',
    description:
      'a local earlier version (raw disk, chunked layout or orb manifest): blocks it holds (at any offset) are taken from it instead of downloaded',
  },
  {
    name: 'concurrency',
    type: 'integer',
    default: 6,
    min: 1,
    max: 64,
    description: 'requests (byte ranges, packs, parts) in flight at once',
  },
  {
    name: 'manifest',
    type: 'string',
    description:
      'where to write the orb stage manifest describing the pulled image (default: <output>.orb.json)',
  },
  ...accessInputs,
];
const inputs = [...own, ...storeInputs('pull', own)];

const ownOutputs: OutputSpec[] = [
  { name: 'path', description: 'the written disk or file' },
  { name: 'format', description: 'its format (raw, qcow2, or the published file format)' },
  { name: 'digest', description: 'digest of the pulled manifest' },
  { name: 'reference', description: 'the source by digest' },
  { name: 'artifact-type', description: 'artifactType of the manifest' },
  {
    name: 'content-digest',
    description: 'disks: the content identity (orb2:sha256:..., see orb digest), proven block by block',
  },
  { name: 'content-sha256', description: 'files: sha256 of the published file, verified' },
  { name: 'virtual-size', description: 'disk size in bytes' },
  { name: 'file-size', description: 'bytes of the written file' },
  { name: 'bytes-downloaded', description: 'bytes downloaded' },
  { name: 'bytes-reused', description: 'bytes taken from --base instead of downloaded' },
  { name: 'bytes-resumed', description: 'bytes already in place from an interrupted earlier run' },
  { name: 'chunks', description: 'disks: non-zero 32 KiB blocks; files: parts' },
  { name: 'chunks-downloaded', description: 'blocks (or parts) downloaded' },
  { name: 'chunks-reused', description: 'blocks (or parts) taken from --base' },
  { name: 'ranges', description: 'disks: byte ranges of packs requested' },
  { name: 'whole-packs', description: 'disks: packs fetched whole' },
  { name: 'seconds', description: 'wall time' },
  { name: 'mb-per-second', description: 'download rate in MB/s' },
];

export default defineCommand({
  name: 'pull',
  title: 'Pull a disk image: parallel, verified, resumable, downloading only what changed',
  description:
    'Downloads an image published by orb publish and writes a sparse raw disk or a qcow2, byte-identical to the published content ' +
    '(a disk: only the byte ranges of packs holding needed blocks, every block checked against its sha256; a file: every part and the whole file). A rerun continues an interrupted pull; --base takes unchanged blocks from a local earlier version.',
  action: true,
  usage: 'REF --output PATH',
  inputs,
  outputs: [...ownOutputs, ...storeOutputs('pull', ownOutputs)],
  async run(inp, ctx) {
    const ref = inp.string('ref');
    const opened = await openStore(ref, storeOptions(inp, inputs, ctx));
    try {
      const r = await pull({
        source: opened.store,
        ref: opened.tag ?? 'latest',
        display: opened.display,
        output: inp.string('output'),
        format: inp.string('format') as OutputFormat,
        ...(inp.optString('base') ? { base: inp.string('base') } : {}),
        concurrency: inp.number('concurrency'),
        manifestPath: inp.optString('manifest') ?? defaultManifestPath(inp.string('output')),
        log: ctx.log,
        progress: ctx.progress,
        signal: ctx.signal,
      });
      ctx.summary
        .heading('pull')
        .table(
          ['', ''],
          [
            ['source', r.reference],
            ['output', `${r.path} (${r.format})`],
            [
              'downloaded',
              `${formatBytes(r.bytesDownloaded)} (${r.chunksDownloaded} ${r.contentDigest ? 'blocks' : 'parts'})`,
            ],
            [
              'reused',
              `${formatBytes(r.bytesReused)} (${r.chunksReused} ${r.contentDigest ? 'blocks' : 'parts'})`,
            ],
            r.contentDigest ? ['content digest', r.contentDigest] : ['content sha256', r.contentSha256 ?? ''],
            ['time', `${r.seconds.toFixed(1)} s`],
          ],
        );
      const extra = (await opened.store.publishedOutputs?.()) ?? {};
      return {
        path: r.path,
        format: r.format,
        digest: r.digest,
        reference: r.reference,
        'artifact-type': r.artifactType,
        'content-digest': r.contentDigest ?? '',
        'content-sha256': r.contentSha256 ?? '',
        'virtual-size': r.virtualSize,
        'file-size': r.fileSize,
        'bytes-downloaded': r.bytesDownloaded,
        'bytes-reused': r.bytesReused,
        'bytes-resumed': r.bytesResumed,
        chunks: r.chunks,
        'chunks-downloaded': r.chunksDownloaded,
        'chunks-reused': r.chunksReused,
        ranges: r.ranges ?? 0,
        'whole-packs': r.wholePacks ?? 0,
        seconds: Number(r.seconds.toFixed(2)),
        'mb-per-second': r.seconds > 0 ? Number((r.bytesDownloaded / 1e6 / r.seconds).toFixed(1)) : 0,
        ...extra,
      };
    } finally {
      await opened.store.close?.();
    }
  },
});

/** `<output>.orb.json` beside a file output; none beside a device node (nothing to write there). */
function defaultManifestPath(output: string): string | undefined {
  return resolve(output).startsWith('/dev/') ? undefined : stageManifestPath(output);
}
