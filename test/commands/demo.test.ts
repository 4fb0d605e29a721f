import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { orb } from '../helpers/cli.js';

// The README's main job, end to end through the CLI bundle on the real Debian image (built once
// with mmdebstrap and cached in .cache/, shared with debian-guest.test.ts): build with the real
// cloud-init -> convert -> publish to an oci-layout: directory -> smoke-test the published image
// over RDP with TLS against xrdp in the guest -> pull it back.
describe('orb demo', () => {
  it('runs the whole pipeline on a real Debian guest under TCG and pulls back an identical disk', async () => {
    const work = mkdtempSync(join(tmpdir(), 'orb-demo-'));
    const t0 = Date.now();
    // the work folder holds 2 GB of disks: gone after the run, whatever its outcome
    const r = await orb(
      ['demo', '--no-install', '--accelerator', 'tcg', '--work-dir', work, '--json'],
      {},
      1_500_000,
    ).finally(() => rmSync(work, { recursive: true, force: true }));
    console.error(`orb demo: ${Math.round((Date.now() - t0) / 1000)} s`);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, string | boolean>;
    expect(out.accelerator).toBe('tcg');
    expect(out['smoke-passed']).toBe(true);
    expect(out.reference).toMatch(/^oci-layout:.*@sha256:[0-9a-f]{64}$/);
    expect(out['content-digest']).toMatch(/^orb2:sha256:[0-9a-f]{64}$/);
    // The real cloud-init ran orb's provisioning script inside Debian 12.
    expect(r.stderr).toMatch(/provisioning the demo image: Debian 12\.\d+/);
    expect(r.stderr).toContain('ORB-DONE generalized');
    // xrdp in the guest answered with TLS and its own certificate.
    expect(r.stderr).toMatch(/RDP answered after [\d.]+ s, tls \(TLSv1\.[23], CN=orb-debian/);
    // Progress lines throughout, not only at the end.
    expect(r.stderr).toMatch(/### Debian bookworm cloud image/);
    // No secret in the log: the generated admin password is masked.
    expect(r.stderr).not.toMatch(/admin-password: (?!\*)/);
  }, 1_560_000);
});
