/**
 * Public types of the VM runner (src/qemu/runner.ts re-exports all of them: import from there).
 */
import type { Accelerator, DiskSpec, NetworkOptions } from './args.js';
import type { Arch, Firmware } from './firmware.js';
import type { ScreenStats } from './png.js';
import type { QmpClient } from './qmp.js';

export interface ResolvedForward {
  protocol: 'tcp' | 'udp';
  guestPort: number;
  /** always 127.0.0.1: forwards are never exposed beyond loopback */
  hostAddress: '127.0.0.1';
  hostPort: number;
}

export interface TpmOptions {
  /** swtpm state directory to reuse between runs; default a fresh one in the work dir */
  stateDir?: string;
}

export interface VmOptions {
  /** default 'x86_64' (q35); 'aarch64' uses the virt machine (and -cpu max under TCG) */
  arch?: Arch;
  /** default 'tcg'; use the probe's decision (src/qemu/probe.ts) */
  accel?: Accelerator;
  /** MiB, default 256 */
  memoryMiB?: number;
  /** default 1 */
  cpus?: number;
  /** -cpu model; default 'host' under KVM, 'max' under TCG */
  cpu?: string;
  disks?: DiskSpec[];
  /** ISO paths, attached as read-only CD-ROM drives in this order */
  cdroms?: string[];
  /** what to boot first; default 'disk' ('cdrom' needs at least one entry in cdroms) */
  bootFrom?: 'disk' | 'cdrom';
  /** direct kernel boot (handy for tests) */
  kernel?: string;
  initrd?: string;
  append?: string;
  /** default 'bios' on x86_64 and 'uefi' on aarch64 (which has no BIOS) */
  firmware?: Firmware;
  /** UEFI variable store to use (and modify) instead of a fresh copy of the template in the work dir */
  uefiVars?: string;
  /** attach a TPM 2.0 through swtpm (Windows 11 needs it): true or options */
  tpm?: boolean | TpmOptions;
  /** user-mode networking; false (the default) means no NIC at all */
  network?: false | NetworkOptions;
  /**
   * Directory for serial.log, qemu.log, QMP/TPM sockets, the VARS copy and screenshots. When the
   * caller gives one it is kept (evidence); otherwise a temporary one is made and removed by
   * dispose() unless keepWorkDir.
   */
  workDir?: string;
  keepWorkDir?: boolean;
  /** called for each complete line of serial output (without the line ending) */
  onSerialLine?: (line: string) => void;
  /** display device for screenshots; default 'VGA' (x86_64) / 'virtio-gpu-pci' (aarch64); false for none */
  vga?: string | false;
  /** QEMU exits instead of rebooting when the guest resets (-no-reboot) */
  noReboot?: boolean;
  /** shown in process listings and logs */
  name?: string;
  /** appended verbatim to the QEMU command line (an argument array, never a shell string) */
  extraArgs?: string[];
  /** QEMU binary; default qemu-system-<arch> from PATH */
  qemuBinary?: string;
  /** how long to wait for QEMU's QMP socket; default 30 s */
  startTimeoutMs?: number;
  /** aborting kills the VM */
  signal?: AbortSignal;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** reason of QEMU's SHUTDOWN event when one was seen: 'guest-shutdown', 'host-qmp-quit', 'guest-reset', ... */
  shutdownReason?: string;
  /** true when the guest itself powered off (SHUTDOWN with guest=true) */
  guestInitiated: boolean;
}

export interface PowerOffResult extends VmExit {
  /** what finally stopped it: the ACPI request, QMP quit, or SIGKILL */
  method: 'acpi' | 'quit' | 'kill' | 'already-exited';
  ms: number;
}

export interface Vm {
  readonly name: string;
  readonly arch: Arch;
  /** QEMU's pid (the real qemu-system process, not a wrapper) */
  readonly pid: number;
  /** swtpm's pid when a TPM is attached */
  readonly tpmPid: number | undefined;
  readonly workDir: string;
  readonly serialLogPath: string;
  /** QEMU's own stderr */
  readonly qemuLogPath: string;
  readonly qmpSocketPath: string;
  /** the full QEMU argument list (for logs and bug reports) */
  readonly args: readonly string[];
  readonly forwards: readonly ResolvedForward[];
  /** guestPort -> hostPort for TCP forwards */
  readonly ports: Readonly<Record<number, number>>;
  readonly qmp: QmpClient;
  /** set once QEMU has exited */
  readonly exit: VmExit | undefined;

  /** serial output seen so far (the last 4 MiB) */
  serialText(): string;
  /** each serial line from the start (replayed) and then live, ending when QEMU exits */
  serialLines(): AsyncIterable<string>;
  /**
   * Resolves with the first serial line matching (from the start of the output); rejects with an
   * OrbError 'timeout' after timeoutMs, or 'check' if QEMU exits first.
   */
  waitForSerial(pattern: string | RegExp, timeoutMs: number): Promise<string>;
  /** QMP screendump -> PNG at pngPath (our own encoder), with simple statistics of the picture */
  screenshot(pngPath: string): Promise<ScreenStats>;
  /**
   * Presses keys together (a chord) through QMP send-key, by QEMU qcode name: 'ret', 'spc', 'esc',
   * 'a', 'ctrl', 'alt', 'delete', 'f12', ... e.g. 'ret' for "Press any key to boot from CD".
   */
  sendKey(keys: string | string[], holdMs?: number): Promise<void>;
  /**
   * ACPI power button (system_powerdown), wait up to graceMs (default 60 s) for the guest to
   * power off, then QMP quit, then SIGKILL. Never throws for a VM that is already gone.
   */
  powerOff(opts?: { graceMs?: number }): Promise<PowerOffResult>;
  /** waits for QEMU to exit; rejects with an OrbError 'timeout' after timeoutMs (QEMU keeps running) */
  waitForExit(timeoutMs: number): Promise<VmExit>;
  /** SIGKILL QEMU (and swtpm) now and wait for the exit */
  kill(): Promise<VmExit>;
  /** kill if still running, stop swtpm, close QMP, remove a temporary work dir unless kept */
  dispose(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}
