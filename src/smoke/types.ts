import type { Logger } from '../core/log.js';
import type { Accelerator, Arch, DiskInterface, Firmware, Vm } from '../qemu/runner.js';
import type { RdpProbeResult } from '../rdp/probe.js';
import type { RdpProtocol } from '../rdp/x224.js';
import type { DiskFacts } from './disk.js';
import type { Rect } from './screen.js';

export interface SmokeOptions {
  /** a disk image file (raw, qcow2, ...); never written */
  image: string;
  /** files the image may name (backing, data file, extents), given to the guest as part of the disk */
  allowExternalFiles?: string[];
  /** stage manifest; default `<image>.orb.json` when it exists */
  manifest?: string;
  accelerator: Accelerator;
  /** 'auto': the manifest's, else UEFI for GPT disks and BIOS otherwise */
  firmware?: Firmware | 'auto';
  /** 'auto': the manifest's (false without one) */
  tpm?: boolean | 'auto';
  /** UEFI variable store to start from (copied, never modified) */
  uefiVars?: string;
  arch?: Arch;
  /** default from the manifest's OS: windows 4096, linux 1024, test 256, else 2048 */
  memoryMiB?: number;
  cpus?: number;
  /** default sata (AHCI: every OS boots from it without extra drivers) */
  diskInterface?: DiskInterface;
  /** NIC model, default the runner's (e1000: Windows has its driver built in) */
  nic?: string;
  /** guest cannot reach the host's networks (slirp restrict=on); default true */
  isolate?: boolean;
  /** time for the boot checks (RDP, ports, serial pattern) from the start of the VM */
  timeoutMs: number;
  rdp?: { enabled: boolean; guestPort?: number; expectProtocols?: RdpProtocol[] };
  /** more guest TCP ports that must accept connections */
  ports?: number[];
  serialPattern?: RegExp;
  screen?: {
    /** require a screen that is not black and has stopped changing */
    settle?: boolean;
    /** PNG to match */
    reference?: string;
    /** fraction of differing unmasked pixels allowed, default 0.02 */
    threshold?: number;
    masks?: Rect[];
    /** time for the screen checks after the boot checks passed, default 60 s */
    timeoutMs?: number;
  };
  /** default max(5 s, timeout / 60) */
  screenshotIntervalMs?: number;
  /** where screenshots, logs and result.json go (created; kept) */
  evidenceDir: string;
  /** ACPI power-off grace before QEMU is stopped hard, default 20 s */
  shutdownGraceMs?: number;
  qemuBinary?: string;
  /**
   * The disk, already inspected (a lazily served export has no local file to inspect); the
   * caller vouches for it. `image` is then only a name.
   */
  disk?: DiskFacts;
  /** called when RDP first answered (the boot is over: a boot profile stops recording) */
  onRdpReady?: () => void;
  /** called once QEMU runs (tests inspect the forwards; callers can log the pid) */
  onVmStarted?: (vm: Vm) => void;
  signal?: AbortSignal;
  log: Logger;
}

export interface CheckResult {
  name: string;
  status: 'passed' | 'failed' | 'skipped';
  /** seconds from VM start until it passed (or gave up) */
  seconds?: number;
  detail: string;
}

export interface SmokeResult {
  passed: boolean;
  /** one message per failed check */
  failures: string[];
  checks: CheckResult[];
  disk: DiskFacts;
  imageDescription: string;
  arch: Arch;
  firmware: Firmware;
  tpm: boolean;
  accelerator: Accelerator;
  memoryMiB: number;
  rdpEnabled: boolean;
  rdp?: RdpProbeResult;
  /** host port the guest's RDP port was forwarded to (127.0.0.1) */
  rdpHostPort?: number;
  timings: {
    /** seconds from VM start to the first serial line */
    firstSerial?: number;
    /** seconds from VM start to a successful RDP probe */
    rdpReady?: number;
    /** seconds from the start of smokeTest to the launch of QEMU (inspection, overlay) */
    launched?: number;
    total: number;
  };
  /** difference to the reference screenshot (best seen), 0..1 */
  referenceDifference?: number;
  screenshots: string[];
  serialLog: string;
  qemuLog: string;
  evidenceDir: string;
  /** QEMU's process id (gone by the time the result is returned) */
  qemuPid?: number;
  /** how the VM was stopped */
  shutdown?: string;
}
