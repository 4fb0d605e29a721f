import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import type { Descriptor } from '../../src/formats/oci-media.js';
import {
  GITHUB_MAX_ASSET,
  GithubReleaseStore,
  mergeNotes,
  parseGithubRef,
  type GithubOptions,
} from '../../src/stores/github-release.js';
import { startFakeGithub, type FakeGithub } from '../helpers/fake-github.js';

let gh: FakeGithub;
let n = 0;

function blob(size: number): { data: Buffer; desc: Descriptor } {
  const data = randomBytes(size);
  return {
    data,
    desc: {
      mediaType: 'application/vnd.orb.disk.chunk.v1.zstd',
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
function store(extra: Partial<GithubOptions> = {}, tag = `v1.${++n}`): GithubReleaseStore {
  return new GithubReleaseStore(parseGithubRef(`github-release://${gh.owner}/${gh.repo}/${tag}`), {
    api: gh.api,
    token: gh.token,
    log: silentLogger,
    ...extra,
  });
}

beforeAll(async () => {
  process.env.ORB_HTTP_BACKOFF_MS = '10';
  gh = await startFakeGithub();
});
afterAll(async () => {
  await gh.close();
});
beforeEach(() => {
  for (const k of Object.keys(gh.knobs)) delete (gh.knobs as Record<string, unknown>)[k];
  gh.requests.length = 0;
});

describe('github-release:// references and notes', () => {
  it('parses owner, repo, tag and a pinned digest', () => {
    expect(parseGithubRef('github-release://octo/images/win11-2026.05')).toEqual({
      owner: 'octo',
      repo: 'images',
      tag: 'win11-2026.05',
    });
    const d = 'sha256:' + 'a'.repeat(64);
    expect(parseGithubRef(`github-release://o/r/v1@${d}`)).toEqual({
      owner: 'o',
      repo: 'r',
      tag: 'v1',
      digest: d,
    });
    expect(() => parseGithubRef('github-release://o/r')).toThrow(/not a GitHub release reference/);
    expect(() => parseGithubRef('github-release://o/r/bad..tag')).toThrow(/not a valid git tag/);
  });
  it('keeps what people wrote around the orb section of the notes', () => {
    const ours = '<!-- orb:begin -->\nnew\n<!-- orb:end -->';
    expect(mergeNotes('intro\n<!-- orb:begin -->\nold\n<!-- orb:end -->\noutro', ours)).toBe(
      `intro\n${ours}\noutro`,
    );
    expect(mergeNotes('hand-written', ours)).toBe(`hand-written\n\n${ours}`);
  });
});

describe('GitHub release store (local API server)', () => {
  it('creates the release, uploads blobs as assets to upload_url and verifies their digest', async () => {
    const s = store();
    const { data, desc } = blob(200_000);
    expect(await s.statBlob(desc.digest)).toBeUndefined();
    let sent = 0;
    await s.putBlob(desc, opener(data), (b) => (sent += b));
    expect(sent).toBe(desc.size);
    const rel = gh.releases.find((r) => r.tag_name === s.ref.tag)!;
    expect(rel.assets.map((a) => a.name)).toEqual([`sha256-${desc.digest.slice(7)}`]);
    expect(gh.requests.some((r) => r.host === 'uploads' && r.method === 'POST')).toBe(true);
    const fresh = store({}, s.ref.tag);
    expect(await fresh.statBlob(desc.digest)).toBe(desc.size);
    expect((await readAll((await fresh.getBlob(desc)).stream)).equals(data)).toBe(true);
    // the token went to the API, never to the storage the download was redirected to
    expect(gh.leakedAuth).toBe(0);
    expect(gh.requests.some((r) => r.host === 'storage')).toBe(true);
  });

  it('downloads big assets over parallel ranges and resumes from an offset', async () => {
    const s = store();
    const { data, desc } = blob(70 * 1024 * 1024 + 3);
    await s.putBlob(desc, opener(data));
    gh.requests.length = 0;
    const got = await readAll((await s.getBlob(desc)).stream);
    expect(got.equals(data)).toBe(true);
    expect(gh.requests.filter((r) => r.host === 'storage').length).toBeGreaterThanOrEqual(8);
    const tail = await s.getBlob(desc, 50_000_000);
    expect((await readAll(tail.stream)).equals(data.subarray(50_000_000))).toBe(true);
  });

  it('cleans up a broken ("starter") upload and retries', async () => {
    const s = store();
    const { data, desc } = blob(50_000);
    let calls = 0;
    gh.knobs.failUpload = () => (++calls === 1 ? 502 : calls === 2 ? 'reset' : undefined);
    await s.putBlob(desc, opener(data));
    const rel = gh.releases.find((r) => r.tag_name === s.ref.tag)!;
    expect(rel.assets.map((a) => [a.name, a.state])).toEqual([
      [`sha256-${desc.digest.slice(7)}`, 'uploaded'],
    ]);
    expect(calls).toBe(3);
  });

  it('deletes an asset GitHub stored with another digest', async () => {
    const s = store();
    const { data, desc } = blob(3000);
    gh.knobs.corrupt = () => true;
    await expect(s.putBlob(desc, opener(data))).rejects.toThrow(/GitHub stored sha256:/);
    expect(gh.releases.find((r) => r.tag_name === s.ref.tag)!.assets).toHaveLength(0);
  });

  it('verifies locally when the server reports no asset digest (older GHES)', async () => {
    gh.knobs.noDigest = true;
    const s = store();
    const { data, desc } = blob(3000);
    await s.putBlob(desc, opener(data));
    expect(await s.statBlob(desc.digest)).toBe(3000);
  });

  it('refuses assets over 2 GiB before creating anything', async () => {
    const s = store();
    const big: Descriptor = {
      mediaType: 'x',
      digest: 'sha256:' + 'f'.repeat(64),
      size: GITHUB_MAX_ASSET + 1,
    };
    await expect(s.putBlob(big, opener(Buffer.alloc(0)))).rejects.toThrow(/2 GiB release asset limit/);
    expect(gh.requests.filter((r) => r.method === 'POST')).toHaveLength(0);
  });

  it('splits a single file into parts that fit an asset when the part size is larger', async () => {
    const { partSizeFor } = await import('../../src/commands/publish.js');
    const lines: string[] = [];
    const log = { ...silentLogger, info: (m: string) => lines.push(m) };
    const part = partSizeFor(store(), 8 * 1024 ** 3, log);
    expect(part).toBe(2047 * 1024 ** 2);
    expect(part).toBeLessThanOrEqual(GITHUB_MAX_ASSET);
    expect(lines.join('\n')).toMatch(/part size 8(\.0)? GiB exceeds/);
    expect(partSizeFor(store(), 100 << 20, log)).toBe(100 << 20);
  });

  it('refuses an image with more blobs than a release holds before uploading anything', async () => {
    const { BLOCK_SIZE } = await import('../../src/formats/disk-index.js');
    const { buildLayout, makeDisk } = await import('../helpers/oci-images.js');
    const { publish } = await import('../../src/transfer/publish.js');
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'orb-gh-many-'));
    try {
      // 999 packs (one frame each: a data block, then a zero block ends the run) + index + config
      const raw = join(dir, 'disk.raw');
      makeDisk(raw, { size: 999 * 2 * BLOCK_SIZE, chunkSize: BLOCK_SIZE, data: (i) => i % 2 === 0 });
      const built = await buildLayout(raw, join(dir, 'layout'), 'v1', 1);
      expect(built.blobs).toBe(1001);
      const err = await publish({
        source: `oci-layout:${join(dir, 'layout')}:v1`,
        target: store(),
        tags: ['v1'],
        concurrency: 2,
        partSize: 1 << 30,
        log: silentLogger,
        progress: () => nullProgress,
      }).catch((e: unknown) => e as Error);
      expect(String(err)).toMatch(/1001 blobs; .* holds at most 998/);
      expect((err as { hint?: string }).hint).toMatch(/--pack-size at least 2x larger/);
      expect(gh.requests.filter((r) => r.method === 'POST')).toHaveLength(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('publishes the manifest, writes release notes with digests and the pull command', async () => {
    const s = store();
    const layer = blob(1000);
    await s.putBlob(layer.desc, opener(layer.data));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: {
          mediaType: 'application/vnd.oci.empty.v1+json',
          digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
          size: 2,
        },
        layers: [layer.desc],
      }),
    );
    const digest = await s.putManifest(manifest, 'application/vnd.oci.image.manifest.v1+json', [s.ref.tag]);
    const rel = gh.releases.find((r) => r.tag_name === s.ref.tag)!;
    expect(rel.body).toContain(
      `orb pull github-release://${gh.owner}/${gh.repo}/${s.ref.tag} --output disk.img`,
    );
    expect(rel.body).toContain(digest);
    expect(rel.body).toContain(layer.desc.digest.slice(7));
    expect(s.publishedOutputs()['release-url']).toMatch(/\/releases\/tag\//);
    const fresh = store({}, s.ref.tag);
    expect((await fresh.getManifest(s.ref.tag)).digest).toBe(digest);
    expect((await fresh.getManifest(digest)).bytes.equals(manifest)).toBe(true);
    // republish the same tag: manifest.json is replaced, notes rewritten once (no duplicate section)
    const m2 = Buffer.from(
      manifest.toString().replace('"schemaVersion":2', '"schemaVersion":2,"annotations":{"x":"y"}'),
    );
    const d2 = await s.putManifest(m2, 'application/vnd.oci.image.manifest.v1+json', [s.ref.tag]);
    expect((await store({}, s.ref.tag).getManifest(s.ref.tag)).digest).toBe(d2);
    expect(rel.body.match(/orb:begin/g)).toHaveLength(1);
    await expect(s.putManifest(m2, 'x', ['latest'])).rejects.toThrow(/one tag/);
  });

  it('reads public releases anonymously and reports missing ones clearly', async () => {
    const s = store();
    const { data, desc } = blob(1234);
    await s.putBlob(desc, opener(data));
    const anon = store({ token: undefined }, s.ref.tag);
    expect((await readAll((await anon.getBlob(desc)).stream)).equals(data)).toBe(true);
    await expect(store({ token: undefined }, 'nope').getManifest('nope')).rejects.toThrow(/no release nope/);
    gh.knobs.private = true;
    const err = await store({ token: undefined }, s.ref.tag)
      .statBlob(desc.digest)
      .then(
        (v) => v,
        (e: unknown) => e,
      );
    // private repositories look empty without a token
    expect(err).toBeUndefined();
  });

  it('explains bad credentials', async () => {
    const s = store({ token: 'ghs_wrong' });
    const err = await s.putBlob(blob(10).desc, opener(Buffer.alloc(10))).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(String(err)).toMatch(/401/);
    expect((err as { hint?: string }).hint).toMatch(/GITHUB_TOKEN/);
  });
});

describe('GitHub release publish and pull (engines)', () => {
  it('round-trips a chunked image through release assets', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { publish } = await import('../../src/transfer/publish.js');
    const { pull } = await import('../../src/transfer/pull.js');
    const { sha256File } = await import('../../src/core/fsutil.js');
    const { nullProgress } = await import('../../src/core/progress.js');
    const { buildLayout, makeDisk } = await import('../helpers/oci-images.js');
    const dir = mkdtempSync(join(tmpdir(), 'orb-gh-e2e-'));
    try {
      const sum = makeDisk(join(dir, 'd.raw'), { size: 12 << 20, chunkSize: 1 << 20 });
      const l = await buildLayout(join(dir, 'd.raw'), join(dir, 'layout'), 'v1', 1 << 20);
      const s = store();
      const progress = () => nullProgress;
      const r = await publish({
        source: l.dir,
        target: s,
        tags: [s.ref.tag],
        concurrency: 4,
        partSize: 1 << 30,
        log: silentLogger,
        progress,
      });
      expect(r.reference).toBe(`github-release://${gh.owner}/${gh.repo}/${s.ref.tag}@${l.manifestDigest}`);
      const rel = gh.releases.find((x) => x.tag_name === s.ref.tag)!;
      expect(rel.assets.length).toBe(l.blobs + 2); // blobs, manifest by digest, manifest.json
      const out = join(dir, 'out.raw');
      const p = await pull({
        source: store({ token: undefined }, s.ref.tag),
        ref: s.ref.tag,
        display: 'gh',
        output: out,
        format: 'raw',
        concurrency: 4,
        log: silentLogger,
        progress,
      });
      expect(await sha256File(out)).toBe(sum);
      expect(p.digest).toBe(l.manifestDigest);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
