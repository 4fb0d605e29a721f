import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { readManifest } from '../../src/core/stage-manifest-file.js';
import { convertImage } from '../../src/image/convert.js';
import { inspectImage } from '../../src/image/inspect.js';
import { RssSampler } from '../../src/image/bench/rss.js';
import {
  allocated,
  denseCopy,
  GiB,
  inFormat,
  MiB,
  qemuCompare,
  sha256Big,
  sha256File,
  smallDisk,
  sparseDisk,
} from '../helpers/images.js';

let dir: string;
let raw: string;
let rawSha: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'orb-convert-'));
  raw = smallDisk();
  rawSha = sha256File(raw);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const out = (name: string) => join(dir, name);
const noPartials = () => expect(readdirSync(dir).filter((f) => f.includes('.partial'))).toEqual([]);

describe('input formats are detected from the content, not the name', () => {
  for (const format of ['qcow2', 'vhdx', 'vmdk', 'vdi', 'vpc'] as const) {
    it(`${format} named .img converts to the same content`, async () => {
      const src = inFormat(raw, format);
      const misnamed = out(`looks-raw-${format}.img`);
      copyFileSync(src, misnamed);
      expect((await inspectImage(misnamed)).format).toBe(format);
      const r = await convertImage({ input: misnamed, output: out(`from-${format}.raw`), format: 'raw' });
      expect(r.inputFormat).toBe(format);
      // vpc rounds the size up to its disk geometry: compare with what qemu-img reads
      expect(qemuCompare(misnamed, format, r.path, 'raw').same).toBe(true);
      if (format !== 'vpc') expect(r.contentSha256).toBe(rawSha);
      expect(statSync(misnamed).size).toBe(statSync(src).size);
    });
  }
});

describe('round trips are byte-identical', () => {
  it('qcow2 + zstd: qemu-img check is clean, compare identical, content digest matches', async () => {
    const r = await convertImage({ input: raw, output: out('a.qcow2'), format: 'qcow2', verify: true });
    expect(r.verified).toBe(true);
    expect(r.contentSha256).toBe(rawSha);
    expect(r.sha256).toBe(sha256File(r.path));
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', r.path], { encoding: 'utf8' }),
    );
    expect(info['format-specific'].data['compression-type']).toBe('zstd');
    execFileSync('qemu-img', ['check', r.path]);
    expect(qemuCompare(raw, 'raw', r.path, 'qcow2').same).toBe(true);
    expect(r.outputBytes).toBeLessThan(statSync(raw).size / 2);
    noPartials();
  });

  for (const [compression, clusterSize] of [
    ['zlib', 65536],
    ['zstd', 2 * MiB],
    ['zstd', 4096],
    ['none', 65536],
  ] as const) {
    it(`qcow2 ${compression} with ${clusterSize >> 10}K clusters`, async () => {
      const r = await convertImage({
        input: raw,
        output: out(`b-${compression}-${clusterSize}.qcow2`),
        format: 'qcow2',
        compression,
        clusterSize,
        verify: true,
      });
      execFileSync('qemu-img', ['check', r.path]);
      const info = JSON.parse(
        execFileSync('qemu-img', ['info', '--output=json', r.path], { encoding: 'utf8' }),
      );
      expect(info['cluster-size']).toBe(clusterSize);
      expect(qemuCompare(raw, 'raw', r.path, 'qcow2').same).toBe(true);
    });
  }

  it('raw output is sparse and identical', async () => {
    const dense = denseCopy(raw);
    const r = await convertImage({ input: dense, output: out('c.raw'), format: 'raw', verify: true });
    expect(sha256File(r.path)).toBe(rawSha);
    // zeros inside allocated data became holes
    expect(allocated(r.path)).toBeLessThan(allocated(dense) * 0.8);
  });

  it('raw.zst decodes with the zstd tool to the same bytes, at any level', async () => {
    for (const level of [1, 9]) {
      const r = await convertImage({
        input: raw,
        output: out(`d${level}.raw.zst`),
        format: 'raw.zst',
        level,
        verify: true,
      });
      const decoded = execFileSync('zstd', ['-d', '-c', r.path], { maxBuffer: 256 * MiB });
      expect(decoded.length).toBe(statSync(raw).size);
      expect(sha256File(r.path)).toBe(r.sha256);
      expect(r.contentSha256).toBe(rawSha);
    }
  });

  it('qcow2 input to every output, and back', async () => {
    const q = inFormat(raw, 'qcow2', ['compression_type=zstd']);
    const z = await convertImage({ input: q, output: out('e.raw.zst'), format: 'raw.zst', verify: true });
    expect(z.contentSha256).toBe(rawSha);
    const back = await convertImage({
      input: q,
      output: out('e.qcow2'),
      format: 'qcow2',
      compression: 'zlib',
      verify: true,
    });
    expect(back.contentSha256).toBe(rawSha);
  });
});

describe('zeros', () => {
  it('a sparse disk far larger than its data converts with bounded memory and output', async () => {
    const big = sparseDisk(4 * GiB);
    const rss = new RssSampler().start();
    const r = await convertImage({ input: big, output: out('big.qcow2'), format: 'qcow2' });
    const peak = rss.stop();
    expect(peak).toBeLessThan(512 * MiB);
    expect(r.virtualSize).toBe(4 * GiB);
    expect(r.allocatedBytes).toBe(12 * MiB);
    expect(r.outputBytes).toBeLessThan(12 * MiB);
    expect(qemuCompare(big, 'raw', r.path, 'qcow2').same).toBe(true);
    expect(r.contentSha256).toBe(await sha256Big(big));
  });

  it('zero runs inside allocated data are found on a non-sparse input', async () => {
    const dense = denseCopy(raw);
    const a = await convertImage({ input: raw, output: out('z1.qcow2'), format: 'qcow2' });
    const b = await convertImage({ input: dense, output: out('z2.qcow2'), format: 'qcow2' });
    expect(b.allocatedBytes).toBe(statSync(dense).size);
    // same clusters stored: the sizes differ at most by metadata placement
    expect(Math.abs(a.outputBytes - b.outputBytes)).toBeLessThan(256 * 1024);
  });
});

describe('bad input stops with a clear message and loses nothing', () => {
  const expectError = async (p: Promise<unknown>, kind: string, text: RegExp) => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(OrbError);
    expect((err as OrbError).kind).toBe(kind);
    expect((err as OrbError).message).toMatch(text);
    noPartials();
  };

  it('missing input', async () => {
    await expectError(
      convertImage({ input: out('nope.img'), output: out('x.qcow2'), format: 'qcow2' }),
      'input',
      /no such file/,
    );
  });

  it('truncated qcow2', async () => {
    const t = out('truncated.qcow2');
    copyFileSync(inFormat(raw, 'qcow2', ['compression_type=zstd']), t);
    execFileSync('truncate', ['-s', String(Math.floor(statSync(t).size / 2)), t]);
    const before = sha256File(t);
    await expectError(
      convertImage({ input: t, output: out('t.raw'), format: 'raw' }),
      'input',
      /damaged or truncated/,
    );
    expect(sha256File(t)).toBe(before);
    expect(existsSync(out('t.raw'))).toBe(false);
  });

  it('a format qemu-img knows but orb does not convert', async () => {
    const qed = inFormat(raw, 'qed');
    await expectError(
      convertImage({ input: qed, output: out('q.raw'), format: 'raw' }),
      'input',
      /format 'qed'/,
    );
  });

  it('an empty file', async () => {
    writeFileSync(out('empty.img'), '');
    await expectError(
      convertImage({ input: out('empty.img'), output: out('empty.qcow2'), format: 'qcow2' }),
      'input',
      /no virtual size/,
    );
  });

  it('level out of range', async () => {
    await expectError(
      convertImage({ input: raw, output: out('l.raw.zst'), format: 'raw.zst', level: 22 }),
      'usage',
      /level 22 is out of range/,
    );
    await expectError(
      convertImage({ input: raw, output: out('l.qcow2'), format: 'qcow2', compression: 'zlib', level: 12 }),
      'usage',
      /out of range for zlib/,
    );
  });

  it('output path equal to the input', async () => {
    const copy = out('self.raw');
    copyFileSync(raw, copy);
    await expectError(convertImage({ input: copy, output: copy, format: 'raw' }), 'usage', /is the input/);
    expect(sha256File(copy)).toBe(rawSha);
  });

  it('not enough free space (estimate larger than the disk): fails before writing', async () => {
    await expectError(
      convertImage({ input: raw, output: out('full.qcow2'), format: 'qcow2', estimateBytes: 2 ** 52 }),
      'environment',
      /not enough free disk/,
    );
    expect(existsSync(out('full.qcow2'))).toBe(false);
  });

  it('a failure in the middle removes the .partial output', async () => {
    const t = out('vanishing.raw');
    copyFileSync(raw, t);
    const controller = new AbortController();
    const p = convertImage({
      input: sparseDisk(4 * GiB),
      output: out('aborted.raw.zst'),
      format: 'raw.zst',
      signal: controller.signal,
      progress: () => ({
        add: () => controller.abort(),
        set() {},
        setTotal() {},
        done() {},
      }),
    });
    await expectError(p, 'interrupted', /interrupted/);
    expect(existsSync(out('aborted.raw.zst'))).toBe(false);
  });
});

describe('stage manifest', () => {
  it('is written beside the output and accepted as the next input', async () => {
    const r = await convertImage({
      input: raw,
      output: out('m.qcow2'),
      format: 'qcow2',
      build: { os: 'test', arch: 'x86_64', firmware: 'bios' },
    });
    expect(r.manifest).toBe(out('m.qcow2.orb.json'));
    const m = await readManifest(r.manifest!);
    expect(m.stage).toBe('convert');
    expect(m.image).toMatchObject({
      path: 'm.qcow2',
      format: 'qcow2',
      virtualSize: r.virtualSize,
      sha256: r.sha256,
      contentSha256: rawSha,
    });
    const next = await convertImage({ input: r.manifest!, output: out('m2.raw.zst'), format: 'raw.zst' });
    expect(next.contentSha256).toBe(rawSha);
    const m2 = await readManifest(next.manifest!);
    expect(m2.input).toMatchObject({ stage: 'convert', path: r.manifest });
    expect(m2.input?.sha256).toMatch(/^sha256:[a-f0-9]{64}$/);
    expect(m2.build?.os).toBe('test');
  });

  it('an input that no longer matches its manifest is refused', async () => {
    const copy = out('changed.raw');
    copyFileSync(raw, copy);
    const r = await convertImage({ input: copy, output: out('changed.raw.zst'), format: 'raw.zst' });
    const m = await readManifest(r.manifest!);
    m.image.path = copy;
    m.image.format = 'raw';
    writeFileSync(out('changed.orb.json'), JSON.stringify(m));
    execFileSync('dd', ['if=/dev/urandom', `of=${copy}`, 'bs=4096', 'count=1', 'seek=100', 'conv=notrunc'], {
      stdio: 'ignore',
    });
    await expect(
      convertImage({ input: out('changed.orb.json'), output: out('changed.qcow2'), format: 'qcow2' }),
    ).rejects.toThrow(/differs from its manifest/);
    noPartials();
  });
});
