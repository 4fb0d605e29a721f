import { constants } from 'node:fs';
import { copyFile, cp, link, mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { exists } from '../core/fsutil.js';
import type { Logger } from '../core/log.js';
import { restoreActionsCache, saveActionsCache } from './actions-cache.js';

/**
 * The installed base as a cache entry: cacheDir/installed/<key>/ with the disk layer and the
 * firmware state it booted with (UEFI variables with the Windows Boot Manager entry, TPM state).
 * The key comes from the ISO digest and the answer inputs (see windows.ts), so a changed script or
 * password never reinstalls Windows. A finished base is never written again (later stages are
 * overlays), which makes hard links safe: storing and restoring cost no copy on one file system.
 */
export interface LayerFiles {
  disk: string;
  vars?: string;
  tpmDir?: string;
}

function entryDir(cacheDir: string, key: string): string {
  return join(cacheDir, 'installed', key.slice(0, 40));
}

function entryFiles(dir: string): Required<LayerFiles> {
  return { disk: join(dir, 'base.qcow2'), vars: join(dir, 'vars.fd'), tpmDir: join(dir, 'tpm') };
}

/** Hard link, else reflink/copy (another file system). */
export async function linkOrCopy(src: string, dest: string): Promise<void> {
  await mkdir(dirname(dest), { recursive: true });
  await rm(dest, { force: true });
  try {
    await link(src, dest);
  } catch {
    await copyFile(src, dest, constants.COPYFILE_FICLONE);
  }
}

export async function storeInstalled(
  cacheDir: string,
  key: string,
  files: LayerFiles,
  actions: boolean,
  log: Logger,
): Promise<void> {
  const dir = entryDir(cacheDir, key);
  const partial = `${dir}.partial`;
  try {
    await rm(partial, { recursive: true, force: true });
    const to = entryFiles(partial);
    await linkOrCopy(files.disk, to.disk);
    if (files.vars) await linkOrCopy(files.vars, to.vars);
    if (files.tpmDir && (await exists(files.tpmDir))) await cp(files.tpmDir, to.tpmDir, { recursive: true });
    await rm(dir, { recursive: true, force: true });
    await rename(partial, dir);
    log.info(`installed base cached as ${dir}`);
  } catch (err) {
    await rm(partial, { recursive: true, force: true });
    log.warn(`could not cache the installed base: ${(err as Error).message}`);
    return;
  }
  if (actions) await saveActionsCache([dir], `orb-installed-${key.slice(0, 40)}`, log);
}

export async function restoreInstalled(
  cacheDir: string,
  key: string,
  dest: LayerFiles,
  actions: boolean,
  log: Logger,
): Promise<boolean> {
  const dir = entryDir(cacheDir, key);
  let from = entryFiles(dir);
  if (!(await exists(from.disk)) && actions) {
    await restoreActionsCache([dir], `orb-installed-${key.slice(0, 40)}`, log);
    from = entryFiles(dir);
  }
  if (!(await exists(from.disk))) return false;
  if (dest.vars && !(await exists(from.vars))) return false;
  await linkOrCopy(from.disk, dest.disk);
  if (dest.vars) await linkOrCopy(from.vars, dest.vars);
  if (dest.tpmDir) {
    await rm(dest.tpmDir, { recursive: true, force: true });
    if (await exists(from.tpmDir)) await cp(from.tpmDir, dest.tpmDir, { recursive: true });
  }
  log.info(`installed base restored from the cache (${dir}): Windows Setup is skipped`);
  return true;
}

/** Per-stage copies of the mutable firmware state, so a rerun of a stage starts from its input. */
export async function copyFirmwareState(from: LayerFiles, to: LayerFiles): Promise<void> {
  if (from.vars && to.vars) {
    await mkdir(dirname(to.vars), { recursive: true });
    // Unlink first: the old file may be a hard link into the cache, which must never change.
    await rm(to.vars, { force: true });
    await copyFile(from.vars, to.vars);
  }
  if (from.tpmDir && to.tpmDir) {
    await rm(to.tpmDir, { recursive: true, force: true });
    if (await exists(from.tpmDir)) await cp(from.tpmDir, to.tpmDir, { recursive: true });
  }
}
