/**
 * The VM runner: starts one headless QEMU (x86_64 q35 or aarch64 virt) with a QMP socket, disks,
 * firmware, optional swtpm TPM 2.0, user-mode networking with loopback-only host forwards and a
 * captured serial console, and stops it gracefully or by force. Every process is started with
 * spawnTracked (pdeathsig + cleanup registry) so nothing outlives us, not even after SIGKILL.
 */
import { type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { access, copyFile, mkdir, mkdtemp, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { OrbError } from '../core/errors.js';
import { requireTool, spawnTracked } from '../core/proc.js';
import { trackPath } from '../core/cleanup.js';
import { buildQemuArgs, parseUsernet, type DiskSpec, type NetworkOptions } from './args.js';
import { requireUefi, type Arch, type Firmware } from './firmware.js';
import { QmpClient } from './qmp.js';
import { encodePng, parsePpm, screenStats, type ScreenStats } from './png.js';
import { SerialConsole } from './serial.js';
import { startSwtpm, type Swtpm } from './swtpm.js';
import type { PowerOffResult, ResolvedForward, Vm, VmExit, VmOptions } from './vm-types.js';

export type { Arch, Firmware } from './firmware.js';
export type { ScreenStats } from './png.js';
export type { Accelerator, DiskInterface, DiskSpec, NetworkOptions, PortForward } from './args.js';
export type { PowerOffResult, ResolvedForward, TpmOptions, Vm, VmExit, VmOptions } from './vm-types.js';
export { QmpClient, type QmpEvent } from './qmp.js';

/**
 * Starts QEMU and resolves once QMP is connected (the guest is running). Throws an OrbError with
 * QEMU's stderr when QEMU refuses the configuration or dies during start-up.
 */
export async function startVm(options: VmOptions): Promise<Vm> {
  const o = options;
  const arch: Arch = o.arch ?? 'x86_64';
  if (o.signal?.aborted) throw new OrbError('interrupted', 'cancelled before the VM started');
  const firmware: Firmware = o.firmware ?? (arch === 'x86_64' ? 'bios' : 'uefi');
  const bootFrom = o.bootFrom ?? 'disk';
  const cdroms = (o.cdroms ?? []).map((c) => resolve(c));
  if (bootFrom === 'cdrom' && cdroms.length === 0)
    throw new OrbError('usage', "bootFrom 'cdrom' needs at least one ISO in cdroms");
  const memoryMiB = o.memoryMiB ?? 256;
  const cpus = o.cpus ?? 1;
  if (!Number.isInteger(memoryMiB) || memoryMiB < 16)
    throw new OrbError('usage', `memory ${memoryMiB} MiB is too small`, { hint: 'give at least 16 MiB' });
  if (!Number.isInteger(cpus) || cpus < 1) throw new OrbError('usage', `invalid cpu count ${cpus}`);
  const disks: DiskSpec[] = (o.disks ?? []).map((d) => ({ ...d, path: resolve(d.path) }));
  for (const f of [
    ...disks.map((d) => d.path),
    ...cdroms,
    ...(o.kernel ? [o.kernel] : []),
    ...(o.initrd ? [o.initrd] : []),
    ...(o.uefiVars ? [o.uefiVars] : []),
  ]) {
    await access(f).catch(() => {
      throw new OrbError('input', `VM image or file not found: ${f}`, {
        hint: 'check the path (relative paths are resolved against the current directory)',
      });
    });
  }
  const qemuBin =
    o.qemuBinary ??
    requireTool(`qemu-system-${arch}`, arch === 'x86_64' ? 'qemu-system-x86' : 'qemu-system-arm');
  const name = (o.name ?? 'orb-vm').replace(/[^A-Za-z0-9._-]/g, '_');

  // Work dir: the caller's (kept: evidence) or a private temporary one.
  const ownsDir = !o.workDir;
  const workDir = o.workDir ? resolve(o.workDir) : await mkdtemp(join(tmpdir(), `orb-vm-${name}-`));
  if (o.workDir) await mkdir(workDir, { recursive: true });
  const removeDir = ownsDir && !o.keepWorkDir;
  const dirTrack = removeDir ? trackPath(workDir) : undefined;
  // unix socket paths are limited to 107 bytes: fall back to a short private dir under /tmp.
  let sockDir = workDir;
  let ownsSockDir = false;
  if (join(workDir, 'swtpm.sock').length > 100) {
    sockDir = await mkdtemp('/tmp/orb-s-');
    ownsSockDir = true;
    trackPath(sockDir);
  }
  const qmpSocketPath = join(sockDir, 'qmp.sock');
  await rm(qmpSocketPath, { force: true });

  let tpm: Swtpm | undefined;
  let child: ChildProcess | undefined;
  const cleanupDirs = async (): Promise<void> => {
    if (removeDir) {
      await rm(workDir, { recursive: true, force: true });
      dirTrack?.keep();
    }
    if (ownsSockDir) await rm(sockDir, { recursive: true, force: true });
  };
  try {
    let uefi;
    let uefiVarsPath: string | undefined;
    if (firmware !== 'bios') {
      uefi = requireUefi(arch, firmware === 'uefi-secure');
      if (o.uefiVars) uefiVarsPath = resolve(o.uefiVars);
      else {
        // A private writable copy: the template is shared and read-only, and firmware writes
        // boot entries (Windows setup does) that must not leak between VMs.
        uefiVarsPath = join(workDir, 'efivars.fd');
        await copyFile(uefi.vars, uefiVarsPath);
      }
    }
    if (o.tpm) {
      const stateDir =
        typeof o.tpm === 'object' && o.tpm.stateDir ? resolve(o.tpm.stateDir) : join(workDir, 'tpm');
      tpm = await startSwtpm({
        stateDir,
        socketPath: join(sockDir, 'swtpm.sock'),
        logPath: join(workDir, 'swtpm.log'),
      });
    }
    const args = buildQemuArgs({
      arch,
      accel: o.accel ?? 'tcg',
      memoryMiB,
      cpus,
      ...(o.cpu ? { cpu: o.cpu } : {}),
      name,
      disks,
      cdroms,
      bootFrom,
      ...(o.kernel ? { kernel: resolve(o.kernel) } : {}),
      ...(o.initrd ? { initrd: resolve(o.initrd) } : {}),
      ...(o.append !== undefined ? { append: o.append } : {}),
      firmware,
      ...(uefi ? { uefi } : {}),
      ...(uefiVarsPath ? { uefiVarsPath } : {}),
      ...(tpm ? { tpmSocket: tpm.socketPath } : {}),
      ...(o.network ? { network: o.network } : {}),
      qmpSocket: qmpSocketPath,
      vga: o.vga ?? (arch === 'x86_64' ? 'VGA' : 'virtio-gpu-pci'),
      noReboot: o.noReboot ?? false,
      paused: true,
      extraArgs: o.extraArgs ?? [],
    });
    const qemuLogPath = join(workDir, 'qemu.log');
    const logFd = openSync(qemuLogPath, 'w');
    try {
      child = spawnTracked(qemuBin, args, { stdio: ['ignore', 'pipe', logFd] });
    } finally {
      closeSync(logFd);
    }
    const vm = new RunningVm({
      name,
      arch,
      child,
      tpm,
      workDir,
      qemuLogPath,
      qmpSocketPath,
      args,
      onSerialLine: o.onSerialLine,
      cleanupDirs,
    });
    await vm.init(o.network || undefined, o.startTimeoutMs ?? 30_000);
    if (o.signal) {
      const onAbort = (): void => void vm.kill();
      o.signal.addEventListener('abort', onAbort, { once: true });
      void vm.exitedPromise.finally(() => o.signal?.removeEventListener('abort', onAbort));
    }
    return vm;
  } catch (err) {
    child?.kill('SIGKILL');
    await tpm?.stop(500);
    await cleanupDirs();
    throw err;
  }
}

interface RunningInit {
  name: string;
  arch: Arch;
  child: ChildProcess;
  tpm: Swtpm | undefined;
  workDir: string;
  qemuLogPath: string;
  qmpSocketPath: string;
  args: string[];
  onSerialLine: ((line: string) => void) | undefined;
  cleanupDirs: () => Promise<void>;
}

class RunningVm implements Vm {
  readonly name: string;
  readonly arch: Arch;
  readonly pid: number;
  readonly workDir: string;
  readonly serialLogPath: string;
  readonly qemuLogPath: string;
  readonly qmpSocketPath: string;
  readonly args: readonly string[];
  forwards: ResolvedForward[] = [];
  ports: Record<number, number> = {};
  private qmpClient: QmpClient | undefined;
  private readonly child: ChildProcess;
  private readonly tpm: Swtpm | undefined;
  private readonly cleanupDirs: () => Promise<void>;
  private readonly serial: SerialConsole;
  private exitInfo: VmExit | undefined;
  private lastShutdown: { reason?: string; guest?: boolean } | undefined;
  private readonly exited: Promise<VmExit>;
  get exitedPromise(): Promise<VmExit> {
    return this.exited;
  }
  private disposed = false;
  private shots = 0;

  constructor(i: RunningInit) {
    this.name = i.name;
    this.arch = i.arch;
    this.child = i.child;
    this.pid = i.child.pid ?? -1;
    this.tpm = i.tpm;
    this.workDir = i.workDir;
    this.qemuLogPath = i.qemuLogPath;
    this.qmpSocketPath = i.qmpSocketPath;
    this.args = i.args;
    this.cleanupDirs = i.cleanupDirs;
    this.serialLogPath = join(i.workDir, 'serial.log');
    this.serial = new SerialConsole(this.serialLogPath, i.onSerialLine);
    i.child.stdout!.on('data', (d: Buffer) => this.serial.push(d));
    this.exited = new Promise<VmExit>((resolveExit) => {
      let spawnError: string | undefined;
      i.child.once('error', (e) => (spawnError = e.message));
      i.child.once('close', (code, signal) => {
        const exit: VmExit = {
          code: spawnError ? -1 : code,
          signal,
          guestInitiated: this.lastShutdown?.guest === true,
          ...(this.lastShutdown?.reason ? { shutdownReason: this.lastShutdown.reason } : {}),
        };
        this.exitInfo = exit;
        this.qmpClient?.close();
        void (this.tpm?.stop(1000) ?? Promise.resolve())
          .then(() => this.serial.end())
          .then(() => resolveExit(exit));
      });
    });
  }

  get qmp(): QmpClient {
    if (!this.qmpClient) throw new OrbError('internal', 'QMP is not connected yet');
    return this.qmpClient;
  }
  get tpmPid(): number | undefined {
    return this.tpm?.pid;
  }
  get exit(): VmExit | undefined {
    return this.exitInfo;
  }

  /** Connects QMP, learns the forwarded ports, then lets the (paused) guest run. */
  async init(network: NetworkOptions | undefined, timeoutMs: number): Promise<void> {
    try {
      this.qmpClient = await QmpClient.connect(this.qmpSocketPath, {
        timeoutMs,
        isDead: () =>
          this.exitInfo || this.child.exitCode !== null || this.child.signalCode !== null
            ? 'exited'
            : undefined,
      });
      this.qmpClient.on(
        'SHUTDOWN',
        (ev: { data?: { reason?: string; guest?: boolean } }) => (this.lastShutdown = ev.data ?? {}),
      );
      if (network?.forwards?.length) await this.resolveForwards(network);
      await this.qmpClient.execute('cont');
    } catch (err) {
      this.child.kill('SIGKILL');
      await this.exited;
      const log = (await readFile(this.qemuLogPath, 'utf8').catch(() => '')).trim();
      const tail = log.split('\n').slice(-6).join('\n');
      const hint = /host forwarding rule/.test(log)
        ? 'a requested host port is already in use on 127.0.0.1: leave hostPort unset and orb picks a free one'
        : /kvm/i.test(log)
          ? "KVM is not usable here: run 'orb setup-qemu' to probe and use accel 'tcg' when it says so"
          : `QEMU command: ${this.args.join(' ')}`;
      throw new OrbError('environment', `QEMU failed to start: ${tail || (err as Error).message}`, {
        hint,
        cause: err,
      });
    }
  }

  private async resolveForwards(network: NetworkOptions): Promise<void> {
    const bound = parseUsernet(await this.qmp.hmp('info usernet'));
    const used = new Set<number>();
    for (const f of network.forwards ?? []) {
      const protocol = f.protocol ?? 'tcp';
      const idx = bound.findIndex(
        (b, j) =>
          !used.has(j) &&
          b.protocol === protocol &&
          b.guestPort === f.guestPort &&
          (!f.hostPort || b.hostPort === f.hostPort),
      );
      if (idx < 0)
        throw new OrbError(
          'internal',
          `QEMU did not report the host port for guest ${protocol} port ${f.guestPort}`,
        );
      used.add(idx);
      const b = bound[idx]!;
      if (b.hostAddress !== '127.0.0.1')
        throw new OrbError('internal', `forward bound to ${b.hostAddress}, expected 127.0.0.1 only`);
      this.forwards.push({
        protocol,
        guestPort: f.guestPort,
        hostAddress: '127.0.0.1',
        hostPort: b.hostPort,
      });
      if (protocol === 'tcp') this.ports[f.guestPort] = b.hostPort;
    }
  }

  serialText(): string {
    return this.serial.textSoFar();
  }

  serialLines(): AsyncIterable<string> {
    return this.serial.iterate();
  }

  waitForSerial(pattern: string | RegExp, timeoutMs: number): Promise<string> {
    return this.serial.waitFor(pattern, timeoutMs);
  }

  async screenshot(pngPath: string): Promise<ScreenStats> {
    const ppm = join(this.workDir, `screendump-${this.shots++}.ppm`);
    try {
      await this.qmp.execute('screendump', { filename: ppm }, { timeoutMs: 30_000 });
      const img = parsePpm(await readFile(ppm));
      const out = isAbsolute(pngPath) ? pngPath : resolve(pngPath);
      const partial = `${out}.partial`;
      await writeFile(partial, encodePng(img));
      await rename(partial, out);
      return screenStats(img);
    } catch (err) {
      if (err instanceof OrbError)
        throw new OrbError(err.kind, `screenshot failed: ${err.message}`, {
          hint: 'the VM needs a display device (vga option) and must be running',
        });
      throw err;
    } finally {
      await unlink(ppm).catch(() => undefined);
    }
  }

  async sendKey(keys: string | string[], holdMs = 100): Promise<void> {
    const list = Array.isArray(keys) ? keys : [keys];
    await this.qmp.execute('send-key', {
      keys: list.map((k) => ({ type: 'qcode', data: k })),
      'hold-time': holdMs,
    });
  }

  private async exitWithin(ms: number): Promise<VmExit | undefined> {
    if (this.exitInfo) return this.exited;
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.exited,
      new Promise<undefined>((res) => (t = setTimeout(() => res(undefined), ms))),
    ]);
    clearTimeout(t);
    return r;
  }

  async powerOff(opts: { graceMs?: number } = {}): Promise<PowerOffResult> {
    const t0 = Date.now();
    const ms = (): number => Date.now() - t0;
    if (this.exitInfo) return { ...(await this.exited), method: 'already-exited', ms: 0 };
    const graceMs = opts.graceMs ?? 60_000;
    await this.qmpClient
      ?.execute('system_powerdown', undefined, { timeoutMs: Math.min(5000, graceMs) })
      .catch(() => undefined);
    let ex = await this.exitWithin(Math.max(0, graceMs - ms()));
    if (ex) return { ...ex, method: 'acpi', ms: ms() };
    // A QEMU that does not even answer 'quit' (stopped, wedged in I/O) goes straight to SIGKILL.
    const answered = await (
      this.qmpClient?.execute('quit', undefined, { timeoutMs: 3000 }) ?? Promise.reject(new Error('no QMP'))
    )
      .then(() => true)
      .catch((e: unknown) => !(e instanceof OrbError && e.kind === 'timeout'));
    ex = answered ? await this.exitWithin(5000) : undefined;
    if (ex) return { ...ex, method: 'quit', ms: ms() };
    ex = await this.kill();
    return { ...ex, method: 'kill', ms: ms() };
  }

  async waitForExit(timeoutMs: number): Promise<VmExit> {
    const ex = await this.exitWithin(Math.min(timeoutMs, 2 ** 31 - 1));
    if (ex) return ex;
    throw new OrbError('timeout', `the VM did not exit within ${(timeoutMs / 1000).toFixed(0)} s`, {
      hint: `serial log: ${this.serialLogPath}`,
    });
  }

  async kill(): Promise<VmExit> {
    if (!this.exitInfo) this.child.kill('SIGKILL');
    return this.exited;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.kill();
    this.qmpClient?.close();
    await this.tpm?.stop(1000);
    await this.cleanupDirs();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}
