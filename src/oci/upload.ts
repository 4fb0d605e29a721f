import { Transform, type Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import { backoffMs, sleep } from '../net/retry.js';
import { TransientError, type HttpResponse } from './http.js';
import type { Descriptor } from '../formats/oci-media.js';
import { errorText, type RegistryClient } from './registry.js';

/**
 * Blob uploads (distribution-spec "pushing blobs"): a blob up to `chunkSize` goes up
 * monolithically (POST, then one PUT with the body); a larger one in PATCH chunks of `chunkSize`
 * (on GHCR at most 4 MiB, its cap; smaller still when a registry says the body is too large), so
 * a registry that limits request duration (GHCR: 10 minutes) accepts it. After a
 * dropped connection or a retryable status we ask the registry where the session stands (GET on
 * the upload URL: Range) and continue from that offset; when the session is gone (distribution
 * 2.x cancels a session whose data and state disagree) only this blob starts over.
 */
/** GHCR refuses request bodies over 4 MiB in chunked uploads ("exceeds the maximum permissible limit of 4.00MiB"). */
const GHCR_MAX_BODY = 4 << 20;
const MIN_PATCH = 1 << 20;

export interface UploadOptions {
  /** blobs larger than this go up in PATCH chunks of this size; 0: always one request */
  chunkSize: number;
}

export interface UploadResult {
  /** bytes sent over the wire, retries included */
  sent: number;
}

/** Counts bytes as they leave the source, and stops after `limit` bytes. */
function meter(source: Readable, limit: number, onBytes: (n: number) => void): Readable {
  let left = limit;
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (left <= 0) return cb();
      const part = chunk.length > left ? chunk.subarray(0, left) : chunk;
      left -= part.length;
      onBytes(part.length);
      cb(null, part);
      if (left <= 0) {
        source.unpipe(t);
        source.destroy();
        t.end();
      }
    },
  });
  source.on('error', (err) => t.destroy(err));
  return source.pipe(t);
}

function locationOf(client: RegistryClient, res: HttpResponse, fallback?: string): string {
  const loc = res.header('location');
  if (!loc) {
    if (fallback) return fallback;
    throw new OrbError('network', `${client.host} started an upload without a Location header`);
  }
  return new URL(loc, res.url).toString();
}

/** Offset after the last byte the registry holds, from a `Range: 0-<last>` header. */
function rangeEnd(res: HttpResponse): number | undefined {
  const m = /^(?:bytes=)?0-(\d+)$/.exec((res.header('range') ?? '').trim());
  if (!m) return undefined;
  const last = Number(m[1]);
  // distribution answers "0-0" for an empty session too; resending one byte is harmless.
  return last === 0 ? 0 : last + 1;
}

function withDigest(url: string, digest: string): string {
  const u = new URL(url);
  u.searchParams.set('digest', digest);
  return u.toString();
}

/** Opens an upload session; its URL. (Cross-repository mounts: RegistryStore.mountBlob.) */
async function startSession(client: RegistryClient, desc: Descriptor): Promise<string> {
  const res = await client.request({
    method: 'POST',
    path: `/v2/${client.repository}/blobs/uploads/`,
    scopes: [client.pushScope],
    what: `start upload of ${desc.digest.slice(7, 19)}`,
    accept: [202],
  });
  await res.discard();
  return locationOf(client, res);
}

/** Where an upload session stands; undefined when the registry no longer knows it. */
async function sessionStatus(
  client: RegistryClient,
  url: string,
): Promise<{ url: string; offset: number } | undefined> {
  const res = await client.request({
    method: 'GET',
    path: url,
    scopes: [client.pushScope],
    what: 'check upload status',
    accept: [204, 200, 400, 404, 416],
  });
  await res.discard();
  if (res.status !== 204 && res.status !== 200) return undefined;
  const offset = rangeEnd(res);
  if (offset === undefined) return undefined;
  return { url: locationOf(client, res, url), offset };
}

export async function uploadBlob(
  client: RegistryClient,
  desc: Descriptor,
  open: (offset: number) => Readable,
  opts: UploadOptions,
  onBytes: (n: number) => void = () => {},
  file?: { path: string; start: number },
): Promise<UploadResult> {
  const region = (start: number) =>
    file ? { file: { path: file.path, start: file.start + start }, onProgress: count } : {};
  const short = desc.digest.slice(7, 19);
  let url: string | undefined;
  let offset = 0;
  // PATCH size: the threshold, capped where a registry is known to refuse bigger request bodies
  let patchSize = opts.chunkSize > 0 ? opts.chunkSize : desc.size;
  let digestRetries = 0;
  if (client.host === 'ghcr.io') patchSize = Math.min(patchSize, GHCR_MAX_BODY);
  // bytes reported to onBytes for this blob; corrected when the registry holds fewer
  let counted = 0;
  let sent = 0;
  const count = (n: number) => {
    counted += n;
    sent += n;
    onBytes(n);
  };
  for (let failures = 0; ;) {
    try {
      if (!url) {
        url = await startSession(client, desc);
        offset = 0;
      }
      let res: HttpResponse;
      if (offset === 0 && (opts.chunkSize <= 0 || desc.size <= opts.chunkSize)) {
        res = await client.request({
          method: 'PUT',
          path: withDigest(url, desc.digest),
          headers: { 'content-type': 'application/octet-stream' },
          body: { length: desc.size, open: () => meter(open(0), desc.size, count), ...region(0) },
          scopes: [client.pushScope],
          what: `upload blob ${short}`,
          retry: false,
          accept: [201, 204, 400, 404, 416],
        });
      } else {
        while (offset < desc.size) {
          const n = Math.min(patchSize, desc.size - offset);
          const start = offset;
          const patch = await client.request({
            method: 'PATCH',
            path: url,
            headers: {
              'content-type': 'application/octet-stream',
              'content-range': `${start}-${start + n - 1}`,
            },
            body: { length: n, open: () => meter(open(start), n, count), ...region(start) },
            scopes: [client.pushScope],
            what: `upload blob ${short} bytes ${start}-${start + n - 1}`,
            retry: false,
            accept: [202, 204, 400, 404, 413, 416],
          });
          const detail =
            patch.status >= 400
              ? errorText(await patch.text(64 << 10).catch(() => ''))
              : (await patch.discard(), '');
          if (
            (patch.status === 413 || patch.status === 416) &&
            /too large|exceeds|maximum/i.test(detail) &&
            patchSize > MIN_PATCH
          ) {
            // the registry caps request bodies (GHCR: 4 MiB): smaller PATCHes from where it stands
            patchSize = Math.max(MIN_PATCH, Math.min(patchSize >> 1, 4 << 20));
            throw new TransientError(
              `upload blob ${short}: the registry refuses ${n}-byte requests (${detail}); continuing with ${patchSize}-byte requests`,
            );
          }
          if (patch.status === 416)
            throw new TransientError(
              `upload blob ${short}: the registry expected another offset than ${start}`,
            );
          if (patch.status === 404)
            throw new TransientError(`upload blob ${short}: the upload session expired`);
          if (patch.status === 400 || patch.status === 413)
            throw new OrbError('network', `upload blob ${desc.digest}: HTTP ${patch.status} ${detail}`);
          url = locationOf(client, patch, url);
          // Our own count, not the answer's Range: some registries (ECR) report a stale Range
          // after every PATCH but the first, although they stored the bytes.
          const reported = rangeEnd(patch);
          if (reported !== undefined && reported !== start + n)
            client.log.debug(
              `upload ${short}: the registry reports ${reported} bytes after ${start + n} were sent`,
            );
          offset = start + n;
        }
        res = await client.request({
          method: 'PUT',
          path: withDigest(url, desc.digest),
          scopes: [client.pushScope],
          what: `finish upload of ${short}`,
          retry: false,
          accept: [201, 204, 400, 404, 416],
        });
      }
      if (res.status === 201 || res.status === 204) {
        await res.discard();
        const got = res.header('docker-content-digest');
        if (got && got !== desc.digest) {
          throw new OrbError('integrity', `the registry stored blob ${desc.digest} as ${got}`);
        }
        return { sent };
      }
      const detail = errorText(await res.text(64 << 10).catch(() => ''));
      if (res.status === 400 && /DIGEST_INVALID|SIZE_INVALID/i.test(detail)) {
        // Once: the registry may have kept fewer bytes than it acknowledged; a fresh session
        // tells that apart from a source that really changed.
        if (digestRetries++ === 0) {
          url = undefined;
          throw new TransientError(
            `upload blob ${short}: the registry computed another digest (${detail}); uploading it again`,
          );
        }
        throw new OrbError('integrity', `the registry rejected blob ${desc.digest}: ${detail}`, {
          hint: 'the source changed while it was being published, or it is corrupt; check it and publish again',
        });
      }
      if (res.status === 400 || res.status === 404 || res.status === 416) {
        // The session is confused (distribution cancels it after a partial request): start over.
        throw new TransientError(`upload blob ${short}: HTTP ${res.status} ${detail}`);
      }
      throw new OrbError('network', `upload blob ${desc.digest}: HTTP ${res.status} ${detail}`);
    } catch (err) {
      if (!(err instanceof TransientError)) throw err;
      failures++;
      if (failures >= client.retry.attempts) {
        throw new OrbError(
          'network',
          `upload of blob ${desc.digest} failed ${failures} times: ${err.message}`,
          {
            hint: 'run the same command again: blobs already uploaded are skipped',
          },
        );
      }
      const wait = backoffMs(failures, client.retry, err.retryAfterMs);
      client.log.info(`${err.message}; retrying in ${(wait / 1000).toFixed(1)} s`);
      await sleep(wait, client.signal);
      const status = url ? await sessionStatus(client, url).catch(() => undefined) : undefined;
      if (status && status.offset <= desc.size) {
        url = status.url;
        offset = status.offset;
        client.log.info(`upload of ${short} resumes at byte ${offset} of ${desc.size}`);
      } else if ((await client.headBlob(desc.digest).catch(() => undefined)) !== undefined) {
        // The upload completed but its answer was lost.
        onBytes(desc.size - counted);
        return { sent };
      } else {
        url = undefined;
        offset = 0;
        client.log.info(`upload of ${short} starts over (the registry dropped the session)`);
      }
      onBytes(offset - counted);
      counted = offset;
    }
  }
}
