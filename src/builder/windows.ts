import { createHash } from 'node:crypto';
import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { mask, redact } from '../core/log.js';
import { requireUefi } from '../qemu/firmware.js';
import { generatePassword } from '../windows/accounts.js';
import { familyInfo, type WindowsFamily } from '../windows/families.js';
import { writeAnswerMedia, writeFinalizeMedia, writeProvisionMedia } from '../windows/media.js';
import { ORB_PS1 } from '../windows/scripts.js';
import { buildAutounattend, buildSysprepUnattend, type UnattendOptions } from '../windows/unattend.js';
import {
  finishOutputs,
  prepareOutDir,
  mediaDir,
  removeMedia,
  type BuildEnv,
  type BuildResult,
  type CommonBuildOptions,
} from './build-env.js';
import { makeDataIso } from './iso.js';
import { copyFirmwareState, restoreInstalled, storeInstalled } from './installed-cache.js';
import { createOverlay, createQcow2 } from '../qemu/img.js';
import {
  emptyState,
  isDone,
  loadState,
  markDone,
  recipeKey,
  saveState,
  type StageRecord,
} from './stage-state.js';
import { runStage, stageProtocol, type StageRunOptions } from './watch-boot.js';

/**
 * A Windows golden image in three boots, each on its own qcow2 layer:
 *
 *   install    ISO + virtio-win + answer media: Setup, then one automatic logon runs orb.ps1,
 *              which registers the stage task and shuts down          -> layers/base.qcow2
 *   provision  stage media with the scripts: run in order, output kept -> layers/provisioned.qcow2
 *   finalize   stage media with the real password and the sysprep answer file: clean up, trim,
 *              sysprep or not, shut down                                -> <name>.qcow2 (flattened)
 *
 * Setup runs with a throwaway password; the real one reaches the guest only in the last boot,
 * on media deleted right after. So the installed base (cacheable, keyed by the ISO digest and the
 * answer inputs) holds no secret of the user's, and a new password or script never reinstalls.
 */
const RECIPE = 'orb-windows-1';
const MIB = 1024 * 1024;

export interface WindowsBuildOptions extends CommonBuildOptions {
  iso: string;
  isoSha256: string;
  virtio?: { path: string; sha256: string };
  family: WindowsFamily;
  /** the answer inputs, with the real admin password */
  unattend: UnattendOptions;
  /** how long to press Enter at power-on for the boot-from-CD prompt (default by accelerator) */
  bootKeysMs?: number;
  /** extra QEMU arguments (tests) */
  extraQemuArgs?: string[];
}

async function scriptDigests(scripts: readonly string[]): Promise<{ name: string; sha256: string }[]> {
  const out = [];
  for (const s of scripts)
    out.push({
      name: s.split('/').pop()!,
      sha256: createHash('sha256')
        .update(await readFile(s))
        .digest('hex'),
    });
  return out;
}

export async function buildWindows(o: WindowsBuildOptions, env: BuildEnv): Promise<BuildResult> {
  const t0 = Date.now();
  const log = env.log;
  const dirs = await prepareOutDir(o.outDir);
  const state = o.resume ? await loadState(o.outDir, 'windows') : emptyState('windows');
  const diskInterface = o.virtio ? 'virtio' : 'sata';
  const nic = o.virtio ? 'virtio-net-pci' : 'e1000e';
  if (!o.virtio)
    log.warn(
      'no virtio-win ISO given: the disk is attached as SATA and the NIC as e1000e (slower; give virtio-win for virtio drivers)',
    );
  const uefi = o.firmware === 'bios' ? undefined : requireUefi(o.arch, o.firmware === 'uefi-secure');
  const tpm = o.firmware === 'uefi-secure';
  const at = (rel: string) => join(o.outDir, rel);
  const fw = (stage: string) => ({
    disk: '',
    ...(uefi ? { vars: join(dirs.firmware, `${stage}.vars.fd`) } : {}),
    ...(tpm ? { tpmDir: join(dirs.firmware, `${stage}.tpm`) } : {}),
  });
  const common: Omit<StageRunOptions, 'stage' | 'expect' | 'vm'> = {
    timeoutMs: o.timeoutMs,
    stallMs: o.stallMs,
    screenshotEveryMs: o.screenshotEveryMs,
    evidenceDir: o.outDir,
    log,
    ...(env.signal ? { signal: env.signal } : {}),
  };
  const vmBase = {
    arch: o.arch,
    accel: o.accel,
    memoryMiB: Math.round(o.memoryBytes / MIB),
    cpus: o.cpus,
    firmware: o.firmware,
    ...(o.extraQemuArgs ? { extraArgs: o.extraQemuArgs } : {}),
  };
  const ran: string[] = [];
  const reused: string[] = [];
  let cacheHit = false;
  let latestScreenshot: string | undefined;
  const noteShots = (r: { screenshots: string[] }) => {
    latestScreenshot = r.screenshots[r.screenshots.length - 1] ?? latestScreenshot;
  };

  // Keys: what each layer was made from. The answer file enters the key with a placeholder
  // password: the password is applied in the last stage and must not force a reinstall.
  const keyXml = buildAutounattend({ ...o.unattend, adminPassword: 'orb-key-placeholder' });
  const installKey = recipeKey({
    recipe: RECIPE,
    iso: o.isoSha256,
    virtio: o.virtio?.sha256,
    firmware: o.firmware,
    arch: o.arch,
    diskInterface,
    diskBytes: o.diskBytes,
    answer: keyXml,
    script: createHash('sha256').update(ORB_PS1).digest('hex'),
  });
  const provisionKey = recipeKey({ installKey, scripts: await scriptDigests(o.scripts) });

  // --- install
  const base = at('layers/base.qcow2');
  const installedFw = { ...fw('installed'), disk: base };
  if (await isDone(state, 'installed', installKey, o.outDir)) {
    reused.push('installed');
    log.info('installed: done in an earlier run, continuing after it');
  } else if (o.cache && (await restoreInstalled(o.cacheDir, installKey, installedFw, o.actionsCache, log))) {
    cacheHit = true;
    reused.push('installed');
    markDone(state, 'installed', record(installKey, 'layers/base.qcow2', 0));
    await saveState(o.outDir, state);
  } else {
    await rm(base, { force: true });
    await createQcow2(base, o.diskBytes, env.signal);
    if (installedFw.vars) {
      await rm(installedFw.vars, { force: true });
      await copyFile(uefi!.vars, installedFw.vars);
    }
    if (installedFw.tpmDir) await rm(installedFw.tpmDir, { recursive: true, force: true });
    const media = await mediaDir('orb-answer-');
    const installPassword = generatePassword();
    mask(installPassword);
    try {
      const xml = buildAutounattend({ ...o.unattend, adminPassword: installPassword });
      await writeAnswerMedia(join(media, 'tree'), xml, {
        family: o.family,
        computerName: o.unattend.computerName,
        adminUser: o.unattend.adminUser,
      });
      const answerIso = join(media, 'answer.iso');
      await makeDataIso(join(media, 'tree'), answerIso, { label: 'ORBANSWER', signal: env.signal });
      log.info(
        `install: Windows Setup from ${o.iso} (${familyInfo(o.family).label}, ${o.firmware}, ${o.accel})`,
      );
      const r = await runStage({
        ...common,
        stage: 'install',
        expect: ['installed'],
        bootKeysForMs: o.bootKeysMs ?? (o.accel === 'kvm' ? 60_000 : 120_000),
        vm: {
          ...vmBase,
          disks: [{ path: base, format: 'qcow2', interface: diskInterface, discard: true }],
          cdroms: [o.iso, ...(o.virtio ? [o.virtio.path] : []), answerIso],
          bootFrom: 'cdrom',
          ...(installedFw.vars ? { uefiVars: installedFw.vars } : {}),
          ...(installedFw.tpmDir ? { tpm: { stateDir: installedFw.tpmDir } } : {}),
          // Setup needs no network, and without it nothing changes the install behind our back.
          network: { nic, restrict: true },
        },
      });
      noteShots(r);
      ran.push('installed');
      markDone(state, 'installed', record(installKey, 'layers/base.qcow2', r.seconds));
      await saveState(o.outDir, state);
    } finally {
      // The answer media holds the (throwaway) setup password: never left behind.
      await removeMedia(media);
    }
    if (o.cache) await storeInstalled(o.cacheDir, installKey, installedFw, o.actionsCache, log);
  }

  // --- provision
  const provisioned = o.scripts.length ? 'layers/provisioned.qcow2' : 'layers/base.qcow2';
  const provisionedFw = { ...fw('provisioned'), disk: at(provisioned) };
  let provisionLog: string | undefined;
  if (await isDone(state, 'provisioned', provisionKey, o.outDir)) {
    reused.push('provisioned');
    log.info('provisioned: done in an earlier run, continuing after it');
  } else {
    await copyFirmwareState(installedFw, provisionedFw);
    let seconds = 0;
    if (o.scripts.length) {
      await rm(at(provisioned), { force: true });
      await createOverlay(at(provisioned), base, 'qcow2', env.signal);
      const media = await mediaDir('orb-stage-');
      try {
        await writeProvisionMedia(join(media, 'tree'), o.scripts);
        const stageIso = join(media, 'stage.iso');
        await makeDataIso(join(media, 'tree'), stageIso, { label: 'ORBSTAGE', signal: env.signal });
        const protocol = stageProtocol(log, 'provision');
        provisionLog = join(dirs.logs, 'provision.log');
        let r;
        try {
          r = await runStage({
            ...common,
            stage: 'provision',
            expect: ['provisioned'],
            protocol,
            vm: {
              ...vmBase,
              disks: [{ path: at(provisioned), format: 'qcow2', interface: diskInterface, discard: true }],
              cdroms: [stageIso],
              bootFrom: 'disk',
              ...(provisionedFw.vars ? { uefiVars: provisionedFw.vars } : {}),
              ...(provisionedFw.tpmDir ? { tpm: { stateDir: provisionedFw.tpmDir } } : {}),
              network: { nic },
            },
          });
        } finally {
          // Written on failure too: the failing script's output is what the user needs.
          await writeFile(provisionLog, redact(protocol.provisionLog()) + '\n');
        }
        seconds = r.seconds;
        noteShots(r);
        ran.push('provisioned');
      } finally {
        await removeMedia(media);
      }
    }
    markDone(state, 'provisioned', record(provisionKey, provisioned, seconds));
    await saveState(o.outDir, state);
  }

  // --- finalize (always: it applies the password, which is deliberately not part of any key)
  const final = at('layers/final.qcow2');
  const finalFw = { ...fw('final'), disk: final };
  await rm(final, { force: true });
  await createOverlay(final, at(provisioned), 'qcow2', env.signal);
  await copyFirmwareState(provisionedFw, finalFw);
  const media = await mediaDir('orb-final-');
  let finalSeconds = 0;
  try {
    await writeFinalizeMedia(join(media, 'tree'), {
      sysprep: o.sysprep,
      user: o.unattend.adminUser,
      password: o.adminPassword,
      builtinAdmin: familyInfo(o.family).server || o.unattend.adminUser.toLowerCase() === 'administrator',
      sysprepUnattendXml: buildSysprepUnattend(o.unattend),
    });
    const stageIso = join(media, 'stage.iso');
    await makeDataIso(join(media, 'tree'), stageIso, { label: 'ORBSTAGE', signal: env.signal });
    const r = await runStage({
      ...common,
      stage: 'finalize',
      expect: [o.sysprep ? 'generalized' : 'finalized'],
      vm: {
        ...vmBase,
        disks: [{ path: final, format: 'qcow2', interface: diskInterface, discard: true }],
        cdroms: [stageIso],
        bootFrom: 'disk',
        ...(finalFw.vars ? { uefiVars: finalFw.vars } : {}),
        ...(finalFw.tpmDir ? { tpm: { stateDir: finalFw.tpmDir } } : {}),
        network: { nic, restrict: true },
      },
    });
    finalSeconds = r.seconds;
    noteShots(r);
    ran.push(o.sysprep ? 'generalized' : 'finalized');
  } finally {
    await removeMedia(media);
  }

  const seconds = (Date.now() - t0) / 1000;
  const out = await finishOutputs({
    o,
    env,
    top: final,
    diskInterface,
    ...(uefi ? { uefiCode: uefi.code, uefiVars: finalFw.vars } : {}),
    build: {
      os: 'windows',
      arch: o.arch,
      firmware: o.firmware,
      tpm,
      edition: o.unattend.edition,
      windowsVersion: o.family,
      adminUser: o.unattend.adminUser,
      ports: o.unattend.rdp === false ? [] : [3389],
      generalized: o.sysprep,
      diskInterface,
      accelerator: o.accel,
      seconds: Math.round(seconds),
    },
  });
  markDone(state, 'final', {
    ...record(recipeKey({ provisionKey, sysprep: o.sysprep }), out.disk, finalSeconds),
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
    cacheHit,
    seconds,
    generalized: o.sysprep,
  };
}

function record(key: string, disk: string, seconds: number): StageRecord {
  return { key, disk, finishedAt: new Date().toISOString(), seconds: Math.round(seconds) };
}
