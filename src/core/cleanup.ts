import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { OrbError } from './errors.js';

/**
 * Process-wide cleanup: child processes (QEMU, swtpm, servers) and temporary paths are registered
 * here so that an error, Ctrl-C or a cancelled CI job never leaves them behind.
 */
const children = new Set<ChildProcess>();
const paths = new Set<string>();
const hooks = new Set<() => Promise<void> | void>();
let installed = false;

export function trackChild(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  installHandlers();
  return child;
}

export function untrackChild(child: ChildProcess): void {
  children.delete(child);
}

/** Remove `path` (file or directory) on abnormal exit, unless `keep()` is called first. */
export function trackPath(path: string): { keep(): void } {
  paths.add(path);
  installHandlers();
  return { keep: () => paths.delete(path) };
}

export function onCleanup(fn: () => Promise<void> | void): () => void {
  hooks.add(fn);
  installHandlers();
  return () => hooks.delete(fn);
}

function killAllSync(): void {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  children.clear();
  for (const p of paths) {
    try {
      rmSync(p, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
  paths.clear();
}

export async function runCleanup(): Promise<void> {
  for (const fn of [...hooks]) {
    try {
      await fn();
    } catch {
      /* cleanup must not mask the original error */
    }
  }
  hooks.clear();
  killAllSync();
}

/**
 * Signals. One handler for SIGINT, SIGTERM and SIGHUP, for the whole process: it aborts the
 * running command's AbortSignal (see `commandSignal`) so the command unwinds and leaves what it
 * documents (a resumable partial, or nothing), and if the command has not returned within
 * FORCE_EXIT_MS it runs the cleanups itself (children killed, worker threads stopped, temporary
 * paths removed) and exits with 128 + the signal number. The bound holds even where some code
 * does not watch the signal, as long as the main thread is not blocked: long CPU work runs in
 * worker threads for that reason. A second signal exits at once.
 */
export const FORCE_EXIT_MS = 1500;
/** What the hooks get in a forced exit: the rest of the 2 s a CI runner or a user waits. */
const FORCED_HOOKS_MS = 300;
const SIGNAL_CODES: Record<string, number> = { SIGHUP: 129, SIGINT: 130, SIGTERM: 143 };
let received: NodeJS.Signals | undefined;
let command: AbortController | undefined;

/** The signal that interrupted this process, if one did. */
export function interruptedBy(): NodeJS.Signals | undefined {
  return received;
}

/** Exit code for a run ended by `sig`: 128 + its number, as shells report it. */
export function signalExitCode(sig: NodeJS.Signals): number {
  return SIGNAL_CODES[sig] ?? 130;
}

/**
 * The AbortSignal of the command this process runs (CLI or action): aborted with an
 * OrbError('interrupted') on SIGINT/SIGTERM/SIGHUP. Call `done()` when the command has returned.
 */
export function commandSignal(): { signal: AbortSignal; done(): void } {
  const controller = new AbortController();
  command = controller;
  installHandlers();
  if (received) controller.abort(interruptError(received));
  return {
    signal: controller.signal,
    done: () => {
      if (command === controller) command = undefined;
    },
  };
}

function interruptError(sig: NodeJS.Signals): OrbError {
  return new OrbError('interrupted', `interrupted by ${sig}`);
}

/**
 * After an interrupted command has returned and cleaned up: exit now with 128 + the signal's
 * number rather than wait for the event loop to drain (a socket or file handle the unwinding left
 * open would otherwise hold the process until the forced exit).
 */
export function exitIfInterrupted(): void {
  if (!received) return;
  killAllSync();
  process.exit(signalExitCode(received));
}

async function forceExit(sig: NodeJS.Signals): Promise<never> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    runCleanup(),
    new Promise((r) => {
      timer = setTimeout(r, FORCED_HOOKS_MS);
    }),
  ]);
  clearTimeout(timer);
  killAllSync();
  process.exit(signalExitCode(sig));
}

function onSignal(sig: NodeJS.Signals): void {
  if (received) {
    // a second signal: the user does not want to wait for the unwinding
    killAllSync();
    process.exit(signalExitCode(received));
  }
  received = sig;
  // Test runners stop their workers with SIGTERM after every file: not news there.
  if (!process.env.VITEST || command)
    process.stderr.write(`\ninterrupted by ${sig}: stopping child processes and worker threads\n`);
  const running = command;
  running?.abort(interruptError(sig));
  // Unref'd: a command that returns in time exits the process with its own code and output.
  setTimeout(() => void forceExit(sig), running ? FORCE_EXIT_MS : 0).unref();
}

function installHandlers(): void {
  if (installed) return;
  installed = true;
  process.once('exit', killAllSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
}
