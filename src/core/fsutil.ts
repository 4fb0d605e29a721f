import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm, statfs, stat, writeFile, open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OrbError } from './errors.js';
import { trackPath } from './cleanup.js';
import { formatBytes } from './progress.js';

/**
 * Outputs are produced as `<path>.partial` and renamed only after they verify. `commit()`
 * renames; `abort()` (also run on interruption through the cleanup registry) deletes.
 */
export interface PartialOutput {
  /** where to write */
  readonly partial: string;
  readonly final: string;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export async function partialOutput(finalPath: string): Promise<PartialOutput> {
  const partial = `${finalPath}.partial`;
  await mkdir(dirname(finalPath), { recursive: true });
  await rm(partial, { recursive: true, force: true });
  const tracked = trackPath(partial);
  return {
    partial,
    final: finalPath,
    async commit() {
      await rm(finalPath, { recursive: true, force: true });
      await rename(partial, finalPath);
      tracked.keep();
    },
    async abort() {
      await rm(partial, { recursive: true, force: true });
      tracked.keep();
    },
  };
}

export async function writeFileAtomic(path: string, data: string | Uint8Array, mode?: number): Promise<void> {
  const out = await partialOutput(path);
  try {
    await writeFile(out.partial, data, mode === undefined ? undefined : { mode });
    const fh = await open(out.partial, 'r');
    await fh.sync();
    await fh.close();
    await out.commit();
  } catch (err) {
    await out.abort();
    throw err;
  }
}

export async function freeBytes(path: string): Promise<number> {
  let p = path;
  for (;;) {
    try {
      const s = await statfs(p);
      return s.bavail * s.bsize;
    } catch {
      const parent = dirname(p);
      if (parent === p) return Number.POSITIVE_INFINITY;
      p = parent;
    }
  }
}

/** Fails early, before any work, when the estimated output cannot fit. */
export async function ensureFreeSpace(path: string, needed: number, what: string): Promise<void> {
  const free = await freeBytes(path);
  if (free < needed) {
    throw new OrbError(
      'environment',
      `not enough free disk for ${what}: need about ${formatBytes(needed)}, ${formatBytes(free)} free at ${dirname(path)}`,
      {
        hint: 'free space (on GitHub runners, remove preinstalled toolchains), choose another output directory, or a more compact format',
      },
    );
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** sha256 of a file; an abort of `signal` stops the reading and rejects with its reason. */
export async function sha256File(
  path: string,
  onBytes?: (n: number) => void,
  signal?: AbortSignal,
): Promise<string> {
  const hash = createHash('sha256');
  try {
    for await (const chunk of createReadStream(path, {
      highWaterMark: 4 << 20,
      ...(signal ? { signal } : {}),
    })) {
      hash.update(chunk as Buffer);
      onBytes?.((chunk as Buffer).length);
    }
  } catch (err) {
    throw signal?.aborted ? (signal.reason as Error) : err;
  }
  return hash.digest('hex');
}

const FS_ERRORS: Record<string, { why: string; hint: string }> = {
  ENOSPC: {
    why: 'the disk is full',
    hint: 'free space or choose an output directory on a larger disk; a rerun continues from what was written',
  },
  EDQUOT: { why: 'the disk quota is exhausted', hint: 'free space within your quota or write elsewhere' },
  EFBIG: {
    why: 'the file system cannot hold a file that large',
    hint: 'write to a file system with large-file support (ext4, xfs, btrfs, NTFS; not FAT32)',
  },
  EROFS: { why: 'the file system is read-only', hint: 'choose an output path on a writable file system' },
};

/**
 * A file system error that is about the machine, not the input (full disk, read-only mount, file
 * too big for the file system), as OrbError('environment') with a hint; anything else unchanged.
 */
export function environmentError(err: unknown, what: string): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const known = code ? FS_ERRORS[code] : undefined;
  if (!known || err instanceof OrbError) return err;
  const path = (err as NodeJS.ErrnoException).path;
  return new OrbError('environment', `${what}: ${known.why} (${code}${path ? ` at ${path}` : ''})`, {
    hint: known.hint,
    cause: err,
  });
}
