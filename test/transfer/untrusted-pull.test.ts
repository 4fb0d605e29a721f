import { createServer, request as httpRequest, type Server } from 'node:http';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { OciLayout } from '../../src/oci/layout.js';
import {
  DISK_V2_ARTIFACT as DISK_ARTIFACT,
  DISK_V2_PACK,
  OCI_INDEX,
  OCI_MANIFEST,
  type ImageManifest,
} from '../../src/formats/oci-media.js';
import { RegistryStore } from '../../src/stores/registry.js';
import { RegistryClient } from '../../src/oci/registry.js';
import { publish } from '../../src/transfer/publish.js';
import { pull } from '../../src/transfer/pull.js';
import type { BlobStore } from '../../src/stores/store.js';
import { makeDisk } from '../helpers/oci-images.js';
import { writeV2Image } from '../helpers/v2-images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/**
 * Issue 13, finding 1: a manifest whose layer digest is a path (`sha256:x/../../…`), declared
 * large so a spool path would be taken, made `orb pull` create (from a registry:
 * overwrite) a file of the image's choosing, and put the digest into registry URLs. Guards that
 * such a pull fails with an error naming the field, creates or changes nothing outside the output
 * folder, and sends no request carrying the hostile digest.
 */
process.env.ORB_RETRY_BASE_MS = '20';
process.env.DOCKER_CONFIG = mkdtempSync(join(tmpdir(), 'orb-noauth-'));

const CHUNK = 64 << 10;
let root: string;
let reg: Registry;
let proxy: Server;
let proxyHost: string;
/** what the proxy serves instead of the registry's manifest for a tag */
const swapped = new Map<string, { body: string; type: string }>();
const requests: string[] = [];

/** Every file and folder under `dir`, relative, sorted. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      out.push(relative(dir, p) + (e.isDirectory() ? '/' : ''));
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

function hostileDigest(target: string): string {
  // from <out>.partial.d/ up to root, then into the victim folder
  return `sha256:x/../../../${relative(root, target)}`;
}

/** A v2 disk manifest whose pack (layers[1]) is named by a path. */
function hostileManifest(base: ImageManifest, digest: string): ImageManifest {
  return {
    ...base,
    layers: [base.layers[0]!, { mediaType: DISK_V2_PACK, digest, size: 100 << 20 }],
  };
}

async function expectRefused(store: BlobStore, ref: string, outDir: string, field: RegExp) {
  const victimDir = join(root, 'victim');
  const before = tree(root);
  const victimBytes = readFileSync(join(victimDir, 'existing'));
  const err = await pull({
    source: store,
    ref,
    display: ref,
    output: join(outDir, 'disk.raw'),
    format: 'raw',
    concurrency: 2,
    log: silentLogger,
    progress: () => nullProgress,
  }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OrbError);
  expect((err as OrbError).kind).toBe('input');
  expect((err as OrbError).message).toMatch(field);
  // the hostile value is quoted as a short prefix at most
  expect((err as OrbError).message).toMatch(/got "[^"]{0,33}" \(\d+ chars\)$/);
  // nothing created or changed outside the output folder (nor inside it: refused before any work)
  expect(tree(root)).toEqual(before);
  expect(readFileSync(join(victimDir, 'existing'))).toEqual(victimBytes);
  expect(existsSync(join(victimDir, 'planted'))).toBe(false);
}

let base: ImageManifest;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'orb-untrusted-'));
  mkdirSync(join(root, 'victim'));
  writeFileSync(join(root, 'victim', 'existing'), 'precious\n');
  mkdirSync(join(root, 'out'));
  makeDisk(join(root, 'disk.raw'), { size: CHUNK * 4, chunkSize: CHUNK });
  const built = await writeV2Image(join(root, 'disk.raw'), join(root, 'layout'), 'good');
  base = JSON.parse(
    (await new OciLayout(built.dir).readBytes(built.manifestDigest)).toString('utf8'),
  ) as ImageManifest;
  rmSync(join(root, 'disk.raw'));

  reg = await startRegistry();
  // a recording proxy in front of the real registry, that can swap a tag's manifest for another
  proxy = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const tag = /\/manifests\/([^/?]+)$/.exec(req.url ?? '')?.[1];
    const swap = tag ? swapped.get(tag) : undefined;
    if (swap) {
      res.writeHead(200, {
        'content-type': swap.type,
        'content-length': Buffer.byteLength(swap.body),
      });
      res.end(req.method === 'HEAD' ? undefined : swap.body);
      return;
    }
    const up = httpRequest(
      `${reg.url}${req.url}`,
      { method: req.method, headers: { ...req.headers, host: reg.host } },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((ok) => proxy.listen(0, '127.0.0.1', ok));
  proxyHost = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
}, 120_000);

afterAll(async () => {
  await new Promise((ok) => proxy?.close(ok));
  await reg?.stop();
  rmSync(root, { recursive: true, force: true });
});

function registryStore(repo: string): RegistryStore {
  return new RegistryStore(
    new RegistryClient({
      ref: { host: proxyHost, apiHost: proxyHost, repository: repo },
      credentials: null,
      log: silentLogger,
    }),
  );
}

describe('a layer digest that is a path', () => {
  it('from an oci-layout: refused naming the field, nothing written outside the output folder', async () => {
    const layout = new OciLayout(join(root, 'layout'));
    const digest = hostileDigest(join(root, 'victim', 'planted'));
    const m = await layout.putBytes(JSON.stringify(hostileManifest(base, digest)));
    await layout.tag(
      { mediaType: OCI_MANIFEST, digest: m.digest, size: m.size, artifactType: DISK_ARTIFACT },
      'evil',
    );
    await expectRefused(
      new LayoutStore(layout.dir),
      'evil',
      join(root, 'out'),
      /layers\[1\]\.digest is not a digest/,
    );
    // and one that would overwrite an existing file
    const d2 = hostileDigest(join(root, 'victim', 'existing'));
    const m2 = await layout.putBytes(JSON.stringify(hostileManifest(base, d2)));
    await layout.tag(
      { mediaType: OCI_MANIFEST, digest: m2.digest, size: m2.size, artifactType: DISK_ARTIFACT },
      'evil2',
    );
    await expectRefused(new LayoutStore(layout.dir), 'evil2', join(root, 'out'), /layers\[1\]\.digest/);
  });

  it('from a registry: refused, nothing written, no request carries the hostile digest', async () => {
    await publish({
      source: `oci-layout:${join(root, 'layout')}:good`,
      target: registryStore('untrusted/disk'),
      tags: ['good'],
      concurrency: 2,
      partSize: 1 << 30,
      log: silentLogger,
      progress: () => nullProgress,
    });
    const digest = hostileDigest(join(root, 'victim', 'existing'));
    swapped.set('evil', { body: JSON.stringify(hostileManifest(base, digest)), type: OCI_MANIFEST });
    requests.length = 0;
    await expectRefused(registryStore('untrusted/disk'), 'evil', join(root, 'out'), /layers\[1\]\.digest/);
    expect(requests.length).toBeGreaterThan(0);
    expect(requests.filter((r) => r.includes('..') || r.includes('sha256:x'))).toEqual([]);
    expect(requests.filter((r) => r.includes('/blobs/'))).toEqual([]);
  });

  it('from a registry index whose manifest digest is a path: no request follows it', async () => {
    const index = {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        {
          mediaType: OCI_MANIFEST,
          artifactType: DISK_ARTIFACT,
          digest: 'sha256:../../../../v2/other/manifests/latest',
          size: 100,
        },
      ],
    };
    swapped.set('evil-index', { body: JSON.stringify(index), type: OCI_INDEX });
    requests.length = 0;
    await expectRefused(
      registryStore('untrusted/disk'),
      'evil-index',
      join(root, 'out'),
      /index manifests\[0\]\.digest is not a digest/,
    );
    expect(requests.filter((r) => r.includes('..') || r.includes('other'))).toEqual([]);
  });

  it('a registry client refuses to put a malformed digest into a URL at all', async () => {
    const client = new RegistryClient({
      ref: { host: proxyHost, apiHost: proxyHost, repository: 'untrusted/disk' },
      credentials: null,
      log: silentLogger,
    });
    requests.length = 0;
    for (const bad of ['sha256:x/../../etc', 'sha256:' + 'A'.repeat(64), '../x', 'sha256:abc?x=1']) {
      await expect(client.headBlob(bad)).rejects.toMatchObject({ kind: 'input' });
      await expect(client.getBlob(bad, 1)).rejects.toMatchObject({ kind: 'input' });
    }
    await expect(client.getManifest('a/../../b')).rejects.toMatchObject({ kind: 'input' });
    expect(requests).toEqual([]);
  });
});

describe('a published qcow2 that names a host file', () => {
  it('is refused before qemu-img opens it, when pulled as raw or inspected', async () => {
    const { execFileSync } = await import('node:child_process');
    const { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } = await import('node:fs');
    const dir = mkdtempSync(join(tmpdir(), 'orb-hostile-qcow2-'));
    try {
      const secret = join(dir, 'host-secret');
      writeFileSync(secret, Buffer.alloc(1 << 20, 'HOST-SECRET-MARKER\n'));
      const img = join(dir, 'disk.qcow2');
      execFileSync('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-o',
        `data_file=${secret},data_file_raw=on`,
        img,
        '1M',
      ]);
      const target = join(dir, 'layout');
      await publish({
        source: img,
        target: new LayoutStore(target),
        tags: ['v1'],
        concurrency: 1,
        partSize: 1 << 30,
        log: silentLogger,
        progress: () => nullProgress,
      });
      const out = join(dir, 'out', 'pulled.raw');
      const err = await pull({
        source: new LayoutStore(target),
        ref: 'v1',
        display: 'layout',
        output: out,
        format: 'raw',
        concurrency: 1,
        log: silentLogger,
        progress: () => nullProgress,
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OrbError);
      expect((err as OrbError).message).toMatch(/host-secret|data file/);
      for (const f of readdirSync(join(dir, 'out')))
        expect(readFileSync(join(dir, 'out', f)).includes('HOST-SECRET-MARKER')).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
