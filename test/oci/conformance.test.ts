import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { RegistryClient } from '../../src/oci/registry.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { publish } from '../../src/transfer/publish.js';
import { DISK_V2_CONFIG } from '../../src/formats/oci-media.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { buildLayout, makeDisk, type BuiltLayout } from '../helpers/oci-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * OCI 1.1 conformance of a published chunked (v2) disk, checked with the real tools of Debian 12
 * against a real registry (docker-registry on 127.0.0.1): skopeo copies it and prints its raw
 * manifest; skopeo inspect, podman, buildah and umoci refuse it as not a container image BEFORE
 * fetching any layer (the proxy in front of the registry sees no blob GET but the config's).
 * docs/chunked-format.md claims exactly what this file shows.
 */
const run = promisify(execFile);
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));
writeFileSync(join(process.env.DOCKER_CONFIG, 'config.json'), '{"auths":{}}\n');

let reg: Registry;
let proxy: FaultProxy;
let dir: string;
let layout: BuiltLayout;
const repo = 'conformance/disk';

function store(): RegistryStore {
  return new RegistryStore(
    new RegistryClient({
      ref: { host: reg.host, apiHost: reg.host, repository: repo },
      credentials: null,
      log: silentLogger,
    }),
    512 << 20,
  );
}

/** Runs a tool; its exit status and output, never a throw. */
async function tool(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await run(cmd, args, { timeout: 120_000, maxBuffer: 16 << 20 });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** Layer blob GETs the proxy saw since `from` (the config is not a layer). */
function layerGets(from: number): string[] {
  const layers = new Set(
    (
      JSON.parse(readFileSync(join(layout.dir, 'blobs/sha256', layout.manifestDigest.slice(7)), 'utf8')) as {
        layers: { digest: string }[];
      }
    ).layers.map((l) => l.digest),
  );
  return proxy.log
    .slice(from)
    .filter((e) => e.method === 'GET' && [...layers].some((d) => e.url.includes(d)))
    .map((e) => e.url);
}

beforeAll(async () => {
  reg = await startRegistry();
  proxy = await startFaultProxy(reg.url);
  dir = mkdtempSync(join(tmpdir(), 'orb-conformance-'));
  makeDisk(join(dir, 'disk.raw'), { size: 4 << 20, chunkSize: 1 << 20 });
  layout = await buildLayout(join(dir, 'disk.raw'), join(dir, 'layout'), 'v1', 1 << 20);
  await publish({
    source: layout.dir,
    target: store(),
    tags: ['v1'],
    concurrency: 2,
    partSize: 1 << 30,
    log: silentLogger,
    progress: () => nullProgress,
  });
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const viaProxy = () => `${proxy.host}/${repo}:v1`;

describe('a chunked v2 disk in a registry, seen by container tools', () => {
  it('skopeo copies it with every digest kept and prints its raw manifest', async () => {
    const out = join(dir, 'copied');
    const c = await tool('skopeo', [
      'copy',
      '--src-tls-verify=false',
      `docker://${viaProxy()}`,
      `oci:${out}:v1`,
    ]);
    expect(c.code, c.out).toBe(0);
    const raw = await tool('skopeo', ['inspect', '--raw', `oci:${out}:v1`]);
    const original = readFileSync(join(layout.dir, 'blobs/sha256', layout.manifestDigest.slice(7)), 'utf8');
    expect(raw.out.trim()).toBe(original.trim());
    const remote = await tool('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${viaProxy()}`]);
    expect(remote.out.trim()).toBe(original.trim());
  });

  it('skopeo inspect refuses it as an artifact, reading no layer', async () => {
    const from = proxy.log.length;
    const r = await tool('skopeo', ['inspect', '--tls-verify=false', `docker://${viaProxy()}`]);
    expect(r.code).not.toBe(0);
    expect(r.out).toContain(DISK_V2_CONFIG);
    expect(layerGets(from)).toEqual([]);
  });

  it('podman and buildah refuse to pull it before fetching any layer', async () => {
    // their own storage in the test's folder: the machine's container store is not touched
    const storage = (t: string) => [
      '--root',
      join(dir, `${t}-root`),
      '--runroot',
      join(dir, `${t}-run`),
      '--storage-driver',
      'vfs',
    ];
    for (const cmd of [
      ['podman', ...storage('podman'), 'pull', '--tls-verify=false', `docker://${viaProxy()}`],
      ['buildah', ...storage('buildah'), 'pull', '--tls-verify=false', `docker://${viaProxy()}`],
    ]) {
      const from = proxy.log.length;
      const r = await tool(cmd[0]!, cmd.slice(1));
      expect(r.code, r.out).not.toBe(0);
      expect(r.out).toMatch(/unsupported image-specific operation on artifact/);
      expect(layerGets(from)).toEqual([]);
    }
  });

  it('umoci refuses to unpack it: the config is not an image config', async () => {
    const r = await tool('umoci', ['unpack', '--image', `${layout.dir}:v1`, join(dir, 'bundle')]);
    expect(r.out).toMatch(/config blob is not correct mediatype/);
  });
});
