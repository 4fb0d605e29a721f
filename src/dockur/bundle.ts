import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OrbError } from '../core/errors.js';
import { partialOutput } from '../core/fsutil.js';
import type { Progress } from '../core/progress.js';
import { flatten } from '../qemu/img.js';

/**
 * The /storage folder dockur/windows boots as an existing installation, without running Setup.
 * Learned from its scripts (src/install.sh, and qemus/qemu src/boot.sh, src/disk.sh):
 *
 * - The disk is `data.img` (raw) or `data.qcow2`; with DISK_FMT unset it picks qcow2 when
 *   data.qcow2 exists. It never shrinks a disk; a larger DISK_SIZE grows it.
 * - `windows.boot` (empty) marks "Windows has booted from this disk": with it and a disk present,
 *   dockur skips the installation (when no `windows.base` names a different ISO, so we write none).
 * - `windows.mode` is the boot mode: `windows` (UEFI), `windows_secure` (Secure Boot + TPM),
 *   `windows_legacy` (BIOS). Firmware files are `<mode>.rom` and `<mode>.vars` (OVMF code and
 *   the variable store with the Windows Boot Manager entry our build created).
 * - `windows.type` is the disk bus Windows was installed on (its boot driver must match):
 *   `blk` (virtio-blk), `scsi`, `sata`, `ide`, `nvme`. dockur's default is scsi, so it matters.
 * - `windows.ver` records the dockur release that made the install; releases before 2.14 are
 *   migrated to Secure Boot by old versions of the script, so it must hold a later number.
 *
 * A Secure Boot build also needs its TPM state in dockur's format (`windows_secure.tpm`, an
 * swtpm linear-file store), which differs from the directory swtpm keeps for us; it is left out,
 * and dockur starts a fresh TPM: fine for images without BitLocker or TPM-sealed keys.
 */
export type DockurDiskType = 'blk' | 'scsi' | 'sata' | 'ide' | 'nvme';
export type DockurMode = 'windows' | 'windows_secure' | 'windows_legacy';

/** The dockur release number we claim in windows.ver: any value of 2.14 or later means "modern layout". */
export const DOCKUR_LAYOUT_VERSION = '5.00';

export interface DockurBundleOptions {
  /** the finished disk (any format qemu-img reads; a qcow2 chain is flattened) */
  disk: string;
  outDir: string;
  /** data.img (raw, sparse) or data.qcow2 */
  format: 'raw' | 'qcow2';
  firmware: 'bios' | 'uefi' | 'uefi-secure';
  /** OVMF code and the build's variable store (UEFI builds) */
  uefiCode?: string;
  uefiVars?: string;
  diskType: DockurDiskType;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface DockurBundle {
  dir: string;
  files: string[];
  mode: DockurMode;
}

export function dockurMode(firmware: DockurBundleOptions['firmware']): DockurMode {
  return firmware === 'bios' ? 'windows_legacy' : firmware === 'uefi-secure' ? 'windows_secure' : 'windows';
}

/** Maps the build's disk interface (VM runner) to dockur's DISK_TYPE. */
export function dockurDiskType(iface: 'virtio' | 'sata' | 'ide' | 'nvme'): DockurDiskType {
  return iface === 'virtio' ? 'blk' : iface;
}

export async function writeDockurBundle(o: DockurBundleOptions): Promise<DockurBundle> {
  const mode = dockurMode(o.firmware);
  if (o.firmware !== 'bios' && (!o.uefiCode || !o.uefiVars)) {
    throw new OrbError(
      'internal',
      'a UEFI dockur bundle needs the firmware code and variable store of the build',
    );
  }
  const out = await partialOutput(o.outDir);
  try {
    await mkdir(out.partial, { recursive: true });
    const diskName = o.format === 'raw' ? 'data.img' : 'data.qcow2';
    await flatten(o.disk, join(out.partial, diskName), o.format, o.progress, o.signal);
    const files = [diskName];
    const put = async (name: string, text: string) => {
      await writeFile(join(out.partial, name), text);
      files.push(name);
    };
    await put('windows.boot', '');
    await put('windows.mode', `${mode}\n`);
    await put('windows.type', `${o.diskType}\n`);
    await put('windows.ver', `${DOCKUR_LAYOUT_VERSION}\n`);
    if (o.firmware !== 'bios') {
      await copyFile(o.uefiCode!, join(out.partial, `${mode}.rom`));
      await copyFile(o.uefiVars!, join(out.partial, `${mode}.vars`));
      files.push(`${mode}.rom`, `${mode}.vars`);
    }
    await out.commit();
    return { dir: o.outDir, files, mode };
  } catch (err) {
    await out.abort();
    throw err;
  }
}

/** The compose snippet users need to boot the bundle (DISK_TYPE pinned to what Windows was installed on). */
export function dockurEnv(
  b: { mode: DockurMode },
  diskType: DockurDiskType,
  format: 'raw' | 'qcow2',
): Record<string, string> {
  return {
    DISK_TYPE: diskType,
    DISK_FMT: format,
    ...(b.mode === 'windows_secure' ? { BOOT_MODE: 'windows_secure' } : {}),
  };
}
