import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTasks, type TaskMessage } from '../../src/image/compress-worker.js';
import { zstdFrameHeader } from '../../src/formats/zstd-frame.js';
import { get, type GetJob } from '../../src/net/http-worker.js';

/** The worker threads' code is plain TypeScript: its functions run here without a thread. */
const sha = (b: Uint8Array) => 'sha256:' + createHash('sha256').update(b).digest('hex');
let dir: string;
let server: Server;
let base: string;
let fail503 = 1;
const blob = zstdCompressSync(Buffer.alloc(200_000, 3));

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-workers-'));
  server = createServer((req, res) => {
    if (fail503-- > 0) {
      res.writeHead(503, { 'retry-after': '0' });
      res.end();
      return;
    }
    const m = /bytes=(\d+)-/.exec(req.headers.range ?? '');
    const from = m ? Number(m[1]) : 0;
    res.writeHead(from ? 206 : 200, {
      'content-length': blob.length - from,
      ...(from ? { 'content-range': `bytes ${from}-${blob.length - 1}/${blob.length}` } : {}),
    });
    res.end(blob.subarray(from));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('compress worker tasks', () => {
  const BS = 32 << 10;
  /** A unit of 4 blocks plus a 1000-byte tail (the disk's end): block 2 is zero. */
  function unit(): { sab: SharedArrayBuffer; data: Buffer } {
    const len = 4 * BS + 1000;
    const sab = new SharedArrayBuffer(len);
    const data = Buffer.from(sab);
    for (let i = 0; i < len; i++) data[i] = i % 251;
    data.fill(0, 2 * BS, 3 * BS);
    return { sab, data };
  }
  const block = (data: Buffer, i: number) => {
    const b = Buffer.alloc(BS);
    data.copy(b, 0, i * BS, Math.min(data.length, (i + 1) * BS));
    return b;
  };
  const msg = (m: Record<string, unknown>) => m as unknown as TaskMessage;

  it('flags zero blocks and hashes the others, the tail block zero-padded', () => {
    const { sab, data } = unit();
    const r = makeTasks().blocks!(msg({ task: 'blocks', sab, off: 0, len: data.length, block: BS })) as {
      zero: Uint8Array;
      digests: Uint8Array;
    };
    expect([...r.zero]).toEqual([0, 0, 1, 0, 0]);
    for (const i of [0, 1, 3, 4])
      expect('sha256:' + Buffer.from(r.digests.subarray(i * 32, i * 32 + 32)).toString('hex')).toBe(
        sha(block(data, i)),
      );
  });

  it('compresses runs of blocks into frames and decodes them back, checking the sizes', () => {
    const { sab, data } = unit();
    const tasks = makeTasks();
    const runs = new Uint32Array([0, 2, 3, 2]);
    const r = tasks.frames!(
      msg({ task: 'frames', sab, off: 0, len: data.length, block: BS, level: 3, runs }),
    ) as {
      lengths: Uint32Array;
      data: Uint8Array;
    };
    expect(r.lengths).toHaveLength(2);
    expect(r.lengths[0]! + r.lengths[1]!).toBe(r.data.length);
    const frames = [
      Buffer.from(r.data.subarray(0, r.lengths[0])),
      Buffer.from(r.data.subarray(r.lengths[0], r.data.length)),
    ];
    const want = [
      Buffer.concat([block(data, 0), block(data, 1)]),
      Buffer.concat([block(data, 3), block(data, 4)]),
    ];
    frames.forEach((f, k) => {
      // the content size is in every frame's header (the reader bounds its output by it)
      expect(zstdFrameHeader(f)?.contentSize).toBe(2 * BS);
      const back = tasks.unframe!(msg({ task: 'unframe', data: f, blocks: 2, block: BS })) as {
        data: Uint8Array;
        digests: Uint8Array;
      };
      expect(Buffer.from(back.data).equals(want[k]!)).toBe(true);
      expect('sha256:' + Buffer.from(back.digests.subarray(32, 64)).toString('hex')).toBe(
        sha(want[k]!.subarray(BS)),
      );
    });
    // a frame that declares another size than its blocks, or is damaged, is refused, not decoded
    expect(tasks.unframe!(msg({ task: 'unframe', data: frames[0], blocks: 3, block: BS }))).toEqual({
      bad: 'frame header',
    });
    const broken = Buffer.from(frames[1]!);
    broken.fill(0xff, 8, 40);
    expect(tasks.unframe!(msg({ task: 'unframe', data: broken, blocks: 2, block: BS })).bad).toBeTruthy();
  });

  it('reports a zero unit without compressing it', () => {
    const sab = new SharedArrayBuffer(4096);
    const r = makeTasks().frame!(msg({ task: 'frame', sab, off: 0, len: 4096, level: 3 }));
    expect(r).toEqual({ zero: true });
  });
});

describe('http worker get', () => {
  it('waits out a 503, receives a zstd chunk on the raw-socket path and writes its content', async () => {
    const content = Buffer.alloc(200_000, 3);
    const out = join(dir, 'disk.raw');
    writeFileSync(out, Buffer.alloc(400_000));
    const logs: string[] = [];
    const job: GetJob = {
      op: 'get',
      url: `${base}/blob`,
      headers: {},
      size: blob.length,
      digest: sha(blob),
      kind: 'zstd',
      retry: { attempts: 3, baseDelayMs: 0 },
      idleMs: 5_000,
      target: { kind: 'memory' },
      write: { path: out, offsets: [0, 200_000], length: content.length, digest: sha(content) },
    };
    const r = await get(job, (m) => m.log && logs.push(m.log));
    expect(r.downloaded).toBe(blob.length);
    expect(logs.join('\n')).toMatch(/HTTP 503/);
    expect(readFileSync(out).equals(Buffer.concat([content, content]))).toBe(true);
  });
});
