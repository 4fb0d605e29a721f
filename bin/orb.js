#!/usr/bin/env node
// The orb CLI. Needs Node 24 (zstd in zlib, the runtime GitHub uses for node24 actions).
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  process.stderr.write(
    `error: orb needs Node.js 24 or newer (this is ${process.version}).\n` +
      `  hint: in a checkout, run it through npm (npm exec orb -- ...), which uses the bundled Node 24; elsewhere install Node 24.\n`,
  );
  process.exit(2);
}
const { runCli } = await import('../dist/orb/index.js');
process.exitCode = await runCli(process.argv.slice(2));
