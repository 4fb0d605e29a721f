/**
 * The VM runner: starts one headless QEMU (x86_64 q35 or aarch64 virt) with a QMP socket, disks,
 * firmware, optional swtpm TPM 2.0, user-mode networking with loopback-only host forwards and a
 * captured serial console, and stops it gracefully or by force. Every process is started with
 * spawnTracked (pdeathsig + cleanup registry) so nothing outlives us, not even after SIGKILL.
 */
import type { Arch, Firmware } from './firmware.js';
import type { QmpClient } from './qmp.js';
import type { ScreenStats } from './png.js';

export type { Arch, Firmware } from './firmware.js';
export type { ScreenStats } from './png.js';

export type Accelerator = 'kvm' | 'tcg';
export type DiskInterface = 'virtio' | 'sata' | 'ide' | 'nvme';

export interface DiskSpec {
  /** image file */
  path: string;
  /** qemu-img format name; default 'raw' for .img/.raw, 'qcow2' for .qcow2, else 'raw' */
  format?: string;
  /** open read-only (the guest sees a write-protected disk) */
  readonly?: boolean;
  /** writes go to a throw-away overlay; the file stays untouched (QEMU snapshot=on) */
  snapshot?: boolean;
  /** default 'virtio'. On q35 'ide' and 'sata' both mean the built-in AHCI controller. */
  interface?: DiskInterface;
  /** pass guest TRIM/UNMAP through and turn zero writes into holes (keeps images sparse) */
  discard?: boolean;
}

export interface PortForward {
  guestPort: number;
  /** host port on 127.0.0.1; default: a free one picked by us */
  hostPort?: number;
  /** default 'tcp' */
  protocol?: 'tcp' | 'udp';
}

export interface ResolvedForward {
  protocol: 'tcp' | 'udp';
  guestPort: number;
  /** always 127.0.0.1: forwards are never exposed beyond loopback */
  hostAddress: '127.0.0.1';
  hostPort: number;
}

export interface NetworkOptions {
  /** host -> guest forwards, bound to 127.0.0.1 only */
  forwards?: PortForward[];
  /** NIC model; default 'e1000' (x86) / 'virtio-net-pci' (aarch64). e.g. 'e1000e', 'virtio-net-pci' */
  nic?: string;
  /** slirp restrict=on: the guest cannot reach the host's network, forwards still work */
  restrict?: boolean;
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

/**
 * Starts QEMU and resolves once QMP is connected (the guest is running). Throws an OrbError with
 * QEMU's stderr when QEMU refuses the configuration or dies during start-up.
 */
export async function startVm(options: VmOptions): Promise<Vm> {
  void options;
  throw new Error('startVm: implementation in progress');
}
