/**
 * Reading a built Debian golden image back without mounting it: the root file system is the
 * disk's second partition, which debugfs opens at its offset (e2fsprogs' `image?offset=N`).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export { buildDebianImage } from '../../src/guest/debian.js';

const exec = promisify(execFile);

/** Byte offset of partition `n` (1-based) of an MBR disk in a raw image. */
export async function partitionOffset(rawImage: string, n: number): Promise<number> {
  const { stdout } = await exec('sfdisk', ['--json', rawImage]);
  const table = JSON.parse(stdout) as {
    partitiontable: { partitions: { start: number }[]; sectorsize?: number };
  };
  const p = table.partitiontable.partitions[n - 1];
  if (!p) throw new Error(`${rawImage} has no partition ${n}`);
  return p.start * (table.partitiontable.sectorsize ?? 512);
}

/** A read-only view of an ext4 file system inside a raw disk image. */
export class Ext4Reader {
  constructor(
    private readonly image: string,
    private readonly offset: number,
  ) {}

  static async rootOf(rawImage: string): Promise<Ext4Reader> {
    return new Ext4Reader(rawImage, await partitionOffset(rawImage, 2));
  }

  private async debugfs(request: string): Promise<string> {
    const { stdout } = await exec('debugfs', ['-R', request, `${this.image}?offset=${this.offset}`], {
      maxBuffer: 64 << 20,
    });
    return stdout;
  }

  /** File content, or undefined when the path does not exist. */
  async cat(path: string): Promise<string | undefined> {
    if (!(await this.exists(path))) return undefined;
    return this.debugfs(`cat ${path}`);
  }

  async exists(path: string): Promise<boolean> {
    const { stderr } = await exec('debugfs', ['-R', `stat ${path}`, `${this.image}?offset=${this.offset}`], {
      maxBuffer: 16 << 20,
    });
    return !/File not found/.test(stderr);
  }

  /** Names in a directory (without . and ..); empty when it does not exist. */
  async ls(path: string): Promise<string[]> {
    if (!(await this.exists(path))) return [];
    const out = await this.debugfs(`ls -p ${path}`);
    return out
      .split('\n')
      .map((l) => l.split('/')[5])
      .filter((n): n is string => !!n && n !== '.' && n !== '..');
  }

  /** Size in bytes of a regular file (undefined when absent). */
  async size(path: string): Promise<number | undefined> {
    if (!(await this.exists(path))) return undefined;
    const m = /Size: (\d+)/.exec(await this.debugfs(`stat ${path}`));
    return m ? Number(m[1]) : undefined;
  }

  /**
   * Which files hold the bytes at these offsets of the disk image: a path, '(free)' for a block no
   * file owns, or '(outside)' for offsets outside this file system.
   */
  async ownersOf(offsets: readonly number[]): Promise<string[]> {
    const blockSize = Number(/Block size:\s+(\d+)/.exec(await this.debugfs('stats -h'))?.[1] ?? 4096);
    const blocks = offsets.map((o) => (o < this.offset ? -1 : Math.floor((o - this.offset) / blockSize)));
    const inodes = new Map<number, string>();
    const icheck = await this.debugfs(`icheck ${blocks.filter((b) => b >= 0).join(' ')}`);
    for (const m of icheck.matchAll(/^(\d+)\s+(\d+|<block not found>)$/gm)) inodes.set(Number(m[1]), m[2]!);
    const numeric = [...new Set([...inodes.values()].filter((v) => /^\d+$/.test(v)))];
    const paths = new Map<string, string>();
    if (numeric.length) {
      const ncheck = await this.debugfs(`ncheck ${numeric.join(' ')}`);
      for (const m of ncheck.matchAll(/^(\d+)\s+(\S.*)$/gm)) paths.set(m[1]!, m[2]!.trim());
    }
    return blocks.map((b) => {
      if (b < 0) return '(outside)';
      const ino = inodes.get(b);
      if (!ino || !/^\d+$/.test(ino)) return '(free)';
      return paths.get(ino) ?? `<inode ${ino}>`;
    });
  }
}
