/**
 * A stand-in for a Windows installation ISO, for testing the build orchestration without
 * Windows. It boots from CD under BIOS (isolinux) and UEFI (an El Torito EFI image with
 * systemd-boot), waits at a boot prompt for a key exactly where Windows' "Press any key to boot
 * from CD or DVD" sits, finds the answer media (autounattend.xml + orb/), writes an "installed
 * system" onto the target disk, and powers off after what Windows' first logon does (ORB-DONE
 * installed). The installed system is a small Linux whose init plays orb.ps1's stage task: at
 * each boot it looks for stage media (orb/stage.json) and runs provision (the .ps1 files are
 * shell stand-ins) or finalize, leaving evidence on the disk at fixed offsets:
 *
 *   40 MiB  "ORB-INSTALLED computer=<name> answer=<file list>"
 *   41 MiB  "ORB-PROVISIONED <script names>"
 *   42 MiB  "ORB-FINAL sysprep=<true|false> password-sha256=<hex>"
 *   44 MiB  "C:", a tar archive (up to 4 MiB) standing in for the Windows volume: what Windows
 *           Setup leaves there (the answer file cached in Panther, the setup media's $OEM$\$1
 *           folder at the root, orb's ProgramData\orb), and at the final stage what orb.ps1's
 *           Remove-BuildTraces list (read from the real orb.ps1) leaves of it, plus sysprep's
 *           own secret-free answer file. Rewriting the region over zeros stands in for TRIM.
 *
 * Variants for the failure paths: 'hang' (silent forever), 'panic' (kernel panic, the screen
 * freezes), 'no-poweroff' (keeps printing, never finishes).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { buildBootDisk, buildInitramfs, guestKernel } from './guests.js';
import { cached, hostFileHash } from './initramfs.js';

const exec = promisify(execFile);
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1' };

export type InstallerVariant = 'install' | 'hang' | 'panic' | 'no-poweroff';

/** Byte offsets of the evidence records the fake installer and system write to the target disk. */
export const EVIDENCE = { installed: 40 << 20, provisioned: 41 << 20, final: 42 << 20 } as const;
/** Where the stand-in for C: (a tar archive) sits on the target disk, and its size. */
export const C_DRIVE = { offset: 44 << 20, size: 4 << 20 } as const;

// The stand-in for C: and orb.ps1's final clean-up. Written raw: no JavaScript escapes inside.
const C_DRIVE_SH = String.raw`
load_c() {
  rm -rf /tmp/c; mkdir -p /tmp/c
  dd if="$target" bs=1M skip=44 count=4 2>/dev/null | tar -x -C /tmp/c 2>/dev/null
  return 0
}
save_c() {
  dd if=/dev/zero of="$target" bs=1M seek=44 count=4 conv=notrunc,fsync 2>/dev/null
  (cd /tmp/c && tar -c .) | dd of="$target" bs=1M seek=44 conv=notrunc,fsync 2>/dev/null
}
# clean_c ORB_PS1: removes from C: what that orb.ps1's Remove-BuildTraces removes (its list).
clean_c() {
  list=$(tr -d '\r' < "$1" | sed -n '/^function Remove-BuildTraces/,/^}/p' | sed -n 's/.*foreach (\$t in @(\(.*\))) {.*/\1/p' | head -n 1)
  [ -n "$list" ] || { echo "ORB-FAIL finalize: no Remove-BuildTraces list in orb.ps1"; return 1; }
  echo "$list" | tr ',' '\n' | sed "s/^ *'//; s/' *$//" | tr '\\' '/' > /tmp/traces
  while IFS= read -r t; do
    case "$t" in ''|*..*|/*) continue ;; esac
    rm -rf "/tmp/c/$t"
  done < /tmp/traces
  echo "ORB-GUEST: removed $(wc -l < /tmp/traces) build trace paths"
}
`;

// The module list (with dependencies) is the one orb demo's cloud image uses.
import { storageModules } from '../../src/guest/cloud.js';
export { storageModules };

/** Shell shared by the installer and the installed system: set-up, module loading, finding media. */
export function guestPrelude(modules: string[]): string {
  const names = modules.map((m) => m.split('/').pop()!);
  return `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ${names.join(' ')}; do insmod /lib/modules/$m 2>/dev/null; done
i=0
while [ $i -lt 40 ] && ! ls /dev/sr0 >/dev/null 2>&1; do sleep 0.5; i=$((i + 1)); done
sleep 1
# target disk: the first non-CD disk
target=
for d in /dev/vda /dev/sda /dev/nvme0n1; do [ -b "$d" ] && { target=$d; break; }; done
# mount_media FILE: mounts the CD that has FILE at /media/<sr> and prints that directory
mount_media() {
  for d in /dev/sr*; do
    [ -b "$d" ] || continue
    m=/media/\${d##*/}
    mkdir -p "$m"
    grep -q " $m " /proc/mounts || mount -t iso9660 -o ro "$d" "$m" 2>/dev/null || continue
    [ -e "$m/$1" ] && { echo "$m"; return 0; }
  done
  return 1
}
evidence() { printf '%s\\n' "$2" | dd of="$target" bs=1M seek="$1" conv=notrunc,fsync 2>/dev/null; }
${C_DRIVE_SH}`;
}

export const INSTALLER_MAIN = `
variant=$(sed -n 's/.*orb.installer=\\([a-z-]*\\).*/\\1/p' /proc/cmdline)
echo "ORB-GUEST: fake Windows installer ($variant)"
case "$variant" in
  hang) while :; do sleep 3600; done ;;
  panic) echo "ORB-GUEST: crashing the kernel"; echo c > /proc/sysrq-trigger; while :; do sleep 3600; done ;;
  no-poweroff) while :; do echo "ORB-GUEST: still installing"; sleep 2; done ;;
esac
# Windows Setup reads autounattend.xml (any case) at the root of a drive; dockur/windows names it
# Autounattend.xml. orb's script is in orb\\ on that drive, or in C:\\OEM (dockur's $OEM$\\$1\\OEM).
answer=$(mount_media autounattend.xml) || answer=$(mount_media Autounattend.xml) || { echo "ORB-FAIL install: no answer media (autounattend.xml) found"; poweroff -f; }
xml=$answer/autounattend.xml
[ -f "$xml" ] || xml=$answer/Autounattend.xml
media=$(mount_media system.img.gz) || { echo "ORB-FAIL install: installation media not found"; poweroff -f; }
[ -n "$target" ] || { echo "ORB-FAIL install: no target disk"; poweroff -f; }
orbdir=$answer/orb
[ -f "$orbdir/orb.ps1" ] || orbdir="$answer/\\$OEM\\$/\\$1/OEM"
[ -f "$orbdir/orb.ps1" ] || { echo "ORB-FAIL install: orb/orb.ps1 missing on the answer media"; poweroff -f; }
computer=$(sed -n 's/.*"computerName": *"\\([^"]*\\)".*/\\1/p' "$orbdir/build.json")
echo "ORB-GUEST: answer media at $answer, installing to $target"
gunzip -c "$media/system.img.gz" | dd of="$target" bs=1M conv=fsync 2>/dev/null
files=$(cd "$answer" && find . -type f | sort | tr '\\n' ' ')
evidence 40 "ORB-INSTALLED computer=$computer answer=$files"
# What Setup and the first logon leave on C:.
load_c
mkdir -p /tmp/c/Windows/Panther /tmp/c/ProgramData/orb/logs
cp "$xml" /tmp/c/Windows/Panther/unattend.xml
[ -d "$answer/\\$OEM\\$/\\$1" ] && cp -r "$answer/\\$OEM\\$/\\$1/." /tmp/c/
cp "$orbdir/orb.ps1" /tmp/c/ProgramData/orb/orb.ps1
echo "ORB-STAGE install" > /tmp/c/ProgramData/orb/logs/orb.log
if grep -q '"standalone": *true' "$orbdir/build.json"; then
  # orb unattend media: the first logon also provisions and finalizes (orb.ps1 -Mode firstlogon).
  echo "ORB-STAGE finalize"
  clean_c "$orbdir/orb.ps1" || { sync; poweroff -f; }
  if grep -q '"sysprep": *true' "$orbdir/build.json"; then
    mkdir -p /tmp/c/Windows/Panther
    cp "$orbdir/sysprep-unattend.xml" /tmp/c/Windows/Panther/unattend.xml
  fi
  save_c
  echo "ORB-DONE finalized"
  sync
  poweroff -f
fi
save_c
# What Windows does at its first logon (orb.ps1 -Mode firstlogon).
echo "ORB-STAGE install"
echo "ORB-DONE installed"
sync
poweroff -f
`;

export const SYSTEM_MAIN = `
echo "ORB-GUEST: installed system booted from $target"
stage_dir=$(mount_media orb/stage.json) || { echo "ORB-GUEST: no stage media; idle"; while :; do sleep 3600; done; }
json="$stage_dir/orb/stage.json"
stage=$(sed -n 's/.*"stage": *"\\([a-z]*\\)".*/\\1/p' "$json")
case "$stage" in
  provision)
    echo "ORB-STAGE provision"
    n=0
    names=
    for s in $(grep -o '"[0-9][0-9]-[^"]*"' "$json" | tr -d '"'); do
      n=$((n + 1))
      echo "ORB-SCRIPT-BEGIN $n $s"
      sh "$stage_dir/orb/scripts/$s" > /tmp/out 2>&1
      code=$?
      cat /tmp/out
      echo "ORB-SCRIPT-END $n $code"
      [ "$code" = 0 ] || { echo "ORB-FAIL provision: script $s exited with code $code"; sync; poweroff -f; }
      names="$names $s"
    done
    evidence 41 "ORB-PROVISIONED$names"
    echo "ORB-DONE provisioned" ;;
  finalize)
    echo "ORB-STAGE finalize"
    sysprep=$(sed -n 's/.*"sysprep": *\\([a-z]*\\).*/\\1/p' "$json")
    pw=$(sed -n 's/.*"password": *"\\([^"]*\\)".*/\\1/p' "$json")
    # orb.ps1's final clean-up, with the list from the orb.ps1 the first logon installed
    load_c
    cp /tmp/c/ProgramData/orb/orb.ps1 /tmp/orb.ps1 || { echo "ORB-FAIL finalize: no orb.ps1 on C:"; sync; poweroff -f; }
    clean_c /tmp/orb.ps1 || { sync; poweroff -f; }
    if [ "$sysprep" = true ]; then
      # sysprep caches its own (secret-free) answer file for the clones' first boot
      mkdir -p /tmp/c/Windows/Panther
      cp "$stage_dir/orb/sysprep-unattend.xml" /tmp/c/Windows/Panther/unattend.xml
    fi
    save_c
    sum=$(printf '%s' "$pw" | sha256sum | cut -c1-64)
    evidence 42 "ORB-FINAL sysprep=$sysprep password-sha256=$sum"
    if [ "$sysprep" = true ]; then echo "ORB-DONE generalized"; else echo "ORB-DONE finalized"; fi ;;
  *) echo "ORB-FAIL unknown stage '$stage'" ;;
esac
sync
poweroff -f
`;

const APPEND = 'console=tty0 console=ttyS0,115200 loglevel=4';
// Debian packages isolinux and systemd-boot-efi (see .ci/run).
const SYSTEMD_BOOT = '/usr/lib/systemd/boot/efi/systemd-bootx64.efi';

async function systemImageGz(modules: string[]): Promise<Buffer> {
  const initrd = await buildInitramfs({ init: guestPrelude(modules) + SYSTEM_MAIN, modules });
  const disk = await buildBootDisk({ initrd, append: APPEND, sizeMiB: 24, label: 'ORBSYSTEM' });
  return gzipSync(await readFile(disk), { level: 6 });
}

/** Builds (or takes from the test cache) the fake installation ISO for a variant. */
export async function buildInstallerIso(variant: InstallerVariant): Promise<string> {
  const modules = storageModules();
  const initrd = await buildInitramfs({ init: guestPrelude(modules) + INSTALLER_MAIN, modules });
  const kernel = guestKernel().path;
  // The prompt: wait forever until a key (the orchestration presses Enter), like Windows' CD boot.
  const cfg = [
    'SERIAL 0 115200',
    'PROMPT 1',
    'TIMEOUT 0',
    'DEFAULT install',
    'SAY Press Enter to boot the orb test installer',
    'LABEL install',
    '  LINUX /vmlinuz',
    '  INITRD /initrd.img',
    `  APPEND ${APPEND} orb.installer=${variant}`,
    '',
  ].join('\n');
  const system = variant === 'install' ? await systemImageGz(modules) : undefined;
  const recipe = {
    variant,
    cfg,
    kernel: hostFileHash(kernel),
    initrd: hostFileHash(initrd),
    system: system ? createHash('sha256').update(system).digest('hex') : null,
    boot: [hostFileHash('/usr/lib/ISOLINUX/isolinux.bin'), hostFileHash(SYSTEMD_BOOT)],
  };
  return cached('installer', recipe, '.iso', async (iso) => {
    const work = await mkdtemp(join(tmpdir(), 'orb-installer-'));
    try {
      const root = join(work, 'root');
      await mkdir(join(root, 'isolinux'), { recursive: true });
      await copyFile('/usr/lib/ISOLINUX/isolinux.bin', join(root, 'isolinux/isolinux.bin'));
      await copyFile('/usr/lib/syslinux/modules/bios/ldlinux.c32', join(root, 'isolinux/ldlinux.c32'));
      await writeFile(join(root, 'isolinux/isolinux.cfg'), cfg);
      await copyFile(kernel, join(root, 'vmlinuz'));
      await copyFile(initrd, join(root, 'initrd.img'));
      if (system) await writeFile(join(root, 'system.img.gz'), system);
      // UEFI: El Torito boot image = a FAT image with systemd-boot (syslinux.efi cannot boot from
      // El Torito), whose menu waits for a key like Windows' CD prompt, plus kernel and initrd.
      const efi = join(root, 'efiboot.img');
      await exec('truncate', ['-s', '24M', efi]);
      await exec('mkfs.fat', ['-n', 'ORBEFI', efi]);
      await exec('mmd', ['-i', efi, '::/EFI', '::/EFI/BOOT', '::/loader', '::/loader/entries'], {
        env: MTOOLS_ENV,
      });
      const loaderConf = join(work, 'loader.conf');
      await writeFile(loaderConf, 'timeout menu-force\ndefault install.conf\n');
      const entry = join(work, 'install.conf');
      await writeFile(
        entry,
        `title orb test installer\nlinux /vmlinuz\ninitrd /initrd.img\noptions ${APPEND} orb.installer=${variant}\n`,
      );
      for (const [src, dest] of [
        [SYSTEMD_BOOT, '/EFI/BOOT/BOOTX64.EFI'],
        [loaderConf, '/loader/loader.conf'],
        [entry, '/loader/entries/install.conf'],
        [kernel, '/vmlinuz'],
        [initrd, '/initrd.img'],
      ] as const) {
        await exec('mcopy', ['-o', '-i', efi, src, `::${dest}`], { env: MTOOLS_ENV });
      }
      await exec('xorriso', [
        '-as',
        'mkisofs',
        '-quiet',
        '-o',
        iso,
        '-V',
        'ORB_FAKE_WINDOWS',
        '-J',
        '-r',
        '-b',
        'isolinux/isolinux.bin',
        '-c',
        'isolinux/boot.cat',
        '-no-emul-boot',
        '-boot-load-size',
        '4',
        '-boot-info-table',
        '-eltorito-alt-boot',
        '-e',
        'efiboot.img',
        '-no-emul-boot',
        root,
      ]);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}

/** Reads an evidence record (one line of text) from a disk image at `offset` (any format qemu-img reads). */
export async function readEvidence(image: string, offset: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'orb-evidence-'));
  try {
    const raw = join(dir, 'disk.raw');
    await exec('qemu-img', ['convert', '-U', '-O', 'raw', image, raw]);
    const fh = await open(raw, 'r');
    const buf = Buffer.alloc(4096);
    await fh.read(buf, 0, buf.length, offset);
    await fh.close();
    const end = buf.indexOf(0x0a);
    return buf.subarray(0, end < 0 ? 0 : end).toString('utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The files of the stand-in C: drive on a disk image (any format qemu-img reads): relative path
 * (with '/') to content.
 */
export async function readCDrive(image: string): Promise<Map<string, Buffer>> {
  const dir = await mkdtemp(join(tmpdir(), 'orb-cdrive-'));
  try {
    const raw = join(dir, 'disk.raw');
    await exec('qemu-img', ['convert', '-U', '-O', 'raw', image, raw]);
    const fh = await open(raw, 'r');
    const buf = Buffer.alloc(C_DRIVE.size);
    await fh.read(buf, 0, buf.length, C_DRIVE.offset);
    await fh.close();
    await rm(raw);
    const files = new Map<string, Buffer>();
    if (buf.subarray(0, 512).every((b) => b === 0)) return files;
    await writeFile(join(dir, 'c.tar'), buf);
    await mkdir(join(dir, 'c'));
    await exec('tar', ['-x', '-f', join(dir, 'c.tar'), '-C', join(dir, 'c')]);
    const walk = async (d: string, rel: string): Promise<void> => {
      for (const e of await readdir(d, { withFileTypes: true })) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(join(d, e.name), r);
        else files.set(r, await readFile(join(d, e.name)));
      }
    };
    await walk(join(dir, 'c'), '');
    return files;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Runs an orb command in this process the way the CLI does (secret inputs masked, every log
 * line through redact()), keeping the log lines for assertions about secrets.
 */
export async function runCommandInProcess(
  cmd: import('../../src/core/command.js').CommandDef,
  raw: import('../../src/core/inputs.js').RawInputs,
): Promise<{ outputs: import('../../src/core/command.js').Outputs; log: string[]; summary: string }> {
  const { Inputs, Summary } = await import('../../src/core/command.js');
  const { resolveInputs } = await import('../../src/core/inputs.js');
  const { mask, redact } = await import('../../src/core/log.js');
  const { nullProgress } = await import('../../src/core/progress.js');
  const values = resolveInputs(cmd.inputs, raw);
  for (const s of cmd.inputs)
    if (s.secret && typeof values[s.name] === 'string') mask(values[s.name] as string);
  const log: string[] = [];
  const put = (m: string) => log.push(redact(m));
  const summary = new Summary();
  const outputs = await cmd
    .run(new Inputs(values, cmd.inputs), {
      log: { info: put, warn: put, error: put, debug: put },
      progress: () => nullProgress,
      summary,
      mask,
      signal: new AbortController().signal,
      mode: 'cli',
    })
    .catch((err: unknown) => {
      Object.assign(err as object, { log });
      throw err;
    });
  return { outputs, log, summary: summary.markdown };
}
