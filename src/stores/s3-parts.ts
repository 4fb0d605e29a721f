import type { S3Client } from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import type { Logger } from '../core/log.js';
import type { Descriptor } from '../formats/oci-media.js';

/** S3's multipart limits and the arguments of one multipart upload (shared with the resume logic). */
export const MiB = 1024 * 1024;
export const MIN_PART = 5 * MiB;
export const MAX_PART = 5 * 1024 * MiB;
export const MAX_PARTS = 10_000;
export const MAX_OBJECT = 5 * 1024 * 1024 * MiB;

/** Shared per store: set to false once the server shows it does not implement S3 checksums. */
export interface ChecksumSupport {
  enabled: boolean;
  warned?: boolean;
}

export interface MultipartArgs {
  client: S3Client;
  bucket: string;
  key: string;
  desc: Descriptor;
  open: (offset: number) => Readable;
  onBytes?: (n: number) => void;
  partSize: number;
  concurrency: number;
  /** bytes of part buffers allowed in memory at once */
  memoryBudget: number;
  checksums: ChecksumSupport;
  metadata: Record<string, string>;
  contentType: string;
  log: Logger;
  signal?: AbortSignal;
  anonymous: boolean;
}
