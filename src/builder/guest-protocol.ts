/**
 * What a guest tells the build over its serial console. The Windows scripts (src/windows/scripts.ts),
 * the Linux cloud-init user-data and the test guests all print these lines, so one watcher serves
 * every kind of build:
 *
 *   ORB-STAGE <name>                 a stage started inside the guest
 *   ORB-SCRIPT-BEGIN <n> <file>      provisioning script n (1-based) starts; its output follows
 *   ORB-SCRIPT-END <n> <exit code>
 *   ORB-FAIL <message>               the stage failed; the guest shuts down after printing it
 *   ORB-DONE <stage>                 the stage finished; the guest powers off next
 *
 * A stage counts as done only when the guest printed ORB-DONE for it and then powered off.
 */
export const MARK = {
  stage: 'ORB-STAGE',
  scriptBegin: 'ORB-SCRIPT-BEGIN',
  scriptEnd: 'ORB-SCRIPT-END',
  fail: 'ORB-FAIL',
  done: 'ORB-DONE',
} as const;

/** Stage names as the guest reports them in ORB-DONE (and as the state file records them). */
export type GuestStage = 'installed' | 'provisioned' | 'finalized' | 'generalized';

export interface ScriptRun {
  index: number;
  name: string;
  exitCode?: number;
  output: string[];
}

/** Follows the serial stream line by line (chunks may split lines anywhere). */
export class SerialProtocol {
  private partial = '';
  readonly done = new Set<string>();
  failure: string | undefined;
  stages: string[] = [];
  readonly scripts: ScriptRun[] = [];
  private current: ScriptRun | undefined;
  lines = 0;

  constructor(
    private readonly onEvent?: (
      kind: 'stage' | 'script-begin' | 'script-end' | 'fail' | 'done',
      detail: string,
    ) => void,
  ) {}

  push(chunk: string): void {
    const text = this.partial + chunk;
    const parts = text.split(/\r?\n/);
    this.partial = parts.pop() ?? '';
    for (const raw of parts) this.line(raw);
  }

  /** Processes a trailing line without a newline (at the end of the stream). */
  flush(): void {
    if (this.partial) this.line(this.partial);
    this.partial = '';
  }

  private line(raw: string): void {
    // Firmware and kernels emit escape sequences and NULs on the serial port.
    // eslint-disable-next-line no-control-regex
    const line = raw.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/[\x00\r]/g, '');
    this.lines++;
    const at = line.indexOf('ORB-');
    const body = at >= 0 ? line.slice(at) : '';
    const word = body.split(' ', 1)[0];
    const rest = body.slice((word?.length ?? 0) + 1).trim();
    switch (word) {
      case MARK.stage:
        this.stages.push(rest);
        this.onEvent?.('stage', rest);
        return;
      case MARK.scriptBegin: {
        const m = /^(\d+)\s+(.*)$/.exec(rest);
        this.current = { index: Number(m?.[1] ?? this.scripts.length + 1), name: m?.[2] ?? rest, output: [] };
        this.scripts.push(this.current);
        this.onEvent?.('script-begin', rest);
        return;
      }
      case MARK.scriptEnd: {
        const m = /^(\d+)\s+(-?\d+)/.exec(rest);
        const s = this.scripts.find((x) => x.index === Number(m?.[1])) ?? this.current;
        if (s) s.exitCode = Number(m?.[2] ?? NaN);
        this.current = undefined;
        this.onEvent?.('script-end', rest);
        return;
      }
      case MARK.fail:
        this.failure ??= rest || 'the guest reported a failure';
        this.onEvent?.('fail', rest);
        return;
      case MARK.done:
        this.done.add(rest);
        this.onEvent?.('done', rest);
        return;
      default:
        if (this.current) this.current.output.push(line);
    }
  }

  /** The provisioning log: each script's output under a header, in order. */
  provisionLog(): string {
    return this.scripts
      .map((s) => [`==> [${s.index}] ${s.name} (exit ${s.exitCode ?? 'unknown'})`, ...s.output].join('\n'))
      .join('\n\n');
  }
}
