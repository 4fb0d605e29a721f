import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { UsageError } from '../core/errors.js';
import { ORB_PS1 } from './scripts.js';
import { MEDIA_DIR, ORB_SCRIPT } from './unattend.js';

/**
 * Directory trees that become the small ISOs a Windows build attaches. Windows Setup finds
 * autounattend.xml at the root of any removable drive; orb's scripts live under orb\.
 */

/** Non-secret facts the answer media carries in orb/build.json. */
export interface AnswerInfo {
  family: string;
  computerName: string;
  adminUser: string;
}

/**
 * Standalone media (`orb unattend`, for dockur/windows, Packer or your own VM): the first logon
 * runs the scripts and the final clean-up itself instead of waiting for orb's later stages.
 */
export interface StandaloneOptions {
  scripts: readonly string[];
  sysprep: boolean;
  sysprepUnattendXml: string;
  /** power off at the end (a build tool waits for that); false leaves the session running */
  shutdown: boolean;
}

export async function writeAnswerMedia(
  dir: string,
  autounattendXml: string,
  info: AnswerInfo,
  standalone?: StandaloneOptions,
): Promise<void> {
  const orb = join(dir, MEDIA_DIR);
  await mkdir(orb, { recursive: true });
  await writeFile(join(dir, 'autounattend.xml'), autounattendXml, { mode: 0o600 });
  await writeFile(join(orb, ORB_SCRIPT), crlf(ORB_PS1));
  let build: Record<string, unknown> = { stage: 'install', ...info };
  if (standalone) {
    const names = await copyScripts(join(orb, 'scripts'), standalone.scripts);
    build = {
      ...build,
      standalone: true,
      scripts: names,
      sysprep: standalone.sysprep,
      shutdown: standalone.shutdown,
    };
    if (standalone.sysprep) await writeFile(join(orb, 'sysprep-unattend.xml'), standalone.sysprepUnattendXml);
  }
  await writeFile(join(orb, 'build.json'), JSON.stringify(build, null, 2) + '\n');
}

async function copyScripts(target: string, scripts: readonly string[]): Promise<string[]> {
  await mkdir(target, { recursive: true });
  const names = scripts.map((s, i) => stagedScriptName(i, s));
  for (const [i, s] of scripts.entries()) await copyFile(s, join(target, names[i]!));
  return names;
}

/** "01-install-tools.ps1": order is part of the name, and only safe characters remain. */
export function stagedScriptName(index: number, path: string): string {
  const safe = basename(path).replace(/[^A-Za-z0-9._-]/g, '_');
  return `${String(index + 1).padStart(2, '0')}-${safe}`;
}

export function checkScriptPaths(paths: readonly string[], ext: '.ps1' | '.sh' | null): void {
  for (const p of paths) {
    if (ext && !p.toLowerCase().endsWith(ext)) {
      throw new UsageError(
        `input 'script': ${p} is not a ${ext} file`,
        ext === '.ps1'
          ? 'Windows provisioning scripts are PowerShell files ending in .ps1 (wrap a .cmd in one)'
          : 'Linux provisioning scripts are shell scripts ending in .sh',
      );
    }
  }
}

/** Stage media for the provisioning boot: orb/stage.json plus the scripts, numbered in order. */
export async function writeProvisionMedia(dir: string, scripts: readonly string[]): Promise<string[]> {
  const names = await copyScripts(join(dir, MEDIA_DIR, 'scripts'), scripts);
  await writeFile(
    join(dir, MEDIA_DIR, 'stage.json'),
    JSON.stringify({ stage: 'provision', scripts: names }, null, 2) + '\n',
  );
  return names;
}

export interface FinalizeMedia {
  sysprep: boolean;
  user: string;
  /** the real admin password (the install used a throwaway one): on this media only, deleted after */
  password: string;
  /** also set the built-in Administrator (Server editions, where Setup required one) */
  builtinAdmin: boolean;
  sysprepUnattendXml?: string;
}

export async function writeFinalizeMedia(dir: string, m: FinalizeMedia): Promise<void> {
  const orb = join(dir, MEDIA_DIR);
  await mkdir(orb, { recursive: true });
  const stage = {
    stage: 'finalize',
    sysprep: m.sysprep,
    user: m.user,
    password: m.password,
    builtinAdmin: m.builtinAdmin,
  };
  await writeFile(join(orb, 'stage.json'), JSON.stringify(stage, null, 2) + '\n', { mode: 0o600 });
  if (m.sysprep && m.sysprepUnattendXml)
    await writeFile(join(orb, 'sysprep-unattend.xml'), m.sysprepUnattendXml);
}

/** Windows tools (and people opening the media in Notepad) prefer CRLF. */
function crlf(text: string): string {
  return text.replace(/\r?\n/g, '\r\n');
}
