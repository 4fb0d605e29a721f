import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../src/core/errors.js';
import { allocationDescriptors } from '../../src/serve/nbd-protocol.js';
import { startNbdServer, type NbdServer } from '../../src/serve/nbd-server.js';
import {
  captureLog,
  fileSource,
  MiB,
  PATTERN,
  rawClient,
  serve,
  SIZE,
  useTestDisk,
} from '../helpers/nbd-export.js';

/**
 * What no real NBD client sends, in raw bytes: oversized and malformed options and requests,
 * writes to a read-only export, too many clients, addresses beyond loopback.
 */
const disk = useTestDisk();

describe('NBD server: bounds on what a client sends', () => {
  let server: NbdServer;
  let socket: string;
  beforeAll(async () => {
    ({ server, socket } = await serve(disk, fileSource(disk)));
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

  it('refuses clients past maxClients, and serves again once one leaves', async () => {
    const sockDir = await mkdtemp(join(disk.dir, 's'));
    const log = captureLog();
    const one = await startNbdServer({
      source: fileSource(disk),
      exportName: 'disk',
      socket: join(sockDir, 'nbd.sock'),
      log,
      maxClients: 1,
    });
    try {
      const path = (one.address as { socket: string }).socket;
      const first = await rawClient(path);
      await expect(rawClient(path)).rejects.toThrow(/closed/);
      expect(log.warnings.join('\n')).toMatch(/1 are connected already/);
      first.sock.destroy();
      for (let i = 0; i < 40 && one.stats.connections > 0; i++) await new Promise((r) => setTimeout(r, 25));
      (await rawClient(path)).sock.destroy();
    } finally {
      await one.close();
    }
  });

  it('refuses to listen beyond loopback and to replace a file that is not a socket', async () => {
    const log = captureLog();
    for (const host of ['0.0.0.0', '::1', 'localhost', '192.168.1.1'])
      await expect(
        startNbdServer({ source: fileSource(disk), exportName: 'd', listen: { host, port: 0 }, log }),
      ).rejects.toBeInstanceOf(UsageError);
    const notSocket = join(disk.dir, 'plain-file');
    await writeFile(notSocket, 'x');
    await expect(
      startNbdServer({ source: fileSource(disk), exportName: 'd', socket: notSocket, log }),
    ).rejects.toThrow(/not a socket/);
    await expect(startNbdServer({ source: fileSource(disk), exportName: 'd', socket, log })).rejects.toThrow(
      /another server is listening/,
    );
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
