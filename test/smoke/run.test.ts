import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { silentLogger } from '../../src/core/log.js';
import { newManifest } from '../../src/core/stage-manifest-file.js';
import type { Vm } from '../../src/qemu/runner.js';
import { smokeTest, type SmokeOptions, type SmokeResult } from '../../src/smoke/run.js';
import { smokeGuestDisk } from '../helpers/smoke-guests.js';

/**
 * Whole smoke tests of tiny guests under TCG (-m 256, one CPU): a guest that answers RDP passes
 * with timings; a guest that never answers and one that does not boot fail with evidence; a
 * corrupt image fails before any VM starts. The image file never changes.
 */
let dir: string;
const images: Record<string, string> = {};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-smoke-test-'));
  for (const v of ['smoke-rdp', 'silent'] as const) {
    images[v] = join(dir, `${v}.img`);
    copyFileSync(await smokeGuestDisk(v), images[v]);
  }
}, 300_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** the runner's work directory of the last VM (inside our overlay directory) */
let lastWorkDir = '';

function opts(image: string, evidence: string, extra: Partial<SmokeOptions> = {}): SmokeOptions {
  const { onVmStarted, ...rest } = extra;
  return {
    image,
    accelerator: 'tcg',
    memoryMiB: 256,
    cpus: 1,
    timeoutMs: 90_000,
    evidenceDir: join(dir, evidence),
    shutdownGraceMs: 2000,
    screenshotIntervalMs: 3000,
    log: silentLogger,
    onVmStarted: (vm: Vm) => {
      lastWorkDir = vm.workDir;
      onVmStarted?.(vm);
    },
    ...rest,
  };
}

/** Local addresses of listening TCP sockets on `port` (from /proc/net/tcp and tcp6). */
function listeners(port: number): string[] {
  const out: string[] = [];
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(f, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 4 || cols[3] !== '0A') continue; // LISTEN
      const [addr, p] = cols[1]!.split(':');
      if (parseInt(p!, 16) === port) out.push(addr!);
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

async function expectCleanEnd(r: SmokeResult): Promise<void> {
  expect(r.qemuPid).toBeGreaterThan(0);
  expect(alive(r.qemuPid!)).toBe(false);
  if (r.rdpHostPort) expect(await canBind(r.rdpHostPort)).toBe(true);
  expect(existsSync(r.serialLog)).toBe(true);
  expect(existsSync(r.qemuLog)).toBe(true);
  expect(existsSync(join(r.evidenceDir, 'result.json'))).toBe(true);
  // no overlay or runner directory left behind
  expect(lastWorkDir).toMatch(/orb-smoke-/);
  expect(existsSync(lastWorkDir)).toBe(false);
  expect(existsSync(dirname(lastWorkDir))).toBe(false);
}

describe('smoke test', () => {
  let passed: SmokeResult;

  it('passes a guest that answers RDP, with timings, port and screen checks; the image is unchanged', async () => {
    const image = images['smoke-rdp']!;
    const before = await sha256File(image);
    let forwardsOk: string | undefined;
    passed = await smokeTest(
      opts(image, 'ev-pass', {
        ports: [8006],
        serialPattern: /smoke-rdp-listening/,
        screen: { settle: true },
        onVmStarted: (vm: Vm) => {
          // every forward listens on 127.0.0.1 only
          forwardsOk = vm.forwards
            .map((f) => {
              const l = listeners(f.hostPort);
              return f.hostAddress === '127.0.0.1' && l.length > 0 && l.every((a) => a === '0100007F')
                ? ''
                : `${f.hostPort}: ${l.join(',')}`;
            })
            .join('');
        },
      }),
    );
    expect(passed.failures).toEqual([]);
    expect(passed.passed).toBe(true);
    expect(forwardsOk).toBe('');
    expect(passed.rdp).toMatchObject({ protocol: 'rdp', negotiated: true });
    expect(passed.timings.firstSerial).toBeGreaterThan(0);
    expect(passed.timings.rdpReady).toBeGreaterThan(passed.timings.firstSerial!);
    expect(passed.checks.map((c) => [c.name, c.status])).toEqual(
      expect.arrayContaining([
        ['RDP on guest port 3389', 'passed'],
        ['TCP port 8006', 'passed'],
        ['serial console matches /smoke-rdp-listening/', 'passed'],
        ['screen not black and settled', 'passed'],
      ]),
    );
    expect(passed.screenshots.length).toBeGreaterThanOrEqual(3);
    expect(readFileSync(passed.serialLog, 'utf8')).toMatch(/ORB-GUEST-BOOT variant=smoke-rdp/);
    expect(await sha256File(image)).toBe(before);
    await expectCleanEnd(passed);
  });

  it('matches a reference screenshot outside masked regions', async () => {
    const reference = passed.screenshots.at(-1)!;
    // the bottom half (cursor, late kernel messages) is masked out
    const r = await smokeTest(
      opts(images['smoke-rdp']!, 'ev-ref', {
        rdp: { enabled: true },
        screen: { reference, masks: [{ x: 0, y: 160, width: 720, height: 240 }], threshold: 0.01 },
      }),
    );
    expect(r.failures).toEqual([]);
    expect(r.referenceDifference).toBeLessThanOrEqual(0.01);
    expect(r.checks.find((c) => c.name === 'screen matches the reference')?.status).toBe('passed');
  });

  // UEFI + swtpm under TCG on a loaded 2-core host can take most of a minute to reach RDP.
  it('boots UEFI with a TPM as the stage manifest says; fails when an extra port refuses connections', async () => {
    // the same disk boots under OVMF too (syslinux.efi); the manifest beside it asks for UEFI + TPM
    const image = join(dir, 'uefi.img');
    copyFileSync(images['smoke-rdp']!, image);
    const manifest = newManifest(
      'build',
      { path: 'uefi.img', format: 'raw', virtualSize: 48 << 20, fileSize: 48 << 20 },
      {
        build: { os: 'test', arch: 'x86_64', firmware: 'uefi', tpm: true },
      },
    );
    writeFileSync(`${image}.orb.json`, JSON.stringify(manifest));
    const r = await smokeTest(
      opts(image, 'ev-port', { timeoutMs: 90_000, ports: [8007], memoryMiB: undefined }),
    );
    expect(r).toMatchObject({ firmware: 'uefi', tpm: true, memoryMiB: 256, passed: false });
    expect(r.checks.find((c) => c.name === 'RDP on guest port 3389')?.status).toBe('passed');
    expect(r.failures).toEqual(['guest port 8007 refuses connections after 90 s']);
    // the guest's init reports /dev/tpm0: swtpm was attached and the kernel found it
    expect(readFileSync(r.serialLog, 'utf8')).toMatch(/ORB-GUEST-BOOT variant=smoke-rdp tpm=yes/);
    await expectCleanEnd(r);
  }, 240_000);

  it('fails a guest that boots but never answers, at the timeout, with screenshots and logs', async () => {
    const image = images.silent!;
    const before = await sha256File(image);
    const t0 = Date.now();
    const r = await smokeTest(opts(image, 'ev-silent', { timeoutMs: 20_000, screen: { settle: true } }));
    const took = (Date.now() - t0) / 1000;
    expect(r.passed).toBe(false);
    expect(r.failures[0]).toMatch(
      /RDP check failed: no RDP answer from 127\.0\.0\.1:\d+ within 20 s \(\d+ attempts\); last attempt: /,
    );
    expect(r.checks.find((c) => c.name === 'screen not black and settled')?.status).toBe('skipped');
    expect(took).toBeGreaterThanOrEqual(20);
    expect(took).toBeLessThan(45);
    expect(r.screenshots.length).toBeGreaterThanOrEqual(4);
    expect(readFileSync(r.serialLog, 'utf8')).toMatch(/ORB-GUEST-BOOT variant=silent/);
    const result = JSON.parse(readFileSync(join(r.evidenceDir, 'result.json'), 'utf8')) as {
      passed: boolean;
      serialTail: string;
    };
    expect(result).toMatchObject({ passed: false, serialTail: expect.stringMatching(/variant=silent/) });
    expect(await sha256File(image)).toBe(before);
    await expectCleanEnd(r);
  });

  it('refuses a corrupt image before starting any VM', async () => {
    const bad = join(dir, 'corrupt.qcow2');
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', images['smoke-rdp']!, bad]);
    const l1 = Number(readFileSync(bad).readBigUInt64BE(40));
    execFileSync('qemu-io', ['-f', 'raw', '-c', `write -P 0xff ${l1} 512`, bad], { stdio: 'ignore' });
    let started = false;
    const evidence = join(dir, 'ev-corrupt');
    await expect(smokeTest(opts(bad, 'ev-corrupt', { onVmStarted: () => (started = true) }))).rejects.toThrow(
      /corrupt\.qcow2 is not a bootable disk image: qemu-img check found its qcow2 metadata damaged/,
    );
    expect(started).toBe(false);
    expect(existsSync(evidence)).toBe(false);
  });
});
