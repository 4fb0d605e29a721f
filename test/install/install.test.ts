import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { install, type InstallOptions } from '../../src/install/install.js';
import type { Check } from '../../src/install/prereq.js';
import { parseS3Ref, S3Store } from '../../src/stores/s3.js';
import { publish } from '../../src/transfer/publish.js';
import { buildLayout, makeDisk } from '../helpers/oci-images.js';
import { startS3rver, type S3Server } from '../helpers/s3rver.js';

const CHUNK = 1 << 20;
let dir: string;
let s3: S3Server;
let sum1: string;
let sum2: string;
const warnings: string[] = [];
const logged: string[] = [];
const log: Logger = {
  ...silentLogger,
  info: (m) => logged.push(m),
  warn: (m) => (warnings.push(m), logged.push(m)),
};
const noDocker = async (): Promise<Check[]> => [
  {
    name: 'docker',
    ok: false,
    forFiles: false,
    detail: 'docker is not installed',
    fix: 'install Docker Engine',
  },
  { name: 'kvm', ok: true, forFiles: false, detail: '/dev/kvm is usable' },
];
const allGood = async (): Promise<Check[]> => [
  { name: 'docker', ok: true, forFiles: false, detail: 'Docker Engine 27' },
];

/** A chunked (v2) layout as `orb convert` writes it, with the build record of a Windows image. */
async function windowsLayout(raw: string, out: string, tag: string): Promise<string> {
  await buildLayout(raw, out, tag, 4 * CHUNK, {
    os: 'windows',
    arch: 'x86_64',
    firmware: 'uefi',
    adminUser: 'Operator',
    diskInterface: 'virtio',
  });
  return out;
}

function opts(ref: string, target: string, extra: Partial<InstallOptions> = {}): InstallOptions {
  return {
    ref,
    dir: target,
    update: false,
    storeOptions: { 's3-endpoint': s3.endpoint, 's3-path-style': true },
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
    runtimeChecks: noDocker,
    ...extra,
  };
}

const qemuInfo = (p: string) =>
  JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', p], { encoding: 'utf8' })) as Record<
    string,
    unknown
  >;
const compose = (target: string) =>
  parse(readFileSync(join(target, 'docker-compose.yml'), 'utf8')) as {
    name: string;
    services: {
      windows: Record<string, unknown> & {
        environment: Record<string, string>;
        ports: string[];
        volumes: string[];
        env_file?: string[];
      };
    };
  };

beforeAll(async () => {
  process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
  process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
  dir = mkdtempSync(join(tmpdir(), 'orb-install-'));
  s3 = await startS3rver();
  // 24 MiB disks with data from the first byte (dockur looks for data in the first 100 KiB)
  sum1 = makeDisk(join(dir, 'v1.raw'), {
    size: 24 * CHUNK,
    chunkSize: CHUNK,
    random: true,
    data: (i) => i % 5 !== 4,
  });
  sum2 = makeDisk(join(dir, 'v2.raw'), {
    size: 24 * CHUNK,
    chunkSize: CHUNK,
    random: true,
    data: (i) => i % 5 !== 4,
    seed: (i) => (i === 7 ? 4242 : i + 1),
  });
  await windowsLayout(join(dir, 'v1.raw'), join(dir, 'layout'), 'v1');
  await windowsLayout(join(dir, 'v2.raw'), join(dir, 'layout'), 'v2');
  const target = new S3Store(parseS3Ref(`s3://${s3.bucket}/win11`), {
    endpoint: s3.endpoint,
    pathStyle: true,
    log: silentLogger,
  });
  await publish({
    source: `oci-layout:${join(dir, 'layout')}:v1`,
    target,
    tags: ['v1'],
    concurrency: 4,
    partSize: 1 << 30,
    log: silentLogger,
    progress: () => nullProgress,
  });
});
afterAll(async () => {
  await s3?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('orb install', () => {
  it('refuses before downloading anything when Docker is missing, naming the fix', async () => {
    const target = join(dir, 'refused');
    const err = await install(opts(`s3://${s3.bucket}/win11:v1`, target, { prepareOnly: false })).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(String(err)).toMatch(/not ready: docker/);
    expect((err as { hint?: string }).hint).toMatch(/install Docker Engine/);
    expect(existsSync(join(target, 'images'))).toBe(false);
  });

  it('refuses when the disk cannot hold the image', async () => {
    const err = await install(
      opts(`s3://${s3.bucket}/win11:v1`, join(dir, 'full'), { headroom: 2 ** 52 }),
    ).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(String(err)).toMatch(/not ready: disk/);
  });

  it('pulls from S3, creates the overlay on the read-only base and writes the compose file', async () => {
    const target = join(dir, 'client');
    warnings.length = 0;
    const r = await install(opts(`s3://${s3.bucket}/win11:v1`, target));
    // the base: verified, byte-identical, read-only
    expect(await sha256File(r.base)).toBe(sum1);
    expect(statSync(r.base).mode & 0o777).toBe(0o444);
    // the overlay: qcow2 backed by the base through a relative path (same inside the container)
    const info = qemuInfo(r.overlay);
    expect(info['format']).toBe('qcow2');
    expect(info['backing-filename']).toBe(`../images/base-${r.digest.slice(7, 19)}.img`);
    expect(info['backing-filename-format']).toBe('raw');
    expect(resolve(String(info['full-backing-filename']))).toBe(r.base);
    execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', r.overlay, r.base]);
    // dockur state: boot the installed disk (UEFI, virtio-blk), never reinstall
    expect(readFileSync(join(target, 'storage', 'windows.boot'), 'utf8')).toBe('');
    expect(readFileSync(join(target, 'storage', 'windows.mode'), 'utf8').trim()).toBe('windows');
    expect(readFileSync(join(target, 'storage', 'windows.type'), 'utf8').trim()).toBe('blk');
    expect(existsSync(join(target, 'storage', 'windows.base'))).toBe(false);
    // the compose file: valid YAML with the chosen values, ports on loopback
    const c = compose(target);
    const w = c.services.windows;
    expect(c.name).toBe('orb-windows');
    expect(w['image']).toBe('dockurr/windows');
    expect(w.environment).toMatchObject({
      DISK_FMT: 'qcow2',
      DISK_SIZE: '24M',
      DISK_TYPE: 'blk',
      RAM_SIZE: '4G',
      CPU_CORES: '2',
    });
    expect(w.ports).toEqual(['127.0.0.1:8006:8006', '127.0.0.1:3389:3389/tcp', '127.0.0.1:3389:3389/udp']);
    expect(w.volumes).toEqual(['./storage:/storage', './images:/images:ro']);
    expect(w['devices']).toEqual(['/dev/kvm', '/dev/net/tun']);
    expect(w.env_file).toBeUndefined();
    expect(r.adminUser).toBe('Operator');
    expect(r.rdp).toBe('127.0.0.1:3389');
    expect(warnings.join('\n')).toMatch(/docker: docker is not installed/);
    const state = JSON.parse(readFileSync(join(target, 'install.json'), 'utf8')) as {
      digest: string;
      reference: string;
    };
    expect(state.digest).toBe(r.digest);
  });

  it('keeps the client overlay on a rerun and applies new settings', async () => {
    const target = join(dir, 'client');
    const overlay = join(target, 'storage', 'data.qcow2');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 64k', overlay]);
    logged.length = 0;
    const r = await install(
      opts(`s3://${s3.bucket}/win11:v1`, target, {
        rdpPort: 13389,
        webPort: 18006,
        ram: '8G',
        cpus: 4,
        adminPassword: "s3cr'et-Pa55",
      }),
    );
    expect(r.bytesDownloaded).toBe(0);
    expect(
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xab 0 64k', overlay], { encoding: 'utf8' }),
    ).toMatch(/read 65536/);
    const w = compose(target).services.windows;
    expect(w.ports).toEqual(['127.0.0.1:18006:8006', '127.0.0.1:13389:3389/tcp', '127.0.0.1:13389:3389/udp']);
    expect(w.environment).toMatchObject({ RAM_SIZE: '8G', CPU_CORES: '4' });
    // the password: in a private env file, referenced, never in the compose file or the logs
    expect(w.env_file).toEqual(['./windows.env']);
    const env = join(target, 'windows.env');
    expect(statSync(env).mode & 0o777).toBe(0o600);
    expect(readFileSync(env, 'utf8')).toContain("PASSWORD='s3cr\\'et-Pa55'");
    expect(readFileSync(env, 'utf8')).toContain("USERNAME='Operator'");
    expect(readFileSync(join(target, 'docker-compose.yml'), 'utf8')).not.toContain('s3cr');
    expect(logged.join('\n')).not.toContain('s3cr');
  });

  it('does not install another image over an installation without --update', async () => {
    await expect(install(opts(`oci-layout:${join(dir, 'layout')}:v2`, join(dir, 'client')))).rejects.toThrow(
      /already holds s3:\/\/.*:v1/,
    );
  });

  it('refuses --update while Windows runs (the overlay is locked)', async () => {
    const target = join(dir, 'client');
    const holder = spawn('qemu-io', ['-f', 'qcow2', join(target, 'storage', 'data.qcow2')], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    try {
      await new Promise((r) => setTimeout(r, 500));
      await expect(
        install(
          opts(`oci-layout:${join(dir, 'layout')}:v2`, target, { update: true, runtimeChecks: allGood }),
        ),
      ).rejects.toThrow(/in use: Windows is running/);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('--update downloads only the changed chunks and keeps the old overlay', async () => {
    const target = join(dir, 'client');
    const before = JSON.parse(readFileSync(join(target, 'install.json'), 'utf8')) as {
      digest: string;
      base: string;
    };
    const r = await install(
      opts(`oci-layout:${join(dir, 'layout')}:v2`, target, { update: true, runtimeChecks: allGood }),
    );
    expect(await sha256File(r.base)).toBe(sum2);
    expect(r.updatedFrom).toBe(before.digest);
    expect(r.bytesReused).toBeGreaterThan(15 * CHUNK);
    expect(r.bytesReused).toBeGreaterThan(r.bytesDownloaded * 10);
    // a fresh overlay on the new base
    expect(resolve(String(qemuInfo(r.overlay)['full-backing-filename']))).toBe(r.base);
    // the old overlay, with this client's write, still opens on the old base
    const prev = join(r.previousDir!, 'data.qcow2');
    expect(resolve(String(qemuInfo(prev)['full-backing-filename']))).toBe(join(target, before.base));
    expect(
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xab 0 64k', prev], { encoding: 'utf8' }),
    ).toMatch(/read 65536/);
    expect(existsSync(join(target, before.base))).toBe(true);
  });

  it('--update --no-keep-previous drops the previous version once the new one is in place', async () => {
    const target = join(dir, 'client2');
    await install(opts(`oci-layout:${join(dir, 'layout')}:v1`, target));
    const old = JSON.parse(readFileSync(join(target, 'install.json'), 'utf8')) as { base: string };
    const r = await install(
      opts(`oci-layout:${join(dir, 'layout')}:v2`, target, { update: true, keepPrevious: false }),
    );
    expect(existsSync(join(target, old.base))).toBe(false);
    expect(r.previousDir).toBeUndefined();
    expect(existsSync(join(target, 'previous'))).toBe(false);
    expect(await sha256File(r.base)).toBe(sum2);
  });
});
