import { UsageError } from '../core/errors.js';
import type { InputSpec } from '../core/inputs.js';

/** S3 references (`s3://BUCKET[/PREFIX][:TAG|@sha256:...]`) and the inputs of the S3 backend. */
const MiB = 1024 * 1024;

export const PRESIGN_MAX_SECONDS = 7 * 24 * 3600;

export const s3Inputs: InputSpec[] = [
  {
    name: 's3-endpoint',
    type: 'string',
    env: ['AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL'],
    description: 'S3: endpoint URL of an S3-compatible server (MinIO, Ceph, R2, ...); empty for AWS',
  },
  {
    name: 's3-path-style',
    type: 'boolean',
    default: false,
    description: 'S3: path-style addressing (http://HOST/BUCKET/KEY), needed by most S3-compatible servers',
  },
  {
    name: 's3-region',
    type: 'string',
    description: 'S3: region (default: AWS_REGION or the profile; us-east-1 with a custom endpoint)',
  },
  {
    name: 's3-part-size',
    type: 'size',
    default: '16MiB',
    min: 5 * MiB,
    max: 5 * 1024 * MiB,
    description: 'S3: multipart part size; raised automatically so an object needs at most 10,000 parts',
  },
  {
    name: 'presign',
    type: 'duration',
    min: 1,
    description:
      'S3: also output a pre-signed URL valid this long (at most 7d, the S3 limit) that `orb pull` can use without credentials',
  },
];

export interface S3Ref {
  bucket: string;
  prefix: string;
  tag?: string;
  digest?: string;
}

export function formatS3Ref(r: S3Ref, tagOrDigest: string): string {
  return `s3://${r.bucket}/${r.prefix.replace(/\/$/, '')}${tagOrDigest.startsWith('sha256:') ? '@' : ':'}${tagOrDigest}`;
}

export function parseS3Ref(ref: string): S3Ref {
  const m = /^s3:\/\/([^/:@]+)(\/[^@]*)?(?:@(sha256:[a-f0-9]{64}))?$/.exec(ref);
  if (!m)
    throw new UsageError(
      `'${ref}' is not an S3 reference`,
      'write s3://BUCKET/PREFIX[:TAG] or s3://BUCKET/PREFIX@sha256:<hex>',
    );
  const bucket = m[1]!;
  let path = (m[2] ?? '').replace(/^\/+/, '');
  let tag: string | undefined;
  const lastSlash = path.lastIndexOf('/');
  const colon = path.indexOf(':', lastSlash + 1);
  if (colon >= 0) {
    tag = path.slice(colon + 1);
    path = path.slice(0, colon);
    if (!/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(tag))
      throw new UsageError(`'${tag}' is not a valid tag`, 'tags use letters, digits, _ . - (at most 128)');
  }
  const prefix = path.replace(/\/+$/, '');
  return {
    bucket,
    prefix: prefix ? prefix + '/' : '',
    ...(tag ? { tag } : {}),
    ...(m[3] ? { digest: m[3] } : {}),
  };
}
