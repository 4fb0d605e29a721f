import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

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

function installHandlers(): void {
  if (installed) return;
  installed = true;
  process.once('exit', killAllSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      // Test runners stop their workers with SIGTERM after every file: not news there.
      if (!process.env.VITEST)
        process.stderr.write(`\ninterrupted (${sig}); stopping child processes and removing partial files\n`);
      void runCleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
    });
  }
}
