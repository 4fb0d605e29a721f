import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';
import { OrbError } from './errors.js';

/**
 * Starts a worker thread from its module. `rel` is the worker's compiled path relative to the
 * caller ("./compress-worker.js"); `from` is the caller's import.meta.url. Where the file is:
 *
 *   lib/ (tsc output)       next to the caller: lib/image/compress-worker.js
 *   dist/orb/ (the bundle)  scripts/bundle.mjs writes each worker flat beside index.js:
 *                           dist/orb/compress-worker.js
 *   src/ (vitest runs .ts)  the .ts source itself, run by Node's type stripping with
 *                           worker-ts-hook.ts mapping `.js` imports to the `.ts` files, so tests
 *                           exercise the sources and never a stale lib/
 */
export function startWorker(rel: string, from: string, options: WorkerOptions = {}): Worker {
  const caller = fileURLToPath(from);
  const beside = join(dirname(caller), rel);
  if (existsSync(beside)) return new Worker(pathToFileURL(beside), options);
  const flat = join(dirname(caller), basename(rel));
  if (existsSync(flat)) return new Worker(pathToFileURL(flat), options);
  const source = beside.replace(/\.js$/, '.ts');
  if (caller.endsWith('.ts') && existsSync(source)) {
    const hook = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), 'worker-ts-hook.ts'));
    return new Worker(pathToFileURL(source), {
      ...options,
      execArgv: [...(options.execArgv ?? []), '--import', hook.href],
    });
  }
  throw new OrbError('internal', `the worker module ${basename(rel)} is missing next to ${caller}`, {
    hint: 'run `npm run build`: worker threads run compiled JavaScript (lib/ or dist/orb/)',
  });
}
