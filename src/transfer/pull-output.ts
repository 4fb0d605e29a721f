import { createReadStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { trackPath } from '../core/cleanup.js';
import { qemuName, vetImage } from '../image/untrusted.js';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { requireTool, run } from '../core/proc.js';

/**
 * The last step of a pull: the verified `.partial` becomes the output, converted when asked
 * (raw -> qcow2 with qemu-img; a published qcow2 -> raw; a published .zst -> sparse raw). The
 * converted file is itself written under a temporary name and renamed when complete.
 */
export type OutputFormat = 'auto' | 'raw' | 'qcow2';

const QEMU_READABLE = new Set(['raw', 'qcow2', 'vhdx', 'vmdk', 'vdi', 'vpc']);

export async function finishOutput(
  partial: string,
  srcFormat: string,
  out: string,
  want: OutputFormat,
  log: Logger,
  signal?: AbortSignal,
): Promise<string> {
  if (want === 'auto' || want === srcFormat) {
    await rename(partial, out);
    return srcFormat;
  }
  const tmp = `${out}.partial.${want}`;
  const tracked = trackPath(tmp);
  try {
    if (QEMU_READABLE.has(srcFormat)) {
      const qemuImg = requireTool('qemu-img', 'qemu-utils');
      log.info(`converting ${srcFormat} to ${want} with qemu-img`);
      // A published qcow2 is as hostile as any other image: it must not make qemu-img read a
      // backing or data file it names on this machine (the same check convert applies).
      const vetted = await vetImage(partial);
      if (vetted.format !== srcFormat)
        throw new OrbError(
          'input',
          `the published file says ${srcFormat}, but its header is ${vetted.format}`,
        );
      await run(qemuImg, ['convert', '-O', want, qemuName(vetted), tmp], {
        check: true,
        ...(signal ? { signal } : {}),
      });
    } else if (srcFormat === 'raw.zst') {
      log.info(`decompressing to ${want === 'raw' ? 'a sparse raw disk' : 'raw, then converting to qcow2'}`);
      const raw = want === 'raw' ? tmp : `${out}.partial.raw`;
      const rawTracked = raw === tmp ? undefined : trackPath(raw);
      try {
        await zstdToSparse(partial, raw, signal);
        if (want === 'qcow2') {
          const qemuImg = requireTool('qemu-img', 'qemu-utils');
          await run(qemuImg, ['convert', '-f', 'raw', '-O', 'qcow2', raw, tmp], {
            check: true,
            ...(signal ? { signal } : {}),
          });
        }
      } finally {
        if (raw !== tmp) await rm(raw, { force: true });
        rawTracked?.keep();
      }
    } else {
      throw new OrbError('usage', `the published file is ${srcFormat}; orb cannot turn it into ${want}`, {
        hint: 'pull without --format to get the file as published',
      });
    }
    await rename(tmp, out);
    tracked.keep();
    await rm(partial, { force: true });
    return want;
  } catch (err) {
    await rm(tmp, { force: true });
    tracked.keep();
    throw err;
  }
}

/** Decompresses a zstd stream into a file, leaving holes where whole 64 KiB blocks are zero. */
export async function zstdToSparse(src: string, dst: string, signal?: AbortSignal): Promise<number> {
  const fh = await open(dst, 'w');
  const BLOCK = 64 << 10;
  let pos = 0;
  let carry = Buffer.alloc(0);
  const writeBlocks = async (buf: Buffer, final: boolean) => {
    let i = 0;
    for (; i + BLOCK <= buf.length || (final && i < buf.length); i += BLOCK) {
      const block = buf.subarray(i, Math.min(buf.length, i + BLOCK));
      if (!isZero(block)) await fh.write(block, 0, block.length, pos);
      pos += block.length;
    }
    return buf.subarray(i);
  };
  try {
    const sink = new Writable({
      highWaterMark: 4 << 20,
      write(chunk: Buffer, _e, cb) {
        const buf = carry.length ? Buffer.concat([carry, chunk]) : chunk;
        writeBlocks(buf, false).then((rest) => {
          carry = Buffer.from(rest);
          cb();
        }, cb);
      },
      final(cb) {
        writeBlocks(carry, true).then(() => cb(), cb);
      },
    });
    const input = createReadStream(src, { highWaterMark: 4 << 20 });
    if (signal) await pipeline(input, zlib.createZstdDecompress(), sink, { signal });
    else await pipeline(input, zlib.createZstdDecompress(), sink);
    await fh.truncate(pos);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  return pos;
}

export function isZero(buf: Uint8Array): boolean {
  const n = buf.length;
  let i = 0;
  if (buf.byteOffset % 4 === 0) {
    const words = new Uint32Array(buf.buffer, buf.byteOffset, n >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = words.length * 4;
  }
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}
