import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

/** Shared cache for built test guests and fixtures, kept between test runs (.cache/ is ignored by git). */
export default function setup(): void {
  const cache = join(process.cwd(), '.cache');
  mkdirSync(cache, { recursive: true });
  process.env.ORB_TEST_CACHE = cache;
}
