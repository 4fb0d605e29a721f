#!/usr/bin/env node
// `npm run bench`: runs every bench/*.bench.mjs in turn (one at a time: they measure wall time
// and share two cores), shows their output as it comes, then collects what each wrote to
// bench/results/<name>.json into bench/results/summary.json with its exit status and duration.
//
//   node bench/run.mjs                 all benchmarks
//   node bench/run.mjs convert oci     only those whose file name contains one of the words
//
// A benchmark exits non-zero when one of its claims (a ratio against the reference tool measured
// in the same run) does not hold; the runner reports that and exits non-zero at the end.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const resultsDir = join(here, 'results');
const filters = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith('.bench.mjs'))
  .filter((f) => !filters.length || filters.some((w) => f.includes(w)))
  .sort();

if (!files.length) {
  console.error(`no benchmark matches ${filters.join(', ') || '(none found)'}`);
  process.exit(2);
}
if (!existsSync(join(here, '..', 'lib')) || !existsSync(join(here, '..', 'dist'))) {
  console.error('lib/ or dist/ is missing: run `npm run build` first (npm run bench does)');
  process.exit(2);
}

let current;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    current?.kill(sig);
    process.exit(130);
  });
}

function runOne(file) {
  return new Promise((resolve) => {
    const start = Date.now();
    // the benchmarks import test helpers written in TypeScript: map their `./x.js` specifiers to .ts
    const hook = join(here, '..', 'lib', 'core', 'worker-ts-hook.js');
    current = spawn(process.execPath, ['--import', pathToFileURL(hook).href, join(here, file)], {
      stdio: 'inherit',
      env: process.env,
    });
    current.on('close', (code, signal) =>
      resolve({ code: code ?? (signal ? 128 : 1), seconds: (Date.now() - start) / 1000 }),
    );
    current.on('error', (err) => resolve({ code: 1, seconds: 0, error: err.message }));
  });
}

mkdirSync(resultsDir, { recursive: true });
const summary = { date: new Date().toISOString(), benchmarks: [] };
for (const file of files) {
  const name = file.replace(/\.bench\.mjs$/, '');
  console.error(`\n=== ${name} (${file}) ===`);
  const before = Date.now();
  const r = await runOne(file);
  const json = join(resultsDir, `${name}.json`);
  let result;
  if (existsSync(json)) {
    try {
      // only results written by this run count
      const fresh = (await import('node:fs')).statSync(json).mtimeMs >= before - 1000;
      result = fresh ? JSON.parse(readFileSync(json, 'utf8')) : undefined;
    } catch {
      result = undefined;
    }
  }
  summary.benchmarks.push({
    name,
    ok: r.code === 0,
    exitCode: r.code,
    seconds: Number(r.seconds.toFixed(1)),
    result: result ?? null,
    ...(r.error ? { error: r.error } : {}),
  });
  console.error(
    `=== ${name}: ${r.code === 0 ? 'ok' : `FAILED (exit ${r.code})`} in ${r.seconds.toFixed(0)} s${result ? '' : ', no results file written'} ===`,
  );
}

writeFileSync(join(resultsDir, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
console.error('\nsummary:');
for (const b of summary.benchmarks)
  console.error(`  ${b.ok ? 'ok    ' : 'FAILED'} ${b.name.padEnd(16)} ${String(b.seconds).padStart(7)} s`);
process.exitCode = summary.benchmarks.every((b) => b.ok) ? 0 : 1;
