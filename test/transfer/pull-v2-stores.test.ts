import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { GithubReleaseStore, parseGithubRef } from '../../src/stores/github-release.js';
import { GitlabStore, parseGitlabRef } from '../../src/stores/gitlab.js';
import { parseS3Ref, S3Store } from '../../src/stores/s3.js';
import type { BlobStore } from '../../src/stores/store.js';
import { pull } from '../../src/transfer/pull.js';
import { pattern } from '../helpers/oci-images.js';
import { pushV2, writeV2Image, type V2Image } from '../helpers/v2-images.js';
import { startFakeGithub, type FakeGithub } from '../helpers/fake-github.js';
import { startFakeGitlab, type FakeGitlab } from '../helpers/fake-gitlab.js';
import { startS3rver, type S3Server } from '../helpers/s3rver.js';

/**
 * The v2 pull through every other store, each against its local server: S3 (s3rver), GitLab
 * generic packages and GitHub release assets (local API servers redirecting downloads to an
 * object-storage origin). The engine has no per-store code: a fresh pull is byte-identical and an
 * update with --base fetches only the new pack's frames, by Range.
 */
process.env.ORB_RETRY_BASE_MS = '10';

const B = 32 << 10;
const BLOCKS = 160;
let dir: string;
let v1: V2Image;
let v2: V2Image;
let sum1: string;
let sum2: string;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function disk(path: string, changed: Set<number>): string {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, BLOCKS * B);
  for (let i = 0; i < BLOCKS; i++)
    if (i % 4 !== 3) writeSync(fd, pattern(changed.has(i) ? 9000 + i : i + 1, B, true), 0, B, i * B);
  closeSync(fd);
  return sha(readFileSync(path));
}

const CHANGED = new Set([5, 6, 90]);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-pv2s-'));
  sum1 = disk(join(dir, 'v1.raw'), new Set());
  sum2 = disk(join(dir, 'v2.raw'), CHANGED);
  v1 = await writeV2Image(join(dir, 'v1.raw'), join(dir, 'L'), 'v1', { packSize: 768 << 10 });
  v2 = await writeV2Image(join(dir, 'v2.raw'), join(dir, 'L'), 'v2', { packSize: 768 << 10, base: v1 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function roundTrip(name: string, store: (tag: string) => BlobStore): Promise<void> {
  await pushV2(v1, store('1'), '1');
  await pushV2(v2, store('2'), '2');
  const common = { format: 'raw' as const, concurrency: 3, log: silentLogger, progress: () => nullProgress };
  const out1 = join(dir, `${name}-1.raw`);
  const r1 = await pull({ ...common, source: store('1'), ref: '1', display: name, output: out1 });
  expect(sha(readFileSync(out1))).toBe(sum1);
  expect(r1.contentDigest).toBe(v1.index.contentDigest);
  const out2 = join(dir, `${name}-2.raw`);
  const r2 = await pull({ ...common, source: store('2'), ref: '2', display: name, output: out2, base: out1 });
  expect(sha(readFileSync(out2))).toBe(sum2);
  expect(r2.chunksDownloaded).toBe(CHANGED.size);
  expect(r2.bytesDownloaded).toBeLessThanOrEqual(v2.packs.at(-1)!.size);
  // and back: v1 over the v2 disk needs a few frames of the old packs, by Range
  const out3 = join(dir, `${name}-3.raw`);
  const r3 = await pull({ ...common, source: store('1'), ref: '1', display: name, output: out3, base: out2 });
  expect(sha(readFileSync(out3))).toBe(sum1);
  expect(r3.ranges).toBeGreaterThan(0);
  expect(r3.wholePacks).toBe(0);
}

describe('v2 pull from S3 (s3rver)', () => {
  let s3: S3Server;
  beforeAll(async () => {
    process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
    process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
    s3 = await startS3rver();
  });
  afterAll(async () => {
    await s3?.close();
  });
  it('fresh, update with --base, and back by Range', async () => {
    await roundTrip(
      's3',
      (tag) =>
        new S3Store(parseS3Ref(`s3://${s3.bucket}/img:${tag}`), {
          endpoint: s3.endpoint,
          pathStyle: true,
          log: silentLogger,
        }),
    );
  });
});

describe('v2 pull from GitLab generic packages (redirects to storage)', () => {
  let gl: FakeGitlab;
  beforeAll(async () => {
    gl = await startFakeGitlab();
  });
  afterAll(async () => {
    await gl?.close();
  });
  it('fresh, update with --base, and back by Range; no token leaves for storage', async () => {
    gl.knobs.redirectDownloads = true;
    await roundTrip(
      'gitlab',
      (tag) =>
        new GitlabStore(parseGitlabRef(`gitlab://${gl.project}/img/${tag}`), {
          api: gl.api,
          token: gl.tokens.private,
          log: silentLogger,
        }),
    );
    expect(gl.leakedAuth).toEqual([]);
  });
});

describe('v2 pull from GitHub release assets (redirects to storage)', () => {
  let gh: FakeGithub;
  beforeAll(async () => {
    gh = await startFakeGithub();
  });
  afterAll(async () => {
    await gh?.close();
  });
  it('fresh, update with --base, and back by Range; no token leaves for storage', async () => {
    await roundTrip(
      'github',
      (tag) =>
        new GithubReleaseStore(parseGithubRef(`github-release://${gh.owner}/${gh.repo}/${tag}`), {
          api: gh.api,
          token: gh.token,
          log: silentLogger,
        }),
    );
    expect(gh.leakedAuth).toBe(0);
  });
});
