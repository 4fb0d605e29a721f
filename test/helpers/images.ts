import { execFileSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import {
  closeSync,
  createReadStream,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';

/**
 * Test disk images, built once and cached under $ORB_TEST_CACHE/images keyed by a hash of their
 * recipe: a small ext4 file system with generated files (text that compresses, random data
 * that does not, and zeros), the same disk in every format qemu-img writes, and a sparse disk
 * whose virtual size is far larger than its data.
 */
export const MiB = 1 << 20;
export const GiB = 1 << 30;

export function cacheDir(): string {
  const dir = join(process.env.ORB_TEST_CACHE ?? join(process.cwd(), '.cache'), 'images');
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Deterministic bytes: AES-CTR keystream keyed by `label` (incompressible). */
export function noise(label: string, n: number): Buffer {
  const key = createHash('sha256').update(label).digest();
  return createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32)).update(Buffer.alloc(n));
}

/** Deterministic text-like bytes (compresses roughly like logs and documents). */
export function text(label: string, n: number): Buffer {
  const words = [
    'disk',
    'image',
    'windows',
    'update',
    'registry',
    'system32',
    'driver',
    'config',
    'kernel',
    'volume',
    'sector',
    'cluster',
    'golden',
    'qemu',
  ];
  const r = noise(label, Math.ceil(n / 4) + 16);
  const out = Buffer.alloc(n);
  let p = 0;
  for (let i = 0; p < n; i++) {
    const w = `${words[r[i % r.length]! % words.length]}${r[(i + 1) % r.length]! % 7 === 0 ? '\n' : ' '}`;
    p += out.write(w, p);
  }
  return out;
}

function key(recipe: unknown): string {
  return createHash('sha256').update(JSON.stringify(recipe)).digest('hex').slice(0, 16);
}

function cached(name: string, recipe: unknown, build: (tmp: string) => void): string {
  const path = join(cacheDir(), `${name}-${key(recipe)}`);
  if (existsSync(path)) return path;
  const tmp = `${path}.building-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  build(tmp);
  renameSync(tmp, path);
  return path;
}

/**
 * A 48 MiB raw disk: ext4 holding ~20 MiB of generated files (text, random, a repeated block),
 * so it has real file-system structure, compressible and incompressible data, and zero ranges.
 */
export function smallDisk(): string {
  const recipe = { v: 3, size: 48 * MiB };
  return cached('small.raw', recipe, (out) => {
    const src = `${out}.d`;
    rmSync(src, { recursive: true, force: true });
    mkdirSync(join(src, 'docs'), { recursive: true });
    mkdirSync(join(src, 'bin'), { recursive: true });
    for (let i = 0; i < 24; i++) writeFileSync(join(src, 'docs', `file${i}.txt`), text(`t${i}`, 400 * 1024));
    for (let i = 0; i < 4; i++) writeFileSync(join(src, 'bin', `blob${i}.bin`), noise(`n${i}`, 2 * MiB));
    writeFileSync(
      join(src, 'repeat.bin'),
      Buffer.concat(Array.from({ length: 8 }, () => noise('rep', 256 * 1024))),
    );
    execFileSync(
      'mkfs.ext4',
      ['-q', '-F', '-E', 'root_owner=0:0,lazy_itable_init=0', '-d', src, out, `${recipe.size / MiB}M`],
      {
        env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' },
      },
    );
    rmSync(src, { recursive: true, force: true });
  });
}

/** The same content with every block allocated (zeros written out, not holes). */
export function denseCopy(raw: string): string {
  return cached('dense.raw', { v: 1, raw, size: readFileSync(raw).length }, (out) => {
    execFileSync('cp', ['--sparse=never', raw, out]);
  });
}

/** `raw` converted by qemu-img to `format` (qcow2, vhdx, vmdk, vdi, vpc, qed, ...). */
export function inFormat(raw: string, format: string, options: string[] = []): string {
  return cached(`small.${format}`, { v: 1, raw, format, options }, (out) => {
    execFileSync('qemu-img', [
      'convert',
      '-f',
      'raw',
      '-O',
      format,
      ...(options.length ? ['-o', options.join(',')] : []),
      raw,
      out,
    ]);
  });
}

/**
 * A sparse raw disk of `virtualSize` bytes (much larger than its data) with `count` data
 * regions of `region` bytes at spread-out offsets, half text and half noise.
 */
export function sparseDisk(virtualSize: number, count = 6, region = 2 * MiB): string {
  return cached('sparse.raw', { v: 2, virtualSize, count, region }, (out) => {
    const fd = openSync(out, 'w');
    try {
      for (let i = 0; i < count; i++) {
        const at = Math.floor(((i + 0.5) * virtualSize) / count / MiB) * MiB;
        writeSync(fd, i % 2 ? noise(`s${i}`, region) : text(`s${i}`, region), 0, region, at);
      }
    } finally {
      closeSync(fd);
    }
    execFileSync('truncate', ['-s', String(virtualSize), out]);
  });
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** sha256 of a file read in pieces (for files too big to read at once; holes read as zeros). */
export async function sha256Big(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path, { highWaterMark: 8 * MiB })) h.update(c as Buffer);
  return h.digest('hex');
}

/** qemu-img's own judgement that two images have the same content (it skips holes fast). */
export function qemuCompare(
  a: string,
  aFormat: string,
  b: string,
  bFormat: string,
): { same: boolean; out: string } {
  try {
    const out = execFileSync('qemu-img', ['compare', '-U', '-f', aFormat, '-F', bFormat, a, b], {
      encoding: 'utf8',
    });
    return { same: true, out };
  } catch (err) {
    return { same: false, out: String((err as { stdout?: string }).stdout ?? err) };
  }
}

/** Allocated bytes of a file (st_blocks), to check sparseness. */
export function allocated(path: string): number {
  return Number(
    execFileSync('stat', ['-c', '%b*%B', path], { encoding: 'utf8' })
      .trim()
      .split('*')
      .reduce((a, b) => String(Number(a) * Number(b))),
  );
}
