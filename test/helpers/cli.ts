import { spawn } from 'node:child_process';
import { join } from 'node:path';

export const ROOT = join(import.meta.dirname, '..', '..');
/** The Node 24 that npm installs as a dev dependency: the runtime GitHub uses for node24 actions. */
export const NODE = process.execPath;

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a script of the built bundle (bin/orb.js or dist/<action>/index.js) in a child process. */
export function runNode(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 120_000,
): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE, [join(ROOT, script), ...args], {
      env: { ...process.env, ORB_PROGRESS_INTERVAL_MS: '1000', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export const orb = (args: string[], env?: NodeJS.ProcessEnv, timeoutMs?: number) =>
  runNode('bin/orb.js', args, env, timeoutMs);

/** INPUT_* variables the way the Actions runner sets them (name upper-cased, spaces to _). */
export function actionEnv(
  inputs: Record<string, string>,
  files: { output: string; summary: string },
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    GITHUB_OUTPUT: files.output,
    GITHUB_STEP_SUMMARY: files.summary,
    GITHUB_ACTIONS: '',
  };
  for (const [k, v] of Object.entries(inputs)) env[`INPUT_${k.replace(/ /g, '_').toUpperCase()}`] = v;
  return env;
}

/** Parses the GITHUB_OUTPUT file format (name<<DELIM ... DELIM). */
export function parseGithubOutput(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^([^<=]+)<<(.+)$/.exec(lines[i]!);
    if (m) {
      const body: string[] = [];
      for (i++; i < lines.length && lines[i] !== m[2]; i++) body.push(lines[i]!);
      out[m[1]!] = body.join('\n');
    } else if (lines[i]!.includes('=')) {
      const [k, ...rest] = lines[i]!.split('=');
      out[k!] = rest.join('=');
    }
  }
  return out;
}
