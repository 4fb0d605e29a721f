import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { isLoopbackHost } from '../net/loopback.js';
import { HttpClient } from './http.js';

/**
 * Registry mirrors configured the way containerd reads them: `<dir>/<host>/hosts.toml` (else
 * `<dir>/_default/hosts.toml`) with `server` (the upstream) and `[host."URL"]` entries tried in
 * order, plus URLs from `--mirror` / ORB_REGISTRY_MIRRORS (pull only). Mirrors get what is named
 * by digest (and tags only with the `resolve` capability); everything they send is verified
 * against its digest, so a mirror need not be trusted.
 */
export const DEFAULT_HOSTS_DIR = '/etc/containerd/certs.d';

export type Capability = 'pull' | 'resolve' | 'push';

export interface MirrorHost {
  /** scheme://host[:port] */
  origin: string;
  /** the API root on that host: `/v2` unless override_path */
  apiPath: string;
  capabilities: ReadonlySet<Capability>;
  /** headers of this host's own (never the origin's credentials) */
  headers: Record<string, string>;
  /** a client with this host's TLS settings (ca, skip_verify) */
  http: HttpClient;
  /** true when TLS settings are its own (transfer workers use the default trust) */
  customTls: boolean;
}

export interface MirrorConfig {
  mirrors: MirrorHost[];
  /** the upstream from `server`, when the file names one */
  server?: string;
  /** the hosts.toml read, for logs */
  file?: string;
}

interface HostEntry {
  capabilities?: unknown;
  header?: unknown;
  override_path?: unknown;
  ca?: unknown;
  skip_verify?: unknown;
}

function strings(v: unknown, what: string): string[] {
  if (v === undefined) return [];
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  throw new UsageError(`${what} must be a string or an array of strings`);
}

function withScheme(url: string, host: string): URL {
  // containerd's rule: no scheme means https (http for loopback is ours, as for registries)
  const full = /^[a-z]+:\/\//i.test(url)
    ? url
    : `${isLoopbackHost(url.split('/')[0]!) ? 'http' : 'https'}://${url}`;
  try {
    return new URL(full);
  } catch {
    throw new UsageError(`registry mirror '${url}' (for ${host}) is not a URL`);
  }
}

function apiPathOf(u: URL, override: boolean): string {
  const p = u.pathname.replace(/\/+$/, '');
  if (override || p.endsWith('/v2')) return p;
  return `${p}/v2`;
}

function makeHost(
  url: string,
  host: string,
  entry: HostEntry,
  baseDir: string | undefined,
  maxSockets: number,
): MirrorHost {
  const u = withScheme(url, host);
  const caps = strings(entry.capabilities, `capabilities of ${url}`);
  for (const c of caps)
    if (c !== 'pull' && c !== 'resolve' && c !== 'push')
      throw new UsageError(`unknown capability '${c}' for ${url}`, 'use pull, resolve and push');
  const headers: Record<string, string> = {};
  if (entry.header !== undefined) {
    if (typeof entry.header !== 'object' || entry.header === null)
      throw new UsageError(`header of ${url} must be a table`);
    for (const [k, v] of Object.entries(entry.header as Record<string, unknown>))
      headers[k.toLowerCase()] = strings(v, `header ${k} of ${url}`).join(', ');
  }
  const ca = strings(entry.ca, `ca of ${url}`).map((f) => {
    const file = baseDir && !path.isAbsolute(f) ? path.join(baseDir, f) : f;
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read the CA ${file} for ${url}: ${(err as Error).message}`);
    }
  });
  const skip = entry.skip_verify === true;
  return {
    origin: u.origin,
    apiPath: apiPathOf(u, entry.override_path === true),
    capabilities: new Set(caps.length ? (caps as Capability[]) : ['pull', 'resolve', 'push']),
    headers,
    http: new HttpClient({
      maxSockets,
      ...(ca.length || skip
        ? { tls: { ...(ca.length ? { ca } : {}), ...(skip ? { rejectUnauthorized: false } : {}) } }
        : {}),
    }),
    customTls: ca.length > 0 || skip,
  };
}

/** The hosts.toml for `host` under `dir`: `<host>/hosts.toml`, else `_default/hosts.toml`. */
export function hostsFile(dir: string, host: string): string | undefined {
  // containerd names a host with a port `host:port`; some file systems cannot, so `host_port` too
  for (const name of [host, host.replace(/:(\d+)$/, '_$1'), '_default']) {
    const f = path.join(dir, name, 'hosts.toml');
    if (existsSync(f)) return f;
  }
  return undefined;
}

export function loadMirrors(o: {
  host: string;
  mirrors?: readonly string[];
  hostsDir?: string | undefined;
  maxSockets?: number;
  log?: Logger;
}): MirrorConfig {
  const maxSockets = o.maxSockets ?? 8;
  const out: MirrorConfig = { mirrors: [] };
  for (const m of o.mirrors ?? [])
    if (m.trim())
      out.mirrors.push(makeHost(m.trim(), o.host, { capabilities: ['pull'] }, undefined, maxSockets));
  const file = hostsFile(o.hostsDir ?? DEFAULT_HOSTS_DIR, o.host);
  if (!file) return out;
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new UsageError(
      `cannot read ${file}: ${(err as Error).message}`,
      'fix the TOML or point --hosts-dir elsewhere',
    );
  }
  out.file = file;
  if (typeof doc.server === 'string') out.server = withScheme(doc.server, o.host).toString();
  const hosts = doc.host;
  if (hosts !== undefined) {
    if (typeof hosts !== 'object' || hosts === null) throw new UsageError(`${file}: host must be a table`);
    for (const [url, entry] of Object.entries(hosts as Record<string, HostEntry>))
      out.mirrors.push(makeHost(url, o.host, entry, path.dirname(file), maxSockets));
  }
  o.log?.debug(`${o.host}: mirrors from ${file}: ${out.mirrors.map((m) => m.origin).join(', ') || 'none'}`);
  return out;
}

/** The URL of `kind/ref` in `repository` on a mirror, with containerd's `ns` parameter. */
export function mirrorUrl(
  m: MirrorHost,
  originHost: string,
  repository: string,
  kind: 'blobs' | 'manifests',
  ref: string,
): string {
  return `${m.origin}${m.apiPath}/${repository}/${kind}/${ref}?ns=${encodeURIComponent(originHost)}`;
}
