import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../../src/core/log.js';
import {
  BOOT_PROFILE_ARTIFACT,
  decodeBootProfile,
  encodeBootProfile,
} from '../../src/formats/boot-profile.js';
import { attachBootProfile, findBootProfile, loadBootProfile } from '../../src/serve/boot-profile.js';
import { openStore } from '../../src/stores/open.js';
import '../../src/stores/schemes.js';
import type { BlobStore } from '../../src/stores/store.js';
import { orb } from '../helpers/cli.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { smokeGuestDisk } from '../helpers/smoke-guests.js';
import { buildV2Layout, pushV2, type V2Image } from '../helpers/v2-layout.js';

/**
 * smoke-test through the lazy export: a busybox guest published as a chunked v2 disk to a local
 * registry boots with only the blocks it reads fetched, records a boot profile, which orb
 * publish attaches as a referrer and a later boot prefetches; --full-pull still pulls first.
 * The guest disk carries 24 MiB of random bytes past its partition that no boot reads, so
 * "lazy" is visible in the bytes fetched.
 */
let dir: string;
let reg: Registry;
let image: V2Image;
let ref: string;
const common = ['--accelerator', 'tcg', '--memory', '256M', '--cpus', '1', '--shutdown-grace', '2'];
const common2 = ['--screenshot-interval', '5', '--timeout', '150', '--json'];

function memLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    info: (m) => lines.push(`info ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    error: (m) => lines.push(`error ${m}`),
    debug: () => {},
  };
}

async function store(r: string): Promise<BlobStore> {
  return (await openStore(r, { log: memLog(), options: {} })).store;
}

function tmp(name: string): string {
  const t = join(dir, name);
  mkdirSync(t, { recursive: true });
  return t;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-smoke-lazy-'));
  reg = await startRegistry();
  const guest = readFileSync(await smokeGuestDisk('smoke-rdp'));
  const disk = Buffer.concat([guest, randomBytes(24 << 20)]);
  image = await buildV2Layout(disk, join(dir, 'layout'), 'v1', { packSize: 8 << 20 });
  ref = `oci://${reg.host}/lazy/guest:v1`;
  await pushV2(image, await store(ref), 'v1');
}, 300_000);

afterAll(async () => {
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('smoke-test through the lazy export', () => {
  let profilePath = '';

  it('boots a published chunked disk lazily: passes, fetches a part of it, records a boot profile', async () => {
    const t = tmp('tmp-lazy');
    const r = await orb(
      ['smoke-test', '--image', ref, ...common, ...common2, '--evidence-dir', join(dir, 'ev-lazy')],
      { TMPDIR: t },
      300_000,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, number | string | boolean>;
    expect(out).toMatchObject({ passed: true, lazy: true, protocol: 'rdp', firmware: 'bios' });
    const fetched = out['bytes-fetched'] as number;
    console.log(
      `lazy busybox boot: ${fetched} bytes fetched of ${image.packBytes} compressed (${((100 * fetched) / image.packBytes).toFixed(1)}%), ` +
        `RDP after ${out['seconds-to-rdp-total']} s from start`,
    );
    expect(fetched).toBeGreaterThan(0);
    expect(fetched).toBeLessThan(image.packBytes * 0.6);
    expect(fetched).toBeLessThan(image.index.virtualSize);
    expect(out['seconds-to-rdp-total']).toBeGreaterThanOrEqual(out['seconds-to-rdp'] as number);
    expect(r.stderr).toMatch(/booting oci:\/\/.* through orb serve/);
    profilePath = out['boot-profile'] as string;
    const profile = decodeBootProfile(readFileSync(profilePath), image.index);
    expect(profile.blocks.length).toBe(out['boot-profile-blocks']);
    expect(profile.blocks[0]).toBe(0); // the boot sector is read first
    // the work folder (cache, socket, overlay) is gone
    expect(readdirSync(t)).toEqual([]);
  }, 360_000);

  it('--full-pull takes the pull path; a published file (not a chunked disk) is pulled first and boots', async () => {
    // The v2 pull is built on another branch: whatever it answers today, --full-pull never serves lazily.
    const full = await orb(
      ['smoke-test', '--image', ref, '--full-pull', ...common, '--timeout', '5', '--json'],
      { TMPDIR: tmp('tmp-full') },
      300_000,
    );
    expect(full.stderr).toMatch(/pulling oci:\/\/.*lazy\/guest:v1 for the smoke test/);
    expect(full.stderr).not.toMatch(/through orb serve/);

    const qcow = join(dir, 'guest.qcow2');
    execFileSync('qemu-img', ['convert', '-O', 'qcow2', await smokeGuestDisk('smoke-rdp'), qcow]);
    const fileRef = `oci://${reg.host}/lazy/file:v1`;
    const pub = await orb(['publish', qcow, '--to', fileRef], {}, 120_000);
    expect(pub.code, pub.stderr).toBe(0);
    const t = tmp('tmp-file');
    const r = await orb(
      ['smoke-test', '--image', fileRef, ...common, ...common2, '--evidence-dir', join(dir, 'ev-file')],
      { TMPDIR: t },
      300_000,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, number | string | boolean>;
    expect(out).toMatchObject({ passed: true, lazy: false, 'boot-profile': '', 'image-format': 'qcow2' });
    expect(out['bytes-fetched']).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/is not a chunked v2 disk .*: pulling it first/);
    expect(readdirSync(t)).toEqual([]);
  }, 480_000);

  it('publish --boot-profile attaches it as a referrer; it is found again and the next lazy boot prefetches it', async () => {
    expect(profilePath).not.toBe('');
    const pub = await orb(
      ['publish', `oci-layout:${image.dir}:v1`, '--to', ref, '--boot-profile', profilePath, '--json'],
      {},
      120_000,
    );
    expect(pub.code, pub.stderr).toBe(0);
    const po = JSON.parse(pub.stdout) as Record<string, string>;
    expect(po.digest).toBe(image.manifestDigest);
    expect(po['boot-profile-digest']).toMatch(/^sha256:/);
    const s = await store(ref);
    const refs = await s.listReferrers!(image.manifestDigest, BOOT_PROFILE_ARTIFACT);
    expect(refs.map((d) => d.digest)).toContain(po['boot-profile-digest']);
    const blocks = await loadBootProfile(s, image.manifestDigest, image.index);
    expect(blocks).toEqual(decodeBootProfile(readFileSync(profilePath), image.index).blocks);

    const r = await orb(
      ['smoke-test', '--image', ref, ...common, ...common2, '--evidence-dir', join(dir, 'ev-profiled')],
      { TMPDIR: tmp('tmp-profiled') },
      300_000,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/boot profile sha256:.*: \d+ blocks the boot reads, fetched first/);
    expect(r.stderr).toMatch(/boot profile prefetched/);
    const out = JSON.parse(r.stdout) as Record<string, number>;
    console.log(
      `lazy busybox boot with its profile: ${out['bytes-fetched']} bytes, RDP after ${out['seconds-to-rdp-total']} s`,
    );
    expect(out['bytes-fetched']).toBeLessThan(image.packBytes * 0.6);
  }, 480_000);

  it('stores without referrers keep the profile under <tag>.boot-profile', async () => {
    const layout = await store(`oci-layout:${image.dir}:v1`);
    expect(layout.listReferrers).toBeUndefined();
    const blob = encodeBootProfile({ ...image.index, blocks: [0, 1, 2, 40] });
    const a = await attachBootProfile({
      store: layout,
      subject: image.manifestDigest,
      tag: 'v1',
      blob,
      display: 'layout',
      log: memLog(),
    });
    expect(a.via).toBe('tag v1.boot-profile');
    const found = await findBootProfile(layout, image.manifestDigest, image.index, { tag: 'v1' });
    expect(found?.blocks).toEqual([0, 1, 2, 40]);
    // no tag given, no referrers: nothing
    expect(await findBootProfile(layout, image.manifestDigest, image.index)).toBeUndefined();
  });

  it('refuses hostile profiles clearly: another disk, blocks out of range, oversize', async () => {
    const s = await store(ref);
    const other = { ...image.index, contentDigest: `orb2:sha256:${'00'.repeat(32)}` };
    const log = memLog();
    await expect(
      attachBootProfile({
        store: s,
        subject: image.manifestDigest,
        tag: 'v1',
        blob: encodeBootProfile({ ...other, blocks: [0] }),
        display: 'x',
        log,
      }),
    ).rejects.toThrow(/recorded on another disk/);
    const bad = join(dir, 'big.bin');
    writeFileSync(bad, Buffer.alloc(25 << 20));
    const pub = await orb(
      ['publish', `oci-layout:${image.dir}:v1`, '--to', ref, '--boot-profile', bad],
      {},
      120_000,
    );
    expect(pub.code).not.toBe(0);
    expect(pub.stderr).toMatch(/boot profile .*big\.bin: \d+ bytes \(at most \d+\)/);

    // A referrer that lies (blocks past the disk's end, put there by hand): ignored with a warning.
    const blocks = image.index.blockCount;
    const far = encodeBootProfile({
      ...image.index,
      virtualSize: image.index.virtualSize * 2,
      blocks: [blocks + 5],
    });
    far.writeBigUInt64LE(BigInt(image.index.virtualSize), 8);
    await attachRaw(s, far);
    const warn = memLog();
    expect(await loadBootProfile(s, image.manifestDigest, image.index, { log: warn })).toBeUndefined();
    expect(warn.lines.join('\n')).toMatch(/warn boot profile ignored: .* lies outside the disk's \d+ blocks/);
  });
});

/** Pushes a profile referrer without attachBootProfile's checks (as a hostile publisher could). */
async function attachRaw(s: BlobStore, blob: Buffer): Promise<void> {
  const { createHash } = await import('node:crypto');
  const { Readable } = await import('node:stream');
  const d = (b: Buffer, mediaType: string) => ({
    mediaType,
    digest: `sha256:${createHash('sha256').update(b).digest('hex')}`,
    size: b.length,
  });
  const layer = d(blob, BOOT_PROFILE_ARTIFACT);
  const cfg = d(Buffer.from('{}'), 'application/vnd.oci.empty.v1+json');
  await s.putBlob(layer, (o) => Readable.from([blob.subarray(o)]));
  await s.putBlob(cfg, (o) => Readable.from([Buffer.from('{}').subarray(o)]));
  const m = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    artifactType: BOOT_PROFILE_ARTIFACT,
    config: cfg,
    layers: [layer],
    subject: {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: image.manifestDigest,
      size: image.manifestBytes.length,
    },
    annotations: { 'org.opencontainers.image.created': '2099-01-01T00:00:00Z' },
  };
  await s.putManifest(Buffer.from(JSON.stringify(m)), m.mediaType, []);
}
