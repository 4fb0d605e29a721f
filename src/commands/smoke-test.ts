import '../stores/schemes.js';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { defineCommand, type Outputs } from '../core/command.js';
import type { InputSpec } from '../core/inputs.js';
import { OrbError, UsageError } from '../core/errors.js';
import { formatBytes } from '../core/progress.js';
import { requireTool } from '../core/proc.js';
import { probeAccelerator } from '../qemu/probe.js';
import type { DiskInterface, Firmware } from '../qemu/runner.js';
import { writeSummary } from '../smoke/evidence.js';
import { smokeTest, type SmokeResult } from '../smoke/run.js';
import { parseRect } from '../smoke/screen.js';
import { openSmokeImage, saveProfile, type LazyImage } from '../smoke/lazy-image.js';
import { storeInputs } from '../stores/open.js';
import { accessInputs, storeOptions } from './publish.js';
import { expectedProtocols, rdpOutputs, rdpOutputSpecs } from './rdp-probe.js';

/** How the disk was reached: lazily through the export, or pulled (or local) first. */
interface Delivery {
  lazy?: LazyImage;
  bytesFetched?: number;
  /** seconds from the command's start to the launch of smokeTest */
  before: number;
  profile?: { path: string; blocks: number };
}

function outputsOf(r: SmokeResult, d: Delivery): Outputs {
  const t = r.timings;
  const fromStart =
    t.rdpReady === undefined ? '' : Number((d.before + (t.launched ?? 0) + t.rdpReady).toFixed(1));
  return {
    lazy: !!d.lazy,
    'bytes-fetched': d.lazy ? d.lazy.bytesFetched() : (d.bytesFetched ?? ''),
    'seconds-to-rdp-total': fromStart,
    'boot-profile': d.profile?.path ?? '',
    'boot-profile-blocks': d.profile?.blocks ?? '',
    passed: r.passed,
    failures: r.failures.join('\n'),
    'seconds-to-first-serial': t.firstSerial === undefined ? '' : Number(t.firstSerial.toFixed(1)),
    'seconds-to-rdp': t.rdpReady === undefined ? '' : Number(t.rdpReady.toFixed(1)),
    'seconds-total': Number(t.total.toFixed(1)),
    ...(r.rdp ? rdpOutputs(r.rdp) : Object.fromEntries(rdpOutputSpecs.map((s) => [s.name, '']))),
    accelerator: r.accelerator,
    firmware: r.firmware,
    'image-format': r.disk.format,
    'reference-difference':
      r.referenceDifference === undefined ? '' : Number(r.referenceDifference.toFixed(4)),
    'evidence-dir': r.evidenceDir,
    screenshots: r.screenshots.length,
    'serial-log': r.serialLog,
    'qemu-log': r.qemuLog,
  };
}

function stamp(): string {
  return new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
}

const own: InputSpec[] = [
  {
    name: 'image',
    type: 'string',
    required: true,
    positional: 0,
    description:
      'disk image file (raw, qcow2, vhdx, vmdk, ...), chunked layout (oci-layout:DIR:TAG) or published reference',
  },
  {
    name: 'allow-external-file',
    type: 'list',
    description:
      'a file the image names (qcow2 backing or data file, VMDK extent or parent) that the VM may read; without it such images are refused before boot',
  },
  {
    name: 'manifest',
    type: 'string',
    description:
      'stage manifest giving firmware, TPM and OS for a local image (default: <image>.orb.json when it exists); a pulled image brings its own',
  },
  {
    name: 'timeout',
    type: 'duration',
    default: 900,
    min: 5,
    max: 86400,
    description: 'seconds from VM start for RDP (and the other boot checks) to pass',
  },
  {
    name: 'accelerator',
    type: 'enum',
    choices: ['auto', 'kvm', 'tcg'],
    default: 'auto',
    description: 'auto probes KVM as setup-qemu does; pass its accelerator output to skip the probe',
  },
  {
    name: 'firmware',
    type: 'enum',
    choices: ['auto', 'bios', 'uefi', 'uefi-secure'],
    default: 'auto',
    description: "auto: the manifest's, else UEFI for GPT disks and BIOS otherwise",
  },
  {
    name: 'tpm',
    type: 'enum',
    choices: ['auto', 'true', 'false'],
    default: 'auto',
    description: "attach a TPM 2.0 (swtpm); auto: the manifest's",
  },
  {
    name: 'uefi-vars',
    type: 'string',
    description: 'UEFI variable store to start from (copied; default a fresh one)',
  },
  {
    name: 'memory',
    type: 'size',
    min: 64 * 1024 * 1024,
    description: "guest memory (default by the manifest's OS: Windows 4G, Linux 1G, else 2G)",
  },
  { name: 'cpus', type: 'integer', default: 2, min: 1, max: 64, description: 'virtual CPUs' },
  {
    name: 'disk-interface',
    type: 'enum',
    choices: ['sata', 'virtio', 'ide', 'nvme'],
    default: 'sata',
    description: 'how the disk is attached (sata boots every OS without extra drivers)',
  },
  {
    name: 'isolate-network',
    type: 'boolean',
    default: true,
    description: "the guest cannot reach the host's networks (forwarded ports still work)",
  },
  {
    name: 'rdp',
    type: 'boolean',
    default: true,
    description: 'check RDP (turn off for images without RDP and use the other checks)',
  },
  {
    name: 'rdp-port',
    type: 'integer',
    default: 3389,
    min: 1,
    max: 65535,
    description: 'guest port of the RDP service',
  },
  {
    name: 'expect-protocol',
    type: 'list',
    description:
      'fail unless the server selects one of these: rdp, tls, credssp, rdstls, credssp-ex (empty: any)',
  },
  {
    name: 'ports',
    type: 'list',
    description: 'more guest TCP ports that must accept connections, e.g. 8006',
  },
  {
    name: 'serial-pattern',
    type: 'string',
    description: 'regular expression a serial console line must match',
  },
  {
    name: 'screen-check',
    type: 'boolean',
    default: false,
    description: 'require a screen that is not black and has stopped changing',
  },
  {
    name: 'reference-screenshot',
    type: 'string',
    description: 'PNG the screen must match (for example a screenshot from an earlier run)',
  },
  {
    name: 'reference-threshold',
    type: 'number',
    default: 0.02,
    min: 0,
    max: 1,
    description: 'fraction of unmasked pixels allowed to differ from the reference',
  },
  {
    name: 'reference-mask',
    type: 'list',
    description: 'rectangles WIDTHxHEIGHT+X+Y left out of the comparison (clocks, host names)',
  },
  {
    name: 'screen-timeout',
    type: 'duration',
    default: 60,
    min: 5,
    max: 3600,
    description: 'seconds for the screen checks after the boot checks passed',
  },
  {
    name: 'screenshot-interval',
    type: 'duration',
    min: 1,
    max: 3600,
    description: 'seconds between screenshots (default: timeout / 60, at least 5)',
  },
  {
    name: 'evidence-dir',
    type: 'string',
    description:
      'where screenshots, logs and result.json go (default: a new directory under RUNNER_TEMP or the temporary directory)',
  },
  {
    name: 'upload-evidence',
    type: 'enum',
    choices: ['on-failure', 'always', 'never'],
    default: 'on-failure',
    description: 'upload the evidence as a workflow artifact (Actions only)',
  },
  {
    name: 'artifact-name',
    type: 'string',
    description: 'name of the evidence artifact (default smoke-test-evidence-<image>-<job>)',
  },
  {
    name: 'shutdown-grace',
    type: 'duration',
    default: 20,
    min: 0,
    max: 600,
    description: 'seconds the guest gets to power off after the ACPI request before QEMU is stopped',
  },
  {
    name: 'full-pull',
    type: 'boolean',
    default: false,
    description:
      'pull a published chunked disk completely before booting it (default: boot it through a lazy NBD export that fetches only the blocks the boot reads)',
  },
  {
    name: 'pull-dir',
    type: 'string',
    description:
      'where a referenced image is pulled to (removed afterwards; default RUNNER_TEMP or the temporary directory)',
  },
  ...accessInputs,
];
// Registry and store access (credentials, endpoints) exactly as orb pull takes them.
const inputs = [...own, ...storeInputs('pull', own)];
const storeSpecs = [...accessInputs, ...storeInputs('pull', own)];

export default defineCommand({
  name: 'smoke-test',
  title: 'Boot an image headless and prove it answers RDP',
  description:
    'Boots a disk image (raw, qcow2, ...) headless on a throw-away overlay (the image is never written), forwards the guest RDP port to ' +
    '127.0.0.1 and retries a real RDP check (X.224 negotiation and TLS handshake) until the timeout; optionally checks more TCP ports, ' +
    'a serial console pattern, that the screen settled, and a reference screenshot. Keeps screenshots over time, the serial and QEMU logs ' +
    'and timings as evidence, and always stops the VM. A published chunked disk boots through an NBD export that fetches only the ' +
    'blocks the boot reads (its boot profile is fetched first when one is attached, and the reads are recorded as a new one); ' +
    '--full-pull downloads it first.',
  action: true,
  usage: '--image PATH_OR_REF',
  inputs,
  outputs: [
    { name: 'passed', description: 'true when every check passed' },
    { name: 'failures', description: 'one line per failed check' },
    {
      name: 'seconds-to-first-serial',
      description: 'seconds from VM start to the first serial console output',
    },
    { name: 'seconds-to-rdp', description: 'seconds from VM start until RDP answered' },
    { name: 'seconds-total', description: 'seconds the whole test took' },
    {
      name: 'seconds-to-rdp-total',
      description: 'seconds from the start of the command (pull or lazy open included) until RDP answered',
    },
    { name: 'lazy', description: 'true when the disk was booted through the lazy export (not pulled first)' },
    {
      name: 'bytes-fetched',
      description:
        'bytes fetched from the store for the boot (lazy: the blocks read and the metadata; else the pull)',
    },
    {
      name: 'boot-profile',
      description: 'the boot profile recorded by a lazy boot (for orb publish --boot-profile)',
    },
    { name: 'boot-profile-blocks', description: 'blocks in the boot profile' },
    ...rdpOutputSpecs,
    { name: 'accelerator', description: 'kvm or tcg' },
    { name: 'firmware', description: 'bios, uefi or uefi-secure' },
    { name: 'image-format', description: 'format of the image as qemu-img detected it' },
    {
      name: 'reference-difference',
      description: 'fraction of unmasked pixels that differed from the reference (best match)',
    },
    { name: 'evidence-dir', description: 'directory with screenshots, serial.log, qemu.log and result.json' },
    { name: 'screenshots', description: 'number of screenshots kept' },
    { name: 'serial-log', description: 'path of the serial console log' },
    { name: 'qemu-log', description: "path of QEMU's own log" },
  ],
  async run(inputs, ctx) {
    const masks = inputs.list('reference-mask').map(parseRect);
    const protocols = expectedProtocols(inputs.list('expect-protocol'));
    const ports = inputs.list('ports').map((p) => {
      const n = Number(p);
      if (!Number.isInteger(n) || n < 1 || n > 65535)
        throw new UsageError(
          `input 'ports': '${p}' is not a TCP port; expected whole numbers from 1 to 65535`,
        );
      return n;
    });
    let serialPattern: RegExp | undefined;
    const patternText = inputs.optString('serial-pattern');
    if (patternText) {
      try {
        serialPattern = new RegExp(patternText);
      } catch (err) {
        throw new UsageError(`input 'serial-pattern': ${(err as Error).message}`);
      }
    }
    if (
      !inputs.bool('rdp') &&
      !ports.length &&
      !serialPattern &&
      !inputs.bool('screen-check') &&
      !inputs.has('reference-screenshot')
    ) {
      throw new UsageError(
        'nothing to check: RDP is off and no other check was asked for',
        'keep --rdp, or add --ports, --serial-pattern, --screen-check or --reference-screenshot',
      );
    }
    const tpmIn = inputs.string('tpm');
    const started = performance.now();
    const { image, lazy } = await openSmokeImage(inputs.string('image'), {
      fullPull: inputs.bool('full-pull'),
      log: ctx.log,
      signal: ctx.signal,
      progress: ctx.progress,
      store: storeOptions(inputs, storeSpecs, ctx),
      ...(inputs.optString('pull-dir') ? { pullDir: inputs.string('pull-dir') } : {}),
    });
    const delivery: Delivery = {
      ...(lazy ? { lazy } : {}),
      ...(image.bytesFetched !== undefined ? { bytesFetched: image.bytesFetched } : {}),
      before: 0,
    };
    const evidenceDir =
      inputs.optString('evidence-dir') ?? join(process.env.RUNNER_TEMP || tmpdir(), `orb-smoke-${stamp()}`);

    let accelerator = inputs.string('accelerator') as 'auto' | 'kvm' | 'tcg';
    if (accelerator === 'auto') {
      const qemu = requireTool('qemu-system-x86_64', 'qemu-system-x86');
      const d = await probeAccelerator({ qemu });
      accelerator = d.accelerator;
      if (d.reason)
        ctx.log.warn(
          `using software emulation (TCG): ${d.reason}. Booting will be many times slower than with KVM; raise --timeout accordingly.`,
        );
    }
    // A pulled image's own manifest (from its published config) describes what was booted; a
    // --manifest given beside a reference could be another version's, so it only fills in for
    // local files.
    const given = inputs.optString('manifest');
    if (given && image.manifest)
      ctx.log.warn(`--manifest ${given} is ignored: the pulled image brings its own (${image.manifest})`);
    const manifest = image.manifest ?? given;
    let result: SmokeResult;
    try {
      delivery.before = (performance.now() - started) / 1000;
      result = await smokeTest({
        image: image.path,
        ...(lazy ? { disk: lazy.facts, onRdpReady: () => lazy.freezeProfile() } : {}),
        allowExternalFiles: inputs.list('allow-external-file'),
        ...(manifest ? { manifest } : {}),
        accelerator,
        firmware: inputs.string('firmware') as Firmware | 'auto',
        tpm: tpmIn === 'auto' ? 'auto' : tpmIn === 'true',
        ...(inputs.optString('uefi-vars') ? { uefiVars: inputs.string('uefi-vars') } : {}),
        ...(inputs.optNumber('memory') !== undefined
          ? { memoryMiB: Math.floor(inputs.number('memory') / (1024 * 1024)) }
          : {}),
        cpus: inputs.number('cpus'),
        diskInterface: inputs.string('disk-interface') as DiskInterface,
        isolate: inputs.bool('isolate-network'),
        timeoutMs: inputs.number('timeout') * 1000,
        rdp: {
          enabled: inputs.bool('rdp'),
          guestPort: inputs.number('rdp-port'),
          expectProtocols: protocols,
        },
        ports,
        ...(serialPattern ? { serialPattern } : {}),
        screen: {
          settle: inputs.bool('screen-check'),
          ...(inputs.optString('reference-screenshot')
            ? { reference: inputs.string('reference-screenshot') }
            : {}),
          threshold: inputs.number('reference-threshold'),
          masks,
          timeoutMs: inputs.number('screen-timeout') * 1000,
        },
        ...(inputs.optNumber('screenshot-interval') !== undefined
          ? { screenshotIntervalMs: inputs.number('screenshot-interval') * 1000 }
          : {}),
        evidenceDir,
        shutdownGraceMs: inputs.number('shutdown-grace') * 1000,
        signal: ctx.signal,
        log: ctx.log,
      });
      if (lazy) delivery.profile = await saveProfile(lazy, result, ctx.log);
    } finally {
      await image.dispose();
    }

    await writeSummary(ctx.summary, result);
    const outputs = outputsOf(result, delivery);
    if (lazy) ctx.summary.text(`Booted through orb serve: ${lazy.bytesFetched()} bytes fetched.`);
    if (lazy)
      ctx.log.info(
        `lazy boot: ${formatBytes(lazy.bytesFetched())} of blocks fetched of ${formatBytes(lazy.compressedBytes)} compressed (${((100 * lazy.bytesFetched()) / Math.max(1, lazy.compressedBytes)).toFixed(1)}%), and ${formatBytes(lazy.metadataBytes)} of metadata${lazy.profileUsed ? '; boot profile prefetched' : ''}`,
      );
    const upload = inputs.string('upload-evidence');
    if (ctx.uploadArtifact && (upload === 'always' || (upload === 'on-failure' && !result.passed))) {
      const name =
        inputs.optString('artifact-name') ??
        `smoke-test-evidence-${basename(image.path)}-${process.env.GITHUB_JOB ?? 'job'}-${process.env.GITHUB_RUN_ATTEMPT ?? '1'}`.replace(
          /[^A-Za-z0-9._-]/g,
          '_',
        );
      const files = [
        ...result.screenshots,
        result.serialLog,
        result.qemuLog,
        join(result.evidenceDir, 'result.json'),
      ];
      try {
        await ctx.uploadArtifact(name, files, result.evidenceDir);
        ctx.log.info(`evidence uploaded as artifact '${name}'`);
      } catch (err) {
        ctx.log.warn(`could not upload the evidence artifact: ${(err as Error).message}`);
      }
    }
    if (!result.passed) {
      // The outputs travel with the error, so `if: failure()` steps still find the evidence.
      throw new OrbError('check', `smoke test failed: ${result.failures.join('; ')}`, {
        hint: `see the screenshots and logs in ${result.evidenceDir}`,
        outputs,
      });
    }
    ctx.log.info(
      `smoke test passed in ${result.timings.total.toFixed(0)} s; evidence in ${result.evidenceDir}`,
    );
    return outputs;
  },
});
