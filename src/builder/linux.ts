import { copyFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError } from '../core/errors.js';
import { redact } from '../core/log.js';
import { requireUefi } from '../qemu/firmware.js';
import { writeSeedIso } from './cloudinit.js';
import {
  finishOutputs,
  prepareOutDir,
  mediaDir,
  removeMedia,
  type BuildEnv,
  type BuildResult,
  type CommonBuildOptions,
} from './build-env.js';
import { copyFirmwareState } from './installed-cache.js';
import { createOverlay, flatten, imgInfo, resizeImage } from '../qemu/img.js';
import { qemuName, vetImage } from '../image/untrusted.js';
import { emptyState, isDone, loadState, markDone, recipeKey, saveState } from './stage-state.js';
import { runStage } from './watch-boot.js';

/**
 * A Linux golden image from a cloud image: the image is imported as the base layer (converted to
 * qcow2, grown to the disk size), then one boot with a cloud-init NoCloud seed creates the user,
 * installs packages, runs the scripts, cleans up (optionally generalizes) and powers off, on an
 * overlay. Same watcher, outputs and manifest as the Windows build.
 */
const RECIPE = 'orb-linux-1';
const MIB = 1024 * 1024;

export interface LinuxBuildOptions extends CommonBuildOptions {
  image: string;
  imageSha256: string;
  hostname: string;
  packages: string[];
  sshAuthorizedKeys: string[];
  /** IANA zone */
  timeZone?: string;
  /** NIC model (default: the runner's; virtio-net-pci suits cloud images) */
  nic?: string;
  extraQemuArgs?: string[];
}

export async function buildLinux(o: LinuxBuildOptions, env: BuildEnv): Promise<BuildResult> {
  const t0 = Date.now();
  const log = env.log;
  if (o.timeZone && o.timeZone !== 'UTC' && !o.timeZone.includes('/')) {
    throw new UsageError(
      `input 'time-zone': '${o.timeZone}' is not an IANA zone`,
      "Linux images take names such as 'UTC' or 'Europe/Berlin'",
    );
  }
  const dirs = await prepareOutDir(o.outDir);
  const state = o.resume ? await loadState(o.outDir, 'linux') : emptyState('linux');
  const uefi = o.firmware === 'bios' ? undefined : requireUefi(o.arch, o.firmware === 'uefi-secure');
  const at = (rel: string) => join(o.outDir, rel);
  const ran: string[] = [];
  const reused: string[] = [];
  const installKey = recipeKey({ recipe: RECIPE, image: o.imageSha256, diskBytes: o.diskBytes });

  const base = at('layers/base.qcow2');
  const baseVars = uefi ? join(dirs.firmware, 'installed.vars.fd') : undefined;
  if (await isDone(state, 'installed', installKey, o.outDir)) {
    reused.push('installed');
  } else {
    log.info(`importing the cloud image ${o.image}`);
    // A downloaded cloud image is someone else's file: pinned format, and refused if it names
    // other files (src/image/untrusted.ts), so the import cannot pull a host file into the image.
    const source = qemuName(await vetImage(o.image));
    await flatten(source, base, 'qcow2', env.progress('import image', 100), env.signal);
    const info = await imgInfo(base, env.signal);
    if (o.diskBytes > info.virtualSize) await resizeImage(base, o.diskBytes, env.signal);
    else if (o.diskBytes < info.virtualSize)
      log.warn(`disk-size is smaller than the image (${info.virtualSize} bytes); keeping the image's size`);
    if (baseVars) {
      await rm(baseVars, { force: true });
      await copyFile(uefi!.vars, baseVars);
    }
    markDone(state, 'installed', {
      key: installKey,
      disk: 'layers/base.qcow2',
      finishedAt: new Date().toISOString(),
      seconds: Math.round((Date.now() - t0) / 1000),
    });
    await saveState(o.outDir, state);
    ran.push('installed');
  }

  // Provisioning and clean-up share one boot: cloud-init runs once per instance.
  const final = at('layers/final.qcow2');
  const finalVars = uefi ? join(dirs.firmware, 'final.vars.fd') : undefined;
  await rm(final, { force: true });
  await createOverlay(final, base, 'qcow2', env.signal);
  await copyFirmwareState(
    { disk: base, ...(baseVars ? { vars: baseVars } : {}) },
    { disk: final, ...(finalVars ? { vars: finalVars } : {}) },
  );
  const media = await mediaDir('orb-seed-');
  let provisionLog: string | undefined;
  let latestScreenshot: string | undefined;
  let stageSeconds = 0;
  try {
    const seed = join(media, 'seed.iso');
    await writeSeedIso(
      media,
      seed,
      {
        hostname: o.hostname,
        adminUser: o.adminUser,
        adminPassword: o.adminPassword,
        sshAuthorizedKeys: o.sshAuthorizedKeys,
        packages: o.packages,
        scripts: o.scripts,
        generalize: o.sysprep,
        ...(o.timeZone ? { timeZone: o.timeZone } : {}),
      },
      env.signal,
    );
    const r = await runStage({
      stage: 'provision',
      expect: [o.sysprep ? 'generalized' : 'finalized'],
      timeoutMs: o.timeoutMs,
      stallMs: o.stallMs,
      screenshotEveryMs: o.screenshotEveryMs,
      evidenceDir: o.outDir,
      log,
      ...(env.signal ? { signal: env.signal } : {}),
      vm: {
        arch: o.arch,
        accel: o.accel,
        memoryMiB: Math.round(o.memoryBytes / MIB),
        cpus: o.cpus,
        firmware: o.firmware,
        disks: [{ path: final, format: 'qcow2', interface: 'virtio', discard: true }],
        cdroms: [seed],
        bootFrom: 'disk',
        ...(finalVars ? { uefiVars: finalVars } : {}),
        network: { ...(o.nic ? { nic: o.nic } : {}) },
        ...(o.extraQemuArgs ? { extraArgs: o.extraQemuArgs } : {}),
      },
    });
    stageSeconds = r.seconds;
    latestScreenshot = r.screenshots[r.screenshots.length - 1];
    provisionLog = join(dirs.logs, 'provision.log');
    await writeFile(provisionLog, redact(r.protocol.provisionLog()) + '\n');
    ran.push('provisioned', o.sysprep ? 'generalized' : 'finalized');
  } finally {
    // The seed carries the password hash; it is not an output.
    await removeMedia(media);
  }
  const seconds = (Date.now() - t0) / 1000;
  const out = await finishOutputs({
    o,
    env,
    top: final,
    diskInterface: 'virtio',
    ...(uefi ? { uefiCode: uefi.code, uefiVars: finalVars } : {}),
    build: {
      os: 'linux',
      arch: o.arch,
      firmware: o.firmware,
      tpm: false,
      adminUser: o.adminUser,
      ports: [22],
      generalized: o.sysprep,
      accelerator: o.accel,
      seconds: Math.round(seconds),
    },
  });
  const provisionKey = recipeKey({ installKey, scripts: o.scripts, packages: o.packages });
  const now = new Date().toISOString();
  markDone(state, 'provisioned', {
    key: provisionKey,
    disk: out.disk,
    finishedAt: now,
    seconds: Math.round(stageSeconds),
  });
  markDone(state, 'final', {
    key: provisionKey,
    disk: out.disk,
    finishedAt: now,
    seconds: 0,
    generalized: o.sysprep,
  });
  await saveState(o.outDir, state);
  await rm(final, { force: true });
  return {
    ...out,
    format: o.outputFormat,
    buildLog: join(o.outDir, 'build.log'),
    screenshotsDir: dirs.shots,
    ...(latestScreenshot ? { latestScreenshot } : {}),
    ...(provisionLog ? { provisionLog } : {}),
    ran,
    reused,
    cacheHit: false,
    seconds,
    generalized: o.sysprep,
  };
}
