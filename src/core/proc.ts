import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { OrbError } from './errors.js';
import { trackChild } from './cleanup.js';

export function which(cmd: string, path = process.env.PATH ?? ''): string | undefined {
  const dirs = path.split(delimiter).concat(['/usr/sbin', '/sbin', '/usr/bin']);
  for (const dir of dirs) {
    if (!dir) continue;
    const p = join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

export function requireTool(cmd: string, pkg: string): string {
  const p = which(cmd);
  if (!p) {
    throw new OrbError('environment', `'${cmd}' is not installed`, {
      hint: `run 'orb setup-qemu' (or the setup-qemu action), or install the Debian/Ubuntu package '${pkg}'`,
    });
  }
  return p;
}

let pdeathsig: string | undefined | null = null;
/**
 * Long-lived children are started under `setpriv --pdeathsig KILL` where available, so the kernel
 * kills them even if we die by SIGKILL and no JavaScript handler runs.
 */
function deathSigWrapper(): string | undefined {
  if (pdeathsig === null) pdeathsig = process.platform === 'linux' ? which('setpriv') : undefined;
  return pdeathsig;
}

export interface SpawnTracked extends SpawnOptions {
  /** kill the child when this process dies, even by SIGKILL (Linux, util-linux setpriv) */
  dieWithParent?: boolean;
}

export function spawnTracked(cmd: string, args: readonly string[], opts: SpawnTracked = {}): ChildProcess {
  const wrapper = opts.dieWithParent !== false ? deathSigWrapper() : undefined;
  const child = wrapper
    ? spawn(wrapper, ['--pdeathsig', 'KILL', '--', cmd, ...args], opts)
    : spawn(cmd, args as string[], opts);
  return trackChild(child);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  input?: string | Buffer;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** throw an OrbError when the exit code is not 0 */
  check?: boolean;
  onStderr?: (chunk: string) => void;
  onStdout?: (chunk: string) => void;
}

/** Runs a command to completion, collecting output (keep to tools with modest output). */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawnTracked(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer =
      opts.timeoutMs !== undefined
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs)
        : undefined;
    const onAbort = () => child.kill('SIGTERM');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      opts.onStdout?.(d);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      opts.onStderr?.(d);
    });
    child.on('error', (err) => {
      if (timer) clearTimeout(timer);
      reject(new OrbError('environment', `cannot run ${cmd}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (timedOut) {
        reject(
          new OrbError('timeout', `${cmd} did not finish within ${Math.round(opts.timeoutMs! / 1000)} s`),
        );
        return;
      }
      if (opts.check && code !== 0) {
        const tail = stderr.trim().split('\n').slice(-5).join('\n');
        reject(
          new OrbError(
            'environment',
            `${cmd} ${args.slice(0, 3).join(' ')} failed (exit ${code ?? signal}): ${tail}`,
          ),
        );
        return;
      }
      resolve({ code, signal, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}
