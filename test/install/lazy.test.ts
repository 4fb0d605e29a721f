import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import type { InstallOptions } from '../../src/install/install.js';
import { createNbdOverlay, HEALTH_SCRIPT, nbdBacking, ServeChild } from '../../src/install/lazy.js';
import { installLazy, type LazyOptions } from '../../src/install/lazy-install.js';
import type { Check } from '../../src/install/prereq.js';
import { OciLayout } from '../../src/oci/layout.js';
import { DISK_V2_ARTIFACT, DISK_V2_CONFIG, OCI_MANIFEST } from '../../src/formats/oci-media.js';
import { NODE, ROOT } from '../helpers/cli.js';
import { buildV2Layout, type V2Image } from '../helpers/v2-layout.js';

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
let v2: V2Image;
const ORB = [NODE, join(ROOT, 'bin', 'orb.js')];
const logged: string[] = [];
const log: Logger = { ...silentLogger, info: (m) => logged.push(m), warn: (m) => logged.push(m) };
const checksOk = async (): Promise<Check[]> => [{ name: 'kvm', ok: true, forFiles: false, detail: 'test' }];

const STANDIN = `
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
const [orig, cmd, ref, ...rest] = process.argv.slice(2);
const opt = (n) => rest[rest.indexOf(n) + 1];
const socket = opt('--socket'), cache = opt('--cache');
if (cmd !== 'serve' || !ref || !rest.includes('--json')) process.exit(2);
rmSync(socket, { force: true });
writeFileSync(cache + '.seen', JSON.stringify({ argv: process.argv, password: process.env.ORB_REGISTRY_PASSWORD }));
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
): InstallOptions & { lazy: LazyOptions } {
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
function startLazy(
  target: string,
  signal?: AbortSignal,
  lazy: Partial<LazyOptions> = {},
  extra: Partial<InstallOptions> = {},
) {
  let ready!: (i: { overlay: string; socket: string }) => void;
  const whenReady = new Promise<{ overlay: string; socket: string }>((r) => (ready = r));
  const done = installLazy(
    opts(target, { onReady: ready, ...lazy }, { ...(signal ? { signal } : {}), ...extra }),
  );
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
  v2 = await buildV2Layout(data, join(dir, 'v2'), 'v1');
  standin = join(dir, 'standin.mjs');
  writeFileSync(standin, STANDIN);
  await layout();
});
afterAll(() => {
  if (!process.env.ORB_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
});

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
    const again = await installLazy(opts(target, {}));
    expect(again.lazy).toBe('complete');
  });

  it('gives the server its credentials in the environment, never on its command line or in a log', async () => {
    const target = join(dir, 'secret');
    const secret = 'pw-9f3e1c';
    const run = startLazy(target, undefined, {
      serveEnv: { ORB_REGISTRY_PASSWORD: secret },
      serveArgs: ['--username', 'bob'],
    });
    await run.whenReady;
    const cache = join(target, 'images', readdirBase(target));
    const seen = JSON.parse(readFileSync(`${cache}.seen`, 'utf8')) as { argv: string[]; password?: string };
    expect(seen.password).toBe(secret);
    expect(seen.argv.join(' ')).not.toContain(secret);
    expect(seen.argv).toEqual(expect.arrayContaining(['--username', 'bob']));
    const envFile = join(target, 'orb.env');
    expect(statSync(envFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(envFile, 'utf8')).toContain(`ORB_REGISTRY_PASSWORD='${secret}'`);
    const compose = readFileSync(join(target, 'docker-compose.yml'), 'utf8');
    expect(compose).not.toContain(secret);
    expect(compose).toContain('./orb.env');
    writeFileSync(`${cache}.go`, '');
    await run.done;
    expect(existsSync(envFile)).toBe(false); // not needed once the disk is local
    for (const f of ['docker-compose.yml', 'install.json'])
      expect(readFileSync(join(target, f), 'utf8')).not.toContain(secret);
    expect(logged.join('\n')).not.toContain(secret);
  });

  it('keeps serving while a VM holds the overlay after the fill, rebasing once it lets go', async () => {
    const target = join(dir, 'held');
    const run = startLazy(target);
    const { overlay, socket } = await run.whenReady;
    const cache = join(target, 'images', readdirBase(target));
    // qemu-io in interactive mode holds the overlay open (and QEMU's write lock) until stdin ends
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

describe('orb install --lazy (orb serve)', () => {
  it("boots through orb serve, passes dockur's disk checks, continues after an interruption and rebases onto the verified base", async () => {
    const target = join(dir, 'served');
    const ref = `oci-layout:${join(dir, 'v2')}:v1`;
    const ac = new AbortController();
    // first run without the background fill: everything local was read through the socket
    const first = startLazy(target, ac.signal, { serveCommand: ORB, serveArgs: ['--no-fill'] }, { ref });
    const { overlay, socket } = await first.whenReady;
    const cache = join(target, 'images', readdirBase(target));
    expect(existsSync(cache)).toBe(false);
    expect(existsSync(`${cache}.partial`)).toBe(true);
    expect(chain(overlay)).toContain(`image: nbd+unix:///disk?socket=${socket}`);
    const st = JSON.parse(readFileSync(join(target, 'install.json'), 'utf8')) as { contentDigest?: string };
    expect(st.contentDigest).toBe(v2.contentDigest);

    // dockur's own commands on its disk (qemus/qemu src/disk.sh getSize, src/utils.sh hasData)
    const size = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', '-f', 'qcow2', overlay], { encoding: 'utf8' }),
    ) as { 'virtual-size': number };
    expect(size['virtual-size']).toBe(16 * MiB);
    const head = join(dir, 'head.raw');
    execFileSync('qemu-img', [
      'dd',
      '-f',
      'qcow2',
      '-O',
      'raw',
      'bs=102400',
      'count=1',
      `if=${overlay}`,
      `of=${head}`,
    ]);
    expect(readFileSync(head).equals(readFileSync(original).subarray(0, 102400))).toBe(true);
    expect(spawnSync('cmp', ['-s', '-n', '102400', head, '/dev/zero']).status).toBe(1); // "has data": no reinstall
    // dockur's drive options (cache=none, aio=native) over the NBD backing
    const io = spawnSync(
      'qemu-io',
      [
        '-t',
        'none',
        '-i',
        'native',
        '-f',
        'qcow2',
        '-c',
        'read -P 0x11 4M 1M',
        '-c',
        'read 0 4M',
        '-c',
        'write -P 0x77 1M 64k',
        overlay,
      ],
      { encoding: 'utf8' },
    );
    expect(io.status, io.stderr).toBe(0);
    expect(io.stdout).not.toMatch(/Pattern verification failed/);
    expect(health(socket)).toBe(0);
    const sidecar = (
      parse(readFileSync(join(target, 'docker-compose.yml'), 'utf8')) as {
        services: { orb: { command: string[]; volumes: string[] } };
      }
    ).services.orb;
    expect(sidecar.volumes).toContain(`${join(dir, 'v2')}:${join(dir, 'v2')}:ro`);

    ac.abort();
    await expect(first.done).rejects.toThrow(/run orb install again/);
    expect(existsSync(`${cache}.state`)).toBe(true);

    // the rerun resumes serve's cache: it fetches only what the first run did not
    const second = startLazy(target, undefined, { serveCommand: ORB }, { ref });
    const r = await second.done;
    expect(r.lazy).toBe('complete');
    expect(r.bytesDownloaded, logged.slice(-30).join('\n')).toBeGreaterThan(0);
    expect(r.bytesDownloaded).toBeLessThan(v2.packBytes - 3 * MiB);
    expect(chain(overlay)).toContain(`image: ${target}/storage/../images/${readdirBase(target)}\n`);
    expect(spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', cache, original]).status).toBe(0);
    const after = qemuIo(overlay, 'read -P 0x77 1M 64k', 'read -P 0x11 4M 1M', 'read -P 0 8M 8M');
    expect(after.status, after.stderr).toBe(0);
    expect(after.stdout).not.toMatch(/Pattern verification failed/);

    // the compose file's orb service command, run on the host as the container would run it
    const [, ...rest] = sidecar.command;
    const svc = spawn(NODE, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
    const readyLine = await new Promise<string>((res, rej) => {
      let out = '';
      svc.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) res(out.split('\n')[0]!);
      });
      svc.on('close', (code) => rej(new Error(`orb serve exited ${code}`)));
    });
    expect(JSON.parse(readyLine)).toMatchObject({ socket, export: 'disk', 'virtual-size': 16 * MiB });
    expect(health(socket)).toBe(0);
    const uri = `nbd+unix:///disk?socket=${socket}`;
    expect(spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, original]).status).toBe(0);
    svc.kill('SIGTERM');
    const stopLine = await new Promise<string>((res) => {
      let out = '';
      svc.stdout.on('data', (d: Buffer) => (out += d.toString()));
      svc.on('close', () => res(out.trim().split('\n').pop() ?? ''));
    });
    expect(JSON.parse(stopLine)).toMatchObject({ complete: true, 'bytes-fetched': 0 });
  });

  it('orb install --lazy from the CLI (bundle): serves the pinned image, never prints the password, ends complete', async () => {
    const target = join(dir, 'cli');
    const r = spawnSync(
      NODE,
      [
        join(ROOT, 'bin', 'orb.js'),
        'install',
        `oci-layout:${join(dir, 'v2')}:v1`,
        '--dir',
        target,
        '--lazy',
        '--prepare-only',
        '--username',
        'bob',
        '--json',
      ],
      { encoding: 'utf8', env: { ...process.env, ORB_REGISTRY_PASSWORD: 'pw-cli-77' }, timeout: 120_000 },
    );
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({
      lazy: 'complete',
      socket: join(target, 'storage', 'orb-disk.sock'),
      'virtual-size': 16 * MiB,
    });
    expect(r.stderr).toMatch(/orb serve: serving oci-layout:.*@sha256:/);
    expect(r.stderr + r.stdout).not.toContain('pw-cli-77');
    expect(
      spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out.base as string, original]).status,
    ).toBe(0);
  });

  it('--start hands over to the compose service; a rerun after its fill rebases and drops it', async () => {
    const target = join(dir, 'handover');
    const ref = `oci-layout:${join(dir, 'v2')}:v1`;
    // a docker that records what it was asked (no engine here): the compose service is then run
    // on the host with the command the compose file gives it
    const bin = join(dir, 'fake-bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'docker'), `#!/bin/sh\necho "$@" >> ${join(dir, 'docker.log')}\n`, {
      mode: 0o755,
    });
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path}`;
    let r;
    try {
      r = await installLazy(opts(target, { serveCommand: ORB }, { ref, start: true }));
    } finally {
      process.env.PATH = path;
    }
    expect(r).toMatchObject({ lazy: 'serving', started: true });
    expect(readFileSync(join(dir, 'docker.log'), 'utf8')).toBe(
      `compose -f ${join(target, 'docker-compose.yml')} up -d\n`,
    );
    const socket = join(target, 'storage', 'orb-disk.sock');
    expect(existsSync(socket)).toBe(false); // install's own server stopped: the service serves
    const orb = (
      parse(readFileSync(join(target, 'docker-compose.yml'), 'utf8')) as {
        services: { orb: { command: string[] } };
      }
    ).services.orb;
    const [, ...rest] = orb.command;
    const svc = await ServeChild.start([NODE], rest, { log: silentLogger });
    const cache = join(target, 'images', readdirBase(target));
    await waitFor(() => existsSync(cache));
    // Windows still running on the overlay after the fill: the rerun leaves the overlay alone
    const overlay = join(target, 'storage', 'data.qcow2');
    const vm = spawn('qemu-io', ['-f', 'qcow2', overlay], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    vm.stdout.on('data', (d: Buffer) => (out += d.toString()));
    vm.stdin.write('read -P 0x11 4M 1M\n');
    await waitFor(() => /read 1048576\/1048576/.test(out));
    const busy = await installLazy(opts(target, { serveCommand: ORB }, { ref }));
    expect(busy.lazy).toBe('serving');
    expect(busy.warnings.join(' ')).toMatch(/Windows is running on the overlay/);
    expect(chain(overlay)).toContain(`image: nbd+unix:///disk?socket=${socket}`);
    vm.stdin.end();
    await new Promise((res) => vm.on('close', res));
    expect(out).not.toMatch(/Pattern verification failed/);
    await svc.stop();
    const again = await installLazy(opts(target, { serveCommand: ORB }, { ref }));
    expect(again.lazy).toBe('complete');
    expect(chain(join(target, 'storage', 'data.qcow2'))).toContain(
      `image: ${target}/storage/../images/${readdirBase(target)}\n`,
    );
    const c = parse(readFileSync(join(target, 'docker-compose.yml'), 'utf8')) as {
      services: Record<string, unknown>;
    };
    expect(Object.keys(c.services)).toEqual(['windows']);
  });

  it('holds guest I/O across a restart of the server (reconnect-delay) and reads the right bytes after it', async () => {
    const work = join(dir, 'reconnect');
    mkdirSync(work);
    const socket = join(work, 's.sock');
    const overlay = join(work, 'data.qcow2');
    const args = [
      'serve',
      `oci-layout:${join(dir, 'v2')}:v1`,
      '--socket',
      socket,
      '--cache',
      join(work, 'base.img'),
      '--json',
      '--no-fill',
    ];
    let server = await ServeChild.start(ORB, args, { log: silentLogger });
    await createNbdOverlay(overlay, socket, 16 * MiB);
    // one QEMU process (qemu-io reading commands from stdin) keeps its NBD connection throughout
    const vm = spawn('qemu-io', ['-f', 'qcow2', overlay], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    vm.stdout.on('data', (d: Buffer) => (out += d.toString()));
    vm.stderr.on('data', (d: Buffer) => (out += d.toString()));
    vm.stdin.write('read -P 0x11 4M 512k\n');
    await waitFor(() => /read 524288\/524288 bytes at offset 4194304/.test(out));
    await server.stop();
    vm.stdin.write('read -P 0x11 4608k 512k\n'); // issued while nothing listens on the socket
    await new Promise((r) => setTimeout(r, 1500));
    expect(out).not.toMatch(/offset 4718592|error/i); // waiting, not failed
    server = await ServeChild.start(ORB, args, { log: silentLogger });
    await waitFor(() => /read 524288\/524288 bytes at offset 4718592/.test(out), 60_000);
    vm.stdin.end();
    await new Promise((r) => vm.on('close', r));
    await server.stop();
    expect(out).not.toMatch(/Pattern verification failed|error/i);
  });

  it("docs/lazy-boot.md's plain QEMU command lines read the image through orb serve", async () => {
    const work = join(dir, 'plain');
    mkdirSync(work);
    const socket = join(work, 'win.sock');
    const ref = `oci-layout:${join(dir, 'v2')}:v1`;
    const server = await ServeChild.start(
      ORB,
      ['serve', ref, '--socket', socket, '--cache', join(work, 'win.img'), '--json', '--no-fill'],
      { log: silentLogger },
    );
    const checks = ['read -P 0x11 4M 1M', 'read -P 0 8M 8M', 'write -P 0x44 0 64k', 'read -P 0x44 0 64k'];
    // a throwaway boot: writes go to a temporary file QEMU deletes (snapshot=on)
    qemuSystem(
      ['-drive', `file=nbd+unix:///disk?socket=${socket},format=raw,if=none,id=disk0,snapshot=on`],
      checks,
    );
    // a kept overlay on the export, and the same chain spelled out with -blockdev
    const backing = `json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"${socket}"},"export":"disk","reconnect-delay":60}}`;
    execFileSync('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'raw',
      '-b',
      backing,
      join(work, 'win.qcow2'),
    ]);
    qemuSystem(['-drive', `file=${join(work, 'win.qcow2')},format=qcow2,if=none,id=disk0`], checks);
    qemuSystem(
      [
        '-blockdev',
        `driver=nbd,node-name=base-nbd,server.type=unix,server.path=${socket},export=disk,reconnect-delay=60,read-only=on`,
        '-blockdev',
        'driver=raw,node-name=base,file=base-nbd,read-only=on',
        '-blockdev',
        `driver=file,node-name=overlay-file,filename=${join(work, 'win.qcow2')}`,
        '-blockdev',
        'driver=qcow2,node-name=disk0,file=overlay-file,backing=base',
      ],
      ['read -P 0x44 0 64k', 'read -P 0x11 4M 1M'],
    );
    await server.stop();
    // after the fill: the documented rebase, then the overlay reads with no server at all
    const filling = await ServeChild.start(
      ORB,
      ['serve', ref, '--socket', socket, '--cache', join(work, 'win.img'), '--json'],
      { log: silentLogger },
    );
    await waitFor(() => existsSync(join(work, 'win.img')));
    expect(await filling.stop()).toMatchObject({ complete: true });
    execFileSync('qemu-img', [
      'rebase',
      '-u',
      '-f',
      'qcow2',
      '-b',
      join(work, 'win.img'),
      '-F',
      'raw',
      join(work, 'win.qcow2'),
    ]);
    expect(existsSync(socket)).toBe(false);
    qemuSystem(
      ['-drive', `file=${join(work, 'win.qcow2')},format=qcow2,if=none,id=disk0`],
      ['read -P 0x44 0 64k', 'read -P 0x11 4M 1M', 'read -P 0 8M 8M'],
    );
  });
});

/**
 * QEMU itself with the given block options and no guest (-machine none, paused): HMP's qemu-io
 * runs the commands on the node or drive `disk0`, as a guest's reads would reach it.
 */
function qemuSystem(block: string[], commands: string[]): void {
  const qmp = [
    { execute: 'qmp_capabilities' },
    ...commands.map((c) => ({
      execute: 'human-monitor-command',
      arguments: { 'command-line': `qemu-io disk0 "${c}"` },
    })),
    { execute: 'quit' },
  ];
  const r = spawnSync(
    'qemu-system-x86_64',
    ['-nodefaults', '-display', 'none', '-machine', 'none', '-S', '-qmp', 'stdio', ...block],
    { input: qmp.map((q) => JSON.stringify(q)).join('\n') + '\n', encoding: 'utf8', timeout: 60_000 },
  );
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).not.toMatch(/Pattern verification failed|error/i);
  expect(r.stdout.match(/^(read|wrote) \d+\/\d+ bytes/gm)).toHaveLength(commands.length);
}
