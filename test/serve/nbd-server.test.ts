import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/image/nbd.js';
import { startNbdServer, type NbdServer } from '../../src/serve/nbd-server.js';
import {
  captureLog,
  expectedMap,
  fileSource,
  MiB,
  nbdMap,
  PATTERN,
  run,
  serve,
  sha256,
  SIZE,
  useTestDisk,
  type TestSource,
} from '../helpers/nbd-export.js';

/**
 * The NBD server against the clients users have: QEMU's qemu-img and qemu-io (qemu-utils) and
 * libnbd's nbdinfo and nbdcopy (libnbd-bin), plus our own client (src/image/nbd.ts). Protocol
 * bounds, with raw bytes, are in nbd-server-bounds.test.ts.
 */
const disk = useTestDisk();

describe('NBD server: real clients over a Unix socket', () => {
  let server: NbdServer;
  let source: TestSource;
  let log: ReturnType<typeof captureLog>;
  let socket: string;
  const uri = (name = 'disk'): string => `nbd+unix:///${name}?socket=${socket}`;

  beforeAll(async () => {
    source = fileSource(disk);
    ({ server, log, socket } = await serve(disk, source));
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
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', disk.path, uri()], { timeout: 120_000 });
    const out = join(disk.dir, 'copy.raw');
    await run('nbdcopy', [uri(), out], { timeout: 120_000 });
    expect(await sha256(out)).toBe(disk.sha256);
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
    const out = join(disk.dir, 'copy2.raw');
    try {
      await Promise.all([
        run('nbdcopy', ['--connections=2', '--requests=8', uri(), out], { timeout: 120_000 }),
        run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', disk.path, uri()], { timeout: 120_000 }),
      ]);
    } finally {
      source.delayMs = () => 0;
    }
    expect(await sha256(out)).toBe(disk.sha256);
    expect(server.stats.peakConnections).toBeGreaterThanOrEqual(2);
    expect(server.stats.bytesServed).toBeGreaterThan(SIZE);
    await rm(out);
  });

  it('a qcow2 overlay backed by the export: writes stay in the overlay, the rest reads through', async () => {
    const overlay = join(disk.dir, 'overlay.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', uri(), '-F', 'raw', overlay], {
      timeout: 60_000,
    });
    const io = (...cmds: string[]) =>
      run('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), overlay], { timeout: 60_000 });
    const wrote = await io(`write -P 0x5a ${12 * MiB} 4096`);
    expect(wrote.stdout).toMatch(/wrote 4096\/4096/);
    const { stdout } = await io(
      `read -P 0x5a ${12 * MiB} 4096`,
      `read -P ${PATTERN} ${12 * MiB + 4096} ${MiB - 4096}`,
      `read -P 0 ${6 * MiB} ${MiB}`,
    );
    expect(stdout).not.toMatch(/fail/i);
    expect(stdout.match(/^read \d+\/\d+ bytes at offset/gm)).toHaveLength(3);
    await rm(overlay);
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
        await disk.fh.read(want, 0, want.length, o);
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

describe('NBD server: TCP on 127.0.0.1 and closing', () => {
  it('serves qemu-io and nbdinfo over 127.0.0.1', async () => {
    const log = captureLog();
    const server = await startNbdServer({
      source: fileSource(disk),
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
    const source = fileSource(disk);
    const { server, socket } = await serve(disk, source);
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
    const sockDir = await mkdtemp(join(disk.dir, 's'));
    const server = await startNbdServer({
      source: fileSource(disk),
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
