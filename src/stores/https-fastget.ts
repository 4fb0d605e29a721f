import { fastGet } from '../net/fast-get.js';

/**
 * The ranged GET of the file-like stores on the raw-socket path of src/net/fast-get.ts: a range
 * lands straight in the caller's buffer. Anything unusual (redirects, chunked bodies, a server
 * that ignores Range) answers 'fallback' and the caller uses the regular client.
 */
export interface FastResult {
  /** 'ok': the range landed in `target`; 'fallback': use the regular client; otherwise an HTTP status to report */
  kind: 'ok' | 'fallback' | 'status';
  status?: number;
  headers?: Record<string, string>;
  /** bytes of the body written into target (also on errors, for resumption) */
  received: number;
}

/**
 * GET `url` bytes [start, start + target.length) into `target`. Resolves 'ok' when all arrived,
 * 'fallback'/'status' without consuming a body; rejects (with `received` set on the error) when
 * the connection fails mid-body.
 */
export async function fastRangeGet(
  url: URL,
  headers: Record<string, string>,
  start: number,
  target: Buffer,
  opts: { signal?: AbortSignal; idleMs?: number; onData?: (n: number) => void; wholeFileSize?: number },
): Promise<FastResult> {
  const end = start + target.length - 1;
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() !== 'range') h[k] = v;
  h.Range = `bytes=${start}-${end}`;
  let received = 0;
  try {
    const r = await fastGet(
      url,
      h,
      { idleMs: opts.idleMs ?? 60_000, signal: opts.signal },
      {
        head: (status, hs) => {
          const ranged =
            status === 206 && new RegExp(`^bytes ${start}-${end}/`).test(hs['content-range'] ?? '');
          const whole = status === 200 && start === 0 && opts.wholeFileSize === target.length;
          const exact = Number(hs['content-length']) === target.length && !hs['transfer-encoding'];
          if ((ranged || whole) && exact) return 'body';
          return status >= 400 ? 'status' : 'fallback';
        },
        target: () => target.subarray(received),
        data: (n) => {
          received += n;
          opts.onData?.(n);
        },
      },
    );
    if (r.decision === 'body') return { kind: 'ok', received };
    return { kind: r.decision as 'status' | 'fallback', status: r.status, headers: r.headers, received: 0 };
  } catch (err) {
    throw Object.assign(err as Error, { received });
  }
}
