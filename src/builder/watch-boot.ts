import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { OrbError } from '../core/errors.js';
import { redact, type Logger } from '../core/log.js';
import { formatDuration } from '../core/progress.js';
import { parsePpm, type RgbImage } from '../qemu/png.js';
import { startVm, type Vm, type VmOptions } from '../qemu/runner.js';
import { SerialProtocol } from './guest-protocol.js';

/**
 * One boot of a build stage, watched until the guest powers off: serial log streamed to the
 * build log, a screenshot every few minutes kept as evidence, the "press any key to boot from
 * CD" prompt answered, and a clear failure (with a last screenshot and the logs) on timeout,
 * on a guest that stops making progress, or on a guest that reports ORB-FAIL.
 *
 * Progress means any of: serial output, bytes written to a disk (QMP query-blockstats), or a
 * change on the screen larger than a blinking cursor. Windows Setup and a hung kernel look alike for a minute; for N minutes
 * with none of the three, it is hung.
 */
export interface StageRunOptions {
  /** 'install', 'provision', 'finalize' */
  stage: string;
  /** ORB-DONE values that complete this stage */
  expect: readonly string[];
  vm: Omit<VmOptions, 'workDir' | 'keepWorkDir' | 'onSerialLine' | 'signal'>;
  timeoutMs: number;
  stallMs: number;
  screenshotEveryMs: number;
  /**
   * Windows' UEFI boot loader waits for a key ("Press any key to boot from CD or DVD") and
   * otherwise falls through to the next boot device. We press Enter every second for this long
   * after power-on. Later boots from the installed disk must not see keys (a key at Setup's first
   * reboot would start Setup again), so the window is short and ends long before that reboot.
   */
  bootKeysForMs?: number;
  /** where screenshots (screenshots/) and logs (logs/) of this build go */
  evidenceDir: string;
  log: Logger;
  signal?: AbortSignal;
  /** follow the serial protocol into this instance (to read script output even after a failure) */
  protocol?: SerialProtocol;
  /** echo guest serial lines to the log (default true) */
  streamSerial?: boolean;
}

/** A serial protocol follower that logs the guest's stage events. */
export function stageProtocol(log: Logger, stage: string): SerialProtocol {
  return new SerialProtocol((kind, detail) => {
    if (kind === 'fail') log.error(`${stage}: the guest reports a failure: ${detail}`);
    else if (kind === 'done') log.info(`${stage}: the guest reports ${detail}`);
    else if (kind === 'script-begin') log.info(`${stage}: script ${detail}`);
  });
}

export interface StageRunResult {
  seconds: number;
  done: string;
  protocol: SerialProtocol;
  screenshots: string[];
  serialLog: string;
}

/** Firmware paints the screen through the serial port too: its escape sequences and control codes. */
// eslint-disable-next-line no-control-regex
const TERMINAL_CODES = /\x1b\[[0-9;?=]*[A-Za-z]|\x1b[c()][0-9A-Za-z]?|[\x00-\x08\x0b-\x1f\x7f]/g;

/**
 * A blinking text cursor changes up to 9x16 pixels between two looks; a spinner or a progress bar
 * changes far more. Fewer changed pixels than this do not count as progress.
 */
const SCREEN_CHANGE_PIXELS = 256;

/** Number of pixels that differ between two pictures (every pixel when the size changed). */
export function changedPixels(a: RgbImage, b: RgbImage): number {
  if (a.width !== b.width || a.height !== b.height) return b.width * b.height;
  let n = 0;
  for (let i = 0; i < a.rgb.length; i += 3) {
    if (a.rgb[i] !== b.rgb[i] || a.rgb[i + 1] !== b.rgb[i + 1] || a.rgb[i + 2] !== b.rgb[i + 2]) n++;
  }
  return n;
}

async function blockWrites(vm: Vm): Promise<number> {
  try {
    const stats = await vm.qmp.execute<{ stats?: { wr_bytes?: number } }[]>('query-blockstats', undefined, {
      timeoutMs: 10_000,
    });
    return stats.reduce((sum, s) => sum + (s.stats?.wr_bytes ?? 0), 0);
  } catch {
    return -1;
  }
}

export async function runStage(o: StageRunOptions): Promise<StageRunResult> {
  const shots = join(o.evidenceDir, 'screenshots');
  const logs = join(o.evidenceDir, 'logs');
  await mkdir(shots, { recursive: true });
  await mkdir(logs, { recursive: true });
  // A short path: QMP and TPM sockets live here and unix socket paths are limited to 107 bytes.
  const work = await mkdtemp(join(tmpdir(), `orb-${o.stage}-`));
  const protocol = o.protocol ?? stageProtocol(o.log, o.stage);
  let serialLines = 0;
  const screenshots: string[] = [];
  const t0 = Date.now();
  let shotNo = 0;
  const takeShot = async (vm: Vm, why: string): Promise<string | undefined> => {
    const file = join(shots, `${o.stage}-${String(++shotNo).padStart(3, '0')}-${why}.png`);
    try {
      await vm.screenshot(file);
      screenshots.push(file);
      o.log.info(`${o.stage}: screenshot ${file} (${formatDuration((Date.now() - t0) / 1000)} in)`);
      return file;
    } catch (err) {
      o.log.debug(`screenshot failed: ${(err as Error).message}`);
      return undefined;
    }
  };
  const vm = await startVm({
    ...o.vm,
    name: o.vm.name ?? `orb-${o.stage}`,
    workDir: work,
    keepWorkDir: true,
    ...(o.signal ? { signal: o.signal } : {}),
    onSerialLine: (line) => {
      serialLines++;
      protocol.push(line + '\n');
      const text = line.replace(TERMINAL_CODES, '').trimEnd();
      if (o.streamSerial !== false && text) o.log.info(`guest| ${text.slice(0, 400)}`);
    },
  });
  const serialLog = join(logs, `${o.stage}-serial.log`);
  let failure: OrbError | undefined;
  let done: string | undefined;
  try {
    o.log.info(
      `${o.stage}: QEMU started (pid ${vm.pid}); timeout ${formatDuration(o.timeoutMs / 1000)}, no-progress limit ${formatDuration(o.stallMs / 1000)}`,
    );
    const deadline = t0 + o.timeoutMs;
    let lastProgress = Date.now();
    let lastWrites = -1;
    let lastScreen: RgbImage | undefined;
    let lastSerial = 0;
    let nextShot = t0 + Math.min(o.screenshotEveryMs, 30_000);
    // Progress checks (a screendump and blockstats): often enough to notice a stall in time.
    const checkEvery = Math.min(30_000, Math.max(2_000, o.stallMs / 6));
    let nextCheck = t0 + checkEvery;
    let keysSent = 0;
    let failSeenAt: number | undefined;
    const probe = join(work, 'probe.ppm');
    while (!vm.exit) {
      if (o.signal?.aborted) throw new OrbError('interrupted', `${o.stage} interrupted`);
      const now = Date.now();
      if (o.bootKeysForMs && now - t0 < o.bootKeysForMs) {
        await vm.qmp
          .execute('send-key', { keys: [{ type: 'qcode', data: 'ret' }] }, { timeoutMs: 5_000 })
          .then(
            () => keysSent++,
            () => undefined,
          );
      } else if (keysSent && o.bootKeysForMs && now - t0 >= o.bootKeysForMs) {
        o.log.info(`${o.stage}: pressed Enter ${keysSent} times for the boot-from-CD prompt; stopped now`);
        keysSent = 0;
      }
      if (protocol.failure && failSeenAt === undefined) {
        failSeenAt = now;
        await takeShot(vm, 'failed');
      }
      // After ORB-FAIL the guest shuts itself down; give it a minute before pulling the plug.
      if (failSeenAt !== undefined && now - failSeenAt > 60_000) break;
      if (now >= nextCheck) {
        nextCheck = now + checkEvery;
        const writes = await blockWrites(vm);
        let screen = lastScreen;
        try {
          await vm.qmp.execute('screendump', { filename: probe }, { timeoutMs: 30_000 });
          screen = parsePpm(await readFile(probe));
        } catch {
          /* no display or QEMU going away */
        }
        const screenMoved =
          !!screen && (!lastScreen || changedPixels(lastScreen, screen) > SCREEN_CHANGE_PIXELS);
        if (writes !== lastWrites || screenMoved || serialLines !== lastSerial) lastProgress = Date.now();
        lastWrites = writes;
        if (screenMoved) lastScreen = screen;
        lastSerial = serialLines;
        if (!vm.exit && Date.now() - lastProgress > o.stallMs) {
          await takeShot(vm, 'stalled');
          failure = new OrbError(
            'timeout',
            `${o.stage}: the guest made no progress for ${formatDuration(o.stallMs / 1000)} (no disk writes, no serial output, unchanged screen)`,
            {
              hint: `look at the last screenshot and ${serialLog}; raise stall-timeout if the guest is just slow (TCG)`,
            },
          );
          break;
        }
      }
      if (now >= deadline) {
        await takeShot(vm, 'timeout');
        failure = new OrbError(
          'timeout',
          `${o.stage}: the guest did not finish within ${formatDuration(o.timeoutMs / 1000)}`,
          {
            hint: `look at the last screenshot and ${serialLog}; raise timeout if the build is just slow`,
          },
        );
        break;
      }
      if (now >= nextShot && !vm.exit) {
        nextShot = now + o.screenshotEveryMs;
        await takeShot(vm, 'progress');
      }
      await Promise.race([sleep(1000), vm.waitForExit(1000).catch(() => undefined)]);
    }
    if (keysSent) o.log.info(`${o.stage}: pressed Enter ${keysSent} times for the boot-from-CD prompt`);
    if (!vm.exit) {
      // Timeout, stall, or a failed guest that did not power off: stop it.
      const r = await vm.powerOff({ graceMs: failure ? 5_000 : 60_000 });
      o.log.info(`${o.stage}: VM stopped (${r.method})`);
    }
    protocol.flush();
    if (!failure) {
      done = o.expect.find((e) => protocol.done.has(e));
      if (protocol.failure) {
        failure = new OrbError('check', `${o.stage} failed inside the guest: ${protocol.failure}`, {
          hint: `the guest's output is in ${serialLog}${screenshots.length ? ` and the screenshots in ${shots}` : ''}`,
        });
      } else if (!done) {
        const how = vm.exit?.guestInitiated
          ? 'powered off'
          : `stopped (${vm.exit?.shutdownReason ?? `exit ${vm.exit?.code ?? vm.exit?.signal}`})`;
        failure = new OrbError(
          'check',
          `${o.stage}: the guest ${how} without finishing the stage (no 'ORB-DONE ${o.expect.join("' or '")}')`,
          {
            hint: `it crashed or the stage's script did not run; see ${serialLog} and the last screenshot`,
          },
        );
      }
    }
    if (failure && !screenshots.some((s) => s.includes('-stalled') || s.includes('-timeout'))) {
      // The VM is gone; the last progress screenshot is the best picture we have.
      if (screenshots.length === 0)
        o.log.warn(`${o.stage}: no screenshot could be taken before the VM stopped`);
    }
  } finally {
    // The serial log is evidence: copy it out, with every registered secret masked.
    const raw = await readFile(vm.serialLogPath, 'utf8').catch(() => '');
    await writeFile(serialLog, redact(raw));
    await copyFile(vm.qemuLogPath, join(logs, `${o.stage}-qemu.log`)).catch(() => undefined);
    await vm.dispose();
    await rm(work, { recursive: true, force: true });
  }
  if (failure) {
    if (screenshots.length)
      o.log.info(`${o.stage}: latest screenshot ${screenshots[screenshots.length - 1]}`);
    throw failure;
  }
  const seconds = (Date.now() - t0) / 1000;
  o.log.info(`${o.stage}: finished (${done}) in ${formatDuration(seconds)}`);
  return { seconds, done: done!, protocol, screenshots, serialLog };
}
