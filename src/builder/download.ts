import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, realpath, rename, rm, stat, truncate } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { IncomingMessage } from 'node:http';
import { OrbError } from '../core/errors.js';
import { exists, sha256File, writeFileAtomic } from '../core/fsutil.js';
import type { Logger } from '../core/log.js';
import type { Progress } from '../core/progress.js';
import { sendFollowing } from '../net/http.js';
import {
  backoffMs,
  defaultRetryPolicy,
  isRetryableStatus,
  parseRetryAfter,
  sleep,
  type RetryPolicy,
} from '../net/retry.js';
import { restoreActionsCache, saveActionsCache } from './actions-cache.js';

/**
 * Build inputs by path or URL (Windows ISO, virtio-win ISO, Linux cloud image). URLs download
 * into a cache directory and resume from the `.partial` file after a network failure or an
 * interrupted run (HTTP Range); the result is checked against the expected sha256 before use.
 * In GitHub Actions the verified file is also saved to the Actions cache under its digest.
 */
export interface ObtainOptions {
  source: string;
  /** expected sha256 (hex); required to use the Actions cache, checked always when given */
  sha256?: string;
  /** what it is, for messages: "Windows ISO" */
  what: string;
  cacheDir: string;
  log: Logger;
  progress: (label: string, total?: number) => Progress;
  signal?: AbortSignal;
  /** network attempts before giving up (each resumes where the last stopped); default 6 */
  attempts?: number;
}

export interface Obtained {
  path: string;
  sha256: string;
  bytes: number;
  /** 'path': a local file; 'local': found in the cache dir; 'actions': restored from the Actions cache */
  source: 'path' | 'download' | 'local' | 'actions';
}

/** $ORB_CACHE_DIR, else the runner's tool cache (kept on self-hosted runners), else ~/.cache/orb. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.ORB_CACHE_DIR) return env.ORB_CACHE_DIR;
  if (env.RUNNER_TOOL_CACHE) return join(env.RUNNER_TOOL_CACHE, 'orb');
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'orb');
}

export function isUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

/** URL without query and credentials: safe for logs (pre-signed URLs carry secrets in the query). */
export function displayUrl(s: string): string {
  try {
    const u = new URL(s);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '<url>';
  }
}

function normalizeSha(sha?: string): string | undefined {
  if (!sha) return undefined;
  const v = sha
    .trim()
    .toLowerCase()
    .replace(/^sha256:/, '');
  if (!/^[0-9a-f]{64}$/.test(v))
    throw new OrbError('usage', `'${sha}' is not a sha256 digest (64 hex digits)`);
  return v;
}

export async function obtain(o: ObtainOptions): Promise<Obtained> {
  const expected = normalizeSha(o.sha256);
  if (!isUrl(o.source)) return localFile(o, expected);
  const key = expected ?? createHash('sha256').update(o.source.split('?')[0]!).digest('hex');
  const dir = join(o.cacheDir, 'downloads', key.slice(0, 32));
  const name = basename(new URL(o.source).pathname).replace(/[^A-Za-z0-9._-]/g, '_') || 'download';
  const file = join(dir, name);
  if (await exists(file)) {
    const digest = await digestOf(file, o);
    if (!expected || digest === expected) {
      o.log.info(`${o.what}: using the cached download ${file}`);
      return { path: file, sha256: digest, bytes: (await stat(file)).size, source: 'local' };
    }
    await rm(file, { force: true });
  }
  if (
    expected &&
    (await restoreActionsCache([dir], `orb-download-${expected}`, o.log)) &&
    (await exists(file))
  ) {
    const digest = await digestOf(file, o);
    if (digest === expected)
      return { path: file, sha256: digest, bytes: (await stat(file)).size, source: 'actions' };
    await rm(file, { force: true });
  }
  await mkdir(dir, { recursive: true });
  await download(o, file + '.partial');
  const digest = await digestOf(file + '.partial', o, false);
  if (expected && digest !== expected) {
    await rm(file + '.partial', { force: true });
    throw new OrbError(
      'integrity',
      `${o.what} from ${displayUrl(o.source)} has sha256 ${digest}, expected ${expected}`,
      {
        hint: 'the download was removed; check the URL and the digest you gave (a changed file upstream needs a new digest)',
      },
    );
  }
  await rename(file + '.partial', file);
  await rememberDigest(file, digest, o.cacheDir);
  if (!expected)
    o.log.warn(
      `${o.what}: no sha256 given; downloaded file has sha256 ${digest} (pass it to pin the input and to use the Actions cache)`,
    );
  else await saveActionsCache([dir], `orb-download-${expected}`, o.log);
  return { path: file, sha256: digest, bytes: (await stat(file)).size, source: 'download' };
}

async function localFile(o: ObtainOptions, expected: string | undefined): Promise<Obtained> {
  const st = await stat(o.source).catch(() => undefined);
  if (!st?.isFile()) {
    throw new OrbError('input', `${o.what} ${o.source} does not exist or is not a file`, {
      hint: 'give a path to the file or an http(s) URL',
    });
  }
  const digest = await digestOf(o.source, o);
  if (expected && digest !== expected) {
    throw new OrbError('integrity', `${o.what} ${o.source} has sha256 ${digest}, expected ${expected}`, {
      hint: 'the file is not the one you meant, or it is damaged; check the digest',
    });
  }
  return { path: o.source, sha256: digest, bytes: st.size, source: 'path' };
}

/**
 * sha256 of a file, remembered per (real path, size, mtime) in the cache dir: hashing a 6 GiB
 * ISO costs half a minute, and reruns would pay it every time.
 */
async function digestOf(path: string, o: ObtainOptions, remember = true): Promise<string> {
  const st = await stat(path);
  const id = `${await realpath(path)}|${st.size}|${st.mtimeMs}`;
  const dbPath = join(o.cacheDir, 'digests.json');
  const db = await readDigests(dbPath);
  if (db[id]) return db[id];
  const p = o.progress(`sha256 ${basename(path)}`, st.size);
  const digest = await sha256File(path, (n) => p.add(n), o.signal);
  p.done();
  if (remember) await rememberDigest(path, digest, o.cacheDir);
  return digest;
}

async function readDigests(dbPath: string): Promise<Record<string, string>> {
  try {
    return JSON.parse(await readFile(dbPath, 'utf8')) as Record<string, string>;
  } catch {
    return {};
  }
}

async function rememberDigest(path: string, digest: string, cacheDir: string): Promise<void> {
  try {
    const st = await stat(path);
    const dbPath = join(cacheDir, 'digests.json');
    const db = await readDigests(dbPath);
    db[`${await realpath(path)}|${st.size}|${st.mtimeMs}`] = digest;
    await mkdir(cacheDir, { recursive: true });
    await writeFileAtomic(dbPath, JSON.stringify(db, null, 1));
  } catch {
    /* only an optimisation */
  }
}

/**
 * Each attempt resumes where the last stopped (Range from the partial file's size), so a
 * dropped connection costs only the wait: the one retry policy (src/net/retry.ts) decides it.
 */
async function download(o: ObtainOptions, partial: string): Promise<void> {
  const policy = defaultRetryPolicy();
  if (o.attempts) policy.attempts = o.attempts;
  const attempts = policy.attempts;
  const retry = (attempt: number, why: string, retryAfterMs?: number) =>
    backoff(o, policy, attempt, why, retryAfterMs);
  const shown = displayUrl(o.source);
  let progress: Progress | undefined;
  let lastError = '';
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (o.signal?.aborted)
      throw new OrbError('interrupted', `download of ${shown} interrupted; rerun to resume`);
    const have = (await stat(partial).catch(() => undefined))?.size ?? 0;
    if (attempt === 1 && have > 0) o.log.info(`${o.what}: resuming ${shown} at ${have} bytes`);
    let res: IncomingMessage;
    try {
      ({ res } = await sendFollowing({
        url: new URL(o.source),
        headers: have > 0 ? { range: `bytes=${have}-` } : {},
        signal: o.signal,
        idleMs: 120_000,
      }));
    } catch (err) {
      if (o.signal?.aborted)
        throw new OrbError('interrupted', `download of ${shown} interrupted; rerun to resume`);
      if (err instanceof OrbError) throw err;
      lastError = (err as Error).message;
      await retry(attempt, `${shown}: ${lastError}`);
      continue;
    }
    const status = res.statusCode ?? 0;
    let append = false;
    let total: number | undefined;
    if (status === 206) {
      append = true;
      const m = /\/(\d+)\s*$/.exec(res.headers['content-range'] ?? '');
      total = m ? Number(m[1]) : undefined;
    } else if (status === 200) {
      // The server ignored the range: start over.
      const len = res.headers['content-length'];
      total = len ? Number(len) : undefined;
    } else if (status === 416 && have > 0) {
      const m = /\/(\d+)\s*$/.exec(res.headers['content-range'] ?? '');
      res.resume();
      if (m && Number(m[1]) === have) return; // already complete
      await truncate(partial, 0);
      continue;
    } else {
      res.resume();
      lastError = `HTTP ${status} ${res.statusMessage ?? ''}`.trim();
      if (isRetryableStatus(status)) {
        await retry(attempt, `${shown}: ${lastError}`, parseRetryAfter(res.headers['retry-after']));
        continue;
      }
      throw new OrbError('network', `cannot download ${o.what} from ${shown}: ${lastError}`, {
        hint:
          status === 403 || status === 401
            ? 'the link needs credentials or has expired: make a new one'
            : 'check the URL',
      });
    }
    progress ??= o.progress(`download ${basename(partial, '.partial')}`, total);
    if (total) progress.setTotal(total);
    let done = append ? have : 0;
    progress.set(done);
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        done += chunk.length;
        progress!.set(done);
        cb(null, chunk);
      },
    });
    try {
      await mkdir(dirname(partial), { recursive: true });
      await pipeline(res, counter, createWriteStream(partial, { flags: append ? 'a' : 'w' }));
    } catch (err) {
      if (o.signal?.aborted)
        throw new OrbError(
          'interrupted',
          `download of ${shown} interrupted at ${done} bytes; rerun to resume`,
        );
      lastError = (err as Error).message;
      await retry(attempt, `${shown} broke off at ${done} bytes (${lastError})`);
      continue;
    }
    if (total !== undefined && done !== total) {
      lastError = `got ${done} of ${total} bytes`;
      await retry(attempt, `${shown}: ${lastError}`);
      continue;
    }
    progress.done();
    return;
  }
  throw new OrbError(
    'network',
    `download of ${o.what} from ${shown} failed after ${attempts} attempts: ${lastError}`,
    {
      hint: 'rerun to resume from where it stopped (the partial file is kept)',
    },
  );
}

async function backoff(
  o: ObtainOptions,
  policy: RetryPolicy,
  attempt: number,
  why: string,
  retryAfterMs?: number,
): Promise<void> {
  if (attempt >= policy.attempts) return;
  const ms = Math.min(policy.maxRetryAfterMs, backoffMs(attempt, policy, retryAfterMs));
  o.log.warn(
    `${why}; retrying in ${(ms / 1000).toFixed(1)} s (attempt ${attempt + 1} of ${policy.attempts}, resuming)`,
  );
  // an abort ends the wait; the next turn of the loop reports it
  await sleep(ms, o.signal).catch(() => undefined);
}
