import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startVm, type Vm } from '../../src/qemu/runner.js';
import {
  GUEST_MARKERS,
  RDP_CONNECTION_CONFIRM,
  RDP_CONNECTION_REQUEST,
  testGuestDisk,
} from '../helpers/guests.js';

const vms: Vm[] = [];
afterEach(async () => {
  await Promise.all(vms.splice(0).map((vm) => vm.dispose()));
});
async function start(opts: Parameters<typeof startVm>[0]): Promise<Vm> {
  const vm = await startVm({ memoryMiB: 192, ...opts });
  vms.push(vm);
  return vm;
}

/** Sends an X.224 Connection Request and collects the reply until the server's 19-byte answer. */
function x224(host: string, port: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect(port, host);
    let got = Buffer.alloc(0);
    s.setTimeout(15_000, () => s.destroy(new Error('no reply within 15 s')));
    s.on('connect', () => s.write(RDP_CONNECTION_REQUEST));
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 19) s.end();
    });
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
}

/** Local addresses of LISTEN sockets on `port` from /proc/net/tcp and tcp6 (hex "0100007F" is 127.0.0.1). */
function listeners(port: number): string[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const out: string[] = [];
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!existsSync(f)) continue;
    for (const line of readFileSync(f, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A' && cols[1]?.endsWith(`:${hexPort}`)) out.push(cols[1].split(':')[0]!);
    }
  }
  return out;
}

describe('booting the test guests', { timeout: 200_000 }, () => {
  it('BIOS: the rdp guest answers X.224 through a forward bound to 127.0.0.1 only; screenshot is a PNG', async () => {
    const vm = await start({
      disks: [{ path: await testGuestDisk('rdp'), snapshot: true }],
      network: { forwards: [{ guestPort: 3389 }] },
      name: 'boot-bios',
    });
    const port = vm.ports[3389]!;
    expect(port).toBeGreaterThan(0);
    expect(vm.forwards).toEqual([
      { protocol: 'tcp', guestPort: 3389, hostAddress: '127.0.0.1', hostPort: port },
    ]);
    expect(listeners(port)).toEqual(['0100007F']);
    await vm.waitForSerial(GUEST_MARKERS.rdpListening, 150_000);
    expect(vm.serialText()).toContain('SYSLINUX');
    // The server keeps answering: several connections in a row.
    for (let i = 0; i < 3; i++)
      expect((await x224('127.0.0.1', port)).equals(RDP_CONNECTION_CONFIRM)).toBe(true);
    // Not reachable on any non-loopback address of this machine.
    for (const addrs of Object.values(networkInterfaces())) {
      for (const a of addrs ?? []) {
        if (a.internal || a.family !== 'IPv4') continue;
        await expect(x224(a.address, port)).rejects.toThrow(/ECONNREFUSED/);
      }
    }
    const png = join(vm.workDir, 'screen.png');
    const stats = await vm.screenshot(png);
    const bytes = readFileSync(png);
    expect(bytes.subarray(1, 4).toString()).toBe('PNG');
    expect(bytes.readUInt32BE(16)).toBe(stats.width);
    expect(stats).toMatchObject({ width: 720, height: 400, allBlack: false });
    expect(stats.meanBrightness).toBeGreaterThan(0);
  });

  it("UEFI: boots the same kind of disk through systemd-boot with a private VARS copy in the caller's work dir", async () => {
    const workDir = join(mkdtempSync(join(tmpdir(), 'orb-boot-')), 'vm');
    const vm = await start({
      disks: [{ path: await testGuestDisk('silent'), snapshot: true }],
      firmware: 'uefi',
      workDir,
      name: 'boot-uefi',
    });
    await vm.waitForSerial(`${GUEST_MARKERS.boot} variant=silent`, 150_000);
    expect(vm.serialText()).toMatch(/BdsDxe: starting Boot\d+/);
    expect(existsSync(join(workDir, 'efivars.fd'))).toBe(true);
    const stats = await vm.screenshot(join(workDir, 'uefi.png'));
    expect(stats.width).toBeGreaterThan(0);
    await vm.dispose();
    // The caller's work dir is evidence: kept, with the logs in it.
    expect(readFileSync(join(workDir, 'serial.log'), 'utf8')).toContain(GUEST_MARKERS.boot);
    expect(existsSync(join(workDir, 'qemu.log'))).toBe(true);
    expect(existsSync(join(workDir, 'uefi.png'))).toBe(true);
  });

  it('UEFI Secure Boot refuses the unsigned bootloader; the noboot disk never boots', async () => {
    const [secure, noboot] = await Promise.all([
      start({
        disks: [{ path: await testGuestDisk('silent'), snapshot: true }],
        firmware: 'uefi-secure',
        name: 'boot-secure',
      }),
      start({ disks: [{ path: await testGuestDisk('noboot'), snapshot: true }], name: 'boot-noboot' }),
    ]);
    expect(secure.args).toContain('q35,smm=on');
    await secure.waitForSerial(/failed to load Boot\d+ .*: Access Denied/, 150_000);
    await noboot.waitForSerial(/Loading \/no-kernel-here failed/, 60_000);
    expect(secure.serialText()).not.toContain(GUEST_MARKERS.boot);
    expect(noboot.serialText()).not.toContain(GUEST_MARKERS.boot);
    // A temporary work dir (not the caller's) is removed by dispose().
    await noboot.dispose();
    expect(existsSync(noboot.workDir)).toBe(false);
  });
});
