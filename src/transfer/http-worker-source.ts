/**
 * The body of the transfer worker threads, as plain JavaScript run with
 * `new Worker(HTTP_WORKER_SOURCE, { eval: true })` (a separate file would not survive bundling;
 * it needs only Node built-ins). Receiving and hashing gigabytes is CPU work: spread over a few
 * threads, a pull keeps up with the link instead of with one JavaScript thread.
 *
 *   get   GET a blob (ranges to resume, redirects followed without our credentials, retries with
 *         backoff honouring Retry-After), hashing it as it arrives, either into memory or straight
 *         into the output file; then (memory) check the blob digest, decompress a zstd chunk and
 *         check its content digest, and write the content at every region offset.
 *   put   send a request whose body is a region of a file (blob uploads); answer status, headers
 *         and the (small) response body.
 *
 * Messages back: {id, progress: n} (bytes moved since the last one), {id, flushed: n} (bytes of
 * the blob in the output file, for the journal), {id, log}, and one final {id, done: {...}}.
 */
export const HTTP_WORKER_SOURCE = String.raw`
const { parentPort } = require('node:worker_threads');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const fs = require('node:fs');
const zlib = require('node:zlib');
const crypto = require('node:crypto');
const agents = { 'http:': new http.Agent({ keepAlive: true, maxSockets: 64 }), 'https:': new https.Agent({ keepAlive: true, maxSockets: 64 }) };

class Fail extends Error {
  constructor(kind, message, extra) { super(message); this.kind = kind; Object.assign(this, extra || {}); }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function retryAfter(v) {
  if (!v) return undefined;
  if (/^\d+(\.\d+)?$/.test(v.trim())) return Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.max(0, t - Date.now()) : undefined;
}
function backoff(n, p, ra) {
  if (ra !== undefined) return ra;
  const exp = Math.min(p.maxDelayMs, p.baseDelayMs * Math.pow(2, n - 1));
  return Math.round(exp / 2 + Math.random() * exp / 2);
}
function writeAll(fd, buf, pos) {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, pos + done);
}
function readAll(fd, buf, pos) {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) throw new Fail('internal', 'unexpected end of file at ' + (pos + done));
    done += n;
  }
}
const retryable = (s) => s === 408 || s === 429 || (s >= 500 && s !== 501 && s !== 505);

/** One request with node:http, following redirects; resolves with the response or rejects on network errors. */
function request(method, url, headers, idleMs, hops = 0) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const lib = u.protocol === 'https:' ? https : http;
    const req = lib.request(u, { method, headers: { 'user-agent': 'orb-actions', ...headers }, agent: agents[u.protocol] });
    req.setTimeout(idleMs, () => req.destroy(new Error('no data for ' + Math.round(idleMs / 1000) + ' s')));
    req.on('error', reject);
    req.on('response', (res) => {
      if (res.statusCode >= 300 && res.statusCode < 400 && res.headers.location && hops < 5) {
        res.resume();
        const next = new URL(res.headers.location, u);
        const h = { ...headers };
        // pre-signed storage URLs carry their own authorization; ours stays with the registry
        if (next.host !== u.host) delete h.authorization;
        request(method, next.toString(), h, idleMs, hops + 1).then(resolve, reject);
        return;
      }
      res.setTimeout(idleMs, () => res.destroy(new Error('no data for ' + Math.round(idleMs / 1000) + ' s')));
      resolve(res);
    });
    req.end();
  });
}

function parseHead(text) {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] || '');
  if (!m) throw new Error('not an HTTP response: ' + (lines[0] || '').slice(0, 60));
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: Number(m[1]), headers };
}

/**
 * A plain-HTTP GET whose body the kernel reads straight into the caller's buffers (net onread):
 * no per-packet allocation, no copy. c.head(status, headers) decides: 'body' reads the body
 * into c.target() slices and reports each landing with c.data(n); anything else ends here.
 */
function fastGet(u, headers, idleMs, c) {
  return new Promise((resolve, reject) => {
    const head = Buffer.allocUnsafe(32 << 10);
    let hfill = 0;
    let inBody = false;
    let left = 0;
    let result;
    let settled = false;
    let sock;
    const finish = (err) => {
      if (settled) return;
      settled = true;
      sock.destroy();
      if (err) reject(err);
      else resolve(result);
    };
    const target = () => {
      if (!inBody) return head.subarray(hfill);
      const t = c.target();
      return t.length > left ? t.subarray(0, left) : t;
    };
    sock = net.connect({
      host: u.hostname,
      port: Number(u.port) || 80,
      onread: {
        buffer: target,
        callback: (n) => {
          try {
            if (!inBody) {
              hfill += n;
              const end = head.subarray(0, hfill).indexOf('\r\n\r\n');
              if (end < 0) {
                if (hfill >= head.length) throw new Error('response headers too large');
                return true;
              }
              const r = parseHead(head.toString('latin1', 0, end));
              result = r;
              if (c.head(r.status, r.headers) !== 'body') { finish(); return false; }
              left = Number(r.headers['content-length']);
              inBody = true;
              let extra = head.subarray(end + 4, hfill);
              if (extra.length > left) extra = extra.subarray(0, left);
              while (extra.length) {
                const t = target();
                const k = Math.min(t.length, extra.length);
                extra.copy(t, 0, 0, k);
                left -= k;
                c.data(k);
                extra = extra.subarray(k);
              }
            } else {
              left -= n;
              c.data(n);
            }
            if (inBody && left === 0) { finish(); return false; }
            return true;
          } catch (e) {
            finish(e);
            return false;
          }
        },
      },
    });
    sock.setTimeout(idleMs, () => finish(new Error('no data for ' + Math.round(idleMs / 1000) + ' s')));
    sock.on('error', (e) => finish(e));
    sock.on('end', () => finish(new Error(inBody ? 'the connection was cut' : 'the connection closed before an answer')));
    sock.on('close', () => finish(new Error('the connection was cut')));
    const lines = ['GET ' + u.pathname + u.search + ' HTTP/1.1', 'Host: ' + u.host, 'User-Agent: orb-actions', 'Connection: close'];
    for (const [k, v] of Object.entries(headers)) lines.push(k + ': ' + v);
    sock.write(lines.join('\r\n') + '\r\n\r\n');
  });
}

async function get(m, post) {
  const size = m.size;
  let have = m.have || 0;
  let hash = crypto.createHash('sha256');
  let fd;
  let buf;
  // file mode: bytes land in a staging buffer, hashed as they land, written 4 MiB at a time
  let staging;
  let fill = 0;
  if (m.target.kind === 'file') {
    fd = fs.openSync(m.target.path, 'r+');
    staging = Buffer.allocUnsafe(Math.max(1, Math.min(size, 4 << 20)));
    if (have > 0) {
      // continue a blob an earlier run left half done: its bytes are in the file already
      for (let at = 0; at < have; ) {
        const n = Math.min(staging.length, have - at);
        readAll(fd, staging.subarray(0, n), m.target.offset + at);
        hash.update(staging.subarray(0, n));
        at += n;
      }
    }
  } else buf = Buffer.allocUnsafe(size);
  let reported = 0;
  let downloaded = 0;
  const flush = () => {
    if (!fill) return;
    writeAll(fd, staging.subarray(0, fill), m.target.offset + have - fill);
    fill = 0;
    post({ flushed: have });
  };
  const sinkTarget = () => (buf ? buf.subarray(have) : staging.subarray(fill));
  const landed = (n) => {
    const view = buf ? buf.subarray(have, have + n) : staging.subarray(fill, fill + n);
    hash.update(view);
    have += n;
    downloaded += n;
    reported += n;
    if (reported >= (4 << 20)) { post({ progress: reported }); reported = 0; }
    if (!buf) {
      fill += n;
      if (fill === staging.length || have === size) flush();
    }
  };
  const restart = () => {
    if (have > 0) post({ log: 'the server ignored the range request; downloading the blob again from the start' });
    hash = crypto.createHash('sha256');
    have = 0;
    fill = 0;
  };
  // What to do with an answer's status line; throws what the retry loop should see.
  const onHead = (status, headers, state) => {
    if (status === 401 || status === 403) throw new Fail('auth', 'HTTP ' + status, { status });
    if (status === 404) throw new Fail('missing', 'HTTP 404');
    if (status === 416) { state.short = true; throw new Error('HTTP 416 for bytes=' + have + '-'); }
    if (retryable(status)) { state.wait = retryAfter(headers['retry-after']); throw new Error('HTTP ' + status); }
    if (status >= 300 && status < 400) return 'redirect';
    if (status !== 200 && status !== 206) throw new Fail('network', 'HTTP ' + status);
    let start = 0;
    if (status === 206) {
      const cr = /bytes\s+(\d+)-/.exec(headers['content-range'] || '');
      start = cr ? Number(cr[1]) : have;
    }
    if (start !== have) {
      if (start !== 0) throw new Fail('network', 'asked for bytes from ' + have + ', the server sent from ' + start);
      restart();
    }
    const len = Number(headers['content-length']);
    if (headers['transfer-encoding'] || !Number.isFinite(len)) return 'slow';
    if (have + len > size) throw new Fail('integrity', 'the blob is longer than the ' + size + ' bytes the manifest says');
    return 'body';
  };
  let stalls = 0;
  const state = { short: false, wait: undefined };
  try {
    while (have < size) {
      const before = have;
      let why;
      state.wait = undefined;
      try {
        const headers = { ...m.headers };
        if (have > 0) headers.range = 'bytes=' + have + '-';
        const u = new URL(m.url);
        let mode = 'slow';
        if (u.protocol === 'http:' && !process.env.ORB_NO_FAST_GET) {
          let decided;
          await fastGet(u, headers, m.idleMs, {
            head: (status, h) => (decided = onHead(status, h, state)),
            target: sinkTarget,
            data: landed,
          });
          mode = decided;
        }
        if (mode !== 'body') {
          // redirects, chunked answers and https: node:http
          const res = await request('GET', m.url, headers, m.idleMs);
          try {
            const d = onHead(res.statusCode, res.headers, state);
            if (d === 'redirect') throw new Fail('network', 'too many redirects');
          } catch (e) {
            res.resume();
            throw e;
          }
          await new Promise((resolve, reject) => {
            res.on('data', (c) => {
              if (have + c.length > size) { res.destroy(); reject(new Fail('integrity', 'the blob is longer than the ' + size + ' bytes the manifest says')); return; }
              while (c.length) {
                const t = sinkTarget();
                const k = Math.min(t.length, c.length);
                c.copy(t, 0, 0, k);
                landed(k);
                c = c.subarray(k);
              }
            });
            res.on('end', resolve);
            res.on('error', reject);
            res.on('close', () => { if (!res.complete) reject(new Error('the connection was cut')); });
          });
        }
        if (fd !== undefined) flush();
        if (have >= size) break;
        state.short = true;
        why = 'the connection closed after ' + have + ' of ' + size + ' bytes';
      } catch (e) {
        if (fd !== undefined) { try { flush(); } catch (w) { throw new Fail('environment', 'cannot write the download: ' + w.message); } }
        if (e instanceof Fail) throw e;
        why = e.message || String(e);
      }
      stalls = have > before ? 1 : stalls + 1;
      if (stalls >= m.retry.attempts) {
        if (state.short) throw new Fail('truncated', 'the server sends only ' + have + ' of ' + size + ' bytes');
        throw new Fail('network', why);
      }
      const ms = backoff(stalls, m.retry, state.wait);
      post({ log: why + '; resuming at byte ' + have + ' in ' + (ms / 1000).toFixed(1) + ' s' });
      await sleep(ms);
    }
    if (reported) post({ progress: reported });
    const digest = 'sha256:' + hash.digest('hex');
    if (digest !== m.digest) throw new Fail('mismatch', digest, { downloaded });
    // verified: now the content may be used
    const w = m.write;
    if (buf) {
      let content = buf;
      if (m.kind === 'zstd') {
        try {
          content = zlib.zstdDecompressSync(buf, { maxOutputLength: Math.max(1, w.length) });
        } catch (e) {
          throw new Fail('integrity', 'the chunk does not decompress (' + e.message + ')');
        }
        if (content.length !== w.length) throw new Fail('integrity', 'the chunk holds ' + content.length + ' bytes, the manifest says ' + w.length);
        const cd = 'sha256:' + crypto.createHash('sha256').update(content).digest('hex');
        if (cd !== w.digest) throw new Fail('integrity', "the chunk's content has digest " + cd + ', the manifest says ' + w.digest);
      }
      const out = fs.openSync(w.path, 'r+');
      try { for (const off of w.offsets) writeAll(out, content, off); } finally { fs.closeSync(out); }
    } else if (w.offsets.length > 1) {
      // identical chunks elsewhere: copy the verified bytes
      for (let at = 0; at < size; at += staging.length) {
        const n = Math.min(staging.length, size - at);
        readAll(fd, staging.subarray(0, n), m.target.offset + at);
        for (const off of w.offsets.slice(1)) writeAll(fd, staging.subarray(0, n), off + at);
      }
    }
    return { downloaded };
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

async function put(m, post) {
  const u = new URL(m.url);
  const lib = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(u, { method: m.method, headers: { 'user-agent': 'orb-actions', ...m.headers, 'content-length': m.length }, agent: agents[u.protocol] });
    req.setTimeout(m.idleMs, () => req.destroy(new Error('no data for ' + Math.round(m.idleMs / 1000) + ' s')));
    let src;
    req.on('error', (e) => { if (src) src.destroy(); reject(new Fail('transient', e.message)); });
    req.on('response', (res) => {
      if (src && !src.readableEnded) { src.unpipe(req); src.destroy(); res.once('close', () => req.destroy()); }
      const parts = [];
      let n = 0;
      res.on('data', (c) => { if (n < (1 << 20)) parts.push(c); n += c.length; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts).toString('utf8') }));
      res.on('error', (e) => reject(new Fail('transient', e.message)));
    });
    if (m.length === 0) { req.end(); return; }
    src = fs.createReadStream(m.path, { start: m.start, end: m.start + m.length - 1, highWaterMark: 1 << 20 });
    let reported = 0;
    src.on('data', (c) => { reported += c.length; if (reported >= (1 << 20)) { post({ progress: reported }); reported = 0; } });
    src.on('end', () => { if (reported) post({ progress: reported }); });
    src.on('error', (e) => { req.destroy(); reject(new Fail('input', 'cannot read ' + m.path + ': ' + e.message)); });
    src.pipe(req);
  });
}

parentPort.on('message', (m) => {
  const post = (x) => parentPort.postMessage({ id: m.id, ...x });
  (m.op === 'get' ? get(m, post) : put(m, post)).then(
    (done) => post({ done }),
    (e) => post({ done: { error: { kind: e.kind || 'internal', message: e.message || String(e), status: e.status, downloaded: e.downloaded } } }),
  );
});
`;
