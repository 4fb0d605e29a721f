import { UsageError } from './errors.js';

/**
 * One declaration per command input. The CLI flags and help, the action's input parsing, the
 * generated action.yml and the README tables all derive from these, so they cannot drift.
 */
export type InputType = 'string' | 'boolean' | 'integer' | 'number' | 'enum' | 'list' | 'size' | 'duration';

export interface InputSpec {
  /** kebab-case; the CLI flag is `--name`, the action input `name`. */
  name: string;
  type: InputType;
  description: string;
  default?: string | number | boolean;
  required?: boolean;
  secret?: boolean;
  /** for `enum` */
  choices?: readonly string[];
  /** inclusive bounds for integer/number/size/duration (sizes in bytes, durations in seconds) */
  min?: number;
  max?: number;
  /** CLI accepts it as the Nth positional argument too (publish SOURCE, pull REF). */
  positional?: number;
  /** CLI one-letter alias */
  alias?: string;
  /** environment variables consulted when the input is empty (e.g. GITHUB_TOKEN) */
  env?: readonly string[];
}

export interface OutputSpec {
  name: string;
  description: string;
  secret?: boolean;
}

export type InputValue = string | number | boolean | string[] | undefined;
export type RawInputs = Record<string, string | string[] | boolean | undefined>;

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

/** "64M", "1.5GiB", "10GB", "4096" → bytes. */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = SIZE_UNITS[(m[2] ?? '').toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(m[1]) * unit);
}

/** "90", "90s", "15m", "2h", "7d", "1h30m" → seconds. */
export function parseDuration(text: string): number | undefined {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Number(t);
  const re = /(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    const n = Number(m[1]);
    total +=
      m[2] === 'ms'
        ? n / 1000
        : m[2] === 's'
          ? n
          : m[2] === 'm'
            ? n * 60
            : m[2] === 'h'
              ? n * 3600
              : n * 86400;
    consumed = re.lastIndex;
  }
  return consumed === t.length && consumed > 0 ? total : undefined;
}

function accepted(spec: InputSpec): string {
  switch (spec.type) {
    case 'boolean':
      return 'true or false';
    case 'enum':
      return `one of ${(spec.choices ?? []).join(', ')}`;
    case 'integer':
    case 'number': {
      const kind = spec.type === 'integer' ? 'a whole number' : 'a number';
      if (spec.min !== undefined && spec.max !== undefined) return `${kind} from ${spec.min} to ${spec.max}`;
      if (spec.min !== undefined) return `${kind} of at least ${spec.min}`;
      return kind;
    }
    case 'size':
      return 'a size such as 512M, 20G or 4096 (bytes)';
    case 'duration':
      return 'a duration such as 90, 90s, 15m, 2h or 7d';
    case 'list':
      return 'one or more values (repeat the flag, or separate by commas or newlines)';
    default:
      return 'text';
  }
}

function bad(spec: InputSpec, value: string, why?: string): UsageError {
  const shown = spec.secret ? '***' : JSON.stringify(value);
  return new UsageError(
    `input '${spec.name}': ${why ?? `${shown} is not valid`}; expected ${accepted(spec)}`,
  );
}

function inRange(spec: InputSpec, n: number, raw: string): number {
  if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
    throw bad(spec, raw, `${spec.secret ? '***' : raw} is out of range`);
  }
  return n;
}

/** Converts one raw string (or list of strings) to the typed value, or throws a UsageError naming the input. */
export function coerce(spec: InputSpec, raw: string | string[] | boolean): InputValue {
  if (spec.type === 'list') {
    const parts = (Array.isArray(raw) ? raw : [String(raw)])
      .flatMap((r) => r.split(/[\n,]/))
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
    return parts;
  }
  if (Array.isArray(raw)) {
    if (raw.length > 1)
      throw new UsageError(`input '${spec.name}' was given ${raw.length} times; give it once`);
    raw = raw[0] ?? '';
  }
  if (typeof raw === 'boolean') {
    if (spec.type !== 'boolean') throw bad(spec, String(raw), `needs a value`);
    return raw;
  }
  const text = raw.trim();
  switch (spec.type) {
    case 'boolean': {
      const v = text.toLowerCase();
      if (['true', 'yes', '1', 'on'].includes(v)) return true;
      if (['false', 'no', '0', 'off'].includes(v)) return false;
      throw bad(spec, text);
    }
    case 'integer': {
      if (!/^-?\d+$/.test(text)) throw bad(spec, text);
      return inRange(spec, Number(text), text);
    }
    case 'number': {
      const n = Number(text);
      if (text === '' || !Number.isFinite(n)) throw bad(spec, text);
      return inRange(spec, n, text);
    }
    case 'size': {
      const n = parseSize(text);
      if (n === undefined) throw bad(spec, text);
      return inRange(spec, n, text);
    }
    case 'duration': {
      const n = parseDuration(text);
      if (n === undefined) throw bad(spec, text);
      return inRange(spec, n, text);
    }
    case 'enum': {
      if (!(spec.choices ?? []).includes(text)) throw bad(spec, text);
      return text;
    }
    default:
      return raw;
  }
}

/**
 * Applies defaults, environment fallbacks and validation. `raw` holds only what the user gave
 * (CLI flags or non-empty action inputs). Unknown names are rejected by the caller.
 */
export function resolveInputs(
  specs: readonly InputSpec[],
  raw: RawInputs,
  env: NodeJS.ProcessEnv = process.env,
): Record<string, InputValue> {
  const out: Record<string, InputValue> = {};
  for (const spec of specs) {
    let value = raw[spec.name];
    if ((value === undefined || value === '') && spec.env) {
      for (const name of spec.env) {
        const v = env[name];
        if (v !== undefined && v !== '') {
          value = v;
          break;
        }
      }
    }
    if (value === undefined || value === '' || (Array.isArray(value) && value.length === 0)) {
      if (spec.required) {
        throw new UsageError(`input '${spec.name}' is required: ${spec.description}`);
      }
      out[spec.name] =
        spec.default === undefined
          ? spec.type === 'list'
            ? []
            : undefined
          : coerce(spec, String(spec.default));
      continue;
    }
    out[spec.name] = coerce(spec, value);
  }
  return out;
}

export function camel(name: string): string {
  return name.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}
