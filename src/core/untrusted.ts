import { OrbError } from './errors.js';

/**
 * Checks for values that arrive from outside: manifests, indexes, configs, annotations and store
 * listings written by whoever published an image (or sits between us and the store). Every such
 * value goes through here before it is used in a path, a URL, an allocation or a log line, so a
 * hostile image cannot name a file (`sha256:x/../../etc/passwd`), request a path with our
 * credentials attached, or make us allocate or hash terabytes. Errors are OrbError('input') that
 * name the field and quote at most a short, sanitized prefix of the value.
 *
 * The maximums are documented in docs/security.md; change them there too.
 */

/** Largest disk (virtual size) or published file orb pulls: 64 TiB, well above any VM disk. */
export const MAX_VIRTUAL_SIZE = 64 * 1024 ** 4;
/** Largest manifest or index read: registries commonly refuse manifests above 4 MB; twice that. */
export const MAX_MANIFEST_BYTES = 8 << 20;
/** Largest disk config blob (a few hundred bytes in practice). */
export const MAX_CONFIG_BYTES = 1 << 20;
/** Longest file name taken from an image (most file systems allow 255 bytes). */
export const MAX_NAME_BYTES = 255;

const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** At most `max` printable characters of `s`, for names inside messages. */
export function clip(s: string, max = 64): string {
  return s.slice(0, max).replace(/[^\x20-\x7e]|["\\]/g, '?') + (s.length > max ? '…' : '');
}

/** A short, printable rendering of a hostile value for an error message. */
export function quoteUntrusted(value: unknown, max = 32): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value);
  if (Array.isArray(value)) return 'an array';
  if (typeof value !== 'string') return typeof value === 'object' ? 'an object' : typeof value;
  // clip() drops control characters, quotes and backslashes: no forged log lines or escapes
  return `"${clip(value, max)}" (${value.length} chars)`;
}

export function untrustedError(field: string, why: string, value?: unknown, hint?: string): OrbError {
  const got = arguments.length >= 3 ? `, got ${quoteUntrusted(value)}` : '';
  return new OrbError('input', `${field} ${why}${got}`, {
    hint: hint ?? 'the image was not written by orb, or was changed after publishing; refusing to use it',
  });
}

export interface ParsedDigest {
  algorithm: 'sha256' | 'sha512';
  hex: string;
  /** the whole `algorithm:hex` string */
  digest: string;
}

/** `sha256:` + 64 or `sha512:` + 128 lowercase hex digits, nothing else. */
export function parseDigest(value: unknown, field: string): ParsedDigest {
  if (typeof value !== 'string' || !DIGEST.test(value))
    throw untrustedError(field, 'is not a digest (sha256:<64 hex> or sha512:<128 hex>)', value);
  const i = value.indexOf(':');
  return { algorithm: value.slice(0, i) as 'sha256' | 'sha512', hex: value.slice(i + 1), digest: value };
}

/** A digest orb can verify (it hashes with sha256): returns it unchanged. */
export function sha256Digest(value: unknown, field: string): string {
  const d = parseDigest(value, field);
  if (d.algorithm !== 'sha256')
    throw untrustedError(
      field,
      'uses sha512, which orb does not verify (it publishes sha256 digests)',
      value,
    );
  return d.digest;
}

/** A tag (OCI distribution spec grammar): safe in a URL path, never a path separator. */
export function checkTag(value: unknown, field: string): string {
  if (typeof value !== 'string' || !TAG.test(value))
    throw untrustedError(field, 'is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-], at most 128)', value);
  return value;
}

/** A plain file name: no directory part, no `.`/`..`, no control characters, at most 255 bytes. */
export function safeFileName(value: unknown, field: string): string {
  if (typeof value !== 'string' || value === '') throw untrustedError(field, 'is not a file name', value);
  if (value === '.' || value === '..' || /[/\\]/.test(value))
    throw untrustedError(field, 'names a directory or a path, not a plain file name', value);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(value)) throw untrustedError(field, 'contains control characters', value);
  if (Buffer.byteLength(value) > MAX_NAME_BYTES)
    throw untrustedError(field, `is longer than ${MAX_NAME_BYTES} bytes`, value);
  return value;
}

/**
 * A whole number in [min, max]: a JSON number, or (annotations are strings; not when `strings` is
 * false) a decimal string without sign, exponent, fraction or leading zeros.
 */
export function boundedInt(value: unknown, field: string, min: number, max: number, strings = true): number {
  let n: number;
  if (typeof value === 'number') n = value;
  else if (strings && typeof value === 'string' && /^(0|[1-9][0-9]{0,15})$/.test(value)) n = Number(value);
  else throw untrustedError(field, 'is missing or not a whole number', value);
  if (!Number.isSafeInteger(n)) throw untrustedError(field, 'is not a whole number', value);
  if (n < min || n > max) throw untrustedError(field, `is outside ${min}..${max}`, value);
  return n;
}

/** A string field of at most `max` characters (media types, formats, names shown to the user). */
export function shortString(value: unknown, field: string, max = 255): string {
  if (typeof value !== 'string' || value.length > max)
    throw untrustedError(field, `is not a string of at most ${max} characters`, value);
  return value;
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Parses JSON no larger than `max` bytes that must be an object; errors name `field`. */
export function parseJsonObject(bytes: Buffer | string, field: string, max: number): Record<string, unknown> {
  const size = typeof bytes === 'string' ? Buffer.byteLength(bytes) : bytes.length;
  if (size > max) throw untrustedError(field, `is ${size} bytes, more than the ${max} allowed`);
  let data: unknown;
  try {
    data = JSON.parse(typeof bytes === 'string' ? bytes : bytes.toString('utf8'));
  } catch {
    throw untrustedError(field, 'is not JSON');
  }
  if (!isObject(data)) throw untrustedError(field, 'is not a JSON object', data);
  return data;
}

/** An optional string-to-string map (OCI annotations). */
export function annotationsOf(value: unknown, field: string): Record<string, string> {
  if (value === undefined) return {};
  if (!isObject(value)) throw untrustedError(field, 'is not an object of strings', value);
  for (const [k, v] of Object.entries(value))
    if (typeof v !== 'string') throw untrustedError(`${field}[${clip(k)}]`, 'is not a string', v);
  return value as Record<string, string>;
}

/** The fields of an OCI descriptor orb uses, checked. */
export interface CheckedDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  artifactType?: string;
}

/** An OCI descriptor whose digest is sha256, size in [0, maxSize], strings short. */
export function checkDescriptor(value: unknown, field: string, maxSize: number): CheckedDescriptor {
  if (!isObject(value)) throw untrustedError(field, 'is not a descriptor object', value);
  const d: CheckedDescriptor = {
    mediaType: shortString(value.mediaType ?? '', `${field}.mediaType`),
    digest: sha256Digest(value.digest, `${field}.digest`),
    size: boundedInt(value.size, `${field}.size`, 0, maxSize, false),
  };
  if (value.annotations !== undefined)
    d.annotations = annotationsOf(value.annotations, `${field}.annotations`);
  if (value.artifactType !== undefined)
    d.artifactType = shortString(value.artifactType, `${field}.artifactType`);
  return d;
}

/** A manifest reference: a digest or a tag, either safe to put in a URL path. */
export function checkManifestRef(value: unknown, field: string): string {
  return typeof value === 'string' && value.includes(':')
    ? parseDigest(value, field).digest
    : checkTag(value, field);
}
