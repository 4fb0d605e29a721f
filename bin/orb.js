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
// V8's code cache for the 5 MB bundle: 60-80 ms less start-up per command. In the user's own cache
// folder, not Node's default in the shared temp folder, where another user could plant code.
const { enableCompileCache } = await import('node:module');
const { homedir } = await import('node:os');
const cacheHome = process.env.ORB_CACHE_DIR || `${process.env.XDG_CACHE_HOME || `${homedir()}/.cache`}/orb`;
enableCompileCache?.(`${cacheHome}/v8-code`);
const { runCli } = await import('../dist/orb/index.js');
process.exitCode = await runCli(process.argv.slice(2));
