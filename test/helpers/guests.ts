/**
 * Tiny bootable test guests, built without root and without network from Debian's kernel and
 * busybox-static, cached under $ORB_TEST_CACHE keyed by a hash of the recipe.
 *
 * One initramfs serves every standard variant; the variant is picked by `orb.variant=<name>` on
 * the kernel command line (the boot disk's syslinux config, or `append` for direct kernel boot):
 *   rdp       boot marker, eth0 = 10.0.2.15/24 (slirp), answers TCP 3389 with an X.224 Connection
 *             Confirm carrying RDP_NEG_RSP (standard RDP), for every connection
 *   silent    boot marker, then idles (no network, ignores the ACPI power button)
 *   poweroff  boot marker, then powers off
 *   noboot    (disk only) the bootloader finds no kernel: nothing useful on serial
 * More variants: pass `variants: { name: 'shell script' }`; the script runs under busybox sh after
 * the standard set-up and may use the helpers of the init: `orb_net_up` (e1000 + 10.0.2.15/24),
 * `orb_rdp_serve` (background RDP answerer), `orb_http_serve PORT DIR` (busybox httpd,
 * background), `orb_marker TEXT` (prints `ORB-GUEST: TEXT` on the serial console).
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

export type GuestVariant = 'rdp' | 'silent' | 'poweroff' | 'noboot' | (string & {});

/** File content for an initramfs or a disk: text, bytes, or either with a mode (default 0644). */
export type GuestFile = string | Buffer | { data: string | Buffer; mode?: number };

/** The bytes the RDP answerer sends: TPKT + X.224 Connection Confirm + RDP_NEG_RSP(PROTOCOL_RDP). */
export declare const RDP_CONNECTION_CONFIRM: Buffer;
/** A minimal X.224 Connection Request with an RDP_NEG_REQ (what a client sends first). */
export declare const RDP_CONNECTION_REQUEST: Buffer;

/** $ORB_TEST_CACHE, falling back to /work/main/.cache (created when missing). */
export declare function testCacheDir(): string;

/** Debian's kernel image (/boot/vmlinuz-*) and its version (for /lib/modules/<version>). */
export declare function guestKernel(): { path: string; version: string };

export interface InitramfsOptions {
  /** /init: a busybox sh script (a `#!/bin/sh` line is added when missing) */
  init: string;
  /** extra files by absolute guest path ('/etc/x.conf'); parent directories are created */
  files?: Record<string, GuestFile>;
  /** kernel modules to include, relative to /lib/modules/<version>/kernel (e.g. 'drivers/net/ethernet/intel/e1000/e1000.ko'); placed in /lib/modules/ */
  modules?: string[];
}

/**
 * A gzip-compressed cpio (newc) initramfs with busybox-static (/bin/busybox plus applet links in
 * /bin and /sbin), /dev/console, the given /init and files. Returns the cached path.
 */
export declare function buildInitramfs(opts: InitramfsOptions): Promise<string>;

export interface GuestInitramfsOptions {
  /** extra variants: name -> busybox sh script run by the standard init */
  variants?: Record<string, string>;
  /** extra files, as for buildInitramfs */
  files?: Record<string, GuestFile>;
}

/** The standard test-guest initramfs (all standard variants plus `variants`). Returns the cached path. */
export declare function buildGuestInitramfs(opts?: GuestInitramfsOptions): Promise<string>;

/** Kernel command line for a variant: serial console on ttyS0 plus `orb.variant=<name>` and `extra`. */
export declare function guestAppend(variant: GuestVariant, extra?: string): string;

/** Everything startVm needs for a direct kernel boot of a variant (no disk needed). */
export declare function guestKernelBoot(
  variant: GuestVariant,
  opts?: GuestInitramfsOptions,
): Promise<{ kernel: string; initrd: string; append: string }>;

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

/**
 * A raw disk image with one FAT file system carrying syslinux, bootable under BIOS (SeaBIOS)
 * and UEFI (OVMF, \EFI\BOOT\BOOTX64.EFI = syslinux.efi). Returns the cached path.
 */
export declare function buildBootDisk(opts: BootDiskOptions): Promise<string>;

/** The boot disk of a standard (or extra) variant; 'noboot' has no kernel. Returns the cached path. */
export declare function testGuestDisk(variant: GuestVariant, opts?: GuestInitramfsOptions): Promise<string>;

export interface Ext4DiskOptions {
  /** total image size in MiB */
  sizeMiB: number;
  /** files to put in the file system by path */
  files?: Record<string, GuestFile>;
  /** additionally write this many MiB of pseudo-random (incompressible, deterministic) data in /fill.bin */
  fillMiB?: number;
  /** an MBR partition table with one Linux partition starting at 1 MiB (default: whole-disk file system) */
  partitioned?: boolean;
  label?: string;
}

/** A raw disk with a real ext4 file system and content (mkfs.ext4 -d, no root). Returns the cached path. */
export declare function buildExt4Disk(opts: Ext4DiskOptions): Promise<string>;
