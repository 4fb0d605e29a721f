import { readFile } from 'node:fs/promises';
import { OrbError, UsageError } from '../core/errors.js';
import { decodePng, type RgbImage } from './png-decode.js';

/**
 * Screen analysis for the smoke test: "not black", "settled" (consecutive screenshots agree) and
 * "matches a reference screenshot" outside masked rectangles (clocks, host names, cursors).
 */

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** X11 geometry `WxH+X+Y` (no commas, so a list of them survives comma-separated inputs). */
export function parseRect(text: string): Rect {
  const m = /^\s*(\d+)x(\d+)\+(\d+)\+(\d+)\s*$/.exec(text);
  if (!m)
    throw new UsageError(
      `'${text}' is not a rectangle WIDTHxHEIGHT+X+Y`,
      'for example 200x40+824+728 for a clock in the corner',
    );
  const [w, h, x, y] = [m[1], m[2], m[3], m[4]].map(Number) as [number, number, number, number];
  if (w === 0 || h === 0) throw new UsageError(`rectangle '${text}' is empty`);
  return { x, y, width: w, height: h };
}

export function formatRect(r: Rect): string {
  return `${r.width}x${r.height}+${r.x}+${r.y}`;
}

/** Luma above this counts as lit; VGA text is far brighter, dark-grey desktops are above it too. */
const LIT_LUMA = 16;

export interface ScreenFacts {
  width: number;
  height: number;
  /** fraction of pixels brighter than near-black */
  litFraction: number;
  black: boolean;
}

export function screenFacts(img: RgbImage): ScreenFacts {
  const n = img.width * img.height;
  let lit = 0;
  const d = img.data;
  for (let i = 0; i < n * 3; i += 3) {
    // integer Rec. 601 luma
    if ((d[i]! * 299 + d[i + 1]! * 587 + d[i + 2]! * 114) / 1000 > LIT_LUMA) lit++;
  }
  const litFraction = n ? lit / n : 0;
  // A handful of lit pixels (a blinking cursor) is still a black screen.
  return { width: img.width, height: img.height, litFraction, black: litFraction < 0.0005 };
}

export interface Difference {
  /** differing pixels / compared pixels, 0..1 */
  fraction: number;
  differing: number;
  compared: number;
}

function inMask(x: number, y: number, masks: readonly Rect[]): boolean {
  for (const r of masks) if (x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height) return true;
  return false;
}

/**
 * Fraction of unmasked pixels whose colour differs by more than `tolerance` in any channel.
 * Tolerance absorbs scaling and compression noise; masks absorb content that legitimately changes.
 */
export function compareImages(
  a: RgbImage,
  b: RgbImage,
  masks: readonly Rect[] = [],
  tolerance = 32,
): Difference {
  if (a.width !== b.width || a.height !== b.height) {
    throw new OrbError(
      'check',
      `the screen is ${a.width}x${a.height} but the reference screenshot is ${b.width}x${b.height}`,
      {
        hint: 'take the reference at the guest resolution (use a screenshot from a previous smoke test of this image)',
      },
    );
  }
  let differing = 0;
  let compared = 0;
  const rowMasked = masks.length > 0;
  for (let y = 0; y < a.height; y++) {
    const rowMasks = rowMasked ? masks.filter((r) => y >= r.y && y < r.y + r.height) : [];
    for (let x = 0; x < a.width; x++) {
      if (rowMasks.length && inMask(x, y, rowMasks)) continue;
      compared++;
      const o = (y * a.width + x) * 3;
      if (
        Math.abs(a.data[o]! - b.data[o]!) > tolerance ||
        Math.abs(a.data[o + 1]! - b.data[o + 1]!) > tolerance ||
        Math.abs(a.data[o + 2]! - b.data[o + 2]!) > tolerance
      ) {
        differing++;
      }
    }
  }
  return { fraction: compared ? differing / compared : 0, differing, compared };
}

export async function readPng(path: string): Promise<RgbImage> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new OrbError('input', `cannot read ${path}: ${(err as Error).message}`);
  }
  return decodePng(buf, path);
}

/**
 * Tracks screenshots over time: the screen has settled when it is not black and has not changed
 * (beyond `maxChange` of its pixels) across `stableCount` consecutive screenshots.
 */
export class SettleTracker {
  private last: RgbImage | undefined;
  private stable = 0;
  lastFacts: ScreenFacts | undefined;
  lastChange: number | undefined;

  constructor(
    private readonly stableCount = 3,
    private readonly maxChange = 0.002,
    private readonly masks: readonly Rect[] = [],
  ) {}

  /** Feeds the next screenshot; returns true once settled. */
  add(img: RgbImage): boolean {
    const facts = screenFacts(img);
    this.lastFacts = facts;
    if (this.last && this.last.width === img.width && this.last.height === img.height) {
      this.lastChange = compareImages(img, this.last, this.masks, 8).fraction;
      this.stable = this.lastChange <= this.maxChange ? this.stable + 1 : 1;
    } else {
      this.lastChange = undefined;
      this.stable = 1;
    }
    this.last = img;
    return this.settled;
  }

  get settled(): boolean {
    return this.stable >= this.stableCount && !!this.lastFacts && !this.lastFacts.black;
  }

  /** why it has not settled, for a failure message */
  describe(): string {
    if (!this.lastFacts) return 'no screenshot could be taken';
    if (this.lastFacts.black) return 'the screen is black';
    if (this.lastChange === undefined) return 'only one screenshot was taken';
    return `the screen still changes (${(this.lastChange * 100).toFixed(2)}% of pixels between the last two screenshots)`;
  }
}
