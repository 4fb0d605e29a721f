import { join, resolve } from 'node:path';
import { Inputs, type CommandDef, type Outputs, type RunContext } from '../core/command.js';
import { OrbError } from '../core/errors.js';
import { resolveInputs, type InputSpec, type OutputSpec, type RawInputs } from '../core/inputs.js';
import buildGoldenImage from './build-golden-image.js';
import convertAndCompress from './convert-and-compress.js';
import publish from './publish.js';
import smokeTest from './smoke-test.js';

/**
 * The whole pipeline as one step: build (or take an existing disk) -> convert -> publish ->
 * smoke-test the published reference. Each stage is the same command users call alone, run
 * with its own declaration, so the pipeline cannot drift from the stage actions.
 */
export const STAGES = [
  { prefix: 'build', cmd: buildGoldenImage },
  { prefix: 'convert', cmd: convertAndCompress },
  { prefix: 'publish', cmd: publish },
  { prefix: 'smoke', cmd: smokeTest },
] as const;

function pick(cmd: CommandDef, names: readonly string[]): InputSpec[] {
  return names.map((n) => {
    const spec = cmd.inputs.find((s) => s.name === n);
    if (!spec) throw new Error(`pipeline: ${cmd.name} has no input '${n}'`);
    return spec;
  });
}

/** Stage inputs the pipeline passes through unchanged, by stage. */
const PASS = {
  build: [
    'os',
    'iso',
    'iso-sha256',
    'virtio-win',
    'cloud-image',
    'cloud-image-sha256',
    'edition',
    'product-key',
    'locale',
    'time-zone',
    'admin-user',
    'admin-password',
    'firmware',
    'arch',
    'script',
    'sysprep',
    'disk-size',
    'memory',
    'cpus',
    'timeout',
    'accelerator',
  ],
  convert: ['level'],
  publish: ['to', 'concurrency', 'plain-http', 'username', 'password', 's3-endpoint', 's3-path-style'],
} as const;

export const pipelineInputs: InputSpec[] = [
  { name: 'disk', type: 'string', description: 'an existing disk image or stage manifest: skips the build' },
  ...pick(buildGoldenImage, PASS.build).map((s) =>
    s.name === 'iso' ? { ...s, description: `${s.description} (not needed with disk)` } : s,
  ),
  {
    name: 'format',
    type: 'enum',
    choices: ['chunked', 'qcow2', 'raw.zst'],
    default: 'chunked',
    description: 'what to publish: the chunked format, or a single qcow2 or .zst file',
  },
  ...pick(convertAndCompress, PASS.convert),
  ...pick(publish, PASS.publish),
  {
    name: 'smoke-test',
    type: 'boolean',
    default: true,
    description: 'boot the published image and require an RDP answer',
  },
  {
    name: 'smoke-timeout',
    type: 'duration',
    default: '15m',
    min: 10,
    description: 'how long the smoke test waits for RDP',
  },
  {
    name: 'work-dir',
    type: 'string',
    default: 'orb-pipeline',
    description: 'directory for the build, the converted image and the smoke-test evidence',
  },
];

function prefixed(prefix: string, outs: readonly OutputSpec[]): OutputSpec[] {
  return outs.map((o) => ({
    ...o,
    name: `${prefix}-${o.name}`,
    description: `${prefix} stage: ${o.description}`,
  }));
}

export const pipelineOutputs: OutputSpec[] = [
  { name: 'reference', description: 'the published image, pullable by digest' },
  { name: 'digest', description: 'manifest digest of the published image' },
  { name: 'passed', description: 'true when every stage ran and the smoke test passed (or was skipped)' },
  ...STAGES.flatMap((s) => prefixed(s.prefix, s.cmd.outputs)),
];

async function runStage(cmd: CommandDef, raw: RawInputs, ctx: RunContext): Promise<Outputs> {
  ctx.log.info(`\n== orb ${cmd.name}`);
  const values = resolveInputs(cmd.inputs, raw);
  try {
    return await cmd.run(new Inputs(values, cmd.inputs), ctx);
  } catch (err) {
    if (err instanceof OrbError) {
      throw new OrbError(err.kind, `${cmd.name}: ${err.message}`, {
        hint: err.hint,
        cause: err,
        outputs: err.outputs,
      });
    }
    throw err;
  }
}

function passThrough(inputs: Inputs, names: readonly string[]): RawInputs {
  const raw: RawInputs = {};
  for (const n of names) {
    if (!inputs.has(n)) continue;
    const spec = pipelineInputs.find((s) => s.name === n)!;
    raw[n] =
      spec.type === 'list' ? inputs.list(n) : spec.type === 'boolean' ? inputs.bool(n) : inputs.string(n);
  }
  return raw;
}

export async function runPipeline(inputs: Inputs, ctx: RunContext): Promise<Outputs> {
  const work = resolve(inputs.string('work-dir'));
  const out: Outputs = {};
  const record = (prefix: string, o: Outputs) => {
    for (const [k, v] of Object.entries(o)) out[`${prefix}-${k}`] = v;
  };

  let disk = inputs.optString('disk');
  if (!disk) {
    if (!inputs.has('iso') && !inputs.has('cloud-image')) {
      throw new OrbError(
        'usage',
        "the pipeline needs 'disk' (an existing image) or what to build from ('iso', or 'cloud-image' for linux)",
      );
    }
    const built = await runStage(
      buildGoldenImage,
      { ...passThrough(inputs, PASS.build), out: join(work, 'build') },
      ctx,
    );
    record('build', built);
    disk = String(built.manifest ?? built.disk);
  }

  const format = inputs.string('format');
  const ext = format === 'chunked' ? 'oci' : format;
  const converted = await runStage(
    convertAndCompress,
    {
      ...passThrough(inputs, PASS.convert),
      input: disk,
      output: join(work, `image.${ext}`),
      format,
      verify: true,
    },
    ctx,
  );
  record('convert', converted);

  const published = await runStage(
    publish,
    // the convert manifest, not the bare file: build facts travel into the published config
    { ...passThrough(inputs, PASS.publish), source: String(converted.manifest ?? converted.path) },
    ctx,
  );
  record('publish', published);
  out.reference = published.reference;
  out.digest = published.digest;

  if (inputs.bool('smoke-test')) {
    const smokeRaw: RawInputs = {
      image: String(published.reference),
      timeout: String(inputs.number('smoke-timeout')),
      'evidence-dir': join(work, 'smoke'),
      'pull-dir': join(work, 'smoke-pull'),
    };
    for (const n of [
      'accelerator',
      'plain-http',
      'username',
      'password',
      's3-endpoint',
      's3-path-style',
    ] as const) {
      if (inputs.has(n) && smokeTest.inputs.some((s) => s.name === n)) smokeRaw[n] = inputs.string(n);
    }
    try {
      record('smoke', await runStage(smokeTest, smokeRaw, ctx));
    } catch (err) {
      if (err instanceof OrbError && err.outputs) record('smoke', err.outputs);
      throw new OrbError(err instanceof OrbError ? err.kind : 'internal', (err as Error).message, {
        hint: err instanceof OrbError ? err.hint : undefined,
        outputs: { ...out, passed: false },
      });
    }
  }
  out.passed = true;
  return out;
}
