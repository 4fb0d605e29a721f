import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { createHash, webcrypto } from 'node:crypto';
import type { Readable } from 'node:stream';
import { OrbError, UsageError } from '../core/errors.js';
import { formatBytes } from '../core/progress.js';
import { HttpStatusError, isRetryable } from './https-client.js';
import { isNotFound, s3Call, s3Code, s3Retryable, s3Status } from './s3-client.js';
import { findResumable } from './s3-resume.js';
import { MAX_OBJECT, MAX_PART, MAX_PARTS, MiB, MIN_PART, type MultipartArgs } from './s3-parts.js';

export * from './s3-parts.js';

/**
 * Multipart upload of one blob: parts uploaded concurrently (bounded memory), each retried on its
 * own, SHA-256 per part where the server supports S3 checksums, the whole blob's SHA-256 checked
 * before completing. An interrupted upload is kept and resumed on the next run from the parts S3
 * lists (each verified against the local bytes); an upload that cannot succeed is aborted.
 */
/** Part size: the configured one, raised so the object needs at most 10,000 parts. */
export function choosePartSize(size: number, configured: number): number {
  if (size > MAX_OBJECT) {
    throw new UsageError(
      `a ${formatBytes(size)} object exceeds S3's 5 TiB limit`,
      'publish a chunked image (or split the file into parts) instead',
    );
  }
  const needed = Math.ceil(Math.ceil(size / MAX_PARTS) / MiB) * MiB;
  return Math.min(MAX_PART, Math.max(MIN_PART, configured, needed));
}

export function checksumUnsupported(err: unknown): boolean {
  const status = err instanceof HttpStatusError ? err.status : s3Status(err);
  const code = s3Code(err);
  const msg = String((err as Error)?.message ?? '');
  if (code === 'NotImplemented' || status === 501) return true;
  return (
    (status === 400 && /checksum|x-amz-sdk-checksum|x-amz-checksum/i.test(msg)) ||
    (code === 'InvalidArgument' && /checksum/i.test(msg))
  );
}

interface DonePart {
  PartNumber: number;
  ETag: string;
  ChecksumSHA256?: string;
}

async function* exactParts(
  stream: Readable,
  size: number,
  partSize: number,
  what: string,
): AsyncGenerator<Buffer> {
  let buf = Buffer.allocUnsafe(Math.min(partSize, size));
  let fill = 0;
  let total = 0;
  for await (const c of stream) {
    let chunk = c as Buffer;
    while (chunk.length) {
      if (total >= size) {
        stream.destroy();
        throw new OrbError(
          'integrity',
          `${what}: the source has more than the ${size} bytes its descriptor declares`,
        );
      }
      const n = Math.min(chunk.length, buf.length - fill);
      chunk.copy(buf, fill, 0, n);
      fill += n;
      total += n;
      chunk = chunk.subarray(n);
      if (fill === buf.length) {
        yield buf;
        buf = Buffer.allocUnsafe(Math.min(partSize, size - total));
        fill = 0;
      }
    }
  }
  if (total !== size)
    throw new OrbError('integrity', `${what}: the source ended after ${total} of ${size} bytes`);
}

function etagMatches(etag: string, buf: Buffer): boolean | undefined {
  const e = etag.replace(/"/g, '');
  if (!/^[a-f0-9]{32}$/i.test(e)) return undefined; // not an MD5 (SSE-KMS etc.): cannot tell
  return createHash('md5').update(buf).digest('hex') === e.toLowerCase();
}

export async function multipartUpload(a: MultipartArgs): Promise<{ resumedBytes: number }> {
  const call = <T>(fn: () => Promise<T>, what: string) =>
    s3Call(fn, what, { log: a.log, anonymous: a.anonymous, ...(a.signal ? { signal: a.signal } : {}) });
  const what = `upload ${a.desc.digest.slice(0, 19)}`;
  const resume = await findResumable(a, call);
  const partSize = resume?.partSize ?? choosePartSize(a.desc.size, a.partSize);
  let uploadId: string;
  let useChecksum: boolean;
  if (resume) {
    uploadId = resume.uploadId;
    useChecksum = resume.checksum;
    const have = [...resume.parts.values()].reduce((n, p) => n + p.size, 0);
    a.log.info(
      `${what}: resuming an interrupted upload (${resume.parts.size} parts, ${formatBytes(have)} already in S3)`,
    );
  } else {
    useChecksum = a.checksums.enabled;
    const create = async (withChecksum: boolean) =>
      call(
        () =>
          a.client.send(
            new CreateMultipartUploadCommand({
              Bucket: a.bucket,
              Key: a.key,
              ContentType: a.contentType,
              Metadata: a.metadata,
              ...(withChecksum ? { ChecksumAlgorithm: 'SHA256' as const } : {}),
            }),
            a.signal ? { abortSignal: a.signal } : {},
          ),
        `${what}: start multipart upload`,
      );
    let res;
    try {
      res = await create(useChecksum);
    } catch (err) {
      if (!useChecksum || !checksumUnsupported(err)) throw err;
      noteNoChecksums(a);
      useChecksum = false;
      res = await create(false);
    }
    if (!res.UploadId) throw new OrbError('network', `${what}: the server returned no upload id`);
    uploadId = res.UploadId;
  }

  const parts: DonePart[] = [];
  const inflight = new Set<Promise<void>>();
  const maxInflight = Math.max(1, Math.min(a.concurrency, Math.floor(a.memoryBudget / partSize)));
  let failure: unknown;
  let resumedBytes = 0;
  let partNo = 0;
  const whole = createHash('sha256');
  const stream = a.open(0);

  const uploadPart = async (n: number, buf: Buffer): Promise<void> => {
    // part checksums are hashed in the thread pool (WebCrypto): parts in flight hash in parallel
    let checksum = useChecksum
      ? Buffer.from(await webcrypto.subtle.digest('SHA-256', buf)).toString('base64')
      : undefined;
    const send = () =>
      call(
        () =>
          a.client.send(
            new UploadPartCommand({
              Bucket: a.bucket,
              Key: a.key,
              UploadId: uploadId,
              PartNumber: n,
              Body: buf,
              ContentLength: buf.length,
              ...(checksum ? { ChecksumSHA256: checksum } : {}),
            }),
            a.signal ? { abortSignal: a.signal } : {},
          ),
        `${what}: part ${n}`,
      );
    let res;
    try {
      res = await send();
    } catch (err) {
      if (!checksum || !checksumUnsupported(err)) throw err;
      noteNoChecksums(a);
      useChecksum = false;
      checksum = undefined;
      res = await send();
    }
    if (checksum && !res.ChecksumSHA256 && !resume) {
      // The server ignored the checksum (s3rver, older MinIO/Ceph): stop computing it; the
      // blob's SHA-256 is still checked here and recorded in the object's metadata.
      noteNoChecksums(a);
      useChecksum = false;
      checksum = undefined;
    }
    if (!res.ETag) throw new OrbError('network', `${what}: part ${n} was stored without an ETag`);
    parts.push({ PartNumber: n, ETag: res.ETag, ...(checksum ? { ChecksumSHA256: checksum } : {}) });
    a.onBytes?.(buf.length);
  };

  try {
    for await (const buf of exactParts(stream, a.desc.size, partSize, what)) {
      if (failure) break;
      whole.update(buf);
      const n = ++partNo;
      const prior = resume?.parts.get(n);
      if (prior && prior.size === buf.length) {
        const ok = prior.checksum
          ? createHash('sha256').update(buf).digest('base64') === prior.checksum
          : etagMatches(prior.etag, buf);
        if (ok) {
          parts.push({
            PartNumber: n,
            ETag: prior.etag,
            ...(prior.checksum ? { ChecksumSHA256: prior.checksum } : {}),
          });
          resumedBytes += buf.length;
          a.onBytes?.(buf.length);
          continue;
        }
      }
      while (inflight.size >= maxInflight) await Promise.race(inflight);
      if (failure) break;
      const p: Promise<void> = uploadPart(n, buf)
        .catch((err: unknown) => {
          failure ??= err;
        })
        .finally(() => inflight.delete(p));
      inflight.add(p);
    }
  } catch (err) {
    failure ??= err;
  } finally {
    stream.destroy();
  }
  await Promise.all(inflight);
  if (!failure) {
    const got = 'sha256:' + whole.digest('hex');
    if (got !== a.desc.digest)
      failure = new OrbError(
        'integrity',
        `${what}: the source's SHA-256 is ${got}, not ${a.desc.digest}; nothing was committed`,
      );
  }
  if (failure) {
    await settleFailure(a, uploadId, failure, parts.length, partNo);
    throw failure;
  }
  parts.sort((x, y) => x.PartNumber - y.PartNumber);
  try {
    await call(
      () =>
        a.client.send(
          new CompleteMultipartUploadCommand({
            Bucket: a.bucket,
            Key: a.key,
            UploadId: uploadId,
            MultipartUpload: { Parts: parts },
          }),
          a.signal ? { abortSignal: a.signal } : {},
        ),
      `${what}: complete`,
    );
  } catch (err) {
    // A retried Complete whose first attempt succeeded reports NoSuchUpload: check the object.
    if (isNotFound(err)) {
      const head = await call(
        () => a.client.send(new HeadObjectCommand({ Bucket: a.bucket, Key: a.key })),
        `${what}: check`,
      ).catch(() => undefined);
      if (head?.ContentLength === a.desc.size) return { resumedBytes };
    }
    await settleFailure(a, uploadId, err, parts.length, partNo);
    throw err;
  }
  return { resumedBytes };
}

function noteNoChecksums(a: MultipartArgs): void {
  a.checksums.enabled = false;
  if (!a.checksums.warned) {
    a.checksums.warned = true;
    a.log.info(
      'the S3 server does not implement S3 checksums; SHA-256 is verified locally and recorded in object metadata (x-amz-meta-sha256)',
    );
  }
}

/** Keep the upload when a rerun can resume it; abort it when it can never complete. */
async function settleFailure(
  a: MultipartArgs,
  uploadId: string,
  err: unknown,
  stored: number,
  total: number,
): Promise<void> {
  const interrupted = a.signal?.aborted || (err instanceof OrbError && err.kind === 'interrupted');
  const transient = interrupted || s3Retryable(err) || isRetryable(err);
  if (transient && stored > 0) {
    a.log.warn(
      `upload of ${a.key} stopped after ${stored} of ~${Math.max(total, stored)} parts; the incomplete multipart upload is kept: ` +
        'rerun the same publish to resume it (or add a lifecycle rule AbortIncompleteMultipartUpload to the bucket)',
    );
    return;
  }
  try {
    await a.client.send(
      new AbortMultipartUploadCommand({ Bucket: a.bucket, Key: a.key, UploadId: uploadId }),
    );
    a.log.debug(`aborted multipart upload of ${a.key}`);
  } catch (abortErr) {
    a.log.warn(`could not abort multipart upload ${uploadId} of ${a.key}: ${(abortErr as Error).message}`);
  }
}
