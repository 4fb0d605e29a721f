import { open, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { OrbError } from '../../core/errors.js';
import { spawnTracked, which } from '../../core/proc.js';
import { convertImage } from '../convert.js';
import type { Qcow2Compression } from '../qcow2.js';
import { lastLines } from '../tool-output.js';

/**
 * The compression methods `orb bench` compares. orb's own formats run in-process through the
 * same code as `orb convert`; xz and lz4 are the installed command-line tools, run the way
 * people run them by hand (all threads for xz). Every method reads a raw file and writes
 * into `dir`; decompression writes the raw bytes back to a file, as a client would.
 */
export interface Method {
  id: string;
  label: string;
  /** orb formats skip zero ranges; the CLI tools read every byte */
  skipsZeros: boolean;
  available(): boolean;
  compress(input: string, dir: string, o: MethodOptions): Promise<{ path: string; bytes: number }>;
  decompress(output: string, dir: string, o: MethodOptions): Promise<void>;
}

export interface MethodOptions {
  threads?: number;
  signal?: AbortSignal;
}

async function sizeOf(path: string): Promise<number> {
  const st = await stat(path);
  if (!st.isDirectory()) return st.size;
  const { readdir } = await import('node:fs/promises');
  let sum = 0;
  for (const e of await readdir(path, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) sum += (await stat(join(e.parentPath, e.name))).size;
  }
  return sum;
}

/** Run a tool with stdout into `outFile`; fails with its stderr. */
export async function runTo(
  cmd: string,
  args: string[],
  outFile: string | undefined,
  signal?: AbortSignal,
): Promise<void> {
  const fh = outFile ? await open(outFile, 'w') : undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawnTracked(cmd, args, { stdio: ['ignore', fh ? fh.fd : 'ignore', 'pipe'] });
      let err = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
      const onAbort = () => child.kill('SIGTERM');
      signal?.addEventListener('abort', onAbort, { once: true });
      child.on('error', reject);
      child.on('close', (code) => {
        signal?.removeEventListener('abort', onAbort);
        if (code === 0) resolve();
        else
          reject(
            new OrbError('environment', `${cmd} ${args.join(' ')} failed (exit ${code}): ${lastLines(err)}`),
          );
      });
    });
  } finally {
    await fh?.close();
  }
}

function ours(
  id: string,
  label: string,
  format: 'qcow2' | 'raw.zst' | 'chunked',
  level: number,
  compression: Qcow2Compression = 'zstd',
): Method {
  const ext = format === 'chunked' ? 'layout' : format;
  return {
    id,
    label,
    skipsZeros: true,
    available: () => format !== 'qcow2' || !!which('qemu-img'),
    async compress(input, dir, o) {
      const output = join(dir, `out.${ext}`);
      const r = await convertImage({
        input,
        output,
        format,
        level,
        compression,
        manifest: false,
        // the size estimate samples 64 MiB: skip it, it would dominate a small sample
        estimateBytes: 1,
        ...(o.threads ? { threads: o.threads } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
      });
      return { path: output, bytes: r.outputBytes };
    },
    async decompress(output, dir, o) {
      const dec = join(dir, 'decoded.raw');
      if (format === 'qcow2')
        await runTo('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', output, dec], undefined, o.signal);
      else if (format === 'raw.zst') await runTo('zstd', ['-q', '-d', '-c', output], dec, o.signal);
      else
        await convertImage({
          input: output,
          output: dec,
          format: 'raw',
          manifest: false,
          estimateBytes: 1,
          ...(o.signal ? { signal: o.signal } : {}),
        });
      await rm(dec, { force: true });
    },
  };
}

function cli(id: string, label: string, tool: string, cArgs: string[], dArgs: string[], ext: string): Method {
  return {
    id,
    label,
    skipsZeros: false,
    available: () => !!which(tool),
    async compress(input, dir, o) {
      const out = join(dir, `out.${ext}`);
      await runTo(tool, [...cArgs, input], out, o.signal);
      return { path: out, bytes: await sizeOf(out) };
    },
    async decompress(output, dir, o) {
      const dec = join(dir, 'decoded.raw');
      await runTo(tool, [...dArgs, output], dec, o.signal);
      await rm(dec, { force: true });
    },
  };
}

export const METHODS: readonly Method[] = [
  ours('qcow2-zstd', 'qcow2 + zstd', 'qcow2', 3),
  ours('qcow2-zlib', 'qcow2 + zlib', 'qcow2', 6, 'zlib'),
  ours('zstd-1', 'raw.zst level 1', 'raw.zst', 1),
  ours('zstd-3', 'raw.zst level 3', 'raw.zst', 3),
  ours('zstd-9', 'raw.zst level 9', 'raw.zst', 9),
  ours('zstd-19', 'raw.zst level 19', 'raw.zst', 19),
  ours('chunked', 'chunked (zstd 3)', 'chunked', 3),
  cli('xz', 'xz -6 (all threads)', 'xz', ['-T0', '-6', '-c'], ['-d', '-T0', '-c'], 'xz'),
  cli('lz4', 'lz4 -1', 'lz4', ['-1', '-c'], ['-d', '-c'], 'lz4'),
];

export const METHOD_IDS = METHODS.map((m) => m.id);

export { sizeOf };
