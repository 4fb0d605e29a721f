import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { orb } from '../helpers/cli.js';

// The README's main job, end to end through the CLI bundle: build (cloud-init path) -> convert ->
// publish to an oci-layout: directory -> smoke-test the published image -> pull it back.
describe('orb demo', () => {
  it('runs the whole pipeline on this machine under TCG and pulls back an identical disk', async () => {
    const work = mkdtempSync(join(tmpdir(), 'orb-demo-'));
    const r = await orb(
      ['demo', '--no-install', '--accelerator', 'tcg', '--work-dir', work, '--json'],
      {},
      600_000,
    );
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, string | boolean>;
    expect(out.accelerator).toBe('tcg');
    expect(out['smoke-passed']).toBe(true);
    expect(out.reference).toMatch(/^oci-layout:.*@sha256:[0-9a-f]{64}$/);
    expect(out['content-sha256']).toMatch(/^[0-9a-f]{64}$/);
    expect(r.stderr).toContain('ORB-DONE generalized');
    expect(r.stderr).toMatch(/RDP answered after/);
    // No secret in the log: the generated admin password is masked.
    expect(r.stderr).not.toMatch(/admin-password: (?!\*)/);
  }, 660_000);
});
