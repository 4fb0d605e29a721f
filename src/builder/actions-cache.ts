import type { Logger } from '../core/log.js';

/**
 * GitHub Actions cache (@actions/cache) for big build inputs and layers: the downloaded ISOs and
 * the installed base. Loaded lazily so the CLI never pays for it; every failure is a warning,
 * because a cache is an optimisation and must never fail a build.
 */
export function actionsCacheAvailable(): boolean {
  return !!process.env.GITHUB_ACTIONS && !!(process.env.ACTIONS_CACHE_URL || process.env.ACTIONS_RESULTS_URL);
}

export async function restoreActionsCache(paths: string[], key: string, log: Logger): Promise<boolean> {
  if (!actionsCacheAvailable()) return false;
  try {
    const cache = await import('@actions/cache');
    if (!cache.isFeatureAvailable()) return false;
    const hit = await cache.restoreCache(paths, key);
    if (hit) log.info(`restored ${key} from the Actions cache`);
    return hit === key;
  } catch (err) {
    log.warn(`Actions cache restore of ${key} failed: ${(err as Error).message}`);
    return false;
  }
}

export async function saveActionsCache(paths: string[], key: string, log: Logger): Promise<void> {
  if (!actionsCacheAvailable()) return;
  try {
    const cache = await import('@actions/cache');
    if (!cache.isFeatureAvailable()) return;
    await cache.saveCache(paths, key);
    log.info(`saved ${key} to the Actions cache`);
  } catch (err) {
    // Typical: the key exists already (another job saved it) or the entry exceeds the cache quota.
    log.warn(`Actions cache save of ${key} skipped: ${(err as Error).message}`);
  }
}
