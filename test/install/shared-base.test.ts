import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { install, type InstallOptions } from '../../src/install/install.js';
import type { Check } from '../../src/install/prereq.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { pull } from '../../src/transfer/pull.js';
import { orb } from '../helpers/cli.js';
import { buildLayout, makeDisk } from '../helpers/oci-images.js';

/**
 * `orb install --base-dir SHARE`: the admin pulls the image once to a share; clients check it
 * (content sha256 in the manifest beside it, then size and sampled chunks, or the whole sha256)
 * and keep only a qcow2 overlay backed by the absolute path on the share. The share is mounted
 * read-only (a read-only bind mount as root, else a chmod -w directory) and its files' size,
 * mtime and sha256 are compared before and after.
 */
const MiB = 1 << 20;
const logged: string[] = [];
const log: Logger = { ...silentLogger, info: (m) => logged.push(m), warn: (m) => logged.push(m) };
const dockerOk = async (): Promise<Check[]> => [{ name: 'docker', ok: true, forFiles: false, detail: 'ok' }];
let dir: string;
let share: string; // where the admin writes
let ro: string; // what clients see
let mounted = false;
let layoutDir: string;

const opts = (target: string, extra: Partial<InstallOptions> = {}): InstallOptions => ({
  ref: `oci-layout:${layoutDir}:v1`,
  dir: target,
  update: false,
  storeOptions: {},
  bind: '127.0.0.1',
  rdpPort: 3389,
  webPort: 8006,
  ram: '4G',
  cpus: 2,
  name: 'orb-windows',
  concurrency: 4,
  prepareOnly: true,
  keepPrevious: true,
  start: false,
  headroom: 1 << 20,
  log,
  progress: () => nullProgress,
  runtimeChecks: dockerOk,
  baseDir: ro,
  ...extra,
});

function fingerprint(d: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of readdirSync(d).sort()) {
    const st = statSync(join(d, n));
    out[n] =
      `${st.size} ${st.mtimeMs} ${execFileSync('sha256sum', [join(d, n)], { encoding: 'utf8' }).split(' ')[0]}`;
  }
  return out;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-shared-'));
  share = join(dir, 'share');
  ro = join(dir, 'share-ro');
  mkdirSync(share);
  mkdirSync(ro);
  makeDisk(join(dir, 'v1.raw'), { size: 12 * MiB, chunkSize: MiB, random: true });
  layoutDir = join(dir, 'layout');
  await buildLayout(join(dir, 'v1.raw'), layoutDir, 'v1', MiB);
  // the admin, once: orb pull REF --output SHARE/win11.img --manifest SHARE/win11.img.orb.json
  await pull({
    source: new LayoutStore(layoutDir),
    ref: 'v1',
    display: 'v1',
    output: join(share, 'win11.img'),
    format: 'auto',
    concurrency: 2,
    manifestPath: join(share, 'win11.img.orb.json'),
    log: silentLogger,
    progress: () => nullProgress,
  });
  try {
    execFileSync('mount', ['--bind', share, ro], { stdio: 'ignore' });
    execFileSync('mount', ['-o', 'remount,ro,bind', ro], { stdio: 'ignore' });
    mounted = true;
  } catch {
    // not root: the same path, made read-only by permissions
    rmSync(ro, { recursive: true });
    ro = share;
    execFileSync('chmod', ['a-w', share, join(share, 'win11.img'), join(share, 'win11.img.orb.json')]);
  }
});

afterAll(() => {
  if (mounted) execFileSync('umount', [ro]);
  if (dir) {
    execFileSync('chmod', ['-R', 'u+w', dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('orb install --base-dir (shared base on a read-only share)', () => {
  it('keeps only an overlay backed by the absolute path on the share, and never writes to it', async () => {
    const before = fingerprint(ro);
    const target = join(dir, 'client1');
    const r = await install(opts(target));
    expect(r.bytesDownloaded).toBe(0);
    expect(r.base).toBe(join(ro, 'win11.img'));
    expect(readdirSync(join(target, 'images'))).toEqual([]);
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', '-U', r.overlay], { encoding: 'utf8' }),
    ) as Record<string, string>;
    expect(info['backing-filename']).toBe(join(ro, 'win11.img'));
    expect(info['backing-filename-format']).toBe('raw');
    // the overlay reads through to the golden disk
    execFileSync('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'raw', r.overlay, join(dir, 'v1.raw')]);
    const compose = parse(readFileSync(r.compose, 'utf8')) as {
      services: { windows: { volumes: string[] } };
    };
    expect(compose.services.windows.volumes).toContain(`${ro}:${ro}:ro`);
    expect(logged.join('\n')).toMatch(/9 of 9 chunks and 3 empty ranges match/);
    // a rerun keeps the overlay; a second client shares the same base
    await install(opts(target));
    await install(opts(join(dir, 'client2'), { verifyBase: 'full' }));
    expect(logged.join('\n')).toMatch(/whole disk verified/);
    expect(fingerprint(ro)).toEqual(before);
    if (mounted) expect(() => execFileSync('touch', [join(ro, 'x')], { stdio: 'ignore' })).toThrow();
  });

  it('--update moves a client to the next version on the share; the old base stays untouched', async () => {
    makeDisk(join(dir, 'v2.raw'), {
      size: 12 * MiB,
      chunkSize: MiB,
      random: true,
      seed: (i) => (i === 4 ? 99 : i + 1),
    });
    await buildLayout(join(dir, 'v2.raw'), layoutDir, 'v2', MiB);
    // the admin adds v2 beside v1 (written through the writable path; clients see the read-only one)
    await pull({
      source: new LayoutStore(layoutDir),
      ref: 'v2',
      display: 'v2',
      output: join(share, 'win11-v2.img'),
      format: 'auto',
      concurrency: 2,
      manifestPath: join(share, 'win11-v2.img.orb.json'),
      log: silentLogger,
      progress: () => nullProgress,
    });
    const v1 = fingerprint(ro)['win11.img'];
    const target = join(dir, 'client1');
    const r = await install(
      opts(target, { ref: `oci-layout:${layoutDir}:v2`, update: true, keepPrevious: false }),
    );
    expect(r.base).toBe(join(ro, 'win11-v2.img'));
    expect(r.bytesDownloaded).toBe(0);
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', '-U', r.overlay], { encoding: 'utf8' }),
    ) as Record<string, string>;
    expect(info['backing-filename']).toBe(join(ro, 'win11-v2.img'));
    execFileSync('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'raw', r.overlay, join(dir, 'v2.raw')]);
    // --no-keep-previous removes only what is ours: the v1 base on the share is still there
    expect(fingerprint(ro)['win11.img']).toBe(v1);
  });

  it('refuses a disk the copied manifest does not describe (sampled chunks), and a truncated one', async () => {
    const bad = join(dir, 'bad');
    mkdirSync(bad);
    makeDisk(join(bad, 'win11.img'), { size: 12 * MiB, chunkSize: MiB, random: true, seed: (i) => i + 77 });
    copyFileSync(join(share, 'win11.img.orb.json'), join(bad, 'win11.img.orb.json'));
    await expect(install(opts(join(dir, 'c3'), { baseDir: bad }))).rejects.toThrow(
      /is not this image: the chunk at offset 0 differs/,
    );
    execFileSync('truncate', ['-s', String(8 * MiB), join(bad, 'win11.img')]);
    await expect(install(opts(join(dir, 'c4'), { baseDir: bad }))).rejects.toThrow(
      /it has 8388608 bytes, the image 12582912/,
    );
  });

  it('full verification catches a single changed chunk', async () => {
    const one = join(dir, 'one');
    mkdirSync(one);
    copyFileSync(join(share, 'win11.img'), join(one, 'win11.img'));
    copyFileSync(join(share, 'win11.img.orb.json'), join(one, 'win11.img.orb.json'));
    execFileSync(
      'dd',
      [
        'if=/dev/zero',
        `of=${join(one, 'win11.img')}`,
        'bs=1',
        'count=1',
        `seek=${5 * MiB + 3}`,
        'conv=notrunc',
      ],
      {
        stdio: 'ignore',
      },
    );
    await expect(install(opts(join(dir, 'c5'), { baseDir: one, verifyBase: 'full' }))).rejects.toThrow(
      /its sha256 is/,
    );
  });

  it('the documented commands through the CLI: orb pull to the share, orb install --base-dir', async () => {
    const cliShare = join(dir, 'cli-share');
    const img = join(cliShare, 'win11.img');
    const p = await orb([
      'pull',
      `oci-layout:${layoutDir}:v1`,
      '--output',
      img,
      '--manifest',
      `${img}.orb.json`,
    ]);
    expect(p.code, p.stderr).toBe(0);
    const target = join(dir, 'cli-client');
    const r = await orb([
      'install',
      `oci-layout:${layoutDir}:v1`,
      '--dir',
      target,
      '--base-dir',
      cliShare,
      '--verify-base',
      'full',
      '--prepare-only',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({ base: img, 'bytes-downloaded': 0 });
    expect(readdirSync(join(target, 'images'))).toEqual([]);
  });

  it('says how to fill the share when no disk there is this image', async () => {
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    const err = (await install(opts(join(dir, 'c6'), { baseDir: empty })).catch((e: unknown) => e)) as {
      message: string;
      hint: string;
    };
    expect(err.message).toMatch(/no disk in .* is this image/);
    expect(err.hint).toMatch(/orb pull REF --output .*NAME\.img --manifest .*NAME\.img\.orb\.json/);
  });
});
