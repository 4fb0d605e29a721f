import { OrbError } from './errors.js';
import type { InputSpec, InputValue, OutputSpec } from './inputs.js';
import type { Logger } from './log.js';
import type { ProgressFactory } from './progress.js';

export type OutputValue = string | number | boolean | undefined;
export type Outputs = Record<string, OutputValue>;

/** Markdown collected during a run and written once, as the job summary, by the action wrapper. */
export class Summary {
  private readonly parts: string[] = [];
  heading(text: string, level = 2): this {
    this.parts.push(`${'#'.repeat(level)} ${text}`);
    return this;
  }
  text(md: string): this {
    this.parts.push(md);
    return this;
  }
  table(header: string[], rows: (string | number)[][]): this {
    const esc = (c: string | number) => String(c).replace(/\|/g, '\\|').replace(/\n/g, ' ');
    this.parts.push(
      [
        `| ${header.map(esc).join(' | ')} |`,
        `|${header.map(() => '---').join('|')}|`,
        ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
      ].join('\n'),
    );
    return this;
  }
  code(text: string, lang = ''): this {
    this.parts.push('```' + lang + '\n' + text + '\n```');
    return this;
  }
  get markdown(): string {
    return this.parts.join('\n\n') + (this.parts.length ? '\n' : '');
  }
  get empty(): boolean {
    return this.parts.length === 0;
  }
}

export interface RunContext {
  log: Logger;
  progress: ProgressFactory;
  summary: Summary;
  /** register a secret: masked in every log line (and with core.setSecret in Actions) */
  mask(secret: string | undefined): void;
  /**
   * Aborted on SIGINT/SIGTERM/SIGHUP. Every wait and long loop watches it: 1.5 s after the signal
   * the process exits anyway (core/cleanup.ts), so what is not unwound by then is left as is.
   */
  signal: AbortSignal;
  mode: 'cli' | 'action';
  /**
   * CLI with --json only: writes one JSON line on stdout at once, for long-running commands
   * (`orb serve`) whose callers wait for "ready" before the command returns.
   */
  emit?(values: Outputs): void;
  /** Actions: upload files as a workflow artifact (no-op in the CLI, which keeps them on disk) */
  uploadArtifact?(name: string, files: string[], rootDir: string): Promise<void>;
}

/** Typed access to resolved inputs; asking for an undeclared name is a bug, caught at once. */
export class Inputs {
  constructor(
    private readonly values: Record<string, InputValue>,
    private readonly specs: readonly InputSpec[],
  ) {}
  private get(name: string): InputValue {
    if (!this.specs.some((s) => s.name === name))
      throw new OrbError('internal', `input '${name}' is not declared`);
    return this.values[name];
  }
  has(name: string): boolean {
    const v = this.get(name);
    return v !== undefined && v !== '' && !(Array.isArray(v) && v.length === 0);
  }
  string(name: string): string {
    const v = this.get(name);
    if (v === undefined) throw new OrbError('usage', `input '${name}' is required`);
    return String(v);
  }
  optString(name: string): string | undefined {
    const v = this.get(name);
    return v === undefined || v === '' ? undefined : String(v);
  }
  number(name: string): number {
    const v = this.get(name);
    if (typeof v !== 'number') throw new OrbError('usage', `input '${name}' is required`);
    return v;
  }
  optNumber(name: string): number | undefined {
    const v = this.get(name);
    return typeof v === 'number' ? v : undefined;
  }
  bool(name: string): boolean {
    return this.get(name) === true;
  }
  list(name: string): string[] {
    const v = this.get(name);
    return Array.isArray(v) ? v : v === undefined ? [] : [String(v)];
  }
  /** all values, secrets replaced, for logs and debugging */
  redacted(): Record<string, InputValue> {
    const out: Record<string, InputValue> = {};
    for (const s of this.specs) out[s.name] = s.secret && this.values[s.name] ? '***' : this.values[s.name];
    return out;
  }
}

export interface CommandDef {
  /** CLI subcommand, and the action folder name when `action` is set */
  name: string;
  /** other CLI names (`orb convert` for the convert-and-compress action) */
  aliases?: readonly string[];
  title: string;
  description: string;
  /** true: has an action folder `<name>/action.yml` at the repo root */
  action: boolean;
  /** CLI usage line after `orb <name>`, e.g. "SOURCE --to TARGET" */
  usage?: string;
  inputs: readonly InputSpec[];
  outputs: readonly OutputSpec[];
  /** --json prints the result as one line (after lines the command emitted itself) */
  jsonLines?: boolean;
  run(inputs: Inputs, ctx: RunContext): Promise<Outputs>;
}

export function defineCommand(def: CommandDef): CommandDef {
  const seen = new Set<string>();
  for (const i of def.inputs) {
    if (!/^[a-z][a-z0-9-]*$/.test(i.name))
      throw new Error(`${def.name}: input name '${i.name}' must be kebab-case`);
    if (seen.has(i.name)) throw new Error(`${def.name}: input '${i.name}' declared twice`);
    seen.add(i.name);
    if (i.type === 'enum' && !i.choices?.length)
      throw new Error(`${def.name}: enum input '${i.name}' needs choices`);
  }
  return def;
}

/** Shared inputs most commands take. */
export const jsonFlagDescription = 'print the result as JSON on stdout (keys are the action output names)';
