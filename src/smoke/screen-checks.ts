import type { Vm } from '../qemu/runner.js';
import type { ScreenshotRecorder } from './evidence.js';
import type { RgbImage } from './png-decode.js';
import { compareImages, readPng, SettleTracker, type Rect } from './screen.js';
import type { CheckResult } from './types.js';

/**
 * The screen checks, run once the guest is up (after the boot checks): screenshots every two
 * seconds until the screen is lit and stable (`settle`) and matches the reference (when given),
 * or the time is up. Returns one check result per requested check.
 */
export interface ScreenCheckOptions {
  vm: Vm;
  recorder: ScreenshotRecorder;
  settle: boolean;
  reference?: RgbImage;
  threshold: number;
  masks: readonly Rect[];
  timeoutMs: number;
  /** seconds since the VM started */
  since(): number;
  signal: AbortSignal;
}

export interface ScreenCheckOutcome {
  checks: CheckResult[];
  /** best (smallest) difference to the reference seen, 0..1 */
  referenceDifference?: number;
}

export const SETTLE_CHECK = 'screen not black and settled';
export const REFERENCE_CHECK = 'screen matches the reference';

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((res) => {
    if (signal.aborted) return res();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      res();
    }
    signal.addEventListener('abort', done, { once: true });
  });

const pct = (f: number) => `${(f * 100).toFixed(2)}%`;

export async function runScreenChecks(o: ScreenCheckOptions): Promise<ScreenCheckOutcome> {
  const tracker = new SettleTracker(3, 0.002, o.masks);
  const deadline = performance.now() + o.timeoutMs;
  let settledAt: number | undefined;
  let matchedAt: number | undefined;
  let best: number | undefined;
  let lastError = '';
  let sizeError: string | undefined;
  while (!o.signal.aborted && performance.now() < deadline) {
    const shot = await o.recorder.take(o.vm, 'screen');
    if ('error' in shot) lastError = shot.error;
    else {
      const img = await readPng(shot.path);
      if (o.settle && settledAt === undefined && tracker.add(img)) settledAt = o.since();
      if (o.reference && matchedAt === undefined) {
        try {
          const d = compareImages(img, o.reference, o.masks);
          best = Math.min(best ?? 1, d.fraction);
          if (d.fraction <= o.threshold) matchedAt = o.since();
        } catch (err) {
          // a different resolution will not change by waiting
          sizeError = (err as Error).message;
        }
      }
    }
    const settleDone = !o.settle || settledAt !== undefined;
    const referenceDone = !o.reference || matchedAt !== undefined;
    if (sizeError || (settleDone && referenceDone)) break;
    await sleep(2000, o.signal);
  }
  const within = `${Math.round(o.timeoutMs / 1000)} s`;
  const checks: CheckResult[] = [];
  if (o.settle) {
    if (settledAt !== undefined) {
      const lit = ((tracker.lastFacts?.litFraction ?? 0) * 100).toFixed(1);
      checks.push({
        name: SETTLE_CHECK,
        status: 'passed',
        seconds: settledAt,
        detail: `${lit}% of pixels lit`,
      });
    } else {
      const detail =
        lastError && !tracker.lastFacts
          ? `no screenshot could be taken: ${lastError}`
          : `the screen did not settle within ${within}: ${tracker.describe()}`;
      checks.push({ name: SETTLE_CHECK, status: 'failed', seconds: o.since(), detail });
    }
  }
  if (o.reference) {
    if (matchedAt !== undefined) {
      const detail = `${pct(best ?? 0)} of pixels differ (allowed ${pct(o.threshold)})`;
      checks.push({ name: REFERENCE_CHECK, status: 'passed', seconds: matchedAt, detail });
    } else {
      const detail =
        sizeError ??
        (best === undefined
          ? `no screenshot could be compared with the reference${lastError ? `: ${lastError}` : ''}`
          : `the screen does not match the reference: at best ${pct(best)} of unmasked pixels differ (allowed ${pct(o.threshold)}) within ${within}`);
      checks.push({ name: REFERENCE_CHECK, status: 'failed', seconds: o.since(), detail });
    }
  }
  return { checks, ...(best !== undefined ? { referenceDifference: best } : {}) };
}
