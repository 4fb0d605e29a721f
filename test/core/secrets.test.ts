import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeError, UsageError } from '../../src/core/errors.js';
import { mask, maskUrlSecrets, redact, secretForms } from '../../src/core/log.js';
import { encodeUnattendPassword } from '../../src/windows/accounts.js';
import { actionEnv, orb, runNode, type Ran } from '../helpers/cli.js';
import { freePort } from '../helpers/registry.js';

/**
 * Secrets never reach what orb prints or writes: credentials inside a reference
 * (oci://user:password@host), pre-signed URL signatures, and secret inputs in every encoding we
 * use. The CLI and action bundles are run on a usage error and on a network error (a closed port
 * on 127.0.0.1), and their stdout, stderr, job summary and output files are searched.
 */
const PASSWORD = 'Hunter2-Reg-Pass';
const SIGNATURE = 'f00dfeedcafe0123456789abcdef0123456789abcdef0123456789abcdef0123';
const CREDENTIAL = 'AKIAORBTESTKEY123456';
const TOKEN = 'sv-token-5ecret-xyz';

let dir: string;
let closedPort: number;
const env = () => ({ ORB_RETRY_BASE_MS: '5', DOCKER_CONFIG: mkdtempSync(join(tmpdir(), 'orb-noauth-')) });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-secrets-'));
  // A port nothing listens on: connections are refused at once.
  closedPort = await freePort();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function presigned(host: string): string {
  return (
    `http://${host}/bucket/disk.raw?X-Amz-Algorithm=AWS4-HMAC-SHA256` +
    `&X-Amz-Credential=${CREDENTIAL}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request` +
    `&X-Amz-Date=20260101T000000Z&X-Amz-Expires=600&X-Amz-SignedHeaders=host&X-Amz-Signature=${SIGNATURE}` +
    `&token=${TOKEN}`
  );
}

/** None of the secrets appears in any of the texts, in any form we know. */
function expectClean(
  texts: Record<string, string>,
  secrets: string[] = [PASSWORD, SIGNATURE, CREDENTIAL, TOKEN],
) {
  for (const [where, text] of Object.entries(texts)) {
    for (const s of secrets) {
      for (const form of secretForms(s)) expect(text.includes(form), `${where} shows ${s}`).toBe(false);
    }
  }
}

function streams(r: Ran): Record<string, string> {
  return { stdout: r.stdout, stderr: r.stderr };
}

describe('redact (the one redaction function)', () => {
  it('hides URL user information, keeping scheme, host and path', () => {
    expect(redact(`pulling oci://builder:${PASSWORD}@registry.example:5000/team/win11:v1`)).toBe(
      'pulling oci://***@registry.example:5000/team/win11:v1',
    );
    expect(redact(`https://tok3n-only@host/x`)).toBe('https://***@host/x');
    // a raw @ in the password: everything up to the last @ of the authority is user information
    expect(redact('s3://key:pa@ss@bucket/x')).toBe('s3://***@bucket/x');
    expect(redact('see https://host/path@v1')).toBe('see https://host/path@v1');
  });

  it('hides signature, credential and token query parameters', () => {
    const out = redact(presigned('127.0.0.1:9000') + '&sig=abc123&access_token=zz9&Signature=QQQ');
    for (const s of [SIGNATURE, CREDENTIAL, TOKEN, 'abc123', 'zz9', 'QQQ']) expect(out).not.toContain(s);
    expect(out).toContain('X-Amz-Signature=***');
    expect(out).toContain('X-Amz-Date=20260101T000000Z');
    expect(out).toContain('http://127.0.0.1:9000/bucket/disk.raw?');
  });

  it('hides Authorization and token headers', () => {
    expect(redact('Authorization: Basic dXNlcjpwYXNz')).toBe('Authorization: Basic ***');
    expect(redact('authorization: Bearer eyJhbGciOi.J9.xx')).toBe('authorization: Bearer ***');
    expect(redact('{"Authorization":"AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ab"}')).not.toContain(
      'AKIA',
    );
    expect(redact('PRIVATE-TOKEN: glpat-abcdefghij')).toBe('PRIVATE-TOKEN: ***');
    expect(redact('header Bearer abcdefgh12345678')).toBe('header Bearer ***');
    expect(redact('curl -H "Authorization: Bearer $TOKEN" URL')).toBe(
      'curl -H "Authorization: Bearer $TOKEN" URL',
    );
  });

  it('masks a registered secret in plain, URL-encoded, base64, UTF-16LE and base64-of-UTF-16LE forms', () => {
    const secret = 'P@ss w0rd/Ünïcode';
    mask(secret);
    const forms = [
      secret,
      encodeURIComponent(secret),
      Buffer.from(secret).toString('base64'),
      Buffer.from(secret, 'utf16le').toString('latin1'),
      Buffer.from(secret, 'utf16le').toString('base64'),
      // what an answer file holds (PlainText=false)
      encodeUnattendPassword(secret, 'Password'),
      encodeUnattendPassword(secret, 'AdministratorPassword'),
    ];
    for (const f of forms) expect(redact(`x ${f} y`)).toBe('x *** y');
  });

  it('maskUrlSecrets registers the password of a reference, so it is masked on its own too', () => {
    maskUrlSecrets('oci://u:Only-In-A-Ref-77@h/x:y');
    expect(redact('the password Only-In-A-Ref-77 alone')).toBe('the password *** alone');
    maskUrlSecrets('https://h/x?X-Amz-Signature=SigOnItsOwn99');
    expect(redact('SigOnItsOwn99')).toBe('***');
  });

  it('describeError redacts the message and the hint', () => {
    const err = new UsageError(`'oci://a:${PASSWORD}@Bad Host/x' is wrong`, `try oci://a:${PASSWORD}@good/x`);
    expect(describeError(err)).not.toContain(PASSWORD);
    expect(describeError(new Error(`GET ${presigned('h')} failed`))).not.toContain(SIGNATURE);
  });
});

describe('the CLI never prints a credential it was given', () => {
  it('usage error on a reference with user:password', async () => {
    const r = await orb(
      ['pull', `oci://builder:${PASSWORD}@Bad Host/x:v1`, '--output', join(dir, 'a.raw')],
      env(),
    );
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('oci://***@Bad Host/x:v1');
    expectClean(streams(r));
  });

  it('usage error on a pre-signed URL', async () => {
    const url = presigned('127.0.0.1:1').replace(/^http/, 'ftp');
    const r = await orb(['pull', url, '--output', join(dir, 'b.raw')], env());
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('X-Amz-Signature=***');
    expectClean(streams(r));
  });

  it('network error on a registry whose credentials come from the Docker config (connection refused)', async () => {
    // References carry no user information for registries: the password comes from config.json.
    const e = env();
    const auth = Buffer.from(`builder:${PASSWORD}`).toString('base64');
    writeFileSync(
      join(e.DOCKER_CONFIG, 'config.json'),
      JSON.stringify({ auths: { [`127.0.0.1:${closedPort}`]: { auth } } }),
    );
    const r = await orb(
      ['pull', `oci://127.0.0.1:${closedPort}/team/disk:v1`, '--output', join(dir, 'c.raw'), '--json'],
      { ...e, ORB_DEBUG: '1' },
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error:/);
    expectClean(streams(r));
    expect(r.stdout + r.stderr).not.toContain(auth);
  }, 120_000);

  it('network error on a pre-signed URL (connection refused)', async () => {
    const r = await orb(
      ['pull', presigned(`127.0.0.1:${closedPort}`), '--output', join(dir, 'd.raw')],
      env(),
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/error:/);
    expectClean(streams(r));
  }, 120_000);
});

describe('the action never writes a credential to its log, summary or outputs', () => {
  for (const [what, ref] of [
    [
      'registry reference with user:password',
      () => `oci://builder:${PASSWORD}@127.0.0.1:${closedPort}/team/disk:v1`,
    ],
    ['pre-signed URL', () => presigned(`127.0.0.1:${closedPort}`)],
    ['malformed reference with user:password', () => `oci://builder:${PASSWORD}@Bad Host/x:v1`],
  ] as const) {
    it(`pull: ${what}`, async () => {
      const files = { output: join(dir, `out-${what.length}`), summary: join(dir, `sum-${what.length}`) };
      writeFileSync(files.output, '');
      writeFileSync(files.summary, '');
      const r = await runNode('dist/pull/index.js', [], {
        ...env(),
        ...actionEnv({ ref: ref(), output: join(dir, 'e.raw') }, files),
      });
      expect(r.code).not.toBe(0);
      expect(r.stdout).toMatch(/::error::/);
      // The runner learns the secrets through ::add-mask:: (core.setSecret); nothing else may show them.
      const masks = r.stdout.split('\n').filter((l) => l.startsWith('::add-mask::'));
      expect(masks.length).toBeGreaterThan(0);
      const stdout = r.stdout
        .split('\n')
        .filter((l) => !l.startsWith('::add-mask::'))
        .join('\n');
      expectClean({
        stdout,
        stderr: r.stderr,
        output: readFileSync(files.output, 'utf8'),
        summary: readFileSync(files.summary, 'utf8'),
      });
    }, 120_000);
  }
});
