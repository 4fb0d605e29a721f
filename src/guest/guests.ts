/**
 * Tiny bootable guests (the test suite's, and the image `orb demo` builds), built without root and without network from Debian's kernel and
 * busybox-static, cached under $ORB_TEST_CACHE keyed by a hash of the recipe.
 *
 * One initramfs serves every standard variant; the variant is picked by `orb.variant=<name>` on
 * the kernel command line (the boot disk's syslinux.cfg for BIOS and systemd-boot entry for UEFI,
 * or `append` for direct kernel boot). UEFI boots need at least ~160 MiB of guest RAM (use 192).
 *   rdp       boot marker, eth0 = 10.0.2.15/24 (slirp), answers TCP 3389 with an X.224 Connection
 *             Confirm carrying RDP_NEG_RSP (standard RDP), for every connection
 *   silent    boot marker, then idles (no network, ignores the ACPI power button)
 *   acpi      boot marker, then powers off when the ACPI power button is pressed (acpid)
 *   poweroff  boot marker, then powers off
 *   noboot    (disk only) the bootloader finds no kernel: nothing useful on serial
 * More variants: pass `variants: { name: 'shell script' }`; the script runs under busybox sh after
 * the standard set-up and may use the helpers of the init: `orb_net_up` (e1000 + 10.0.2.15/24),
 * `orb_rdp_serve` (background RDP answerer), `orb_http_serve PORT DIR` (busybox httpd,
 * background), `orb_wait_listen PORT` (until a TCP listener is up, max 10 s), `orb_marker TEXT`
 * (prints `ORB-GUEST: TEXT` on the serial console).
 *
 * Disk images come from a shared cache: boot them with `snapshot: true` (or copy them) so the
 * cached file is never modified.
 */

/** Serial console markers the standard init prints (each on its own line). */
export const GUEST_MARKERS = {
  /** printed first, as `ORB-GUEST-BOOT variant=<name>` */
  boot: 'ORB-GUEST-BOOT',
  /** eth0 is up with 10.0.2.15 */
  netUp: 'ORB-GUEST-NET-UP',
  /** the RDP answerer is listening on 3389 */
  rdpListening: 'ORB-GUEST-RDP-LISTENING',
  /** about to power off (poweroff variant) */
  poweringOff: 'ORB-GUEST-POWEROFF',
  /** prefix of orb_marker lines */
  custom: 'ORB-GUEST:',
} as const;

export type GuestVariant = 'rdp' | 'silent' | 'acpi' | 'poweroff' | 'noboot' | (string & {});

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { OrbError } from '../core/errors.js';
import { buildInitramfs, cached, fileData, guestKernel, hostFileHash, type GuestFile } from './initramfs.js';

export type { GuestFile, InitramfsOptions } from './initramfs.js';
export { buildInitramfs, guestKernel, guestCacheDir } from './initramfs.js';

const exec = promisify(execFile);

/** The bytes the RDP answerer sends: TPKT + X.224 Connection Confirm + RDP_NEG_RSP(PROTOCOL_RDP). */
export const RDP_CONNECTION_CONFIRM = Buffer.from(
  '03000013' + // TPKT v3, length 19
    '0ed00000123400' + // X.224 CC: LI 14, dst-ref 0, src-ref 0x1234, class 0
    '0200080000000000', // RDP_NEG_RSP, flags 0, length 8, selectedProtocol PROTOCOL_RDP (0)
  'hex',
);

/** A minimal X.224 Connection Request with an RDP_NEG_REQ (what a client sends first). */
export const RDP_CONNECTION_REQUEST = Buffer.from(
  '03000013' + // TPKT v3, length 19
    '0ee00000000000' + // X.224 CR: LI 14, dst-ref 0, src-ref 0, class 0
    '0100080003000000', // RDP_NEG_REQ, flags 0, length 8, requestedProtocols TLS|HYBRID
  'hex',
);

const MODULES = [
  'drivers/net/ethernet/intel/e1000/e1000.ko',
  'drivers/input/evdev.ko',
  'drivers/acpi/button.ko',
];

/**
 * The standard /init. The RDP answerer checks the request is a TPKT-framed X.224 Connection
 * Request (first byte 03, code E0), reads the whole packet (closing with unread data would reset
 * the connection and could drop our reply), answers, then holds the connection until the client
 * closes it, as a server waiting for the next PDU would.
 */
const STANDARD_INIT = `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
orb_marker() { echo "${GUEST_MARKERS.custom} $*"; }
orb_net_up() {
  insmod /lib/modules/e1000.ko 2>/dev/null
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  ip link set lo up
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
  echo "${GUEST_MARKERS.netUp} $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
}
orb_wait_listen() {
  i=0
  while ! netstat -ltn 2>/dev/null | grep -q ":$1 "; do sleep 0.1; i=$((i+1)); [ $i -gt 100 ] && break; done
}
orb_rdp_serve() {
  nc -ll -p 3389 -e /bin/orb-rdp-reply &
  orb_wait_listen 3389
  echo "${GUEST_MARKERS.rdpListening}"
}
orb_http_serve() {
  httpd -p "$1" -h "$2"
  orb_wait_listen "$1"
  orb_marker "http-listening $1"
}
variant=
for w in $(cat /proc/cmdline); do
  case "$w" in orb.variant=*) variant="\${w#orb.variant=}" ;; esac
done
tpm=no
[ -e /dev/tpm0 ] && tpm=yes
echo "${GUEST_MARKERS.boot} variant=$variant tpm=$tpm"
case "$variant" in
  rdp) orb_net_up; orb_rdp_serve ;;
  silent) ;;
  acpi)
    insmod /lib/modules/evdev.ko 2>/dev/null
    insmod /lib/modules/button.ko 2>/dev/null
    i=0
    while ! grep -q 'Name="Power Button"' /proc/bus/input/devices && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    acpid -c /etc/acpi -l /tmp/acpid.log
    sleep 1
    orb_marker "acpi-ready" ;;
  poweroff) echo "${GUEST_MARKERS.poweringOff}"; sync; poweroff -f ;;
  *)
    if [ -f "/etc/orb/variants/$variant.sh" ]; then . "/etc/orb/variants/$variant.sh"
    else orb_marker "unknown variant '$variant'"; fi ;;
esac
# PID 1 must never exit (the kernel would panic); idle, ignoring the ACPI power button.
while true; do sleep 3600; done
`;

const RDP_REPLY = `#!/bin/sh
hdr=$(dd bs=1 count=6 2>/dev/null | od -An -tx1 | tr -d ' \\n')
case "$hdr" in
  0300??????e0) ;;
  *) exit 0 ;;
esac
len=$((0x$(echo "$hdr" | cut -c5-8)))
[ "$len" -gt 6 ] && dd bs=1 count=$((len - 6)) of=/dev/null 2>/dev/null
cat /etc/orb/rdp-cc.bin
cat >/dev/null
`;

export interface GuestInitramfsOptions {
  /** extra variants: name -> busybox sh script run by the standard init */
  variants?: Record<string, string>;
  /** extra files, as for buildInitramfs */
  files?: Record<string, GuestFile>;
  /** extra kernel modules (relative to /lib/modules/<version>/kernel), loaded by the variant */
  modules?: string[];
}

/** The standard test-guest initramfs (all standard variants plus `variants`). Returns the cached path. */
export function buildGuestInitramfs(opts: GuestInitramfsOptions = {}): Promise<string> {
  const files: Record<string, GuestFile> = {
    '/bin/orb-rdp-reply': { data: RDP_REPLY, mode: 0o755 },
    '/etc/orb/rdp-cc.bin': RDP_CONNECTION_CONFIRM,
    // busybox acpid runs /etc/acpi/<action> for the power button's PWRF/00000080 event
    '/etc/acpi/PWRF/00000080': {
      data: `#!/bin/sh\necho ${GUEST_MARKERS.poweringOff} acpi\nsync\npoweroff -f\n`,
      mode: 0o755,
    },
    ...opts.files,
  };
  for (const [name, script] of Object.entries(opts.variants ?? {})) {
    if (!/^[a-z0-9][a-z0-9_-]*$/i.test(name)) throw new Error(`bad variant name '${name}'`);
    files[`/etc/orb/variants/${name}.sh`] = script;
  }
  return buildInitramfs({ init: STANDARD_INIT, files, modules: [...MODULES, ...(opts.modules ?? [])] });
}

/** Kernel command line for a variant: serial console on ttyS0 plus `orb.variant=<name>` and `extra`. */
export function guestAppend(variant: GuestVariant, extra = ''): string {
  return `console=ttyS0,115200 quiet panic=-1 orb.variant=${variant}${extra ? ' ' + extra : ''}`;
}

/** Everything startVm needs for a direct kernel boot of a variant (no disk needed). */
export async function guestKernelBoot(
  variant: GuestVariant,
  opts: GuestInitramfsOptions = {},
): Promise<{ kernel: string; initrd: string; append: string }> {
  return {
    kernel: guestKernel().path,
    initrd: await buildGuestInitramfs(opts),
    append: guestAppend(variant),
  };
}

/** The boot disk of a standard (or extra) variant; 'noboot' has no kernel. Returns the cached path. */
export async function testGuestDisk(
  variant: GuestVariant,
  opts: GuestInitramfsOptions = {},
): Promise<string> {
  if (variant === 'noboot') return buildBootDisk({ kernel: null, append: guestAppend(variant) });
  return buildBootDisk({ initrd: await buildGuestInitramfs(opts), append: guestAppend(variant) });
}

export interface BootDiskOptions {
  /** kernel to boot; default Debian's; null makes a disk whose bootloader finds no kernel */
  kernel?: string | null;
  initrd?: string;
  /** kernel command line */
  append?: string;
  /** image size, default 48 MiB */
  sizeMiB?: number;
  /** extra files on the FAT file system by path ('/data/x.txt') */
  files?: Record<string, GuestFile>;
  /** FAT volume label, default ORBGUEST */
  label?: string;
}

// UEFI: systemd-boot (small, no dependencies, loads the kernel's EFI stub and hands over the initrd).
// syslinux.efi was tried first and is unusable: it crashes (#UD) or fails to allocate memory
// depending on the guest's RAM size.
const SYSTEMD_BOOT = '/usr/lib/systemd/boot/efi/systemd-bootx64.efi';
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1', MTOOLS_NO_VFAT: '0' };

async function mcopy(image: string, src: string, dest: string): Promise<void> {
  await exec('mcopy', ['-o', '-i', image, src, `::${dest}`], { env: MTOOLS_ENV });
}

/**
 * A raw disk image that is one FAT file system without a partition table ("superfloppy"):
 * syslinux's boot sector for BIOS (SeaBIOS runs sector 0) and \EFI\BOOT\BOOTX64.EFI =
 * systemd-boot with one loader entry for UEFI (OVMF reads FAT on an unpartitioned disk).
 * Returns the cached path.
 */
export function buildBootDisk(opts: BootDiskOptions): Promise<string> {
  const kernel = opts.kernel === undefined ? guestKernel().path : opts.kernel;
  const sizeMiB = opts.sizeMiB ?? 48;
  const label = (opts.label ?? 'ORBGUEST').toUpperCase().slice(0, 11);
  const cfg = [
    'SERIAL 0 115200',
    'DEFAULT orb',
    'PROMPT 0',
    'TIMEOUT 0',
    'LABEL orb',
    `  LINUX /${kernel ? 'vmlinuz' : 'no-kernel-here'}`,
    ...(opts.initrd ? ['  INITRD /initrd.img'] : []),
    ...(opts.append ? [`  APPEND ${opts.append}`] : []),
    '',
  ].join('\n');
  const entry = [
    'title orb test guest',
    `linux /${kernel ? 'vmlinuz' : 'no-kernel-here'}`,
    ...(opts.initrd ? ['initrd /initrd.img'] : []),
    ...(opts.append ? [`options ${opts.append}`] : []),
    '',
  ].join('\n');
  const loader = 'default orb.conf\ntimeout 0\neditor no\n';
  if (!existsSync(SYSTEMD_BOOT)) {
    throw new OrbError('environment', `${SYSTEMD_BOOT} is missing`, {
      hint: "install the Debian package 'systemd-boot-efi'",
    });
  }
  const recipe = {
    kernel: kernel ? hostFileHash(kernel) : null,
    initrd: opts.initrd ? hostFileHash(opts.initrd) : null,
    cfg,
    entry,
    loader,
    sizeMiB,
    label,
    files: opts.files ?? {},
    boot: [hostFileHash(SYSTEMD_BOOT), hostFileHash('/usr/lib/syslinux/modules/bios/ldlinux.c32')],
  };
  return cached('bootdisk', recipe, '.img', async (img) => {
    const work = await mkdtemp(join(tmpdir(), 'orb-bootdisk-'));
    try {
      await exec('truncate', ['-s', `${sizeMiB}M`, img]);
      await exec('mkfs.fat', ['-n', label, img]);
      // The mtools flavour of syslinux: writes the boot sector and ldlinux.sys/.c32 into the
      // image file without mounting it (no root).
      await exec('syslinux', ['--install', img], { env: MTOOLS_ENV });
      const cfgPath = join(work, 'syslinux.cfg');
      await writeFile(cfgPath, cfg);
      await exec('mmd', ['-i', img, '::/EFI', '::/EFI/BOOT', '::/loader', '::/loader/entries'], {
        env: MTOOLS_ENV,
      });
      await mcopy(img, cfgPath, '/syslinux.cfg');
      await mcopy(img, SYSTEMD_BOOT, '/EFI/BOOT/BOOTX64.EFI');
      const entryPath = join(work, 'orb.conf');
      await writeFile(entryPath, entry);
      await mcopy(img, entryPath, '/loader/entries/orb.conf');
      const loaderPath = join(work, 'loader.conf');
      await writeFile(loaderPath, loader);
      await mcopy(img, loaderPath, '/loader/loader.conf');
      if (kernel) await mcopy(img, kernel, '/vmlinuz');
      if (opts.initrd) await mcopy(img, opts.initrd, '/initrd.img');
      for (const [path, f] of Object.entries(opts.files ?? {})) {
        const local = join(work, 'f', path);
        await mkdir(dirname(local), { recursive: true });
        await writeFile(local, fileData(f).data);
        const parts = path.split('/').filter(Boolean);
        for (let i = 1; i < parts.length; i++) {
          await exec('mmd', ['-D', 's', '-i', img, `::/${parts.slice(0, i).join('/')}`], {
            env: MTOOLS_ENV,
          }).catch(() => undefined);
        }
        await mcopy(img, local, '/' + parts.join('/'));
      }
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
}
