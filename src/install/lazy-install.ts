import { chmod, mkdir, rename, rm, stat } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import { writeFileAtomic } from '../core/fsutil.js';
import { mask } from '../core/log.js';
import { requireTool, run } from '../core/proc.js';
import type { BuildInfo } from '../core/stage-manifest-file.js';
import { writeCompose, type ComposeOptions, type OrbSidecar } from '../dockur/compose.js';
import '../stores/schemes.js';
import { readSmallBlob } from '../stores/layout.js';
import { openStore, type OpenedStore } from '../stores/open.js';
import { prepareDockur, rdpHost, type InstallOptions } from './install.js';
import { INSTALL_SCHEMA, readInstallState, type InstallResult, type InstallState } from './install-state.js';
import {
  checkSocketPath,
  copyOrb,
  createNbdOverlay,
  EXPORT_NAME,
  fillComplete,
  healthcheckCommand,
  layoutDir,
  nbdBacking,
  pinnedRef,
  qcow2Backing,
  rebaseOntoBase,
  selfCommand,
  ServeChild,
  SOCKET_NAME,
} from './lazy.js';
import { checkDisk, checkDocker, checkKvm, checkQemuImg, describeChecks, type Check } from './prereq.js';

/**
 * The `--lazy` path of `orb install` (layout in lazy.ts). Who serves the export:
 *  - install itself, as a supervised child, from the first run until the fill completes: it must
 *    see the cache become the verified base and then rebase the overlay, which needs qemu-img on
 *    the host and the overlay not held by a VM. While a VM holds it (QEMU's image lock) the child
 *    keeps serving and the rebase is retried. Ctrl-C stops it; running install again continues
 *    (serve resumes its cache).
 *  - with `--start`, the compose file's `orb` sidecar (a service Docker restarts; dockur waits
 *    for its health check): install hands over to it and returns. The rebase then happens on the
 *    next `orb install --lazy` after the fill completed, with Windows stopped.
 */
export interface LazyOptions {
  /** argv prefix that runs orb (tests: a stand-in server); default this orb under this node */
  serveCommand?: string[];
  /** non-secret store flags for `orb serve` (--plain-http, --s3-endpoint ...) */
  serveArgs: string[];
  /** secret store inputs by their environment variable: given to serve in its environment only */
  serveEnv: Record<string, string>;
  /** the sidecar's image (Node.js 24) */
  orbImage: string;
  /** how often the fill is checked (ms) */
  pollMs?: number;
  /** told when the overlay can boot (the export is ready) */
  onReady?: (info: { overlay: string; socket: string; virtualSize: number }) => void;
}

const short = (digest: string) => digest.slice(7, 19);

async function imageInfo(opened: OpenedStore): Promise<{ digest: string; build?: BuildInfo }> {
  const m = await opened.store.getManifest(opened.tag ?? 'latest');
  let json = JSON.parse(m.bytes.toString('utf8')) as {
    manifests?: { digest: string; artifactType?: string }[];
    config?: { digest: string; size: number; mediaType: string };
  };
  if (Array.isArray(json.manifests)) {
    const pick = json.manifests.find((d) => /orb\.disk/.test(d.artifactType ?? ''));
    if (!pick) throw new OrbError('input', `${opened.display} is an index without an orb disk image`);
    json = JSON.parse((await opened.store.getManifest(pick.digest)).bytes.toString('utf8')) as typeof json;
  }
  if (!json.config?.digest) throw new OrbError('input', `${opened.display} is not an orb disk image`);
  const config = JSON.parse((await readSmallBlob(opened.store, json.config, 1 << 20)).toString('utf8')) as {
    build?: BuildInfo;
  };
  return { digest: m.digest, ...(config.build ? { build: config.build } : {}) };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((res) => {
    const t = setTimeout(res, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), res()), { once: true });
  });

export async function installLazy(o: InstallOptions & { lazy: LazyOptions }): Promise<InstallResult> {
  const log = o.log;
  const lz = o.lazy;
  if (o.update) throw new UsageError('--lazy cannot --update yet', 'update without --lazy');
  if (o.baseDir)
    throw new UsageError('--lazy and --base-dir exclude each other', 'a shared base is already local');
  if (o.adminPassword) mask(o.adminPassword);
  for (const v of Object.values(lz.serveEnv)) mask(v);
  const dir = resolve(o.dir);
  const images = join(dir, 'images');
  const storage = join(dir, 'storage');
  const overlay = join(storage, 'data.qcow2');
  const socket = join(storage, SOCKET_NAME);
  checkSocketPath(socket);
  const warnings: string[] = [];
  const warn = (m: string) => (warnings.push(m), log.warn(m));
  const state = await readInstallState(dir);

  const opened = await openStore(o.ref, {
    log,
    ...(o.signal ? { signal: o.signal } : {}),
    options: o.storeOptions,
  });
  let child: ServeChild | undefined;
  try {
    const { digest, build: imageBuild } = await imageInfo(opened);
    if (state && state.digest !== digest)
      throw new UsageError(
        `${dir} already holds ${state.reference} (${short(state.digest)}); ${opened.display} is ${short(digest)}`,
        'install to another --dir (--lazy cannot --update yet)',
      );
    const base = join(images, `base-${short(digest)}.img`);
    const baseName = relative(storage, base);
    const checks: Check[] = [
      checkQemuImg(),
      await checkDisk(
        dir,
        o.headroom ?? 2 * 1024 ** 3,
        'the overlay (the disk itself fills in the background)',
      ),
      ...(o.runtimeChecks ? await o.runtimeChecks() : [...(await checkDocker()), await checkKvm()]),
    ];
    log.info(`checks:\n${describeChecks(checks)}`);
    const blocking = checks.filter((c) => !c.ok && (c.forFiles || !o.prepareOnly));
    if (blocking.length)
      throw new OrbError(
        'environment',
        `this machine is not ready: ${blocking.map((c) => c.name).join(', ')}`,
        {
          hint: blocking.map((c) => `${c.name}: ${c.fix ?? c.detail}`).join('; '),
        },
      );
    for (const c of checks)
      if (!c.ok) warn(`${c.name}: ${c.detail} (needed to run Windows; fix: ${c.fix ?? 'see above'})`);
    await mkdir(images, { recursive: true });
    await mkdir(storage, { recursive: true });

    // The overlay on a rerun: still on the export, or already rebased onto the base.
    const overlayExists = !!(await stat(overlay).catch(() => undefined));
    const backing = overlayExists ? await qcow2Backing(overlay) : undefined;
    if (overlayExists && backing !== baseName && backing !== nbdBacking(socket))
      throw new OrbError(
        'input',
        `${overlay} is not an overlay of this image (it names ${backing ?? 'no backing file'})`,
        {
          hint: 'install to another --dir, or move that storage folder away',
        },
      );
    const rebased = backing === baseName;
    if (rebased && !(await fillComplete(base)))
      throw new OrbError('input', `${overlay} is backed by ${base}, which is missing or incomplete`, {
        hint: 'restore the base, or install to another --dir',
      });

    const serveArgv = [
      'serve',
      pinnedRef(o.ref, digest),
      '--socket',
      socket,
      '--cache',
      base,
      '--json',
      ...lz.serveArgs,
    ];
    let virtualSize: number;
    let contentDigest = state?.contentDigest;
    if (rebased || (overlayExists && (await fillComplete(base)))) {
      virtualSize = (await stat(base)).size; // nothing to fetch: only the rebase may be left
    } else {
      child = await ServeChild.start(lz.serveCommand ?? selfCommand(), serveArgv, { env: lz.serveEnv, log });
      virtualSize = child.ready.virtualSize;
      contentDigest = child.ready.contentDigest ?? contentDigest;
      if (child.ready.export !== EXPORT_NAME)
        throw new OrbError(
          'internal',
          `orb serve exports '${child.ready.export}', the overlay names '${EXPORT_NAME}'`,
        );
    }
    if (!overlayExists) {
      await rm(`${overlay}.partial`, { force: true });
      await createNbdOverlay(`${overlay}.partial`, socket, virtualSize);
      await rename(`${overlay}.partial`, overlay);
    }

    // dockur's view, as a full install writes it, plus the sidecar while lazy.
    const build = imageBuild ?? state?.build;
    const dockur = await prepareDockur(o, dir, storage, build, virtualSize, warn);
    const { composePath, adminUser } = dockur;
    const compose = (orb?: OrbSidecar): ComposeOptions => ({ ...dockur.compose, ...(orb ? { orb } : {}) });
    const header = [
      `Written by orb install --lazy: ${opened.display} (${digest})`,
      'Windows boots the installed disk in ./storage (an overlay on ./images); dockur does not reinstall it.',
    ];
    const record = (lazy: boolean): InstallState & { lazy?: { socket: string; cache: string } } => ({
      schema: INSTALL_SCHEMA,
      reference: opened.display,
      digest,
      base: relative(dir, base),
      virtualSize,
      contentSha256: '',
      ...(contentDigest ? { contentDigest } : {}),
      installedAt: state?.installedAt ?? new Date().toISOString(),
      ...(build ? { build } : {}),
      ...(lazy ? { lazy: { socket: relative(dir, socket), cache: relative(dir, base) } } : {}),
    });

    // Rebased already (a rerun after the fill): the install is a plain one.
    const finish = async (bytesFetched: number): Promise<InstallResult> => {
      await chmod(base, 0o444);
      await writeCompose(composePath, compose(), header);
      await rm(join(dir, 'orb.env'), { force: true }); // the sidecar's credentials are not needed any more
      await writeFileAtomic(join(dir, 'install.json'), JSON.stringify(record(false), null, 2) + '\n');
      log.info(`the disk is local: ${overlay} is now backed by ${base}, without the server`);
      return result(bytesFetched, 'complete');
    };
    const result = (bytesFetched: number, lazy: 'complete' | 'serving'): InstallResult => {
      const host = rdpHost(o.bind);
      return {
        dir,
        compose: composePath,
        overlay,
        base,
        reference: `${opened.display.replace(/@sha256:.*/, '')}@${digest}`,
        digest,
        contentSha256: '',
        virtualSize,
        bytesDownloaded: bytesFetched,
        bytesReused: 0,
        ...(adminUser ? { adminUser } : {}),
        rdp: `${host}:${o.rdpPort}`,
        web: `http://${host}:${o.webPort}/`,
        checks,
        warnings,
        started: lazy === 'serving' && o.start,
        lazy,
        socket,
      };
    };
    if (rebased) return await finish(0);

    // The sidecar: this orb (bundle and entry) copied into DIR/orb, every path at its host path.
    const orbDir = join(dir, 'orb');
    await copyOrb(orbDir);
    const secrets = Object.entries(lz.serveEnv);
    if (secrets.some(([, v]) => /[\r\n]/.test(v)))
      throw new UsageError('a credential for orb serve must be one line');
    if (secrets.length)
      await writeFileAtomic(
        join(dir, 'orb.env'),
        [
          '# Written by orb install --lazy: the store credentials of orb serve. Keep private (0600).',
          ...secrets.map(([k, v]) => `${k}='${v.replace(/'/g, "\\'")}'`),
        ].join('\n') + '\n',
        0o600,
      );
    const sidecar: OrbSidecar = {
      image: lz.orbImage,
      command: ['node', join(orbDir, 'bin', 'orb.js'), ...serveArgv],
      socket,
      volumes: [
        `${orbDir}:${orbDir}:ro`,
        `${images}:${images}`,
        `${storage}:${storage}`,
        // an oci-layout store is a folder on this machine: the sidecar reads it at the same path
        ...(o.ref.startsWith('oci-layout:') ? [`${layoutDir(o.ref)}:${layoutDir(o.ref)}:ro`] : []),
      ],
      windowsVolumes: [`${storage}:${storage}`],
      healthcheck: healthcheckCommand(socket),
      ...(secrets.length ? { envFile: './orb.env' } : {}),
    };
    await writeCompose(composePath, compose(sidecar), header);
    await writeFileAtomic(join(dir, 'install.json'), JSON.stringify(record(true), null, 2) + '\n');
    lz.onReady?.({ overlay, socket, virtualSize });
    log.info(
      `the disk can boot now: ${overlay} reads what it lacks from ${socket} while the rest fills in the background`,
    );

    if (o.start) {
      // hand over to the sidecar: it serves the same socket and cache
      await child?.stop();
      child = undefined;
      await run(requireTool('docker', 'docker.io'), ['compose', '-f', composePath, 'up', '-d'], {
        check: true,
        cwd: dir,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      return result(0, 'serving');
    }

    // Supervise until the fill completes and the overlay could be rebased.
    let said = false;
    for (;;) {
      if (o.signal?.aborted)
        throw new OrbError('environment', 'stopped: run orb install again to continue the fill');
      if (await fillComplete(base)) {
        if ((await rebaseOntoBase(overlay, base)) === 'done') break;
        if (!child) {
          // the sidecar serves the running VM: the rebase waits for a run with Windows stopped
          warn(
            'the disk is complete but Windows is running on the overlay: stop it and run orb install again to drop the server',
          );
          return result(0, 'serving');
        }
        if (!said)
          log.info('the disk is complete; a VM holds the overlay: serving until it stops, then rebasing');
        said = true;
      }
      if (child) {
        const ended = await Promise.race([
          child.exited,
          sleep(lz.pollMs ?? 2000, o.signal).then(() => undefined),
        ]);
        if (ended && !(await fillComplete(base))) {
          child = undefined;
          throw new OrbError(
            'environment',
            `orb serve stopped (exit ${ended.code}) before the disk was complete`,
            {
              hint: 'its log lines above say why; run orb install again to continue where it stopped',
            },
          );
        }
        if (ended) child = undefined; // complete: the base is local, the server is not needed any more
      } else await sleep(lz.pollMs ?? 2000, o.signal);
    }
    const stop = await child?.stop();
    child = undefined;
    return await finish(stop?.bytesFetched ?? 0);
  } finally {
    await child?.stop();
    await opened.store.close?.();
  }
}
