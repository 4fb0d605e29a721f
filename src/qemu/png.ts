/**
 * Screenshots: QEMU's screendump writes PPM (P6); we turn it into PNG with a tiny encoder on
 * node:zlib and compute simple statistics the smoke test uses to tell "black screen" from "desktop".
 */

export interface ScreenStats {
  width: number;
  height: number;
  /** mean luma 0..255 */
  meanBrightness: number;
  /** every pixel is (near) black: luma <= 8 */
  allBlack: boolean;
  /** number of distinct colours (capped at 65536): 1-2 means a blank screen */
  distinctColors: number;
  /** fraction of pixels that differ from the most common colour, 0..1 */
  nonBackgroundFraction: number;
}
