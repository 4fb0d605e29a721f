import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { OrbError } from './errors.js';

/**
 * Where a worker thread's module is, for `new Worker(url)`. `rel` is the worker's compiled path
 * relative to the caller ("./compress-worker.js"); `from` is the caller's import.meta.url.
 *
 *   lib/ (tsc output)      the file next to the caller: lib/image/compress-worker.js
 *   dist/orb/ (the bundle) scripts/bundle.mjs writes each worker flat beside index.js:
 *                          dist/orb/compress-worker.js
 *   src/ (vitest runs .ts) a Worker needs JavaScript: the tsc output of the same file in lib/,
 *                          refused when older than its source (a stale worker would test old code)
 */
export function workerFile(rel: string, from: string): URL {
  const caller = fileURLToPath(from);
  const beside = join(dirname(caller), rel);
  if (existsSync(beside)) return pathToFileURL(beside);
  const flat = join(dirname(caller), basename(rel));
  if (existsSync(flat)) return pathToFileURL(flat);
  const marker = `${sep}src${sep}`;
  const at = beside.lastIndexOf(marker);
  if (at >= 0) {
    const compiled = beside.slice(0, at) + `${sep}lib${sep}` + beside.slice(at + marker.length);
    const source = beside.replace(/\.js$/, '.ts');
    if (existsSync(compiled)) {
      if (existsSync(source) && statSync(source).mtimeMs > statSync(compiled).mtimeMs)
        throw new OrbError('internal', `${compiled} is older than ${source}`, {
          hint: 'run `npx tsc -p tsconfig.json` (or `npm run build`): worker threads run the compiled lib/ files',
        });
      return pathToFileURL(compiled);
    }
  }
  throw new OrbError('internal', `the worker module ${basename(rel)} is missing next to ${caller}`, {
    hint: 'run `npm run build`: worker threads run compiled JavaScript (lib/ or dist/orb/)',
  });
}
