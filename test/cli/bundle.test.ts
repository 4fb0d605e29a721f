import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { commands } from '../../src/commands/index.js';
import { VERSION } from '../../src/core/version.js';
import { actionEnv, orb, parseGithubOutput, ROOT, runNode } from '../helpers/cli.js';

describe('the committed bundles', () => {
  it('dist/ and the generated files match the sources (run npm run build and commit)', () => {
    // `npm test` builds first; anything the build changed versus what git has is stale.
    const status = execFileSync(
      'git',
      ['status', '--porcelain', '--', 'dist', '*/action.yml', 'action.yml', 'docs/cli.md'],
      {
        cwd: ROOT,
        encoding: 'utf8',
      },
    );
    const stale = status
      .split('\n')
      .filter(Boolean)
      // Files git already knows about (staged) are fine while developing; CI starts from a clean clone.
      .filter((l) => !/^[AM] /.test(l));
    expect(stale, 'dist/ or generated files are stale: run `npm run build` and commit').toEqual([]);
  });

  it('runs on Node 24, as GitHub runs node24 actions', () => {
    expect(Number(process.versions.node.split('.')[0])).toBeGreaterThanOrEqual(24);
  });

  it('version matches package.json', () => {
    expect(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version).toBe(VERSION);
  });

  it('orb --help lists every command', async () => {
    const r = await orb(['--help']);
    expect(r.code).toBe(0);
    for (const c of commands) expect(r.stdout).toContain(c.name);
  });

  it('bad input fails before any work, naming the input (exit 2)', async () => {
    const r = await orb(['setup-qemu', '--probe-timeout', '999']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/input 'probe-timeout'.*out of range/);
    const u = await orb(['setup-qemu', '--frobnicate']);
    expect(u.code).toBe(2);
    expect(u.stderr).toMatch(/unknown option --frobnicate/);
  });

  it('the setup-qemu action bundle runs as GitHub runs it and sets its outputs', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'orb-action-'));
    const files = { output: join(dir, 'out'), summary: join(dir, 'summary.md') };
    writeFileSync(files.output, '');
    writeFileSync(files.summary, '');
    const r = await runNode(
      'dist/setup-qemu/index.js',
      [],
      actionEnv({ install: 'false', 'probe-timeout': '10' }, files),
    );
    expect(r.stderr).toBe('');
    expect(r.code, r.stdout).toBe(0);
    const out = parseGithubOutput(readFileSync(files.output, 'utf8'));
    expect(['kvm', 'tcg']).toContain(out.accelerator);
    expect(out['qemu-version']).toMatch(/^\d+\.\d+/);
    expect(out).toHaveProperty('kvm-reason');
    expect(readFileSync(files.summary, 'utf8')).toContain('setup-qemu');
  });

  it('an action with invalid input fails the step with a message naming the input', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'orb-action-'));
    const files = { output: join(dir, 'out'), summary: join(dir, 'summary.md') };
    writeFileSync(files.output, '');
    writeFileSync(files.summary, '');
    const r = await runNode('dist/setup-qemu/index.js', [], actionEnv({ install: 'maybe' }, files));
    expect(r.code).not.toBe(0);
    expect(r.stdout).toMatch(/::error::input 'install'.*expected true or false/);
  });
});
