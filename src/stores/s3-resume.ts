import {
  AbortMultipartUploadCommand,
  ListMultipartUploadsCommand,
  ListPartsCommand,
} from '@aws-sdk/client-s3';
import { MAX_PARTS, MIN_PART, type MultipartArgs } from './s3-parts.js';

/**
 * Finding an interrupted multipart upload of a blob to continue: S3 lists the uploads of the key
 * and their parts; one whose parts are the slices of this blob at one part size is reused (its
 * parts are still checked against the local bytes before they count), the others are aborted.
 */
export interface Resumable {
  uploadId: string;
  partSize: number;
  checksum: boolean;
  parts: Map<number, { size: number; etag: string; checksum?: string }>;
}

type Caller = <T>(fn: () => Promise<T>, what: string) => Promise<T>;

/** An earlier interrupted upload of this key whose parts fit the blob, if the server lists one. */
export async function findResumable(a: MultipartArgs, call: Caller): Promise<Resumable | undefined> {
  const uploads: { id: string; initiated: number }[] = [];
  try {
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    for (;;) {
      const res = await call(
        () =>
          a.client.send(
            new ListMultipartUploadsCommand({
              Bucket: a.bucket,
              Prefix: a.key,
              KeyMarker: keyMarker,
              UploadIdMarker: idMarker,
            }),
          ),
        'list incomplete uploads',
      );
      for (const u of res.Uploads ?? []) {
        if (u.Key === a.key && u.UploadId)
          uploads.push({ id: u.UploadId, initiated: u.Initiated?.getTime() ?? 0 });
      }
      if (!res.IsTruncated) break;
      keyMarker = res.NextKeyMarker;
      idMarker = res.NextUploadIdMarker;
    }
  } catch (err) {
    a.log.debug(
      `cannot list incomplete multipart uploads (${(err as Error).message}); starting a new upload`,
    );
    return undefined;
  }
  uploads.sort((x, y) => y.initiated - x.initiated);
  let chosen: Resumable | undefined;
  for (const u of uploads) {
    if (!chosen) {
      const r = await listParts(a, call, u.id).catch(() => undefined);
      if (r && fits(r, a.desc.size)) {
        chosen = r;
        continue;
      }
    }
    // Stale uploads of the same content-addressed key: nobody else can complete them usefully.
    await a.client
      .send(new AbortMultipartUploadCommand({ Bucket: a.bucket, Key: a.key, UploadId: u.id }))
      .catch(() => undefined);
  }
  return chosen;
}

async function listParts(a: MultipartArgs, call: Caller, uploadId: string): Promise<Resumable> {
  const parts: Resumable['parts'] = new Map();
  let marker: string | undefined;
  let checksum = false;
  for (;;) {
    const res = await call(
      () =>
        a.client.send(
          new ListPartsCommand({
            Bucket: a.bucket,
            Key: a.key,
            UploadId: uploadId,
            PartNumberMarker: marker,
          }),
        ),
      'list uploaded parts',
    );
    if (res.ChecksumAlgorithm === 'SHA256') checksum = true;
    for (const p of res.Parts ?? []) {
      if (p.PartNumber && p.ETag && p.Size !== undefined) {
        parts.set(p.PartNumber, {
          size: p.Size,
          etag: p.ETag,
          ...(p.ChecksumSHA256 ? { checksum: p.ChecksumSHA256 } : {}),
        });
      }
    }
    if (!res.IsTruncated) break;
    marker = res.NextPartNumberMarker;
  }
  const first = parts.get(1);
  return { uploadId, parts, checksum, partSize: first?.size ?? 0 };
}

/** The listed parts must be the slices of this blob at one part size. */
function fits(r: Resumable, size: number): boolean {
  const ps = r.partSize;
  if (!r.parts.size || ps < MIN_PART) return false;
  const count = Math.ceil(size / ps);
  if (count > MAX_PARTS) return false;
  for (const [n, p] of r.parts) {
    if (n > count) return false;
    const expected = n < count ? ps : size - (count - 1) * ps;
    if (p.size !== expected) return false;
  }
  return true;
}
