/**
 * swtpm, the software TPM 2.0 QEMU talks to over a unix control socket. Started before QEMU
 * (QEMU connects at start-up) and stopped after it; `--terminate` makes it exit on its own when
 * QEMU disconnects, and spawnTracked's pdeathsig kills it if we die first.
 */
import type { ChildProcess } from 'node:child_process';
import { openSync, closeSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { OrbError } from '../core/errors.js';
import { requireTool, spawnTracked } from '../core/proc.js';

export interface SwtpmOptions {
  /** TPM state (persisted NVRAM); created when missing */
  stateDir: string;
  /** control socket QEMU connects to (keep it short: unix socket paths are limited to 107 bytes) */
  socketPath: string;
  /** swtpm's own log */
  logPath: string;
  /** how long to wait for the socket; default 10 s */
  timeoutMs?: number;
}

export interface Swtpm {
  readonly pid: number;
  readonly socketPath: string;
  readonly stateDir: string;
  /** true once the process has exited */
  readonly exited: boolean;
  /** SIGTERM, then SIGKILL after graceMs (default 2 s); resolves when it is gone */
  stop(graceMs?: number): Promise<void>;
}

export async function startSwtpm(opts: SwtpmOptions): Promise<Swtpm> {
  const bin = requireTool('swtpm', 'swtpm');
  mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
  const logFd = openSync(opts.logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawnTracked(
      bin,
      [
        'socket',
        '--tpm2',
        '--tpmstate',
        `dir=${opts.stateDir},mode=0600`,
        '--ctrl',
        `type=unixio,path=${opts.socketPath},mode=0600`,
        '--log',
        `file=${opts.logPath},level=1`,
        '--terminate',
      ],
      { stdio: ['ignore', logFd, logFd] },
    );
  } finally {
    closeSync(logFd);
  }
  let exitInfo: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = `exit ${code ?? signal}`;
      resolve();
    });
    child.once('error', (err) => {
      exitInfo = err.message;
      resolve();
    });
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  while (!existsSync(opts.socketPath)) {
    if (exitInfo !== undefined || Date.now() > deadline) {
      child.kill('SIGKILL');
      const log = (() => {
        try {
          return readFileSync(opts.logPath, 'utf8').trim().split('\n').slice(-5).join('\n');
        } catch {
          return '';
        }
      })();
      throw new OrbError('environment', `swtpm did not start (${exitInfo ?? 'no control socket'}): ${log}`, {
        hint: `check that swtpm works ('swtpm socket --tpm2 --help') and that ${join(opts.stateDir)} is writable`,
      });
    }
    await sleep(20);
  }
  return {
    pid: child.pid!,
    socketPath: opts.socketPath,
    stateDir: opts.stateDir,
    get exited() {
      return exitInfo !== undefined;
    },
    async stop(graceMs = 2000) {
      if (exitInfo !== undefined) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}
