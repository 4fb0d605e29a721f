import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { trackPath } from '../core/cleanup.js';
import { basename, join, relative } from 'node:path';
import type { Summary } from '../core/command.js';
import { redact, type Logger } from '../core/log.js';
import type { ProgressFactory } from '../core/progress.js';
import {
  newManifest,
  stageManifestPath,
  writeManifest,
  type BuildInfo,
} from '../core/stage-manifest-file.js';
import { sha256File } from '../core/fsutil.js';
import { probeAccelerator } from '../qemu/probe.js';
import { which } from '../core/proc.js';
import type { Arch, Firmware } from '../qemu/firmware.js';
import { dockurDiskType, writeDockurBundle } from '../dockur/bundle.js';
import { flatten, imgInfo } from '../qemu/img.js';

/** What every build (Windows or Linux) is given besides its OS-specific inputs. */
export interface BuildEnv {
  log: Logger;
  progress: ProgressFactory;
  signal?: AbortSignal;
  summary?: Summary;
}

export interface CommonBuildOptions {
  outDir: string;
  /** base name of the output disk: <name>.qcow2 */
  name: string;
  arch: Arch;
  firmware: Firmware;
  accel: 'kvm' | 'tcg';
  memoryBytes: number;
  cpus: number;
  diskBytes: number;
  timeoutMs: number;
  stallMs: number;
  screenshotEveryMs: number;
  outputFormat: 'qcow2' | 'raw';
  cacheDir: string;
  /** keep the installed base in the cache dir (and the Actions cache in Actions) */
  cache: boolean;
  actionsCache: boolean;
  /** false: forget the state file and start from the beginning */
  resume: boolean;
  dockur?: { format: 'raw' | 'qcow2' };
  adminUser: string;
  adminPassword: string;
  scripts: string[];
  sysprep: boolean;
}

export interface BuildResult {
  disk: string;
  manifest: string;
  format: 'qcow2' | 'raw';
  buildLog: string;
  screenshotsDir: string;
  latestScreenshot?: string;
  provisionLog?: string;
  /** stages that ran in this invocation / that were taken from an earlier run or the cache */
  ran: string[];
  reused: string[];
  cacheHit: boolean;
  dockurDir?: string;
  seconds: number;
  generalized: boolean;
}

/** Build log: every log line also goes (redacted) to <out>/build.log. */
export class TeeLogger implements Logger {
  private readonly stream: WriteStream;
  constructor(
    private readonly inner: Logger,
    readonly path: string,
  ) {
    this.stream = createWriteStream(path, { flags: 'a' });
  }
  private put(level: string, msg: string): void {
    this.stream.write(`${new Date().toISOString()} ${level} ${redact(msg)}\n`);
  }
  info(msg: string): void {
    this.put('info', msg);
    this.inner.info(msg);
  }
  warn(msg: string): void {
    this.put('warn', msg);
    this.inner.warn(msg);
  }
  error(msg: string): void {
    this.put('error', msg);
    this.inner.error(msg);
  }
  debug(msg: string): void {
    this.put('debug', msg);
    this.inner.debug(msg);
  }
  close(): Promise<void> {
    return new Promise((resolve) => this.stream.end(resolve));
  }
}

export async function resolveAccelerator(requested: string, arch: Arch, log: Logger): Promise<'kvm' | 'tcg'> {
  if (requested === 'tcg') return 'tcg';
  const hostArch = process.arch === 'x64' ? 'x86_64' : process.arch === 'arm64' ? 'aarch64' : process.arch;
  if (hostArch !== arch) {
    if (requested === 'kvm') log.warn(`KVM cannot run ${arch} guests on this ${hostArch} host; using TCG`);
    return 'tcg';
  }
  const qemu = which(`qemu-system-${arch}`);
  if (!qemu) return 'tcg';
  const d = await probeAccelerator({ qemu });
  if (d.accelerator === 'tcg') {
    log.warn(
      `using software emulation (TCG): ${d.reason}. An unattended Windows install takes hours this way.`,
    );
  }
  return d.accelerator;
}

export interface FinishInput {
  o: CommonBuildOptions;
  env: BuildEnv;
  /** the top layer of the finished chain */
  top: string;
  build: BuildInfo;
  uefiCode?: string;
  uefiVars?: string;
  diskInterface: 'virtio' | 'sata' | 'ide' | 'nvme';
}

/** Flattens the layer chain into the output disk, writes the manifest and the dockur bundle. */
export async function finishOutputs(
  f: FinishInput,
): Promise<{ disk: string; manifest: string; dockurDir?: string }> {
  const { o, env } = f;
  const disk = join(o.outDir, `${o.name}.${o.outputFormat === 'raw' ? 'img' : 'qcow2'}`);
  env.log.info(`writing ${disk} (${o.outputFormat}, layers flattened, free space left out)`);
  await flatten(f.top, disk, o.outputFormat, env.progress(`write ${basename(disk)}`, 100), env.signal);
  const info = await imgInfo(disk, env.signal);
  const p = env.progress(`sha256 ${basename(disk)}`, (await stat(disk)).size);
  const sha256 = await sha256File(disk, (n) => p.add(n), env.signal);
  p.done();
  const manifestPath = stageManifestPath(disk);
  await writeManifest(
    manifestPath,
    newManifest(
      'build',
      {
        path: relative(o.outDir, disk),
        format: o.outputFormat,
        virtualSize: info.virtualSize,
        fileSize: (await stat(disk)).size,
        sha256,
      },
      { build: f.build },
    ),
  );
  let dockurDir: string | undefined;
  if (o.dockur) {
    dockurDir = join(o.outDir, 'dockur');
    const b = await writeDockurBundle({
      disk,
      outDir: dockurDir,
      format: o.dockur.format,
      firmware: o.firmware,
      uefiCode: f.uefiCode,
      uefiVars: f.uefiVars,
      diskType: dockurDiskType(f.diskInterface),
      progress: env.progress('dockur bundle', 100),
      signal: env.signal,
    });
    env.log.info(`dockur/windows storage folder: ${dockurDir} (${b.files.join(', ')}); mount it as /storage`);
  }
  return { disk, manifest: manifestPath, dockurDir };
}

export async function prepareOutDir(
  outDir: string,
): Promise<{ shots: string; logs: string; layers: string; firmware: string }> {
  const dirs = {
    shots: join(outDir, 'screenshots'),
    logs: join(outDir, 'logs'),
    layers: join(outDir, 'layers'),
    firmware: join(outDir, 'firmware'),
  };
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
  return dirs;
}

/**
 * A private (0700) temporary directory for one boot's media: answer files and stage media hold a
 * password. Removed by the caller's finally, and by the cleanup registry on Ctrl-C or a cancelled
 * job, so it is never left behind in the build directory or /tmp.
 */
export async function mediaDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  tracked.set(dir, trackPath(dir));
  return dir;
}
const tracked = new Map<string, { keep(): void }>();

/** Removes a stage's media whatever happened. */
export async function removeMedia(...paths: string[]): Promise<void> {
  for (const p of paths) {
    await rm(p, { recursive: true, force: true });
    tracked.get(p)?.keep();
    tracked.delete(p);
  }
}
