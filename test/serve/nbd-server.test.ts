import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError, UsageError } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/log.js';
import { NbdClient } from '../../src/image/nbd.js';
import { allocationDescriptors } from '../../src/serve/nbd-protocol.js';
import { startNbdServer, type ExportSource, type NbdServer } from '../../src/serve/nbd-server.js';

/**
 * The NBD server against the clients users have: QEMU's qemu-img and qemu-io (qemu-utils) and
 * libnbd's nbdinfo and nbdcopy (libnbd-bin), plus our own client (src/image/nbd.ts) and raw bytes
 * for what no real client sends (oversized or read-only-violating requests).
 */
const run = promisify(execFile);
const MiB = 1 << 20;
const SIZE = 48 * MiB;
const PATTERN = 0xab;

type Kind = 'random' | 'pattern' | 'hole';
/** The test disk: data, a byte pattern qemu-io can check, holes, and one unaligned data run. */
const LAYOUT: { start: number; length: number; kind: Kind }[] = [
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

let dir: string;
let disk: string;
let diskSha: string;
let fh: FileHandle;

interface TestSource extends ExportSource {
  reads: number;
  /** Reads overlapping [start, end) reject this many more times. */
  failing: { start: number; end: number; left: number };
  delayMs: (offset: number) => number;
  hang: boolean;
}

function fileSource(): TestSource {
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
      await fh.read(buf, 0, length, offset);
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

function captureLog(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  return {
    warnings,
    info() {},
    debug() {},
    error: (m) => warnings.push(`error: ${m}`),
    warn: (m) => warnings.push(m),
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'orb-nbd-'));
  disk = join(dir, 'disk.raw');
  const f = await open(disk, 'w');
  for (const e of LAYOUT) {
    if (e.kind === 'hole') continue;
    const data = e.kind === 'random' ? randomBytes(e.length) : Buffer.alloc(e.length, PATTERN);
    await f.write(data, 0, data.length, e.start);
  }
  await f.truncate(SIZE);
  await f.close();
  diskSha = createHash('sha256')
    .update(await readFile(disk))
    .digest('hex');
  fh = await open(disk, 'r');
});

afterAll(async () => {
  await fh?.close();
  await rm(dir, { recursive: true, force: true });
});

async function serve(source: ExportSource, name = 'disk', extra: { socket?: string } = {}) {
  const log = captureLog();
  const sockDir = await mkdtemp(join(dir, 's'));
  const server = await startNbdServer({
    source,
    exportName: name,
    socket: extra.socket ?? join(sockDir, 'nbd.sock'),
    log,
  });
  return { server, log, socket: (server.address as { socket: string }).socket };
}

const sha256 = async (path: string): Promise<string> =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

/** nbdinfo --map as [offset, length, type] rows. */
async function nbdMap(uri: string): Promise<[number, number, number][]> {
  const { stdout } = await run('nbdinfo', ['--map', uri], { timeout: 60_000 });
  return stdout
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number) as [number, number, number]);
}

function expectedMap(): [number, number, number][] {
  const rows: [number, number, number][] = [];
  for (const e of LAYOUT) {
    const type = e.kind === 'hole' ? 3 : 0;
    const last = rows[rows.length - 1];
    if (last && last[2] === type) last[1] += e.length;
    else rows.push([e.start, e.length, type]);
  }
  return rows;
}

describe('NBD server: real clients over a Unix socket', () => {
  let server: NbdServer;
  let source: TestSource;
  let log: ReturnType<typeof captureLog>;
  let socket: string;
  const uri = (name = 'disk'): string => `nbd+unix:///${name}?socket=${socket}`;

  beforeAll(async () => {
    source = fileSource();
    ({ server, log, socket } = await serve(source));
  });
  afterAll(async () => {
    await server.close();
  });

  it('creates the socket with mode 0600 and gives its URI', () => {
    expect(statSync(socket).isSocket()).toBe(true);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    expect(server.uri).toBe(uri());
  });

  it('nbdinfo sees the size, the read-only flag and the holes', async () => {
    const { stdout } = await run('nbdinfo', ['--json', uri()], { timeout: 60_000 });
    const info = JSON.parse(stdout) as { exports: Record<string, unknown>[] };
    expect(info.exports[0]).toMatchObject({ 'export-name': 'disk', 'export-size': SIZE, is_read_only: true });
    expect(await nbdMap(uri())).toEqual(expectedMap());
    // the default export (empty name) is the same disk
    expect(await nbdMap(`nbd+unix:///?socket=${socket}`)).toEqual(expectedMap());
    const list = await run('nbdinfo', ['--list', '--json', uri('')], { timeout: 60_000 });
    expect(JSON.parse(list.stdout).exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual([
      'disk',
    ]);
  });

  it('qemu-img compare and nbdcopy find the export equal to the original', async () => {
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', disk, uri()], { timeout: 120_000 });
    const out = join(dir, 'copy.raw');
    await run('nbdcopy', [uri(), out], { timeout: 120_000 });
    expect(await sha256(out)).toBe(diskSha);
    await rm(out);
  });

  it('qemu-io reads patterned and zero ranges, at odd offsets too', async () => {
    const { stdout } = await run(
      'qemu-io',
      [
        '-r',
        '-f',
        'raw',
        '-c',
        `read -P ${PATTERN} ${12 * MiB} ${MiB}`,
        '-c',
        `read -P ${PATTERN} ${12 * MiB + 4097} 3333`,
        '-c',
        `read -P 0 ${5 * MiB} ${2 * MiB}`,
        '-c',
        `read -P 0 ${30 * MiB + 6234} 777`,
        uri(),
      ],
      { timeout: 60_000 },
    );
    expect(stdout).not.toMatch(/fail/i);
    expect(stdout.match(/^read \d+\/\d+ bytes at offset/gm)).toHaveLength(4);
  });

  it('two clients at once, each with reads in flight', async () => {
    source.delayMs = () => 2;
    const out = join(dir, 'copy2.raw');
    try {
      await Promise.all([
        run('nbdcopy', ['--connections=2', '--requests=8', uri(), out], { timeout: 120_000 }),
        run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', disk, uri()], { timeout: 120_000 }),
      ]);
    } finally {
      source.delayMs = () => 0;
    }
    expect(await sha256(out)).toBe(diskSha);
    expect(server.stats.peakConnections).toBeGreaterThanOrEqual(2);
    expect(server.stats.bytesServed).toBeGreaterThan(SIZE);
    await rm(out);
  });

  it('a failing source read is an I/O error for that request only, logged once', async () => {
    source.failing = { start: 20 * MiB, end: 20 * MiB + 4096, left: 2 };
    // qemu-io exits 1 when any command failed; what each one printed is the result
    const failed = await run(
      'qemu-io',
      [
        '-r',
        '-f',
        'raw',
        '-c',
        `read ${20 * MiB} 4096`,
        '-c',
        `read ${20 * MiB} 4096`,
        '-c',
        `read -P ${PATTERN} ${12 * MiB} 4096`,
        '-c',
        `read ${20 * MiB} 4096`,
        uri(),
      ],
      { timeout: 60_000 },
    ).then(
      () => undefined,
      (err: { stdout: string; stderr: string }) => err,
    );
    const stdout = `${failed?.stdout}${failed?.stderr}`;
    expect(stdout.match(/read failed: Input\/output error/g)).toHaveLength(2);
    expect(stdout.match(/^read 4096\/4096 bytes at offset/gm)).toHaveLength(2);
    const ours = log.warnings.filter((w) => w.includes('the store did not answer (test)'));
    expect(ours).toHaveLength(1);
  });

  it('replies complete out of order on one connection (our own client, simple replies)', async () => {
    // the first request is the slowest: its reply comes last
    source.delayMs = (offset) => (offset < MiB ? 80 : 0);
    const client = await NbdClient.connect(socket, 'disk');
    try {
      const offsets = [0, 20 * MiB, 21 * MiB, 40 * MiB + 77];
      const bufs = offsets.map(() => Buffer.alloc(64 << 10));
      const order: number[] = [];
      await Promise.all(offsets.map((o, i) => client.read(o, bufs[i]!).then(() => order.push(i))));
      expect(order[order.length - 1]).toBe(0);
      for (const [i, o] of offsets.entries()) {
        const want = Buffer.alloc(64 << 10);
        await fh.read(want, 0, want.length, o);
        expect(bufs[i]!.equals(want)).toBe(true);
      }
      await expect(client.read(SIZE - 10, Buffer.alloc(20))).rejects.toThrow(/NBD error 22/);
      await client.read(SIZE - 10, Buffer.alloc(10)); // still in step
    } finally {
      source.delayMs = () => 0;
      await client.close();
    }
  });
});

/** A client speaking raw bytes: handshake with GO on the default export, simple replies. */
async function rawClient(socket: string) {
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

describe('NBD server: bounds on what a client sends', () => {
  let server: NbdServer;
  let socket: string;
  beforeAll(async () => {
    ({ server, socket } = await serve(fileSource()));
  });
  afterAll(async () => {
    await server.close();
  });

  it('refuses unknown options and unknown exports, then serves; refuses writes and bad reads', async () => {
    const c = await rawClient(socket);
    c.option(99);
    expect((await c.reply())[0]).toBe(0x80000001); // NBD_REP_ERR_UNSUP
    c.option(10, Buffer.alloc(8)); // SET_META_CONTEXT before structured replies
    expect((await c.reply())[0]).toBe(0x80000003); // NBD_REP_ERR_INVALID
    const go = (name: string): Buffer => {
      const b = Buffer.alloc(6 + name.length);
      b.writeUInt32BE(name.length, 0);
      b.write(name, 4);
      return b;
    };
    c.option(7, go('nope'));
    expect((await c.reply())[0]).toBe(0x80000006); // NBD_REP_ERR_UNKNOWN
    c.option(7, go(''));
    const replies: number[] = [];
    for (;;) {
      const [type] = await c.reply();
      replies.push(type);
      if (type === 1) break;
    }
    expect(replies).toEqual([3, 3, 1]); // INFO export, INFO block size, ACK
    c.request(0, 0, 32 * MiB + 1); // too long
    expect(await c.simple()).toBe(22);
    c.request(0, SIZE, 1); // beyond the end
    expect(await c.simple()).toBe(22);
    c.request(1, 0, 512, Buffer.alloc(512, 1)); // a write, with its payload
    expect(await c.simple()).toBe(1); // EPERM
    c.request(6, 0, 4096); // write zeroes
    expect(await c.simple()).toBe(1);
    c.request(7, 0, 4096); // block status without a negotiated context
    expect(await c.simple()).toBe(22);
    c.request(3, 0, 0); // flush
    expect(await c.simple()).toBe(0);
    c.request(0, 12 * MiB, 16); // still in step after the refused write's payload
    expect(await c.simple()).toBe(0);
    expect((await c.read(16)).equals(Buffer.alloc(16, PATTERN))).toBe(true);
    c.request(2, 0, 0); // disconnect
    await c.read(1).catch(() => {});
    expect(c.isClosed()).toBe(true);
  });

  it('serves the old NBD_OPT_EXPORT_NAME, answers NBD_OPT_ABORT, lists base:allocation', async () => {
    const old = await rawClient(socket);
    old.option(1, Buffer.from('disk'));
    const reply = await old.read(10); // size and flags, no zeroes (the client set NO_ZEROES)
    expect(Number(reply.readBigUInt64BE(0))).toBe(SIZE);
    expect(reply.readUInt16BE(8) & 3).toBe(3); // HAS_FLAGS | READ_ONLY
    old.request(0, 12 * MiB + 5, 3);
    expect(await old.simple()).toBe(0);
    expect((await old.read(3)).equals(Buffer.alloc(3, PATTERN))).toBe(true);
    old.sock.destroy();

    const wrong = await rawClient(socket);
    wrong.option(1, Buffer.from('other'));
    await expect(wrong.read(1)).rejects.toThrow(/closed/);

    const c = await rawClient(socket);
    c.option(8); // structured replies
    expect((await c.reply())[0]).toBe(1);
    const query = (...qs: string[]): Buffer => {
      const parts = [Buffer.alloc(4), Buffer.alloc(4)];
      parts[1]!.writeUInt32BE(qs.length);
      for (const q of qs) {
        const n = Buffer.alloc(4);
        n.writeUInt32BE(q.length);
        parts.push(n, Buffer.from(q));
      }
      return Buffer.concat(parts);
    };
    c.option(9, query()); // LIST_META_CONTEXT, every context
    const [type, data] = await c.reply();
    expect(type).toBe(4);
    expect(data.subarray(4).toString()).toBe('base:allocation');
    expect((await c.reply())[0]).toBe(1);
    c.option(10, query('qemu:dirty-bitmap:x')); // SET: nothing we have
    expect((await c.reply())[0]).toBe(1);
    c.option(10, Buffer.from([0, 0, 0, 0, 0, 0, 0, 1])); // says one query, sends none
    expect((await c.reply())[0]).toBe(0x80000003);
    c.option(2); // ABORT
    expect((await c.reply())[0]).toBe(1);
    await c.read(1).catch(() => {});
    expect(c.isClosed()).toBe(true);
  });

  it('hangs up on an oversized option instead of buffering it', async () => {
    const c = await rawClient(socket);
    c.option(7, Buffer.alloc(1 * MiB));
    await expect(c.read(1)).rejects.toThrow(/closed/);
  });

  it('refuses to listen beyond loopback and to replace a file that is not a socket', async () => {
    const log = captureLog();
    for (const host of ['0.0.0.0', '::1', 'localhost', '192.168.1.1'])
      await expect(
        startNbdServer({ source: fileSource(), exportName: 'd', listen: { host, port: 0 }, log }),
      ).rejects.toBeInstanceOf(UsageError);
    const notSocket = join(dir, 'plain-file');
    await writeFile(notSocket, 'x');
    await expect(
      startNbdServer({ source: fileSource(), exportName: 'd', socket: notSocket, log }),
    ).rejects.toThrow(/not a socket/);
    await expect(startNbdServer({ source: fileSource(), exportName: 'd', socket, log })).rejects.toThrow(
      /another server is listening/,
    );
  });
});

describe('NBD server: TCP on 127.0.0.1 and closing', () => {
  it('serves qemu-io and nbdinfo over 127.0.0.1', async () => {
    const log = captureLog();
    const server = await startNbdServer({
      source: fileSource(),
      exportName: 'disk',
      listen: { host: '127.0.0.1', port: 0 },
      log,
    });
    try {
      const { port } = server.address as { host: string; port: number };
      expect(port).toBeGreaterThan(0);
      expect(server.uri).toBe(`nbd://127.0.0.1:${port}/disk`);
      const { stdout } = await run(
        'qemu-io',
        [
          '-r',
          '-f',
          'raw',
          '-c',
          `read -P ${PATTERN} ${12 * MiB} ${MiB}`,
          '-c',
          `read -P 0 ${4 * MiB} 4096`,
          server.uri,
        ],
        { timeout: 60_000 },
      );
      expect(stdout).not.toMatch(/fail/i);
      expect(await nbdMap(server.uri)).toEqual(expectedMap());
    } finally {
      await server.close();
    }
  });

  it('close() ends connected clients with reads pending and removes the socket within 2 s', async () => {
    const source = fileSource();
    const { server, socket } = await serve(source);
    // a real client sitting idle in its prompt, and ours with a read the source never answers
    const qemuIo = spawn('qemu-io', ['-r', '-f', 'raw', `nbd+unix:///disk?socket=${socket}`], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    const client = await NbdClient.connect(socket, 'disk');
    try {
      source.hang = true;
      const pending = client.read(0, Buffer.alloc(4096));
      pending.catch(() => {});
      for (let i = 0; i < 100 && (server.stats.connections < 2 || source.reads === 0); i++)
        await new Promise((r) => setTimeout(r, 50));
      expect(server.stats.connections).toBe(2);
      const t0 = Date.now();
      await server.close();
      const took = Date.now() - t0;
      expect(took).toBeLessThan(2000);
      expect(existsSync(socket)).toBe(false);
      await expect(pending).rejects.toThrow(/closed the connection/);
      await server.close(); // twice is fine
    } finally {
      qemuIo.kill();
      await client.close().catch(() => {});
    }
  });

  it('an aborted signal closes the server', async () => {
    const stop = new AbortController();
    const sockDir = await mkdtemp(join(dir, 's'));
    const server = await startNbdServer({
      source: fileSource(),
      exportName: 'disk',
      socket: join(sockDir, 'nbd.sock'),
      log: captureLog(),
      signal: stop.signal,
    });
    const { socket } = server.address as { socket: string };
    expect(existsSync(socket)).toBe(true);
    stop.abort();
    for (let i = 0; i < 40 && existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(socket)).toBe(false);
    await server.close();
  });
});

describe('NBD server: base:allocation descriptors', () => {
  it('merges, clips to the request, honours REQ_ONE and never reports nothing', () => {
    const ext = [
      { length: 100, zero: false },
      { length: 50, zero: false },
      { length: 0, zero: true },
      { length: 200, zero: true },
      { length: 1000, zero: false },
    ];
    expect(allocationDescriptors(ext, 400, false)).toEqual([
      [150, 0],
      [200, 3],
      [50, 0],
    ]);
    expect(allocationDescriptors(ext, 400, true)).toEqual([[150, 0]]);
    expect(allocationDescriptors([], 4096, false)).toEqual([[4096, 0]]);
    expect(allocationDescriptors([{ length: -1, zero: true }], 10, false)).toEqual([[10, 0]]);
    const many = Array.from({ length: 5000 }, (_, i) => ({ length: 1, zero: i % 2 === 0 }));
    expect(allocationDescriptors(many, 5000, false)).toHaveLength(1024);
  });
});
