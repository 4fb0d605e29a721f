import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { MAX_MANIFEST_BYTES, checkDescriptor, checkTag, clip, parseJsonObject } from '../core/untrusted.js';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { UsageError } from '../core/errors.js';
import { mask, type Logger } from '../core/log.js';
import { formatDuration } from '../core/progress.js';
import {
  ANN_REF_NAME,
  OCI_INDEX,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
} from '../formats/oci-media.js';
import { PRESIGNED_SCHEMA, type PresignedBundle } from './https.js';
import { formatS3Ref, type S3Ref } from './s3-ref.js';

/**
 * What the S3 store writes besides blobs and tags: `index.json` + `oci-layout` (the prefix
 * becomes an OCI image layout when synced to disk) and the pre-signed bundle of a publish.
 */
export interface S3LayoutIo {
  ref: S3Ref;
  client: S3Client;
  anonymous: boolean;
  log: Logger;
  signal?: AbortSignal;
  blobKey(digest: string): string;
  getSmall(key: string, what: string, limit: number): Promise<Buffer | undefined>;
  putJson(key: string, text: string, what: string): Promise<void>;
  /** one S3 call with the store's retry policy and error mapping */
  call<T>(fn: (client: S3Client) => Promise<T>, what: string): Promise<T>;
}

/** A pre-signed GET URL for one object; its signature is masked in every log. */
export async function presignGet(
  client: S3Client,
  bucket: string,
  key: string,
  seconds: number,
): Promise<string> {
  const url = await getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: key }), {
    expiresIn: seconds,
  });
  const sig = new URL(url).searchParams.get('X-Amz-Signature');
  if (sig) mask(sig);
  return url;
}

/** The unsigned URL of an object (public buckets), path-style or virtual-hosted like the client. */
export async function publicObjectUrl(
  client: S3Client,
  bucket: string,
  key: string,
  pathStyle: boolean,
): Promise<string> {
  const path = key.split('/').map(encodeURIComponent).join('/');
  const endpoint = client.config.endpoint ? await client.config.endpoint() : undefined;
  if (endpoint) {
    const base = `${endpoint.protocol}//${endpoint.hostname}${endpoint.port ? ':' + endpoint.port : ''}${endpoint.path.replace(/\/$/, '')}`;
    return pathStyle
      ? `${base}/${bucket}/${path}`
      : `${endpoint.protocol}//${bucket}.${endpoint.hostname}${endpoint.port ? ':' + endpoint.port : ''}/${path}`;
  }
  const region = await client.config.region();
  return `https://${bucket}.s3.${region}.amazonaws.com/${path}`;
}

/** index.json + oci-layout from tags/. */
export async function writeLayoutIndex(io: S3LayoutIo): Promise<void> {
  const manifests: Descriptor[] = [];
  let token: string | undefined;
  const tagPrefix = `${io.ref.prefix}tags/`;
  do {
    const res = await io.call(
      (c) =>
        c.send(
          new ListObjectsV2Command({ Bucket: io.ref.bucket, Prefix: tagPrefix, ContinuationToken: token }),
          io.signal ? { abortSignal: io.signal } : {},
        ),
      'list tags',
    );
    for (const o of res.Contents ?? []) {
      const tag = o.Key!.slice(tagPrefix.length);
      const body = await io.getSmall(o.Key!, `read tag ${tag}`, 64 << 10);
      if (!body) continue;
      // the listing and the records are the bucket's word: a bad one is skipped, not copied on
      let d: Descriptor;
      try {
        checkTag(tag, 'tag in the bucket listing');
        d = checkDescriptor(
          parseJsonObject(body, `tag ${tag} record`, 64 << 10),
          `tag ${tag} record`,
          MAX_MANIFEST_BYTES,
        );
      } catch (err) {
        io.log.warn(`index.json: skipping ${clip(o.Key!)}: ${(err as Error).message}`);
        continue;
      }
      manifests.push({ ...d, annotations: { ...(d.annotations ?? {}), [ANN_REF_NAME]: tag } });
    }
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
  const index: ImageIndex = { schemaVersion: 2, mediaType: OCI_INDEX, manifests };
  await io.putJson(
    `${io.ref.prefix}oci-layout`,
    JSON.stringify({ imageLayoutVersion: '1.0.0' }),
    'write oci-layout',
  );
  await io.putJson(`${io.ref.prefix}index.json`, JSON.stringify(index, null, 2), 'write index.json');
}

/**
 * presigned/<tag>.json: the manifest and one pre-signed GET URL per blob, itself pre-signed.
 * Returns the publish outputs. Signatures are registered as secrets (masked in every log).
 */
export async function presignBundle(
  io: S3LayoutIo,
  p: { manifest: Buffer; mediaType: string; digest: string; tag: string; seconds: number },
): Promise<Record<string, string>> {
  if (io.anonymous)
    throw new UsageError('presign needs AWS credentials (pre-signed URLs are signed with them)');
  const creds = await io.client.config.credentials();
  const until = Date.now() + p.seconds * 1000;
  if (creds.expiration && creds.expiration.getTime() < until) {
    io.log.warn(
      `the pre-signed URLs stop working at ${creds.expiration.toISOString()}, when the temporary credentials expire, not after ${formatDuration(p.seconds)}: ` +
        'sign with long-term credentials (an IAM user) for longer links',
    );
  }
  const sign = async (key: string) => {
    const url = await getSignedUrl(io.client, new GetObjectCommand({ Bucket: io.ref.bucket, Key: key }), {
      expiresIn: p.seconds,
    });
    const s = new URL(url).searchParams.get('X-Amz-Signature');
    if (s) mask(s);
    return url;
  };
  const m = JSON.parse(p.manifest.toString('utf8')) as ImageManifest;
  const blobs: Record<string, string> = {};
  for (const d of [m.config, ...(m.layers ?? [])])
    if (d?.digest && !blobs[d.digest]) blobs[d.digest] = await sign(io.blobKey(d.digest));
  const bundle: PresignedBundle = {
    schema: PRESIGNED_SCHEMA,
    expires: new Date(Math.min(until, creds.expiration?.getTime() ?? until)).toISOString(),
    reference: formatS3Ref(io.ref, p.tag),
    mediaType: p.mediaType,
    digest: p.digest,
    manifest: p.manifest.toString('utf8'),
    blobs,
  };
  const key = `${io.ref.prefix}presigned/${p.tag}.json`;
  await io.putJson(key, JSON.stringify(bundle), 'upload pre-signed bundle');
  const out: Record<string, string> = {
    'presigned-url': await sign(key),
    'presigned-expires': bundle.expires,
  };
  if (m.layers?.length === 1) out['presigned-file-url'] = blobs[m.layers[0]!.digest]!;
  io.log.info(
    `pre-signed URL valid until ${bundle.expires}: orb pull '<presigned-url>' (the URL is a secret; it is in the outputs)`,
  );
  return out;
}
