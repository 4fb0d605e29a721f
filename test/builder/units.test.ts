import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { OrbError } from '../../src/core/errors.js';
import { displayUrl, obtain } from '../../src/builder/download.js';
import { SerialProtocol } from '../../src/builder/guest-protocol.js';
import {
  emptyState,
  isDone,
  loadState,
  markDone,
  recipeKey,
  saveState,
  STATE_FILE,
} from '../../src/builder/stage-state.js';
import { changedPixels } from '../../src/builder/watch-boot.js';
import { restoreInstalled, storeInstalled } from '../../src/builder/installed-cache.js';
import { createQcow2 } from '../../src/qemu/img.js';
import { DOCKUR_LAYOUT_VERSION, dockurEnv, writeDockurBundle } from '../../src/dockur/bundle.js';
import { startFileServer, type FileServer } from '../helpers/file-server.js';
import { runCommandInProcess } from '../helpers/installer-iso.js';
import buildCommand from '../../src/commands/build-golden-image.js';

const exec = promisify(execFile);

function capture(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const put = (m: string) => lines.push(m);
  return { lines, info: put, warn: put, error: put, debug: put };
}

describe('ISO download: resume, verification, cache', () => {
  let dir: string;
  let server: FileServer;
  let data: Buffer;
  let sha: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'orb-dl-'));
    await mkdir(join(dir, 'www'));
    data = randomBytes(3 << 20);
    sha = createHash('sha256').update(data).digest('hex');
    await writeFile(join(dir, 'www', 'win.iso'), data);
    server = await startFileServer(join(dir, 'www'));
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const base = (cacheDir: string, log: Logger = silentLogger) => ({
    what: 'Windows ISO',
    cacheDir,
    log,
    progress: () => nullProgress,
  });

  it('resumes after the connection breaks, verifies the digest, then serves from the cache without the network', async () => {
    let breaks = 2;
    server.options.breakAfter = () => (breaks-- > 0 ? 1 << 20 : undefined);
    const log = capture();
    const cache = join(dir, 'c1');
    const got = await obtain({
      ...base(cache, log),
      source: `${server.url}/win.iso?X-Amz-Signature=topsecret`,
      sha256: sha,
    });
    server.options.breakAfter = undefined;
    expect(got.source).toBe('download');
    expect(got.sha256).toBe(sha);
    expect((await readFile(got.path)).equals(data)).toBe(true);
    const ranges = server.requests.filter((r) => r.path === '/win.iso').map((r) => r.range);
    expect(ranges[0]).toBeUndefined();
    expect(ranges.slice(1).every((r) => r && /^bytes=\d+-$/.test(r) && r !== 'bytes=0-')).toBe(true);
    expect(log.lines.join('\n')).toMatch(/resuming|retrying/);
    expect(log.lines.join('\n')).not.toContain('topsecret');
    const before = server.requests.length;
    const again = await obtain({ ...base(cache), source: `${server.url}/win.iso`, sha256: sha });
    expect(again.source).toBe('local');
    expect(server.requests.length).toBe(before);
  });

  it('resumes a .partial left by an interrupted run (Range), and restarts when the server ignores ranges', async () => {
    const cache = join(dir, 'c2');
    await obtain({ ...base(cache), source: `${server.url}/win.iso`, sha256: sha });
    const entry = (await readdir(join(cache, 'downloads')))[0]!;
    const file = join(cache, 'downloads', entry, 'win.iso');
    await rm(file);
    await writeFile(file + '.partial', data.subarray(0, 1 << 20));
    server.requests.length = 0;
    await obtain({ ...base(cache), source: `${server.url}/win.iso`, sha256: sha });
    expect(server.requests.map((r) => r.range)).toEqual([`bytes=${1 << 20}-`]);
    await rm(file);
    await writeFile(file + '.partial', data.subarray(0, 1 << 20));
    server.options.ignoreRange = true;
    const got = await obtain({ ...base(cache), source: `${server.url}/win.iso`, sha256: sha });
    server.options.ignoreRange = undefined;
    expect((await readFile(got.path)).equals(data)).toBe(true);
  });

  it('a wrong digest is an integrity error and leaves nothing behind; HTTP 403 says the link expired', async () => {
    const cache = join(dir, 'c3');
    const wrong = '0'.repeat(64);
    await expect(
      obtain({ ...base(cache), source: `${server.url}/win.iso`, sha256: wrong }),
    ).rejects.toMatchObject({ kind: 'integrity' });
    const left = await readdir(join(cache, 'downloads'), { recursive: true });
    expect(left.filter((f) => String(f).endsWith('.iso') || String(f).endsWith('.partial'))).toEqual([]);
    server.options.status = () => 403;
    const err = await obtain({ ...base(cache), source: `${server.url}/win.iso` }).catch((e: OrbError) => e);
    server.options.status = undefined;
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).hint).toMatch(/expired/);
    await expect(obtain({ ...base(cache), source: join(dir, 'missing.iso') })).rejects.toMatchObject({
      kind: 'input',
    });
    await expect(
      obtain({ ...base(cache), source: join(dir, 'www', 'win.iso'), sha256: 'abc' }),
    ).rejects.toThrow(/64 hex/);
    expect(displayUrl('https://user:pw@host/a/b.iso?sig=1')).toBe('https://host/a/b.iso');
  });
});

describe('build state', () => {
  it('records stages, invalidates later ones, survives a reload, and keys ignore property order', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'orb-state-'));
    try {
      await writeFile(join(dir, 'base.qcow2'), 'x');
      const s = emptyState('windows');
      markDone(s, 'installed', { key: 'k1', disk: 'base.qcow2', finishedAt: '', seconds: 1 });
      markDone(s, 'provisioned', { key: 'k2', disk: 'base.qcow2', finishedAt: '', seconds: 1 });
      markDone(s, 'final', { key: 'k3', disk: 'base.qcow2', finishedAt: '', seconds: 1 });
      markDone(s, 'provisioned', { key: 'k2b', disk: 'base.qcow2', finishedAt: '', seconds: 1 });
      expect(Object.keys(s.stages)).toEqual(['installed', 'provisioned']);
      await saveState(dir, s);
      const back = await loadState(dir, 'windows');
      expect(await isDone(back, 'installed', 'k1', dir)).toBe(true);
      expect(await isDone(back, 'installed', 'other', dir)).toBe(false);
      expect((await loadState(dir, 'linux')).stages).toEqual({});
      await rm(join(dir, 'base.qcow2'));
      expect(await isDone(back, 'installed', 'k1', dir)).toBe(false);
      expect(recipeKey({ a: 1, b: [1, { y: 2, x: 1 }] })).toBe(recipeKey({ b: [1, { x: 1, y: 2 }], a: 1 }));
      await writeFile(join(dir, STATE_FILE), '{broken');
      await expect(loadState(dir, 'windows')).rejects.toThrow(/unreadable/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('serial protocol', () => {
  it('follows markers across chunk boundaries and firmware escape sequences', () => {
    const p = new SerialProtocol();
    p.push('\x1b[2J\x1b[01;01HBdsDxe: boot\r\nORB-STA');
    p.push(
      'GE provision\nORB-SCRIPT-BEGIN 1 01-a.ps1\nhello\r\nworld\nORB-SCRIPT-END 1 0\nORB-SCRIPT-BEGIN 2 02-b.ps1\nbad\nORB-SCRIPT-END 2 7\n',
    );
    p.push('ORB-FAIL provision: script 02-b.ps1 exited with code 7\nORB-DONE provis');
    p.flush();
    expect(p.stages).toEqual(['provision']);
    expect(p.scripts.map((s) => [s.name, s.exitCode, s.output])).toEqual([
      ['01-a.ps1', 0, ['hello', 'world']],
      ['02-b.ps1', 7, ['bad']],
    ]);
    expect(p.failure).toMatch(/exited with code 7/);
    expect(p.done.has('provis')).toBe(true);
    expect(p.provisionLog()).toContain('==> [2] 02-b.ps1 (exit 7)\nbad');
  });

  it('a blinking cursor is not screen progress', () => {
    const img = (w: number, h: number, fill = 0) => ({
      width: w,
      height: h,
      rgb: Buffer.alloc(w * h * 3, fill),
    });
    const a = img(720, 400);
    const b = img(720, 400);
    for (let y = 0; y < 16; y++)
      for (let x = 0; x < 9; x++) b.rgb.fill(255, (y * 720 + x) * 3, (y * 720 + x) * 3 + 3);
    expect(changedPixels(a, b)).toBe(144);
    expect(changedPixels(a, img(640, 480))).toBe(640 * 480);
  });
});

describe('installed-base cache and dockur bundle', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'orb-layers-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('stores by hard link, restores, and a rebuilt base never changes the cached entry', async () => {
    const base = join(dir, 'build', 'layers', 'base.qcow2');
    const vars = join(dir, 'build', 'firmware', 'installed.vars.fd');
    await mkdir(join(dir, 'build', 'layers'), { recursive: true });
    await mkdir(join(dir, 'build', 'firmware'), { recursive: true });
    await createQcow2(base, 64 << 20);
    await writeFile(vars, 'VARS');
    await storeInstalled(join(dir, 'cache'), 'a'.repeat(64), { disk: base, vars }, false, silentLogger);
    const entry = join(dir, 'cache', 'installed', 'a'.repeat(40));
    expect((await stat(join(entry, 'base.qcow2'))).ino).toBe((await stat(base)).ino);
    const other = { disk: join(dir, 'b2', 'base.qcow2'), vars: join(dir, 'b2', 'vars.fd') };
    expect(await restoreInstalled(join(dir, 'cache'), 'a'.repeat(64), other, false, silentLogger)).toBe(true);
    expect(await readFile(other.vars, 'utf8')).toBe('VARS');
    expect(await restoreInstalled(join(dir, 'cache'), 'b'.repeat(64), other, false, silentLogger)).toBe(
      false,
    );
  });

  it('writes the storage folder dockur/windows boots without Setup (UEFI, Secure Boot, BIOS)', async () => {
    const disk = join(dir, 'disk.qcow2');
    await createQcow2(disk, 128 << 20);
    const code = join(dir, 'code.fd');
    const vars = join(dir, 'vars.fd');
    await writeFile(code, 'CODE');
    await writeFile(vars, 'VARS');
    const uefi = await writeDockurBundle({
      disk,
      outDir: join(dir, 'd1'),
      format: 'raw',
      firmware: 'uefi',
      uefiCode: code,
      uefiVars: vars,
      diskType: 'blk',
    });
    expect(uefi.files.sort()).toEqual([
      'data.img',
      'windows.boot',
      'windows.mode',
      'windows.rom',
      'windows.type',
      'windows.vars',
      'windows.ver',
    ]);
    expect((await stat(join(dir, 'd1', 'data.img'))).size).toBe(128 << 20);
    expect(await readFile(join(dir, 'd1', 'windows.ver'), 'utf8')).toBe(`${DOCKUR_LAYOUT_VERSION}\n`);
    expect(await readFile(join(dir, 'd1', 'windows.vars'), 'utf8')).toBe('VARS');
    const secure = await writeDockurBundle({
      disk,
      outDir: join(dir, 'd2'),
      format: 'qcow2',
      firmware: 'uefi-secure',
      uefiCode: code,
      uefiVars: vars,
      diskType: 'sata',
    });
    expect(secure.files.sort()).toEqual([
      'data.qcow2',
      'windows.boot',
      'windows.mode',
      'windows.type',
      'windows.ver',
      'windows_secure.rom',
      'windows_secure.vars',
    ]);
    expect(dockurEnv(secure, 'sata', 'qcow2')).toEqual({
      DISK_TYPE: 'sata',
      DISK_FMT: 'qcow2',
      BOOT_MODE: 'windows_secure',
    });
    const { stdout } = await exec('qemu-img', ['info', '--output=json', join(dir, 'd2', 'data.qcow2')]);
    expect(JSON.parse(stdout)['backing-filename']).toBeUndefined();
    const bios = await writeDockurBundle({
      disk,
      outDir: join(dir, 'd3'),
      format: 'raw',
      firmware: 'bios',
      diskType: 'ide',
    });
    expect(bios.mode).toBe('windows_legacy');
    expect(bios.files).not.toContain('windows.rom');
    expect((await readdir(dir)).filter((f) => f.endsWith('.partial'))).toEqual([]);
  });
});

describe('build-golden-image input checks', () => {
  it('bad input fails before any work: no build directory, no VM', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'orb-badinput-'));
    try {
      const out = join(dir, 'out');
      const cases: [Record<string, string | string[]>, RegExp][] = [
        [{ out }, /'iso' is required/],
        [{ out, iso: join(dir, 'missing.iso'), edition: 'Windows 11 Pro' }, /missing\.iso does not exist/],
        [{ out, iso: join(dir, 'missing.iso') }, /edition/],
        [{ out, iso: join(dir, 'missing.iso'), edition: 'Windows 11 Pro', script: ['x.sh'] }, /\.ps1/],
        [
          { out, iso: join(dir, 'missing.iso'), edition: 'Windows 11 Pro', 'time-zone': 'Europe/Berlin' },
          /IANA/,
        ],
        [{ out, os: 'linux' }, /'cloud-image' is required/],
        [
          { out, os: 'linux', 'cloud-image': join(dir, 'c.img'), 'admin-user': 'Bad User' },
          /Linux user name/,
        ],
        [{ out, iso: join(dir, 'missing.iso'), edition: 'Windows 11 Pro', name: '///' }, /file name/],
      ];
      for (const [raw, message] of cases) {
        await expect(runCommandInProcess(buildCommand, raw)).rejects.toThrow(message);
      }
      await expect(stat(out)).rejects.toThrow();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
