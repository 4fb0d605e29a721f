import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import type { Descriptor } from '../../src/formats/oci-media.js';
import { GITLAB_MAX_FILE, GitlabStore, parseGitlabRef, type GitlabOptions } from '../../src/stores/gitlab.js';
import { startFakeGitlab, type FakeGitlab } from '../helpers/fake-gitlab.js';

let gl: FakeGitlab;
let n = 0;

function blob(size: number): { data: Buffer; desc: Descriptor } {
  const data = randomBytes(size);
  return {
    data,
    desc: {
      mediaType: 'application/octet-stream',
      digest: 'sha256:' + createHash('sha256').update(data).digest('hex'),
      size,
    },
  };
}
const opener = (data: Buffer) => (offset: number) => Readable.from([data.subarray(offset)]);
async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}
function store(extra: Partial<GitlabOptions> = {}, version = `1.0.${++n}`): GitlabStore {
  return new GitlabStore(parseGitlabRef(`gitlab://${gl.project}/win11/${version}`), {
    api: gl.api,
    token: gl.tokens.private,
    log: silentLogger,
    ...extra,
  });
}

beforeAll(async () => {
  process.env.ORB_HTTP_BACKOFF_MS = '10';
  gl = await startFakeGitlab();
});
afterAll(async () => {
  await gl.close();
});
beforeEach(() => {
  for (const k of Object.keys(gl.knobs)) delete (gl.knobs as Record<string, unknown>)[k];
  gl.requests.length = 0;
});

describe('gitlab:// references', () => {
  it('parses project paths, package and version', () => {
    expect(parseGitlabRef('gitlab://group/sub/proj/win11/2026.05.1')).toEqual({
      project: 'group/sub/proj',
      pkg: 'win11',
      version: '2026.05.1',
    });
    expect(parseGitlabRef('gitlab://42/pkg/v1')).toEqual({ project: '42', pkg: 'pkg', version: 'v1' });
    expect(() => parseGitlabRef('gitlab://p/bad name/1')).toThrow(/package name/);
    expect(() => parseGitlabRef('gitlab://p/pkg/1..2/')).toThrow(/not a GitLab package reference/);
    expect(() => parseGitlabRef('gitlab://pkg/1')).toThrow();
  });
});

describe('GitLab generic package store (local API server)', () => {
  it('uploads one file per blob, checks the SHA-256 GitLab reports, skips what exists', async () => {
    const s = store();
    const { data, desc } = blob(300_000);
    expect(await s.statBlob(desc.digest)).toBeUndefined();
    let sent = 0;
    await s.putBlob(desc, opener(data), (b) => (sent += b));
    expect(sent).toBe(desc.size);
    expect(gl.files.some((f) => f.file_name === `sha256-${desc.digest.slice(7)}`)).toBe(true);
    // a fresh store (a rerun) finds it through the packages API
    const again = new GitlabStore(s.ref, { api: gl.api, token: gl.tokens.private, log: silentLogger });
    expect(await again.statBlob(desc.digest)).toBe(desc.size);
    expect((await readAll((await again.getBlob(desc)).stream)).equals(data)).toBe(true);
    const tail = await again.getBlob(desc, 1000);
    expect(tail.offset).toBe(1000);
    expect((await readAll(tail.stream)).equals(data.subarray(1000))).toBe(true);
    expect(gl.requests.every((r) => r.auth === 'private')).toBe(true);
  });

  it('serializes uploads until the package exists (concurrent creation races to 500)', async () => {
    gl.knobs.raceOnCreate = true;
    const s = store();
    const blobs = [blob(2_000_000), blob(2_000_000), blob(2_000_000), blob(2_000_000)];
    await Promise.all(blobs.map((b) => s.putBlob(b.desc, opener(b.data))));
    const puts = gl.requests.filter((r) => r.method === 'PUT');
    expect(puts).toHaveLength(4); // none answered 500 and retried
  });

  it('works with a CI job token that may not list packages', async () => {
    gl.knobs.jobTokenCannotList = true;
    const s = store({ token: undefined, jobToken: gl.tokens.job });
    const { data, desc } = blob(5000);
    await s.putBlob(desc, opener(data));
    const fresh = new GitlabStore(s.ref, { api: gl.api, jobToken: gl.tokens.job, log: silentLogger });
    expect(await fresh.statBlob(desc.digest)).toBe(5000);
    expect(await fresh.statBlob('sha256:' + 'c'.repeat(64))).toBeUndefined();
    expect(gl.requests.every((r) => r.auth === 'job')).toBe(true);
  });

  it('sends deploy tokens as Deploy-Token', async () => {
    const s = store({ token: gl.tokens.deploy });
    const { data, desc } = blob(1000);
    await s.putBlob(desc, opener(data));
    expect(gl.requests.at(-1)!.auth).toBe('deploy');
  });

  it('never forwards the token to the object storage a download is redirected to', async () => {
    const s = store();
    const { data, desc } = blob(70 * 1024 * 1024 + 17);
    await s.putBlob(desc, opener(data));
    gl.knobs.redirectDownloads = true;
    const got = await readAll((await s.getBlob(desc)).stream);
    expect(got.equals(data)).toBe(true);
    expect(gl.leakedAuth).toEqual([]);
  });

  it('deletes a file whose stored SHA-256 differs and fails with an integrity error', async () => {
    const s = store();
    const { data, desc } = blob(4000);
    gl.knobs.corrupt = () => true;
    await expect(s.putBlob(desc, opener(data))).rejects.toThrow(/GitLab stored sha256:[a-f0-9]+ .* expected/);
    expect(gl.files.some((f) => f.file_name === `sha256-${desc.digest.slice(7)}`)).toBe(false);
  });

  it('retries an upload after 5xx and connection resets', async () => {
    const s = store();
    const { data, desc } = blob(100_000);
    let calls = 0;
    gl.knobs.failUpload = () => (++calls === 1 ? 503 : calls === 2 ? 'reset' : undefined);
    let sent = 0;
    await s.putBlob(desc, opener(data), (b) => (sent += b));
    expect(calls).toBe(3);
    expect(sent).toBe(desc.size);
  });

  it('refuses files over the 5 GB per-file limit before sending anything', async () => {
    const s = store();
    const big: Descriptor = { mediaType: 'x', digest: 'sha256:' + 'd'.repeat(64), size: GITLAB_MAX_FILE + 1 };
    await expect(s.putBlob(big, opener(Buffer.alloc(0)))).rejects.toThrow(/5 GB per-file limit/);
    expect(gl.requests.filter((r) => r.method === 'PUT')).toHaveLength(0);
  });

  it('publishes manifest.json as the version and reads it back by version or digest', async () => {
    const s = store();
    const m1 = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        layers: [],
        n: 1,
      }),
    );
    const d1 = await s.putManifest(m1, 'application/vnd.oci.image.manifest.v1+json', [s.ref.version]);
    expect((await s.getManifest(s.ref.version)).bytes.equals(m1)).toBe(true);
    expect((await s.getManifest(d1)).digest).toBe(d1);
    // republishing the version moves it (GitLab serves the newest file of a name)
    const m2 = Buffer.from(m1.toString().replace('"n":1', '"n":2'));
    const d2 = await s.putManifest(m2, 'application/vnd.oci.image.manifest.v1+json', [s.ref.version]);
    expect((await s.getManifest(s.ref.version)).digest).toBe(d2);
    // pinned by digest, the first manifest is still there
    expect((await s.getManifest(d1)).bytes.equals(m1)).toBe(true);
    expect(parseGitlabRef(`${s.describe()}@${d1}`).digest).toBe(d1);
    expect(s.publishedOutputs()['package-url']).toMatch(/\/group\/images\/-\/packages\/\d+$/);
    await expect(s.putManifest(m1, 'x', ['other'])).rejects.toThrow(/addressed by version/);
  });

  it('reports bad credentials with a hint', async () => {
    const s = store({ token: 'glpat-wrong' });
    const err = await s.statBlob('sha256:' + 'e'.repeat(64)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(String(err)).toMatch(/401/);
    expect((err as { hint?: string }).hint).toMatch(/token/);
  });
});

describe('GitLab publish and pull (engines)', () => {
  it('round-trips a chunked image and a re-publish uploads nothing', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { publish } = await import('../../src/transfer/publish.js');
    const { pull } = await import('../../src/transfer/pull.js');
    const { sha256File } = await import('../../src/core/fsutil.js');
    const { nullProgress } = await import('../../src/core/progress.js');
    const { buildLayout, makeDisk } = await import('../helpers/oci-images.js');
    const dir = mkdtempSync(join(tmpdir(), 'orb-gl-e2e-'));
    try {
      const sum = makeDisk(join(dir, 'd.raw'), { size: 12 << 20, chunkSize: 1 << 20 });
      const l = await buildLayout(join(dir, 'd.raw'), join(dir, 'layout'), 'v1', 1 << 20);
      const s = store();
      const progress = () => nullProgress;
      const r = await publish({
        source: l.dir,
        target: s,
        tags: [s.ref.version],
        concurrency: 4,
        partSize: 1 << 30,
        log: silentLogger,
        progress,
      });
      expect(r.reference).toBe(`gitlab://${gl.project}/win11/${s.ref.version}@${l.manifestDigest}`);
      const again = await publish({
        source: l.dir,
        target: store({}, s.ref.version),
        tags: [s.ref.version],
        concurrency: 4,
        partSize: 1 << 30,
        log: silentLogger,
        progress,
      });
      expect(again.bytesUploaded).toBe(0);
      gl.knobs.redirectDownloads = true;
      const out = join(dir, 'out.raw');
      await pull({
        source: store({}, s.ref.version),
        ref: s.ref.version,
        display: 'gl',
        output: out,
        format: 'raw',
        concurrency: 4,
        log: silentLogger,
        progress,
      });
      expect(await sha256File(out)).toBe(sum);
      // a whole-pack pull goes through the store's own client: no token reached object storage
      expect(gl.leakedAuth).toEqual([]);

      // the next version with one chunk changed, pulled with --base: the few frames it needs are
      // HTTP range reads of the package files, sent with HTTP Basic auth that never reaches
      // object storage either
      const sum2 = makeDisk(join(dir, 'd2.raw'), {
        size: 12 << 20,
        chunkSize: 1 << 20,
        seed: (i) => (i === 5 ? 777 : i + 1),
      });
      const l2 = await buildLayout(join(dir, 'd2.raw'), join(dir, 'layout2'), 'v2', 1 << 20);
      const s2 = store();
      await publish({
        source: l2.dir,
        target: s2,
        tags: [s2.ref.version],
        concurrency: 4,
        partSize: 1 << 30,
        log: silentLogger,
        progress,
      });
      const before = gl.requests.length;
      const out2 = join(dir, 'out2.raw');
      const p2 = await pull({
        source: store({}, s2.ref.version),
        ref: s2.ref.version,
        display: 'gl',
        output: out2,
        base: out,
        format: 'raw',
        concurrency: 4,
        log: silentLogger,
        progress,
      });
      expect(await sha256File(out2)).toBe(sum2);
      expect(p2.ranges).toBeGreaterThan(0);
      expect(gl.requests.slice(before).some((r) => r.auth === 'basic')).toBe(true);
      expect(gl.leakedAuth).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
