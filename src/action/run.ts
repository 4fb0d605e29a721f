import * as core from '@actions/core';
import { Inputs, Summary, type CommandDef, type RunContext } from '../core/command.js';
import { describeError, OrbError } from '../core/errors.js';
import { resolveInputs, type RawInputs } from '../core/inputs.js';
import { mask, maskUrlSecrets, onMask, redact, type Logger } from '../core/log.js';
import { progressInterval, RateProgress } from '../core/progress.js';
import {
  commandSignal,
  exitIfInterrupted,
  interruptedBy,
  runCleanup,
  signalExitCode,
} from '../core/cleanup.js';
import { findCommand } from '../commands/index.js';
import { tuneGc } from '../core/gc.js';

const actionsLogger: Logger = {
  info: (m) => core.info(redact(m)),
  warn: (m) => core.warning(redact(m)),
  error: (m) => core.error(redact(m)),
  debug: (m) => core.debug(redact(m)),
};

/** Reads every declared input from the INPUT_* environment, the way @actions/core does. */
export function getInputs(cmd: CommandDef): Inputs {
  const raw: RawInputs = {};
  for (const spec of cmd.inputs) {
    const value = core.getInput(spec.name);
    // A credential inside a reference or URL input is registered before anything can echo it.
    maskUrlSecrets(value);
    if (value !== '') raw[spec.name] = spec.type === 'list' ? value.split('\n') : value;
  }
  const values = resolveInputs(cmd.inputs, raw);
  for (const spec of cmd.inputs)
    if (spec.secret && typeof values[spec.name] === 'string') mask(values[spec.name] as string);
  return new Inputs(values, cmd.inputs);
}

function setOutputs(cmd: CommandDef, outputs: Record<string, string | number | boolean | undefined>): void {
  const secretOutputs = new Set(cmd.outputs.filter((o) => o.secret).map((o) => o.name));
  for (const [key, value] of Object.entries(outputs)) {
    if (value === undefined) continue;
    if (secretOutputs.has(key)) {
      core.setSecret(String(value));
      core.setOutput(key, value);
    } else {
      // Outputs end up in logs and later jobs' variables: no credential in them.
      core.setOutput(key, typeof value === 'string' ? redact(value) : value);
    }
  }
}

/** The whole life of one action step: inputs, run, outputs, the job summary (written once), errors. */
export async function runAction(name: string): Promise<void> {
  tuneGc();
  onMask((s) => core.setSecret(s));
  // The runner cancels a job with SIGINT then SIGTERM: both abort this signal (see cleanup.ts).
  const command = commandSignal();
  const summary = new Summary();
  const cmd = findCommand(name);
  try {
    if (!cmd) throw new OrbError('internal', `no command '${name}'`);
    const inputs = getInputs(cmd);
    const ctx: RunContext = {
      log: actionsLogger,
      summary,
      mask,
      signal: command.signal,
      mode: 'action',
      progress: (label, total, unit) =>
        new RateProgress(
          label,
          total,
          { write: (line) => core.info(redact(line)) },
          progressInterval(),
          unit,
        ),
      uploadArtifact: async (artifactName, files, rootDir) => {
        const { DefaultArtifactClient } = await import('@actions/artifact');
        await new DefaultArtifactClient().uploadArtifact(artifactName, files, rootDir, { retentionDays: 7 });
      },
    };
    setOutputs(cmd, await cmd.run(inputs, ctx));
  } catch (err) {
    if (cmd && err instanceof OrbError && err.outputs) setOutputs(cmd, err.outputs);
    core.setFailed(redact(describeError(err)));
  } finally {
    command.done();
    // as the CLI: a run a signal ended exits 128 + its number (setFailed alone would give 1)
    const sig = interruptedBy();
    if (sig) process.exitCode = signalExitCode(sig);
    await runCleanup();
    if (!summary.empty && process.env.GITHUB_STEP_SUMMARY) {
      await core.summary.addRaw(redact(summary.markdown)).write();
    }
    exitIfInterrupted();
  }
}
