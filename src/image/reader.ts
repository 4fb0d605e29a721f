import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { OrbError } from '../core/errors.js';
import { requireTool, spawnTracked } from '../core/proc.js';
import { untrackChild } from '../core/cleanup.js';
import { openChunkedReader } from './chunked/read.js';
import { Extents, mapImage } from './extents.js';
import type { DiskReader, ImageInfo } from './disk.js';
import { qemuNameOf } from './untrusted.js';
import { NBD_MAX_READ, NbdClient } from './nbd.js';

export type { DiskReader } from './disk.js';

/** Raw files are read directly: no extra process, the kernel's readahead does the rest. */
class RawReader implements DiskReader {
  constructor(
    readonly info: ImageInfo,
    readonly extents: Extents,
    private readonly fh: FileHandle,
    /** file size at open; QEMU rounds a raw disk up to 512 bytes and reads the rest as zeros */
    private readonly fileSize: number,
  ) {}
  get virtualSize(): number {
    return this.info.virtualSize;
  }
  get file(): { path: string; fileSize: number } {
    return { path: this.info.path, fileSize: this.fileSize };
  }
  async read(offset: number, target: Uint8Array): Promise<void> {
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await this.fh.read(target, done, target.length - done, offset + done);
      if (bytesRead === 0 && offset + done >= this.fileSize) {
        target.fill(0, done);
        return;
      }
      if (bytesRead === 0) {
        throw new OrbError(
          'input',
          `${this.info.path} ended at ${offset + done} bytes while reading; was it truncated during the conversion?`,
        );
      }
      done += bytesRead;
    }
  }
  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

/** Other formats go through qemu-nbd (read-only, unix socket in a private directory). */
class NbdReader implements DiskReader {
  constructor(
    readonly info: ImageInfo,
    readonly extents: Extents,
    private readonly client: NbdClient,
    private readonly stop: () => Promise<void>,
  ) {}
  get virtualSize(): number {
    return this.info.virtualSize;
  }
  async read(offset: number, target: Uint8Array): Promise<void> {
    if (target.length <= NBD_MAX_READ) return this.client.read(offset, target);
    const parts: Promise<void>[] = [];
    for (let p = 0; p < target.length; p += NBD_MAX_READ) {
      parts.push(this.client.read(offset + p, target.subarray(p, Math.min(target.length, p + NBD_MAX_READ))));
    }
    await Promise.all(parts);
  }
  async close(): Promise<void> {
    await this.client.close().catch(() => undefined);
    await this.stop();
  }
}

export interface OpenOptions {
  signal?: AbortSignal;
  /** skip `qemu-img map` and treat the whole disk as data (for tests of zero detection) */
  noMap?: boolean;
}

export async function openDiskReader(info: ImageInfo, opts: OpenOptions = {}): Promise<DiskReader> {
  if (info.format === 'chunked') {
    return openChunkedReader(info);
  }
  const extents = opts.noMap
    ? Extents.full(info.virtualSize)
    : await mapImage(info, info.virtualSize, opts.signal);
  if (info.format === 'raw') {
    const fh = await open(info.path, 'r');
    return new RawReader(info, extents, fh, (await fh.stat()).size);
  }
  return openNbd(info, extents, opts.signal);
}

async function openNbd(info: ImageInfo, extents: Extents, signal?: AbortSignal): Promise<DiskReader> {
  const qemuNbd = requireTool('qemu-nbd', 'qemu-utils');
  const dir = await mkdtemp(join(tmpdir(), 'orb-nbd-'));
  const sock = join(dir, 's');
  const child = spawnTracked(
    qemuNbd,
    [
      '--read-only',
      `--socket=${sock}`,
      '--shared=1',
      '--cache=writeback',
      '--aio=threads',
      // Every node pinned (format, file, backing file or none, data file), locking off: see
      // src/image/untrusted.ts. No --image-opts: the json: name carries the options.
      qemuNameOf(info),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let exited: number | null | undefined;
  child.on('exit', (code) => (exited = code));
  const stop = async () => {
    if (exited === undefined) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    untrackChild(child);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (signal?.aborted) throw new OrbError('interrupted', 'interrupted');
      if (exited !== undefined) {
        throw new OrbError(
          'input',
          `qemu-nbd could not open ${info.path}: ${stderr.trim() || `exit ${exited}`}`,
        );
      }
      try {
        const client = await NbdClient.connect(sock);
        if (client.size !== info.virtualSize) {
          await client.close();
          throw new OrbError(
            'internal',
            `qemu-nbd reports ${client.size} bytes, qemu-img info ${info.virtualSize}`,
          );
        }
        return new NbdReader(info, extents, client, stop);
      } catch (err) {
        if (err instanceof OrbError) throw err;
        if (Date.now() > deadline)
          throw new OrbError('environment', `qemu-nbd did not start within 15 s: ${stderr.trim()}`);
        await sleep(20);
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
}
