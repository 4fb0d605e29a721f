import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OrbError } from '../../src/core/errors.js';
import { convertImage } from '../../src/image/convert.js';
import { createOverlay, inspectDisk } from '../../src/smoke/disk.js';
import { runNode } from '../helpers/cli.js';

/**
 * Finding 2 of issue 13: a disk image sent by someone else must not make convert or smoke-test
 * read a file of this machine that the image names. Every image here is crafted with the real
 * qemu-img to point at `secret.bin`; nothing here boots a VM.
 */

const MiB = 1 << 20;
const MARKER = Buffer.from('ORB-SECRET-MARKER-7f3a9c');
const SECRET = Buffer.alloc(MiB, Buffer.from(`${MARKER.toString()}\n`));
const FORMATS = ['qcow2', 'raw', 'raw.zst', 'chunked'] as const;

let root: string;
let privateTmp: string;
const savedTmp = process.env.TMPDIR;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'orb-untrusted-'));
  // Our own TMPDIR: whatever convert puts in the temporary directory is seen, and must be gone.
  privateTmp = join(root, 'tmp');
  mkdirSync(privateTmp);
  process.env.TMPDIR = privateTmp;
});
afterAll(() => {
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
  rmSync(root, { recursive: true, force: true });
});

function qemuImg(...args: string[]): void {
  execFileSync('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A fresh directory holding the host file an image will try to read. */
function caseDir(name: string): { dir: string; secret: string } {
  const dir = join(root, name);
  mkdirSync(dir);
  const secret = join(dir, 'secret.bin');
  writeFileSync(secret, SECRET);
  return { dir, secret };
}

function files(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p).map((f) => join(e.name, f)));
    else out.push(e.name);
  }
  return out.sort();
}

/**
 * No file under `dir` that the case did not craft holds the secret's bytes, and nothing is left in
 * the temporary directory (raw and chunked outputs keep them readable; the marker is checked in
 * every output, and the refused cases write no output at all).
 */
function secretNowhereBut(dir: string, crafted: string[]): void {
  for (const f of files(dir)) {
    if (crafted.includes(f)) continue;
    expect(readFileSync(join(dir, f)).includes(MARKER), `${f} holds the secret`).toBe(false);
  }
  expect(readdirSync(privateTmp)).toEqual([]);
}

interface Hostile {
  name: string;
  /** crafts the image in `dir`, naming `secret` */
  make: (dir: string, secret: string) => string;
  /** what the error must show the image names */
  shows: RegExp;
  /** the secret is a plain file name that --allow-external-file can allow */
  allowable: boolean;
}

const HOSTILE: Hostile[] = [
  {
    name: 'qcow2 with an external data file',
    make: (dir, secret) => {
      const img = join(dir, 'data-file.qcow2');
      qemuImg(
        'create',
        '-q',
        '-f',
        'qcow2',
        '-o',
        `data_file=${secret},data_file_raw=on,preallocation=metadata`,
        img,
        '1M',
      );
      writeFileSync(secret, SECRET); // qemu-img create zeroed it; the guest now sees these bytes
      return img;
    },
    shows: /names another file as its external data file: ".*secret\.bin"/,
    allowable: true,
  },
  {
    name: 'qcow2 with a backing file',
    make: (dir, secret) => {
      const img = join(dir, 'backed.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-b', secret, '-F', 'raw', img);
      return img;
    },
    shows: /names another file as its backing file: ".*secret\.bin"/,
    allowable: true,
  },
  {
    name: 'qcow2 with a backing file, named .raw',
    make: (dir) => {
      const img = join(dir, 'looks-raw.raw');
      qemuImg('create', '-q', '-f', 'qcow2', '-b', 'secret.bin', '-F', 'raw', img);
      return img;
    },
    shows: /names another file as its backing file: "secret\.bin"/,
    allowable: true,
  },
  {
    name: 'qcow2 whose backing file has no declared format (QEMU would probe it)',
    make: (dir, secret) => {
      const img = join(dir, 'probe.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-b', secret, '-F', 'raw', img);
      // qemu-img 7 insists on -F; rename the backing format extension to an unknown (ignored) type
      const bytes = readFileSync(img);
      const at = bytes.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]));
      expect(at).toBeGreaterThan(0);
      bytes.writeUInt32BE(0x0bad0bad, at);
      writeFileSync(img, bytes);
      return img;
    },
    shows: /backing file: ".*secret\.bin"/,
    allowable: true,
  },
  {
    name: 'VMDK descriptor naming a host file as a FLAT extent',
    make: (dir, secret) => {
      const img = join(dir, 'flat.vmdk');
      writeFileSync(
        img,
        `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "${secret}" 0\n`,
      );
      return img;
    },
    shows: /names another file as its extent: ".*secret\.bin"/,
    allowable: true,
  },
  {
    name: 'sparse VMDK with capacity 0, whose embedded descriptor names a FLAT extent',
    make: (dir, secret) => {
      // QEMU reads such a header's descriptor as a descriptor file, extents and all
      const img = join(dir, 'embedded.vmdk');
      qemuImg('create', '-q', '-f', 'vmdk', img, '1M');
      const bytes = readFileSync(img);
      bytes.writeBigUInt64LE(0n, 12);
      const desc = `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "${secret}" 0\n`;
      bytes.fill(0, 512, 512 + 20 * 512);
      bytes.write(desc, 512);
      writeFileSync(img, bytes);
      return img;
    },
    shows: /names another file as its extent: ".*secret\.bin"/,
    allowable: true,
  },
  {
    name: 'sparse VMDK with a parent',
    make: (dir, secret) => {
      const parent = join(dir, 'parent.vmdk');
      qemuImg('convert', '-f', 'raw', '-O', 'vmdk', secret, parent);
      const img = join(dir, 'child.vmdk');
      qemuImg('create', '-q', '-f', 'vmdk', '-b', parent, '-F', 'vmdk', img);
      return img;
    },
    shows: /names another file as its parent \(backing file\): ".*parent\.vmdk"/,
    allowable: false, // its allowed form is covered by the qcow2 cases; here the parent is not the secret
  },
  {
    name: 'qcow2 whose backing file name is json:{...}',
    make: (dir, secret) => {
      const img = join(dir, 'json-backing.qcow2');
      const json = `json:${JSON.stringify({ driver: 'raw', file: { driver: 'file', filename: secret } })}`;
      qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', json, '-F', 'raw', img, '1M');
      return img;
    },
    shows: /backing file "json:\{.*\}", which is a QEMU option string/,
    allowable: false,
  },
  {
    name: 'qcow2 whose backing file is a network protocol',
    make: (dir) => {
      const img = join(dir, 'nbd-backing.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'nbd://127.0.0.1:9/x', '-F', 'raw', img, '1M');
      return img;
    },
    shows: /backing file "nbd:\/\/127\.0\.0\.1:9\/x", which QEMU would open as a protocol/,
    allowable: false,
  },
];

async function refused(p: Promise<unknown>, shows: RegExp): Promise<OrbError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(OrbError);
  const e = err as OrbError;
  expect(e.kind).toBe('input');
  expect(e.message).toMatch(shows);
  return e;
}

describe('convert and smoke-test refuse an image that names another file', () => {
  for (const h of HOSTILE) {
    it(`${h.name}: refused by every output format and by smoke-test, nothing read or written`, async () => {
      const { dir, secret } = caseDir(h.name.replace(/[^a-z0-9]+/gi, '-'));
      const img = h.make(dir, secret);
      const before = files(dir);
      for (const format of FORMATS) {
        const out = join(dir, 'out', `image.${format === 'chunked' ? 'layout' : format}`);
        const e = await refused(convertImage({ input: img, output: out, format }), h.shows);
        if (h.allowable) expect(e.hint).toMatch(/--allow-external-file/);
      }
      await refused(inspectDisk(img), h.shows);
      // Nothing appeared beside the input or in the temporary directory; the output folder is empty.
      expect(files(dir).filter((f) => !f.startsWith('out/'))).toEqual(before);
      expect(existsSync(join(dir, 'out')) ? files(join(dir, 'out')) : []).toEqual([]);
      secretNowhereBut(dir, before);
    });
  }

  it('an allow option naming a different file still refuses', async () => {
    const { dir, secret } = caseDir('allow-other');
    const img = HOSTILE[1]!.make(dir, secret);
    const other = join(dir, 'other.bin');
    writeFileSync(other, Buffer.alloc(4096));
    await refused(
      convertImage({ input: img, output: join(dir, 'o.raw'), format: 'raw', allowExternalFiles: [other] }),
      /backing file/,
    );
    await refused(inspectDisk(img, undefined, [other]), /backing file/);
  });

  it('json: and protocol names stay refused even when the secret is allowed', async () => {
    for (const h of HOSTILE.filter((x) => /json|protocol/.test(x.name))) {
      const { dir, secret } = caseDir(`${h.name.replace(/[^a-z0-9]+/gi, '-')}-allowed`);
      const img = h.make(dir, secret);
      await refused(
        convertImage({ input: img, output: join(dir, 'o.raw'), format: 'raw', allowExternalFiles: [secret] }),
        h.shows,
      );
    }
  });
});

describe('with --allow-external-file naming exactly that file, convert reads it', () => {
  for (const h of HOSTILE.filter((x) => x.allowable)) {
    it(`${h.name}: converts, and the content is the allowed file's`, async () => {
      const { dir, secret } = caseDir(`${h.name.replace(/[^a-z0-9]+/gi, '-')}-ok`);
      const img = h.make(dir, secret);
      const r = await convertImage({
        input: img,
        output: join(dir, 'out', 'disk.raw'),
        format: 'raw',
        allowExternalFiles: [secret],
      });
      const got = readFileSync(r.path);
      expect(got.subarray(0, SECRET.length).equals(SECRET)).toBe(true);
      expect(readdirSync(privateTmp)).toEqual([]);
      // smoke-test's pre-boot check gets past the gate (and then judges the disk itself)
      await expect(inspectDisk(img, undefined, [secret])).rejects.toThrow(/no boot signature/);
    });
  }
});

describe('smoke-test with --allow-external-file', () => {
  it('the throw-away overlay pins the chain: QEMU sees exactly the allowed file', async () => {
    const { dir, secret } = caseDir('smoke-allowed');
    const bootable = Buffer.from(SECRET);
    bootable[510] = 0x55;
    bootable[511] = 0xaa;
    writeFileSync(secret, bootable);
    const img = join(dir, 'backed.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', secret, '-F', 'raw', img);
    const disk = await inspectDisk(img, undefined, [secret]);
    expect(disk.external).toEqual([secret]);
    const overlay = join(dir, 'overlay.qcow2');
    await createOverlay(disk, overlay);
    // what a VM booted on the overlay reads, through QEMU's own open of the chain
    const cmp = execFileSync('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'raw', overlay, secret], {
      encoding: 'utf8',
    });
    expect(cmp).toMatch(/identical/);
  });
});

describe('content that only looks like another format is read as the raw bytes it is', () => {
  const asRaw = async (name: string, content: Buffer) => {
    const { dir, secret } = caseDir(name.replace(/[^a-z0-9]+/gi, '-'));
    const img = join(dir, name);
    writeFileSync(img, content);
    const before = files(dir);
    for (const format of FORMATS) {
      const out = join(dir, 'out', `image.${format === 'chunked' ? 'layout' : format}`);
      const r = await convertImage({ input: img, output: out, format });
      expect(r.inputFormat).toBe('raw');
      if (format === 'raw') expect(readFileSync(r.path).equals(content)).toBe(true);
    }
    secretNowhereBut(dir, before);
    return { dir, secret, img };
  };

  it('a file whose content is json:{...} naming the secret', async () => {
    const text = `json:${JSON.stringify({ driver: 'raw', file: { driver: 'file', filename: join(root, 'json-content', 'secret.bin') } })}`;
    const content = Buffer.alloc(64 * 1024);
    content.write(text);
    await asRaw('json-content', content);
  });

  it('a file named json:{...}', async () => {
    const content = Buffer.alloc(64 * 1024, 7);
    await asRaw('json:{"driver":"raw","file":{"driver":"file","filename":"secret.bin"}}', content);
  });

  it('a raw disk named .qcow2 with a qcow2 header and a VMDK descriptor past its first sector', async () => {
    const { secret } = caseDir('decoy');
    const content = Buffer.alloc(64 * 1024);
    content.write('QFI\xfb', 4096, 'latin1');
    content.write(`# Disk DescriptorFile\nversion=1\nRW 2048 FLAT "${secret}" 0\n`, 8192);
    await asRaw('disk.qcow2', content);
  });
});

describe('the CLI and action input', () => {
  it('orb convert: refused with the name and the flag to allow it, then allowed', async () => {
    const { dir, secret } = caseDir('cli');
    const img = HOSTILE[0]!.make(dir, secret);
    const out = join(dir, 'out', 'disk.qcow2');
    const no = await runNode('bin/orb.js', ['convert', img, '--output', out]);
    expect(no.code).toBe(1);
    expect(no.stderr).toMatch(/names another file as its external data file/);
    expect(no.stderr).toMatch(/--allow-external-file/);
    expect(existsSync(out)).toBe(false);
    const yes = await runNode('bin/orb.js', [
      'convert',
      img,
      '--output',
      out,
      '--allow-external-file',
      secret,
    ]);
    expect(yes.code, yes.stderr).toBe(0);
    expect(statSync(out).size).toBeGreaterThan(0);
  });

  it('orb smoke-test: refused before any VM starts', async () => {
    const { dir, secret } = caseDir('cli-smoke');
    const img = HOSTILE[1]!.make(dir, secret);
    const r = await runNode('bin/orb.js', [
      'smoke-test',
      img,
      '--accelerator',
      'tcg',
      '--evidence-dir',
      join(dir, 'evidence'),
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/names another file as its backing file/);
  });
});
