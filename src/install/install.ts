import { chmod, mkdir, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fsutil.js';
import { mask, type Logger } from '../core/log.js';
import { readManifest, stageManifestPath, type BuildInfo } from '../core/stage-manifest-file.js';
import { requireTool, run } from '../core/proc.js';
import type { Progress } from '../core/progress.js';
import { formatBytes } from '../core/progress.js';
import { dockurDiskType, dockurMode, type DockurDiskType } from '../dockur/bundle.js';
import {
  DOCKUR_IMAGE,
  writeCompose,
  writeCredentialsEnv,
  writeDockurState,
  type ComposeOptions,
} from '../dockur/compose.js';
import '../stores/schemes.js';
import { openStore, type StoreOptions } from '../stores/open.js';
import { makePlan, resolveManifest } from '../transfer/pull-plan.js';
import { pull } from '../transfer/pull.js';
import { checkDisk, checkDocker, checkKvm, checkQemuImg, describeChecks, type Check } from './prereq.js';
import { INSTALL_SCHEMA, readInstallState, type InstallResult, type InstallState } from './install-state.js';
import { findSharedBase, type BaseVerify, type SharedBase } from './shared-base.js';

export {
  connectInstructions,
  INSTALL_SCHEMA,
  readInstallState,
  type InstallResult,
  type InstallState,
} from './install-state.js';

/**
 * `orb install REF --dir DIR`: from nothing to a Windows that `docker compose up` boots.
 *   DIR/images/base-<digest>.img   the pulled golden disk (raw, sparse), read-only (0444)
 *   DIR/storage/data.qcow2         this client's overlay on it (the golden image never changes)
 *   DIR/storage/windows.*          dockur's state: boot the installed disk, never reinstall
 *   DIR/docker-compose.yml         dockur/windows, ports on 127.0.0.1 unless asked otherwise
 *   DIR/windows.env                USERNAME/PASSWORD when given (0600), referenced, not inlined
 *   DIR/install.json               what is installed (reference, digest), for --update
 * `--update` pulls the new version taking unchanged chunks from the installed base, then starts a
 * fresh overlay on it; the old overlay (this client's changes) is kept in DIR/previous/.
 */
export interface InstallOptions {
  ref: string;
  dir: string;
  update: boolean;
  storeOptions: StoreOptions['options'];
  bind: string;
  rdpPort: number;
  webPort: number;
  ram: string;
  cpus: number;
  name: string;
  image?: string;
  adminUser?: string;
  adminPassword?: string;
  firmware?: 'bios' | 'uefi' | 'uefi-secure';
  diskType?: DockurDiskType;
  concurrency: number;
  /** a read-only share holding the base (shared-base.ts): only the overlay is kept in DIR */
  baseDir?: string;
  verifyBase?: BaseVerify;
  /** Docker and KVM failures become warnings: only the files are prepared */
  prepareOnly: boolean;
  keepPrevious: boolean;
  /** run `docker compose up -d` at the end */
  start: boolean;
  /** free space to leave for the overlay to grow (bytes) */
  headroom?: number;
  log: Logger;
  progress(label: string, total?: number): Progress;
  signal?: AbortSignal;
  /** tests: replace the Docker/KVM checks */
  runtimeChecks?: () => Promise<Check[]>;
}

const short = (digest: string) => digest.slice(7, 19);

async function qemuImgInfo(path: string): Promise<{ 'backing-filename'?: string; 'virtual-size': number }> {
  const r = await run(requireTool('qemu-img', 'qemu-utils'), ['info', '--output=json', '-f', 'qcow2', path]);
  if (r.code !== 0) {
    if (/lock/i.test(r.stderr)) {
      throw new OrbError('environment', `${path} is in use: Windows is running`, {
        hint: `stop it first: docker compose -f ${join(path, '..', '..', 'docker-compose.yml')} down`,
      });
    }
    throw new OrbError('input', `cannot read ${path}: ${r.stderr.trim().split('\n').pop()}`);
  }
  return JSON.parse(r.stdout) as { 'backing-filename'?: string; 'virtual-size': number };
}

/**
 * The overlay names its backing file relative to itself (the same path on the host and in the
 * container), or absolute for a shared base, which the compose file mounts at that same path.
 */
const backingName = (storage: string, base: string, shared: boolean) =>
  shared ? base : relative(storage, base);

async function createOverlay(
  overlay: string,
  base: string,
  shared: boolean,
  signal?: AbortSignal,
): Promise<void> {
  const qemuImg = requireTool('qemu-img', 'qemu-utils');
  const partial = `${overlay}.partial`;
  await rm(partial, { force: true });
  const backing = backingName(join(overlay, '..'), base, shared);
  const r = await run(
    qemuImg,
    ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', '-b', backing, '-F', 'raw', partial],
    { ...(signal ? { signal } : {}), cwd: join(overlay, '..') },
  );
  if (r.code !== 0) {
    await rm(partial, { force: true });
    throw new OrbError('environment', `qemu-img could not create the overlay ${overlay}: ${r.stderr.trim()}`);
  }
  await rename(partial, overlay);
}

export async function install(o: InstallOptions): Promise<InstallResult> {
  const log = o.log;
  const dir = resolve(o.dir);
  const images = join(dir, 'images');
  const storage = join(dir, 'storage');
  const overlay = join(storage, 'data.qcow2');
  const warnings: string[] = [];
  const warn = (m: string) => {
    warnings.push(m);
    log.warn(m);
  };
  if (o.adminPassword) mask(o.adminPassword);

  const state = await readInstallState(dir);
  if (state?.lazy)
    throw new UsageError(
      `${dir} is a --lazy install still filling`,
      `run it with --lazy: orb install ${o.ref} --dir ${o.dir} --lazy`,
    );
  if (o.update && !state)
    throw new UsageError(
      `nothing is installed in ${dir} to update`,
      `install first: orb install ${o.ref} --dir ${o.dir}`,
    );

  // What is being installed (manifest and sizes), before any download.
  const opened = await openStore(o.ref, {
    log,
    ...(o.signal ? { signal: o.signal } : {}),
    options: o.storeOptions,
  });
  try {
    const { manifest, digest } = await resolveManifest(opened.store, opened.tag ?? 'latest', opened.display);
    const plan = await makePlan(opened.store, manifest, digest, opened.display);
    if (state && state.digest !== digest && !o.update) {
      throw new UsageError(
        `${dir} already holds ${state.reference} (${short(state.digest)}); ${opened.display} is ${short(digest)}`,
        'add --update to move this client to the new version, or install to another --dir',
      );
    }
    const moving = !!state && state.digest !== digest;
    // A shared base is found and checked before anything else happens on this client.
    const shared: SharedBase | undefined = o.baseDir
      ? await findSharedBase(o.baseDir, plan, {
          verify: o.verifyBase ?? 'sample',
          log,
          ...(o.signal ? { signal: o.signal } : {}),
        })
      : undefined;
    const basePath = shared?.path ?? join(images, `base-${short(digest)}.img`);
    const baseName = relative(dir, basePath);
    const haveBase =
      !!shared || (state?.digest === digest && !!(await stat(basePath).catch(() => undefined)));
    const allocated = plan.units.reduce((a, u) => a + u.regions.reduce((b, r) => b + r.length, 0), 0);
    const headroom = o.headroom ?? 2 * 1024 ** 3;

    // Prerequisites, all reported at once, each with its fix.
    await mkdir(dir, { recursive: true });
    const checks: Check[] = [
      checkQemuImg(),
      await checkDisk(
        dir,
        (haveBase ? 0 : allocated) + headroom,
        haveBase ? 'the overlay' : `the disk image (${formatBytes(allocated)} of data) and the overlay`,
      ),
    ];
    checks.push(
      ...(o.runtimeChecks ? await o.runtimeChecks() : [...(await checkDocker()), await checkKvm()]),
    );
    const blocking = checks.filter((c) => !c.ok && (c.forFiles || !o.prepareOnly));
    log.info(`checks:\n${describeChecks(checks)}`);
    if (blocking.length) {
      throw new OrbError(
        'environment',
        `this machine is not ready: ${blocking.map((c) => c.name).join(', ')}`,
        {
          hint:
            blocking.map((c) => `${c.name}: ${c.fix ?? c.detail}`).join('; ') +
            (o.prepareOnly ? '' : ' (or --prepare-only to only download and write the files now)'),
        },
      );
    }
    for (const c of checks)
      if (!c.ok) warn(`${c.name}: ${c.detail} (needed to run Windows; fix: ${c.fix ?? 'see above'})`);

    // Before downloading anything: a running Windows holds the overlay (QEMU's image lock).
    if (moving && (await stat(overlay).catch(() => undefined))) await qemuImgInfo(overlay);
    await mkdir(images, { recursive: true });
    await mkdir(storage, { recursive: true });

    // The golden disk: resumable and verified by the pull engine; read-only once in place.
    let bytesDownloaded = 0;
    let bytesReused = 0;
    const oldBase = state ? resolve(dir, state.base) : undefined;
    if (!haveBase) {
      const useBase = moving && oldBase && (await stat(oldBase).catch(() => undefined)) ? oldBase : undefined;
      if (moving && !useBase)
        warn(`the installed base ${state!.base} is missing: downloading the whole new version`);
      const r = await pull({
        source: opened.store,
        ref: digest,
        display: opened.display,
        output: basePath,
        format: 'raw',
        ...(useBase ? { base: useBase } : {}),
        concurrency: o.concurrency,
        manifestPath: stageManifestPath(basePath),
        log,
        progress: o.progress,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      bytesDownloaded = r.bytesDownloaded;
      bytesReused = r.bytesReused;
    }
    if (!shared) await chmod(basePath, 0o444); // never on the share: it is not ours to change
    const virtualSize = (await stat(basePath)).size;
    const stage =
      shared?.manifest ?? (await readManifest(stageManifestPath(basePath)).catch(() => undefined));
    const build = stage?.build ?? state?.build;
    // a chunked disk is identified by its orb2 content root; a published file by its sha256
    const contentDigest = plan.kind === 'disk' ? plan.contentDigest : undefined;
    const contentSha256 =
      plan.kind === 'disk' ? '' : (stage?.image.contentSha256 ?? plan.contentDigest.replace(/^sha256:/, ''));

    // This client's overlay: kept on reruns, set aside (not deleted) when moving to a new version.
    let previousDir: string | undefined;
    const overlayExists = !!(await stat(overlay).catch(() => undefined));
    if (overlayExists && moving) {
      await qemuImgInfo(overlay); // refuses while Windows runs (QEMU holds the image lock)
      previousDir = join(dir, 'previous', short(state!.digest));
      await rm(previousDir, { recursive: true, force: true });
      await mkdir(previousDir, { recursive: true });
      await rename(overlay, join(previousDir, 'data.qcow2'));
      // firmware variables and TPM state belong to the old disk's boot entries
      for (const f of await readdir(storage)) {
        if (/\.(rom|vars|tpm)$/.test(f) || f === 'windows.boot')
          await rename(join(storage, f), join(previousDir, f));
      }
      const qemuImg = requireTool('qemu-img', 'qemu-utils');
      await run(
        qemuImg,
        [
          'rebase',
          '-u',
          '-f',
          'qcow2',
          '-b',
          oldBase!.startsWith(images + '/') ? relative(previousDir, oldBase!) : oldBase!,
          '-F',
          'raw',
          join(previousDir, 'data.qcow2'),
        ],
        { check: true },
      );
      log.info(`this client's changes to ${state!.reference} are kept in ${previousDir}`);
    } else if (overlayExists) {
      const info = await qemuImgInfo(overlay);
      if (info['backing-filename'] !== backingName(storage, basePath, !!shared)) {
        throw new OrbError(
          'input',
          `${overlay} is not an overlay of ${baseName} (it names ${info['backing-filename'] ?? 'no backing file'})`,
          {
            hint: 'install to another --dir, or move that storage folder away',
          },
        );
      }
    }
    if (!(await stat(overlay).catch(() => undefined)))
      await createOverlay(overlay, basePath, !!shared, o.signal);

    const { composePath, compose, adminUser } = await prepareDockur(
      o,
      dir,
      storage,
      build,
      virtualSize,
      warn,
    );
    await writeCompose(
      composePath,
      {
        ...compose,
        ...(shared ? { extraVolumes: [`${dirname(basePath)}:${dirname(basePath)}:ro`] } : {}),
      },
      [
        `Written by orb install: ${opened.display} (${digest})`,
        'Windows boots the installed disk in ./storage (an overlay on the read-only ./images); dockur does not reinstall it.',
      ],
    );
    if (o.bind !== '127.0.0.1' && o.bind !== '::1')
      warn(
        `RDP and the web console are published on ${o.bind}, not only on this machine: protect them with a firewall`,
      );

    const record: InstallState = {
      schema: INSTALL_SCHEMA,
      reference: opened.display,
      digest,
      base: shared ? basePath : relative(dir, basePath),
      virtualSize,
      contentSha256,
      ...(contentDigest ? { contentDigest } : {}),
      installedAt: moving || !state ? new Date().toISOString() : state.installedAt,
      ...(build ? { build } : {}),
      ...(moving
        ? {
            previous: {
              digest: state!.digest,
              dir: previousDir ? relative(dir, previousDir) : '',
              base: state!.base,
            },
          }
        : state?.previous
          ? { previous: state.previous }
          : {}),
    };
    await writeFileAtomic(join(dir, 'install.json'), JSON.stringify(record, null, 2) + '\n');

    if (moving && !o.keepPrevious) {
      if (previousDir) {
        await rm(previousDir, { recursive: true, force: true });
        await rmdir(join(dir, 'previous')).catch(() => undefined); // only when nothing else is kept there
      }
      if (oldBase?.startsWith(images + '/')) {
        // a base on the share belongs to every client: only our own copy is removed
        await rm(oldBase, { force: true });
        await rm(stageManifestPath(oldBase), { force: true });
      }
      previousDir = undefined;
      delete record.previous;
      await writeFileAtomic(join(dir, 'install.json'), JSON.stringify(record, null, 2) + '\n');
    }

    let started = false;
    if (o.start) {
      const docker = requireTool('docker', 'docker.io');
      await run(docker, ['compose', '-f', composePath, 'up', '-d'], {
        check: true,
        cwd: dir,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      started = true;
    }
    const host = rdpHost(o.bind);
    return {
      dir,
      compose: composePath,
      overlay,
      base: basePath,
      reference: `${opened.display.replace(/@sha256:.*/, '')}@${digest}`,
      digest,
      contentSha256,
      ...(contentDigest ? { contentDigest } : {}),
      virtualSize,
      bytesDownloaded,
      bytesReused,
      ...(moving ? { updatedFrom: state!.digest } : {}),
      ...(previousDir ? { previousDir } : {}),
      ...(adminUser ? { adminUser } : {}),
      rdp: `${host}:${o.rdpPort}`,
      web: `http://${host}:${o.webPort}/`,
      checks,
      warnings,
      started,
    };
  } finally {
    await opened.store.close?.();
  }
}

/**
 * dockur's view of an installed disk, shared by `orb install` and `orb install --lazy`: boot it
 * with the firmware and disk bus Windows was installed with (from the image's build facts, or
 * the options), the administrator's credentials in windows.env (0600), and the compose settings.
 */
export async function prepareDockur(
  o: InstallOptions,
  dir: string,
  storage: string,
  build: BuildInfo | undefined,
  virtualSize: number,
  warn: (m: string) => void,
): Promise<{ composePath: string; compose: ComposeOptions; adminUser: string | undefined }> {
  const firmware = o.firmware ?? build?.firmware;
  if (!firmware)
    warn('the image does not say how it boots; assuming UEFI (give --firmware bios for a BIOS install)');
  const mode = dockurMode(firmware ?? 'uefi');
  const iface = build?.['diskInterface'] as 'virtio' | 'sata' | 'ide' | 'nvme' | undefined;
  const diskType = o.diskType ?? (iface ? dockurDiskType(iface) : undefined);
  if (!diskType)
    warn(
      'the image does not say which disk bus Windows was installed on; dockur will use SCSI. If Windows stops with INACCESSIBLE_BOOT_DEVICE, reinstall with --disk-type',
    );
  if (build?.os && build.os !== 'windows')
    warn(`the image was built as ${build.os}, but dockur/windows runs Windows`);
  await writeDockurState(storage, mode, diskType);
  const envPath = join(dir, 'windows.env');
  const adminUser = o.adminUser ?? build?.adminUser;
  if (o.adminPassword) await writeCredentialsEnv(envPath, adminUser, o.adminPassword);
  const hasEnv = !!(await stat(envPath).catch(() => undefined));
  return {
    adminUser,
    composePath: join(dir, 'docker-compose.yml'),
    compose: {
      name: o.name,
      image: o.image ?? DOCKUR_IMAGE,
      bind: o.bind,
      rdpPort: o.rdpPort,
      webPort: o.webPort,
      ram: o.ram,
      cpus: o.cpus,
      diskSize: virtualSize,
      ...(diskType ? { diskType } : {}),
      mode,
      ...(hasEnv ? { envFile: './windows.env' } : {}),
      imagesDir: './images',
      storageDir: './storage',
    },
  };
}

/** Where a client on this machine reaches the published RDP port bound to `bind`. */
export function rdpHost(bind: string): string {
  if (bind === '0.0.0.0' || bind === '::') return '127.0.0.1';
  return bind.includes(':') ? `[${bind}]` : bind;
}
