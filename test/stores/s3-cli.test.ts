import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../../src/core/fsutil.js';
import { orb } from '../helpers/cli.js';
import { buildLayout, makeDisk, type BuiltLayout } from '../helpers/oci-images.js';
import { startS3rver, type S3Server } from '../helpers/s3rver.js';

/** The built CLI end to end: orb publish --to s3://, orb pull s3:// and https:// (pre-signed), orb install. */
let s3: S3Server;
let dir: string;
let layout: BuiltLayout;
let sum: string;
const env = () => ({ AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1' });

beforeAll(async () => {
  s3 = await startS3rver();
  dir = mkdtempSync(join(tmpdir(), 'orb-s3-cli-'));
  sum = makeDisk(join(dir, 'disk.raw'), { size: 16 << 20, chunkSize: 1 << 20 });
  layout = await buildLayout(join(dir, 'disk.raw'), join(dir, 'layout'), 'v1', 1 << 20);
});
afterAll(async () => {
  await s3?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('orb CLI with s3://', () => {
  let presigned = '';

  it('publishes to S3 with --s3-endpoint/--s3-path-style and a masked pre-signed URL', async () => {
    const r = await orb(
      [
        'publish',
        layout.dir,
        '--to',
        `s3://${s3.bucket}/cli/win:v1`,
        '--s3-endpoint',
        s3.endpoint,
        '--s3-path-style',
        '--presign',
        '1h',
        '--json',
      ],
      env(),
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, string | number>;
    expect(out['digest']).toBe(layout.manifestDigest);
    expect(out['reference']).toBe(`s3://${s3.bucket}/cli/win@${layout.manifestDigest}`);
    expect(out['bytes-uploaded']).toBe(layout.storedBytes);
    presigned = String(out['presigned-url']);
    expect(presigned).toMatch(/X-Amz-Signature=[a-f0-9]{64}/);
    const sig = /X-Amz-Signature=([a-f0-9]+)/.exec(presigned)![1]!;
    expect(r.stderr).not.toContain(sig);
    // a second publish skips every blob
    const again = await orb(
      [
        'publish',
        layout.dir,
        '--to',
        `s3://${s3.bucket}/cli/win:v1`,
        '--s3-endpoint',
        s3.endpoint,
        '--s3-path-style',
        '--json',
      ],
      env(),
    );
    expect(JSON.parse(again.stdout)['bytes-uploaded']).toBe(0);
  });

  it('refuses a pre-signed URL valid longer than 7 days', async () => {
    const r = await orb(
      [
        'publish',
        layout.dir,
        '--to',
        `s3://${s3.bucket}/cli/x:v1`,
        '--s3-endpoint',
        s3.endpoint,
        '--s3-path-style',
        '--presign',
        '8d',
      ],
      env(),
    );
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/at most 7 days/);
  });

  it('pulls from S3 and from the pre-signed URL without credentials', async () => {
    const out = join(dir, 'pulled.raw');
    const r = await orb(
      [
        'pull',
        `s3://${s3.bucket}/cli/win:v1`,
        '--output',
        out,
        '--s3-endpoint',
        s3.endpoint,
        '--s3-path-style',
        '--json',
      ],
      env(),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(await sha256File(out)).toBe(sum);
    const out2 = join(dir, 'presigned.raw');
    const p = await orb(['pull', presigned, '--output', out2, '--json'], {
      AWS_ACCESS_KEY_ID: '',
      AWS_SECRET_ACCESS_KEY: '',
    });
    expect(p.code, p.stderr).toBe(0);
    expect(await sha256File(out2)).toBe(sum);
    expect(p.stderr).not.toMatch(/X-Amz-Signature=[a-f0-9]{8}/);
  });

  it('installs from S3 (prepare-only here: no Docker) and prints how to connect', async () => {
    const target = join(dir, 'client');
    const r = await orb(
      [
        'install',
        `s3://${s3.bucket}/cli/win:v1`,
        '--dir',
        target,
        '--prepare-only',
        '--s3-endpoint',
        s3.endpoint,
        '--s3-path-style',
        '--rdp-port',
        '23389',
        '--json',
      ],
      { ...env(), PATH: '/usr/bin:/bin:/usr/sbin:/sbin' },
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, string | number | boolean>;
    expect(out['digest']).toBe(layout.manifestDigest);
    expect(out['rdp']).toBe('127.0.0.1:23389');
    expect(String(out['warnings'])).toMatch(/docker/);
    expect(existsSync(String(out['overlay']))).toBe(true);
    const compose = parse(readFileSync(String(out['compose-file']), 'utf8')) as {
      services: { windows: { ports: string[] } };
    };
    expect(compose.services.windows.ports).toContain('127.0.0.1:23389:3389/tcp');
    expect(r.stderr).toMatch(/docker compose -f .*docker-compose.yml up -d/);
    expect(r.stderr).toMatch(/RDP to 127\.0\.0\.1:23389/);
    // without --prepare-only, a machine without Docker is refused with the fix
    const refused = await orb(
      [
        'install',
        `s3://${s3.bucket}/cli/win:v1`,
        '--dir',
        join(dir, 'c2'),
        '--s3-endpoint',
        s3.endpoint,
        '--s3-path-style',
      ],
      {
        ...env(),
        PATH: '/usr/bin:/bin:/usr/sbin:/sbin',
      },
    );
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/docker: install Docker Engine/);
  });
});
