import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { OrbError } from '../core/errors.js';

/**
 * HTTPS_PROXY / HTTP_PROXY / NO_PROXY as curl reads them, for every request orb makes: https
 * targets go through a CONNECT tunnel (TLS is end to end, the proxy sees only host and port),
 * http targets are sent to the proxy with an absolute URI. Like curl there is no implicit bypass,
 * not even for loopback: a target skips the proxy only when NO_PROXY names it.
 */
export interface ProxyChoice {
  /** the proxy, http://[user:pass@]host:port */
  url: URL;
  /** Proxy-Authorization value when the proxy URL carries credentials */
  auth?: string;
}

type Env = Record<string, string | undefined>;

function envValue(env: Env, name: string): string | undefined {
  // lower case first, as curl does
  const v = env[name.toLowerCase()] ?? env[name.toUpperCase()];
  return v && v.trim() ? v.trim() : undefined;
}

/** The proxy `target` goes through, or undefined for a direct connection. */
export function proxyFor(target: URL, env: Env = process.env): ProxyChoice | undefined {
  const scheme = target.protocol === 'https:' ? 'https' : 'http';
  const raw = envValue(env, `${scheme}_proxy`) ?? envValue(env, 'all_proxy');
  if (!raw) return undefined;
  if (bypassed(target, envValue(env, 'no_proxy') ?? '')) return undefined;
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`);
  } catch {
    throw new OrbError('usage', `the ${scheme}_proxy variable is not a URL: ${raw}`);
  }
  if (url.protocol !== 'http:')
    throw new OrbError('usage', `unsupported proxy scheme ${url.protocol} in ${scheme}_proxy`, {
      hint: 'orb speaks to proxies over plain HTTP (http://host:port); CONNECT carries https traffic',
    });
  const auth = url.username
    ? 'Basic ' +
      Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString(
        'base64',
      )
    : undefined;
  return { url, ...(auth ? { auth } : {}) };
}

function ipv4ToInt(ip: string): number | undefined {
  const p = ip.split('.');
  if (p.length !== 4 || !p.every((x) => /^\d{1,3}$/.test(x) && Number(x) < 256)) return undefined;
  return p.reduce((a, x) => a * 256 + Number(x), 0);
}

/**
 * NO_PROXY: comma-separated; `*` matches everything; a name matches itself and its subdomains (a
 * leading dot is optional); an IP address matches itself, an address/bits range its network; an
 * entry with `:port` matches that port only (curl ignores ports; Go and wget honour them).
 */
export function bypassed(target: URL, noProxy: string): boolean {
  const host = target.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  const port = target.port || (target.protocol === 'https:' ? '443' : '80');
  for (let entry of noProxy.split(/[,\s]+/)) {
    entry = entry.trim().toLowerCase();
    if (!entry) continue;
    if (entry === '*') return true;
    let entryPort: string | undefined;
    const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry) ?? /^([^:]+):(\d+)$/.exec(entry);
    if (m) {
      entry = m[1]!;
      entryPort = m[2];
    }
    if (entryPort && entryPort !== port) continue;
    const cidr = /^([\d.]+|[0-9a-f:]+)\/(\d{1,3})$/.exec(entry);
    if (cidr) {
      const net4 = ipv4ToInt(cidr[1]!);
      const h4 = ipv4ToInt(host);
      const bits = Number(cidr[2]);
      if (net4 !== undefined && h4 !== undefined && bits <= 32) {
        const mask = bits === 0 ? 0 : 2 ** 32 - 2 ** (32 - bits);
        if ((net4 & mask) >>> 0 === (h4 & mask) >>> 0) return true;
      } else if (cidr[1] === host) return true;
      continue;
    }
    if (net.isIP(entry) || net.isIP(host)) {
      if (entry === host) return true;
      continue;
    }
    const name = entry.replace(/^\*?\./, '');
    if (host === name || host.endsWith('.' + name)) return true;
  }
  return false;
}

/** Opens a CONNECT tunnel to `host:port` through `proxy`; calls back with the raw socket. */
export function connectTunnel(
  proxy: ProxyChoice,
  host: string,
  port: number,
  cb: (err: Error | null, socket?: net.Socket) => void,
): void {
  const sock = net.connect({
    host: proxy.url.hostname.replace(/^\[|\]$/g, ''),
    port: Number(proxy.url.port) || 80,
  });
  const target = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
  let head = Buffer.alloc(0);
  let done = false;
  const finish = (err: Error | null) => {
    if (done) return;
    done = true;
    // paused, so no tunnel bytes are dropped between this listener and the TLS layer's
    sock.pause();
    sock.removeListener('data', onData);
    if (err) {
      sock.destroy();
      cb(err);
    } else cb(null, sock);
  };
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) {
      if (head.length > 16 << 10) finish(new Error('the proxy answered CONNECT with oversized headers'));
      return;
    }
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(head.toString('latin1', 0, end));
    if (status?.[1] !== '200') {
      finish(
        Object.assign(
          new Error(
            `the proxy ${proxy.url.host} refused CONNECT ${target}: ${head.toString('latin1', 0, Math.min(end, 80)).split('\r\n')[0]}`,
          ),
          {
            code: 'EPROXY',
          },
        ),
      );
      return;
    }
    // bytes after the head belong to the tunnel (a server speaking first): give them back
    if (head.length > end + 4) sock.unshift(head.subarray(end + 4));
    finish(null);
  };
  sock.on('data', onData);
  sock.once('error', (e) => finish(e));
  sock.once('close', () =>
    finish(new Error(`the proxy ${proxy.url.host} closed the connection during CONNECT`)),
  );
  sock.write(
    `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n` +
      (proxy.auth ? `Proxy-Authorization: ${proxy.auth}\r\n` : '') +
      '\r\n',
  );
}

type ConnectOptions = tls.ConnectionOptions & { host?: string; port?: number; servername?: string };
type Created = (err: Error | null, socket: Duplex) => void;
const none = undefined as unknown as Duplex;

/**
 * An https.Agent whose connections go through a CONNECT tunnel when the proxy rules say so for
 * the host they are for, and straight otherwise: one agent serves every target.
 */
export class ProxyHttpsAgent extends https.Agent {
  override createConnection(options: ConnectOptions, cb?: Created): Duplex | null | undefined {
    const host = options.host ?? 'localhost';
    const port = Number(options.port) || 443;
    const proxy = proxyFor(new URL(`https://${net.isIPv6(host) ? `[${host}]` : host}:${port}/`));
    if (!proxy) return super.createConnection(options);
    connectTunnel(proxy, host, port, (err, raw) => {
      if (err || !raw) return cb?.(err ?? new Error('no tunnel'), none);
      const servername = options.servername ?? (net.isIP(host) ? undefined : host);
      const secure = tls.connect({ ...options, socket: raw, ...(servername ? { servername } : {}) });
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
export class ProxyHttpAgent extends http.Agent {
  override createConnection(options: ConnectOptions, cb?: Created): Duplex | null | undefined {
    const host = options.host ?? 'localhost';
    const port = Number(options.port) || 80;
    const proxy = proxyFor(new URL(`http://${net.isIPv6(host) ? `[${host}]` : host}:${port}/`));
    if (!proxy) return super.createConnection(options);
    connectTunnel(proxy, host, port, (err, raw) => {
      // the tunnel was paused after CONNECT; the HTTP client's listener needs it flowing again
      raw?.resume();
      cb?.(err, raw ?? none);
    });
    return undefined;
  }
}
