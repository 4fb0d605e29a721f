import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { BLOCK_SIZE } from '../../src/formats/disk-index.js';
import {
  checkRegistryLimits,
  partSizeForProfile,
  profileForHost,
  REGISTRY_PROFILES,
  resolveProfile,
} from '../../src/stores/registry-limits.js';
import { orb } from '../helpers/cli.js';
import { buildLayout, makeDisk } from '../helpers/oci-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

const warned: string[] = [];
const log: Logger = { ...silentLogger, warn: (m) => warned.push(m) };
const layers = (n: number, size = 1000) => Array.from({ length: n }, () => ({ size }));

describe('registry limits (unit)', () => {
  it('knows the profile from the registry host', () => {
    expect(profileForHost('ghcr.io')).toBe('ghcr');
    expect(profileForHost('123456789012.dkr.ecr.eu-west-1.amazonaws.com')).toBe('ecr');
    expect(profileForHost('123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn')).toBe('ecr');
    expect(profileForHost('public.ecr.aws')).toBe('ecr-public');
    expect(profileForHost('registry.gitlab.com')).toBe('gitlab');
    expect(profileForHost('docker.io')).toBe('dockerhub');
    expect(profileForHost('registry-1.docker.io:443')).toBe('dockerhub');
    expect(profileForHost('quay.io')).toBe('quay');
    expect(profileForHost('harbor.example.internal')).toBeUndefined();
    expect(profileForHost('127.0.0.1:5000')).toBeUndefined();
  });

  it('resolves --registry-profile: auto from an oci:// target, a name for any host, none', () => {
    expect(resolveProfile('auto', 'oci://ghcr.io/o/r:t')).toBe(REGISTRY_PROFILES.ghcr);
    expect(resolveProfile('auto', 'oci://127.0.0.1:5000/r:t')).toBeUndefined();
    expect(resolveProfile('auto', 's3://bucket/x')).toBeUndefined();
    expect(resolveProfile('harbor', 'oci://harbor.corp/p/r:t')).toBe(REGISTRY_PROFILES.harbor);
    expect(resolveProfile('none', 'oci://ghcr.io/o/r:t')).toBeUndefined();
    expect(() => resolveProfile('artifactory', 'oci://x/y:z')).toThrow(/unknown registry profile/);
  });

  it('refuses too many layers for ECR with the pack size to convert with', () => {
    const shape = { describe: 'disk', layers: layers(1200), manifestBytes: 300_000, singleFile: false };
    expect(() => checkRegistryLimits(REGISTRY_PROFILES.ecr, shape, log)).toThrow(
      /1200 layers; Amazon ECR accepts at most 500/,
    );
    try {
      checkRegistryLimits(REGISTRY_PROFILES.ecr, shape, log);
    } catch (e) {
      expect((e as { hint?: string }).hint).toMatch(/--pack-size at least 3x larger.*nothing was uploaded/);
    }
    expect(() =>
      checkRegistryLimits(REGISTRY_PROFILES.ecr, { ...shape, layers: layers(500) }, log),
    ).not.toThrow();
    // GHCR documents no layer count: the same image is fine there
    expect(() => checkRegistryLimits(REGISTRY_PROFILES.ghcr, shape, log)).not.toThrow();
  });

  it('refuses a layer over the layer size, a manifest over 4 MiB', () => {
    const big = { describe: 'f', layers: layers(1, 11e9), manifestBytes: 500, singleFile: true };
    expect(() => checkRegistryLimits(REGISTRY_PROFILES.ghcr, big, log)).toThrow(
      /accepts at most 10\.0 GB|at most 9\.3 GiB/,
    );
    const fat = { describe: 'd', layers: layers(10), manifestBytes: 5 << 20, singleFile: false };
    expect(() => checkRegistryLimits(REGISTRY_PROFILES.dockerhub, fat, log)).toThrow(/manifest of 5\.0 MiB/);
  });

  it('adapts the part size of a single file to the largest layer, and warns about upload time', () => {
    expect(partSizeForProfile(REGISTRY_PROFILES.ghcr, 16 * 2 ** 30, log)).toBeLessThanOrEqual(10e9);
    expect(partSizeForProfile(REGISTRY_PROFILES.ghcr, 1 << 30, log)).toBe(1 << 30);
    expect(partSizeForProfile(undefined, 16 * 2 ** 30, log)).toBe(16 * 2 ** 30);
    warned.length = 0;
    checkRegistryLimits(
      REGISTRY_PROFILES.ghcr,
      { describe: 'f', layers: layers(1, 9e9), manifestBytes: 500, singleFile: true },
      log,
    );
    expect(warned.join('\n')).toMatch(/10 minutes.*needs at least/);
  });
});

describe('orb publish --registry-profile ecr (local docker-registry)', () => {
  let reg: Registry;
  let dir: string;
  beforeAll(async () => {
    reg = await startRegistry();
    dir = mkdtempSync(join(tmpdir(), 'orb-limits-'));
    // 519 packs (one data block each, zero blocks between them) + the index: 520 layers, over
    // ECR's 500, small on disk
    makeDisk(join(dir, 'disk.raw'), {
      size: 519 * 2 * BLOCK_SIZE,
      chunkSize: BLOCK_SIZE,
      data: (i) => i % 2 === 0,
    });
    const built = await buildLayout(join(dir, 'disk.raw'), join(dir, 'layout'), 'v1', 1);
    expect(built.blobs - 1).toBe(520);
  });
  afterAll(async () => {
    await reg?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('refuses before uploading anything, and the same image goes up without the profile', async () => {
    const env = { DOCKER_CONFIG: dir };
    const r = await orb(
      [
        'publish',
        `oci-layout:${join(dir, 'layout')}:v1`,
        '--to',
        `oci://${reg.host}/limits/disk:v1`,
        '--registry-profile',
        'ecr',
      ],
      env,
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/520 layers; Amazon ECR accepts at most 500/);
    expect(r.stderr).toMatch(/--pack-size at least 2x larger/);
    // the registry's storage holds no blob and no repository: nothing was sent
    const blobs = join(reg.dir, 'data', 'docker', 'registry', 'v2');
    expect(existsSync(blobs) ? readdirSync(blobs) : []).toEqual([]);
    const ok = await orb(
      ['publish', `oci-layout:${join(dir, 'layout')}:v1`, '--to', `oci://${reg.host}/limits/disk:v1`],
      env,
    );
    expect(ok.code, ok.stderr).toBe(0);
    expect(readdirSync(join(blobs, 'blobs')).length).toBeGreaterThan(0);
  });
});
