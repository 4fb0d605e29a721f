import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Transform } from 'node:stream';

/**
 * A local HTTP reverse proxy in front of any server, for fault injection: it forwards requests
 * (keeping the Host header, so servers that build absolute URLs point them back at the proxy)
 * unless a rule matches. Rules are generic (method, path regex, how many times, how many to let
 * through first), so the OCI, S3 and HTTPS tests share it.
 */
export type FaultAction =
  /** answer without forwarding (503/429 with Retry-After, 401 with a challenge, ...) */
  | { type: 'status'; status: number; headers?: Record<string, string>; body?: string }
  /** take `afterBytes` of the request body (passing them upstream when `forward`), then cut both connections */
  | { type: 'reset-request'; afterBytes: number; forward: boolean }
  /** pass `afterBytes` of the response body, then cut the connection */
  | { type: 'reset-response'; afterBytes: number }
  /** pass `bytes` of the response body with a matching Content-Length, then end cleanly (a short blob) */
  | { type: 'truncate-response'; bytes: number }
  /** invert one byte of the response body at `offset` */
  | { type: 'flip'; offset: number }
  /** drop the Range header: the server answers 200 with the whole body */
  | { type: 'ignore-range' }
  /** throttle request and response bodies */
  | { type: 'slow'; bytesPerSecond: number }
  /** wait before forwarding */
  | { type: 'delay'; ms: number }
  /** HTTP Basic authentication in front of the server: 401 with a challenge unless the credentials match */
  | { type: 'basic-auth'; user: string; password: string; realm?: string };

export interface FaultRule {
  method?: string;
  path?: RegExp;
  /** only requests with this header present (lower-case name) */
  header?: string;
  /** any other condition on the request (headers, URL) */
  when?: (req: IncomingMessage) => boolean;
  /** let this many matching requests through first */
  skip?: number;
  /** apply this many times (default: always) */
  times?: number;
  action: FaultAction;
}

export interface ProxyLogEntry {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  status?: number;
  fault?: FaultAction['type'];
  at: number;
  /** response body bytes sent to the client */
  bytes?: number;
}

export interface FaultProxy {
  url: string;
  host: string;
  log: ProxyLogEntry[];
  add(rule: FaultRule): FaultRule;
  remove(rule: FaultRule): void;
  clear(): void;
  stop(): Promise<void>;
}

interface Armed extends FaultRule {
  seen: number;
  used: number;
}

function throttle(bytesPerSecond: number): Transform {
  let budget = 0;
  let last = Date.now();
  return new Transform({
    transform(chunk: Buffer, _e, cb) {
      const send = (buf: Buffer) => {
        const now = Date.now();
        budget = Math.min(bytesPerSecond, budget + ((now - last) / 1000) * bytesPerSecond);
        last = now;
        if (budget >= 1) {
          const n = Math.min(buf.length, Math.floor(budget));
          budget -= n;
          this.push(buf.subarray(0, n));
          if (n === buf.length) return cb();
          buf = buf.subarray(n);
        }
        setTimeout(() => send(buf), 20);
      };
      send(chunk);
    },
  });
}

/** Passes `limit` bytes, then calls `onLimit` (and passes nothing more). */
function cutAfter(limit: number, onLimit: () => void): Transform {
  let seen = 0;
  let fired = false;
  return new Transform({
    transform(chunk: Buffer, _e, cb) {
      if (fired) return cb();
      const take = Math.min(chunk.length, limit - seen);
      seen += take;
      if (take > 0) this.push(chunk.subarray(0, take));
      if (seen >= limit) {
        fired = true;
        // let the pushed bytes reach the socket before cutting
        setTimeout(onLimit, 30);
      }
      cb();
    },
  });
}

function flipAt(offset: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _e, cb) {
      if (offset >= seen && offset < seen + chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[offset - seen] = chunk[offset - seen]! ^ 0xff;
      }
      seen += chunk.length;
      cb(null, chunk);
    },
  });
}

export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const upstream = new URL(target);
  const rules: Armed[] = [];
  const log: ProxyLogEntry[] = [];
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  const pick = (req: IncomingMessage): Armed | undefined => {
    for (const r of rules) {
      if (r.method && r.method !== req.method) continue;
      if (r.path && !r.path.test(req.url ?? '')) continue;
      if (r.header && req.headers[r.header] === undefined) continue;
      if (r.when && !r.when(req)) continue;
      r.seen++;
      if (r.seen <= (r.skip ?? 0)) continue;
      if (r.times !== undefined && r.used >= r.times) continue;
      r.used++;
      return r;
    }
    return undefined;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const entry: ProxyLogEntry = {
      method: req.method ?? 'GET',
      url: req.url ?? '/',
      headers: { ...req.headers },
      at: Date.now(),
    };
    log.push(entry);
    const rule = pick(req);
    const a = rule?.action;
    if (a) entry.fault = a.type;
    const cutBoth = () => {
      req.socket.destroy();
      res.socket?.destroy();
    };
    if (a?.type === 'delay') await new Promise((r) => setTimeout(r, a.ms));
    if (a?.type === 'basic-auth') {
      const expected = 'Basic ' + Buffer.from(`${a.user}:${a.password}`).toString('base64');
      if (req.headers.authorization !== expected) {
        req.resume();
        entry.status = 401;
        res.writeHead(401, {
          'www-authenticate': `Basic realm="${a.realm ?? 'orb-test'}"`,
          'content-type': 'application/json',
        });
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
        return;
      }
    }
    if (a?.type === 'status') {
      // Drain what the client sends so it sees the answer rather than a reset.
      req.resume();
      entry.status = a.status;
      res.writeHead(a.status, { 'content-type': 'application/json', ...(a.headers ?? {}) });
      res.end(a.body ?? JSON.stringify({ errors: [{ code: 'FAULT', message: `injected ${a.status}` }] }));
      return;
    }
    if (a?.type === 'reset-request' && !a.forward) {
      req.pipe(cutAfter(a.afterBytes, cutBoth)).resume();
      return;
    }
    const headers = { ...req.headers };
    if (a?.type === 'ignore-range') delete headers.range;
    let truncateLeft = 0;
    if (a?.type === 'truncate-response') {
      // The server's copy holds only the first `bytes` bytes: a range beyond them is unsatisfiable.
      const start = Number(/bytes=(\d+)-/.exec(String(req.headers.range ?? ''))?.[1] ?? 0);
      truncateLeft = Math.max(0, a.bytes - start);
      if (truncateLeft === 0) {
        req.resume();
        entry.status = 416;
        res.writeHead(416, { 'content-range': `bytes */${a.bytes}` }).end();
        return;
      }
    }
    const up = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers, agent },
      (ur) => {
        entry.status = ur.statusCode;
        let body: NodeJS.ReadableStream = ur;
        const outHeaders = { ...ur.headers };
        if (a?.type === 'reset-response') body = ur.pipe(cutAfter(a.afterBytes, cutBoth));
        else if (a?.type === 'truncate-response') {
          let left = Math.min(truncateLeft, Number(ur.headers['content-length'] ?? truncateLeft));
          outHeaders['content-length'] = String(left);
          body = ur.pipe(
            new Transform({
              transform(chunk: Buffer, _e, cb) {
                const take = Math.min(left, chunk.length);
                left -= take;
                cb(null, take > 0 ? chunk.subarray(0, take) : undefined);
              },
            }),
          );
        } else if (a?.type === 'flip') body = ur.pipe(flipAt(a.offset));
        else if (a?.type === 'slow') body = ur.pipe(throttle(a.bytesPerSecond));
        res.writeHead(ur.statusCode ?? 502, outHeaders);
        body.on('data', (c: Buffer) => (entry.bytes = (entry.bytes ?? 0) + c.length));
        body.pipe(res);
      },
    );
    up.on('error', () => cutBoth());
    req.on('error', () => up.destroy());
    if (a?.type === 'reset-request') {
      req
        .pipe(
          cutAfter(a.afterBytes, () => {
            up.destroy();
            cutBoth();
          }),
        )
        .pipe(up);
    } else if (a?.type === 'slow') req.pipe(throttle(a.bytesPerSecond)).pipe(up);
    else req.pipe(up);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => req.socket.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    log,
    add(rule) {
      const armed: Armed = { ...rule, seen: 0, used: 0 };
      rules.push(armed);
      return armed;
    },
    remove(rule) {
      const i = rules.indexOf(rule as Armed);
      if (i >= 0) rules.splice(i, 1);
    },
    clear() {
      rules.length = 0;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      agent.destroy();
    },
  };
}
