import net from 'node:net';

/**
 * A plain-HTTP ranged GET whose body the kernel reads straight into the caller's buffer
 * (`net.connect` with `onread`): no HTTP-parser pass over the body, no per-packet allocation, no
 * copy. Used for the bulk of ranged downloads from http:// origins (loopback mirrors, S3-compatible
 * servers on a LAN); anything unusual (redirects, chunked bodies, HTTPS) answers 'fallback' and
 * the caller uses the regular client.
 */
export interface FastResult {
  /** 'ok': the range landed in `target`; 'fallback': use the regular client; otherwise an HTTP status to report */
  kind: 'ok' | 'fallback' | 'status';
  status?: number;
  headers?: Record<string, string>;
  /** bytes of the body written into target (also on errors, for resumption) */
  received: number;
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

/**
 * GET `url` bytes [start, start + target.length) into `target`. Resolves 'ok' when all arrived,
 * 'fallback'/'status' without consuming a body; rejects (with `received` set on the error) when
 * the connection fails mid-body.
 */
export function fastRangeGet(
  url: URL,
  headers: Record<string, string>,
  start: number,
  target: Buffer,
  opts: { signal?: AbortSignal; idleMs?: number; onData?: (n: number) => void; wholeFileSize?: number },
): Promise<FastResult> {
  return new Promise((resolve, reject) => {
    const head = Buffer.allocUnsafe(16 << 10);
    let hfill = 0;
    let inBody = false;
    let received = 0;
    let settled = false;
    const end = start + target.length - 1;
    const finish = (r: FastResult | Error) => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      sock.destroy();
      if (r instanceof Error) reject(Object.assign(r, { received }));
      else resolve(r);
    };
    const onAbort = () =>
      finish(Object.assign(new Error('aborted'), { name: 'AbortError', code: 'ABORT_ERR' }));
    const sock = net.connect({
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port) || 80,
      onread: {
        buffer: () => (inBody ? target.subarray(received) : head.subarray(hfill)),
        callback: (n: number) => {
          try {
            if (inBody) {
              received += n;
              opts.onData?.(n);
            } else {
              hfill += n;
              const at = head.subarray(0, hfill).indexOf('\r\n\r\n');
              if (at < 0) {
                if (hfill >= head.length) throw new Error('response headers too large');
                return true;
              }
              const r = parseHead(head.toString('latin1', 0, at));
              const len = Number(r.headers['content-length']);
              const ranged =
                r.status === 206 &&
                new RegExp(`^bytes ${start}-${end}/`).test(r.headers['content-range'] ?? '');
              const whole = r.status === 200 && start === 0 && opts.wholeFileSize === target.length;
              if (!(ranged || whole) || len !== target.length || r.headers['transfer-encoding']) {
                finish({
                  kind: r.status >= 400 ? 'status' : 'fallback',
                  status: r.status,
                  headers: r.headers,
                  received: 0,
                });
                return false;
              }
              inBody = true;
              const extra = head.subarray(at + 4, hfill);
              const k = Math.min(extra.length, target.length);
              extra.copy(target, 0, 0, k);
              received = k;
              if (k) opts.onData?.(k);
            }
            if (received >= target.length) {
              finish({ kind: 'ok', received });
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
    sock.setTimeout(opts.idleMs ?? 60_000, () =>
      finish(
        Object.assign(new Error(`no data for ${Math.round((opts.idleMs ?? 60_000) / 1000)} s`), {
          code: 'ETIMEDOUT',
        }),
      ),
    );
    sock.on('error', (e) => finish(e));
    sock.on('close', () =>
      finish(
        Object.assign(
          new Error(inBody ? 'the connection was cut' : 'the connection closed before an answer'),
          { code: 'ECONNRESET' },
        ),
      ),
    );
    const lines = [
      `GET ${url.pathname}${url.search} HTTP/1.1`,
      `Host: ${url.host}`,
      'User-Agent: orb-actions',
      'Connection: close',
      `Range: bytes=${start}-${end}`,
    ];
    for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() !== 'range') lines.push(`${k}: ${v}`);
    sock.write(lines.join('\r\n') + '\r\n\r\n');
  });
}
