import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { trackPath } from '../core/cleanup.js';
import { run } from '../core/proc.js';

/**
 * The probe guest, assembled from probe-guest.S beside this file (a test re-assembles it and
 * compares). 206 bytes of code and messages; padded to a 512-byte boot sector at run time.
 */
const PROBE_CODE_HEX =
  'fa31c08ed88ec08ed0bc007cfcbeae7cbaf803ac84c07403eeebf8b9204ee680e2fcbf0010b9001831c0f3abc7060010' +
  '0320c70600200330c706003083000f0116a87c0f20e06683c8200f22e066b8001000000f22d866b9800000c00f32660d' +
  '000100000f300f20c0660d010000800f22c0ea777c0800bec07c000066baf803ac84c07403eeebf866baf40030c0eef4' +
  'ebfd660f1f4400000000000000000000ffff0000009aaf000f00987c00004f52422d50524f42452d53544152540d0a00' +
  '4f52422d50524f42452d4f4b0d0a';

export function probeBootSector(): Buffer {
  const sector = Buffer.alloc(512);
  Buffer.from(PROBE_CODE_HEX, 'hex').copy(sector);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

export type Accelerator = 'kvm' | 'tcg';

export interface ProbeRun {
  ok: boolean;
  seconds: number;
  /** first marker seen: the guest started at all */
  started: boolean;
  error?: string;
}

/** Boots the probe sector under one accelerator, bounded by `timeoutMs`. */
export async function bootProbe(
  qemu: string,
  accel: Accelerator,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<ProbeRun> {
  const dir = await mkdtemp(join(tmpdir(), 'orb-probe-'));
  const tracked = trackPath(dir);
  try {
    const disk = join(dir, 'probe.img');
    const serial = join(dir, 'serial.log');
    await writeFile(disk, probeBootSector());
    const t0 = performance.now();
    let error: string | undefined;
    try {
      const res = await run(
        qemu,
        [
          '-accel',
          accel,
          '-display',
          'none',
          '-nodefaults',
          '-no-user-config',
          '-m',
          '16',
          '-chardev',
          `file,id=s0,path=${serial}`,
          '-serial',
          'chardev:s0',
          '-device',
          'isa-debug-exit,iobase=0xf4,iosize=0x04',
          '-drive',
          `file=${disk},format=raw,if=ide,snapshot=on`,
        ],
        { timeoutMs, ...(signal ? { signal } : {}) },
      );
      if (signal?.aborted) throw signal.reason;
      // isa-debug-exit makes QEMU exit with (value << 1) | 1 = 1: that is success here.
      if (res.code !== 1)
        error =
          res.stderr
            .trim()
            .split('\n')
            .filter((l) => !/warning:/i.test(l))
            .pop() ?? `exit ${res.code}`;
    } catch (err) {
      if (signal?.aborted) throw err;
      error = (err as Error).message;
    }
    const seconds = (performance.now() - t0) / 1000;
    const out = await readFile(serial, 'utf8').catch(() => '');
    const ok = out.includes('ORB-PROBE-OK');
    return {
      ok,
      seconds,
      started: out.includes('ORB-PROBE-START'),
      ...(ok ? {} : { error: error ?? 'no output' }),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
    tracked.keep();
  }
}

export interface AccelDecision {
  accelerator: Accelerator;
  /** why KVM is not used; empty when it is */
  reason: string;
  kvm?: ProbeRun;
  tcg?: ProbeRun;
}

export interface ProbeOptions {
  qemu: string;
  kvmDevice?: string;
  timeoutMs?: number;
  /** KVM slower than TCG by this factor (and over 1.5 s) counts as unusable */
  slowFactor?: number;
  /** aborting stops the probe guest and rejects with the signal's reason */
  signal?: AbortSignal;
}

/**
 * Why this process cannot use the KVM device, or undefined when it can open it read-write. Opens
 * the device as QEMU will (effective ids, as open(2) checks them) rather than asking access(2),
 * which answers for the real user.
 */
export async function kvmDeviceProblem(dev: string): Promise<string | undefined> {
  if (!(await stat(dev).catch(() => undefined))) {
    return `${dev} does not exist: this machine offers no hardware virtualization (enable VT-x/AMD-V, or nested virtualization for a VM runner)`;
  }
  try {
    await (await open(dev, 'r+')).close();
    return undefined;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') {
      return `no permission to open ${dev} as ${process.env.USER ?? 'this user'}: add the user to the 'kvm' group or install a udev rule giving ${dev} mode 0666 (setup-qemu does this on GitHub-hosted runners)`;
    }
    return `${dev} cannot be opened (${code ?? String(e)}): KVM is not usable here`;
  }
}

/**
 * Decides between KVM and TCG by evidence, not by the presence of /dev/kvm: nested
 * virtualization can expose a device whose guests crawl or never reach long mode.
 */
export async function probeAccelerator(opts: ProbeOptions): Promise<AccelDecision> {
  const dev = opts.kvmDevice ?? '/dev/kvm';
  const timeoutMs = opts.timeoutMs ?? 12_000;
  const tcg = await bootProbe(opts.qemu, 'tcg', Math.max(timeoutMs, 10_000), opts.signal);
  const problem = await kvmDeviceProblem(dev);
  if (problem) return { accelerator: 'tcg', tcg, reason: problem };
  const kvm = await bootProbe(opts.qemu, 'kvm', timeoutMs, opts.signal);
  if (!kvm.ok) {
    const where = kvm.started
      ? 'after real mode, before reaching 64-bit mode'
      : 'before the firmware ran the boot sector';
    const hung = kvm.error?.includes('did not finish') ?? false;
    return {
      accelerator: 'tcg',
      kvm,
      tcg,
      reason: hung
        ? `a KVM guest hung ${where} (no answer within ${(timeoutMs / 1000).toFixed(0)} s): typical of broken nested virtualization`
        : `KVM failed to start a guest: ${kvm.error ?? 'unknown error'}`,
    };
  }
  const factor = opts.slowFactor ?? 5;
  if (tcg.ok && kvm.seconds > 1.5 && kvm.seconds > factor * tcg.seconds) {
    return {
      accelerator: 'tcg',
      kvm,
      tcg,
      reason: `KVM works but is ${(kvm.seconds / tcg.seconds).toFixed(0)}x slower than software emulation (probe boot ${kvm.seconds.toFixed(2)} s under KVM, ${tcg.seconds.toFixed(2)} s under TCG): nested virtualization without hardware assist; full guests stall here`,
    };
  }
  return { accelerator: 'kvm', kvm, tcg, reason: '' };
}
