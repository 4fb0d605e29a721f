import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/log.js';
import '../../src/stores/schemes.js';
import { openStore } from '../../src/stores/open.js';
import { orb } from '../helpers/cli.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { smokeGuestDisk } from '../helpers/smoke-guests.js';
import { buildV2Layout, pushV2, type V2Image } from '../helpers/v2-images.js';

/**
 * `orb smoke-test --image oci://...` boots a published chunked image through orb serve: the
 * guest's reads fetch blocks from the registry (counted by a proxy) while it boots, and the boot
 * profile it records lists the blocks it read.
 */
let dir: string;
let reg: Registry;
let proxy: FaultProxy;
let image: V2Image;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'orb-serve-smoke-'));
  const raw = readFileSync(await smokeGuestDisk('smoke-rdp'));
  image = await buildV2Layout(raw, join(dir, 'layout'), 'v1', { packSize: 8 << 20 });
  reg = await startRegistry();
  proxy = await startFaultProxy(reg.url);
  const opened = await openStore(`oci://${reg.host}/smoke/guest:v1`, { log: silentLogger, options: {} });
  await pushV2(image, opened.store, 'v1');
  await opened.store.close?.();
}, 300_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('smoke-test through orb serve', () => {
  it('boots a registry image while fetching only what the boot reads', async () => {
    const tmp = join(dir, 'tmp');
    mkdirSync(tmp);
    const evidence = join(dir, 'ev');
    const from = proxy.log.length;
    const r = await orb(
      [
        'smoke-test',
        '--image',
        `oci://${proxy.host}/smoke/guest:v1`,
        '--accelerator',
        'tcg',
        '--memory',
        '256M',
        '--cpus',
        '1',
        '--shutdown-grace',
        '2',
        '--screenshot-interval',
        '5',
        '--timeout',
        '120',
        '--ports',
        '8006',
        '--evidence-dir',
        evidence,
        '--json',
      ],
      { TMPDIR: tmp },
      300_000,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({ passed: true, 'image-format': 'raw', protocol: 'rdp' });
    expect(r.stderr).toMatch(/booting .* through orb serve/);
    let ranged = 0;
    for (const e of proxy.log.slice(from)) {
      const m = /bytes=(\d+)-(\d+)/.exec(String(e.headers.range ?? ''));
      if (m) ranged += Number(m[2]) - Number(m[1]) + 1;
    }
    const fetched = out['bytes-fetched'] as number;
    expect(fetched).toBe(ranged);
    expect(fetched).toBeGreaterThan(0);
    expect(fetched).toBeLessThanOrEqual(image.packBytes);
    const profile = JSON.parse(readFileSync(out['boot-profile'] as string, 'utf8')) as {
      contentDigest: string;
      blocks: number[];
    };
    expect(profile.contentDigest).toBe(image.contentDigest);
    expect(profile.blocks.length).toBeGreaterThan(0);
    expect(profile.blocks[0]).toBe(0); // the boot sector first
    // the served cache and the overlay are gone; the evidence stays
    expect(readdirSync(tmp)).toEqual([]);
    expect(existsSync(join(evidence, 'serial.log'))).toBe(true);
    console.log(
      `smoke through serve: fetched ${fetched} of ${image.packBytes} pack bytes, ${profile.blocks.length} blocks read; ` +
        `RDP after ${String(out['seconds-to-rdp'])} s`,
    );
  }, 300_000);
});
