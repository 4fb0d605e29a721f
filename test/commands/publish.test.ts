import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { actionEnv, orb, parseGithubOutput, runNode } from '../helpers/cli.js';
import { buildLayout, makeDisk, sha256, type BuiltLayout } from '../helpers/oci-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * The user-facing surface through the built bundle: `orb publish`, `orb pull`, `orb blob-url`
 * (--json keys = action outputs), the pull action, the embedded oci-layout flow with no
 * registry, secrets kept out of logs, and bad input stopping with a clear error.
 */
let reg: Registry;
let dir: string;
let layout: BuiltLayout;
let sum: string;
const env = { ORB_RETRY_BASE_MS: '20', DOCKER_CONFIG: mkdtempSync(join(tmpdir(), 'orb-noauth-')) };

beforeAll(async () => {
  reg = await startRegistry();
  dir = mkdtempSync(join(tmpdir(), 'orb-cli-oci-'));
  sum = makeDisk(join(dir, 'disk.raw'), { size: 6 << 20, chunkSize: 1 << 20 });
  layout = await buildLayout(join(dir, 'disk.raw'), join(dir, 'layout'), 'v1', 1 << 20);
});

afterAll(async () => {
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('orb publish / pull / blob-url', () => {
  it('runs the whole flow on one machine with oci-layout: (no registry)', async () => {
    const target = join(dir, 'shelf');
    const p = await orb(
      [
        'publish',
        `oci-layout:${layout.dir}:v1`,
        '--to',
        `oci-layout:${target}:2025-06`,
        '--tags',
        'latest',
        '--json',
      ],
      env,
    );
    expect(p.code, p.stderr).toBe(0);
    const out = JSON.parse(p.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({
      digest: layout.manifestDigest,
      tags: '2025-06,latest',
      'artifact-type': 'application/vnd.orb.disk.v2',
    });
    expect(out['bytes-uploaded']).toBe(out['bytes-total']);
    expect(out.reference).toBe(`oci-layout:${target}@${layout.manifestDigest}`);
    const q = await orb(
      ['pull', `oci-layout:${target}:latest`, '--output', join(dir, 'shelf.raw'), '--json'],
      env,
    );
    expect(q.code, q.stderr).toBe(0);
    const pulled = JSON.parse(q.stdout) as Record<string, unknown>;
    expect(pulled['content-digest']).toBe(layout.contentDigest);
    expect(pulled.format).toBe('raw');
    expect(await sha256File(join(dir, 'shelf.raw'))).toBe(sum);
  });

  it('publishes to a registry with progress on stderr, then skips everything the second time', async () => {
    const ref = `oci://${reg.host}/cli/disk:v1`;
    const first = await orb(
      ['publish', layout.dir, '--to', ref, '--username', 'someone', '--password', 'hunter2-secret', '--json'],
      env,
    );
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toMatch(/uploading/);
    expect(first.stderr + first.stdout).not.toContain('hunter2-secret');
    const again = await orb(['publish', layout.dir, '--to', ref, '--json'], env);
    const r = JSON.parse(again.stdout) as Record<string, number>;
    expect(r['bytes-uploaded']).toBe(0);
    expect(r['bytes-skipped']).toBe(r['bytes-total']);
  });

  it('the pull action writes its outputs and a qcow2 on request', async () => {
    const files = { output: join(dir, 'gh-output'), summary: join(dir, 'gh-summary') };
    writeFileSync(files.output, '');
    writeFileSync(files.summary, '');
    const r = await runNode('dist/pull/index.js', [], {
      ...env,
      ...actionEnv(
        { ref: `oci://${reg.host}/cli/disk:v1`, output: join(dir, 'action.qcow2'), format: 'qcow2' },
        files,
      ),
    });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const out = parseGithubOutput(readFileSync(files.output, 'utf8'));
    expect(out.format).toBe('qcow2');
    expect(out['content-digest']).toBe(layout.contentDigest);
    // the qcow2 holds the disk's bytes
    execFileSync('qemu-img', [
      'compare',
      '-f',
      'raw',
      '-F',
      'qcow2',
      join(dir, 'disk.raw'),
      join(dir, 'action.qcow2'),
    ]);
    expect(readFileSync(files.summary, 'utf8')).toContain('pull');
  });

  it('blob-url prints URLs that curl can fetch', async () => {
    const file = join(dir, 'notes.bin');
    writeFileSync(file, Buffer.alloc(300_000, 7));
    expect((await orb(['publish', file, '--to', `oci://${reg.host}/cli/file:v1`], env)).code).toBe(0);
    const r = await orb(['blob-url', `oci://${reg.host}/cli/file:v1`, '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { url: string; direct: boolean };
    expect(out.direct).toBe(true);
    expect(r.stderr).toMatch(/serves blobs itself/);
    const body = Buffer.from(await (await fetch(out.url)).arrayBuffer());
    expect(sha256(body)).toBe(sha256(readFileSync(file)));
  });
});

describe('bad input', () => {
  it('a missing tag is a clear error and no output appears', async () => {
    const out = join(dir, 'none.raw');
    const r = await orb(['pull', `oci://${reg.host}/cli/disk:nope`, '--output', out], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/has no manifest 'nope'/);
    expect(existsSync(out)).toBe(false);
  });

  it('malformed references and missing sources are usage errors (exit 2)', async () => {
    const a = await orb(['pull', 'oci://Bad Host/x', '--output', join(dir, 'x.raw')], env);
    expect(a.code).toBe(2);
    const b = await orb(
      ['publish', join(dir, 'does-not-exist.qcow2'), '--to', `oci://${reg.host}/cli/x:v1`],
      env,
    );
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/does not exist/);
    const c = await orb(['publish', layout.dir, '--to', 'ftp://somewhere/x'], env);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/unsupported reference/);
    const d = await orb(
      [
        'pull',
        `oci://${reg.host}/cli/disk:v1`,
        '--output',
        join(dir, 'y.raw'),
        '--base',
        `oci://${reg.host}/cli/disk:v0`,
      ],
      env,
    );
    expect(d.code).toBe(2);
    expect(d.stderr).toMatch(/--base must be local/);
  });

  it('an unreachable registry fails with a hint instead of hanging', async () => {
    const r = await orb(['pull', 'oci://127.0.0.1:9/x/y:v1', '--output', join(dir, 'z.raw')], {
      ...env,
      ORB_RETRY_ATTEMPTS: '2',
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot reach the registry/);
    expect(r.stderr).toMatch(/hint:/);
  });
});
