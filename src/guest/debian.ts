import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chown, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { OrbError } from '../core/errors.js';
import { run, which } from '../core/proc.js';
import { cached, guestCacheDir } from './initramfs.js';

/**
 * A real Debian 12 (bookworm) cloud image, built on this machine with mmdebstrap from Debian's
 * archive (the only network it uses) and cached by recipe hash: systemd, Debian's kernel,
 * cloud-init (NoCloud only) and xrdp with its own certificate, so the Linux build path runs the
 * real cloud-init and the smoke test meets a real RDP server that negotiates TLS.
 *
 * The disk boots by itself (BIOS and UEFI) without loop mounts: an MBR with syslinux's boot code,
 * a FAT partition holding syslinux (BIOS), systemd-boot (UEFI), the kernel and its initramfs
 * (mounted at /boot in the guest, so there is one copy of each), and an ext4 root file system that mke2fs fills from the mmdebstrap directory (`-d`) at its offset in
 * the image file. mmdebstrap itself needs root (or user namespaces); we run as root here and in CI.
 */

const exec = promisify(execFile);

export const DEBIAN_SUITE = 'bookworm';
const DEFAULT_MIRROR = 'http://deb.debian.org/debian';
const ROOT_LABEL = 'orbroot';
const BOOT_LABEL = 'ORBBOOT';
const BOOT_MIB = 64;
const SYSTEMD_BOOT = '/usr/lib/systemd/boot/efi/systemd-bootx64.efi';
const MBR_BIN = '/usr/lib/syslinux/mbr/mbr.bin';
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1', MTOOLS_NO_VFAT: '0' };

/** What goes into the image beyond minbase (Recommends are not installed). */
export const DEBIAN_INCLUDE = [
  'systemd-sysv',
  'udev',
  'dbus',
  'linux-image-amd64',
  'initramfs-tools',
  // initramfs-tools compresses with zstd by default but only Recommends it: without it the
  // initramfs silently falls back to gzip (7.2 MB instead of 5.9 MB; every boot reads it all).
  'zstd',
  'cloud-init',
  'xrdp',
  'ssl-cert',
  'iproute2',
  'openssl',
];

// Documentation, translations and drivers a QEMU guest never loads: about half the kernel's modules.
// dpkg matches the paths inside the packages, which in bookworm are still /lib/modules.
const PATH_EXCLUDES = [
  '/usr/share/man/*',
  '/usr/share/doc/*',
  '/usr/share/info/*',
  '/usr/share/locale/*',
  '/usr/lib/firmware/*',
  ...[
    'sound',
    'drivers/net/wireless',
    'drivers/media',
    'drivers/infiniband',
    'drivers/staging',
    'drivers/bluetooth',
    'drivers/gpu/drm/amd',
    'drivers/gpu/drm/nouveau',
    'drivers/gpu/drm/i915',
    'drivers/gpu/drm/radeon',
    'drivers/net/ethernet/mellanox',
    'drivers/iio',
    'drivers/isdn',
    'net/wireless',
    'net/mac80211',
  ].map((d) => `/lib/modules/*/kernel/${d}/*`),
];

// Console on the screen (what smoke-test screenshots) and on the serial port (what the build reads).
const CMDLINE = `root=LABEL=${ROOT_LABEL} rw net.ifnames=0 console=tty0 console=ttyS0,115200`;

/**
 * The initramfs holds only what mounting the root file system on the disks QEMU gives a guest
 * needs (MODULES=list), not initramfs-tools' default MODULES=most (34 MB: every storage, USB and
 * RAID driver). A lazy boot (orb serve) reads all of the initramfs, and being compressed already
 * it does not shrink in the image: it was most of what a boot fetched. MODULES=dep would pick these by
 * itself but cannot see the hardware from mmdebstrap's chroot. One driver for each bus orb
 * attaches a disk on (src/qemu/args.ts): virtio-blk (the build), AHCI for 'sata' and 'ide' on q35
 * (the smoke test's default), NVMe, virtio-scsi (dockur), PIIX IDE for the i440fx machine; sd_mod
 * for the SCSI-disk side of AHCI and virtio-scsi; ext4 (its crc32c is added by initramfs-tools).
 * And sr_mod: the build attaches cloud-init's NoCloud seed as a CD-ROM, and cloud-init's systemd
 * generator (ds-identify) looks for it with blkid a few seconds into the boot, before udev has
 * loaded anything from the root file system. Without sr_mod here /dev/sr0 appeared 17 s later,
 * ds-identify found no seed and turned cloud-init off: the build boot sat at the login prompt
 * (why an earlier list without it "made no progress"). The NIC and DRM load from the root.
 *
 * Debian's cloud kernel (linux-image-cloud-amd64, what its genericcloud images ship) is not used:
 * it has no AHCI and no e1000 driver, so it boots neither from the smoke test's default SATA
 * disk nor gets a network on QEMU's default x86 NIC; and its vmlinuz is larger (14 MB, more built
 * in) than the generic kernel's 8 MB.
 */
export const INITRAMFS_MODULES = [
  'virtio_pci',
  'virtio_blk',
  'virtio_scsi',
  'ahci',
  'ata_piix',
  'nvme',
  'sd_mod',
  'sr_mod',
  'ext4',
];

/**
 * initramfs-tools settings (conf.d): only the modules above, compressed with zstd at level 19
 * (default 9): 20 MB of files become 5.9 MB instead of 6.7 MB, and zstd decompresses as fast
 * whatever the level, so the kernel unpacks it in the same time.
 */
const INITRAMFS_CONF = ['MODULES=list', 'COMPRESS=zstd', 'COMPRESSLEVEL=19'];

// Rebuilds the initramfs unless it starts with zstd's magic (28 b5 2f fd).
const ZSTD_OR_REBUILD =
  'for f in "$1"/boot/initrd.img-*; do [ "$(od -An -tx1 -N4 "$f" | tr -d " ")" = 28b52ffd ] ' +
  '|| chroot "$1" update-initramfs -u -k "${f##*/initrd.img-}"; done';

/** Files written into the root file system after mmdebstrap; part of the recipe hash. */
const FILES: Record<string, string> = {
  // /boot is the FAT partition the loaders read, as on an installed system: one copy of the
  // kernel and initramfs (a second, never-read copy on the root was 14 MB of the compressed
  // image), and an initramfs Debian's packages rebuild later is the one that boots.
  '/etc/fstab':
    `LABEL=${ROOT_LABEL} / ext4 defaults,discard,errors=remount-ro 0 1\n` +
    `LABEL=${BOOT_LABEL} /boot vfat defaults,nofail,umask=0077 0 0\n`,
  '/etc/hostname': 'orb-debian\n',
  '/etc/hosts': '127.0.0.1 localhost\n127.0.1.1 orb-debian\n',
  // systemd-networkd brings up the first NIC with DHCP (QEMU's user network answers it).
  '/etc/systemd/network/20-wired.network': '[Match]\nName=eth* en*\n\n[Network]\nDHCP=yes\n',
  // With no seed attached (a finished image booting) ds-identify turns cloud-init off for that
  // boot instead of probing every cloud's metadata service: minutes under TCG. Two entries,
  // because ds-identify takes a single-entry list as found without looking.
  '/etc/cloud/cloud.cfg.d/90-orb.cfg': 'datasource_list: [ NoCloud, ConfigDrive ]\n',
  // The smoke test's screenshots show a settled login prompt, not a blank screen.
  '/etc/issue': 'Debian GNU/Linux 12 (orb test image) \\n \\l\n\n',
};

// Units that only cost boot time in a short-lived test VM under TCG.
const MASKED = ['apt-daily.timer', 'apt-daily-upgrade.timer', 'e2scrub_all.timer', 'fstrim.timer'];

export interface DebianImageOptions {
  /** Debian mirror (default deb.debian.org or $ORB_DEBIAN_MIRROR) */
  mirror?: string;
  /** progress lines */
  log?: (line: string) => void;
  signal?: AbortSignal;
}

function need(cmd: string, pkg: string): void {
  if (!which(cmd) && !existsSync(`/usr/sbin/${cmd}`) && !existsSync(`/sbin/${cmd}`)) {
    throw new OrbError('environment', `${cmd} is needed to build the Debian image`, {
      hint: `install the Debian package '${pkg}'`,
    });
  }
}

/** Waits for (then holds) a lock directory, so parallel test files build the image once. */
async function withLock<T>(path: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  for (;;) {
    try {
      await mkdir(path);
      await writeFile(join(path, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(await readFile(join(path, 'pid'), 'utf8').catch(() => '0'));
      let alive = pid > 0;
      try {
        if (alive) process.kill(pid, 0);
      } catch {
        alive = false;
      }
      // A lock whose holder died (or that has no pid yet for a minute) is taken over.
      const age = Date.now() - ((await stat(path).catch(() => undefined))?.mtimeMs ?? 0);
      if (!alive && (pid > 0 || age > 60_000)) await rm(path, { recursive: true, force: true });
      else await new Promise((r) => setTimeout(r, 2000));
      signal?.throwIfAborted();
    }
  }
  try {
    return await fn();
  } finally {
    await rm(path, { recursive: true, force: true });
  }
}

async function duBytes(dir: string): Promise<number> {
  const { stdout } = await exec('du', ['-sb', '-x', dir], { maxBuffer: 1 << 20 });
  return Number(stdout.split(/\s/)[0]);
}

async function writeBootPartition(root: string, fat: string, work: string): Promise<void> {
  const boot = await readdir(join(root, 'boot'));
  const kernel = boot.filter((n) => n.startsWith('vmlinuz-')).sort()[0];
  const initrd = boot.filter((n) => n.startsWith('initrd.img-')).sort()[0];
  if (!kernel || !initrd)
    throw new OrbError('environment', `no kernel/initramfs in ${root}/boot after mmdebstrap`);
  await exec('mkfs.fat', ['-C', '-h', '2048', '-n', BOOT_LABEL, fat, String(BOOT_MIB * 1024)]);
  // mtools' syslinux writes the boot sector and ldlinux.* into the image file, no mount.
  await exec('syslinux', ['--install', fat], { env: MTOOLS_ENV });
  const put = (src: string, dest: string) =>
    exec('mcopy', ['-o', '-i', fat, src, `::${dest}`], { env: MTOOLS_ENV });
  const text = async (name: string, body: string, dest: string) => {
    await writeFile(join(work, name), body);
    await put(join(work, name), dest);
  };
  await exec('mmd', ['-i', fat, '::/EFI', '::/EFI/BOOT', '::/loader', '::/loader/entries'], {
    env: MTOOLS_ENV,
  });
  // Everything Debian put in /boot moves to the partition mounted there (see /etc/fstab).
  for (const n of boot) await put(join(root, 'boot', n), `/${n}`);
  await put(SYSTEMD_BOOT, '/EFI/BOOT/BOOTX64.EFI');
  await text(
    'syslinux.cfg',
    `SERIAL 0 115200\nDEFAULT debian\nPROMPT 0\nTIMEOUT 0\nLABEL debian\n  LINUX /${kernel}\n  INITRD /${initrd}\n  APPEND ${CMDLINE}\n`,
    '/syslinux.cfg',
  );
  await text(
    'debian.conf',
    `title Debian\nlinux /${kernel}\ninitrd /${initrd}\noptions ${CMDLINE}\n`,
    '/loader/entries/debian.conf',
  );
  await text('loader.conf', 'default debian.conf\ntimeout 0\neditor no\n', '/loader/loader.conf');
  for (const n of boot) await rm(join(root, 'boot', n), { recursive: true, force: true });
}

/** Certificate and key for xrdp, readable by the xrdp user (Debian runs xrdp unprivileged). */
async function xrdpCertificate(root: string): Promise<void> {
  const key = join(root, 'etc/xrdp/key.pem');
  const cert = join(root, 'etc/xrdp/cert.pem');
  // Debian ships these as links to the snakeoil pair, whose key only the ssl-cert group can read.
  await rm(key, { force: true });
  await rm(cert, { force: true });
  await exec('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-sha256',
    '-days',
    '3650',
    '-subj',
    '/CN=orb-debian/O=orb-actions test image',
    '-keyout',
    key,
    '-out',
    cert,
  ]);
  const group = await readFile(join(root, 'etc/group'), 'utf8');
  const gid = Number(/^xrdp:[^:]*:(\d+):/m.exec(group)?.[1] ?? 'NaN');
  if (!Number.isInteger(gid))
    throw new OrbError('environment', 'the xrdp group is missing from the Debian image');
  await chown(key, 0, gid);
  await exec('chmod', ['0640', key]);
  await exec('chmod', ['0644', cert]);
}

/**
 * Builds (or takes from the guest cache) the Debian image: a raw disk, BIOS and UEFI bootable.
 * Returns its path; boot it on an overlay or a copy, never in place.
 */
export async function buildDebianImage(opts: DebianImageOptions = {}): Promise<string> {
  const mirror = opts.mirror ?? process.env.ORB_DEBIAN_MIRROR ?? DEFAULT_MIRROR;
  const recipe = {
    v: 1,
    suite: DEBIAN_SUITE,
    include: DEBIAN_INCLUDE,
    PATH_EXCLUDES,
    CMDLINE,
    FILES,
    MASKED,
    INITRAMFS_MODULES,
    INITRAMFS_CONF,
    ZSTD_OR_REBUILD,
  };
  const say = opts.log ?? (() => undefined);
  for (const [cmd, pkg] of [
    ['mmdebstrap', 'mmdebstrap'],
    ['mke2fs', 'e2fsprogs'],
    ['mkfs.fat', 'dosfstools'],
    ['mcopy', 'mtools'],
    ['syslinux', 'syslinux'],
    ['sfdisk', 'fdisk'],
    ['openssl', 'openssl'],
  ])
    need(cmd!, pkg!);
  for (const [f, pkg] of [
    [SYSTEMD_BOOT, 'systemd-boot-efi'],
    [MBR_BIN, 'syslinux-common'],
  ]) {
    if (!existsSync(f!))
      throw new OrbError('environment', `${f} is missing`, { hint: `install the Debian package '${pkg}'` });
  }
  if (process.getuid?.() !== 0) {
    throw new OrbError('environment', 'building the Debian image with mmdebstrap needs root', {
      hint: 'run as root (CI and the demo do), or build it once as root: it is cached',
    });
  }
  const lock = join(guestCacheDir(), 'debian.lock');
  return withLock(
    lock,
    () =>
      cached('debian12', recipe, '.img', async (img) => {
        const work = `${img}.d`;
        const root = join(work, 'root');
        await mkdir(work, { recursive: true });
        try {
          const t0 = Date.now();
          say(`building Debian ${DEBIAN_SUITE} with mmdebstrap from ${mirror} (once; cached)`);
          // Its "I: ..." lines are the progress of a step that takes minutes.
          let partial = '';
          await run(
            'mmdebstrap',
            [
              '--variant=minbase',
              '--mode=root',
              `--include=${DEBIAN_INCLUDE.join(',')}`,
              ...PATH_EXCLUDES.map((p) => `--dpkgopt=path-exclude=${p}`),
              '--dpkgopt=path-include=/usr/share/locale/locale.alias',
              // Before the kernel is installed, so its postinst builds the small initramfs once.
              '--essential-hook=mkdir -p "$1"/etc/initramfs-tools/conf.d "$1"/usr/share/initramfs-tools/modules.d',
              `--essential-hook=printf '%s\\n' ${INITRAMFS_CONF.join(' ')} > "$1"/etc/initramfs-tools/conf.d/orb.conf`,
              `--essential-hook=printf '%s\\n' ${INITRAMFS_MODULES.join(' ')} > "$1"/usr/share/initramfs-tools/modules.d/orb`,
              // apt may configure the kernel before zstd is unpacked; then build it again.
              `--customize-hook=${ZSTD_OR_REBUILD}`,
              `--customize-hook=chroot "$1" systemctl enable systemd-networkd`,
              `--customize-hook=chroot "$1" systemctl mask ${MASKED.join(' ')}`,
              '--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*',
              DEBIAN_SUITE,
              root,
              mirror,
            ],
            {
              check: true,
              ...(opts.signal ? { signal: opts.signal } : {}),
              onStderr: (chunk) => {
                const lines = (partial + chunk).split('\n');
                partial = lines.pop() ?? '';
                for (const l of lines) if (l.startsWith('I: ')) say(`mmdebstrap: ${l.slice(3)}`);
              },
            },
          );
          say(`mmdebstrap done in ${Math.round((Date.now() - t0) / 1000)} s`);
          await finishRoot(root);
          const { totalMiB, usedMiB } = await assembleDisk(root, img, work);
          say(
            `Debian image ready: ${totalMiB} MiB disk, ${usedMiB} MiB of files, ${Math.round((Date.now() - t0) / 1000)} s`,
          );
        } finally {
          await rm(work, { recursive: true, force: true });
        }
      }),
    opts.signal,
  );
}

/** orb's files, xrdp's certificate, an empty machine-id, no leftovers in /boot. */
export async function finishRoot(root: string): Promise<void> {
  for (const [p, body] of Object.entries(FILES)) {
    await mkdir(dirname(join(root, p)), { recursive: true });
    await writeFile(join(root, p), body);
  }
  await xrdpCertificate(root);
  // A machine-id is made on first boot; each clone gets its own.
  await writeFile(join(root, 'etc/machine-id'), '');

  for (const n of await readdir(join(root, 'boot')))
    if (/\.(dpkg-bak|new|old)$/.test(n)) await rm(join(root, 'boot', n), { force: true });
}

/** MBR + syslinux boot code, the FAT boot partition, then the ext4 root filled from `root`. */
export async function assembleDisk(
  root: string,
  img: string,
  work: string,
): Promise<{ totalMiB: number; usedMiB: number }> {
  const fat = join(work, 'boot.fat');
  await writeBootPartition(root, fat, work);
  const used = await duBytes(root);
  // Room for what cloud-init and provisioning add; the build grows the disk further.
  const rootMiB = Math.ceil((used * 1.25) / 2 ** 20) + 256;
  const totalMiB = 1 + BOOT_MIB + rootMiB;
  await exec('truncate', ['-s', `${totalMiB}M`, img]);
  await sfdisk(
    img,
    `label: dos\nstart=2048, size=${BOOT_MIB * 2048}, type=ef, bootable\nstart=${(1 + BOOT_MIB) * 2048}, type=83\n`,
  );
  await exec('dd', [`if=${MBR_BIN}`, `of=${img}`, 'bs=440', 'count=1', 'conv=notrunc', 'status=none']);
  await exec('dd', [`if=${fat}`, `of=${img}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  await exec(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-L',
      ROOT_LABEL,
      '-d',
      root,
      '-E',
      `offset=${(1 + BOOT_MIB) * 2 ** 20}`,
      img,
      `${rootMiB}M`,
    ],
    { maxBuffer: 16 << 20 },
  );
  return { totalMiB, usedMiB: Math.round(used / 2 ** 20) };
}

function sfdisk(img: string, script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', img], (err) =>
      err ? reject(new OrbError('environment', `sfdisk failed on ${img}: ${err.message}`)) : resolve(),
    );
    child.stdin?.end(script);
  });
}
