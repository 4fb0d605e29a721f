import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import buildCommand from '../../src/commands/build-golden-image.js';
import { readManifest } from '../../src/core/stage-manifest-file.js';
import { buildCloudImage } from '../helpers/cloud-image.js';
import { readEvidence, runCommandInProcess } from '../helpers/installer-iso.js';
import { actionEnv, parseGithubOutput, runNode } from '../helpers/cli.js';

/**
 * The Linux path: a cloud image plus a NoCloud seed, same watcher and outputs. The test image's
 * init reads the seed the way cloud-init's NoCloud datasource does (see helpers/cloud-image.ts).
 */
describe('build-golden-image (Linux cloud image + NoCloud seed)', () => {
  let work: string;
  let privateTmp: string;
  const savedTmp = process.env.TMPDIR;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'orb-build-linux-'));
    // A private TMPDIR, so the check that no seed is left sees only this file's builds.
    privateTmp = join(work, 'tmp');
    await mkdir(privateTmp);
    process.env.TMPDIR = privateTmp;
  });
  afterAll(async () => {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
    await rm(work, { recursive: true, force: true });
  });

  it('boots the image with the seed, runs the scripts, powers off; disk, manifest, logs; no secret left', async () => {
    const image = await buildCloudImage();
    const script = join(work, 'mark.sh');
    // 48 MiB lies beyond the 40 MiB image: the build grew the disk to disk-size first.
    await writeFile(
      script,
      'echo "provisioning on $(hostname 2>/dev/null || echo guest)"\nprintf "LINUX-PROVISIONED\\n" | dd of=/dev/vda bs=1M seek=48 conv=notrunc 2>/dev/null\n',
    );
    const out = join(work, 'out');
    const password = 'Cloud-Init-Pass-5';
    const { outputs, log } = await runCommandInProcess(buildCommand, {
      os: 'linux',
      'cloud-image': image,
      'admin-user': 'ops',
      'admin-password': password,
      'computer-name': 'linux-gold',
      script: [script],
      memory: '256M',
      cpus: '1',
      'disk-size': '1G',
      firmware: 'uefi',
      accelerator: 'tcg',
      timeout: '4m',
      'stall-timeout': '60s',
      'screenshot-interval': '10s',
      out,
      'cache-dir': join(work, 'cache'),
    });
    expect(outputs['stages-run']).toBe('installed,provisioned,generalized');
    const joined = log.join('\n');
    expect(joined).toContain('ORB-GUEST: NoCloud seed found (label=cidata)');
    expect(joined).toContain('ORB-GUEST: hostname=linux-gold');
    expect(joined).toContain('ORB-GUEST: user=ops with a sha512-crypt password');
    expect(joined).not.toContain(password);
    expect(await readEvidence(String(outputs.disk), 48 << 20)).toBe('LINUX-PROVISIONED');
    expect(await readFile(String(outputs['provision-log']), 'utf8')).toContain('provisioning on');
    const m = await readManifest(String(outputs.manifest));
    expect(m.build).toMatchObject({
      os: 'linux',
      firmware: 'uefi',
      adminUser: 'ops',
      ports: [22],
      generalized: true,
    });
    expect(m.image.virtualSize).toBe(1 << 30);
    expect((await readdir(join(out, 'screenshots'))).length).toBeGreaterThan(0);
    for (const f of [
      join(out, 'build.log'),
      join(out, 'logs', 'provision-serial.log'),
      join(out, 'build-state.json'),
      String(outputs.manifest),
    ]) {
      expect(await readFile(f, 'utf8')).not.toContain(password);
    }
    expect((await readdir(privateTmp)).filter((d) => d.startsWith('orb-seed-'))).toEqual([]);
  }, 400_000);

  it('as a GitHub Action (the ESM bundle): outputs in GITHUB_OUTPUT, the generated password masked', async () => {
    const out = join(work, 'action');
    const files = { output: join(work, 'gh-output'), summary: join(work, 'gh-summary') };
    await writeFile(files.output, '');
    await writeFile(files.summary, '');
    const r = await runNode(
      'dist/build-golden-image/index.js',
      [],
      actionEnv(
        {
          os: 'linux',
          'cloud-image': await buildCloudImage(),
          memory: '256M',
          cpus: '1',
          'disk-size': '1G',
          firmware: 'bios',
          sysprep: 'false',
          accelerator: 'tcg',
          timeout: '4m',
          'stall-timeout': '60s',
          out,
          'cache-dir': join(work, 'cache'),
        },
        files,
      ),
      300_000,
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const outputs = parseGithubOutput(await readFile(files.output, 'utf8'));
    const password = outputs['admin-password']!;
    expect(password).toHaveLength(20);
    expect(r.stdout).toContain(`::add-mask::${password}`);
    expect(r.stdout.split(`::add-mask::${password}`).join('')).not.toContain(password);
    expect(outputs['stages-run']).toBe('installed,provisioned,finalized');
    expect(outputs.disk).toBe(join(out, 'golden.qcow2'));
    expect(await readFile(files.summary, 'utf8')).toContain('build-golden-image');
    expect(await readFile(join(out, 'build.log'), 'utf8')).not.toContain(password);
  }, 400_000);
});
