/**
 * Logging with secret redaction. Every message passes through `redact`, so a secret registered
 * with `mask()` never reaches stderr, the Actions log, a summary, an output or an error message,
 * whatever code printed it. `redact` also hides credentials nobody registered: the user:password
 * part of a URL, signature and token query parameters, and Authorization-style headers.
 */
export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  debug(msg: string): void;
}

const secrets = new Set<string>();

/** The suffixes Windows appends before encoding an answer-file password (see windows/accounts.ts). */
const UNATTEND_SUFFIXES = ['', 'Password', 'AdministratorPassword'];

/**
 * Every form a secret takes in what orb writes: as given, URL-encoded (query strings), base64
 * (basic auth), UTF-16LE (Windows files, read as text) and base64 of UTF-16LE with the suffixes
 * of answer-file passwords.
 */
export function secretForms(secret: string): string[] {
  const forms = new Set<string>([secret, encodeURIComponent(secret), Buffer.from(secret).toString('base64')]);
  forms.add(Buffer.from(secret, 'utf16le').toString('latin1'));
  for (const suffix of UNATTEND_SUFFIXES)
    forms.add(Buffer.from(secret + suffix, 'utf16le').toString('base64'));
  return [...forms].filter((f) => f.length >= 3);
}

export function mask(secret: string | undefined): void {
  if (!secret || secret.length < 3) return;
  for (const form of secretForms(secret)) {
    if (secrets.has(form)) continue;
    secrets.add(form);
    for (const fn of maskListeners) fn(form);
  }
}

const maskListeners: ((s: string) => void)[] = [];
export function onMask(fn: (s: string) => void): void {
  maskListeners.push(fn);
  for (const s of secrets) fn(s);
}

// scheme://user:password@host: everything between "//" and the last "@" before the path.
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^/\s?#"'<>]*@/gi;
// Query parameters that carry a credential: S3/GCS/Azure signatures, tokens, credentials.
const SECRET_PARAMS =
  'X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|X-Goog-Credential|Signature|sig|token|access_token|id_token|refresh_token|private_token|job_token|password|client_secret';
const QUERY_SECRET = new RegExp(`([?&;](?:${SECRET_PARAMS})=)[^&\\s"'<>#]+`, 'gi');
// Authorization: Basic/Bearer/AWS4-HMAC-SHA256 ..., and the token headers of GitLab and others
// (a shell placeholder such as $TOKEN in a hint is left alone).
const AUTH_HEADER =
  /\b((?:proxy-)?authorization|private-token|job-token|deploy-token|x-api-key|x-amz-security-token)(["']?\s*[:=]\s*["']?)(?:(basic|bearer|token|aws4-hmac-sha256)\s+)?([^\r\n"',}]+)/gi;
const BEARER = /\b(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}/g;

/**
 * The one redaction function: registered secrets in all their forms, URL user information,
 * credential query parameters and authorization headers become `***`.
 */
export function redact(text: string): string {
  let out = text;
  // Longest first, so a form that contains another is replaced whole.
  for (const s of [...secrets].sort((a, b) => b.length - a.length)) out = out.split(s).join('***');
  out = out.replace(URL_USERINFO, '$1***@');
  out = out.replace(QUERY_SECRET, '$1***');
  out = out.replace(AUTH_HEADER, (m: string, name: string, sep: string, scheme?: string, value?: string) =>
    value?.startsWith('$') ? m : scheme ? `${name}${sep}${scheme} ***` : `${name}${sep}***`,
  );
  out = out.replace(BEARER, '$1***');
  return out;
}

/**
 * Registers the credentials inside a URL or reference the user typed (the password of
 * `scheme://user:password@host`, signature and token parameters), so they are masked even where
 * they appear on their own, and registered with the CI's masking (core.setSecret) too.
 */
export function maskUrlSecrets(text: string | undefined): void {
  if (!text) return;
  for (const m of text.matchAll(/\b[a-z][a-z0-9+.-]*:\/\/([^/\s?#"'<>]*)@/gi)) {
    const info = m[1]!;
    const colon = info.indexOf(':');
    mask(safeDecode(colon < 0 ? info : info.slice(colon + 1)));
    if (colon >= 0) mask(info.slice(colon + 1));
  }
  for (const m of text.matchAll(new RegExp(`[?&;](?:${SECRET_PARAMS})=([^&\\s"'<>#]+)`, 'gi'))) {
    mask(m[1]!);
    mask(safeDecode(m[1]!));
  }
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export class StderrLogger implements Logger {
  // A plain field, not a parameter property: worker threads load this file (through errors.ts)
  // from its TypeScript source under the tests, and Node's type stripping refuses those.
  private readonly verbose: boolean;
  constructor(verbose = !!process.env.ORB_DEBUG) {
    this.verbose = verbose;
  }
  info(msg: string): void {
    process.stderr.write(redact(msg) + '\n');
  }
  warn(msg: string): void {
    process.stderr.write(`warning: ${redact(msg)}\n`);
  }
  error(msg: string): void {
    process.stderr.write(`error: ${redact(msg)}\n`);
  }
  debug(msg: string): void {
    if (this.verbose) process.stderr.write(`debug: ${redact(msg)}\n`);
  }
}

/** For library code and tests that run outside a command. */
export const silentLogger: Logger = { info() {}, warn() {}, error() {}, debug() {} };
