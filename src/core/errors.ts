/**
 * Typed errors. Every failure that reaches a user goes through one top-level catch (CLI or action
 * wrapper), which prints `message` and, when present, `hint` (what to do about it).
 */
import { redact } from './log.js';

export type ErrorKind =
  | 'usage' // bad input: flag, type, range, missing value
  | 'input' // input file or reference is unusable (corrupt, wrong type, missing)
  | 'environment' // missing tool, no permission, not enough disk
  | 'network' // remote server refused or failed after retries
  | 'integrity' // digest or size mismatch
  | 'timeout'
  | 'check' // a smoke test or probe ran and the check failed
  | 'interrupted'
  | 'internal';

export class OrbError extends Error {
  readonly kind: ErrorKind;
  readonly hint: string | undefined;
  /**
   * Results a failed run still reports (e.g. where a failed smoke test left its evidence): set as
   * action outputs and printed with --json, so `if: failure()` steps and scripts can find them.
   */
  readonly outputs: Record<string, string | number | boolean | undefined> | undefined;
  constructor(
    kind: ErrorKind,
    message: string,
    options: {
      hint?: string;
      cause?: unknown;
      outputs?: Record<string, string | number | boolean | undefined>;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'OrbError';
    this.kind = kind;
    this.hint = options.hint;
    this.outputs = options.outputs;
  }
}

export class UsageError extends OrbError {
  constructor(message: string, hint?: string) {
    super('usage', message, hint === undefined ? {} : { hint });
    this.name = 'UsageError';
  }
}

/**
 * Exit codes: 2 for usage (as getopt tools do), 130 for interruption, 1 otherwise. A run ended by
 * a signal exits 128 + its number instead (130 SIGINT, 143 SIGTERM, 129 SIGHUP): see cleanup.ts.
 */
export function exitCodeFor(err: unknown): number {
  if (err instanceof OrbError) {
    if (err.kind === 'usage') return 2;
    if (err.kind === 'interrupted') return 130;
  }
  return 1;
}

/** The text a user sees for a failure, with every credential redacted (see core/log.ts). */
export function describeError(err: unknown): string {
  if (err instanceof OrbError) {
    return redact(err.hint ? `${err.message}\n  hint: ${err.hint}` : err.message);
  }
  if (err instanceof Error) return redact(`${err.name}: ${err.message}`);
  return redact(String(err));
}
