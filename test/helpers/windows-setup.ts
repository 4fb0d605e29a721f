/**
 * Where Windows Setup and dockur/windows put files on C:, emulated on a directory tree, so tests
 * can check that orb's clean-up list (BUILD_TRACES) covers every copy of the answer file and of
 * orb's media. Learned from dockur/windows' scripts (src/answer.sh: /custom.xml, then
 * /storage/custom.xml, becomes Autounattend.xml at the setup media's root and UseConfigurationSet
 * is forced on; src/install.sh and src/image.sh: the /oem folder is copied into the media's
 * $OEM$\$1\OEM) and from Windows Setup's documented behaviour ($OEM$\$1 is copied to the system
 * drive, the answer file is cached in Panther, a configuration set goes to ConfigSetRoot).
 */
import { cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';

export interface DockurSetupInput {
  /** what is mounted as /custom.xml */
  customXml?: string;
  /** what is mounted as /oem */
  oemDir?: string;
}

/** Builds the C: drive a dockur/windows installation leaves, under `root`. */
export async function emulateDockurSetup(root: string, input: DockurSetupInput): Promise<void> {
  const media = join(root, '..', 'setup-media');
  await rm(media, { recursive: true, force: true });
  await mkdir(media, { recursive: true });
  if (input.customXml) await cp(input.customXml, join(media, 'Autounattend.xml'));
  if (input.oemDir) await cp(input.oemDir, join(media, '$OEM$', '$1', 'OEM'), { recursive: true });
  // Windows Setup: $OEM$\$1 onto the system drive, the answer file cached in Panther, the whole
  // configuration set (UseConfigurationSet=true, which dockur sets) into Windows\ConfigSetRoot.
  await mkdir(root, { recursive: true });
  await cp(join(media, '$OEM$', '$1'), root, { recursive: true }).catch(() => undefined);
  if (input.customXml) {
    await put(join(root, 'Windows', 'Panther', 'unattend.xml'), await readFile(input.customXml));
    await cp(media, join(root, 'Windows', 'ConfigSetRoot'), { recursive: true });
  }
  // orb.ps1's logs while it runs
  await put(join(root, 'ProgramData', 'orb', 'logs', 'orb.log'), 'ORB-STAGE install\n');
}

/** Applies a list of C:-relative Windows paths (files or folders) the way Remove-Item -Recurse does. */
export async function removeTraces(root: string, traces: readonly string[]): Promise<void> {
  for (const t of traces) await rm(join(root, ...t.split('\\')), { recursive: true, force: true });
}

export async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(relative(root, p));
    }
  };
  await walk(root);
  return out.sort();
}

async function put(path: string, data: string | Buffer): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, data);
}
