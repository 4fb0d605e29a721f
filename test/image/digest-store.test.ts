import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../../src/stores/schemes.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { convertImage } from '../../src/image/convert.js';
import { readChunkedLayout } from '../../src/image/chunked/read.js';
import { localContentDigest, storeContentDigest } from '../../src/image/digest.js';
import { openStore } from '../../src/stores/open.js';
import { publish } from '../../src/transfer/publish.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { smallDisk } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * `orb digest` of a published image: the root of its index, and nothing but the manifest, the
 * config and the index travel (the proxy in front of the registry sees no pack GET).
 */
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));
writeFileSync(join(process.env.DOCKER_CONFIG, 'config.json'), '{"auths":{}}\n');

let reg: Registry;
let proxy: FaultProxy;
let dir: string;
let layout: string;
let root: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-digest-'));
  reg = await startRegistry();
  proxy = await startFaultProxy(reg.url);
  layout = join(dir, 'layout');
  const raw = smallDisk();
  root = (await localContentDigest(raw)).contentDigest;
  await convertImage({ input: raw, output: layout, format: 'chunked', packSize: 1 << 20 });
  const target = await openStore(`oci://${reg.host}/digest/disk:v1`, { log: silentLogger, options: {} });
  await publish({
    source: layout,
    target: target.store,
    tags: ['v1'],
    concurrency: 2,
    partSize: 1 << 30,
    log: silentLogger,
    progress: () => nullProgress,
  });
}, 180_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('orb digest of a reference', () => {
  it('prints the root of the index and downloads no pack', async () => {
    const img = await readChunkedLayout(layout);
    const from = proxy.log.length;
    const opened = await openStore(`oci://${proxy.host}/digest/disk:v1`, { log: silentLogger, options: {} });
    const d = await storeContentDigest(opened);
    expect(d).toMatchObject({ contentDigest: root, kind: 'store', readBytes: img.indexDescriptor.size });
    const gets = proxy.log
      .slice(from)
      .filter((e) => e.method === 'GET')
      .map((e) => e.url);
    for (const p of img.packs) expect(gets.some((u) => u.includes(p.digest))).toBe(false);
    expect(gets.some((u) => u.includes(img.indexDescriptor.digest))).toBe(true);
  });
});
