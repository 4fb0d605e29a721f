import '../stores/schemes.js';
import { defineCommand, type Outputs } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import type { InputSpec, OutputSpec } from '../core/inputs.js';
import { formatBytes, formatDuration } from '../core/progress.js';
import { benchInputs, benchOutputs, runBenchCommand } from '../image/bench/command.js';
import {
  convertImage,
  DEFAULT_PACK_SIZE,
  MIN_PACK_SIZE,
  OUTPUT_FORMATS,
  type OutputFormat,
} from '../image/convert.js';
import type { Qcow2Compression } from '../image/qcow2.js';
import type { BaseImage } from '../image/chunked/image.js';
import { openStore, storeInputs } from '../stores/open.js';
import { loadPublishedBase } from '../transfer/remote-base.js';
import { accessInputs, storeOptions } from './publish.js';

const own: InputSpec[] = [
  {
    name: 'input',
    type: 'string',
    required: true,
    positional: 0,
    alias: 'i',
    description:
      'disk image (raw, qcow2, vhdx, vmdk, vdi, vpc: detected from its content), an orb manifest (.orb.json) or a chunked layout (DIR or oci-layout:DIR:TAG)',
  },
  {
    name: 'output',
    type: 'string',
    alias: 'o',
    description:
      'file to write (a directory for chunked); appears only once complete (and verified with --verify)',
  },
  {
    name: 'format',
    type: 'enum',
    choices: OUTPUT_FORMATS,
    default: 'qcow2',
    description:
      'qcow2 (compressed clusters), raw (sparse), raw.zst (one zstd stream) or chunked (OCI layout: 32 KiB blocks deduplicated by sha256, zstd frames in a few large packs, one index; docs/chunked-format-v2.md)',
  },
  {
    name: 'level',
    type: 'integer',
    min: 1,
    max: 19,
    description: 'compression level: zstd 1-19 (default 3), zlib 1-9 (default 6)',
  },
  {
    name: 'compression',
    type: 'enum',
    choices: ['zstd', 'zlib', 'none'],
    default: 'zstd',
    description: 'qcow2 cluster compression (zstd needs QEMU 5.1 or newer to read)',
  },
  {
    name: 'cluster-size',
    type: 'size',
    default: '64K',
    min: 4096,
    max: 2 << 20,
    description: 'qcow2 cluster size, a power of two',
  },
  {
    name: 'pack-size',
    type: 'size',
    default: `${DEFAULT_PACK_SIZE >> 30}G`,
    min: MIN_PACK_SIZE,
    max: 2 ** 36,
    description:
      'chunked: largest pack blob (compressed frames; a pack is closed before a frame would take it past this). ' +
      'Replaces --chunk-size (the 32 KiB block size is fixed: it is part of the content identity). ' +
      "Keep it under the target store's largest object: GitHub releases 2000000000 bytes, GitLab 5G, GHCR 10G; " +
      'larger packs mean fewer layers (registries refuse ~500)',
  },
  { name: 'tag', type: 'string', default: 'latest', description: 'chunked: tag of the image in the layout' },
  {
    name: 'base',
    type: 'list',
    description:
      'chunked: earlier version(s) (layout, oci-layout:DIR:TAG, orb manifest, or one published image: oci://HOST/REPO:TAG, s3://..., any reference orb pull reads); blocks they hold are referenced, only new blocks are compressed into new packs. ' +
      "A layout base's packs are linked into the output layout; a published base's packs stay in its store (only its manifest, config and index are downloaded) and the output manifest names it (dev.orb.base.reference), so orb publish skips them, or mounts them from the base's repository of the same registry. " +
      'Adding to an existing layout uses its --tag as a base too',
  },
  {
    name: 'repack',
    type: 'boolean',
    default: false,
    description:
      'chunked with --base: compress every block again into fresh packs instead of referencing the base packs (done by itself when the base lists more than 400 packs; base packs less than half live are always rewritten)',
  },
  {
    name: 'threads',
    type: 'integer',
    min: 1,
    max: 256,
    description: 'compression threads (default: all cores)',
  },
  {
    name: 'verify',
    type: 'boolean',
    default: false,
    description: 'prove the output decodes to the input content before keeping it (qcow2: qemu-img compare)',
  },
  {
    name: 'allow-external-file',
    type: 'list',
    description:
      'a file the input image names (qcow2 backing or data file, VMDK extent or parent) that orb may read; without it such images are refused (see docs/security.md)',
  },
  {
    name: 'benchmark',
    type: 'boolean',
    default: false,
    description:
      'first measure every method on a sample of this image and report (orb bench); without output, only that',
  },
];

const ownOutputs: OutputSpec[] = [
  { name: 'path', description: 'the written image (file, or layout directory for chunked)' },
  { name: 'format', description: 'its format' },
  { name: 'virtual-size', description: 'disk size in bytes' },
  { name: 'allocated-bytes', description: 'bytes of the input marked as holding data' },
  { name: 'output-bytes', description: 'bytes written (chunked: blobs + manifest + config)' },
  { name: 'ratio', description: 'virtual size / output bytes' },
  {
    name: 'sha256',
    description: 'sha256 of the output file (chunked: of its manifest, i.e. the manifest digest)',
  },
  {
    name: 'content-sha256',
    description: 'sha256 of the disk content (the raw bytes the guest sees); empty for chunked output',
  },
  {
    name: 'content-digest',
    description:
      'chunked (output or input): the orb2 content root over the 32 KiB block digests and zero runs (the same as orb digest prints)',
  },
  { name: 'seconds', description: 'wall time' },
  { name: 'mb-per-second', description: 'disk content converted per second (MB of virtual size)' },
  { name: 'verified', description: 'true when --verify proved the output' },
  { name: 'manifest', description: 'the orb stage manifest written beside the output (<output>.orb.json)' },
  { name: 'manifest-digest', description: 'chunked: digest of the OCI manifest' },
  { name: 'blocks', description: 'chunked: 32 KiB blocks in the disk' },
  { name: 'blocks-new', description: 'chunked: blocks compressed into new packs' },
  {
    name: 'blocks-reused',
    description: 'chunked: blocks a --base already held (referenced, not stored again)',
  },
  { name: 'blocks-zero', description: 'chunked: zero blocks (never stored)' },
  { name: 'packs', description: 'chunked: packs the manifest lists' },
  { name: 'new-pack-bytes', description: 'chunked: bytes of the packs this conversion wrote' },
];

const local = [...own, ...benchInputs.filter((b) => !own.some((o) => o.name === b.name))];
// a published --base is opened as orb pull opens its reference (same access inputs)
const access = accessInputs.filter((a) => !local.some((o) => o.name === a.name));
const inputs = [...local, ...access, ...storeInputs('pull', [...local, ...access])];

/** A store reference (oci://, s3://, https://, ...) rather than a local layout or manifest. */
const isStoreRef = (ref: string) => /^[a-z][a-z0-9+.-]*:\/\//.test(ref);

export default defineCommand({
  name: 'convert-and-compress',
  aliases: ['convert'],
  title: 'Convert a disk image to compressed qcow2, sparse raw, raw.zst or the chunked OCI format',
  description:
    'Reads any disk image qemu-img understands (format detected from its content) with bounded memory, skipping zeros, and writes one output ' +
    'compressed on all cores: qcow2 (zstd or zlib clusters), sparse raw, raw.zst, or the chunked OCI layout that orb publish ships and ' +
    'orb pull updates incrementally. Checks free space first, writes <output>.partial and renames it only when complete.',
  action: true,
  usage: 'INPUT --output PATH [--format qcow2|raw|raw.zst|chunked]',
  inputs,
  outputs: [...ownOutputs, ...benchOutputs],
  async run(inp, ctx) {
    const input = inp.string('input');
    const out: Outputs = {};
    if (inp.bool('benchmark')) Object.assign(out, await runBenchCommand(inp, ctx, input));
    if (!inp.has('output')) {
      if (inp.bool('benchmark')) return out;
      throw new UsageError("input 'output' is required: where to write the converted image");
    }
    const format = inp.string('format') as OutputFormat;
    const bases = inp.list('base');
    const remoteBases: BaseImage[] = [];
    if (format !== 'chunked' && bases.length) throw new UsageError('--base only applies to --format chunked');
    for (const ref of bases.filter(isStoreRef)) {
      const opened = await openStore(ref, storeOptions(inp, inputs, ctx));
      try {
        remoteBases.push(await loadPublishedBase(opened));
      } finally {
        await opened.store.close?.();
      }
    }
    const r = await convertImage({
      input,
      output: inp.string('output'),
      format,
      level: inp.optNumber('level'),
      compression: inp.string('compression') as Qcow2Compression,
      clusterSize: inp.number('cluster-size'),
      packSize: inp.number('pack-size'),
      tag: inp.string('tag'),
      base: bases.filter((b) => !isStoreRef(b)),
      ...(remoteBases.length ? { remoteBases } : {}),
      repack: inp.bool('repack'),
      threads: inp.optNumber('threads'),
      verify: inp.bool('verify'),
      allowExternalFiles: inp.list('allow-external-file'),
      log: ctx.log,
      progress: (label, total) => ctx.progress(label, total),
      signal: ctx.signal,
    });
    ctx.summary.heading(`convert-and-compress: ${format}`).table(
      ['', ''],
      [
        ['output', r.path],
        ['input format', r.inputFormat],
        ['virtual size', formatBytes(r.virtualSize)],
        ['allocated in input', formatBytes(r.allocatedBytes)],
        ['output size', `${formatBytes(r.outputBytes)} (ratio ${r.ratio.toFixed(2)})`],
        ['time', `${formatDuration(r.seconds)} (${r.mbPerSecond.toFixed(0)} MB/s of disk)`],
        ...(r.contentSha256 ? [['content sha256', r.contentSha256]] : []),
        ...(r.contentDigest ? [['content digest', r.contentDigest]] : []),
        ['verified', r.verified ? 'yes' : 'no (use verify: true)'],
        ...(r.chunked
          ? [
              [
                'blocks',
                `${r.chunked.blocks} of ${r.chunked.blockSize} bytes: ${r.chunked.fresh} new, ${r.chunked.reused} reused from the base, ${r.chunked.duplicate} repeated, ${r.chunked.zero} zero`,
              ],
              [
                'packs',
                `${r.chunked.packs} (${r.chunked.newPacks} new, ${formatBytes(r.chunked.newPackBytes)}); index ${formatBytes(r.chunked.indexBytes)}`,
              ],
            ]
          : []),
      ],
    );
    Object.assign(out, {
      path: r.path,
      format: r.format,
      'virtual-size': r.virtualSize,
      'allocated-bytes': r.allocatedBytes,
      'output-bytes': r.outputBytes,
      ratio: Number(r.ratio.toFixed(3)),
      sha256: r.sha256,
      'content-sha256': r.contentSha256 ?? '',
      'content-digest': r.contentDigest ?? '',
      seconds: Number(r.seconds.toFixed(2)),
      'mb-per-second': Number(r.mbPerSecond.toFixed(1)),
      verified: r.verified,
      manifest: r.manifest ?? '',
    });
    if (r.chunked) {
      Object.assign(out, {
        'manifest-digest': r.chunked.manifestDigest,
        blocks: r.chunked.blocks,
        'blocks-new': r.chunked.fresh,
        'blocks-reused': r.chunked.reused,
        'blocks-zero': r.chunked.zero,
        packs: r.chunked.packs,
        'new-pack-bytes': r.chunked.newPackBytes,
      });
    }
    return out;
  },
});
