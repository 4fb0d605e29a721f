import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { fastGet } from '../../src/net/fast-get.js';
import { sendWithRetry } from '../../src/net/http.js';
import { isLoopbackHost } from '../../src/net/loopback.js';
import {
  backoffMs,
  parseRetryAfter,
  retry,
  RetryAfterTooLongError,
  type RetryPolicy,
} from '../../src/net/retry.js';

/** The one retry policy of src/net/ against a scripted server on 127.0.0.1. */
const policy: RetryPolicy = {
  attempts: 4,
  baseDelayMs: 0,
  maxDelayMs: 20,
  maxRetryAfterMs: 2_000,
  maxTotalMs: 10_000,
};

type Step = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;
let server: Server;
let base: string;
let script: Step[] = [];
let seen: { method: string; body: number }[] = [];

const ok: Step = (_q, res) => res.end('done');
const status =
  (code: number, headers: Record<string, string> = {}): Step =>
  (_q, res) => {
    res.writeHead(code, headers);
    res.end();
  };
const reset: Step = (req) => req.socket.destroy();

beforeAll(async () => {
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const body = Buffer.concat(parts);
      seen.push({ method: req.method ?? '', body: body.length });
      const step = script.shift() ?? ok;
      step(req, res, body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));
beforeEach(() => {
  script = [];
  seen = [];
});

async function get(path = '/x', extra: Partial<Parameters<typeof sendWithRetry>[0]> = {}) {
  const { res } = await sendWithRetry({ url: new URL(path, base), what: 'test GET', policy, ...extra });
  const parts: Buffer[] = [];
  for await (const c of res) parts.push(c as Buffer);
  return { status: res.statusCode, text: Buffer.concat(parts).toString() };
}

describe('retry policy', () => {
  it('waits what a 429 Retry-After asks, then succeeds', async () => {
    script = [status(429, { 'retry-after': '0.3' })];
    const t0 = Date.now();
    const r = await get();
    expect(r).toEqual({ status: 200, text: 'done' });
    expect(seen).toHaveLength(2);
    // base delay is 0: only the server's Retry-After explains the wait
    expect(Date.now() - t0).toBeGreaterThanOrEqual(280);
  });

  it('retries 503 and a reset connection', async () => {
    script = [status(503), reset, status(502)];
    const r = await get();
    expect(r.status).toBe(200);
    expect(seen).toHaveLength(4);
  });

  it('gives up after the attempts with the last status', async () => {
    script = [status(503), status(503), status(503), status(503), status(503)];
    await expect(get()).rejects.toThrow(/HTTP 503/);
    expect(seen).toHaveLength(policy.attempts);
  });

  it('does not retry a status that will not change', async () => {
    script = [status(404)];
    expect((await get()).status).toBe(404);
    expect(seen).toHaveLength(1);
  });

  it('never retries a one-shot stream body, but replays a reopenable one', async () => {
    script = [status(503)];
    const once = Readable.from([Buffer.from('abc')]);
    await expect(get('/put', { method: 'PUT', body: once })).rejects.toThrow(/HTTP 503/);
    expect(seen).toEqual([{ method: 'PUT', body: 3 }]);

    seen = [];
    script = [status(503)];
    const r = await get('/put', {
      method: 'PUT',
      body: { length: 3, open: () => Readable.from([Buffer.from('abc')]) },
    });
    expect(r.status).toBe(200);
    expect(seen).toEqual([
      { method: 'PUT', body: 3 },
      { method: 'PUT', body: 3 },
    ]);
  });

  it('an abort ends the backoff wait at once', async () => {
    script = [status(503, { 'retry-after': '1.5' })];
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 150);
    const t0 = Date.now();
    const err = await get('/x', { signal: ac.signal }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe('interrupted');
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(seen).toHaveLength(1);
  });

  it('does not wait for a Retry-After beyond the cap', async () => {
    script = [status(429, { 'retry-after': '3600' })];
    const t0 = Date.now();
    await expect(get()).rejects.toBeInstanceOf(RetryAfterTooLongError);
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it('keeps all waits within the total budget', async () => {
    let calls = 0;
    const failing = () => {
      calls++;
      return Promise.reject(Object.assign(new Error('reset'), { code: 'ECONNRESET' }));
    };
    const tight = { ...policy, attempts: 100, baseDelayMs: 50, maxDelayMs: 50, maxTotalMs: 120 };
    const t0 = Date.now();
    await expect(retry(failing, { what: 'x', policy: tight })).rejects.toThrow('reset');
    expect(Date.now() - t0).toBeLessThan(500);
    expect(calls).toBeLessThan(100);
  });

  it('reads Retry-After as seconds or an HTTP date; full jitter stays under the step', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfter('2', now)).toBe(2000);
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now)).toBe(5000);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
    const p = { ...policy, baseDelayMs: 100, maxDelayMs: 1000 };
    for (let i = 0; i < 50; i++) {
      expect(backoffMs(3, p)).toBeLessThanOrEqual(400);
      expect(backoffMs(10, p)).toBeLessThanOrEqual(1000);
    }
    expect(backoffMs(3, p, 7000)).toBe(7000);
  });
});

describe('loopback rule', () => {
  it('accepts 127/8, ::1 and localhost with or without a port', () => {
    for (const h of [
      '127.0.0.1',
      '127.1.2.3:5000',
      'localhost',
      'localhost:80',
      '[::1]:5000',
      '::1',
      '[::1]',
    ])
      expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ['ghcr.io', '128.0.0.1', '10.0.0.1:5000', '127.0.0.1.example.com', '[::2]'])
      expect(isLoopbackHost(h), h).toBe(false);
  });
});

describe('raw-socket GET', () => {
  it('lands the body in the caller buffer and declines what it cannot take', async () => {
    const payload = Buffer.alloc(300_000, 7);
    script = [(_q, res) => res.end(payload), status(302, { location: '/elsewhere' })];
    const target = Buffer.alloc(payload.length);
    let got = 0;
    const r = await fastGet(
      new URL('/blob', base),
      {},
      { idleMs: 5_000 },
      {
        head: (s) => (s === 200 ? 'body' : 'fallback'),
        target: () => target.subarray(got),
        data: (n) => (got += n),
      },
    );
    expect(r.decision).toBe('body');
    expect(got).toBe(payload.length);
    expect(target.equals(payload)).toBe(true);
    const r2 = await fastGet(
      new URL('/blob', base),
      {},
      { idleMs: 5_000 },
      { head: (s) => (s === 200 ? 'body' : 'fallback'), target: () => target, data: () => {} },
    );
    expect(r2).toMatchObject({ status: 302, decision: 'fallback' });
  });
});
