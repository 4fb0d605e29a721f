import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
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
import { actionEnv, NODE, orb, parseGithubOutput, ROOT, runNode } from '../helpers/cli.js';
import { GiB, sha256File, smallDisk, sparseDisk } from '../helpers/images.js';

/** The CLI and the action bundle (dist/, so these run after `npm run build`). */
let dir: string;
let raw: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'orb-convert-cli-'));
  chmodSync(dir, 0o755);
  raw = smallDisk();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const out = (name: string) => join(dir, name);
const leftovers = () => readdirSync(dir).filter((f) => f.includes('.partial'));

const RESULT_KEYS = [
  'path',
  'format',
  'virtual-size',
  'allocated-bytes',
  'output-bytes',
  'ratio',
  'sha256',
  'content-sha256',
  'seconds',
  'mb-per-second',
  'manifest',
];

describe('orb convert', () => {
  it('prints the result as JSON with the action output keys, and progress with rate and ETA on stderr', async () => {
    const r = await orb(
      ['convert', raw, '--output', out('cli.qcow2'), '--format', 'qcow2', '--verify', '--json'],
      { ORB_PROGRESS_INTERVAL_MS: '1' },
    );
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    for (const k of RESULT_KEYS) expect(j).toHaveProperty(k);
    expect(j['content-sha256']).toBe(sha256File(raw));
    expect(j.verified).toBe(true);
    expect(r.stderr).toMatch(
      /convert qcow2\s+\d+\.\d%\s+[\d.]+ MiB\/[\d.]+ MiB\s+[\d.]+ (KiB|MiB|GiB)\/s(\s+ETA \d+s)?/,
    );
    expect(r.stderr).toMatch(/ETA/);
    expect(existsSync(out('cli.qcow2.orb.json'))).toBe(true);
  });

  it('`orb convert-and-compress` is the same command; chunked takes --tag and --base', async () => {
    const a = await orb([
      'convert-and-compress',
      '--input',
      raw,
      '--output',
      out('layout'),
      '--format',
      'chunked',
      '--pack-size',
      '4M',
      '--tag',
      'v1',
      '--json',
    ]);
    expect(a.code, a.stderr).toBe(0);
    const ja = JSON.parse(a.stdout);
    expect(ja['content-digest']).toMatch(/^orb2:sha256:[0-9a-f]{64}$/);
    expect(ja['content-sha256']).toBe('');
    expect(ja.packs).toBeGreaterThan(1);
    const b = await orb([
      'convert',
      raw,
      '--output',
      out('layout2'),
      '--format',
      'chunked',
      '--base',
      `oci-layout:${out('layout')}:v1`,
      '--json',
    ]);
    expect(b.code, b.stderr).toBe(0);
    const j = JSON.parse(b.stdout);
    // the same disk again: every block is the base's, nothing new is stored
    expect(j['blocks-new']).toBe(0);
    expect(j['blocks-reused']).toBeGreaterThan(0);
    expect(j['new-pack-bytes']).toBe(0);
    expect(j['content-digest']).toBe(ja['content-digest']);
    expect(j['manifest-digest']).toMatch(/^sha256:/);
    // orb digest: the same root from the raw disk, the layout (and JSON key content-digest)
    for (const ref of [raw, out('layout2'), `oci-layout:${out('layout')}:v1`]) {
      const d = await orb(['digest', ref, '--json']);
      expect(d.code, d.stderr).toBe(0);
      expect(JSON.parse(d.stdout)['content-digest']).toBe(ja['content-digest']);
    }
    const plain = await orb(['digest', raw]);
    expect(plain.stdout).toContain(`content-digest: ${ja['content-digest']}`);
  });

  it('a level out of range is a usage error (exit 2) before any work', async () => {
    const r = await orb([
      'convert',
      raw,
      '--output',
      out('bad.raw.zst'),
      '--format',
      'raw.zst',
      '--level',
      '25',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/level.*out of range/);
    expect(existsSync(out('bad.raw.zst'))).toBe(false);
  });

  it('an unknown format name is refused with the list of formats', async () => {
    const r = await orb(['convert', raw, '--output', out('x.vmdk'), '--format', 'vmdk']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/qcow2, raw, raw\.zst, chunked/);
  });

  it('a missing input says so and what to do', async () => {
    const r = await orb(['convert', out('missing.img'), '--output', out('m.qcow2')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read input .*no such file/);
    expect(r.stderr).toMatch(/hint:/);
  });

  it('Ctrl-C stops the conversion and removes the partial output', async () => {
    const big = sparseDisk(4 * GiB);
    const target = out('interrupted.raw.zst');
    const child = spawn(
      NODE,
      [join(ROOT, 'bin/orb.js'), 'convert', big, '--output', target, '--format', 'raw.zst'],
      {
        env: { ...process.env, ORB_PROGRESS_INTERVAL_MS: '50' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (/convert raw\.zst\s+[1-9]/.test(stderr) && !child.killed) child.kill('SIGINT');
      });
      child.on('close', (c) => resolve(c));
    });
    expect(code, stderr).toBe(130);
    expect(existsSync(target)).toBe(false);
    expect(existsSync(`${target}.orb.json`)).toBe(false);
    expect(leftovers()).toEqual([]);
  });
});

/** Permission checks mean nothing to root: drop to nobody for them when we are root. */
/**
 * The CLI as an unprivileged user (nobody, when the tests run as root). That user may not be able
 * to enter the checkout (a clone in a 0700 folder), so it runs a copy of what the CLI needs (the
 * Node binary, bin/orb.js and the bundle) made once in the test's world-readable folder.
 */
let runnable: { node: string; cli: string } | undefined;
function unprivilegedCli(): { node: string; cli: string } {
  if (runnable) return runnable;
  const top = join(dir, 'as-user');
  mkdirSync(join(top, 'bin'), { recursive: true });
  copyFileSync(NODE, join(top, 'node'));
  chmodSync(join(top, 'node'), 0o755);
  copyFileSync(join(ROOT, 'bin', 'orb.js'), join(top, 'bin', 'orb.js'));
  cpSync(join(ROOT, 'dist', 'orb'), join(top, 'dist', 'orb'), { recursive: true });
  runnable = { node: join(top, 'node'), cli: join(top, 'bin', 'orb.js') };
  return runnable;
}

function asUser(args: string[]): { code: number | null; stderr: string } {
  const root = process.getuid?.() === 0;
  const { node, cli } = root ? unprivilegedCli() : { node: NODE, cli: join(ROOT, 'bin/orb.js') };
  const cmd = root ? 'setpriv' : node;
  const full = root
    ? ['--reuid=65534', '--regid=65534', '--clear-groups', '--', node, cli, ...args]
    : [cli, ...args];
  const r = spawnSync(cmd, full, { encoding: 'utf8', env: { ...process.env, HOME: dir }, timeout: 120_000 });
  return { code: r.status, stderr: r.stderr };
}

describe('permissions', () => {
  it('an unreadable input is reported and left as it was', () => {
    const secret = out('secret.raw');
    copyFileSync(raw, secret);
    chmodSync(secret, 0o600);
    if (process.getuid?.() !== 0) chmodSync(secret, 0o000);
    const r = asUser(['convert', secret, '--output', join(dir, 'pub', 'x.qcow2')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read input .*(permission denied|EACCES)/i);
    expect(sha256File(secret)).toBe(sha256File(raw));
  });

  it('a read-only output directory is reported before any work', () => {
    const ro = out('readonly');
    mkdirSync(ro);
    const input = out('public.raw');
    copyFileSync(raw, input);
    chmodSync(input, 0o644);
    chmodSync(ro, 0o555);
    const r = asUser(['convert', input, '--output', join(ro, 'x.qcow2')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot write to .*readonly/);
    expect(readdirSync(ro)).toEqual([]);
  });
});

describe('the action', () => {
  it('runs from the bundle with INPUT_* variables, sets outputs and writes a job summary', async () => {
    const files = { output: out('gh-output'), summary: out('gh-summary') };
    writeFileSync(files.output, '');
    writeFileSync(files.summary, '');
    const r = await runNode(
      'dist/convert-and-compress/index.js',
      [],
      actionEnv(
        { input: raw, output: out('action'), format: 'chunked', 'pack-size': '8M', verify: 'true' },
        files,
      ),
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const o = parseGithubOutput(readFileSync(files.output, 'utf8'));
    for (const k of RESULT_KEYS) expect(o).toHaveProperty(k);
    expect(o.format).toBe('chunked');
    expect(o['content-digest']).toMatch(/^orb2:sha256:/);
    expect(o.verified).toBe('true');
    expect(readFileSync(files.summary, 'utf8')).toMatch(/convert-and-compress: chunked/);
    // progress goes to the log as plain lines (Actions has no terminal)
    expect(r.stdout).toMatch(/convert chunked .*%/);
  });

  it('benchmark: true without an output measures and recommends, with a table and a chart', async () => {
    const files = { output: out('gh-output2'), summary: out('gh-summary2') };
    writeFileSync(files.output, '');
    writeFileSync(files.summary, '');
    const r = await runNode(
      'dist/convert-and-compress/index.js',
      [],
      actionEnv(
        {
          input: raw,
          benchmark: 'true',
          methods: 'zstd-3,chunked,lz4',
          'sample-size': '8M',
          bandwidth: '1Gbit',
          report: out('bench.json'),
        },
        files,
      ),
      300_000,
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const o = parseGithubOutput(readFileSync(files.output, 'utf8'));
    expect(['zstd-3', 'chunked', 'lz4']).toContain(o.recommended);
    const summary = readFileSync(files.summary, 'utf8');
    expect(summary).toMatch(/```mermaid\nxychart-beta/);
    expect(summary).toMatch(/\| method \|/);
    const rep = JSON.parse(readFileSync(out('bench.json'), 'utf8'));
    expect(rep.methods.map((m: { id: string }) => m.id)).toEqual(['zstd-3', 'chunked', 'lz4']);
    expect(rep.bandwidth).toBe(125e6);
  });
});
