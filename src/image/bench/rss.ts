import { readdirSync, readFileSync } from 'node:fs';

/**
 * Peak resident memory of a process and all its descendants, sampled from /proc. Why not
 * getrusage: ru_maxrss of children reports the largest single child, not the sum, and our own
 * high-water mark cannot be reset between measurements.
 */
function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // the command name may contain spaces and parentheses: ppid follows the last ')'
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(e));
      children.set(ppid, list);
    } catch {
      /* exited meanwhile */
    }
  }
  const out: number[] = [];
  const stack = [...(children.get(root) ?? [])];
  while (stack.length) {
    const p = stack.pop()!;
    out.push(p);
    stack.push(...(children.get(p) ?? []));
  }
  return out;
}

/** Sum of VmRSS of `pid` (optionally) and its descendants, right now. */
export function treeRss(pid: number, includeSelf = true): number {
  let sum = includeSelf ? rssOf(pid) : 0;
  for (const d of descendants(pid)) sum += rssOf(d);
  return sum;
}

export class RssSampler {
  peak = 0;
  private timer: NodeJS.Timeout | undefined;
  constructor(
    private readonly pid = process.pid,
    private readonly includeSelf = true,
    private readonly intervalMs = 50,
  ) {}
  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    return this;
  }
  sample(): void {
    this.peak = Math.max(this.peak, treeRss(this.pid, this.includeSelf));
  }
  stop(): number {
    if (this.timer) clearInterval(this.timer);
    this.sample();
    return this.peak;
  }
}
