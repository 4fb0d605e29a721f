import { createHash } from 'node:crypto';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import buildCommand from '../../src/commands/build-golden-image.js';
import unattendCommand from '../../src/commands/unattend.js';
import { secretForms } from '../../src/core/log.js';
import { startVm } from '../../src/qemu/runner.js';
import { readManifest } from '../../src/core/stage-manifest-file.js';
import { makeDataIso } from '../../src/builder/iso.js';
import {
  buildInstallerIso,
  EVIDENCE,
  readCDrive,
  readEvidence,
  runCommandInProcess,
} from '../helpers/installer-iso.js';

/**
 * The Windows build end to end, with the fake installer ISO standing in for Windows (see
 * test/helpers/installer-iso.ts): three boots on qcow2 layers under TCG, answer media, stage
 * media, the boot-prompt keys, resume, the installed-base cache, the dockur bundle, and no
 * secret anywhere after the build.
 */
const PASSWORD = 'Gold-Image-Pass-42';
const exec = promisify(execFile);

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}

/**
 * Every byte of every file under dir (disks included) is free of `secret` in every form we know:
 * plain, URL-encoded, base64, UTF-16LE, and base64 of UTF-16LE with the answer-file suffixes.
 */
async function assertNoSecret(dir: string, secret: string): Promise<void> {
  const needles = [
    ...secretForms(secret).map((f) => Buffer.from(f, 'latin1')),
    Buffer.from(secret, 'utf16le'),
  ];
  for (const f of await walk(dir)) {
    if ((await stat(f)).size > 256 << 20) continue;
    const data = await readFile(f);
    for (const n of needles) expect(data.includes(n), `${f} contains the secret`).toBe(false);
  }
}

// What only an answer file with accounts holds (sysprep's secret-free one has none of these).
const ANSWER_MARKERS = ['<AutoLogon>', '<LocalAccounts>', '<AdministratorPassword>', '<FirstLogonCommands>'];

/**
 * The golden disk's C: (the fake's stand-in, see installer-iso.ts) holds no answer file but
 * sysprep's secret-free one, no orb folder and no C:\OEM; its first 64 MiB (everything the fake
 * writes, deleted clusters included) hold no answer-file content and no form of the password.
 */
async function assertNoBuildTraces(disk: string, password: string, generalized: boolean): Promise<void> {
  const c = await readCDrive(disk);
  expect([...c.keys()]).toEqual(generalized ? ['Windows/Panther/unattend.xml'] : []);
  if (generalized)
    expect(c.get('Windows/Panther/unattend.xml')!.toString()).toContain('PersistAllDeviceInstalls');
  for (const [name, data] of c) {
    for (const m of ANSWER_MARKERS) expect(data.includes(m), `${name} holds ${m}`).toBe(false);
  }
  const head = join(await mkdtemp(join(tmpdir(), 'orb-head-')), 'head.raw');
  await exec('qemu-img', ['convert', '-U', '-O', 'raw', disk, head]);
  await truncate(head, 64 << 20);
  const raw = await readFile(head);
  await rm(dirname(head), { recursive: true, force: true });
  for (const m of ANSWER_MARKERS) expect(raw.includes(m), `${disk} holds ${m}`).toBe(false);
  for (const f of secretForms(password))
    expect(raw.includes(Buffer.from(f, 'latin1')), `${disk} holds ${f}`).toBe(false);
}

describe('build-golden-image (Windows flow, fake installer)', () => {
  let work: string;
  let iso: string;
  let virtio: string;
  let scripts: string[];
  const common = (out: string): Record<string, string | string[] | boolean> => ({
    os: 'windows',
    iso,
    edition: 'Windows 11 Pro',
    'computer-name': 'GOLD-7',
    'admin-user': 'builder',
    memory: '256M',
    cpus: '1',
    'disk-size': '1G',
    accelerator: 'tcg',
    timeout: '4m',
    'stall-timeout': '90s',
    'screenshot-interval': '5s',
    out,
    'cache-dir': join(work, 'cache'),
  });

  const savedTmp = process.env.TMPDIR;
  let privateTmp: string;
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'orb-build-win-'));
    // A private TMPDIR, so the check that no media directory is left sees only this file's builds.
    privateTmp = join(work, 'tmp');
    await mkdir(privateTmp);
    process.env.TMPDIR = privateTmp;
    iso = await buildInstallerIso('install');
    await mkdir(join(work, 'virtio', 'viostor', 'w11', 'amd64'), { recursive: true });
    await writeFile(join(work, 'virtio', 'viostor', 'w11', 'amd64', 'viostor.inf'), '; stand-in\n');
    virtio = join(work, 'virtio.iso');
    await makeDataIso(join(work, 'virtio'), virtio, { label: 'virtio-win' });
    scripts = [join(work, '10-first.ps1'), join(work, '20-second.ps1')];
    await writeFile(scripts[0]!, 'echo "first script says hello"\n');
    await writeFile(scripts[1]!, 'echo "second script: $(pwd)"\n');
  }, 300_000);
  afterAll(async () => {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
    await rm(work, { recursive: true, force: true });
  });

  it('UEFI + virtio: installs, provisions in order, generalizes, writes disk, manifest, logs, screenshots and a dockur bundle; no secret left', async () => {
    const out = join(work, 'uefi');
    const { outputs, log } = await runCommandInProcess(buildCommand, {
      ...common(out),
      firmware: 'uefi',
      'virtio-win': virtio,
      'admin-password': PASSWORD,
      script: scripts,
      dockur: true,
    });
    expect(outputs['stages-run']).toBe('installed,provisioned,generalized');
    expect(outputs['admin-password']).toBeUndefined();
    const disk = String(outputs.disk);
    // What the guest did, read back from the output disk
    expect(await readEvidence(disk, EVIDENCE.installed)).toMatch(
      /^ORB-INSTALLED computer=GOLD-7 answer=.*autounattend\.xml.*orb\/orb\.ps1/,
    );
    expect(await readEvidence(disk, EVIDENCE.provisioned)).toBe(
      'ORB-PROVISIONED 01-10-first.ps1 02-20-second.ps1',
    );
    const sha = createHash('sha256').update(PASSWORD).digest('hex');
    expect(await readEvidence(disk, EVIDENCE.final)).toBe(`ORB-FINAL sysprep=true password-sha256=${sha}`);
    // Manifest for the next stages
    const m = await readManifest(String(outputs.manifest));
    expect(m.image.format).toBe('qcow2');
    expect(m.image.virtualSize).toBe(1 << 30);
    expect(m.build).toMatchObject({
      os: 'windows',
      firmware: 'uefi',
      tpm: false,
      arch: 'x86_64',
      adminUser: 'builder',
      ports: [3389],
      generalized: true,
    });
    // Logs and screenshots
    const provisionLog = await readFile(String(outputs['provision-log']), 'utf8');
    expect(provisionLog.indexOf('first script says hello')).toBeGreaterThan(0);
    expect(provisionLog.indexOf('second script:')).toBeGreaterThan(
      provisionLog.indexOf('first script says hello'),
    );
    const shots = (await readdir(String(outputs.screenshots))).filter((f) => f.endsWith('.png'));
    expect(shots.length).toBeGreaterThan(0);
    expect(String(outputs['latest-screenshot'])).toMatch(/\.png$/);
    expect(await readFile(String(outputs['build-log']), 'utf8')).toContain('guest| ORB-DONE installed');
    expect(log.join('\n')).toMatch(/pressed Enter \d+ times|boot-from-CD/);
    // dockur/windows storage folder
    const dockur = String(outputs['dockur-dir']);
    expect((await readdir(dockur)).sort()).toEqual([
      'data.img',
      'windows.boot',
      'windows.mode',
      'windows.rom',
      'windows.type',
      'windows.vars',
      'windows.ver',
    ]);
    expect((await readFile(join(dockur, 'windows.mode'), 'utf8')).trim()).toBe('windows');
    expect((await readFile(join(dockur, 'windows.type'), 'utf8')).trim()).toBe('blk');
    expect(await readEvidence(join(dockur, 'data.img'), EVIDENCE.provisioned)).toContain('ORB-PROVISIONED');
    // No secret: not in the log, the summary, any file of the build directory (disks included), and no media left
    expect(log.join('\n')).not.toContain(PASSWORD);
    await assertNoSecret(out, PASSWORD);
    // Setup left the answer file and orb's folder on the installed base (the check below is not
    // vacuous), and the final stage removed them: nothing on the golden disk or the dockur copy.
    const state = JSON.parse(await readFile(join(out, 'build-state.json'), 'utf8'));
    const installedDisk = String(state.stages.installed.disk);
    const installed = await readCDrive(
      installedDisk.startsWith('/') ? installedDisk : join(out, installedDisk),
    );
    expect([...installed.keys()]).toEqual(
      expect.arrayContaining(['Windows/Panther/unattend.xml', 'ProgramData/orb/orb.ps1']),
    );
    expect(installed.get('Windows/Panther/unattend.xml')!.toString()).toContain('<AutoLogon>');
    await assertNoBuildTraces(disk, PASSWORD, true);
    await assertNoBuildTraces(join(dockur, 'data.img'), PASSWORD, true);
    expect((await walk(out)).filter((f) => f.endsWith('.iso'))).toEqual([]);
    expect((await readdir(privateTmp)).filter((d) => /^orb-(answer|stage|final)-/.test(d))).toEqual([]);
    expect(Object.keys(state.stages)).toEqual(['installed', 'provisioned', 'final']);
  }, 600_000);

  it('rerun continues after the finished stages; a changed script reruns provisioning only; another directory takes the base from the cache', async () => {
    const out = join(work, 'uefi');
    const again = await runCommandInProcess(buildCommand, {
      ...common(out),
      firmware: 'uefi',
      'virtio-win': virtio,
      'admin-password': PASSWORD,
      script: scripts,
    });
    expect(again.outputs['stages-run']).toBe('generalized');
    expect(again.outputs['stages-reused']).toBe('installed,provisioned');

    await writeFile(scripts[1]!, 'echo "second script, changed"\n');
    const changed = await runCommandInProcess(buildCommand, {
      ...common(out),
      firmware: 'uefi',
      'virtio-win': virtio,
      'admin-password': PASSWORD,
      script: scripts,
    });
    expect(changed.outputs['stages-run']).toBe('provisioned,generalized');
    expect(await readFile(String(changed.outputs['provision-log']), 'utf8')).toContain(
      'second script, changed',
    );

    const other = join(work, 'uefi-2');
    const cached = await runCommandInProcess(buildCommand, {
      ...common(other),
      firmware: 'uefi',
      'virtio-win': virtio,
      'admin-password': PASSWORD,
      script: scripts,
    });
    expect(cached.outputs['cache-hit']).toBe(true);
    expect(cached.outputs['stages-run']).toBe('provisioned,generalized');
    expect(await readEvidence(String(cached.outputs.disk), EVIDENCE.installed)).toMatch(
      /^ORB-INSTALLED computer=GOLD-7/,
    );
  }, 600_000);

  it('BIOS + SATA, no scripts, no sysprep: the generated password is only a masked output', async () => {
    const out = join(work, 'bios');
    const { outputs, log } = await runCommandInProcess(buildCommand, {
      ...common(out),
      firmware: 'bios',
      sysprep: false,
      'output-format': 'raw',
    });
    const password = String(outputs['admin-password']);
    expect(password).toHaveLength(20);
    expect(buildCommand.outputs.find((o) => o.name === 'admin-password')?.secret).toBe(true);
    expect(outputs['stages-run']).toBe('installed,finalized');
    expect(String(outputs.disk)).toMatch(/golden\.img$/);
    const sha = createHash('sha256').update(password).digest('hex');
    expect(await readEvidence(String(outputs.disk), EVIDENCE.final)).toBe(
      `ORB-FINAL sysprep=false password-sha256=${sha}`,
    );
    expect(log.join('\n')).not.toContain(password);
    await assertNoSecret(out, password);
    await assertNoBuildTraces(String(outputs.disk), password, false);
    expect((await readManifest(String(outputs.manifest))).build).toMatchObject({
      firmware: 'bios',
      generalized: false,
    });
  }, 600_000);
  it('dockur media flow (orb unattend; /custom.xml, orb folder as /oem): no answer file, password or orb folder left on the disk', async () => {
    const media = join(work, 'dockur-media');
    await runCommandInProcess(unattendCommand, {
      out: media,
      edition: 'Windows 11 Pro',
      'admin-password': PASSWORD,
      script: [scripts[0]!],
    });
    // dockur/windows' setup media: /custom.xml as Autounattend.xml at the root, /oem copied into
    // $OEM$\$1\OEM (its src/answer.sh and src/image.sh), which Setup copies to C:\OEM.
    const setup = join(work, 'dockur-setup');
    const oem = join(setup, '$OEM$', '$1', 'OEM');
    await mkdir(oem, { recursive: true });
    await cp(join(media, 'autounattend.xml'), join(setup, 'Autounattend.xml'));
    await cp(join(media, 'orb'), oem, { recursive: true });
    const setupIso = join(work, 'dockur-setup.iso');
    await makeDataIso(setup, setupIso, { label: 'SETUP' });
    const disk = join(work, 'dockur-data.img');
    await writeFile(disk, '');
    await truncate(disk, 256 << 20);
    const vm = await startVm({
      accel: 'tcg',
      memoryMiB: 256,
      disks: [{ path: disk, format: 'raw' }],
      cdroms: [iso, setupIso],
      bootFrom: 'cdrom',
      firmware: 'bios',
    });
    try {
      // the boot prompt waits for a key, like Windows' "Press any key to boot from CD or DVD"
      for (let i = 0; i < 150 && !vm.serialText().includes('fake Windows installer'); i++) {
        await vm.sendKey('ret');
        await new Promise((r) => setTimeout(r, 2000));
      }
      await vm.waitForExit(300_000);
    } finally {
      await vm.dispose();
    }
    const serial = vm.serialText();
    expect(serial).toContain('ORB-DONE finalized');
    expect(serial).toMatch(/removed \d+ build trace paths/);
    const installed = await readEvidence(disk, EVIDENCE.installed);
    expect(installed).toContain('./Autounattend.xml');
    expect(installed).toContain('/OEM/orb.ps1');
    await assertNoBuildTraces(disk, PASSWORD, true);
  }, 600_000);
});
