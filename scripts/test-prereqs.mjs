#!/usr/bin/env node
// `npm test`'s pretest step: installs the Debian packages the tests need when they are missing
// (as root, or with `sudo -n`), so `npm ci && npm test` works on a fresh machine. The list lives
// in scripts/test-packages.txt, the only place it is written down.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const listFile = fileURLToPath(new URL('./test-packages.txt', import.meta.url));
const packages = readFileSync(listFile, 'utf8')
  .split('\n')
  .map((l) => l.replace(/#.*/, '').trim())
  .filter(Boolean);

// Debian starts these on install; the tests start their own instances on loopback ports.
const SERVICES = ['docker-registry', 'xrdp', 'xrdp-sesman'];

function fail(message) {
  console.error(`pretest: ${message}`);
  process.exit(1);
}

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function installed(pkg) {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('install ok installed');
}

if (!has('dpkg-query') || !has('apt-get')) {
  fail(`the tests run on Debian or Ubuntu; install the equivalents of: ${packages.join(' ')}`);
}
const root = process.getuid?.() === 0;
const asRoot = (cmd, args) => (root ? [cmd, args] : ['sudo', ['-n', cmd, ...args]]);
const canRoot = root || (has('sudo') && spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0);

const missing = packages.filter((p) => !installed(p));
if (missing.length > 0) {
  if (!canRoot) {
    fail(
      `missing Debian packages: ${missing.join(' ')}\n` +
        `  run as root or with password-less sudo, or install them: sudo apt-get install ${missing.join(' ')}`,
    );
  }
  console.error(`pretest: installing the Debian packages the tests need: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const run = (cmd, args) => {
    const [c, a] = asRoot(cmd, args);
    execFileSync(c, a, { stdio: ['ignore', 'inherit', 'inherit'], env });
  };
  run('apt-get', ['update', '-qq']);
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing]);
} else {
  console.error(`pretest: all ${packages.length} Debian packages the tests need are installed`);
}

if (canRoot && has('systemctl')) {
  for (const svc of SERVICES) {
    if (spawnSync('systemctl', ['is-active', '--quiet', svc], { stdio: 'ignore' }).status !== 0) continue;
    console.error(`pretest: stopping Debian's ${svc} service (the tests start their own on 127.0.0.1)`);
    const [c, a] = asRoot('systemctl', ['stop', svc]);
    spawnSync(c, a, { stdio: 'inherit' });
  }
}
