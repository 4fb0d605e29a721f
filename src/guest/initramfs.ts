/**
 * Initramfs building and the artefact cache shared by the guest builders (the test suite's
 * guests and `orb demo`'s small Linux image). No root needed:
 * the cpio archive is written by our own newc writer (device nodes and owners are just numbers).
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, posix } from 'node:path';
import { gzipSync } from 'node:zlib';
import { OrbError } from '../core/errors.js';
import { writeCpio, type CpioEntry } from './cpio.js';

/** File content for an initramfs or a disk: text, bytes, or either with a mode (default 0644). */
export type GuestFile = string | Buffer | { data: string | Buffer; mode?: number };

/** Bumped when the recipes change in a way the hashed inputs do not show. */
const RECIPE_VERSION = 3;

/**
 * Where built guests are cached: $ORB_GUEST_CACHE, else the test suite's $ORB_TEST_CACHE, else
 * ~/.cache/orb (created when missing).
 */
export function guestCacheDir(): string {
  const base = process.env.ORB_GUEST_CACHE || process.env.ORB_TEST_CACHE || join(homedir(), '.cache', 'orb');
  const dir = join(base, 'guests');
  mkdirSync(dir, { recursive: true });
  return dir;
}

export function fileData(f: GuestFile): { data: Buffer; mode: number } {
  if (typeof f === 'string') return { data: Buffer.from(f, 'utf8'), mode: 0o644 };
  if (Buffer.isBuffer(f)) return { data: f, mode: 0o644 };
  return { data: typeof f.data === 'string' ? Buffer.from(f.data, 'utf8') : f.data, mode: f.mode ?? 0o644 };
}

/** A stable hash of a recipe (JSON with Buffers as their sha256). */
export function recipeHash(recipe: unknown): string {
  const json = JSON.stringify({ v: RECIPE_VERSION, recipe }, (_k, v: unknown) => {
    if (
      v &&
      typeof v === 'object' &&
      (v as { type?: string }).type === 'Buffer' &&
      Array.isArray((v as { data?: unknown }).data)
    ) {
      return (
        'sha256:' +
        createHash('sha256')
          .update(Buffer.from((v as { data: number[] }).data))
          .digest('hex')
      );
    }
    return v;
  });
  return createHash('sha256').update(json).digest('hex').slice(0, 20);
}

const fileHashes = new Map<string, string>();
/** sha256 of a host file, memoised by path+size+mtime (kernel and busybox are hashed into recipes). */
export function hostFileHash(path: string): string {
  const st = statSync(path);
  const key = `${path}:${st.size}:${st.mtimeMs}`;
  let h = fileHashes.get(key);
  if (!h) {
    h = createHash('sha256').update(readFileSync(path)).digest('hex');
    fileHashes.set(key, h);
  }
  return h;
}

/**
 * Returns the cached artefact `<kind>-<hash><ext>`, building it when missing. `build` writes to a
 * private temporary path which is renamed into place, so concurrent test files never see a
 * half-written artefact (the last writer wins with identical content).
 */
export async function cached(
  kind: string,
  recipe: unknown,
  ext: string,
  build: (tmpPath: string) => Promise<void>,
): Promise<string> {
  const dir = guestCacheDir();
  const path = join(dir, `${kind}-${recipeHash(recipe)}${ext}`);
  if (existsSync(path)) return path;
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.partial`;
  try {
    await build(tmp);
    renameSync(tmp, path);
  } finally {
    rmSync(tmp, { force: true, recursive: true });
  }
  return path;
}

let kernelInfo: { path: string; version: string } | undefined;
/** Debian's kernel image (/boot/vmlinuz-*, the newest) and its version (for /lib/modules/<version>). */
export function guestKernel(): { path: string; version: string } {
  if (kernelInfo) return kernelInfo;
  const names = existsSync('/boot') ? readdirSync('/boot').filter((n) => /^vmlinuz-/.test(n)) : [];
  names.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const name = names.pop();
  if (!name)
    throw new OrbError('environment', 'no kernel in /boot to build a guest from', {
      hint: "install the Debian package 'linux-image-amd64'",
    });
  kernelInfo = { path: join('/boot', name), version: name.slice('vmlinuz-'.length) };
  return kernelInfo;
}

export interface InitramfsOptions {
  /** /init: a busybox sh script (a `#!/bin/sh` line is added when missing) */
  init: string;
  /** extra files by absolute guest path ('/etc/x.conf'); parent directories are created */
  files?: Record<string, GuestFile>;
  /** kernel modules to include, relative to /lib/modules/<version>/kernel (e.g. 'drivers/net/ethernet/intel/e1000/e1000.ko'); placed in /lib/modules/ */
  modules?: string[];
}

const BUSYBOX = '/bin/busybox';

let applets: string[] | undefined;
function busyboxApplets(): string[] {
  applets ??= execFileSync(BUSYBOX, ['--list-full'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return applets;
}

/** The archive entries (exported for tests); buildInitramfs gzips and caches them. */
export function initramfsEntries(opts: InitramfsOptions): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const addDir = (d: string): void => {
    if (d === '/' || d === '' || dirs.has(d)) return;
    addDir(posix.dirname(d));
    dirs.add(d);
    entries.push({ type: 'dir', path: d });
  };
  for (const d of [
    '/bin',
    '/sbin',
    '/usr/bin',
    '/usr/sbin',
    '/dev',
    '/proc',
    '/sys',
    '/tmp',
    '/run',
    '/etc',
    '/root',
    '/lib/modules',
  ])
    addDir(d);
  entries.push({ type: 'chardev', path: '/dev/console', major: 5, minor: 1, mode: 0o600 });
  entries.push({ type: 'chardev', path: '/dev/null', major: 1, minor: 3, mode: 0o666 });
  entries.push({ type: 'file', path: '/bin/busybox', data: readFileSync(BUSYBOX), mode: 0o755 });
  for (const a of busyboxApplets()) {
    const p = '/' + a;
    if (p === '/bin/busybox') continue;
    addDir(posix.dirname(p));
    entries.push({ type: 'symlink', path: p, target: '/bin/busybox' });
  }
  if (opts.modules?.length) {
    const { version } = guestKernel();
    for (const m of opts.modules) {
      const src = join('/lib/modules', version, 'kernel', m);
      entries.push({
        type: 'file',
        path: `/lib/modules/${posix.basename(m)}`,
        data: readFileSync(src),
        mode: 0o644,
      });
    }
  }
  const init = opts.init.startsWith('#!') ? opts.init : `#!/bin/sh\n${opts.init}`;
  entries.push({ type: 'file', path: '/init', data: Buffer.from(init, 'utf8'), mode: 0o755 });
  for (const [path, f] of Object.entries(opts.files ?? {})) {
    if (!path.startsWith('/')) throw new Error(`initramfs file path must be absolute: ${path}`);
    addDir(posix.dirname(path));
    const { data, mode } = fileData(f);
    entries.push({ type: 'file', path, data, mode });
  }
  return entries;
}

/**
 * A gzip-compressed cpio (newc) initramfs with busybox-static (/bin/busybox plus applet links),
 * /dev/console, the given /init and files. Returns the cached path.
 */
export function buildInitramfs(opts: InitramfsOptions): Promise<string> {
  const modules = (opts.modules ?? []).map((m) => ({
    m,
    sha: hostFileHash(join('/lib/modules', guestKernel().version, 'kernel', m)),
  }));
  const recipe = { busybox: hostFileHash(BUSYBOX), init: opts.init, files: opts.files ?? {}, modules };
  return cached('initramfs', recipe, '.cpio.gz', async (tmp) => {
    await writeFile(tmp, gzipSync(writeCpio(initramfsEntries(opts)), { level: 6 }));
  });
}
