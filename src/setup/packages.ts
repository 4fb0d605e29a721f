import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { run, which } from '../core/proc.js';
import type { Arch } from '../qemu/firmware.js';

/** What the pipeline needs from the distribution (Debian/Ubuntu package names). */
export function requiredPackages(arches: readonly Arch[]): string[] {
  const pkgs = ['qemu-utils', 'swtpm', 'swtpm-tools', 'xorriso', 'zstd'];
  if (arches.includes('x86_64')) pkgs.unshift('qemu-system-x86', 'ovmf');
  if (arches.includes('aarch64')) pkgs.unshift('qemu-system-arm', 'qemu-efi-aarch64');
  return pkgs;
}

async function installed(pkg: string): Promise<boolean> {
  const res = await run('dpkg-query', ['-W', '-f=${Status}', pkg]).catch(() => undefined);
  return !!res && res.code === 0 && res.stdout.includes('install ok installed');
}

function asRoot(cmd: string, args: string[]): [string, string[]] {
  if (process.getuid?.() === 0) return [cmd, args];
  if (!which('sudo')) {
    throw new OrbError('environment', `installing packages needs root and sudo is not available`, {
      hint: `run as root, or install the packages yourself and pass --no-install`,
    });
  }
  return ['sudo', ['-n', cmd, ...args]];
}

export async function installPackages(
  pkgs: readonly string[],
  log: Logger,
  signal?: AbortSignal,
): Promise<string[]> {
  if (!which('dpkg-query') || !which('apt-get')) {
    throw new OrbError('environment', 'automatic install supports Debian and Ubuntu (apt-get) only', {
      hint: `install the equivalents of ${pkgs.join(', ')} yourself and pass --no-install`,
    });
  }
  const missing: string[] = [];
  for (const p of pkgs) if (!(await installed(p))) missing.push(p);
  if (missing.length === 0) {
    log.info(`all packages present: ${pkgs.join(', ')}`);
    return [];
  }
  log.info(`installing ${missing.join(', ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const [c1, a1] = asRoot('apt-get', ['update', '-qq']);
  await run(c1, a1, { env, signal, check: true });
  const [c2, a2] = asRoot('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing]);
  await run(c2, a2, { env, signal, check: true });
  return missing;
}

const UDEV_RULE = 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"\n';

/**
 * GitHub-hosted Linux runners ship /dev/kvm without access for the runner user; GitHub's own
 * guidance is a udev rule that opens it. Only applied on GitHub Actions, never on a user's host.
 */
export async function enableKvmOnGithubRunner(log: Logger): Promise<boolean> {
  if (process.env.GITHUB_ACTIONS !== 'true' || !existsSync('/dev/kvm') || !which('udevadm')) return false;
  const rule = '/etc/udev/rules.d/99-orb-kvm.rules';
  if (process.getuid?.() === 0) {
    await writeFile(rule, UDEV_RULE);
  } else {
    await run('sudo', ['-n', 'tee', rule], { input: UDEV_RULE, check: true });
  }
  const [c1, a1] = asRoot('udevadm', ['control', '--reload-rules']);
  await run(c1, a1, { check: true });
  const [c2, a2] = asRoot('udevadm', ['trigger', '--name-match=kvm']);
  await run(c2, a2, { check: true });
  log.info(`wrote ${rule} so this job can open /dev/kvm`);
  return true;
}
