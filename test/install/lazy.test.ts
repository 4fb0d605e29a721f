import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { install, type InstallOptions } from '../../src/install/install.js';
import { HEALTH_SCRIPT, nbdBacking } from '../../src/install/lazy.js';
import type { LazyOptions } from '../../src/install/lazy-install.js';
import type { Check } from '../../src/install/prereq.js';
import { OciLayout } from '../../src/oci/layout.js';
import { DISK_V2_ARTIFACT, DISK_V2_CONFIG, OCI_MANIFEST } from '../../src/formats/oci-media.js';

/**
 * `orb install --lazy` against a stand-in for `orb serve`: qemu-nbd --read-only serving the
 * original raw disk on the socket install asks for, printing serve's --json lines, and
 * "filling" the cache (copy to <cache>.partial, rename to <cache>) only when the test creates
 * <cache>.go, so the test sees the overlay while it can only read through the socket.
 */
const MiB = 1 << 20;
let dir: string;
let original: string;
let standin: string;
const logged: string[] = [];
const log: Logger = { ...silentLogger, info: (m) => logged.push(m), warn: (m) => logged.push(m) };
const checksOk = async (): Promise<Check[]> => [{ name: 'kvm', ok: true, forFiles: false, detail: 'test' }];

const STANDIN = `
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, renameSync, rmSync, statSync } from 'node:fs';
const [orig, cmd, ref, ...rest] = process.argv.slice(2);
const opt = (n) => rest[rest.indexOf(n) + 1];
const socket = opt('--socket'), cache = opt('--cache');
if (cmd !== 'serve' || !ref || !rest.includes('--json')) process.exit(2);
rmSync(socket, { force: true });
const nbd = spawn('qemu-nbd', ['--read-only', '--persistent', '--shared=8', '-f', 'raw', '-x', 'disk', '--socket', socket, orig], { stdio: 'inherit' });
while (!existsSync(socket)) await new Promise((r) => setTimeout(r, 20));
console.log(JSON.stringify({ socket, export: 'disk', 'virtual-size': statSync(orig).size }));
const fill = setInterval(() => {
  if (!existsSync(cache + '.go') || existsSync(cache)) return;
  copyFileSync(orig, cache + '.partial');
  renameSync(cache + '.partial', cache);
}, 50);
process.on('SIGTERM', () => {
  clearInterval(fill);
  nbd.kill('SIGTERM');
  nbd.on('close', () => {
    console.log(JSON.stringify({ 'bytes-fetched': 0, complete: existsSync(cache) }));
    process.exit(0);
  });
});
`;

async function layout(): Promise<string> {
  const l = new OciLayout(join(dir, 'layout'));
  await l.init();
  const config = {
    schema: 'orb-disk/v2',
    virtualSize: statSync(original).size,
    build: { os: 'windows', firmware: 'uefi', adminUser: 'Operator', diskInterface: 'virtio' },
  };
  const cfg = await l.putBytes(JSON.stringify(config));
  const manifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_V2_ARTIFACT,
    config: { mediaType: DISK_V2_CONFIG, ...cfg },
    layers: [],
  };
  const m = await l.putBytes(JSON.stringify(manifest));
  await l.tag({ mediaType: OCI_MANIFEST, ...m, artifactType: DISK_V2_ARTIFACT }, 'v1');
  return `oci-layout:${join(dir, 'layout')}:v1`;
}

function opts(
  target: string,
  lazy: Partial<LazyOptions>,
  extra: Partial<InstallOptions> = {},
): InstallOptions {
  return {
    ref: `oci-layout:${join(dir, 'layout')}:v1`,
    dir: target,
    update: false,
    storeOptions: {},
    bind: '127.0.0.1',
    rdpPort: 3389,
    webPort: 8006,
    ram: '4G',
    cpus: 2,
    name: 'orb-windows',
    concurrency: 2,
    prepareOnly: true,
    keepPrevious: true,
    start: false,
    headroom: MiB,
    log,
    progress: () => nullProgress,
    runtimeChecks: checksOk,
    lazy: {
      serveCommand: [process.execPath, standin, original],
      serveArgs: [],
      serveEnv: {},
      orbImage: 'node:24-slim',
      pollMs: 100,
      ...lazy,
    },
    ...extra,
  };
}

const qemuIo = (path: string, ...cmds: string[]) =>
  spawnSync('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), path], { encoding: 'utf8' });
const chain = (path: string) =>
  execFileSync('qemu-img', ['info', '-U', '--backing-chain', path], { encoding: 'utf8' });
const compare = (path: string) =>
  spawnSync('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'raw', path, original], { encoding: 'utf8' });
/** the compose healthcheck, run as the container would (node -e SCRIPT SOCKET) */
const health = (socket: string) =>
  spawnSync('node', ['-e', HEALTH_SCRIPT, socket], { timeout: 10_000 }).status;

/** Starts a lazy install and resolves once the overlay can boot (install keeps serving). */
function startLazy(target: string, signal?: AbortSignal) {
  let ready!: (i: { overlay: string; socket: string }) => void;
  const whenReady = new Promise<{ overlay: string; socket: string }>((r) => (ready = r));
  const done = install(opts(target, { onReady: ready }, signal ? { signal } : {}));
  done.catch(() => undefined);
  return {
    whenReady: Promise.race([whenReady, done.then(() => Promise.reject(new Error('ended early')))]),
    done,
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-lazy-'));
  original = join(dir, 'original.raw');
  // 16 MiB: random data, a 1 MiB run of 0x11 at 4 MiB, zeros after 8 MiB
  const data = Buffer.alloc(16 * MiB);
  randomBytes(4 * MiB).copy(data);
  data.fill(0x11, 4 * MiB, 5 * MiB);
  randomBytes(2 * MiB).copy(data, 6 * MiB);
  writeFileSync(original, data);
  standin = join(dir, 'standin.mjs');
  writeFileSync(standin, STANDIN);
  await layout();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('orb install --lazy (stand-in server: qemu-nbd)', () => {
  it('boots from an overlay that reads through the socket, then rebases onto the filled base', async () => {
    const target = join(dir, 'client');
    const run = startLazy(target);
    const { overlay, socket } = await run.whenReady;
    const cache = join(target, 'images', readdirBase(target));
    expect(existsSync(cache)).toBe(false); // nothing local: every read below crossed the socket
    const info = chain(overlay);
    expect(info).toContain(`backing file: ${nbdBacking(socket)}`);
    expect(info).toContain(`image: nbd+unix:///disk?socket=${socket}`);
    expect(compare(overlay).stdout).toMatch(/Images are identical/);
    const w = qemuIo(
      overlay,
      'write -P 0x5a 0 64k',
      'read -P 0x5a 0 64k',
      'read -P 0x11 4M 1M',
      'read -P 0 8M 8M',
    );
    expect(w.status, w.stderr + w.stdout).toBe(0);
    expect(w.stdout).not.toMatch(/Pattern verification failed/);
    expect(health(socket)).toBe(0);
    expect(health(join(dir, 'nothing.sock'))).toBe(1);

    // the compose file: dockur waits for the orb service, which serves the same socket and cache
    const c = parse(readFileSync(join(target, 'docker-compose.yml'), 'utf8')) as {
      services: Record<string, Record<string, unknown>>;
    };
    const orb = c.services.orb as {
      command: string[];
      volumes: string[];
      healthcheck: { test: string[] };
      image: string;
    };
    const win = c.services.windows as {
      depends_on: unknown;
      volumes: string[];
      environment: Record<string, string>;
    };
    expect(win.depends_on).toEqual({ orb: { condition: 'service_healthy' } });
    expect(win.environment.DISK_FMT).toBe('qcow2');
    expect(win.environment.DISK_SIZE).toBe('16M');
    const storage = join(target, 'storage');
    expect(win.volumes).toEqual(['./storage:/storage', './images:/images:ro', `${storage}:${storage}`]);
    expect(orb.image).toBe('node:24-slim');
    expect(orb.command.slice(0, 3)).toEqual(['node', join(target, 'orb', 'bin', 'orb.js'), 'serve']);
    expect(orb.command).toEqual(expect.arrayContaining(['--socket', socket, '--cache', cache, '--json']));
    expect(orb.command[3]).toMatch(/^oci-layout:.*@sha256:[0-9a-f]{64}$/); // pinned to what was installed
    expect(orb.volumes).toContain(`${storage}:${storage}`);
    expect(orb.healthcheck.test).toEqual(['CMD', 'node', '-e', HEALTH_SCRIPT, socket]);
    expect(existsSync(join(target, 'orb', 'bin', 'orb.js'))).toBe(true);
    expect(existsSync(join(target, 'orb', 'dist', 'orb', 'index.js'))).toBe(true);
    const st = JSON.parse(readFileSync(join(target, 'install.json'), 'utf8')) as { lazy?: unknown };
    expect(st.lazy).toEqual({ socket: 'storage/orb-disk.sock', cache: `images/${readdirBase(target)}` });

    // a VM holding the overlay keeps the server up after the fill: qemu-io holds the image lock
    writeFileSync(`${cache}.go`, '');
    const r = await run.done;
    expect(r.lazy).toBe('complete');
    expect(existsSync(socket)).toBe(false); // the server stopped
    expect(chain(overlay)).toMatch(new RegExp(`backing file: \\.\\./images/${readdirBase(target)} `));
    expect(chain(overlay)).toContain(`image: ${target}/storage/../images/${readdirBase(target)}\n`);
    const after = qemuIo(overlay, 'read -P 0x5a 0 64k', 'read -P 0x11 4M 1M', 'read -P 0 8M 8M');
    expect(after.status, after.stderr).toBe(0);
    expect(after.stdout).not.toMatch(/Pattern verification failed/);
    expect(statSync(cache).mode & 0o777).toBe(0o444);
    const c2 = parse(readFileSync(join(target, 'docker-compose.yml'), 'utf8')) as {
      services: Record<string, unknown>;
    };
    expect(Object.keys(c2.services)).toEqual(['windows']);
    expect(JSON.parse(readFileSync(join(target, 'install.json'), 'utf8'))).not.toHaveProperty('lazy');
    // and a rerun changes nothing
    const again = await install(opts(target, {}));
    expect(again.lazy).toBe('complete');
  });

  it('keeps serving while a VM holds the overlay after the fill, rebasing once it lets go', async () => {
    const target = join(dir, 'held');
    const run = startLazy(target);
    const { overlay, socket } = await run.whenReady;
    const cache = join(target, 'images', readdirBase(target));
    // qemu-io in interactive mode holds the overlay open (and QEMU's write lock) until stdin ends
    const { spawn } = await import('node:child_process');
    const vm = spawn('qemu-io', ['-f', 'qcow2', overlay], { stdio: ['pipe', 'pipe', 'pipe'] });
    await new Promise((r) => setTimeout(r, 500));
    writeFileSync(`${cache}.go`, '');
    await waitFor(() => logged.some((l) => /a VM holds the overlay/.test(l)));
    expect(health(socket)).toBe(0); // still serving
    vm.stdin.write('read -P 0x11 4M 1M\n');
    vm.stdin.end();
    await new Promise((r) => vm.on('close', r));
    const r = await run.done;
    expect(r.lazy).toBe('complete');
    expect(chain(overlay)).toContain(`image: ${target}/storage/../images/${readdirBase(target)}\n`);
  });

  it('continues after an interruption: the overlay and its writes are kept', async () => {
    const target = join(dir, 'restart');
    const ac = new AbortController();
    const first = startLazy(target, ac.signal);
    const { overlay, socket } = await first.whenReady;
    expect(qemuIo(overlay, 'write -P 0x77 1M 64k').status).toBe(0);
    ac.abort();
    await expect(first.done).rejects.toThrow(/run orb install again/);
    expect(existsSync(socket)).toBe(false);
    const second = startLazy(target);
    await second.whenReady;
    const mid = qemuIo(overlay, 'read -P 0x77 1M 64k', 'read -P 0x11 4M 1M');
    expect(mid.stdout).not.toMatch(/Pattern verification failed/);
    writeFileSync(join(target, 'images', `${readdirBase(target)}.go`), '');
    const r = await second.done;
    expect(r.lazy).toBe('complete');
    expect(qemuIo(overlay, 'read -P 0x77 1M 64k').stdout).not.toMatch(/Pattern verification failed/);
  });
});

function readdirBase(target: string): string {
  const st = JSON.parse(readFileSync(join(target, 'install.json'), 'utf8')) as { base: string };
  return st.base.replace(/^images\//, '');
}

async function waitFor(cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}
