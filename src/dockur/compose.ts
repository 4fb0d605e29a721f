import { isIP } from 'node:net';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { UsageError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fsutil.js';
import { DOCKUR_LAYOUT_VERSION, type DockurDiskType, type DockurMode } from './bundle.js';

/**
 * The docker-compose.yml `orb install` writes for dockur/windows, and the state files beside the
 * disk that make dockur boot the pre-installed Windows instead of installing it (see bundle.ts
 * for what dockur's scripts expect). The disk is a per-client qcow2 overlay (`data.qcow2`)
 * whose read-only backing file lives in ./images, mounted read-only at /images: the overlay
 * names it as ../images/<base>, which resolves the same on the host and in the container.
 * Ports are published on 127.0.0.1 unless another address is asked for.
 */
export const DOCKUR_IMAGE = 'dockurr/windows';

export interface ComposeOptions {
  /** compose project and container name */
  name: string;
  image: string;
  /** host address the ports are published on */
  bind: string;
  rdpPort: number;
  webPort: number;
  /** RAM_SIZE, e.g. 4G */
  ram: string;
  cpus: number;
  /** exact virtual size of the disk in bytes (DISK_SIZE; dockur only ever grows a disk) */
  diskSize: number;
  diskType?: DockurDiskType;
  mode: DockurMode;
  /** a file with USERNAME/PASSWORD (mode 0600), referenced with env_file, never inlined */
  envFile?: string;
  /** image directory mounted read-only at /images */
  imagesDir: string;
  storageDir: string;
  /** more read-only mounts (a shared base, at the absolute path the overlay names) */
  extraVolumes?: string[];
  /** `orb install --lazy`: the NBD server dockur's disk is backed by, and waits for */
  orb?: OrbSidecar;
}

/**
 * The `orb` service of a lazy install: `orb serve` on the socket in the storage folder. Every
 * path it uses is mounted at the same absolute path as on the host (the overlay names the socket
 * that way), so its command is the one the host would run. dockur starts once it is healthy.
 */
export interface OrbSidecar {
  /** an image with Node.js 24; orb itself is mounted from the install directory */
  image: string;
  command: string[];
  /** the socket the healthcheck connects to */
  socket: string;
  /** host:container mounts (same paths) */
  volumes: string[];
  /** extra mounts for the windows service (the storage folder at its host path) */
  windowsVolumes: string[];
  healthcheck: string[];
  /** registry credentials for serve (0600), never inlined */
  envFile?: string;
}

/** DISK_SIZE as dockur parses it (numfmt --from=iec): exact, in the largest unit that divides. */
export function dockurSize(bytes: number): string {
  for (const [unit, n] of [
    ['T', 1024 ** 4],
    ['G', 1024 ** 3],
    ['M', 1024 ** 2],
    ['K', 1024],
  ] as const) {
    if (bytes % n === 0) return `${bytes / n}${unit}`;
  }
  // dockur appends G to a bare number, so round up to whole KiB (the disk never shrinks anyway)
  return `${Math.ceil(bytes / 1024)}K`;
}

export function checkBind(bind: string): void {
  if (!isIP(bind))
    throw new UsageError(
      `--bind '${bind}' is not an IP address`,
      'give 127.0.0.1 (default), a LAN address, or 0.0.0.0 for every interface',
    );
}

function publish(bind: string, host: number, container: number, proto?: 'tcp' | 'udp'): string {
  const addr = bind.includes(':') ? `[${bind}]` : bind;
  return `${addr}:${host}:${container}${proto ? '/' + proto : ''}`;
}

export function composeObject(o: ComposeOptions): Record<string, unknown> {
  checkBind(o.bind);
  const env: Record<string, string> = {
    DISK_FMT: 'qcow2',
    DISK_SIZE: dockurSize(o.diskSize),
    RAM_SIZE: o.ram,
    CPU_CORES: String(o.cpus),
  };
  if (o.diskType) env.DISK_TYPE = o.diskType;
  if (o.mode === 'windows_secure') env.BOOT_MODE = 'windows_secure';
  const service: Record<string, unknown> = {
    image: o.image,
    container_name: o.name,
    environment: env,
    ...(o.envFile ? { env_file: [o.envFile] } : {}),
    devices: ['/dev/kvm', '/dev/net/tun'],
    cap_add: ['NET_ADMIN'],
    ports: [
      publish(o.bind, o.webPort, 8006),
      publish(o.bind, o.rdpPort, 3389, 'tcp'),
      publish(o.bind, o.rdpPort, 3389, 'udp'),
    ],
    volumes: [`${o.storageDir}:/storage`, `${o.imagesDir}:/images:ro`, ...(o.extraVolumes ?? [])],
    restart: 'unless-stopped',
    stop_grace_period: '2m',
  };
  if (!o.orb) return { name: o.name, services: { windows: service } };
  (service.volumes as string[]).push(...o.orb.windowsVolumes);
  service.depends_on = { orb: { condition: 'service_healthy' } };
  const orb: Record<string, unknown> = {
    image: o.orb.image,
    container_name: `${o.name}-orb`,
    command: o.orb.command,
    ...(o.orb.envFile ? { env_file: [o.orb.envFile] } : {}),
    volumes: o.orb.volumes,
    // the store is reached as orb on the host reaches it (a registry on 127.0.0.1, DNS, routes);
    // the export is a Unix socket, so no port is published
    network_mode: 'host',
    init: true,
    healthcheck: {
      test: o.orb.healthcheck,
      interval: '5s',
      timeout: '10s',
      retries: 3,
      // the first start resolves the image and its index before the socket exists
      start_period: '5m',
    },
    restart: 'unless-stopped',
    stop_grace_period: '30s',
  };
  return { name: o.name, services: { orb, windows: service } };
}

export function composeYaml(o: ComposeOptions, header: string[] = []): string {
  const lines = header.map((h) => `# ${h}`);
  return (lines.length ? lines.join('\n') + '\n' : '') + stringify(composeObject(o), { lineWidth: 0 });
}

export async function writeCompose(path: string, o: ComposeOptions, header: string[] = []): Promise<void> {
  await writeFileAtomic(path, composeYaml(o, header));
}

/**
 * dockur's state beside the disk: `windows.boot` (Windows has booted from this disk: skip Setup),
 * `windows.mode` (boot mode), `windows.type` (disk bus Windows was installed on), `windows.ver`.
 * No `windows.base`: with none, dockur does not compare against an installation ISO.
 */
export async function writeDockurState(
  storageDir: string,
  mode: DockurMode,
  diskType?: DockurDiskType,
): Promise<string[]> {
  const files: [string, string][] = [
    ['windows.boot', ''],
    ['windows.mode', `${mode}\n`],
    ['windows.ver', `${DOCKUR_LAYOUT_VERSION}\n`],
  ];
  if (diskType) files.push(['windows.type', `${diskType}\n`]);
  for (const [name, text] of files) await writeFileAtomic(join(storageDir, name), text);
  return files.map(([n]) => n);
}

/** USERNAME/PASSWORD for dockur in an env file readable only by its owner. */
export async function writeCredentialsEnv(
  path: string,
  user: string | undefined,
  password: string,
): Promise<void> {
  const quote = (v: string) => {
    if (/[\r\n]/.test(v)) throw new UsageError('the admin password must be one line');
    // compose env files: single quotes are literal, \' is the only escape inside them
    return `'${v.replace(/'/g, "\\'")}'`;
  };
  const lines = ['# Written by orb install. Keep this file private (mode 0600).'];
  if (user) lines.push(`USERNAME=${quote(user)}`);
  lines.push(`PASSWORD=${quote(password)}`);
  await writeFileAtomic(path, lines.join('\n') + '\n', 0o600);
}
