import { defineCommand, type Outputs } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import type { InputSpec, OutputSpec } from '../core/inputs.js';
import { formatBytes, formatDuration } from '../core/progress.js';
import { benchInputs, benchOutputs, runBenchCommand } from '../image/bench/command.js';
import { convertImage, DEFAULT_CHUNK_SIZE, OUTPUT_FORMATS, type OutputFormat } from '../image/convert.js';
import type { Qcow2Compression } from '../image/qcow2.js';

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
      'qcow2 (compressed clusters), raw (sparse), raw.zst (one zstd stream) or chunked (OCI layout of zstd chunks)',
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
    name: 'chunk-size',
    type: 'size',
    default: `${DEFAULT_CHUNK_SIZE >> 20}M`,
    min: 1 << 20,
    max: 128 << 20,
    description: 'chunked: bytes of disk per chunk (see docs/chunked-format.md)',
  },
  { name: 'tag', type: 'string', default: 'latest', description: 'chunked: tag of the image in the layout' },
  {
    name: 'base',
    type: 'list',
    description:
      'chunked: earlier version(s) (layout, oci-layout:DIR:TAG or orb manifest); unchanged chunks reuse their blobs without compressing',
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
  { name: 'content-sha256', description: 'sha256 of the disk content: the raw bytes the guest sees' },
  { name: 'seconds', description: 'wall time' },
  { name: 'mb-per-second', description: 'disk content converted per second (MB of virtual size)' },
  { name: 'verified', description: 'true when --verify proved the output' },
  { name: 'manifest', description: 'the orb stage manifest written beside the output (<output>.orb.json)' },
  { name: 'manifest-digest', description: 'chunked: digest of the OCI manifest' },
  { name: 'chunks', description: 'chunked: chunks in the disk' },
  { name: 'chunks-stored', description: 'chunked: non-zero chunks in the image' },
  {
    name: 'chunks-reused',
    description: 'chunked: chunks whose blob came from --base (not compressed again)',
  },
];

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
  inputs: [...own, ...benchInputs.filter((b) => !own.some((o) => o.name === b.name))],
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
    const r = await convertImage({
      input,
      output: inp.string('output'),
      format,
      level: inp.optNumber('level'),
      compression: inp.string('compression') as Qcow2Compression,
      clusterSize: inp.number('cluster-size'),
      chunkSize: inp.number('chunk-size'),
      tag: inp.string('tag'),
      base: inp.list('base'),
      threads: inp.optNumber('threads'),
      verify: inp.bool('verify'),
      allowExternalFiles: inp.list('allow-external-file'),
      log: ctx.log,
      progress: (label, total) => ctx.progress(label, total),
      signal: ctx.signal,
    });
    ctx.summary
      .heading(`convert-and-compress: ${format}`)
      .table(
        ['', ''],
        [
          ['output', r.path],
          ['input format', r.inputFormat],
          ['virtual size', formatBytes(r.virtualSize)],
          ['allocated in input', formatBytes(r.allocatedBytes)],
          ['output size', `${formatBytes(r.outputBytes)} (ratio ${r.ratio.toFixed(2)})`],
          ['time', `${formatDuration(r.seconds)} (${r.mbPerSecond.toFixed(0)} MB/s of disk)`],
          ['content sha256', r.contentSha256],
          ['verified', r.verified ? 'yes' : 'no (use verify: true)'],
          ...(r.chunked
            ? [
                [
                  'chunks',
                  `${r.chunked.chunks} (${r.chunked.stored} stored, ${r.chunked.reused} reused, ${r.chunked.zero} zero)`,
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
      'content-sha256': r.contentSha256,
      seconds: Number(r.seconds.toFixed(2)),
      'mb-per-second': Number(r.mbPerSecond.toFixed(1)),
      verified: r.verified,
      manifest: r.manifest ?? '',
    });
    if (r.chunked) {
      Object.assign(out, {
        'manifest-digest': r.chunked.manifestDigest,
        chunks: r.chunked.chunks,
        'chunks-stored': r.chunked.stored + r.chunked.reused,
        'chunks-reused': r.chunked.reused,
      });
    }
    return out;
  },
});
