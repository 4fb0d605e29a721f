import type { Check } from './prereq.js';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { OrbError } from '../core/errors.js';
import type { BuildInfo } from '../core/stage-manifest-file.js';

export interface InstallResult {
  dir: string;
  compose: string;
  overlay: string;
  base: string;
  reference: string;
  digest: string;
  /** published files: sha256 of the file; '' for a chunked disk */
  contentSha256: string;
  /** chunked disks: the orb2 content root */
  contentDigest?: string;
  virtualSize: number;
  bytesDownloaded: number;
  bytesReused: number;
  updatedFrom?: string;
  previousDir?: string;
  adminUser?: string;
  rdp: string;
  web: string;
  checks: Check[];
  warnings: string[];
  started: boolean;
  /** --lazy: 'serving' while the overlay still reads from the NBD socket, 'complete' once rebased */
  lazy?: 'serving' | 'complete';
  socket?: string;
}

/** DIR/install.json (what is installed, for --update) and the closing instructions. */
export const INSTALL_SCHEMA = 'orb-install/v1';

export interface InstallState {
  schema: typeof INSTALL_SCHEMA;
  reference: string;
  digest: string;
  /** relative to DIR */
  base: string;
  virtualSize: number;
  contentSha256: string;
  installedAt: string;
  build?: BuildInfo;
  previous?: { digest: string; dir: string; base: string };
  /** orb2 content root of a chunked v2 base (--lazy: from orb serve) */
  contentDigest?: string;
  /** --lazy, until the overlay is rebased onto the filled base (paths relative to DIR) */
  lazy?: { socket: string; cache: string };
}

export async function readInstallState(dir: string): Promise<InstallState | undefined> {
  const text = await readFile(join(dir, 'install.json'), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const s = JSON.parse(text) as InstallState;
  if (s.schema !== INSTALL_SCHEMA)
    throw new OrbError('input', `${join(dir, 'install.json')} is not an orb install record`);
  return s;
}

const short = (digest: string) => digest.slice(7, 19);

/** What to tell the user at the end. */
export function connectInstructions(r: InstallResult, passwordGiven: boolean): string {
  const compose = r.compose;
  const user = r.adminUser ?? 'the administrator account of the image';
  const pass = passwordGiven
    ? 'the one you gave (kept in windows.env, mode 0600)'
    : "the one set when the image was built (the build's admin-password output)";
  return [
    `Windows is installed in ${r.dir}${r.updatedFrom ? ` (updated from ${short(r.updatedFrom)}${r.previousDir ? `; the previous overlay is in ${r.previousDir}` : ''})` : ''}.`,
    r.started ? 'It is starting now.' : `Start it:    docker compose -f ${compose} up -d`,
    `Connect:     RDP to ${r.rdp}  (user: ${user}; password: ${pass})`,
    `             or open ${r.web} in a browser (console)`,
    `Stop it:     docker compose -f ${compose} down   (its disk, ${basename(r.overlay)}, keeps the changes)`,
  ].join('\n');
}
