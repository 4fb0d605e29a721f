import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import {
  AFTER_EXIT_PATH,
  buildUserData,
  runnerScript,
  writeSeedIso,
  RUNNER_PATH,
} from '../../src/builder/cloudinit.js';

const exec = promisify(execFile);

describe('cloud-init NoCloud seed', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'orb-cidata-'));
    await writeFile(join(dir, 'a.sh'), 'echo a\n');
    await writeFile(join(dir, 'b c.sh'), 'echo b\n');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('user-data: user with a sha512-crypt hash (never the password), packages, scripts in order, runner, power-off', async () => {
    const text = await buildUserData({
      hostname: 'gold',
      adminUser: 'ops',
      adminPassword: 'Linux-Pass-123',
      packages: ['curl', 'jq'],
      scripts: [join(dir, 'a.sh'), join(dir, 'b c.sh')],
      generalize: true,
      timeZone: 'Europe/Berlin',
      sshAuthorizedKeys: ['ssh-ed25519 AAAA test'],
    });
    expect(text.startsWith('#cloud-config\n')).toBe(true);
    expect(text).not.toContain('Linux-Pass-123');
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- free-form YAML document
    const cfg = parse(text) as Record<string, any>;
    expect(cfg.hostname).toBe('gold');
    expect(cfg.timezone).toBe('Europe/Berlin');
    expect(cfg.users[0]).toMatchObject({
      name: 'ops',
      lock_passwd: false,
      ssh_authorized_keys: ['ssh-ed25519 AAAA test'],
    });
    expect(cfg.users[0].passwd).toMatch(/^\$6\$/);
    expect(cfg.ssh_pwauth).toBe(false);
    expect(cfg.packages).toEqual(['curl', 'jq']);
    expect(cfg.package_update).toBe(true);
    expect(cfg.write_files.map((f: { path: string }) => f.path)).toEqual([
      '/var/lib/orb/scripts/01-a.sh',
      '/var/lib/orb/scripts/02-b_c.sh',
      AFTER_EXIT_PATH,
      RUNNER_PATH,
    ]);
    expect(Buffer.from(cfg.write_files[0].content, 'base64').toString()).toBe('echo a\n');
    expect(cfg.runcmd).toEqual([['/bin/sh', RUNNER_PATH]]);
    // The final clean-up runs as power_state's condition, once cloud-init has stopped writing.
    expect(cfg.power_state).toMatchObject({ mode: 'poweroff', condition: ['/bin/sh', AFTER_EXIT_PATH] });
    const afterExit = Buffer.from(cfg.write_files[2].content, 'base64').toString();
    expect(afterExit).toContain('cloud-init clean');
    expect(afterExit).toMatch(/exit 0\n$/);
    await exec('sh', ['-n', '-c', afterExit]);
    const runner = Buffer.from(cfg.write_files[3].content, 'base64').toString();
    expect(runner).toContain("for s in '01-a.sh' '02-b_c.sh'; do");
    expect(runner).toContain('cloud-init clean');
    expect(runner).toContain('ORB-DONE generalized');
  });

  it('the runner script is valid POSIX sh and reports each script with its exit code', async () => {
    const script = runnerScript(['01-ok.sh', '02-bad.sh'], false);
    await exec('sh', ['-n', '-c', script]);
    await exec('busybox', ['sh', '-n', '-c', script]);
    expect(script).toContain('ORB-DONE finalized');
    expect(script).not.toContain('cloud-init clean');
  });

  it('writes a seed ISO labelled cidata with user-data and meta-data', async () => {
    const iso = join(dir, 'seed.iso');
    await writeSeedIso(join(dir, 'work'), iso, {
      hostname: 'gold',
      adminUser: 'ops',
      adminPassword: 'Linux-Pass-123',
      generalize: false,
    });
    const { stdout } = await exec('xorriso', ['-indev', iso, '-pvd_info'], { encoding: 'utf8' }).catch(
      (e: { stdout: string }) => e,
    );
    expect(stdout).toMatch(/Volume Id\s*:\s*cidata/);
    const ls = await exec('xorriso', ['-indev', iso, '-ls', '/'], { encoding: 'utf8' });
    expect(ls.stdout).toContain("'user-data'");
    expect(ls.stdout).toContain("'meta-data'");
    expect(await readFile(join(dir, 'work', 'cidata', 'meta-data'), 'utf8')).toMatch(
      /instance-id: orb-[0-9a-f]{12}\nlocal-hostname: gold/,
    );
  });
});
