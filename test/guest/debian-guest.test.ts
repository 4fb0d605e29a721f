import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import buildCommand from '../../src/commands/build-golden-image.js';
import smokeCommand from '../../src/commands/smoke-test.js';
import { buildDebianImage, Ext4Reader } from '../helpers/debian-guest.js';
import { runCommandInProcess } from '../helpers/installer-iso.js';

const exec = promisify(execFile);

/**
 * The Linux path on a real distribution: a Debian 12 image built here with mmdebstrap (cached),
 * the real cloud-init with orb's NoCloud seed, then the smoke test against the real xrdp inside
 * the built image. Two guest boots under TCG with 2 vCPUs; the busybox stand-ins in
 * build-linux.test.ts keep covering the fast failure paths.
 */
describe('a real Debian golden image: cloud-init build, read back, smoke test over RDP with TLS', () => {
  let work: string;
  let image: string;
  let disk: string;
  const password = 'Debian-Real-Pass-17';
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'orb-debian-'));
    const t0 = Date.now();
    image = await buildDebianImage({ log: (l) => console.error(`debian image: ${l}`) });
    console.error(`debian image: ready in ${Math.round((Date.now() - t0) / 1000)} s (${image})`);
  }, 1_800_000);
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('builds with the real cloud-init: user, scripts in order, generalized, no secret left', async () => {
    const one = join(work, 'one.sh');
    const two = join(work, 'two.sh');
    await writeFile(
      one,
      '#!/bin/sh\necho "script one on $(cat /etc/debian_version)"\necho one > /root/orb-order\n',
    );
    await writeFile(
      two,
      '#!/bin/sh\n[ "$(cat /root/orb-order)" = one ] || exit 3\necho two >> /root/orb-order\necho "script two as $(id -un)"\n',
    );
    const t0 = Date.now();
    const { outputs, log } = await runCommandInProcess(buildCommand, {
      os: 'linux',
      'cloud-image': image,
      'admin-user': 'ops',
      'admin-password': password,
      'computer-name': 'debian-gold',
      script: [one, two],
      memory: '1G',
      cpus: '2',
      'disk-size': '2G',
      firmware: 'bios',
      accelerator: 'tcg',
      'output-format': 'raw',
      timeout: '15m',
      'stall-timeout': '5m',
      'screenshot-interval': '15s',
      out: join(work, 'out'),
      'cache-dir': join(work, 'cache'),
    });
    console.error(`debian build boot: ${Math.round((Date.now() - t0) / 1000)} s`);
    disk = String(outputs.disk);
    expect(outputs['stages-run']).toBe('installed,provisioned,generalized');
    const joined = log.join('\n');
    expect(joined).not.toContain(password);
    const provision = await readFile(String(outputs['provision-log']), 'utf8');
    expect(provision).toMatch(/script one on 12\.\d+/);
    expect(provision).toContain('script two as root');
    expect(provision.indexOf('script one on')).toBeLessThan(provision.indexOf('script two as'));
    // The real cloud-init's own output on the serial console.
    const serial = await readFile(join(work, 'out', 'logs', 'provision-serial.log'), 'utf8').catch(() => '');
    expect(serial + joined).toMatch(/cloud-init/i);

    const fs = await Ext4Reader.rootOf(disk);
    // cloud-init ran: the user, its home and the hostname it set.
    expect(await fs.cat('/etc/passwd')).toMatch(/^ops:x:\d+:\d+:orb admin:\/home\/ops:\/bin\/bash$/m);
    expect(await fs.exists('/home/ops')).toBe(true);
    expect((await fs.cat('/etc/hostname'))?.trim()).toBe('debian-gold');
    // The scripts ran in order.
    expect(await fs.cat('/root/orb-order')).toBe('one\ntwo\n');
    // Generalized: cloud-init cleaned (no seed, no instance, no user-data), machine-id reset,
    // no SSH host keys, no build logs, nothing of orb's staging left.
    expect(await fs.ls('/var/lib/cloud/seed')).toEqual([]);
    expect(await fs.ls('/var/lib/cloud/instances')).toEqual([]);
    expect(await fs.exists('/var/lib/cloud/instance')).toBe(false);
    expect(await fs.size('/etc/machine-id')).toBe(0);
    expect((await fs.ls('/etc/ssh')).filter((n) => n.startsWith('ssh_host_'))).toEqual([]);
    expect(await fs.exists('/var/lib/orb')).toBe(false);
    for (const f of await fs.ls('/var/log')) {
      if (f.startsWith('cloud-init')) expect(await fs.size(`/var/log/${f}`), f).toBeFalsy();
    }
    // The password never entered the guest in clear, and its hash lives only in /etc/shadow.
    const shadowHash = /^ops:([^:]+):/m.exec((await fs.cat('/etc/shadow')) ?? '')?.[1] ?? '';
    expect(shadowHash).toMatch(/^\$6\$/);
    const where = async (needle: string) => {
      const { stdout } = await exec('sh', [
        '-c',
        'grep -a -b -o -F -e "$1" "$2" | cut -d: -f1',
        'sh',
        needle,
        disk,
      ]);
      return fs.ownersOf(stdout.split('\n').filter(Boolean).map(Number));
    };
    expect(await where(password)).toEqual([]);
    // The hash is the account's: in no file but the shadow files (cloud-init's cached user-data
    // and instance data are gone), and in no freed block either (the zero fill reaches ext4's
    // reserved clusters too; see afterExitScript).
    const holders = await where(shadowHash);
    expect(holders).toContain('/etc/shadow');
    expect(holders.filter((p) => !['/etc/shadow', '/etc/shadow-'].includes(p))).toEqual([]);
  }, 1_200_000);

  it('smoke-tests the built image: X.224 and TLS against xrdp in the guest, the real console on screen', async () => {
    expect(disk, 'the build test ran first').toBeTruthy();
    const { outputs } = await runCommandInProcess(smokeCommand, {
      image: disk,
      accelerator: 'tcg',
      cpus: '2',
      memory: '1G',
      timeout: '10m',
      'expect-protocol': 'tls',
      'screenshot-interval': '10s',
      'evidence-dir': join(work, 'evidence'),
    });
    console.error(`debian smoke: RDP after ${String(outputs['seconds-to-rdp'])} s`);
    expect(outputs.failures ?? '').toBe('');
    expect(outputs.passed).toBe(true);
    expect(outputs.protocol).toBe('tls');
    expect(String(outputs['tls-subject'])).toContain('CN=orb-debian');
    const serial = await readFile(String(outputs['serial-log']), 'utf8');
    expect(serial).toMatch(/Debian GNU\/Linux 12/);
    expect(Number(outputs.screenshots)).toBeGreaterThan(0);
  }, 900_000);
});
