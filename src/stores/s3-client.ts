import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { ProxyHttpAgent, ProxyHttpsAgent } from '../net/proxy.js';
import { HttpStatusError, isRetryable, withRetries } from './https-client.js';

/**
 * S3 client construction and error mapping. Credentials come from the SDK's default chain
 * (environment, shared config/profile, web identity as set by aws-actions/configure-aws-credentials
 * for GitHub OIDC, SSO, ECS/EC2 roles); without any, reads fall back to anonymous requests so
 * public buckets pull without an account.
 */
export interface S3Settings {
  endpoint?: string;
  pathStyle: boolean;
  region?: string;
  log: Logger;
}

function baseConfig(s: S3Settings): S3ClientConfig {
  const region =
    s.region ||
    process.env.AWS_REGION ||
    process.env.AWS_DEFAULT_REGION ||
    (s.endpoint ? 'us-east-1' : undefined);
  return {
    ...(region ? { region } : {}),
    ...(s.endpoint ? { endpoint: s.endpoint } : {}),
    forcePathStyle: s.pathStyle,
    followRegionRedirects: true,
    // We send and check SHA-256 ourselves; the SDK's default CRC32 (and its aws-chunked trailer
    // encoding) would hash every byte again and breaks several S3-compatible servers.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // retries are ours (withRetries): per part, with backoff, honouring Retry-After
    maxAttempts: 1,
    requestHandler: {
      // HTTPS_PROXY/HTTP_PROXY/NO_PROXY as for every other store: the agents open CONNECT
      // tunnels (the SDK sends origin-form requests, so an http endpoint is tunnelled too)
      httpAgent: new ProxyHttpAgent({ keepAlive: true, maxSockets: 128 }),
      httpsAgent: new ProxyHttpsAgent({ keepAlive: true, maxSockets: 128 }),
      connectionTimeout: 15_000,
      socketTimeout: 120_000,
    },
  };
}

export async function makeS3Client(s: S3Settings): Promise<{ client: S3Client; anonymous: boolean }> {
  const client = new S3Client(baseConfig(s));
  try {
    await client.config.credentials();
    return { client, anonymous: false };
  } catch {
    s.log.debug('no AWS credentials found; using anonymous requests (public buckets only)');
    client.destroy();
    const anon = new S3Client({
      ...baseConfig(s),
      credentials: { accessKeyId: 'anonymous', secretAccessKey: 'anonymous' },
      signer: { sign: async (request) => request },
    });
    return { client: anon, anonymous: true };
  }
}

interface SdkError {
  name?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $response?: { headers?: Record<string, string> };
  $retryable?: unknown;
  code?: string;
}

export function s3Status(err: unknown): number | undefined {
  return (err as SdkError)?.$metadata?.httpStatusCode;
}

export function s3Code(err: unknown): string {
  const e = err as SdkError;
  return e?.Code ?? e?.name ?? '';
}

export function isNotFound(err: unknown): boolean {
  const code = s3Code(err);
  return s3Status(err) === 404 || code === 'NotFound' || code === 'NoSuchKey' || code === 'NoSuchUpload';
}

export function s3Retryable(err: unknown): boolean {
  const status = s3Status(err);
  if (status !== undefined)
    return (
      status === 408 ||
      status === 429 ||
      (status >= 500 && status !== 501) ||
      s3Code(err) === 'RequestTimeout'
    );
  const e = err as SdkError;
  if (e?.name === 'TimeoutError' || e?.name === 'RequestTimeout') return true;
  if (e?.$retryable) return true;
  return isRetryable(err);
}

/** Translates SDK errors into OrbErrors with a hint; keeps HTTP status for the retry policy. */
export function s3Error(err: unknown, what: string, anonymous: boolean): Error {
  if (err instanceof OrbError) return err;
  const status = s3Status(err);
  const code = s3Code(err);
  const msg = `${what}: ${code || 'error'}${(err as SdkError)?.message && (err as SdkError).message !== code ? ` (${(err as SdkError).message})` : ''}`;
  let hint: string | undefined;
  switch (code) {
    case 'NoSuchBucket':
      hint = 'check the bucket name (s3://BUCKET/PREFIX) and, for S3-compatible servers, --s3-endpoint';
      break;
    case 'AccessDenied':
    case 'Forbidden':
    case 'InvalidAccessKeyId':
    case 'SignatureDoesNotMatch':
      hint = anonymous
        ? 'no AWS credentials were found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or use aws-actions/configure-aws-credentials (OIDC) in the workflow'
        : 'the credentials lack permission (s3:GetObject, s3:PutObject, s3:ListBucket, s3:AbortMultipartUpload, s3:ListMultipartUploadParts) or belong to another account/endpoint';
      break;
    case 'PermanentRedirect':
    case 'AuthorizationHeaderMalformed':
      hint = 'the bucket is in another region: set --s3-region or AWS_REGION';
      break;
  }
  if (!hint && status === undefined && isRetryable(err))
    hint = 'check the endpoint address and the network; the transfer resumes when rerun';
  const retryAfter = Number((err as SdkError)?.$response?.headers?.['retry-after']);
  if (status !== undefined)
    return new HttpStatusError(
      status,
      what,
      msg,
      Number.isFinite(retryAfter) ? retryAfter * 1000 : undefined,
      hint,
    );
  return new OrbError(s3Retryable(err) ? 'network' : 'input', msg, { cause: err, ...(hint ? { hint } : {}) });
}

/** Runs one S3 call with our retry policy and error mapping. */
export function s3Call<T>(
  fn: () => Promise<T>,
  what: string,
  opts: { log?: Logger; signal?: AbortSignal; anonymous: boolean; attempts?: number },
): Promise<T> {
  return withRetries(
    async () => {
      try {
        return await fn();
      } catch (err) {
        if (isNotFound(err)) throw err; // callers decide what "absent" means
        throw s3Error(err, what, opts.anonymous);
      }
    },
    {
      what,
      ...(opts.log ? { log: opts.log } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.attempts ? { attempts: opts.attempts } : {}),
    },
  );
}
