import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import { BLOCK_SIZE } from '../../src/formats/disk-index.js';
import '../../src/stores/schemes.js';
import { openStore } from '../../src/stores/open.js';
import { NODE, ROOT } from '../helpers/cli.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { pattern } from '../helpers/oci-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { buildV2Layout, pushV2, type V2Image } from '../helpers/v2-layout.js';

/**
 * `orb serve` end to end: the bundle serves a chunked v2 image from an oci-layout and from the
 * docker-registry (through a counting fault proxy), and real NBD clients read it: qemu-img and
 * qemu-io over nbd+unix, nbdinfo and nbdcopy from libnbd.
 */
const run = promisify(execFile);
const B = BLOCK_SIZE;
const MiB = 1 << 20;

let root: string;
let disk: Buffer;
let image: V2Image;
let reg: Registry;
let proxy: FaultProxy;
const children = new Set<ChildProcess>();

function makeDisk(): Buffer {
  const d = Buffer.alloc(24 * MiB);
  pattern(3, 4 * MiB, true).copy(d, 0);
  randomBytes(6 * MiB).copy(d, 8 * MiB);
  for (let b = 14 * MiB; b < 24 * MiB; b += 5 * B) pattern(b, 2 * B, true).copy(d, b);
  return d;
}

interface Served {
  child: ChildProcess;
  ready: Record<string, unknown>;
  uri: string;
  stderr(): string;
  stop(
    signal?: NodeJS.Signals,
  ): Promise<{ ms: number; code: number | null; result?: Record<string, unknown> }>;
}

async function serve(args: string[]): Promise<Served> {
  const child = spawn(NODE, [join(ROOT, 'bin/orb.js'), 'serve', ...args, '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) =>
    child.on('exit', (code) => (children.delete(child), r(code))),
  );
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`orb serve not ready in 60 s: ${err}`)), 60_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0 && timer.hasRef()) {
        clearTimeout(timer);
        timer.unref();
        resolve(JSON.parse(out.slice(0, nl)) as Record<string, unknown>);
      }
    });
    void exited.then((code) => reject(new Error(`orb serve exited with ${code}: ${err}`)));
  });
  const socket = ready.socket as string;
  return {
    child,
    ready,
    uri: `nbd+unix:///disk?socket=${socket}`,
    stderr: () => err,
    async stop(signal = 'SIGTERM') {
      const t0 = Date.now();
      child.kill(signal);
      const code = await exited;
      const lines = out.trim().split('\n');
      const last =
        lines.length > 1 ? (JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>) : undefined;
      return { ms: Date.now() - t0, code, ...(last ? { result: last } : {}) };
    },
  };
}

/** Bytes [offset, offset + length) read by qemu-img through the NBD export. */
async function qemuRead(s: Served, offset: number, length: number): Promise<Buffer> {
  const out = join(root, `r${randomBytes(4).toString('hex')}.raw`);
  const sock = s.ready.socket as string;
  await run('qemu-img', [
    'convert',
    '--image-opts',
    `driver=raw,offset=${offset},size=${length},file.driver=nbd,file.server.type=unix,file.server.path=${sock},file.export=disk`,
    '-O',
    'raw',
    out,
  ]);
  const got = readFileSync(out);
  rmSync(out);
  return got;
}

/** Sum of the byte ranges the proxy saw asked of pack blobs. */
function rangeBytes(from = 0): number {
  let n = 0;
  for (const e of proxy.log.slice(from)) {
    const m = /bytes=(\d+)-(\d+)/.exec(String(e.headers.range ?? ''));
    if (e.method === 'GET' && /\/blobs\//.test(e.url) && m) n += Number(m[2]) - Number(m[1]) + 1;
  }
  return n;
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'orb-serve-'));
  disk = makeDisk();
  image = await buildV2Layout(disk, join(root, 'layout'), 'v1', { packSize: 4 * MiB });
  reg = await startRegistry();
  proxy = await startFaultProxy(reg.url);
  const opened = await openStore(`oci://${reg.host}/serve/disk:v1`, { log: silentLogger, options: {} });
  await pushV2(image, opened.store, 'v1');
  await opened.store.close?.();
}, 120_000);

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await proxy?.stop();
  await reg?.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('orb serve', () => {
  it('serves an oci-layout image to qemu-img, qemu-io, nbdinfo and nbdcopy', async () => {
    const cache = join(root, 'layout-cache', 'disk.raw');
    const s = await serve([`oci-layout:${image.dir}:v1`, '--cache', cache, '--no-fill']);
    expect(s.ready).toMatchObject({ export: 'disk', 'virtual-size': disk.length, socket: `${cache}.sock` });
    for (const [off, len] of [
      [0, 64 * 1024],
      [3 * MiB + 512, 1 * MiB],
      [9 * MiB, 512 * 1024],
      [23 * MiB, MiB],
    ] as const)
      expect((await qemuRead(s, off, len)).equals(disk.subarray(off, off + len)), `${off}+${len}`).toBe(true);
    // a zero region reads as zeros (qemu-io checks the pattern) and is reported as a hole
    const io = await run('qemu-io', ['-r', '-f', 'raw', s.uri, '-c', `read -P 0 ${5 * MiB} ${2 * MiB}`]);
    expect(io.stdout).toContain(`read ${2 * MiB}/${2 * MiB} bytes at offset ${5 * MiB}`);
    const map = await run('nbdinfo', ['--map', s.uri]);
    expect(map.stdout).toMatch(new RegExp(`^\\s*${4 * MiB}\\s+${4 * MiB}\\s+3\\s+hole,zero`, 'm'));
    // a full read equals the original
    const out = join(root, 'copy.raw');
    await run('nbdcopy', [s.uri, out]);
    expect(readFileSync(out).equals(disk)).toBe(true);
    const stop = await s.stop();
    expect(stop.ms).toBeLessThan(2000);
    expect(stop.result).toMatchObject({ complete: true });
    expect(readFileSync(cache).equals(disk)).toBe(true);
  }, 120_000);

  it('fetches from a registry only the frames the reads need', async () => {
    const cache = join(root, 'reg-cache', 'disk.raw');
    const from = proxy.log.length;
    const s = await serve([`oci://${proxy.host}/serve/disk:v1`, '--cache', cache, '--no-fill']);
    const ranges = [
      [0, 64 * 1024],
      [2 * MiB, 256 * 1024],
      [20 * MiB, 128 * 1024],
    ] as const;
    for (const [off, len] of ranges)
      expect((await qemuRead(s, off, len)).equals(disk.subarray(off, off + len))).toBe(true);
    const stop = await s.stop();
    const fetched = stop.result?.['bytes-fetched'] as number;
    expect(fetched).toBe(rangeBytes(from));
    // each read's blocks sit in at most two 8-block frames at its edges plus the frames inside
    const idx = image.index;
    let bound = 0;
    const frames = new Set<number>();
    for (const [off, len] of ranges)
      for (let e = 0; e < idx.entryCount; e++) {
        const b = idx.entryBlock[e]!;
        if (b >= Math.floor(off / B) && b < Math.ceil((off + len) / B)) frames.add(idx.entryFrame[e]!);
      }
    for (const f of frames) bound += idx.frameLength[f]!;
    expect(fetched).toBeLessThanOrEqual(bound + 3 * (32 << 10));
    expect(fetched).toBeLessThan(image.packBytes / 10);
    expect(stop.result).toMatchObject({ complete: false });
  }, 120_000);

  it('resumes the fill after a stop and after being killed mid-fill, and ends with the whole disk', async () => {
    const cache = join(root, 'resume-cache', 'disk.raw');
    const ref = `oci://${proxy.host}/serve/disk:v1`;
    const first = proxy.log.length;
    // stopped (SIGTERM) mid-fill: within 2 s, the state saved on the way out
    const s1 = await serve([ref, '--cache', cache, '--limit-rate', String(MiB)]);
    await new Promise((r) => setTimeout(r, 2000));
    const stop1 = await s1.stop();
    expect(stop1.ms).toBeLessThan(2000);
    expect(stop1.result).toMatchObject({ complete: false, cache: `${cache}.partial` });
    const firstBytes = rangeBytes(first);
    expect(stop1.result?.['bytes-fetched']).toBe(firstBytes);
    expect(firstBytes).toBeGreaterThan(0);
    // killed (SIGKILL) mid-fill: only what the last bitmap flush recorded counts as local
    const second = proxy.log.length;
    const s2 = await serve([ref, '--cache', cache, '--limit-rate', String(MiB)]);
    expect(s2.stderr()).toContain('resuming');
    await new Promise((r) => setTimeout(r, 4500));
    await s2.stop('SIGKILL');
    const secondBytes = rangeBytes(second);
    expect(firstBytes + secondBytes).toBeLessThan(image.packBytes);
    const third = proxy.log.length;
    const s3 = await serve([ref, '--cache', cache]);
    expect(s3.stderr()).toContain('resuming');
    for (let i = 0; i < 300 && !existsSync(cache); i++) await new Promise((r) => setTimeout(r, 100));
    const stop3 = await s3.stop();
    expect(stop3.result).toMatchObject({ complete: true, cache });
    expect(readFileSync(cache).equals(disk)).toBe(true);
    // nothing recorded before was fetched again; the kill lost at most its last seconds
    const thirdBytes = rangeBytes(third);
    expect(firstBytes + thirdBytes).toBeLessThanOrEqual(image.packBytes);
    expect(thirdBytes).toBeLessThan(image.packBytes - firstBytes - secondBytes / 3);
    console.log(
      `resume: ${firstBytes} + ${secondBytes} (killed) + ${thirdBytes} bytes fetched for ${image.packBytes} in packs`,
    );
  }, 120_000);

  it('never serves corrupted pack bytes: the read fails, later reads succeed', async () => {
    const cache = join(root, 'bad-cache', 'disk.raw');
    const rule = proxy.add({
      method: 'GET',
      header: 'range',
      path: /\/blobs\//,
      action: { type: 'flip', offset: 40 },
    });
    const s = await serve([`oci://${proxy.host}/serve/disk:v1`, '--cache', cache, '--no-fill']);
    const bad = await qemuRead(s, 9 * MiB, 64 * 1024).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(Error);
    expect(s.stderr()).toMatch(/does not (match|decompress)|declares|frame/);
    expect(s.stderr()).toContain('I/O error');
    proxy.remove(rule);
    expect((await qemuRead(s, 9 * MiB, 64 * 1024)).equals(disk.subarray(9 * MiB, 9 * MiB + 64 * 1024))).toBe(
      true,
    );
    await s.stop();
  }, 120_000);
});
