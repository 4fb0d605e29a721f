import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Inputs, type Outputs, type RunContext } from '../core/command.js';
import { OrbError } from '../core/errors.js';
import { resolveInputs, type RawInputs } from '../core/inputs.js';
import { formatDuration } from '../core/progress.js';
import setupQemu from './setup-qemu.js';
import pull from './pull.js';
import { buildDebianImage, DEBIAN_SUITE } from '../guest/debian.js';
import { runPipeline, pipelineInputs } from './pipeline-stages.js';
import { installPackages, requiredPackages } from '../setup/packages.js';

/** What the demo's Debian image is built with (src/guest/debian.ts), beyond what setup-qemu installs. */
export const DEMO_PACKAGES = [
  'mmdebstrap',
  'e2fsprogs',
  'fdisk',
  'syslinux',
  'syslinux-common',
  'mtools',
  'dosfstools',
  'systemd-boot-efi',
  'openssl',
];

const PROVISION_SCRIPT = `#!/bin/sh
# A provisioning script as users write them: it runs once inside the guest during the build.
echo "provisioning the demo image: Debian $(cat /etc/debian_version), kernel $(uname -r)"
`;

async function step<T>(ctx: RunContext, title: string, fn: () => Promise<T>): Promise<[T, number]> {
  ctx.log.info(`\n### ${title}`);
  const t0 = Date.now();
  const result = await fn();
  return [result, (Date.now() - t0) / 1000];
}

/**
 * The README's main job on one machine with embedded defaults: set up QEMU, build a Debian 12
 * golden image through the real cloud-init (the base image is built once with mmdebstrap from
 * Debian's archive, then cached), convert it to the chunked format, publish it to an oci-layout:
 * directory, smoke-test the published artifact (pulled first) against xrdp with TLS and pull it
 * back to a raw disk, checking the whole-disk digest. No registry and no Windows ISO needed.
 */
export async function runDemo(inputs: Inputs, ctx: RunContext): Promise<Outputs> {
  const work = resolve(inputs.string('work-dir'));
  const timings: [string, number][] = [];
  await mkdir(work, { recursive: true });

  const [setup, tSetup] = await step(ctx, 'setup-qemu', async () => {
    if (inputs.bool('install'))
      await installPackages([...requiredPackages(['x86_64']), ...DEMO_PACKAGES], ctx.log, ctx.signal);
    const raw: RawInputs = { install: false, accelerator: inputs.string('accelerator') };
    return setupQemu.run(new Inputs(resolveInputs(setupQemu.inputs, raw), setupQemu.inputs), ctx);
  });
  timings.push(['setup-qemu', tSetup]);

  const [cloudImage, tImage] = await step(
    ctx,
    `Debian ${DEBIAN_SUITE} cloud image (mmdebstrap, cached)`,
    () => buildDebianImage({ log: (l) => ctx.log.info(l), signal: ctx.signal }),
  );
  timings.push(['demo image', tImage]);

  const script = join(work, 'provision.sh');
  await writeFile(script, PROVISION_SCRIPT, { mode: 0o755 });
  const layout = join(work, 'published');
  const reference = `oci-layout:${layout}:demo`;
  const pipelineRaw: RawInputs = {
    os: 'linux',
    'cloud-image': cloudImage,
    firmware: 'bios',
    'disk-size': '2G',
    memory: '1G',
    cpus: '2',
    script: [script],
    accelerator: String(setup.accelerator),
    timeout: '15m',
    to: reference,
    'smoke-timeout': '10m',
    'work-dir': join(work, 'pipeline'),
  };
  const [piped, tPipe] = await step(ctx, 'pipeline: build -> convert -> publish -> smoke-test', () =>
    runPipeline(new Inputs(resolveInputs(pipelineInputs, pipelineRaw), pipelineInputs), ctx),
  );
  timings.push(['build, convert, publish, smoke-test', tPipe]);
  // xrdp in the image has a certificate its user can read: anything short of TLS is a regression.
  if (piped['smoke-protocol'] !== 'tls') {
    throw new OrbError('check', `xrdp in the guest selected ${String(piped['smoke-protocol'])}, not TLS`, {
      hint: `see the evidence in ${join(work, 'pipeline', 'smoke')}`,
    });
  }

  const output = join(work, 'pulled.img');
  await rm(output, { force: true });
  const [pulled, tPull] = await step(ctx, `pull ${reference} -> ${output}`, () =>
    pull.run(
      new Inputs(resolveInputs(pull.inputs, { ref: reference, output, format: 'raw' }), pull.inputs),
      ctx,
    ),
  );
  timings.push(['pull', tPull]);
  // both name the chunked image's orb2 content root: empty on either side is a failure too
  if (!pulled['content-digest'] || pulled['content-digest'] !== piped['convert-content-digest']) {
    throw new OrbError(
      'integrity',
      `the pulled disk differs from the converted one (${String(pulled['content-digest'])} vs ${String(piped['convert-content-digest'])})`,
    );
  }

  const rows: [string, string][] = [
    [
      'accelerator',
      `${String(setup.accelerator)}${setup['kvm-reason'] ? ` (${String(setup['kvm-reason'])})` : ''}`,
    ],
    ['published', String(piped.reference)],
    [
      'blocks with data / total',
      `${Number(piped['convert-blocks']) - Number(piped['convert-blocks-zero'])} / ${String(piped['convert-blocks'])}`,
    ],
    [
      'smoke test',
      `passed: RDP answered after ${String(piped['smoke-seconds-to-rdp'])} s, ` +
        `${String(piped['smoke-protocol'])} (${String(piped['smoke-tls-version'])}, ${String(piped['smoke-tls-subject'])})`,
    ],
    ['pulled disk', `${output} (${String(pulled['content-digest'])}, identical)`],
    ...timings.map(([k, s]): [string, string] => [`time: ${k}`, formatDuration(s)]),
  ];
  ctx.log.info('\n### demo summary\n' + rows.map(([k, v]) => `  ${k.padEnd(24)} ${v}`).join('\n'));
  ctx.summary.heading('orb demo').table(['', ''], rows);
  return {
    accelerator: setup.accelerator,
    reference: piped.reference,
    digest: piped.digest,
    'content-digest': pulled['content-digest'],
    'pulled-image': output,
    'smoke-passed': piped['smoke-passed'],
    'work-dir': work,
  };
}

export const demoInputs = [
  {
    name: 'install',
    type: 'boolean' as const,
    default: true,
    description: 'install missing Debian packages with apt-get (sudo when not root)',
  },
  {
    name: 'accelerator',
    type: 'enum' as const,
    choices: ['auto', 'kvm', 'tcg'],
    default: 'auto',
    description: 'auto probes KVM and falls back to TCG',
  },
  {
    name: 'work-dir',
    type: 'string' as const,
    default: 'orb-demo',
    description: 'where the demo writes its images, layout and evidence',
  },
];
