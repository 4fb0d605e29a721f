import { readFileSync } from 'node:fs';
import { OrbError } from '../core/errors.js';
import { guestKernel } from './initramfs.js';

/**
 * Kernel modules for SATA/virtio disks, CD-ROMs and ISO 9660, with dependencies, in load order:
 * what the busybox test guests load to see their disks and seed CDs. (`orb demo` boots a real
 * Debian image instead, see debian.ts.)
 */
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
