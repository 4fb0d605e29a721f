import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import { LayoutStore } from '../../src/stores/layout.js';
import { OciLayout } from '../../src/oci/layout.js';
import {
  ANN_CONTENT_DIGEST,
  ANN_FILE_FORMAT,
  ANN_PART_FILE,
  ANN_PART_INDEX,
  ANN_PART_OFFSET,
  ANN_TITLE,
  DISK_V1_ARTIFACT as DISK_ARTIFACT_V1,
  DISK_V2_ARTIFACT as DISK_ARTIFACT,
  EMPTY_CONFIG,
  FILE_ARTIFACT,
  FILE_PART,
  OCI_INDEX,
  OCI_MANIFEST,
} from '../../src/formats/oci-media.js';
import { pull } from '../../src/transfer/pull.js';
import { makeDisk, sha256 } from '../helpers/oci-images.js';
import { writeV2Image } from '../helpers/v2-images.js';

/**
 * Issue 13: every field a hostile manifest, image index, disk config (chunked format v2) or file
 * part annotation can carry,
 * mutated one at a time (wrong types, signs, zero, huge, NaN-ish strings, paths, missing fields,
 * very long strings). For each, a pull from an oci-layout must fail with an OrbError('input')
 * whose message names the field and quotes at most a short prefix of the value, nothing may be
 * written outside the output folder, and memory stays under the usual 512 MiB bound.
 */
type Json = Record<string, unknown>;
type Mutation = [what: string, field: RegExp, mutate: (m: Json, c: Json) => void];

const CHUNK = 32 << 10;
const LONG = 'x'.repeat(200_000);
let root: string;
let layout: OciLayout;
let disk: { manifest: Json; config: Json };
let file: { manifest: Json };
let n = 0;

const bad = {
  digests: [
    undefined,
    12,
    null,
    ['sha256:' + 'a'.repeat(64)],
    '',
    'sha256:x/../../../etc/passwd',
    '/etc/passwd',
    'sha256:' + 'A'.repeat(64),
    'sha256:' + 'a'.repeat(63),
    'sha256:' + 'a'.repeat(65),
    'md5:' + 'a'.repeat(32),
    'sha512:' + 'a'.repeat(128), // well-formed, but orb verifies sha256 only
    'sha256:' + 'a'.repeat(64) + '\n',
    LONG,
  ],
  sizes: [undefined, -1, 1.5, '12', null, Number.MAX_SAFE_INTEGER * 4, 1e300, {}],
  ints: [
    undefined,
    7,
    '-1',
    '1.5',
    '1e3',
    '0x10',
    ' 1',
    'NaN',
    'Infinity',
    '99999999999999999999',
    '../1',
    LONG,
  ],
};

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

function layer0(m: Json): Json {
  return (m.layers as Json[])[0]!;
}
function ann0(m: Json): Json {
  return layer0(m).annotations as Json;
}
function set(o: Json, k: string, v: unknown): void {
  if (v === undefined) delete o[k];
  else o[k] = v;
}

function layer1(m: Json): Json {
  return (m.layers as Json[])[1]!;
}

const diskMutations: Mutation[] = [
  ['manifest without config', /not an OCI image manifest/, (m) => delete m.config],
  ['config a string', /not an OCI image manifest/, (m) => (m.config = 'x')],
  ['layers missing', /not an OCI image manifest/, (m) => delete m.layers],
  ['layers an object', /not an OCI image manifest/, (m) => (m.layers = {})],
  ['layers empty', /layers\[0\] mediaType is not/, (m) => (m.layers = [])],
  ['layer null', /layers\[0\] is not a descriptor/, (m) => ((m.layers as unknown[])[0] = null)],
  ['layer a path', /layers\[1\] is not a descriptor/, (m) => ((m.layers as unknown[])[1] = '../../x')],
  ['artifactType a number', /artifactType|not an orb disk image/, (m) => (m.artifactType = 5)],
  ['artifactType long', /not an orb disk image/, (m) => (m.artifactType = LONG)],
  ['artifactType of format v1', /chunked format v1/, (m) => (m.artifactType = DISK_ARTIFACT_V1)],
  ['annotations a string', /manifest annotations/, (m) => (m.annotations = '../x')],
  ['annotation value a number', /manifest annotations\[/, (m) => (m.annotations = { a: 1 })],
  [
    'annotation content digest not a root',
    /dev\.orb\.content\.digest/,
    (m) => ((m.annotations as Json)[ANN_CONTENT_DIGEST] = 'sha256:' + 'a'.repeat(64)),
  ],
  ...bad.digests.map((d): Mutation => [
    `config digest ${String(d).slice(0, 20)}`,
    /config\.digest/,
    (m) => set(m.config as Json, 'digest', d),
  ]),
  ...bad.sizes.map((s): Mutation => [
    `config size ${String(s)}`,
    /config\.size/,
    (m) => set(m.config as Json, 'size', s),
  ]),
  ['config size huge', /config\.size is outside/, (m) => ((m.config as Json).size = 64 << 20)],
  [
    'config mediaType wrong',
    /config mediaType|not an orb disk image/,
    (m) => ((m.config as Json).mediaType = 'text/plain'),
  ],
  [
    'config mediaType a number',
    /config\.mediaType|not an orb disk image/,
    (m) => ((m.config as Json).mediaType = 3),
  ],
  ...bad.digests.map((d): Mutation => [
    `index digest ${String(d).slice(0, 20)}`,
    /layers\[0\]\.digest/,
    (m) => set(layer0(m), 'digest', d),
  ]),
  ...bad.sizes.map((s): Mutation => [
    `index size ${String(s)}`,
    /layers\[0\]\.size/,
    (m) => set(layer0(m), 'size', s),
  ]),
  ['index size above the limit', /index size is above/, (m) => (layer0(m).size = 400 << 20)],
  ['index mediaType wrong', /layers\[0\] mediaType is not/, (m) => (layer0(m).mediaType = 'x/../y')],
  ['index annotations a string', /layers\[0\]\.annotations/, (m) => (layer0(m).annotations = 'x')],
  ...bad.digests.map((d): Mutation => [
    `pack digest ${String(d).slice(0, 20)}`,
    /layers\[1\]\.digest/,
    (m) => set(layer1(m), 'digest', d),
  ]),
  ...bad.sizes.map((s): Mutation => [
    `pack size ${String(s)}`,
    /layers\[1\]\.size/,
    (m) => set(layer1(m), 'size', s),
  ]),
  ['pack size 0', /layers\[1\] size is not/, (m) => (layer1(m).size = 0)],
  ['pack mediaType wrong', /layers\[1\] mediaType is not/, (m) => (layer1(m).mediaType = 'x/../y')],
  ['pack listed twice', /lists pack .* twice/, (m) => (m.layers as Json[]).push(clone(layer1(m)))],
  ['pack missing from the manifest', /index/, (m) => (m.layers as Json[]).pop()],
  // the disk config
  [
    'config not JSON',
    /disk config is not JSON/,
    (_m, c) => ((c as { raw?: string }).raw = '{"schema": "orb-disk/v2", '),
  ],
  ['config an array', /disk config is not a JSON object/, (_m, c) => ((c as { raw?: string }).raw = '[1,2]')],
  ['schema missing', /disk config schema/, (_m, c) => delete c.schema],
  ['schema of format v1', /disk config schema/, (_m, c) => (c.schema = 'orb-disk/v1')],
  ['schema a path', /disk config schema/, (_m, c) => (c.schema = '../orb-disk/v2')],
  ...[undefined, 0, -1, 1.5, '1024', null, 513, 2 ** 44 + 512, 2 ** 60, 1e300, LONG].map((v): Mutation => [
    `virtualSize ${String(v).slice(0, 20)}`,
    /disk config virtualSize/,
    (_m, c) => set(c, 'virtualSize', v),
  ]),
  [
    "virtualSize not the index's",
    /index.*is for \d+ bytes|content digest/,
    (_m, c) => (c.virtualSize = (c.virtualSize as number) * 2),
  ],
  ...[undefined, 0, 65536, '32768', 1e12].map((v): Mutation => [
    `blockSize ${String(v)}`,
    /disk config blockSize/,
    (_m, c) => set(c, 'blockSize', v),
  ]),
  ...[...bad.digests, 'sha256:' + 'a'.repeat(64)].map((d): Mutation => [
    `contentDigest ${String(d).slice(0, 20)}`,
    /disk config contentDigest/,
    (_m, c) => set(c, 'contentDigest', d),
  ]),
  [
    'contentDigest another root',
    /content\.digest|content digest|contentDigest/,
    (_m, c) => (c.contentDigest = 'orb2:sha256:' + 'b'.repeat(64)),
  ],
  ...bad.digests.map((d): Mutation => [
    `config index ${String(d).slice(0, 20)}`,
    /disk config index/,
    (_m, c) => set(c, 'index', d),
  ]),
  [
    'config index another blob',
    /disk config index is not layers\[0\]/,
    (_m, c) => (c.index = 'sha256:' + 'c'.repeat(64)),
  ],
  ['level out of range', /disk config level/, (_m, c) => (c.level = 99)],
  ['build a string', /disk config build/, (_m, c) => (c.build = '../x')],
];

const fileMutations: Mutation[] = [
  [
    'part file a path',
    /dev\.orb\.part\.file names a directory/,
    (m) => (ann0(m)[ANN_PART_FILE] = '../../etc/cron.d/x'),
  ],
  [
    'part file absolute',
    /dev\.orb\.part\.file names a directory/,
    (m) => (ann0(m)[ANN_PART_FILE] = '/etc/passwd'),
  ],
  ['part file dot-dot', /dev\.orb\.part\.file names a directory/, (m) => (ann0(m)[ANN_PART_FILE] = '..')],
  [
    'part file with a newline',
    /dev\.orb\.part\.file contains control/,
    (m) => (ann0(m)[ANN_PART_FILE] = 'a\nb'),
  ],
  ['part file empty', /dev\.orb\.part\.file is not a file name/, (m) => (ann0(m)[ANN_PART_FILE] = '')],
  ['part file long', /dev\.orb\.part\.file is longer than 255/, (m) => (ann0(m)[ANN_PART_FILE] = LONG)],
  [
    'title a path',
    /org\.opencontainers\.image\.title names a directory/,
    (m) => {
      delete ann0(m)[ANN_PART_FILE];
      (m.annotations as Json)[ANN_TITLE] = 'a/../../b';
    },
  ],
  [
    'file format a path',
    /dev\.orb\.file\.format is not a format name/,
    (m) => ((m.annotations as Json)[ANN_FILE_FORMAT] = '../vmdk'),
  ],
  ...bad.digests.map((d): Mutation => [
    `content digest ${String(d).slice(0, 20)}`,
    /dev\.orb\.content\.digest/,
    (m) => set(m.annotations as Json, ANN_CONTENT_DIGEST, d),
  ]),
  ...bad.ints.map((v): Mutation => [
    `part index ${String(v).slice(0, 20)}`,
    /dev\.orb\.part\.index/,
    (m) => set(ann0(m), ANN_PART_INDEX, v),
  ]),
  ['part index past the last', /dev\.orb\.part\.index is outside/, (m) => (ann0(m)[ANN_PART_INDEX] = '1')],
  ...bad.ints.map((v): Mutation => [
    `part offset ${String(v).slice(0, 20)}`,
    /dev\.orb\.part\.offset/,
    (m) => set(ann0(m), ANN_PART_OFFSET, v),
  ]),
  ['part offset not contiguous', /parts are not contiguous/, (m) => (ann0(m)[ANN_PART_OFFSET] = '5')],
  ['part size 0', /layers\[0\] size is zero/, (m) => (layer0(m).size = 0)],
  ['part size above 64 TiB', /layers\[0\]\.size is outside/, (m) => (layer0(m).size = 2 ** 50)],
  ['part mediaType wrong', /layers\[0\] mediaType is not/, (m) => (layer0(m).mediaType = 'x')],
];

/** Every file and folder under `dir` except the output folder, relative, sorted. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (p === join(root, 'out')) continue;
      out.push(relative(dir, p) + (e.isDirectory() ? '/' : ''));
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

/** Writes a manifest into the layout under a fresh tag; returns the tag. */
async function put(m: Json): Promise<string> {
  const body = JSON.stringify(m);
  const d = await layout.putBytes(body);
  const tag = `t${n++}`;
  await layout.tag({ mediaType: OCI_MANIFEST, digest: d.digest, size: d.size }, tag);
  return tag;
}

async function expectRefused(tag: string, field: RegExp, what: string): Promise<void> {
  const before = tree(root);
  const err = await pull({
    source: new LayoutStore(layout.dir),
    ref: tag,
    display: tag,
    output: join(root, 'out', `${tag}.raw`),
    format: 'auto',
    concurrency: 2,
    log: silentLogger,
    progress: () => nullProgress,
  }).catch((e: unknown) => e);
  expect(err, what).toBeInstanceOf(OrbError);
  const e = err as OrbError;
  expect(e.kind, `${what}: ${e.message}`).toBe('input');
  expect(e.message, what).toMatch(field);
  // a short, sanitized prefix of the hostile value at most
  expect(e.message.length, `${what}: ${e.message}`).toBeLessThan(400);
  expect(e.message, what).not.toMatch(/[\n\r]|x{100}/);
  expect(tree(root), what).toEqual(before);
  expect(process.memoryUsage().rss, what).toBeLessThan(512 << 20);
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'orb-fuzz-'));
  mkdirSync(join(root, 'out'));
  makeDisk(join(root, 'disk.raw'), { size: CHUNK * 16, chunkSize: CHUNK, data: () => true });
  // two packs, so pack mutations leave an index layer and another pack
  const built = await writeV2Image(join(root, 'disk.raw'), join(root, 'layout'), 'good', { packSize: 4096 });
  rmSync(join(root, 'disk.raw'));
  layout = new OciLayout(built.dir);
  const manifest = JSON.parse((await layout.readBytes(built.manifestDigest)).toString('utf8')) as Json;
  const config = JSON.parse(
    (await layout.readBytes((manifest.config as { digest: string }).digest)).toString('utf8'),
  ) as Json;
  disk = { manifest, config };
  // a file artifact of one part
  const part = Buffer.from('a small published file\n');
  const p = await layout.putBytes(part);
  await layout.putBytes('{}');
  file = {
    manifest: {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: FILE_ARTIFACT,
      config: { ...EMPTY_CONFIG },
      layers: [
        {
          mediaType: FILE_PART,
          digest: p.digest,
          size: p.size,
          annotations: { [ANN_PART_FILE]: 'disk.qcow2', [ANN_PART_INDEX]: '0', [ANN_PART_OFFSET]: '0' },
        },
      ],
      annotations: {
        [ANN_CONTENT_DIGEST]: sha256(part),
        [ANN_FILE_FORMAT]: 'raw',
        [ANN_TITLE]: 'disk.qcow2',
      },
    },
  };
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('hostile manifests, indexes, configs and annotations (fuzz, field by field)', () => {
  it('the unmutated disk and file pull (the mutations below are what breaks them)', async () => {
    for (const [name, tag] of [
      ['disk', await put(disk.manifest)],
      ['file', await put(file.manifest)],
    ] as const) {
      const r = await pull({
        source: new LayoutStore(layout.dir),
        ref: tag,
        display: tag,
        output: join(root, 'out', `${name}.raw`),
        format: 'auto',
        concurrency: 2,
        log: silentLogger,
        progress: () => nullProgress,
      });
      expect(r.path).toBe(join(root, 'out', `${name}.raw`));
    }
    expect(readdirSync(join(root, 'out')).sort()).toEqual(['disk.raw', 'file.raw']);
  });

  it(`disk image manifest and config: ${diskMutations.length} mutations, each refused naming the field`, async () => {
    for (const [what, field, mutate] of diskMutations) {
      const m = clone(disk.manifest);
      const c = clone(disk.config);
      // the config is mutated and stored first, so mutations of its descriptor stay as they are
      mutate({ config: {}, layers: [{ annotations: {} }, {}], annotations: {} }, c);
      const blob = await layout.putBytes((c as { raw?: string }).raw ?? JSON.stringify(c));
      Object.assign(m.config as Json, { digest: blob.digest, size: blob.size });
      mutate(m, clone(disk.config));
      await expectRefused(await put(m), field, what);
    }
  });

  it(`file artifact manifest: ${fileMutations.length} mutations, each refused naming the field`, async () => {
    for (const [what, field, mutate] of fileMutations) {
      const m = clone(file.manifest);
      mutate(m, {});
      await expectRefused(await put(m), field, what);
    }
  });

  it('an image index: manifests missing, not an array, or a descriptor with a bad digest or size', async () => {
    const good = await layout.putBytes(JSON.stringify(disk.manifest));
    const entry = {
      mediaType: OCI_MANIFEST,
      artifactType: DISK_ARTIFACT,
      digest: good.digest,
      size: good.size,
    };
    const cases: [string, RegExp, unknown][] = [
      ['manifests a string', /index manifests is not an array/, '../x'],
      ['manifests of nulls', /image index without an orb disk image/, [null, 1]],
      ...bad.digests
        .filter((d) => d !== undefined)
        .map((d): [string, RegExp, unknown] => [
          `digest ${String(d).slice(0, 20)}`,
          /index manifests\[0\]\.digest/,
          [{ ...entry, digest: d }],
        ]),
      ...bad.sizes.map((s): [string, RegExp, unknown] => [
        `size ${String(s)}`,
        /index manifests\[0\]\.size/,
        [{ ...entry, size: s }],
      ]),
      [
        'size over the manifest limit',
        /index manifests\[0\]\.size is outside/,
        [{ ...entry, size: 64 << 20 }],
      ],
    ];
    for (const [what, field, manifests] of cases) {
      const body = JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests });
      const d = await layout.putBytes(body);
      const tag = `i${n++}`;
      await layout.tag({ mediaType: OCI_INDEX, digest: d.digest, size: d.size }, tag);
      await expectRefused(tag, field, what);
    }
  });

  it('a manifest that is not JSON, not an object, or over the 8 MiB limit', async () => {
    for (const [what, body, field] of [
      ['not JSON', '{"schemaVersion": 2, "layers": [', /manifest is not JSON/],
      ['a JSON string', '"../../etc/passwd"', /manifest is not a JSON object/],
      ['over 8 MiB', JSON.stringify({ ...disk.manifest, pad: 'x'.repeat(9 << 20) }), /more than the 8388608/],
    ] as const) {
      const d = await layout.putBytes(body);
      const tag = `j${n++}`;
      await layout.tag({ mediaType: OCI_MANIFEST, digest: d.digest, size: d.size }, tag);
      await expectRefused(tag, field, what);
    }
  });
});
