import '../stores/schemes.js';
import { defineCommand, type Inputs } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import type { InputSpec, OutputSpec } from '../core/inputs.js';
import { formatBytes } from '../core/progress.js';
import type { DockurDiskType } from '../dockur/bundle.js';
import { checkBind } from '../dockur/compose.js';
import { connectInstructions, install } from '../install/install.js';
import { installLazy } from '../install/lazy-install.js';
import { storeInputs } from '../stores/open.js';
import { accessInputs, storeOptions } from './publish.js';

const own: InputSpec[] = [
  {
    name: 'ref',
    type: 'string',
    required: true,
    positional: 0,
    description: 'the image: oci://, s3://, gitlab://, github-release://, https:// or oci-layout: reference',
  },
  {
    name: 'dir',
    type: 'string',
    required: true,
    description: 'installation directory (disk images, overlay, docker-compose.yml)',
  },
  {
    name: 'base-dir',
    type: 'string',
    description:
      'a read-only share (NFS/SMB) holding the verified base, put there once with orb pull --output PATH/NAME.img --manifest PATH/NAME.img.orb.json: only the overlay is kept in DIR, the share is never written',
  },
  {
    name: 'verify-base',
    type: 'enum',
    choices: ['sample', 'full'],
    default: 'sample',
    description:
      'with --base-dir: how the shared disk is checked against the image: sample (size, 24 chunks chosen at random and empty ranges) or full (its whole sha256)',
  },
  {
    name: 'update',
    type: 'boolean',
    default: false,
    description:
      'move this installation to REF, downloading only the chunks that changed; the old overlay is kept in DIR/previous/',
  },
  {
    name: 'keep-previous',
    type: 'boolean',
    default: true,
    description: 'with --update: keep the previous version (base and overlay) for a rollback',
  },
  {
    name: 'prepare-only',
    type: 'boolean',
    default: false,
    description: 'download and write the files even when Docker or KVM are missing (reported as warnings)',
  },
  { name: 'start', type: 'boolean', default: false, description: 'run docker compose up -d at the end' },
  {
    name: 'lazy',
    type: 'boolean',
    default: false,
    description:
      "boot before the download finishes: the overlay reads what it lacks from orb serve over NBD (socket in DIR/storage) while the rest fills in the background; install serves until the disk is complete and then rebases the overlay onto it (with --start, the compose file's orb service serves instead)",
  },
  {
    name: 'orb-image',
    type: 'string',
    default: 'node:24-slim',
    description:
      "with --lazy: the image of the compose file's orb service (Node.js 24; orb itself is mounted from DIR/orb)",
  },
  {
    name: 'bind',
    type: 'string',
    default: '127.0.0.1',
    description: 'host address the RDP and web console ports are published on (0.0.0.0: every interface)',
  },
  {
    name: 'rdp-port',
    type: 'integer',
    default: 3389,
    min: 1,
    max: 65535,
    description: 'host port for RDP (TCP and UDP)',
  },
  {
    name: 'web-port',
    type: 'integer',
    default: 8006,
    min: 1,
    max: 65535,
    description: 'host port for the web console',
  },
  {
    name: 'ram',
    type: 'string',
    default: '4G',
    description: 'memory for Windows (dockur RAM_SIZE, e.g. 8G)',
  },
  {
    name: 'cpus',
    type: 'integer',
    default: 2,
    min: 1,
    max: 256,
    description: 'CPU cores for Windows (dockur CPU_CORES)',
  },
  { name: 'name', type: 'string', default: 'orb-windows', description: 'compose project and container name' },
  {
    name: 'dockur-image',
    type: 'string',
    default: 'dockurr/windows',
    description: 'the dockur/windows container image (pin a version tag for reproducible clients)',
  },
  {
    name: 'admin-user',
    type: 'string',
    description:
      'Windows account to show in the connect instructions (default: the one the image was built with)',
  },
  {
    name: 'admin-password',
    type: 'string',
    secret: true,
    env: ['ORB_ADMIN_PASSWORD'],
    description:
      "that account's password, if you want it stored for dockur in DIR/windows.env (0600); never defaulted, never printed",
  },
  {
    name: 'firmware',
    type: 'enum',
    choices: ['bios', 'uefi', 'uefi-secure'],
    description: 'how Windows boots (default: from the image build record)',
  },
  {
    name: 'disk-type',
    type: 'enum',
    choices: ['blk', 'scsi', 'sata', 'ide', 'nvme'],
    description: 'disk bus Windows was installed on (default: from the image build record)',
  },
  {
    name: 'concurrency',
    type: 'integer',
    default: 6,
    min: 1,
    max: 64,
    description: 'blobs downloaded at once',
  },
  ...accessInputs,
];
const inputs = [...own, ...storeInputs('pull', own)];
/** the inputs `orb serve` takes from install: how to reach the store */
const serveSpecs: InputSpec[] = [...accessInputs, ...storeInputs('pull', own)];

/** Store inputs for the serve child: flags when public, environment variables when secret. */
function serveInvocation(inp: Inputs): { args: string[]; env: Record<string, string> } {
  const args: string[] = [];
  const env: Record<string, string> = {};
  for (const s of serveSpecs) {
    if (!inp.has(s.name)) continue;
    if (s.secret) {
      if (!s.env?.[0]) throw new UsageError(`--${s.name} cannot be passed on to orb serve`, 'drop --lazy');
      env[s.env[0]] = inp.string(s.name);
    } else if (s.type === 'boolean') {
      if (inp.bool(s.name) && s.default !== true) args.push(`--${s.name}`);
    } else if (s.type === 'list') {
      for (const v of inp.list(s.name)) args.push(`--${s.name}`, v);
    } else if (inp.string(s.name) !== String(s.default)) args.push(`--${s.name}`, inp.string(s.name));
  }
  return { args, env };
}

const outputs: OutputSpec[] = [
  { name: 'dir', description: 'the installation directory' },
  { name: 'compose-file', description: 'the docker-compose.yml written' },
  { name: 'overlay', description: "this client's qcow2 overlay (storage/data.qcow2)" },
  { name: 'base', description: 'the read-only golden disk it is backed by' },
  { name: 'reference', description: 'the installed image by digest' },
  { name: 'digest', description: 'manifest digest of the installed image' },
  {
    name: 'content-sha256',
    description: 'published files: sha256 of the file, verified (empty for a chunked disk)',
  },
  {
    name: 'content-digest',
    description: 'chunked disks: the orb2 content root (orb digest), verified block by block',
  },
  { name: 'virtual-size', description: 'disk size in bytes' },
  { name: 'bytes-downloaded', description: 'bytes downloaded' },
  { name: 'bytes-reused', description: 'bytes taken from the installed version (--update)' },
  { name: 'updated-from', description: 'digest of the version replaced by --update' },
  { name: 'previous-dir', description: 'where the previous overlay was kept' },
  { name: 'rdp', description: 'HOST:PORT to connect an RDP client to' },
  { name: 'web', description: 'URL of the web console' },
  { name: 'admin-user', description: 'the Windows account to log in with' },
  {
    name: 'warnings',
    description:
      'problems that do not stop the installation (Docker or KVM missing with --prepare-only, ...)',
  },
  { name: 'started', description: 'true when docker compose up -d ran' },
  {
    name: 'lazy',
    description:
      "with --lazy: 'complete' (the overlay is on the local base) or 'serving' (it still reads from the socket)",
  },
  {
    name: 'socket',
    description: 'with --lazy: the NBD socket the overlay reads from until the disk is complete',
  },
];

export default defineCommand({
  name: 'install',
  title: 'Install a published Windows image on a client: checks, verified pull, overlay, docker-compose.yml',
  description:
    'Checks Docker, /dev/kvm and free disk (with a fix for each), pulls the image (resumable, verified) as a read-only base, creates this ' +
    "client's qcow2 overlay on it and writes a docker-compose.yml for dockur/windows that boots the installed disk without reinstalling, " +
    'ports on 127.0.0.1. --update moves to a new version downloading only the changed chunks. --lazy boots before the download ' +
    'finishes: the overlay reads over NBD from orb serve, which fills the base in the background (docs/lazy-boot.md).',
  action: false,
  usage: 'REF --dir DIR [--base-dir SHARE | --lazy]',
  inputs,
  outputs,
  async run(inp, ctx) {
    const bind = inp.string('bind');
    checkBind(bind);
    const ram = inp.string('ram');
    if (!/^\d+(\.\d+)?\s*[KMGT]B?$/i.test(ram))
      throw new UsageError(`--ram '${ram}' is not a size dockur understands`, 'write it like 4G or 8192M');
    const name = inp.string('name');
    if (!/^[a-z0-9][a-z0-9_-]*$/.test(name))
      throw new UsageError(
        `--name '${name}' is not a valid compose project name`,
        'use lower-case letters, digits, - and _',
      );
    const password = inp.optString('admin-password');
    if (password) ctx.mask(password);
    const o = {
      ref: inp.string('ref'),
      dir: inp.string('dir'),
      update: inp.bool('update'),
      storeOptions: storeOptions(inp, inputs, ctx).options,
      bind,
      rdpPort: inp.number('rdp-port'),
      webPort: inp.number('web-port'),
      ram,
      cpus: inp.number('cpus'),
      name,
      image: inp.string('dockur-image'),
      ...(inp.optString('admin-user') ? { adminUser: inp.string('admin-user') } : {}),
      ...(password ? { adminPassword: password } : {}),
      ...(inp.optString('firmware')
        ? { firmware: inp.string('firmware') as 'bios' | 'uefi' | 'uefi-secure' }
        : {}),
      ...(inp.optString('disk-type') ? { diskType: inp.string('disk-type') as DockurDiskType } : {}),
      concurrency: inp.number('concurrency'),
      ...(inp.optString('base-dir') ? { baseDir: inp.string('base-dir') } : {}),
      verifyBase: inp.string('verify-base') as 'sample' | 'full',
      prepareOnly: inp.bool('prepare-only'),
      keepPrevious: inp.bool('keep-previous'),
      start: inp.bool('start'),
      log: ctx.log,
      progress: ctx.progress,
      signal: ctx.signal,
    };
    // --lazy: boot before the download finishes (the overlay reads from orb serve)
    const serve = inp.bool('lazy') ? serveInvocation(inp) : undefined;
    const r = serve
      ? await installLazy({
          ...o,
          lazy: { serveArgs: serve.args, serveEnv: serve.env, orbImage: inp.string('orb-image') },
        })
      : await install(o);
    const text = connectInstructions(r, !!password);
    ctx.log.info('\n' + text);
    ctx.summary
      .heading('install')
      .table(
        ['', ''],
        [
          ['image', r.reference],
          ['directory', r.dir],
          ['downloaded', formatBytes(r.bytesDownloaded)],
          ['reused', formatBytes(r.bytesReused)],
          ['RDP', r.rdp],
        ],
      )
      .code(text);
    return {
      dir: r.dir,
      'compose-file': r.compose,
      overlay: r.overlay,
      base: r.base,
      reference: r.reference,
      digest: r.digest,
      'content-sha256': r.contentSha256,
      'content-digest': r.contentDigest ?? '',
      'virtual-size': r.virtualSize,
      'bytes-downloaded': r.bytesDownloaded,
      'bytes-reused': r.bytesReused,
      'updated-from': r.updatedFrom ?? '',
      'previous-dir': r.previousDir ?? '',
      rdp: r.rdp,
      web: r.web,
      'admin-user': r.adminUser ?? '',
      warnings: r.warnings.join('; '),
      started: r.started,
      lazy: r.lazy ?? '',
      socket: r.socket ?? '',
    };
  },
});
