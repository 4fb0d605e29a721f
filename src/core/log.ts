/**
 * Logging with secret redaction. Every message passes through `redact`, so a secret registered
 * with `mask()` never reaches stderr, the Actions log or a summary, whatever code printed it.
 */
export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  debug(msg: string): void;
}

const secrets = new Set<string>();

export function mask(secret: string | undefined): void {
  if (!secret || secret.length < 3) return;
  secrets.add(secret);
  // URL-encoded and base64 forms leak through query strings and basic-auth headers.
  secrets.add(encodeURIComponent(secret));
  secrets.add(Buffer.from(secret).toString('base64'));
  for (const fn of maskListeners) fn(secret);
}

const maskListeners: ((s: string) => void)[] = [];
export function onMask(fn: (s: string) => void): void {
  maskListeners.push(fn);
}

export function redact(text: string): string {
  let out = text;
  for (const s of secrets) if (s.length >= 3) out = out.split(s).join('***');
  // Pre-signed URL signatures and bearer tokens are secrets even when nobody registered them.
  out = out.replace(/(X-Amz-Signature=|X-Amz-Credential=|X-Amz-Security-Token=)[^&\s"']+/gi, '$1***');
  out = out.replace(/(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}/g, '$1***');
  return out;
}

export class StderrLogger implements Logger {
  constructor(private readonly verbose = !!process.env.ORB_DEBUG) {}
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
