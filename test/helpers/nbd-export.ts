import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/log.js';
import { startNbdServer, type ExportSource } from '../../src/serve/nbd-server.js';

/**
 * The NBD server tests' disk and clients: a sparse file with random data, a byte pattern qemu-io
 * can check, holes and an unaligned run; an ExportSource over it whose reads can be slowed, made
 * to fail or to hang; and a client speaking raw bytes for what no real client sends.
 */
export const run = promisify(execFile);
export const MiB = 1 << 20;
export const SIZE = 48 * MiB;
export const PATTERN = 0xab;

type Kind = 'random' | 'pattern' | 'hole';
/** The test disk: data, a byte pattern qemu-io can check, holes, and one unaligned data run. */
export const LAYOUT: { start: number; length: number; kind: Kind }[] = [
  { start: 0, length: 4 * MiB, kind: 'random' },
  { start: 4 * MiB, length: 8 * MiB, kind: 'hole' },
  { start: 12 * MiB, length: 1 * MiB, kind: 'pattern' },
  { start: 13 * MiB, length: 7 * MiB, kind: 'hole' },
  { start: 20 * MiB, length: 8 * MiB, kind: 'random' },
  { start: 28 * MiB, length: 2 * MiB + 1234, kind: 'hole' },
  { start: 30 * MiB + 1234, length: 5000, kind: 'random' },
  { start: 30 * MiB + 6234, length: 10 * MiB - 6234, kind: 'hole' },
  { start: 40 * MiB, length: 7 * MiB, kind: 'random' },
  { start: 47 * MiB, length: 1 * MiB, kind: 'hole' },
];

/** Filled in by useTestDisk's beforeAll. */
export interface TestDisk {
  dir: string;
  path: string;
  sha256: string;
  fh: FileHandle;
}

/** Creates the disk before the file's tests and removes it after. */
export function useTestDisk(): TestDisk {
  const disk = {} as TestDisk;
  beforeAll(async () => {
    disk.dir = await mkdtemp(join(tmpdir(), 'orb-nbd-'));
    disk.path = join(disk.dir, 'disk.raw');
    const f = await open(disk.path, 'w');
    for (const e of LAYOUT) {
      if (e.kind === 'hole') continue;
      const data = e.kind === 'random' ? randomBytes(e.length) : Buffer.alloc(e.length, PATTERN);
      await f.write(data, 0, data.length, e.start);
    }
    await f.truncate(SIZE);
    await f.close();
    disk.sha256 = await sha256(disk.path);
    disk.fh = await open(disk.path, 'r');
  });
  afterAll(async () => {
    await disk.fh?.close();
    if (disk.dir) await rm(disk.dir, { recursive: true, force: true });
  });
  return disk;
}

export interface TestSource extends ExportSource {
  reads: number;
  /** Reads overlapping [start, end) reject this many more times. */
  failing: { start: number; end: number; left: number };
  delayMs: (offset: number) => number;
  hang: boolean;
}

export function fileSource(disk: TestDisk): TestSource {
  const src: TestSource = {
    size: SIZE,
    reads: 0,
    failing: { start: 0, end: 0, left: 0 },
    delayMs: () => 0,
    hang: false,
    async read(offset, length, signal) {
      src.reads++;
      if (src.hang)
        await new Promise((_, reject) =>
          signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }),
        );
      const wait = src.delayMs(offset);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const f = src.failing;
      if (f.left > 0 && offset < f.end && offset + length > f.start) {
        f.left--;
        throw new OrbError('network', 'the store did not answer (test)');
      }
      const buf = Buffer.alloc(length);
      await disk.fh.read(buf, 0, length, offset);
      return buf;
    },
    async status(offset, length) {
      const out: { length: number; zero: boolean }[] = [];
      for (const e of LAYOUT) {
        const end = e.start + e.length;
        if (end <= offset || e.start >= offset + length) continue;
        out.push({ length: end - Math.max(offset, e.start), zero: e.kind === 'hole' });
      }
      return out;
    },
  };
  return src;
}

export function captureLog(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  return {
    warnings,
    info() {},
    debug() {},
    error: (m) => warnings.push(`error: ${m}`),
    warn: (m) => warnings.push(m),
  };
}

export async function serve(
  disk: TestDisk,
  source: ExportSource,
  name = 'disk',
  extra: { socket?: string } = {},
) {
  const log = captureLog();
  const sockDir = await mkdtemp(join(disk.dir, 's'));
  const server = await startNbdServer({
    source,
    exportName: name,
    socket: extra.socket ?? join(sockDir, 'nbd.sock'),
    log,
  });
  return { server, log, socket: (server.address as { socket: string }).socket };
}

export const sha256 = async (path: string): Promise<string> =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

/** nbdinfo --map as [offset, length, type] rows. */
export async function nbdMap(uri: string): Promise<[number, number, number][]> {
  const { stdout } = await run('nbdinfo', ['--map', uri], { timeout: 60_000 });
  return stdout
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number) as [number, number, number]);
}

export function expectedMap(): [number, number, number][] {
  const rows: [number, number, number][] = [];
  for (const e of LAYOUT) {
    const type = e.kind === 'hole' ? 3 : 0;
    const last = rows[rows.length - 1];
    if (last && last[2] === type) last[1] += e.length;
    else rows.push([e.start, e.length, type]);
  }
  return rows;
}

/** A client speaking raw bytes: handshake with GO on the default export, simple replies. */
export async function rawClient(socket: string) {
  const sock: Socket = connect(socket);
  let rx = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | undefined;
  sock.on('data', (d: Buffer) => {
    rx = Buffer.concat([rx, d]);
    wake?.();
  });
  sock.on('close', () => {
    closed = true;
    wake?.();
  });
  sock.on('error', () => {});
  const read = async (n: number): Promise<Buffer> => {
    while (rx.length < n) {
      if (closed) throw new Error('closed');
      await new Promise<void>((r) => (wake = r));
    }
    const out = rx.subarray(0, n);
    rx = rx.subarray(n);
    return out;
  };
  const option = (opt: number, data: Buffer = Buffer.alloc(0)): void => {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    sock.write(Buffer.concat([h, data]));
  };
  /** One option reply: [type, data]. */
  const reply = async (): Promise<[number, Buffer]> => {
    const h = await read(20);
    return [h.readUInt32BE(12), await read(h.readUInt32BE(16))];
  };
  const request = (type: number, offset: number, length: number, payload = Buffer.alloc(0)): void => {
    const r = Buffer.alloc(28);
    r.writeUInt32BE(0x25609513, 0);
    r.writeUInt16BE(type, 6);
    r.writeBigUInt64BE(BigInt(type * 1000 + 7), 8);
    r.writeBigUInt64BE(BigInt(offset), 16);
    r.writeUInt32BE(length, 24);
    sock.write(Buffer.concat([r, payload]));
  };
  /** A simple reply's error. */
  const simple = async (): Promise<number> => (await read(16)).readUInt32BE(4);
  await read(18);
  sock.write(Buffer.from([0, 0, 0, 3]));
  return { sock, read, option, reply, request, simple, isClosed: () => closed };
}
