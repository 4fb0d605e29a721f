import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import buildCommand from '../../src/commands/build-golden-image.js';
import { OrbError } from '../../src/core/errors.js';
import { buildInstallerIso, runCommandInProcess, type InstallerVariant } from '../helpers/installer-iso.js';

/**
 * Guests that hang, crash or never finish must end in a clear failure with a last screenshot and
 * the logs, not in a build that waits forever. So must a guest whose boot-from-CD prompt nobody
 * answers, and a provisioning script that fails.
 */
describe('build-golden-image failure paths', () => {
  let work: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'orb-build-fail-'));
  });
  afterAll(() => rm(work, { recursive: true, force: true }));

  const inputs = async (
    variant: InstallerVariant,
    out: string,
    extra: Record<string, string | string[] | boolean> = {},
  ) => ({
    iso: await buildInstallerIso(variant),
    edition: 'Windows 10 Pro',
    'admin-password': 'Fail-Path-Pass-9',
    memory: '256M',
    cpus: '1',
    'disk-size': '1G',
    accelerator: 'tcg',
    firmware: 'bios',
    timeout: '3m',
    'stall-timeout': '20s',
    'screenshot-interval': '1m',
    out: join(work, out),
    'cache-dir': join(work, 'cache'),
    ...extra,
  });

  async function expectFailure(
    raw: Record<string, string | string[] | boolean>,
    kind: string,
    message: RegExp,
  ): Promise<{ err: OrbError; log: string }> {
    let caught: unknown;
    await runCommandInProcess(buildCommand, raw).catch((e: unknown) => (caught = e));
    expect(caught, 'the build must fail').toBeInstanceOf(OrbError);
    const err = caught as OrbError & { log?: string[] };
    expect(`${err.kind}: ${err.message}`).toMatch(new RegExp(`^${kind}: .*${message.source}`));
    return { err, log: (err.log ?? []).join('\n') };
  }

  async function expectEvidence(out: string, shotSuffix: RegExp, serial: RegExp): Promise<void> {
    const shots = (await readdir(join(work, out, 'screenshots'))).filter((f) => f.endsWith('.png'));
    expect(
      shots.some((f) => shotSuffix.test(f)),
      `a screenshot matching ${shotSuffix} in ${shots.join(', ')}`,
    ).toBe(true);
    const png = await readFile(
      join(
        work,
        out,
        'screenshots',
        shots.find((f) => shotSuffix.test(f))!,
      ),
    );
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    expect(await readFile(join(work, out, 'logs', 'install-serial.log'), 'utf8')).toMatch(serial);
    const buildLog = await readFile(join(work, out, 'build.log'), 'utf8');
    expect(buildLog).toMatch(/latest screenshot: .*\.png/);
    expect(buildLog).not.toContain('Fail-Path-Pass-9');
  }

  it('a guest that hangs silently: no-progress failure with a last screenshot and the serial log', async () => {
    const { log } = await expectFailure(await inputs('hang', 'hang'), 'timeout', /no progress for 20s/);
    expect(log).toMatch(/screenshot .*install-\d+-stalled\.png/);
    await expectEvidence('hang', /-stalled\.png$/, /fake Windows installer \(hang\)/);
  }, 240_000);

  it('a kernel panic: the frozen guest is caught the same way', async () => {
    await expectFailure(await inputs('panic', 'panic'), 'timeout', /no progress/);
    await expectEvidence('panic', /-stalled\.png$/, /Kernel panic/);
  }, 240_000);

  it('a guest that keeps working but never powers off: the overall timeout, screenshot and logs', async () => {
    await expectFailure(
      await inputs('no-poweroff', 'busy', { timeout: '50s' }),
      'timeout',
      /did not finish within 50s/,
    );
    await expectEvidence('busy', /-timeout\.png$/, /still installing/);
  }, 240_000);

  it('UEFI boot prompt nobody answers (boot-key-window 0): stalls at the prompt', async () => {
    await expectFailure(
      await inputs('install', 'nokeys', { firmware: 'uefi', 'boot-key-window': '0' }),
      'timeout',
      /no progress/,
    );
    const serial = await readFile(join(work, 'nokeys', 'logs', 'install-serial.log'), 'utf8');
    expect(serial).not.toContain('fake Windows installer');
  }, 240_000);

  it('a failing provisioning script fails the build with its output in provision.log', async () => {
    const bad = join(work, 'bad.ps1');
    await writeFile(bad, 'echo "about to fail"\nexit 3\n');
    // A roomier no-progress limit: this build has to get through the install first.
    const { err } = await expectFailure(
      await inputs('install', 'script', { script: [bad], 'stall-timeout': '90s' }),
      'check',
      /script 01-bad\.ps1 exited with code 3/,
    );
    expect(err.hint).toMatch(/provision-serial\.log/);
    const provisionLog = await readFile(join(work, 'script', 'logs', 'provision.log'), 'utf8');
    expect(provisionLog).toContain('about to fail');
    expect(provisionLog).toContain('(exit 3)');
    const state = JSON.parse(await readFile(join(work, 'script', 'build-state.json'), 'utf8'));
    expect(Object.keys(state.stages)).toEqual(['installed']);
  }, 240_000);
});
