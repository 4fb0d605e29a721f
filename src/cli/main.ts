import { writeFileSync } from 'node:fs';
import { type CommandDef, Inputs, Summary, type Outputs, type RunContext } from '../core/command.js';
import { describeError, exitCodeFor, OrbError, UsageError } from '../core/errors.js';
import { resolveInputs, type InputSpec, type RawInputs } from '../core/inputs.js';
import { mask, maskUrlSecrets, redact, StderrLogger } from '../core/log.js';
import { progressInterval, RateProgress, stderrSink } from '../core/progress.js';
import {
  commandSignal,
  exitIfInterrupted,
  interruptedBy,
  runCleanup,
  signalExitCode,
} from '../core/cleanup.js';
import { commands, findCommand } from '../commands/index.js';
import { VERSION } from '../core/version.js';
import { tuneGc } from '../core/gc.js';

interface Parsed {
  raw: RawInputs;
  json: boolean;
  dotenv?: string;
  help: boolean;
}

function flagFor(spec: InputSpec): string {
  return `--${spec.name}`;
}

/** Parses argv against the command's declarations; unknown flags and stray arguments are errors. */
export function parseArgs(cmd: CommandDef, argv: readonly string[]): Parsed {
  const raw: RawInputs = {};
  const out: Parsed = { raw, json: false, help: false };
  const positional: string[] = [];
  const byName = new Map(cmd.inputs.map((s) => [s.name, s]));
  const byAlias = new Map(cmd.inputs.filter((s) => s.alias).map((s) => [s.alias!, s]));
  const put = (spec: InputSpec, value: string | boolean) => {
    if (spec.type === 'list') {
      const prev = raw[spec.name];
      raw[spec.name] = [...(Array.isArray(prev) ? prev : []), String(value)];
    } else if (raw[spec.name] !== undefined) {
      throw new UsageError(`${flagFor(spec)} was given twice; give it once`);
    } else {
      raw[spec.name] = value;
    }
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '--json') {
      out.json = true;
      continue;
    }
    if (arg === '--help' || arg === '-h') {
      out.help = true;
      continue;
    }
    if (arg === '--dotenv' || arg.startsWith('--dotenv=')) {
      out.dotenv = arg.includes('=') ? arg.slice(9) : argv[++i];
      if (!out.dotenv) throw new UsageError('--dotenv needs a file path');
      continue;
    }
    let spec: InputSpec | undefined;
    let inline: string | undefined;
    let negated = false;
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      let name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
      inline = eq >= 0 ? arg.slice(eq + 1) : undefined;
      spec = byName.get(name);
      if (!spec && name.startsWith('no-') && byName.get(name.slice(3))?.type === 'boolean') {
        name = name.slice(3);
        spec = byName.get(name);
        negated = true;
      }
      if (!spec) {
        throw new UsageError(
          `unknown option --${name} for 'orb ${cmd.name}'`,
          `see 'orb ${cmd.name} --help' for the options it takes`,
        );
      }
    } else if (/^-[a-zA-Z]$/.test(arg)) {
      spec = byAlias.get(arg.slice(1));
      if (!spec)
        throw new UsageError(`unknown option ${arg} for 'orb ${cmd.name}'`, `see 'orb ${cmd.name} --help'`);
    } else {
      positional.push(arg);
      continue;
    }
    if (spec.type === 'boolean') {
      if (negated) put(spec, false);
      else if (inline !== undefined) put(spec, inline);
      else put(spec, true);
      continue;
    }
    if (negated) throw new UsageError(`--no-${spec.name} is only for true/false options`);
    const value = inline ?? argv[++i];
    if (value === undefined) throw new UsageError(`${flagFor(spec)} needs a value: ${spec.description}`);
    put(spec, value);
  }
  const slots = cmd.inputs
    .filter((s) => s.positional !== undefined)
    .sort((a, b) => a.positional! - b.positional!);
  for (const [idx, value] of positional.entries()) {
    const spec = slots[idx];
    if (!spec) {
      throw new UsageError(
        `unexpected argument '${value}' for 'orb ${cmd.name}'`,
        `see 'orb ${cmd.name} --help'`,
      );
    }
    put(spec, value);
  }
  return out;
}

export function commandHelp(cmd: CommandDef): string {
  const lines = [
    `orb ${cmd.name}${cmd.usage ? ' ' + cmd.usage : ''} [options]`,
    '',
    cmd.description,
    '',
    'Options:',
  ];
  for (const s of cmd.inputs) {
    const arg = s.type === 'boolean' ? '' : ` <${s.type === 'enum' ? (s.choices ?? []).join('|') : s.type}>`;
    const def = s.default !== undefined && s.default !== '' ? ` (default: ${String(s.default)})` : '';
    const req = s.required ? ' (required)' : '';
    lines.push(`  --${s.name}${arg}${s.alias ? `, -${s.alias}` : ''}`);
    lines.push(
      `      ${s.description}${def}${req}${s.secret ? ' [secret]' : ''}${s.env ? ` [env: ${s.env.join(', ')}]` : ''}`,
    );
  }
  lines.push('  --json', '      print the result as JSON on stdout (keys are the action output names)');
  lines.push('  --dotenv <file>', '      also write the result as KEY=value lines (GitLab dotenv reports)');
  if (cmd.outputs.length) {
    lines.push('', 'Result keys:');
    for (const o of cmd.outputs) lines.push(`  ${o.name}: ${o.description}`);
  }
  return lines.join('\n') + '\n';
}

export function mainHelp(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    `orb ${VERSION}: build, convert, publish, pull and smoke-test golden VM disk images`,
    '',
    'Usage: orb <command> [options]     orb <command> --help for its options',
    '',
    'Commands:',
    ...commands.map(
      (c) =>
        `  ${c.name.padEnd(width)}  ${c.title}${c.aliases?.length ? ` (also: ${c.aliases.join(', ')})` : ''}`,
    ),
    '',
  ].join('\n');
}

function dotenvLine(key: string, value: string): string {
  return `${key.toUpperCase().replace(/-/g, '_')}=${value.replace(/\n/g, ' ')}`;
}

export async function runCli(argv: readonly string[] = process.argv.slice(2)): Promise<number> {
  tuneGc();
  const log = new StderrLogger();
  // SIGINT/SIGTERM abort this signal; cleanup.ts forces the exit if the command does not return.
  const command = commandSignal();
  // A failed run that still has results (OrbError.outputs) prints them when --json was asked for.
  const jsonRequested = argv.includes('--json');
  try {
    const [name, ...rest] = argv;
    if (!name || name === '--help' || name === '-h' || name === 'help') {
      process.stdout.write(mainHelp());
      return 0;
    }
    if (name === '--version' || name === '-V') {
      process.stdout.write(VERSION + '\n');
      return 0;
    }
    // Credentials typed into a reference (oci://user:password@..., a pre-signed URL) are masked
    // before anything can echo them, including a usage error about that very argument.
    for (const a of argv) maskUrlSecrets(a);
    const cmd = findCommand(name);
    if (!cmd) throw new UsageError(`unknown command '${name}'`, `'orb --help' lists the commands`);
    const parsed = parseArgs(cmd, rest);
    if (parsed.help) {
      process.stdout.write(commandHelp(cmd));
      return 0;
    }
    const values = resolveInputs(cmd.inputs, parsed.raw);
    for (const s of cmd.inputs)
      if (s.secret && typeof values[s.name] === 'string') mask(values[s.name] as string);
    const summary = new Summary();
    const ctx: RunContext = {
      log,
      summary,
      mask,
      signal: command.signal,
      mode: 'cli',
      progress: (label, total, unit) =>
        new RateProgress(label, total, stderrSink(), progressInterval(), unit),
      ...(parsed.json
        ? {
            emit: (v: Outputs) =>
              void process.stdout.write(
                JSON.stringify(v, (_k, x: unknown) => (typeof x === 'string' ? redact(x) : x)) + '\n',
              ),
          }
        : {}),
    };
    const result: Outputs = await cmd.run(new Inputs(values, cmd.inputs), ctx);
    const secretKeys = new Set(cmd.outputs.filter((o) => o.secret).map((o) => o.name));
    const entries = Object.entries(result).filter(([, v]) => v !== undefined) as [
      string,
      string | number | boolean,
    ][];
    if (parsed.dotenv) {
      // Dotenv reports become plain CI variables in later jobs: secret outputs stay out of them.
      const lines = entries
        .filter(([k]) => !secretKeys.has(k))
        .map(([k, v]) => dotenvLine(k, redact(String(v))));
      writeFileSync(parsed.dotenv, lines.join('\n') + '\n', { mode: 0o600 });
    }
    if (parsed.json) {
      // JSON goes to stdout, which the user asked for: secrets included there and nowhere else.
      const shown = entries.map(([k, v]) => [k, secretKeys.has(k) || typeof v !== 'string' ? v : redact(v)]);
      process.stdout.write(
        JSON.stringify(Object.fromEntries(shown), null, cmd.jsonLines ? undefined : 2) + '\n',
      );
    } else {
      for (const [k, v] of entries) {
        process.stdout.write(
          `${k}: ${secretKeys.has(k) ? '*** (shown only with --json)' : redact(String(v))}\n`,
        );
      }
    }
    return 0;
  } catch (err) {
    if (jsonRequested && err instanceof OrbError && err.outputs) {
      process.stdout.write(
        JSON.stringify(
          Object.fromEntries(
            Object.entries(err.outputs)
              .filter(([, v]) => v !== undefined)
              .map(([k, v]) => [k, typeof v === 'string' ? redact(v) : v]),
          ),
          null,
          2,
        ) + '\n',
      );
    }
    log.error(describeError(err));
    if (process.env.ORB_DEBUG && err instanceof Error && err.stack) log.debug(err.stack);
    // Interrupted, whatever error the unwinding produced (a killed child's exit, an aborted read):
    // the exit code says which signal, as a shell would.
    const sig = interruptedBy();
    return sig ? signalExitCode(sig) : exitCodeFor(err);
  } finally {
    command.done();
    await runCleanup();
    exitIfInterrupted();
  }
}
