import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zstdCompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTasks, type TaskMessage } from '../../src/image/compress-worker.js';
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
  it('compresses a chunk into a blob and inflates it back, checking the digest', () => {
    const tasks = makeTasks(new Set());
    const sab = new SharedArrayBuffer(1 << 16);
    const data = Buffer.from(sab);
    for (let i = 0; i < data.length; i++) data[i] = i % 251;
    const msg = { task: 'chunk', sab, off: 0, len: data.length, level: 3, blobs: dir } as TaskMessage;
    const r = tasks.chunk!(msg) as { digest: string; blobDigest: string; created: boolean };
    expect(r.digest).toBe(sha(data));
    expect(r.created).toBe(true);
    const z = readFileSync(join(dir, r.blobDigest.slice(7)));
    expect(sha(z)).toBe(r.blobDigest);
    const out = new SharedArrayBuffer(data.length);
    const back = {
      task: 'inflate',
      sab: out,
      off: 0,
      len: data.length,
      data: z,
      digest: r.digest,
      offset: 0,
    };
    expect(tasks.inflate!(back as unknown as TaskMessage)).toEqual({});
    expect(Buffer.from(out).equals(data)).toBe(true);
    const bad = tasks.inflate!({ ...back, digest: 'sha256:' + '0'.repeat(64) } as unknown as TaskMessage);
    expect(bad.kind).toBe('integrity');
  });

  it('reports a zero chunk without compressing it', () => {
    const sab = new SharedArrayBuffer(4096);
    const r = makeTasks(new Set()).chunk!({
      task: 'chunk',
      sab,
      off: 0,
      len: 4096,
    } as unknown as TaskMessage);
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
