import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';

/**
 * A plain static file server on 127.0.0.1 with HTTP Range (RFC 9110 single ranges: 206 with
 * Content-Range, 416 when unsatisfiable), the way nginx or S3 answer. Knobs for tests: ignore
 * Range (answer 200), extra headers per path, and a request log.
 */
export interface FileServer {
  url: string;
  port: number;
  requests: { method: string; path: string; range?: string }[];
  options: FileServerOptions;
  close(): Promise<void>;
}

export interface FileServerOptions {
  ignoreRange?: boolean;
  headers?: (path: string) => Record<string, string>;
  /** answer this status instead (e.g. 403 for an expired link) */
  status?: (path: string, range?: string, url?: string) => number | undefined;
  /** drop the connection after sending this many body bytes (a network reset mid-transfer) */
  breakAfter?: (path: string, range?: string) => number | undefined;
}

export async function startFileServer(root: string, options: FileServerOptions = {}): Promise<FileServer> {
  const requests: FileServer['requests'] = [];
  const server = http.createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const range = req.headers.range;
    requests.push({ method: req.method ?? 'GET', path, ...(range ? { range } : {}) });
    const forced = options.status?.(path, range, req.url);
    if (forced) {
      res.writeHead(forced, { 'content-type': 'application/xml' });
      res.end(
        forced === 403
          ? '<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>'
          : '',
      );
      return;
    }
    const file = normalize(join(root, path));
    if (!file.startsWith(normalize(root))) {
      res.writeHead(403).end();
      return;
    }
    const st = await stat(file).catch(() => undefined);
    if (!st?.isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    serveFile(
      req,
      res,
      file,
      st.size,
      {
        'content-type': path.endsWith('.json') ? 'application/json' : 'application/octet-stream',
        'last-modified': st.mtime.toUTCString(),
        ...(options.headers?.(path) ?? {}),
      },
      { ignoreRange: options.ignoreRange === true, breakAfter: options.breakAfter?.(path, range) },
    );
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    options,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** Answers GET/HEAD for one file with single-range support (206/416), as static servers do. */
export function serveFile(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  file: string,
  size: number,
  extra: Record<string, string>,
  opts: { ignoreRange?: boolean; breakAfter?: number } = {},
): void {
  const range = req.headers.range;
  const headers: Record<string, string> = {
    ...(opts.ignoreRange ? {} : { 'accept-ranges': 'bytes' }),
    ...extra,
  };
  let start = 0;
  let end = size - 1;
  let status = 200;
  const m = !opts.ignoreRange && range ? /^bytes=(\d*)-(\d*)$/.exec(range) : null;
  if (m) {
    if (m[1] === '') {
      start = Math.max(0, size - Number(m[2]));
    } else {
      start = Number(m[1]);
      if (m[2] !== '') end = Math.min(end, Number(m[2]));
    }
    if (start >= size || start > end) {
      res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
      return;
    }
    status = 206;
    headers['content-range'] = `bytes ${start}-${end}/${size}`;
  }
  headers['content-length'] = String(Math.max(0, end - start + 1));
  res.writeHead(status, headers);
  if (req.method === 'HEAD' || size === 0) {
    res.end();
    return;
  }
  const cut = opts.breakAfter;
  const src = createReadStream(file, {
    start,
    end: cut === undefined ? end : Math.min(end, start + cut - 1),
    highWaterMark: 1 << 20,
  });
  if (cut === undefined) src.pipe(res);
  else {
    src.on('data', (d) => res.write(d));
    src.on('end', () => setTimeout(() => res.socket?.destroy(), 20));
  }
}
