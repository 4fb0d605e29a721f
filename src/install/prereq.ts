import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { freeBytes } from '../core/fsutil.js';
import { run, which } from '../core/proc.js';
import { formatBytes } from '../core/progress.js';

/**
 * What a client machine needs before `orb install` downloads 50 GB: each check says what is
 * wrong and the command that fixes it. Docker and KVM are needed to run Windows, not to prepare
 * the files, so `--prepare-only` turns their failures into warnings.
 */
export interface Check {
  name: 'docker' | 'docker-compose' | 'kvm' | 'qemu-img' | 'disk';
  ok: boolean;
  detail: string;
  fix?: string;
  /** false: only needed to run Windows (a warning with --prepare-only) */
  forFiles: boolean;
}

async function probe(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await run(cmd, args, { timeoutMs: 20_000 });
    return { ok: r.code === 0, out: (r.stdout + r.stderr).trim() };
  } catch (err) {
    return { ok: false, out: (err as Error).message };
  }
}

export async function checkDocker(): Promise<Check[]> {
  const docker = which('docker');
  if (!docker) {
    return [
      {
        name: 'docker',
        ok: false,
        forFiles: false,
        detail: 'docker is not installed',
        fix: 'install Docker Engine (https://docs.docker.com/engine/install/; Debian/Ubuntu: sudo apt-get install docker.io docker-compose-plugin)',
      },
    ];
  }
  const checks: Check[] = [];
  const info = await probe(docker, ['info', '--format', '{{.ServerVersion}}']);
  if (info.ok)
    checks.push({
      name: 'docker',
      ok: true,
      forFiles: false,
      detail: `Docker Engine ${info.out.split('\n')[0]}`,
    });
  else if (/permission denied/i.test(info.out)) {
    checks.push({
      name: 'docker',
      ok: false,
      forFiles: false,
      detail: 'no permission to use the Docker daemon',
      fix: 'sudo usermod -aG docker "$USER", then log out and in again (or run orb install with sudo)',
    });
  } else {
    checks.push({
      name: 'docker',
      ok: false,
      forFiles: false,
      detail: `the Docker daemon does not answer (${info.out.split('\n')[0]?.slice(0, 160)})`,
      fix: 'start it: sudo systemctl enable --now docker',
    });
  }
  const compose = await probe(docker, ['compose', 'version', '--short']);
  if (compose.ok)
    checks.push({
      name: 'docker-compose',
      ok: true,
      forFiles: false,
      detail: `docker compose ${compose.out}`,
    });
  else if (which('docker-compose'))
    checks.push({ name: 'docker-compose', ok: true, forFiles: false, detail: 'docker-compose (v1)' });
  else {
    checks.push({
      name: 'docker-compose',
      ok: false,
      forFiles: false,
      detail: 'the docker compose plugin is missing',
      fix: 'sudo apt-get install docker-compose-plugin (or see https://docs.docker.com/compose/install/)',
    });
  }
  return checks;
}

export async function checkKvm(device = '/dev/kvm'): Promise<Check> {
  const st = await stat(device).catch(() => undefined);
  if (!st) {
    return {
      name: 'kvm',
      ok: false,
      forFiles: false,
      detail: `${device} does not exist: no hardware virtualization`,
      fix: 'enable VT-x/AMD-V in the firmware setup and load the module (sudo modprobe kvm_intel or kvm_amd); on a cloud VM pick an instance type with nested virtualization',
    };
  }
  try {
    await access(device, constants.R_OK | constants.W_OK);
    return { name: 'kvm', ok: true, forFiles: false, detail: `${device} is usable` };
  } catch {
    return {
      name: 'kvm',
      ok: false,
      forFiles: false,
      detail: `no read/write access to ${device}`,
      fix: 'sudo usermod -aG kvm "$USER", then log out and in again (rootful Docker passes the device anyway; rootless Docker needs this)',
    };
  }
}

export function checkQemuImg(): Check {
  const p = which('qemu-img');
  return p
    ? { name: 'qemu-img', ok: true, forFiles: true, detail: p }
    : {
        name: 'qemu-img',
        ok: false,
        forFiles: true,
        detail: 'qemu-img is not installed (needed for the per-client overlay)',
        fix: 'sudo apt-get install qemu-utils',
      };
}

export async function checkDisk(dir: string, needed: number, what: string): Promise<Check> {
  const free = await freeBytes(dir);
  if (free >= needed)
    return {
      name: 'disk',
      ok: true,
      forFiles: true,
      detail: `${formatBytes(free)} free, ${what} needs about ${formatBytes(needed)}`,
    };
  return {
    name: 'disk',
    ok: false,
    forFiles: true,
    detail: `${formatBytes(free)} free in ${dir}, ${what} needs about ${formatBytes(needed)}`,
    fix: `free ${formatBytes(needed - free)} or install to a larger disk (--dir); with --update, --no-keep-previous drops the old version once the new one is in place`,
  };
}

export function describeChecks(checks: readonly Check[]): string {
  return checks
    .map(
      (c) =>
        `  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}${c.ok || !c.fix ? '' : `\n         fix: ${c.fix}`}`,
    )
    .join('\n');
}
