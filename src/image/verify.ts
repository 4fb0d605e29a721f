import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createZstdDecompress } from 'node:zlib';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { Progress } from '../core/progress.js';
import { requireTool, run } from '../core/proc.js';
import { LayoutReader, readChunkedLayout } from './chunked/read.js';
import { diskContentRoot } from './content-root.js';
import type { ImageInfo } from './inspect.js';
import type { OutputDone } from './outputs.js';
import { openDiskReader, type DiskReader } from './reader.js';
import { qemuNameOf } from './untrusted.js';
import { scanDisk } from './scan.js';
import { lastLines } from './tool-output.js';
import { Hasher, SlotPool, type WorkerPool } from './workers.js';

/** sha256 of the guest-visible content of any readable image, zeros included, memory bounded. */
export async function contentDigestOf(
  reader: DiskReader,
  progress?: Progress,
  signal?: AbortSignal,
): Promise<string> {
  const unit = 8 << 20;
  const slots = new SlotPool(4, unit);
  const hasher = new Hasher(signal);
  try {
    await scanDisk({
      reader,
      unitSize: unit,
      slots,
      sink: { process: async () => undefined },
      hasher,
      progress,
      signal,
    });
    return await hasher.digest();
  } finally {
    await hasher.close();
  }
}

export interface VerifyRun {
  info: ImageInfo;
  output: string;
  format: 'qcow2' | 'raw' | 'raw.zst' | 'chunked';
  done: OutputDone;
  tag: string;
  pool: WorkerPool;
  progress: (label: string, total?: number) => Progress;
  signal?: AbortSignal | undefined;
  log: Logger;
}

function mismatch(what: string, got: string, want: string): OrbError {
  return new OrbError(
    'integrity',
    `verification failed: ${what} decodes to ${got}, expected ${want}; the output was not kept`,
    {
      hint: 'this points at a hardware or storage fault (or a bug): run again, and report it if it repeats',
    },
  );
}

/**
 * Proves the output decodes to the input's content. qcow2: `qemu-img check` and `qemu-img
 * compare` against the input (QEMU's own reader, independent of our writer); raw: the file's
 * sha256; raw.zst: a streaming decode and sha256; chunked: the layout read back (index, every
 * frame, every block digest) and its content root recomputed from the decoded blocks.
 */
export async function verifyOutput(v: VerifyRun): Promise<void> {
  const want = v.done.contentSha256 ?? '';
  const size = v.info.virtualSize;
  if (v.format !== 'chunked' && !want)
    throw new OrbError('internal', 'verify: no content sha256 to check against');
  switch (v.format) {
    case 'qcow2': {
      const qemuImg = requireTool('qemu-img', 'qemu-utils');
      const check = await run(qemuImg, ['check', '-f', 'qcow2', v.output], { signal: v.signal });
      if (check.code !== 0)
        throw new OrbError(
          'integrity',
          `verification failed: qemu-img check: ${lastLines(check.stderr || check.stdout, 3)}`,
        );
      if (v.info.format !== 'chunked') {
        v.log.info('verify: qemu-img compare input output');
        const cmp = await run(
          qemuImg,
          // both pinned (src/image/untrusted.ts): the input's allowed files and nothing else
          ['compare', '-U', qemuNameOf(v.info), qemuNameOf({ path: v.output, format: 'qcow2' })],
          { signal: v.signal },
        );
        if (cmp.code === 1)
          throw new OrbError(
            'integrity',
            `verification failed: qemu-img compare: ${lastLines(cmp.stdout, 1)}`,
          );
        if (cmp.code !== 0)
          throw new OrbError(
            'integrity',
            `verification failed: qemu-img compare could not run: ${lastLines(cmp.stderr)}`,
          );
        return;
      }
      const reader = await openDiskReader(
        { path: v.output, format: 'qcow2', virtualSize: size, fileBytes: 0 },
        { signal: v.signal },
      );
      try {
        const got = await contentDigestOf(reader, v.progress('verify', size), v.signal);
        if (got !== want) throw mismatch('the qcow2', got, want);
      } finally {
        await reader.close();
      }
      return;
    }
    case 'raw': {
      const st = await stat(v.output);
      if (st.size !== size)
        throw new OrbError(
          'integrity',
          `verification failed: raw output has ${st.size} bytes, expected ${size}`,
        );
      const p = v.progress('verify', size);
      const hash = createHash('sha256');
      for await (const chunk of createReadStream(v.output, { highWaterMark: 4 << 20 })) {
        hash.update(chunk as Buffer);
        p.add((chunk as Buffer).length);
        if (v.signal?.aborted) throw new OrbError('interrupted', 'interrupted');
      }
      p.done();
      const got = 'sha256:' + hash.digest('hex');
      if (got !== want) throw mismatch('the raw file', got, want);
      return;
    }
    case 'raw.zst': {
      const p = v.progress('verify', size);
      const hash = createHash('sha256');
      let n = 0;
      const stream = createReadStream(v.output, { highWaterMark: 4 << 20 }).pipe(createZstdDecompress());
      try {
        for await (const chunk of stream) {
          hash.update(chunk as Buffer);
          n += (chunk as Buffer).length;
          p.add((chunk as Buffer).length);
          if (v.signal?.aborted) throw new OrbError('interrupted', 'interrupted');
        }
      } catch (err) {
        if (err instanceof OrbError) throw err;
        throw new OrbError(
          'integrity',
          `verification failed: the zstd stream does not decode: ${(err as Error).message}`,
        );
      }
      p.done();
      if (n !== size)
        throw new OrbError(
          'integrity',
          `verification failed: raw.zst decodes to ${n} bytes, expected ${size}`,
        );
      const got = 'sha256:' + hash.digest('hex');
      if (got !== want) throw mismatch('the zstd stream', got, want);
      return;
    }
    case 'chunked': {
      // Re-read the layout as any reader would: the index decoded and checked, every frame read
      // back from its pack and every block checked against its digest, the root recomputed from
      // the decoded bytes.
      const root = v.done.contentDigest ?? '';
      const digest = v.done.chunked?.manifestDigest ?? v.tag;
      const img = await readChunkedLayout(v.output, digest);
      const reader = new LayoutReader(
        { path: v.output, format: 'chunked', virtualSize: img.config.virtualSize, fileBytes: 0, tag: digest },
        img,
      );
      reader.pool = v.pool;
      try {
        const got = await diskContentRoot(reader, v.pool, v.progress('verify', size), v.signal);
        if (got !== root || img.config.contentDigest !== root)
          throw mismatch('the chunked layout', got, root);
      } finally {
        await reader.close();
      }
      return;
    }
  }
}
