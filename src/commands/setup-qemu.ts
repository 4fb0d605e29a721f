import { defineCommand } from '../core/command.js';
import { OrbError } from '../core/errors.js';
import { run, which } from '../core/proc.js';
import { findUefi, type Arch } from '../qemu/firmware.js';
import { probeAccelerator } from '../qemu/probe.js';
import { enableKvmOnGithubRunner, installPackages, requiredPackages } from '../setup/packages.js';

export default defineCommand({
  name: 'setup-qemu',
  title: 'Install QEMU, OVMF, swtpm, xorriso and zstd, then probe for a working KVM',
  description:
    'Installs what the pipeline needs from the distribution (skipping what is present), opens /dev/kvm on GitHub-hosted runners, ' +
    'and boots a 512-byte probe guest under KVM with a time bound to decide between KVM and software emulation (TCG).',
  action: true,
  inputs: [
    {
      name: 'install',
      type: 'boolean',
      default: true,
      description: 'install missing packages with apt-get (sudo when not root)',
    },
    {
      name: 'arch',
      type: 'enum',
      choices: ['x86_64', 'aarch64', 'both'],
      default: 'x86_64',
      description: 'guest architectures to prepare',
    },
    {
      name: 'accelerator',
      type: 'enum',
      choices: ['auto', 'kvm', 'tcg'],
      default: 'auto',
      description: 'auto probes KVM; kvm or tcg force one (kvm still fails if /dev/kvm cannot be used)',
    },
    {
      name: 'probe-timeout',
      type: 'duration',
      default: 12,
      min: 2,
      max: 120,
      description: 'seconds the KVM probe guest may take before KVM counts as hanging',
    },
  ],
  outputs: [
    { name: 'accelerator', description: 'kvm or tcg: what the next stages should use' },
    { name: 'kvm-reason', description: 'why KVM is not used (empty when it is)' },
    { name: 'qemu-version', description: 'version of qemu-system' },
    { name: 'ovmf-code', description: 'path of the UEFI firmware code image' },
    { name: 'ovmf-vars', description: 'path of the UEFI variable store template (copy it before use)' },
    { name: 'probe-seconds', description: 'seconds the probe guest took under the chosen accelerator' },
  ],
  async run(inputs, ctx) {
    const archInput = inputs.string('arch');
    const arches: Arch[] = archInput === 'both' ? ['x86_64', 'aarch64'] : [archInput as Arch];
    if (inputs.bool('install')) {
      await installPackages(requiredPackages(arches), ctx.log, ctx.signal);
      await enableKvmOnGithubRunner(ctx.log).catch((err: Error) =>
        ctx.log.warn(`could not open /dev/kvm: ${err.message}`),
      );
    }
    const qemu = which('qemu-system-x86_64');
    if (!qemu) {
      throw new OrbError('environment', 'qemu-system-x86_64 is not installed', {
        hint: "run without --no-install, or install the 'qemu-system-x86' package",
      });
    }
    const version =
      (await run(qemu, ['--version'], { signal: ctx.signal })).stdout.match(/version ([\d.]+)/)?.[1] ??
      'unknown';
    const forced = inputs.string('accelerator');
    let accelerator: 'kvm' | 'tcg';
    let reason = '';
    let seconds: number | undefined;
    if (forced === 'tcg') {
      accelerator = 'tcg';
      reason = 'tcg requested';
    } else {
      ctx.log.info('probing KVM with a 512-byte guest');
      const d = await probeAccelerator({
        qemu,
        timeoutMs: inputs.number('probe-timeout') * 1000,
        signal: ctx.signal,
      });
      if (forced === 'kvm' && d.accelerator !== 'kvm') {
        throw new OrbError('environment', `KVM was requested but cannot be used: ${d.reason}`);
      }
      accelerator = d.accelerator;
      reason = d.reason;
      seconds = (accelerator === 'kvm' ? d.kvm : d.tcg)?.seconds;
      if (d.kvm) ctx.log.info(`KVM probe: ${d.kvm.ok ? 'ok' : 'failed'} in ${d.kvm.seconds.toFixed(2)} s`);
      if (d.tcg) ctx.log.info(`TCG probe: ${d.tcg.ok ? 'ok' : 'failed'} in ${d.tcg.seconds.toFixed(2)} s`);
    }
    if (accelerator === 'tcg') {
      ctx.log.warn(
        `using software emulation (TCG): ${reason}. Builds and boots will be many times slower than with KVM.`,
      );
    }
    const uefi = findUefi(arches[0]!, false);
    ctx.summary.heading('setup-qemu').table(
      ['', ''],
      [
        ['accelerator', accelerator],
        ['reason', reason || 'KVM works'],
        ['qemu', version],
        ['UEFI firmware', uefi?.code ?? 'not found'],
      ],
    );
    return {
      accelerator,
      'kvm-reason': reason,
      'qemu-version': version,
      'ovmf-code': uefi?.code ?? '',
      'ovmf-vars': uefi?.vars ?? '',
      'probe-seconds': seconds === undefined ? '' : seconds.toFixed(2),
    };
  },
});
