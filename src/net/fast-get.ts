import net from 'node:net';
import { proxyFor } from './proxy.js';

/**
 * A plain-HTTP GET whose body the kernel reads straight into the caller's buffers (`net.connect`
 * with `onread`): no HTTP-parser pass over the body, no per-packet allocation, no copy. This is
 * what lets a pull from an http:// origin (loopback mirror, S3-compatible server on a LAN, a
 * registry on 127.0.0.1) keep up with the link. Only plain HTTP/1.1 with a Content-Length body
 * takes this path; the sink's `head` sees the status line first and may decline (redirects,
 * chunked answers, errors), and the caller then uses the regular client.
 */
export interface FastGetSink {
  /** Called once with the response head. 'body': read the body into `target()`; anything else ends here. */
  head(status: number, headers: Record<string, string>): string;
  /** Where the next body bytes go (any length; the body's remaining length caps it). */
  target(): Buffer;
  /** `n` bytes landed at the start of the last `target()`. */
  data(n: number): void;
}

export interface FastGetResult {
  status: number;
  headers: Record<string, string>;
  /** what `head` answered */
  decision: string;
}

function parseHead(text: string): { status: number; headers: Record<string, string> } {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  if (!m) throw new Error(`not an HTTP response: ${(lines[0] ?? '').slice(0, 60)}`);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: Number(m[1]), headers };
}

function cut(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * GET `url` (http: only) with `headers`. Resolves when the head was declined or the whole body
 * (Content-Length bytes) landed; rejects when the connection fails, stalls for `idleMs` or
 * `signal` aborts (name AbortError).
 */
export function fastGet(
  url: URL,
  headers: Record<string, string>,
  opts: { idleMs: number; signal?: AbortSignal | undefined },
  sink: FastGetSink,
): Promise<FastGetResult> {
  return new Promise((resolve, reject) => {
    const head = Buffer.allocUnsafe(32 << 10);
    let hfill = 0;
    let inBody = false;
    let left = 0;
    let result: FastGetResult | undefined;
    let settled = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      sock.destroy();
      if (err || !result) reject(err ?? cut('the connection closed before an answer', 'ECONNRESET'));
      else resolve(result);
    };
    const onAbort = () =>
      finish(Object.assign(new Error('aborted'), { name: 'AbortError', code: 'ABORT_ERR' }));
    const target = (): Buffer => {
      if (!inBody) return head.subarray(hfill);
      const t = sink.target();
      return t.length > left ? t.subarray(0, left) : t;
    };
    const onHead = (end: number): boolean => {
      const r = parseHead(head.toString('latin1', 0, end));
      const decision = sink.head(r.status, r.headers);
      result = { ...r, decision };
      if (decision !== 'body') return false;
      left = Number(r.headers['content-length']);
      if (!Number.isFinite(left) || r.headers['transfer-encoding'])
        throw new Error('a fast GET body needs a Content-Length');
      inBody = true;
      let extra = head.subarray(end + 4, hfill);
      if (extra.length > left) extra = extra.subarray(0, left);
      while (extra.length) {
        const t = target();
        const k = Math.min(t.length, extra.length);
        extra.copy(t, 0, 0, k);
        left -= k;
        sink.data(k);
        extra = extra.subarray(k);
      }
      return true;
    };
    // behind HTTP_PROXY the request goes to the proxy, naming the target by its absolute URI
    const proxy = proxyFor(url);
    const peer = proxy?.url ?? url;
    const sock = net.connect({
      host: peer.hostname.replace(/^\[|\]$/g, ''),
      port: Number(peer.port) || 80,
      onread: {
        buffer: target,
        callback: (n: number) => {
          try {
            if (!inBody) {
              hfill += n;
              const end = head.subarray(0, hfill).indexOf('\r\n\r\n');
              if (end < 0) {
                if (hfill >= head.length) throw new Error('response headers too large');
                return true;
              }
              if (!onHead(end)) {
                finish();
                return false;
              }
            } else {
              left -= n;
              sink.data(n);
            }
            if (left === 0) {
              finish();
              return false;
            }
            return true;
          } catch (err) {
            finish(err as Error);
            return false;
          }
        },
      },
    });
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();
    sock.setTimeout(opts.idleMs, () =>
      finish(cut(`no data for ${Math.round(opts.idleMs / 1000)} s`, 'ETIMEDOUT')),
    );
    sock.on('error', (e) => finish(e));
    sock.on('end', () =>
      finish(cut(inBody ? 'the connection was cut' : 'the connection closed before an answer', 'ECONNRESET')),
    );
    sock.on('close', () =>
      finish(cut(inBody ? 'the connection was cut' : 'the connection closed before an answer', 'ECONNRESET')),
    );
    const lines = [
      proxy ? `GET ${url.href} HTTP/1.1` : `GET ${url.pathname}${url.search} HTTP/1.1`,
      `Host: ${url.host}`,
      ...(proxy?.auth ? [`Proxy-Authorization: ${proxy.auth}`] : []),
      'User-Agent: orb-actions',
      'Connection: close',
    ];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    sock.write(lines.join('\r\n') + '\r\n\r\n');
  });
}
