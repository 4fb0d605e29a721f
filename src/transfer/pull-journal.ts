import { appendFile, readFile, rm, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';

/**
 * What an interrupted pull already has, so a rerun fetches only the rest. Lines of JSON next to
 * the `.partial` output: a header naming the manifest, then for a disk the frames whose blocks
 * were all written (each verified), for a file the parts written and verified and the progress
 * of large parts written straight into the output. An entry is appended only after the
 * output was synced to disk, so a crash can lose progress but never vouch for bytes that are not
 * there.
 */
interface Header {
  manifest: string;
  size: number;
}

export class Journal {
  /** region offset -> chunk digest, verified and on disk */
  readonly regions = new Map<number, string>();
  /** blob digest -> bytes of it already in place at `offset` (direct writes) */
  readonly partial = new Map<string, { offset: number; bytes: number }>();
  /** v2 disks: frames whose needed blocks are all written and verified */
  readonly frames = new Set<number>();
  private pending: string[] = [];
  private flushing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    readonly path: string,
    private readonly sync: () => Promise<void>,
  ) {}

  /** Opens (or starts) the journal for `manifest`; a journal of another manifest is discarded. */
  static async open(
    path: string,
    header: Header,
    fh: FileHandle,
  ): Promise<{ journal: Journal; resumed: boolean }> {
    const j = new Journal(path, () => fh.datasync());
    let resumed = false;
    const text = await readFile(path, 'utf8').catch(() => '');
    const lines = text.split('\n').filter(Boolean);
    let head: Header | undefined;
    try {
      head = lines.length ? (JSON.parse(lines[0]!) as Header) : undefined;
    } catch {
      head = undefined;
    }
    if (head && head.manifest === header.manifest && head.size === header.size) {
      resumed = true;
      for (const line of lines.slice(1)) {
        let e: { r?: number; d?: string; p?: string; o?: number; n?: number; f?: unknown };
        try {
          e = JSON.parse(line) as typeof e;
        } catch {
          break; // a torn last line after a crash
        }
        if (Array.isArray(e.f)) {
          for (const f of e.f) if (Number.isSafeInteger(f) && (f as number) >= 0) j.frames.add(f as number);
        } else if (typeof e.r === 'number' && e.d) j.regions.set(e.r, e.d);
        else if (e.p && typeof e.n === 'number' && typeof e.o === 'number')
          j.partial.set(e.p, { offset: e.o, bytes: e.n });
      }
    } else {
      await writeFile(path, JSON.stringify(header) + '\n');
    }
    return { journal: j, resumed };
  }

  regionDone(offset: number, digest: string): void {
    this.pending.push(JSON.stringify({ r: offset, d: digest }));
    this.schedule();
  }

  framesDone(frames: readonly number[]): void {
    if (!frames.length) return;
    this.pending.push(JSON.stringify({ f: frames }));
    this.schedule();
  }

  progress(blob: string, offset: number, bytes: number): void {
    this.pending.push(JSON.stringify({ p: blob, o: offset, n: bytes }));
    this.schedule();
  }

  private schedule(): void {
    this.timer ??= setTimeout(
      () => {
        this.timer = undefined;
        void this.flush().catch(() => undefined);
      },
      Number(process.env.ORB_JOURNAL_INTERVAL_MS) || 1000,
    );
  }

  /** Sync the output, then record what was pending before the sync began. */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (!this.pending.length) return;
    const batch = this.pending;
    this.pending = [];
    this.flushing = (async () => {
      await this.sync();
      await appendFile(this.path, batch.join('\n') + '\n');
    })();
    try {
      await this.flushing;
    } finally {
      this.flushing = undefined;
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  async remove(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.pending = [];
    await rm(this.path, { force: true });
  }
}
