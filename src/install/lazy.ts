import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { cp, mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { requireTool, run, spawnTracked } from '../core/proc.js';
import { parseLayoutRef } from '../oci/reference.js';

/**
 * `orb install --lazy` (issue 16): the client's qcow2 overlay is backed by an NBD export of the
 * image that `orb serve` fetches block by block, so Windows boots before the download finishes.
 *
 *   DIR/storage/orb-disk.sock      the NBD socket (`orb serve --socket`), beside dockur's disk
 *   DIR/images/base-<digest>.img   `orb serve --cache`: serve fills `<it>.partial` (+ `.state`)
 *                                  and renames it to this name once every block is verified, so
 *                                  "the file exists" is the fill-complete signal
 *   DIR/storage/data.qcow2         the overlay: backing = the socket until the fill completes,
 *                                  then `qemu-img rebase -u` onto the base (header only, no copy)
 *
 * The backing names the socket by its absolute host path; the compose file mounts the storage
 * folder at that same path in both containers, so one overlay works on the host and in dockur.
 */
export const SOCKET_NAME = 'orb-disk.sock';
export const EXPORT_NAME = 'disk';
/** seconds QEMU holds guest I/O while the server restarts (then the guest sees EIO) */
export const RECONNECT_DELAY = 60;
/** sun_path is 108 bytes with its NUL */
const MAX_SOCKET_PATH = 107;

/** The overlay's backing: a raw disk over NBD on a Unix socket (QEMU's json: pseudo-filename). */
export function nbdBacking(socket: string, exportName = EXPORT_NAME): string {
  return (
    'json:' +
    JSON.stringify({
      driver: 'raw',
      file: {
        driver: 'nbd',
        server: { type: 'unix', path: socket },
        export: exportName,
        'reconnect-delay': RECONNECT_DELAY,
      },
    })
  );
}

/** The socket a backing string names, when it is one of ours. */
export function nbdSocketOf(backing: string | undefined): string | undefined {
  if (!backing?.startsWith('json:')) return undefined;
  try {
    const j = JSON.parse(backing.slice(5)) as { file?: { driver?: string; server?: { path?: string } } };
    return j.file?.driver === 'nbd' ? j.file.server?.path : undefined;
  } catch {
    return undefined;
  }
}

export function checkSocketPath(socket: string): void {
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH)
    throw new OrbError('input', `the socket path ${socket} is longer than a Unix socket allows (107 bytes)`, {
      hint: 'install to a --dir with a shorter absolute path',
    });
}

const qemuImg = () => requireTool('qemu-img', 'qemu-utils');

/** A qcow2 overlay on the NBD export; `-u`: the server need not answer yet (the size is given). */
export async function createNbdOverlay(overlay: string, socket: string, size: number): Promise<void> {
  const r = await run(qemuImg(), [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-o',
    'lazy_refcounts=on',
    '-u',
    '-b',
    nbdBacking(socket),
    '-F',
    'raw',
    overlay,
    String(size),
  ]);
  if (r.code !== 0)
    throw new OrbError('environment', `qemu-img could not create the overlay ${overlay}: ${r.stderr.trim()}`);
}

/** serve renames the cache to its final name only when every block is local and verified */
export async function fillComplete(cache: string): Promise<boolean> {
  const st = await stat(cache).catch(() => undefined);
  if (!st?.isFile()) return false;
  return !(await stat(`${cache}.partial`).catch(() => undefined));
}

/**
 * Points the overlay at the local base without copying (`rebase -u` rewrites the header only:
 * right because the base holds exactly the bytes the export served). QEMU's image lock makes it
 * fail while a VM has the overlay open: then 'busy', and the server must keep serving.
 */
export async function rebaseOntoBase(overlay: string, base: string): Promise<'done' | 'busy'> {
  const r = await run(qemuImg(), [
    'rebase',
    '-u',
    '-f',
    'qcow2',
    '-b',
    relative(dirname(overlay), base),
    '-F',
    'raw',
    overlay,
  ]);
  if (r.code === 0) return 'done';
  if (/lock/i.test(r.stderr)) return 'busy';
  throw new OrbError('environment', `qemu-img could not rebase ${overlay}: ${r.stderr.trim()}`);
}

/** `node <orb>/bin/orb.js`: this orb, from lib/, src/ (tests) or the bundle (dist/orb/index.js). */
export function orbRoot(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..');
}
export function selfCommand(): string[] {
  return [process.execPath, join(orbRoot(), 'bin', 'orb.js')];
}

export interface ServeReady {
  socket: string;
  export: string;
  virtualSize: number;
  /** the orb2 content root of the disk (identity of the base once complete) */
  contentDigest?: string;
}
export interface ServeStop {
  bytesFetched: number;
  complete: boolean;
}

/**
 * `orb serve` as a supervised child: its `--json` lines on stdout (ready, then stop), its log on
 * stderr forwarded line by line. Secrets reach it in `env`, never in argv.
 */
export class ServeChild {
  private constructor(
    private readonly child: ChildProcess,
    readonly ready: ServeReady,
    private readonly ended: Promise<{ code: number | null; stop?: ServeStop }>,
  ) {}

  get exited(): Promise<{ code: number | null; stop?: ServeStop }> {
    return this.ended;
  }

  static async start(
    command: readonly string[],
    args: readonly string[],
    o: { env?: Record<string, string>; log: Logger; readyTimeoutMs?: number },
  ): Promise<ServeChild> {
    const [cmd, ...pre] = command;
    const child = spawnTracked(cmd!, [...pre, ...args], {
      env: { ...process.env, ...o.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    createInterface({ input: child.stderr! }).on('line', (l) => o.log.info(`orb serve: ${l}`));
    let onReady: (r: ServeReady) => void = () => undefined;
    const ready = new Promise<ServeReady>((res) => (onReady = res));
    let stop: ServeStop | undefined;
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let j: Record<string, unknown>;
      try {
        j = JSON.parse(line) as Record<string, unknown>;
      } catch {
        o.log.info(`orb serve: ${line}`);
        return;
      }
      // the stop line repeats the ready keys: `complete` tells them apart
      if ('complete' in j)
        stop = { bytesFetched: Number(j['bytes-fetched'] ?? 0), complete: j.complete === true };
      else if (typeof j['virtual-size'] === 'number')
        onReady({
          socket: String(j.socket ?? ''),
          export: String(j.export ?? EXPORT_NAME),
          virtualSize: j['virtual-size'],
          ...(typeof j['content-digest'] === 'string' ? { contentDigest: j['content-digest'] } : {}),
        });
    });
    const ended = new Promise<{ code: number | null; stop?: ServeStop }>((res) => {
      child.on('error', () => res({ code: -1 }));
      child.on('close', (code) => res({ code, ...(stop ? { stop } : {}) }));
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((res) => {
      timer = setTimeout(() => res('timeout'), o.readyTimeoutMs ?? 120_000);
    });
    const first = await Promise.race([ready, ended, timeout]);
    clearTimeout(timer);
    if (first === 'timeout' || !('virtualSize' in first)) {
      child.kill('SIGTERM');
      const end = await ended;
      throw new OrbError(
        'environment',
        first === 'timeout'
          ? 'orb serve did not become ready in time'
          : `orb serve stopped before it was ready (exit ${end.code})`,
        { hint: 'its log lines above say why' },
      );
    }
    return new ServeChild(child, first, ended);
  }

  /** SIGTERM, then its stop line (bytes fetched, complete). */
  async stop(): Promise<ServeStop | undefined> {
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 30_000);
    const end = await this.ended;
    clearTimeout(t);
    return end.stop;
  }
}

/**
 * The compose healthcheck: the socket answers with the NBD greeting ("NBDMAGIC", the first 8
 * bytes every newstyle server sends). Plain node (the sidecar image has no nbdinfo).
 */
export const HEALTH_SCRIPT =
  "const s=require('net').connect(process.argv[1]);let b=Buffer.alloc(0);" +
  'setTimeout(()=>process.exit(1),5000).unref();' +
  "s.on('data',d=>{b=Buffer.concat([b,d]);if(b.length>=8)process.exit(b.subarray(0,8).toString()==='NBDMAGIC'?0:1)});" +
  "s.on('error',()=>process.exit(1));s.on('end',()=>process.exit(1))";

export function healthcheckCommand(socket: string): string[] {
  return ['CMD', 'node', '-e', HEALTH_SCRIPT, socket];
}

export const layoutDir = (ref: string) => resolve(parseLayoutRef(ref).dir);

/** The reference pinned to the digest install resolved, where the scheme can name one. */
export function pinnedRef(ref: string, digest: string): string {
  if (ref.startsWith('oci://')) return `${ref.replace(/@sha256:[0-9a-f]{64}$/, '')}@${digest}`;
  if (ref.startsWith('oci-layout:')) return `oci-layout:${layoutDir(ref)}@${digest}`;
  return ref; // other stores name versions, not digests: install compares the digest on every run
}

/** The overlay's backing file name (no lock taken: a running VM may hold it). */
export async function qcow2Backing(path: string): Promise<string | undefined> {
  const r = await run(requireTool('qemu-img', 'qemu-utils'), [
    'info',
    '--output=json',
    '-U',
    '-f',
    'qcow2',
    path,
  ]);
  if (r.code !== 0) throw new OrbError('input', `cannot read ${path}: ${r.stderr.trim().split('\n').pop()}`);
  return (JSON.parse(r.stdout) as { 'backing-filename'?: string })['backing-filename'];
}

/** This orb (entry and bundle) into `to`, for the compose file's orb service. */
export async function copyOrb(to: string): Promise<void> {
  const root = orbRoot();
  const bundle = join(root, 'dist', 'orb');
  if (!(await stat(join(bundle, 'index.js')).catch(() => undefined)))
    throw new OrbError(
      'environment',
      `the orb bundle is missing in ${bundle}: the compose file's orb service needs it`,
      {
        hint: 'run `npm run build` in the checkout',
      },
    );
  await rm(`${to}.partial`, { recursive: true, force: true });
  await mkdir(join(`${to}.partial`, 'bin'), { recursive: true });
  await cp(join(root, 'bin', 'orb.js'), join(`${to}.partial`, 'bin', 'orb.js'));
  await cp(bundle, join(`${to}.partial`, 'dist', 'orb'), { recursive: true });
  await rm(to, { recursive: true, force: true });
  await rename(`${to}.partial`, to);
}
