/**
 * QEMU command-line construction for the runner, kept apart from process handling so it can be
 * unit-tested and read in one place. Every value goes in as its own argv element (no shell), and
 * file names inside `-drive`/`-chardev` option strings have their commas doubled, QEMU's escape.
 */
import { UsageError } from '../core/errors.js';
import type { Arch, Firmware, UefiFirmware } from './firmware.js';

export type Accelerator = 'kvm' | 'tcg';
export type DiskInterface = 'virtio' | 'sata' | 'ide' | 'nvme';

export interface DiskSpec {
  /** image file */
  path: string;
  /** qemu-img format name; default from the extension: .qcow2 -> qcow2, .vmdk, .vhdx, .vdi, else raw */
  format?: string;
  /** open read-only (the guest sees a write-protected disk) */
  readonly?: boolean;
  /** writes go to a throw-away overlay; the file stays untouched (QEMU snapshot=on) */
  snapshot?: boolean;
  /** default 'virtio'. On q35 'ide' and 'sata' both mean the built-in AHCI controller. */
  interface?: DiskInterface;
  /** pass guest TRIM/UNMAP through and turn zero writes into holes (keeps images sparse) */
  discard?: boolean;
}

export interface PortForward {
  guestPort: number;
  /** host port on 127.0.0.1; default (0): a free one chosen when QEMU binds, reported back */
  hostPort?: number;
  /** default 'tcp' */
  protocol?: 'tcp' | 'udp';
}

export interface NetworkOptions {
  /** host -> guest forwards, bound to 127.0.0.1 only */
  forwards?: PortForward[];
  /** NIC device; default 'e1000' (x86_64) / 'virtio-net-pci' (aarch64). May carry device options, e.g. 'e1000e' or 'virtio-net-pci,romfile=' (no PXE ROM) */
  nic?: string;
  /** slirp restrict=on: the guest cannot reach the host's network, forwards still work */
  restrict?: boolean;
}

/** Everything the argument builder needs, resolved by the runner (paths exist, firmware found). */
export interface QemuPlan {
  arch: Arch;
  accel: Accelerator;
  memoryMiB: number;
  cpus: number;
  cpu?: string;
  name: string;
  disks: DiskSpec[];
  cdroms: string[];
  bootFrom: 'disk' | 'cdrom';
  kernel?: string;
  initrd?: string;
  append?: string;
  firmware: Firmware;
  uefi?: UefiFirmware;
  uefiVarsPath?: string;
  tpmSocket?: string;
  network?: NetworkOptions;
  qmpSocket: string;
  vga: string | false;
  noReboot: boolean;
  /** start paused (-S) so QMP is attached before the guest runs */
  paused: boolean;
  extraArgs: string[];
}

/** QEMU option-string escaping: ',' separates options, so a literal comma is written ',,'. */
export function qesc(value: string): string {
  return value.replace(/,/g, ',,');
}

export function formatFor(path: string): string {
  const m = /\.(qcow2|vmdk|vhdx|vdi|vpc|qed)$/i.exec(path);
  return m ? m[1]!.toLowerCase() : 'raw';
}

export function buildQemuArgs(p: QemuPlan): string[] {
  const a: string[] = [];
  const x86 = p.arch === 'x86_64';
  if (p.firmware === 'bios' && !x86)
    throw new UsageError('aarch64 has no BIOS firmware', "use firmware 'uefi' (AAVMF)");
  if (p.firmware === 'uefi-secure' && !x86) {
    throw new UsageError(
      'Secure Boot is only supported for x86_64 guests here',
      "use firmware 'uefi' on aarch64",
    );
  }
  const secure = p.firmware === 'uefi-secure';
  a.push('-name', `${p.name},debug-threads=on`, '-nodefaults', '-no-user-config');
  // Secure Boot with OVMF needs SMM so the guest OS cannot write the variable store behind the
  // firmware's back, and the pflash marked secure (only SMM code may write it).
  a.push('-machine', x86 ? `q35${secure ? ',smm=on' : ''}` : 'virt');
  if (secure) a.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
  a.push('-accel', p.accel);
  a.push('-cpu', p.cpu ?? (p.accel === 'kvm' ? 'host' : 'max'));
  a.push('-m', String(p.memoryMiB), '-smp', String(p.cpus));
  a.push('-display', 'none');
  if (p.vga) a.push('-device', p.vga);
  if (p.paused) a.push('-S');
  if (p.noReboot) a.push('-no-reboot');

  if (p.firmware !== 'bios') {
    if (!p.uefi || !p.uefiVarsPath) throw new Error('internal: UEFI firmware not resolved');
    a.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${qesc(p.uefi.code)}`);
    a.push('-drive', `if=pflash,format=raw,unit=1,file=${qesc(p.uefiVarsPath)}`);
  }

  // Serial console on our stdout pipe (signal=off: a ^C in the guest output is not a signal).
  a.push('-chardev', 'stdio,id=ser0,signal=off', '-serial', 'chardev:ser0');
  a.push(
    '-chardev',
    `socket,id=qmp0,path=${qesc(p.qmpSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmp0,mode=control',
  );

  // Boot order by bootindex (honoured by SeaBIOS and OVMF alike).
  let bootIndex = 0;
  const diskBoot = new Map<number, number>();
  const cdBoot = new Map<number, number>();
  const order: ['disk' | 'cd', number][] =
    p.bootFrom === 'cdrom'
      ? [
          ...p.cdroms.map((_, i) => ['cd', i] as ['cd', number]),
          ...p.disks.map((_, i) => ['disk', i] as ['disk', number]),
        ]
      : [
          ...p.disks.map((_, i) => ['disk', i] as ['disk', number]),
          ...p.cdroms.map((_, i) => ['cd', i] as ['cd', number]),
        ];
  for (const [kind, i] of order) (kind === 'disk' ? diskBoot : cdBoot).set(i, bootIndex++);
  const withBoot = (idx: number | undefined): string =>
    p.kernel || idx === undefined ? '' : `,bootindex=${idx}`;

  // q35 has a 6-port AHCI controller built in (buses ide.0..ide.5); virt has none, so add one.
  let ahciPort = 0;
  let ahciAdded = x86;
  const ahciBus = (): string => {
    if (!ahciAdded) {
      a.push('-device', 'ich9-ahci,id=ahci');
      ahciAdded = true;
    }
    const port = ahciPort++;
    if (port > 5)
      throw new UsageError(
        'too many SATA/IDE/CD-ROM drives (at most 6)',
        "attach further disks with interface 'virtio' or 'nvme'",
      );
    return x86 ? `ide.${port}` : `ahci.${port}`;
  };

  p.disks.forEach((d, i) => {
    const id = `disk${i}`;
    const opts = [`file=${qesc(d.path)}`, 'if=none', `id=${id}`, `format=${d.format ?? formatFor(d.path)}`];
    if (d.readonly) opts.push('readonly=on');
    if (d.snapshot) opts.push('snapshot=on');
    if (d.discard) opts.push('discard=unmap', 'detect-zeroes=unmap');
    a.push('-drive', opts.join(','));
    const iface = d.interface ?? 'virtio';
    const boot = withBoot(diskBoot.get(i));
    if (iface === 'virtio') a.push('-device', `virtio-blk-pci,drive=${id}${boot}`);
    else if (iface === 'nvme') a.push('-device', `nvme,drive=${id},serial=orb-disk-${i}${boot}`);
    else a.push('-device', `ide-hd,drive=${id},bus=${ahciBus()}${boot}`);
  });
  p.cdroms.forEach((iso, i) => {
    const id = `cd${i}`;
    a.push('-drive', `file=${qesc(iso)},if=none,id=${id},media=cdrom,readonly=on,format=raw`);
    a.push('-device', `ide-cd,drive=${id},bus=${ahciBus()}${withBoot(cdBoot.get(i))}`);
  });

  if (p.kernel) {
    a.push('-kernel', p.kernel);
    if (p.initrd) a.push('-initrd', p.initrd);
    if (p.append) a.push('-append', p.append);
  }

  if (p.tpmSocket) {
    a.push('-chardev', `socket,id=tpmchr,path=${qesc(p.tpmSocket)}`);
    a.push('-tpmdev', 'emulator,id=tpm0,chardev=tpmchr');
    a.push('-device', x86 ? 'tpm-tis,tpmdev=tpm0' : 'tpm-tis-device,tpmdev=tpm0');
  }

  if (p.network) {
    const net = ['user', 'id=net0'];
    if (p.network.restrict) net.push('restrict=on');
    for (const f of p.network.forwards ?? []) {
      checkPort(f.guestPort, 'guestPort', false);
      if (f.hostPort !== undefined) checkPort(f.hostPort, 'hostPort', true);
      // Always bound to loopback: a forward must never expose the guest to the network.
      net.push(`hostfwd=${f.protocol ?? 'tcp'}:127.0.0.1:${f.hostPort ?? 0}-:${f.guestPort}`);
    }
    a.push('-netdev', net.join(','));
    a.push('-device', `${p.network.nic ?? (x86 ? 'e1000' : 'virtio-net-pci')},netdev=net0`);
  }
  a.push(...p.extraArgs);
  return a;
}

function checkPort(n: number, what: string, zeroOk: boolean): void {
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1) || n > 65535) {
    throw new UsageError(`invalid ${what} ${n} in a port forward`, 'ports are integers from 1 to 65535');
  }
}

/**
 * Parses HMP `info usernet` to learn the host ports slirp actually bound (we ask for port 0 so
 * the kernel picks a free one without a race):
 *   TCP[HOST_FORWARD]   9       127.0.0.1 43241       10.0.2.15  3389     0     0
 */
export function parseUsernet(
  text: string,
): { protocol: 'tcp' | 'udp'; hostAddress: string; hostPort: number; guestPort: number }[] {
  const out: { protocol: 'tcp' | 'udp'; hostAddress: string; hostPort: number; guestPort: number }[] = [];
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)/.exec(line);
    if (m)
      out.push({
        protocol: m[1]!.toLowerCase() as 'tcp' | 'udp',
        hostAddress: m[2]!,
        hostPort: Number(m[3]),
        guestPort: Number(m[4]),
      });
  }
  return out;
}
