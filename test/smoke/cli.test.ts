import { spawn } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { actionEnv, NODE, orb, parseGithubOutput, ROOT, runNode } from '../helpers/cli.js';
import { buildLayout } from '../helpers/oci-images.js';
import { smokeGuestDisk } from '../helpers/smoke-guests.js';

/**
 * smoke-test through the built bundle: the CLI from a chunked layout (pulled first), the action
 * with a guest that does not boot (outputs, job summary, evidence), Ctrl-C in the middle of a
 * boot, and a corrupt image. Each child gets its own TMPDIR so leftovers are visible.
 */
let dir: string;
const common = [
  '--accelerator',
  'tcg',
  '--memory',
  '256M',
  '--cpus',
  '1',
  '--shutdown-grace',
  '2',
  '--screenshot-interval',
  '3',
];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-smoke-cli-'));
}, 300_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function freshTmp(name: string): string {
  const t = join(dir, name);
  mkdirSync(t, { recursive: true });
  return t;
}

describe('smoke-test CLI and action', () => {
  it('pulls a chunked layout, boots it and prints the result as JSON', async () => {
    const raw = join(dir, 'guest.img');
    copyFileSync(await smokeGuestDisk('smoke-rdp'), raw);
    const layout = join(dir, 'layout');
    await buildLayout(raw, layout, 'v1', 4 << 20);
    const tmp = freshTmp('tmp-pass');
    const evidence = join(dir, 'ev-pass');
    const r = await orb(
      [
        'smoke-test',
        '--image',
        `oci-layout:${layout}:v1`,
        // the pull-then-boot path (booting through the lazy export is test/smoke/lazy.test.ts)
        '--full-pull',
        ...common,
        '--timeout',
        '90',
        '--ports',
        '8006',
        '--evidence-dir',
        evidence,
        '--json',
      ],
      { TMPDIR: tmp },
      240_000,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({
      passed: true,
      failures: '',
      protocol: 'rdp',
      'tls-subject': '',
      accelerator: 'tcg',
      firmware: 'bios',
      'image-format': 'raw',
      'evidence-dir': evidence,
    });
    expect(out['seconds-to-rdp']).toBeGreaterThan(out['seconds-to-first-serial'] as number);
    expect(out.screenshots).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/unpacking the chunked layout oci-layout:/);
    expect(r.stderr).toMatch(/RDP answered after [\d.]+ s: standard RDP security/);
    // the pulled copy and the overlay are gone; the evidence stays
    expect(readdirSync(tmp)).toEqual([]);
    expect(existsSync(join(evidence, 'serial.log'))).toBe(true);
  });

  it('as an action: a guest that does not boot fails with outputs, a job summary and the serial log', async () => {
    const image = join(dir, 'noboot.img');
    copyFileSync(await smokeGuestDisk('noboot'), image);
    const before = await sha256File(image);
    const files = { output: join(dir, 'gh-output'), summary: join(dir, 'gh-summary') };
    writeFileSync(files.output, '');
    writeFileSync(files.summary, '');
    const evidence = join(dir, 'ev-noboot');
    const tmp = freshTmp('tmp-noboot');
    const env = actionEnv(
      {
        image,
        accelerator: 'tcg',
        memory: '256M',
        cpus: '1',
        timeout: '15',
        'shutdown-grace': '2',
        'screenshot-interval': '3',
        'evidence-dir': evidence,
      },
      files,
    );
    const r = await runNode('dist/smoke-test/index.js', [], { ...env, TMPDIR: tmp }, 120_000);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toMatch(/::error::smoke test failed: RDP check failed: no RDP answer .* within 15 s/);
    // without a runner token the upload cannot work: a warning, not a crash
    expect(r.stdout).toMatch(/::warning::could not upload the evidence artifact/);
    const outputs = parseGithubOutput(readFileSync(files.output, 'utf8'));
    expect(outputs).toMatchObject({ passed: 'false', 'evidence-dir': evidence, 'seconds-to-rdp': '' });
    expect(outputs.failures).toMatch(/RDP check failed/);
    const summary = readFileSync(files.summary, 'utf8');
    expect(summary).toMatch(/## smoke-test: FAILED/);
    expect(summary).toMatch(/Last lines of the serial console/);
    expect(summary).toMatch(/SYSLINUX/);
    expect(readFileSync(join(evidence, 'serial.log'), 'utf8')).toMatch(/SYSLINUX/);
    expect(readdirSync(join(evidence, 'screenshots')).length).toBeGreaterThanOrEqual(3);
    expect(await sha256File(image)).toBe(before);
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('Ctrl-C during the boot stops QEMU and removes the overlay', async () => {
    const image = join(dir, 'silent.img');
    copyFileSync(await smokeGuestDisk('silent'), image);
    const tmp = freshTmp('tmp-int');
    const child = spawn(
      NODE,
      [
        join(ROOT, 'bin/orb.js'),
        'smoke-test',
        '--image',
        image,
        ...common,
        '--timeout',
        '120',
        '--evidence-dir',
        join(dir, 'ev-int'),
      ],
      {
        env: { ...process.env, TMPDIR: tmp },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    const pid = await new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no VM start seen:\n${stderr}`)), 60_000);
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /QEMU pid (\d+)/.exec(stderr);
        if (m) {
          clearTimeout(t);
          resolve(Number(m[1]));
        }
      });
    });
    await new Promise((r) => setTimeout(r, 2000));
    const t0 = Date.now();
    child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => child.once('close', (c) => r(c)));
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(code).toBe(130);
    // SIGKILL was sent as the CLI exited; allow the kernel a moment (a zombie counts as gone).
    const running = () => {
      try {
        return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 50 && running(); i++) await new Promise((r) => setTimeout(r, 100));
    expect(running()).toBe(false);
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('refuses a corrupt image before booting, with exit code 1', async () => {
    const bad = join(dir, 'garbage.img');
    writeFileSync(bad, Buffer.alloc(4 << 20, 'this is not a disk\n'));
    const evidence = join(dir, 'ev-bad');
    const r = await orb(['smoke-test', '--image', bad, ...common, '--evidence-dir', evidence, '--json']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(
      /error: .*garbage\.img is not a bootable disk image: its first sector has no boot signature/,
    );
    expect(r.stderr).not.toMatch(/starting the VM/);
    expect(existsSync(evidence)).toBe(false);
  });
});
