import { readFileSync } from 'node:fs';
import { OrbError } from '../core/errors.js';
import { buildBootDisk, buildGuestInitramfs, guestAppend } from './guests.js';
import { guestKernel } from './initramfs.js';

/**
 * A tiny stand-in for a Linux cloud image, for `orb demo`: Debian's kernel and busybox on a FAT
 * boot disk. With a NoCloud seed CD attached (what `build-golden-image --os linux` attaches) it
 * plays cloud-init: writes the seed's `write_files` (base64, as orb's seed writer emits them), runs
 * orb's runcmd script (which reports the ORB-* build protocol on the serial port) and powers off.
 * Booted without a seed, as a finished golden image is, it brings up the network and answers
 * TCP 3389 with an RDP Connection Confirm, so smoke-test has a real peer to check.
 */

/** Kernel modules for SATA/virtio disks, CD-ROMs and ISO 9660, with dependencies, in load order. */
export function storageModules(): string[] {
  const { version } = guestKernel();
  const deps = new Map<string, string[]>();
  for (const line of readFileSync(`/lib/modules/${version}/modules.dep`, 'utf8').split('\n')) {
    const [mod, rest] = line.split(':');
    if (!mod) continue;
    const strip = (m: string) => m.replace(/^kernel\//, '');
    deps.set(strip(mod), (rest ?? '').trim().split(/\s+/).filter(Boolean).map(strip));
  }
  const order: string[] = [];
  const visit = (m: string): void => {
    if (order.includes(m)) return;
    for (const d of deps.get(m) ?? []) visit(d);
    order.push(m);
  };
  for (const wanted of ['sr_mod', 'ahci', 'sd_mod', 'isofs', 'virtio_pci', 'virtio_blk']) {
    const found = [...deps.keys()].find((k) => k.endsWith(`/${wanted}.ko`));
    if (!found) throw new OrbError('environment', `kernel module ${wanted} not found for ${version}`);
    visit(found);
  }
  return order;
}

function cloudScript(modules: readonly string[]): string {
  const names = modules.map((m) => m.split('/').pop()).join(' ');
  return `
for m in ${names}; do insmod /lib/modules/$m 2>/dev/null; done
# CD-ROMs appear within a second or two of the AHCI probe, even under TCG.
i=0
while [ $i -lt 12 ] && ! ls /dev/sr0 >/dev/null 2>&1; do sleep 0.5; i=$((i + 1)); done
seed=
for d in /dev/sr*; do
  [ -b "$d" ] || continue
  mkdir -p /media/seed
  mount -t iso9660 -o ro "$d" /media/seed 2>/dev/null || continue
  [ -f /media/seed/user-data ] && { seed=/media/seed; break; }
  umount /media/seed
done
if [ -n "$seed" ]; then
  orb_marker "NoCloud seed found: provisioning"
  awk '/^ *- path: /{p=$3} /^ *content: /{print p, $2}' "$seed/user-data" | while read -r p c; do
    mkdir -p "$(dirname "$p")"
    echo "$c" | base64 -d > "$p"
    chmod 755 "$p"
  done
  [ -f /var/lib/orb/run.sh ] && sh /var/lib/orb/run.sh
  sync
  poweroff -f
else
  orb_net_up
  orb_rdp_serve
fi
`;
}

/** Builds (or takes from the guest cache) the demo cloud image: a raw disk, BIOS and UEFI bootable. */
export async function buildDemoCloudImage(): Promise<string> {
  const modules = storageModules();
  const initrd = await buildGuestInitramfs({ variants: { cloud: cloudScript(modules) }, modules });
  return buildBootDisk({ initrd, append: guestAppend('cloud'), sizeMiB: 48, label: 'ORBDEMO' });
}
