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
}
