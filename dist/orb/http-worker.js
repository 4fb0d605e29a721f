import { createRequire as __WEBPACK_EXTERNAL_createRequire } from "module";
/******/ // The require scope
/******/ var __nccwpck_require__ = {};
/******/ 
/************************************************************************/
/******/ /* webpack/runtime/define property getters */
/******/ (() => {
/******/ 	// define getter functions for harmony exports
/******/ 	__nccwpck_require__.d = (exports, definition) => {
/******/ 		for(var key in definition) {
/******/ 			if(__nccwpck_require__.o(definition, key) && !__nccwpck_require__.o(exports, key)) {
/******/ 				Object.defineProperty(exports, key, { enumerable: true, get: definition[key] });
/******/ 			}
/******/ 		}
/******/ 	};
/******/ })();
/******/ 
/******/ /* webpack/runtime/hasOwnProperty shorthand */
/******/ (() => {
/******/ 	__nccwpck_require__.o = (obj, prop) => (Object.prototype.hasOwnProperty.call(obj, prop))
/******/ })();
/******/ 
/************************************************************************/
var __webpack_exports__ = {};

// EXPORTS
__nccwpck_require__.d(__webpack_exports__, {
  dM: () => (/* binding */ Fail),
  Jt: () => (/* binding */ get),
  yJ: () => (/* binding */ put)
});

;// CONCATENATED MODULE: external "node:crypto"
const external_node_crypto_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:crypto");
;// CONCATENATED MODULE: external "node:fs"
const external_node_fs_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:fs");
;// CONCATENATED MODULE: external "node:worker_threads"
const external_node_worker_threads_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:worker_threads");
;// CONCATENATED MODULE: external "node:zlib"
const external_node_zlib_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:zlib");
;// CONCATENATED MODULE: ./lib/core/log.js
const secrets = new Set();
/** The suffixes Windows appends before encoding an answer-file password (see windows/accounts.ts). */
const UNATTEND_SUFFIXES = (/* unused pure expression or super */ null && (['', 'Password', 'AdministratorPassword']));
/**
 * Every form a secret takes in what orb writes: as given, URL-encoded (query strings), base64
 * (basic auth), UTF-16LE (Windows files, read as text) and base64 of UTF-16LE with the suffixes
 * of answer-file passwords.
 */
function secretForms(secret) {
    const forms = new Set([secret, encodeURIComponent(secret), Buffer.from(secret).toString('base64')]);
    forms.add(Buffer.from(secret, 'utf16le').toString('latin1'));
    for (const suffix of UNATTEND_SUFFIXES)
        forms.add(Buffer.from(secret + suffix, 'utf16le').toString('base64'));
    return [...forms].filter((f) => f.length >= 3);
}
function mask(secret) {
    if (!secret || secret.length < 3)
        return;
    for (const form of secretForms(secret)) {
        if (secrets.has(form))
            continue;
        secrets.add(form);
        for (const fn of maskListeners)
            fn(form);
    }
}
const maskListeners = (/* unused pure expression or super */ null && ([]));
function onMask(fn) {
    maskListeners.push(fn);
    for (const s of secrets)
        fn(s);
}
// scheme://user:password@host: everything between "//" and the last "@" before the path.
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^/\s?#"'<>]*@/gi;
// Query parameters that carry a credential: S3/GCS/Azure signatures, tokens, credentials.
const SECRET_PARAMS = 'X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|X-Goog-Credential|Signature|sig|token|access_token|id_token|refresh_token|private_token|job_token|password|client_secret';
const QUERY_SECRET = new RegExp(`([?&;](?:${SECRET_PARAMS})=)[^&\\s"'<>#]+`, 'gi');
// Authorization: Basic/Bearer/AWS4-HMAC-SHA256 ..., and the token headers of GitLab and others
// (a shell placeholder such as $TOKEN in a hint is left alone).
const AUTH_HEADER = /\b((?:proxy-)?authorization|private-token|job-token|deploy-token|x-api-key|x-amz-security-token)(["']?\s*[:=]\s*["']?)(?:(basic|bearer|token|aws4-hmac-sha256)\s+)?([^\r\n"',}]+)/gi;
const BEARER = /\b(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}/g;
/**
 * The one redaction function: registered secrets in all their forms, URL user information,
 * credential query parameters and authorization headers become `***`.
 */
function log_redact(text) {
    let out = text;
    // Longest first, so a form that contains another is replaced whole.
    for (const s of [...secrets].sort((a, b) => b.length - a.length))
        out = out.split(s).join('***');
    out = out.replace(URL_USERINFO, '$1***@');
    out = out.replace(QUERY_SECRET, '$1***');
    out = out.replace(AUTH_HEADER, (m, name, sep, scheme, value) => value?.startsWith('$') ? m : scheme ? `${name}${sep}${scheme} ***` : `${name}${sep}***`);
    out = out.replace(BEARER, '$1***');
    return out;
}
/**
 * Registers the credentials inside a URL or reference the user typed (the password of
 * `scheme://user:password@host`, signature and token parameters), so they are masked even where
 * they appear on their own, and registered with the CI's masking (core.setSecret) too.
 */
function maskUrlSecrets(text) {
    if (!text)
        return;
    for (const m of text.matchAll(/\b[a-z][a-z0-9+.-]*:\/\/([^/\s?#"'<>]*)@/gi)) {
        const info = m[1];
        const colon = info.indexOf(':');
        mask(safeDecode(colon < 0 ? info : info.slice(colon + 1)));
        if (colon >= 0)
            mask(info.slice(colon + 1));
    }
    for (const m of text.matchAll(new RegExp(`[?&;](?:${SECRET_PARAMS})=([^&\\s"'<>#]+)`, 'gi'))) {
        mask(m[1]);
        mask(safeDecode(m[1]));
    }
}
function safeDecode(s) {
    try {
        return decodeURIComponent(s);
    }
    catch {
        return s;
    }
}
class StderrLogger {
    // A plain field, not a parameter property: worker threads load this file (through errors.ts)
    // from its TypeScript source under the tests, and Node's type stripping refuses those.
    verbose;
    constructor(verbose = !!process.env.ORB_DEBUG) {
        this.verbose = verbose;
    }
    info(msg) {
        process.stderr.write(log_redact(msg) + '\n');
    }
    warn(msg) {
        process.stderr.write(`warning: ${log_redact(msg)}\n`);
    }
    error(msg) {
        process.stderr.write(`error: ${log_redact(msg)}\n`);
    }
    debug(msg) {
        if (this.verbose)
            process.stderr.write(`debug: ${log_redact(msg)}\n`);
    }
}
/** For library code and tests that run outside a command. */
const silentLogger = { info() { }, warn() { }, error() { }, debug() { } };

;// CONCATENATED MODULE: ./lib/core/errors.js
/**
 * Typed errors. Every failure that reaches a user goes through one top-level catch (CLI or action
 * wrapper), which prints `message` and, when present, `hint` (what to do about it).
 */

class errors_OrbError extends Error {
    kind;
    hint;
    /**
     * Results a failed run still reports (e.g. where a failed smoke test left its evidence): set as
     * action outputs and printed with --json, so `if: failure()` steps and scripts can find them.
     */
    outputs;
    constructor(kind, message, options = {}) {
        super(message, options.cause === undefined ? undefined : { cause: options.cause });
        this.name = 'OrbError';
        this.kind = kind;
        this.hint = options.hint;
        this.outputs = options.outputs;
    }
}
class UsageError extends errors_OrbError {
    constructor(message, hint) {
        super('usage', message, hint === undefined ? {} : { hint });
        this.name = 'UsageError';
    }
}
/**
 * Exit codes: 2 for usage (as getopt tools do), 130 for interruption, 1 otherwise. A run ended by
 * a signal exits 128 + its number instead (130 SIGINT, 143 SIGTERM, 129 SIGHUP): see cleanup.ts.
 */
function exitCodeFor(err) {
    if (err instanceof errors_OrbError) {
        if (err.kind === 'usage')
            return 2;
        if (err.kind === 'interrupted')
            return 130;
    }
    return 1;
}
/** The text a user sees for a failure, with every credential redacted (see core/log.ts). */
function describeError(err) {
    if (err instanceof errors_OrbError) {
        return redact(err.hint ? `${err.message}\n  hint: ${err.hint}` : err.message);
    }
    if (err instanceof Error)
        return redact(`${err.name}: ${err.message}`);
    return redact(String(err));
}

;// CONCATENATED MODULE: external "node:net"
const external_node_net_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:net");
;// CONCATENATED MODULE: external "node:http"
const external_node_http_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:http");
;// CONCATENATED MODULE: external "node:https"
const external_node_https_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:https");
;// CONCATENATED MODULE: external "node:tls"
const external_node_tls_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:tls");
;// CONCATENATED MODULE: ./lib/net/proxy.js





function envValue(env, name) {
    // lower case first, as curl does
    const v = env[name.toLowerCase()] ?? env[name.toUpperCase()];
    return v && v.trim() ? v.trim() : undefined;
}
/** The proxy `target` goes through, or undefined for a direct connection. */
function proxyFor(target, env = process.env) {
    const scheme = target.protocol === 'https:' ? 'https' : 'http';
    const raw = envValue(env, `${scheme}_proxy`) ?? envValue(env, 'all_proxy');
    if (!raw)
        return undefined;
    if (bypassed(target, envValue(env, 'no_proxy') ?? ''))
        return undefined;
    let url;
    try {
        url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`);
    }
    catch {
        throw new errors_OrbError('usage', `the ${scheme}_proxy variable is not a URL: ${raw}`);
    }
    if (url.protocol !== 'http:')
        throw new errors_OrbError('usage', `unsupported proxy scheme ${url.protocol} in ${scheme}_proxy`, {
            hint: 'orb speaks to proxies over plain HTTP (http://host:port); CONNECT carries https traffic',
        });
    const auth = url.username
        ? 'Basic ' +
            Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64')
        : undefined;
    return { url, ...(auth ? { auth } : {}) };
}
function ipv4ToInt(ip) {
    const p = ip.split('.');
    if (p.length !== 4 || !p.every((x) => /^\d{1,3}$/.test(x) && Number(x) < 256))
        return undefined;
    return p.reduce((a, x) => a * 256 + Number(x), 0);
}
/**
 * NO_PROXY: comma-separated; `*` matches everything; a name matches itself and its subdomains (a
 * leading dot is optional); an IP address matches itself, an address/bits range its network; an
 * entry with `:port` matches that port only (curl ignores ports; Go and wget honour them).
 */
function bypassed(target, noProxy) {
    const host = target.hostname.replace(/^\[|\]$/g, '').toLowerCase();
    const port = target.port || (target.protocol === 'https:' ? '443' : '80');
    for (let entry of noProxy.split(/[,\s]+/)) {
        entry = entry.trim().toLowerCase();
        if (!entry)
            continue;
        if (entry === '*')
            return true;
        let entryPort;
        const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry) ?? /^([^:]+):(\d+)$/.exec(entry);
        if (m) {
            entry = m[1];
            entryPort = m[2];
        }
        if (entryPort && entryPort !== port)
            continue;
        const cidr = /^([\d.]+|[0-9a-f:]+)\/(\d{1,3})$/.exec(entry);
        if (cidr) {
            const net4 = ipv4ToInt(cidr[1]);
            const h4 = ipv4ToInt(host);
            const bits = Number(cidr[2]);
            if (net4 !== undefined && h4 !== undefined && bits <= 32) {
                const mask = bits === 0 ? 0 : 2 ** 32 - 2 ** (32 - bits);
                if ((net4 & mask) >>> 0 === (h4 & mask) >>> 0)
                    return true;
            }
            else if (cidr[1] === host)
                return true;
            continue;
        }
        if (external_node_net_namespaceObject.isIP(entry) || external_node_net_namespaceObject.isIP(host)) {
            if (entry === host)
                return true;
            continue;
        }
        const name = entry.replace(/^\*?\./, '');
        if (host === name || host.endsWith('.' + name))
            return true;
    }
    return false;
}
/** Opens a CONNECT tunnel to `host:port` through `proxy`; calls back with the raw socket. */
function connectTunnel(proxy, host, port, cb) {
    const sock = external_node_net_namespaceObject.connect({
        host: proxy.url.hostname.replace(/^\[|\]$/g, ''),
        port: Number(proxy.url.port) || 80,
    });
    const target = external_node_net_namespaceObject.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
    let head = Buffer.alloc(0);
    let done = false;
    const finish = (err) => {
        if (done)
            return;
        done = true;
        // paused, so no tunnel bytes are dropped between this listener and the TLS layer's
        sock.pause();
        sock.removeListener('data', onData);
        if (err) {
            sock.destroy();
            cb(err);
        }
        else
            cb(null, sock);
    };
    const onData = (chunk) => {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
            if (head.length > 16 << 10)
                finish(new Error('the proxy answered CONNECT with oversized headers'));
            return;
        }
        const status = /^HTTP\/1\.[01] (\d{3})/.exec(head.toString('latin1', 0, end));
        if (status?.[1] !== '200') {
            finish(Object.assign(new Error(`the proxy ${proxy.url.host} refused CONNECT ${target}: ${head.toString('latin1', 0, Math.min(end, 80)).split('\r\n')[0]}`), {
                code: 'EPROXY',
            }));
            return;
        }
        // bytes after the head belong to the tunnel (a server speaking first): give them back
        if (head.length > end + 4)
            sock.unshift(head.subarray(end + 4));
        finish(null);
    };
    sock.on('data', onData);
    sock.once('error', (e) => finish(e));
    sock.once('close', () => finish(new Error(`the proxy ${proxy.url.host} closed the connection during CONNECT`)));
    sock.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n` +
        (proxy.auth ? `Proxy-Authorization: ${proxy.auth}\r\n` : '') +
        '\r\n');
}
const none = undefined;
/**
 * An https.Agent whose connections go through a CONNECT tunnel when the proxy rules say so for
 * the host they are for, and straight otherwise: one agent serves every target.
 */
class ProxyHttpsAgent extends external_node_https_namespaceObject.Agent {
    createConnection(options, cb) {
        const host = options.host ?? 'localhost';
        const port = Number(options.port) || 443;
        const proxy = proxyFor(new URL(`https://${external_node_net_namespaceObject.isIPv6(host) ? `[${host}]` : host}:${port}/`));
        if (!proxy)
            return super.createConnection(options);
        connectTunnel(proxy, host, port, (err, raw) => {
            if (err || !raw)
                return cb?.(err ?? new Error('no tunnel'), none);
            const servername = options.servername ?? (external_node_net_namespaceObject.isIP(host) ? undefined : host);
            const secure = external_node_tls_namespaceObject.connect({ ...options, socket: raw, ...(servername ? { servername } : {}) });
            cb?.(null, secure);
        });
        return undefined;
    }
}
/**
 * An http.Agent for clients that cannot send absolute URIs (the AWS SDK): an http target behind a
 * proxy is reached through a CONNECT tunnel too, which any proxy that allows CONNECT to the port
 * carries.
 */
class ProxyHttpAgent extends external_node_http_namespaceObject.Agent {
    createConnection(options, cb) {
        const host = options.host ?? 'localhost';
        const port = Number(options.port) || 80;
        const proxy = proxyFor(new URL(`http://${external_node_net_namespaceObject.isIPv6(host) ? `[${host}]` : host}:${port}/`));
        if (!proxy)
            return super.createConnection(options);
        connectTunnel(proxy, host, port, (err, raw) => {
            // the tunnel was paused after CONNECT; the HTTP client's listener needs it flowing again
            raw?.resume();
            cb?.(err, raw ?? none);
        });
        return undefined;
    }
}

;// CONCATENATED MODULE: ./lib/net/fast-get.js


function parseHead(text) {
    const lines = text.split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
    if (!m)
        throw new Error(`not an HTTP response: ${(lines[0] ?? '').slice(0, 60)}`);
    const headers = {};
    for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        if (i > 0)
            headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    return { status: Number(m[1]), headers };
}
function cut(message, code) {
    return Object.assign(new Error(message), { code });
}
/**
 * GET `url` (http: only) with `headers`. Resolves when the head was declined or the whole body
 * (Content-Length bytes) landed; rejects when the connection fails, stalls for `idleMs` or
 * `signal` aborts (name AbortError).
 */
function fastGet(url, headers, opts, sink) {
    return new Promise((resolve, reject) => {
        const head = Buffer.allocUnsafe(32 << 10);
        let hfill = 0;
        let inBody = false;
        let left = 0;
        let result;
        let settled = false;
        const finish = (err) => {
            if (settled)
                return;
            settled = true;
            opts.signal?.removeEventListener('abort', onAbort);
            sock.destroy();
            if (err || !result)
                reject(err ?? cut('the connection closed before an answer', 'ECONNRESET'));
            else
                resolve(result);
        };
        const onAbort = () => finish(Object.assign(new Error('aborted'), { name: 'AbortError', code: 'ABORT_ERR' }));
        const target = () => {
            if (!inBody)
                return head.subarray(hfill);
            const t = sink.target();
            return t.length > left ? t.subarray(0, left) : t;
        };
        const onHead = (end) => {
            const r = parseHead(head.toString('latin1', 0, end));
            const decision = sink.head(r.status, r.headers);
            result = { ...r, decision };
            if (decision !== 'body')
                return false;
            left = Number(r.headers['content-length']);
            if (!Number.isFinite(left) || r.headers['transfer-encoding'])
                throw new Error('a fast GET body needs a Content-Length');
            inBody = true;
            let extra = head.subarray(end + 4, hfill);
            if (extra.length > left)
                extra = extra.subarray(0, left);
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
        const sock = external_node_net_namespaceObject.connect({
            host: peer.hostname.replace(/^\[|\]$/g, ''),
            port: Number(peer.port) || 80,
            onread: {
                buffer: target,
                callback: (n) => {
                    try {
                        if (!inBody) {
                            hfill += n;
                            const end = head.subarray(0, hfill).indexOf('\r\n\r\n');
                            if (end < 0) {
                                if (hfill >= head.length)
                                    throw new Error('response headers too large');
                                return true;
                            }
                            if (!onHead(end)) {
                                finish();
                                return false;
                            }
                        }
                        else {
                            left -= n;
                            sink.data(n);
                        }
                        if (left === 0) {
                            finish();
                            return false;
                        }
                        return true;
                    }
                    catch (err) {
                        finish(err);
                        return false;
                    }
                },
            },
        });
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        if (opts.signal?.aborted)
            onAbort();
        sock.setTimeout(opts.idleMs, () => finish(cut(`no data for ${Math.round(opts.idleMs / 1000)} s`, 'ETIMEDOUT')));
        sock.on('error', (e) => finish(e));
        sock.on('end', () => finish(cut(inBody ? 'the connection was cut' : 'the connection closed before an answer', 'ECONNRESET')));
        sock.on('close', () => finish(cut(inBody ? 'the connection was cut' : 'the connection closed before an answer', 'ECONNRESET')));
        const lines = [
            proxy ? `GET ${url.href} HTTP/1.1` : `GET ${url.pathname}${url.search} HTTP/1.1`,
            `Host: ${url.host}`,
            ...(proxy?.auth ? [`Proxy-Authorization: ${proxy.auth}`] : []),
            'User-Agent: orb-actions',
            'Connection: close',
        ];
        for (const [k, v] of Object.entries(headers))
            lines.push(`${k}: ${v}`);
        sock.write(lines.join('\r\n') + '\r\n\r\n');
    });
}

;// CONCATENATED MODULE: external "node:stream"
const external_node_stream_namespaceObject = __WEBPACK_EXTERNAL_createRequire(import.meta.url)("node:stream");
;// CONCATENATED MODULE: ./lib/net/retry.js

/**
 * Attempts and base delay come from ORB_RETRY_ATTEMPTS / ORB_RETRY_BASE_MS (their older names for
 * the stores, ORB_HTTP_ATTEMPTS / ORB_HTTP_BACKOFF_MS, still work): fault-injection tests shorten
 * the backoff with them, and a user on a flaky link can allow more attempts.
 */
function defaultRetryPolicy(env = process.env) {
    return {
        attempts: positive(env.ORB_RETRY_ATTEMPTS) ?? positive(env.ORB_HTTP_ATTEMPTS) ?? 6,
        baseDelayMs: nonNegative(env.ORB_RETRY_BASE_MS) ?? nonNegative(env.ORB_HTTP_BACKOFF_MS) ?? 500,
        maxDelayMs: 30_000,
        maxRetryAfterMs: 300_000,
        maxTotalMs: 15 * 60_000,
    };
}
function positive(v) {
    const n = Number(v);
    return v && Number.isFinite(n) && n > 0 ? Math.floor(n) : undefined;
}
function nonNegative(v) {
    const n = Number(v);
    return v && Number.isFinite(n) && n >= 0 ? n : undefined;
}
/** 408, 429 and 5xx except 501 (not implemented) and 505 (version): asking again may work. */
function retry_isRetryableStatus(status) {
    return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}
/** Retry-After as milliseconds: delta-seconds or an HTTP date; undefined when absent or unreadable. */
function retry_parseRetryAfter(value, now = Date.now()) {
    const raw = Array.isArray(value) ? value[0] : value;
    if (typeof raw !== 'string' || !raw.trim())
        return undefined;
    const v = raw.trim();
    if (/^\d+(\.\d+)?$/.test(v))
        return Math.round(Number(v) * 1000);
    const t = Date.parse(v);
    return Number.isFinite(t) ? Math.max(0, t - now) : undefined;
}
/**
 * The wait before attempt n + 1 (n is 1-based): the server's Retry-After when given, else full
 * jitter over the exponential step (uniform in [0, min(max, base * 2^(n-1))]), which spreads
 * many clients hitting one overloaded server better than a fixed step.
 */
function backoffMs(attempt, policy, retryAfterMs) {
    if (retryAfterMs !== undefined)
        return retryAfterMs;
    const step = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
    return Math.round(Math.random() * step);
}
/** Waits `ms`; rejects with OrbError('interrupted') as soon as `signal` aborts. */
function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
        if (signal?.aborted) {
            reject(new errors_OrbError('interrupted', 'interrupted'));
            return;
        }
        const t = setTimeout(() => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
        }, ms);
        const onAbort = () => {
            clearTimeout(t);
            reject(new errors_OrbError('interrupted', 'interrupted'));
        };
        signal?.addEventListener('abort', onAbort, { once: true });
    });
}
const TRANSIENT_CODES = new Set([
    'ECONNRESET',
    'ECONNREFUSED',
    'EPIPE',
    'ETIMEDOUT',
    'EAI_AGAIN',
    'ENOTFOUND',
    'ECONNABORTED',
    'UND_ERR_SOCKET',
    'ERR_STREAM_PREMATURE_CLOSE',
    'EHOSTUNREACH',
    'ENETUNREACH',
]);
/** A failure of the connection itself (reset, refused, timeout, cut short): worth another try. */
function retry_isConnectionError(err) {
    const code = err?.code;
    if (code === 'ABORT_ERR' || err?.name === 'AbortError')
        return false;
    if (typeof code === 'string' && TRANSIENT_CODES.has(code))
        return true;
    return /socket hang up|premature close|aborted|connection was cut|closed before an answer|no data for/i.test(err?.message ?? '');
}
/** Thrown when a server asks for a longer wait than the policy allows. */
class RetryAfterTooLongError extends errors_OrbError {
    constructor(what, waitMs, cause) {
        super('network', `the server asks to retry ${what} after ${Math.round(waitMs / 1000)} s (${cause?.message ?? String(cause)})`, { hint: 'the service is rate limiting or down for maintenance: rerun later' });
    }
}
/**
 * Runs `fn(attempt)` until it succeeds, an error is not retryable, the attempts are used up or
 * the next wait would break the time budget. An abort ends any wait at once.
 */
async function retry_retry(fn, o) {
    const policy = o.policy ?? defaultRetryPolicy();
    const classify = o.classify ?? ((err) => ({ retry: retry_isConnectionError(err) }));
    let waited = 0;
    for (let attempt = 1;; attempt++) {
        try {
            return await fn(attempt);
        }
        catch (err) {
            if (o.signal?.aborted)
                throw o.signal.reason instanceof OrbError ? o.signal.reason : interrupted();
            const v = classify(err);
            if (!v.retry)
                throw err;
            if (v.retryAfterMs !== undefined && v.retryAfterMs > policy.maxRetryAfterMs)
                throw new RetryAfterTooLongError(o.what, v.retryAfterMs, err);
            const wait = backoffMs(attempt, policy, v.retryAfterMs);
            if (attempt >= policy.attempts || waited + wait > policy.maxTotalMs)
                throw o.gaveUp?.(err, attempt) ?? err;
            o.onRetry?.(`${o.what}: ${err?.message ?? String(err)}; retrying in ${(wait / 1000).toFixed(1)} s (attempt ${attempt + 1} of ${policy.attempts})`);
            await sleep(wait, o.signal);
            waited += wait;
        }
    }
}
function interrupted() {
    return new OrbError('interrupted', 'interrupted');
}

;// CONCATENATED MODULE: ./lib/net/http.js







/** Keep-alive agents; the https one tunnels through HTTPS_PROXY where NO_PROXY does not say otherwise. */
function makeAgents(maxSockets, tlsSettings = {}) {
    const ca = tlsSettings.ca?.length ? { ca: [...external_node_tls_namespaceObject.getCACertificates('default'), ...tlsSettings.ca] } : {};
    return {
        http: new external_node_http_namespaceObject.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets }),
        https: new ProxyHttpsAgent({
            keepAlive: true,
            maxSockets,
            maxFreeSockets: maxSockets,
            ...ca,
            ...(tlsSettings.rejectUnauthorized === false ? { rejectUnauthorized: false } : {}),
        }),
    };
}
let shared;
/** The process-wide agents of callers that do not bring their own. */
function sharedAgents() {
    return (shared ??= makeAgents(64));
}
function isReplayable(body) {
    return !(body instanceof Readable);
}
function bodyLength(body) {
    if (typeof body === 'string')
        return Buffer.byteLength(body);
    if (Buffer.isBuffer(body))
        return body.length;
    if (body instanceof external_node_stream_namespaceObject.Readable)
        return undefined;
    return body.length;
}
function http_interrupted(signal) {
    const r = signal?.reason;
    return r instanceof errors_OrbError ? r : new errors_OrbError('interrupted', 'interrupted');
}
/**
 * One request, one attempt, no redirects followed. Resolves with the response whatever its
 * status. Rejects with the connection's error (its `code` kept: ECONNRESET, ETIMEDOUT...),
 * OrbError('input') when the body cannot be read, OrbError('interrupted') on abort. When the
 * server answers before the body is sent (401, 413), sending stops and the connection is not
 * reused. An abort after the answer destroys the response stream.
 */
function sendOnce(o) {
    const url = o.url;
    const secure = url.protocol === 'https:';
    const agents = o.agents ?? sharedAgents();
    const method = o.method ?? 'GET';
    const headers = { 'user-agent': 'orb-actions', ...(o.headers ?? {}) };
    const body = o.body;
    const len = body === undefined ? undefined : bodyLength(body);
    if (len !== undefined)
        headers['content-length'] = len;
    else if (body === undefined && (method === 'PUT' || method === 'POST' || method === 'PATCH'))
        headers['content-length'] = 0;
    return new Promise((resolve, reject) => {
        if (o.signal?.aborted) {
            reject(http_interrupted(o.signal));
            return;
        }
        let settled = false;
        let source;
        const fail = (err) => {
            if (settled)
                return;
            settled = true;
            source?.destroy();
            o.signal?.removeEventListener('abort', onAbort);
            reject(err);
        };
        const onAbort = () => {
            const e = http_interrupted(o.signal);
            r.destroy(e);
            fail(e);
        };
        // an http target behind HTTP_PROXY: the request goes to the proxy with the absolute URI
        const viaProxy = secure ? undefined : proxyFor(url);
        const r = viaProxy
            ? external_node_http_namespaceObject.request({
                host: viaProxy.url.hostname.replace(/^\[|\]$/g, ''),
                port: Number(viaProxy.url.port) || 80,
                path: url.href,
                method,
                headers: {
                    host: url.host,
                    ...headers,
                    ...(viaProxy.auth ? { 'proxy-authorization': viaProxy.auth } : {}),
                },
                agent: agents.http,
            })
            : (secure ? external_node_https_namespaceObject : external_node_http_namespaceObject).request(url, {
                method,
                headers,
                agent: secure ? agents.https : agents.http,
            });
        if (o.idleMs) {
            const idle = o.idleMs;
            r.setTimeout(idle, () => r.destroy(Object.assign(new Error(`no data from ${url.host} for ${Math.round(idle / 1000)} s`), {
                code: 'ETIMEDOUT',
            })));
        }
        r.on('error', fail);
        r.on('response', (res) => {
            if (settled) {
                res.destroy();
                return;
            }
            settled = true;
            if (source && !source.readableEnded) {
                source.unpipe(r);
                source.destroy();
                // the request body is incomplete, so this connection cannot carry another request
                res.once('close', () => r.destroy());
            }
            o.signal?.removeEventListener('abort', onAbort);
            if (o.signal) {
                const s = o.signal;
                const abortBody = () => res.destroy(http_interrupted(s));
                s.addEventListener('abort', abortBody, { once: true });
                res.once('close', () => s.removeEventListener('abort', abortBody));
            }
            resolve(res);
        });
        o.signal?.addEventListener('abort', onAbort, { once: true });
        if (body === undefined)
            r.end();
        else if (typeof body === 'string' || Buffer.isBuffer(body))
            r.end(body);
        else {
            source = body instanceof external_node_stream_namespaceObject.Readable ? body : body.open();
            source.on('error', (err) => {
                r.destroy(err);
                // a local read error is not the network's fault: report it as it is
                fail(new errors_OrbError('input', `cannot read the data to upload: ${err.message}`, { cause: err }));
            });
            source.pipe(r);
        }
    });
}
/** sendOnce, following redirects; credentials in `authHeaders` stay with the first origin. */
async function sendFollowing(o) {
    let url = o.url;
    const origin = url.origin;
    const maxHops = o.maxHops ?? 10;
    for (let hop = 0;; hop++) {
        const headers = { ...(o.headers ?? {}), ...(url.origin === origin ? (o.authHeaders ?? {}) : {}) };
        const res = await sendOnce({ ...o, url, headers });
        const status = res.statusCode ?? 0;
        const loc = res.headers.location;
        if (o.follow === false || !loc || ![301, 302, 303, 307, 308].includes(status))
            return { res, url };
        res.resume();
        if (hop >= maxHops)
            throw new errors_OrbError('network', `too many redirects from ${o.url.host}`);
        url = new URL(loc, url);
    }
}
/** Thrown by sendWithRetry for a retryable status that stayed after the last attempt. */
class RetryableStatusError extends errors_OrbError {
    status;
    retryAfterMs;
    constructor(status, what, retryAfterMs) {
        super('network', `${what}: HTTP ${status}`);
        this.status = status;
        this.retryAfterMs = retryAfterMs;
    }
}
/**
 * sendFollowing under the retry policy: 408/429/5xx and dropped connections are tried again
 * (Retry-After honoured), except when the body is a one-shot stream, which cannot be sent twice.
 * Resolves with the first response that is not a retryable status.
 */
function sendWithRetry(o) {
    const replayable = isReplayable(o.body);
    return retry(async () => {
        const r = await sendFollowing(o);
        const status = r.res.statusCode ?? 0;
        if (!isRetryableStatus(status))
            return r;
        r.res.resume();
        throw new RetryableStatusError(status, o.what, parseRetryAfter(r.res.headers['retry-after']));
    }, {
        what: o.what,
        ...(o.policy ? { policy: o.policy } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
        ...(o.onRetry ? { onRetry: o.onRetry } : {}),
        classify: (err) => {
            if (!replayable)
                return { retry: false };
            if (err instanceof RetryableStatusError)
                return {
                    retry: true,
                    ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
                };
            return { retry: isConnectionError(err) };
        },
    });
}

;// CONCATENATED MODULE: ./lib/net/http-worker.js








// (no parameter properties here or in what this file imports: under vitest the thread runs the
// .ts sources with Node's type stripping, which accepts only erasable syntax)
class Fail extends Error {
    kind;
    extra;
    constructor(kind, message, extra = {}) {
        super(message);
        this.kind = kind;
        this.extra = extra;
    }
}
function writeAll(fd, buf, pos) {
    for (let done = 0; done < buf.length;)
        done += (0,external_node_fs_namespaceObject.writeSync)(fd, buf, done, buf.length - done, pos + done);
}
function readAll(fd, buf, pos) {
    for (let done = 0; done < buf.length;) {
        const n = (0,external_node_fs_namespaceObject.readSync)(fd, buf, done, buf.length - done, pos + done);
        if (n === 0)
            throw new Fail('internal', `unexpected end of file at ${pos + done}`);
        done += n;
    }
}
const tooLong = (size) => new Fail('integrity', `the blob is longer than the ${size} bytes the manifest says`);
/** Downloads one blob (see the file comment); resolves with the bytes moved over the network. */
async function get(m, post) {
    const policy = { ...defaultRetryPolicy(), ...m.retry };
    const size = m.size;
    let have = m.have ?? 0;
    let hash = (0,external_node_crypto_namespaceObject.createHash)('sha256');
    let fd;
    let buf;
    // file mode: bytes land in a staging buffer, hashed as they land, written 4 MiB at a time
    let staging = Buffer.alloc(0);
    let fill = 0;
    const t = m.target;
    if (t.kind === 'file') {
        fd = (0,external_node_fs_namespaceObject.openSync)(t.path, 'r+');
        staging = Buffer.allocUnsafe(Math.max(1, Math.min(size, 4 << 20)));
        // continue a blob an earlier run left half done: its bytes are in the file already
        for (let at = 0; at < have;) {
            const n = Math.min(staging.length, have - at);
            readAll(fd, staging.subarray(0, n), t.offset + at);
            hash.update(staging.subarray(0, n));
            at += n;
        }
    }
    else
        buf = Buffer.allocUnsafe(size);
    const fileOffset = t.kind === 'file' ? t.offset : 0;
    let reported = 0;
    let downloaded = 0;
    const flush = () => {
        if (!fill || fd === undefined)
            return;
        writeAll(fd, staging.subarray(0, fill), fileOffset + have - fill);
        fill = 0;
        post({ flushed: have });
    };
    const sinkTarget = () => (buf ? buf.subarray(have) : staging.subarray(fill));
    const landed = (n) => {
        hash.update(buf ? buf.subarray(have, have + n) : staging.subarray(fill, fill + n));
        have += n;
        downloaded += n;
        reported += n;
        if (reported >= 4 << 20) {
            post({ progress: reported });
            reported = 0;
        }
        if (!buf) {
            fill += n;
            if (fill === staging.length || have === size)
                flush();
        }
    };
    const restart = () => {
        if (have > 0)
            post({ log: 'the server ignored the range request; downloading the blob again from the start' });
        hash = (0,external_node_crypto_namespaceObject.createHash)('sha256');
        have = 0;
        fill = 0;
    };
    const state = { short: false, wait: undefined };
    // What to do with an answer's status line; throws what the retry loop should see.
    const onHead = (status, headers) => {
        if (status === 401 || status === 403)
            throw new Fail('auth', `HTTP ${status}`, { status });
        if (status === 404)
            throw new Fail('missing', 'HTTP 404');
        if (status === 416) {
            state.short = true;
            throw new Error(`HTTP 416 for bytes=${have}-`);
        }
        if (retry_isRetryableStatus(status)) {
            state.wait = retry_parseRetryAfter(headers['retry-after']);
            throw new Error(`HTTP ${status}`);
        }
        if (status >= 300 && status < 400)
            return 'redirect';
        if (status !== 200 && status !== 206)
            throw new Fail('network', `HTTP ${status}`);
        let start = 0;
        if (status === 206) {
            const cr = /bytes\s+(\d+)-/.exec(String(headers['content-range'] ?? ''));
            start = cr ? Number(cr[1]) : have;
        }
        if (start !== have) {
            if (start !== 0)
                throw new Fail('network', `asked for bytes from ${have}, the server sent from ${start}`);
            restart();
        }
        const len = Number(headers['content-length']);
        if (headers['transfer-encoding'] || !Number.isFinite(len))
            return 'slow';
        if (have + len > size)
            throw tooLong(size);
        return 'body';
    };
    let stalls = 0;
    let waited = 0;
    try {
        while (have < size) {
            const before = have;
            let why;
            state.wait = undefined;
            try {
                const headers = { ...m.headers };
                if (have > 0)
                    headers.range = `bytes=${have}-`;
                const u = new URL(m.url);
                let mode = 'slow';
                if (u.protocol === 'http:' && !process.env.ORB_NO_FAST_GET) {
                    const r = await fastGet(u, headers, { idleMs: m.idleMs }, { head: onHead, target: sinkTarget, data: landed });
                    mode = r.decision;
                }
                if (mode !== 'body')
                    await slowGet(u, headers, m.idleMs, onHead, sinkTarget, landed, () => have, size);
                flush();
                if (have >= size)
                    break;
                state.short = true;
                why = `the connection closed after ${have} of ${size} bytes`;
            }
            catch (e) {
                try {
                    flush();
                }
                catch (w) {
                    throw new Fail('environment', `cannot write the download: ${w.message}`);
                }
                if (e instanceof Fail)
                    throw e;
                why = e?.message ?? String(e);
            }
            stalls = have > before ? 1 : stalls + 1;
            const ms = backoffMs(stalls, policy, state.wait);
            if (stalls >= policy.attempts || waited + ms > policy.maxTotalMs || ms > policy.maxRetryAfterMs) {
                if (state.short)
                    throw new Fail('truncated', `the server sends only ${have} of ${size} bytes`);
                throw new Fail('network', why);
            }
            post({ log: `${why}; resuming at byte ${have} in ${(ms / 1000).toFixed(1)} s` });
            await sleep(ms);
            waited += ms;
        }
        if (reported)
            post({ progress: reported });
        const digest = 'sha256:' + hash.digest('hex');
        if (digest !== m.digest)
            throw new Fail('mismatch', digest, { downloaded });
        // verified: now the content may be used
        if (buf)
            writeContent(m, buf);
        else if (fd !== undefined && m.write.offsets.length > 1) {
            // identical chunks elsewhere: copy the verified bytes
            for (let at = 0; at < size; at += staging.length) {
                const n = Math.min(staging.length, size - at);
                readAll(fd, staging.subarray(0, n), fileOffset + at);
                for (const off of m.write.offsets.slice(1))
                    writeAll(fd, staging.subarray(0, n), off + at);
            }
        }
        return { downloaded };
    }
    finally {
        if (fd !== undefined)
            (0,external_node_fs_namespaceObject.closeSync)(fd);
    }
}
/** Redirects, chunked answers and https: the regular client (src/net/http.ts). */
async function slowGet(u, headers, idleMs, onHead, target, landed, have, size) {
    // pre-signed storage URLs carry their own authorization; ours stays with the first origin
    const { authorization, ...plain } = headers;
    const { res } = await sendFollowing({
        url: u,
        headers: plain,
        authHeaders: authorization !== undefined ? { authorization } : {},
        idleMs,
        maxHops: 5,
    }).catch((e) => {
        // too many redirects: asking again will not help
        throw e instanceof errors_OrbError && e.kind === 'network' ? new Fail('network', e.message) : e;
    });
    try {
        if (onHead(res.statusCode ?? 0, res.headers) === 'redirect')
            throw new Fail('network', 'too many redirects');
    }
    catch (e) {
        res.resume();
        throw e;
    }
    await new Promise((resolve, reject) => {
        res.on('data', (c) => {
            if (have() + c.length > size) {
                res.destroy();
                reject(tooLong(size));
                return;
            }
            while (c.length) {
                const t = target();
                const k = Math.min(t.length, c.length);
                c.copy(t, 0, 0, k);
                landed(k);
                c = c.subarray(k);
            }
        });
        res.on('end', resolve);
        res.on('error', reject);
        res.on('close', () => {
            if (!res.complete)
                reject(new Error('the connection was cut'));
        });
    });
}
/** A verified blob held in memory: decompress a zstd chunk, check it, write it at every offset. */
function writeContent(m, blob) {
    const w = m.write;
    let content = blob;
    if (m.kind === 'zstd') {
        try {
            content = external_node_zlib_namespaceObject.zstdDecompressSync(blob, { maxOutputLength: Math.max(1, w.length) });
        }
        catch (e) {
            throw new Fail('integrity', `the chunk does not decompress (${e.message})`);
        }
        if (content.length !== w.length)
            throw new Fail('integrity', `the chunk holds ${content.length} bytes, the manifest says ${w.length}`);
        const cd = 'sha256:' + (0,external_node_crypto_namespaceObject.createHash)('sha256').update(content).digest('hex');
        if (cd !== w.digest)
            throw new Fail('integrity', `the chunk's content has digest ${cd}, the manifest says ${w.digest}`);
    }
    const out = (0,external_node_fs_namespaceObject.openSync)(w.path, 'r+');
    try {
        for (const off of w.offsets)
            writeAll(out, content, off);
    }
    finally {
        (0,external_node_fs_namespaceObject.closeSync)(out);
    }
}
/** Sends a file region as the request body; answers status, headers and up to 1 MiB of the response. */
async function put(m, post) {
    let reported = 0;
    const open = () => {
        const src = (0,external_node_fs_namespaceObject.createReadStream)(m.path, {
            start: m.start,
            end: m.start + m.length - 1,
            highWaterMark: 1 << 20,
        });
        src.on('data', (c) => {
            reported += c.length;
            if (reported >= 1 << 20) {
                post({ progress: reported });
                reported = 0;
            }
        });
        src.on('end', () => {
            if (reported)
                post({ progress: reported });
        });
        return src;
    };
    let res;
    try {
        res = await sendOnce({
            method: m.method,
            url: new URL(m.url),
            headers: m.headers,
            body: m.length === 0 ? Buffer.alloc(0) : { length: m.length, open },
            idleMs: m.idleMs,
        });
    }
    catch (e) {
        if (e.kind === 'input')
            throw new Fail('input', `cannot read ${m.path}: ${e.message}`);
        throw new Fail('transient', e.message);
    }
    const parts = [];
    let n = 0;
    try {
        for await (const c of res) {
            if (n < 1 << 20)
                parts.push(c);
            n += c.length;
        }
    }
    catch (e) {
        throw new Fail('transient', e.message);
    }
    return { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString('utf8') };
}
// Only in a thread http-workers.ts started (not when a test imports this file).
if (external_node_worker_threads_namespaceObject.parentPort && external_node_worker_threads_namespaceObject.workerData?.role === 'orb-http') {
    const port = external_node_worker_threads_namespaceObject.parentPort;
    port.on('message', (m) => {
        const post = (x) => port.postMessage({ id: m.id, ...x });
        (m.op === 'get' ? get(m, post) : put(m, post)).then((done) => port.postMessage({ id: m.id, done }), (e) => {
            const f = e instanceof Fail ? e : undefined;
            const error = {
                kind: f?.kind ?? 'internal',
                message: e?.message ?? String(e),
                ...(f?.extra ?? {}),
            };
            port.postMessage({ id: m.id, done: { error } });
        });
    });
}

var __webpack_exports__Fail = __webpack_exports__.dM;
var __webpack_exports__get = __webpack_exports__.Jt;
var __webpack_exports__put = __webpack_exports__.yJ;
export { __webpack_exports__Fail as Fail, __webpack_exports__get as get, __webpack_exports__put as put };
