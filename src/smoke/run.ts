import { copyFile, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { trackPath } from '../core/cleanup.js';
import { OrbError } from '../core/errors.js';
import { readManifest, stageManifestPath, type OrbManifest } from '../core/stage-manifest-file.js';
import { startVm, type Firmware, type Vm } from '../qemu/runner.js';
import { probeRdp, type RdpProbeResult } from '../rdp/probe.js';
import { createOverlay, describeDisk, inspectDisk } from './disk.js';
import { ScreenshotRecorder, tailFile } from './evidence.js';
import { probeForwardedPort, type PortState } from './ports.js';
import { readPng } from './screen.js';
import { REFERENCE_CHECK, runScreenChecks, SETTLE_CHECK } from './screen-checks.js';
import type { CheckResult, SmokeOptions, SmokeResult } from './types.js';

export type { CheckResult, SmokeOptions, SmokeResult } from './types.js';

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((res) => {
    if (signal?.aborted) return res();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      res();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

const MEMORY_BY_OS: Record<string, number> = { windows: 4096, linux: 1024, test: 256 };

async function loadManifest(o: SmokeOptions): Promise<OrbManifest | undefined> {
  if (o.manifest) return readManifest(o.manifest);
  const beside = stageManifestPath(o.image);
  if (await stat(beside).catch(() => undefined)) return readManifest(beside);
  return undefined;
}

function secs(ms: number): string {
  return `${Math.round(ms / 1000)} s`;
}

/**
 * Boots the image on a throw-away overlay, runs the checks, collects evidence and always stops
 * the VM and removes the overlay. Check failures come back as `passed: false`; errors before the
 * boot (unusable image, missing tools) and interruption are thrown.
 */
export async function smokeTest(o: SmokeOptions): Promise<SmokeResult> {
  const log = o.log;
  const begin = performance.now();
  const disk = o.disk ?? (await inspectDisk(o.image, o.signal, o.allowExternalFiles));
  log.info(`image ${describeDisk(disk)}${disk.check ? `, metadata ${disk.check}` : ''}`);
  const manifest = await loadManifest(o);
  const build = manifest?.build;
  const arch = o.arch ?? build?.arch ?? 'x86_64';
  const firmware: Firmware =
    arch === 'aarch64'
      ? 'uefi'
      : o.firmware && o.firmware !== 'auto'
        ? o.firmware
        : (build?.firmware ?? disk.suggestedFirmware);
  const tpm = o.tpm === true || ((o.tpm === undefined || o.tpm === 'auto') && build?.tpm === true);
  const memoryMiB = o.memoryMiB ?? MEMORY_BY_OS[build?.os ?? ''] ?? 2048;
  const hostArch = process.arch === 'arm64' ? 'aarch64' : process.arch === 'x64' ? 'x86_64' : process.arch;
  let accelerator = o.accelerator;
  if (accelerator === 'kvm' && arch !== hostArch) {
    log.warn(
      `the image is for ${arch} and this host is ${hostArch}: KVM cannot run it, using software emulation (TCG)`,
    );
    accelerator = 'tcg';
  }
  const rdpEnabled = o.rdp?.enabled ?? true;
  const rdpGuestPort = o.rdp?.guestPort ?? 3389;
  const ports = [...new Set(o.ports ?? [])].filter((p) => !(rdpEnabled && p === rdpGuestPort));
  const screenOpts = o.screen ?? {};
  // Unreadable reference screenshots and a missing VARS file fail now, not after a long boot.
  const reference = screenOpts.reference ? await readPng(screenOpts.reference) : undefined;
  if (o.uefiVars && !(await stat(o.uefiVars).catch(() => undefined)))
    throw new OrbError('input', `UEFI variable store ${o.uefiVars} does not exist`);

  const evidenceDir = resolve(o.evidenceDir);
  await mkdir(evidenceDir, { recursive: true });
  const work = await mkdtemp(join(tmpdir(), 'orb-smoke-'));
  const tracked = trackPath(work);
  const checks: CheckResult[] = [];
  const failures: string[] = [];
  const serialLog = join(evidenceDir, 'serial.log');
  const qemuLog = join(evidenceDir, 'qemu.log');
  let vm: Vm | undefined;
  let shutdown: string | undefined;
  let rdp: RdpProbeResult | undefined;
  let firstSerial: number | undefined;
  let rdpReady: number | undefined;
  let launched: number | undefined;
  let referenceDifference: number | undefined;
  let recorder: ScreenshotRecorder | undefined;
  let interrupted = false;
  const stop = new AbortController();
  try {
    const overlay = join(work, 'overlay.qcow2');
    await createOverlay(disk, overlay, o.signal);
    let uefiVars: string | undefined;
    if (o.uefiVars && firmware !== 'bios') {
      uefiVars = join(work, 'vars.fd');
      await copyFile(o.uefiVars, uefiVars);
    }
    const guestPorts = [...(rdpEnabled ? [rdpGuestPort] : []), ...ports];
    // Timings count from the launch of QEMU.
    const t0 = performance.now();
    launched = (t0 - begin) / 1000;
    log.info(
      `starting the VM: ${arch}, ${firmware}${tpm ? ' + TPM' : ''}, ${accelerator}, ${memoryMiB} MiB, forwarding guest ports ${guestPorts.join(', ') || '(none)'} to 127.0.0.1`,
    );
    vm = await startVm({
      arch,
      accel: accelerator,
      memoryMiB,
      cpus: o.cpus ?? 2,
      disks: [{ path: overlay, format: 'qcow2', interface: o.diskInterface ?? 'sata' }],
      firmware,
      ...(uefiVars ? { uefiVars } : {}),
      tpm,
      network: {
        forwards: guestPorts.map((guestPort) => ({ guestPort })),
        restrict: o.isolate ?? true,
        ...(o.nic ? { nic: o.nic } : {}),
      },
      workDir: join(work, 'vm'),
      name: 'orb-smoke-test',
      onSerialLine: () => {
        firstSerial ??= (performance.now() - t0) / 1000;
      },
      ...(o.qemuBinary ? { qemuBinary: o.qemuBinary } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
    });
    const since = () => (performance.now() - t0) / 1000;
    const deadline = t0 + o.timeoutMs;
    const remaining = () => Math.max(0, deadline - performance.now());
    log.info(`VM running (QEMU pid ${vm.pid}); checks have ${secs(o.timeoutMs)}`);
    o.onVmStarted?.(vm);
    const runningVm = vm;

    // Everything below stops when the VM dies, we are interrupted, or the checks are over.
    const onOuter = () => {
      interrupted = true;
      stop.abort();
    };
    o.signal?.addEventListener('abort', onOuter, { once: true });
    let vmGone: string | undefined;
    void runningVm.waitForExit(o.timeoutMs + 24 * 3600_000).then(
      (exit) => {
        if (stop.signal.aborted) return;
        vmGone = exit.guestInitiated
          ? `the guest powered off after ${since().toFixed(0)} s`
          : `QEMU exited after ${since().toFixed(0)} s (${exit.shutdownReason ?? (exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`)})`;
        log.warn(vmGone);
        stop.abort();
      },
      () => undefined,
    );

    recorder = new ScreenshotRecorder(join(evidenceDir, 'screenshots'), t0);
    const interval = o.screenshotIntervalMs ?? Math.max(5000, o.timeoutMs / 60);
    let bootChecksDone = false;
    const rdpState = { last: '' };
    const filmStrip = (async () => {
      let lastBeat = performance.now();
      while (!bootChecksDone && !stop.signal.aborted) {
        const r = await recorder!.take(runningVm);
        if ('error' in r) log.debug(`screenshot failed: ${r.error}`);
        if (performance.now() - lastBeat >= 60_000) {
          lastBeat = performance.now();
          log.info(
            `waiting: ${since().toFixed(0)} s of ${secs(o.timeoutMs)}${rdpEnabled && rdpReady === undefined ? `; RDP: ${rdpState.last || 'no attempt yet'}` : ''}; serial output ${firstSerial === undefined ? 'none yet' : 'seen'}`,
          );
        }
        await sleep(interval, stop.signal);
      }
    })();

    const gone = (what: string) => `${what}: ${vmGone ?? 'interrupted'}`;
    const tasks: Promise<void>[] = [];
    if (rdpEnabled) {
      const hostPort = runningVm.ports[rdpGuestPort]!;
      tasks.push(
        (async () => {
          try {
            rdp = await probeRdp({
              host: '127.0.0.1',
              port: hostPort,
              timeoutMs: remaining(),
              // Short attempts keep the measured time to RDP close to the truth; a live server answers in well under a second.
              attemptTimeoutMs: 4000,
              intervalMs: 2000,
              cookie: 'orb',
              ...(o.rdp?.expectProtocols?.length ? { expectProtocols: o.rdp.expectProtocols } : {}),
              // A guest in its first boot may refuse TLS until its certificate exists: keep trying.
              finalReasons: ['not-rdp', 'unexpected-protocol'],
              signal: stop.signal,
              onAttempt: (_n, f) => {
                if (f.message !== rdpState.last) log.debug(`RDP: ${f.message}`);
                rdpState.last =
                  f.reason === 'closed' || f.reason === 'no-answer' ? 'not answering yet' : f.message;
              },
            });
            rdpReady = since();
            o.onRdpReady?.();
            const detail = `${rdp.description}${rdp.tls ? `; certificate ${rdp.tls.subject}` : ''}`;
            log.info(`RDP answered after ${rdpReady.toFixed(1)} s: ${detail}`);
            checks.push({
              name: `RDP on guest port ${rdpGuestPort}`,
              status: 'passed',
              seconds: rdpReady,
              detail,
            });
          } catch (err) {
            const msg = stop.signal.aborted
              ? gone('the VM stopped before RDP answered')
              : (err as Error).message;
            checks.push({
              name: `RDP on guest port ${rdpGuestPort}`,
              status: 'failed',
              seconds: since(),
              detail: msg,
            });
            failures.push(msg);
          }
        })(),
      );
    }
    for (const port of ports) {
      tasks.push(
        (async () => {
          let state: PortState = 'no-answer';
          while (!stop.signal.aborted && remaining() > 0) {
            const seen = await probeForwardedPort(
              runningVm.qmp,
              runningVm.ports[port]!,
              port,
              Math.min(5000, remaining()),
            );
            // a refusal already seen says more than a later probe cut short by the deadline
            if (seen !== 'no-answer' || state === 'no-answer') state = seen;
            if (state === 'open') break;
            await sleep(Math.min(2000, remaining()), stop.signal);
          }
          const name = `TCP port ${port}`;
          if (state === 'open') {
            checks.push({ name, status: 'passed', seconds: since(), detail: 'accepts connections' });
            log.info(`guest port ${port} accepts connections after ${since().toFixed(1)} s`);
            return;
          }
          const msg = stop.signal.aborted
            ? gone(`the VM stopped before guest port ${port} opened`)
            : `guest port ${port} ${state === 'closed' ? 'refuses connections' : 'does not answer'} after ${secs(o.timeoutMs)}`;
          checks.push({ name, status: 'failed', seconds: since(), detail: msg });
          failures.push(msg);
        })(),
      );
    }
    if (o.serialPattern) {
      const pattern = o.serialPattern;
      tasks.push(
        (async () => {
          const name = `serial console matches ${pattern}`;
          try {
            const line = await runningVm.waitForSerial(pattern, remaining());
            checks.push({ name, status: 'passed', seconds: since(), detail: line.trim().slice(0, 200) });
          } catch (err) {
            const msg = stop.signal.aborted
              ? gone(`the VM stopped before a serial line matched ${pattern}`)
              : (err as OrbError).kind === 'timeout'
                ? `no serial console line matched ${pattern} within ${secs(o.timeoutMs)}`
                : `no serial console line matched ${pattern}: ${(err as Error).message}`;
            checks.push({ name, status: 'failed', seconds: since(), detail: msg });
            failures.push(msg);
          }
        })(),
      );
    }
    await Promise.all(tasks);
    bootChecksDone = true;
    await filmStrip;
    if (interrupted) throw new OrbError('interrupted', 'smoke test interrupted');

    // Screen checks look at a guest that is up: after the boot checks, with their own time.
    const wantSettle = screenOpts.settle === true;
    const screenNames = [...(wantSettle ? [SETTLE_CHECK] : []), ...(reference ? [REFERENCE_CHECK] : [])];
    if (screenNames.length && (failures.length || vmGone)) {
      for (const name of screenNames)
        checks.push({ name, status: 'skipped', detail: 'the boot checks failed' });
    } else if (screenNames.length) {
      const outcome = await runScreenChecks({
        vm: runningVm,
        recorder,
        settle: wantSettle,
        ...(reference ? { reference } : {}),
        threshold: screenOpts.threshold ?? 0.02,
        masks: screenOpts.masks ?? [],
        timeoutMs: screenOpts.timeoutMs ?? 60_000,
        since,
        signal: stop.signal,
      });
      if (interrupted) throw new OrbError('interrupted', 'smoke test interrupted');
      referenceDifference = outcome.referenceDifference;
      for (const c of outcome.checks) {
        checks.push(c);
        if (c.status === 'failed') failures.push(c.detail);
      }
    }
    if (!stop.signal.aborted) await recorder.take(runningVm, 'final');
    o.signal?.removeEventListener('abort', onOuter);
    stop.abort();
  } catch (err) {
    if (o.signal?.aborted) interrupted = true;
    throw err;
  } finally {
    stop.abort();
    if (vm) {
      try {
        const p = await vm.powerOff({ graceMs: interrupted ? 0 : (o.shutdownGraceMs ?? 20_000) });
        shutdown = {
          acpi: 'ACPI power-off',
          quit: 'stopped through QMP after the grace period',
          kill: 'killed after the grace period',
          'already-exited': 'had already stopped',
        }[p.method];
      } catch {
        shutdown = 'killed';
      }
      await copyFile(vm.serialLogPath, serialLog).catch(() => writeFile(serialLog, ''));
      await copyFile(vm.qemuLogPath, qemuLog).catch(() => writeFile(qemuLog, ''));
      await vm.dispose().catch(() => undefined);
    }
    await rm(work, { recursive: true, force: true });
    tracked.keep();
  }

  const total = (performance.now() - begin) / 1000;
  // Checks finish in any order; report them in a fixed one.
  const rank = (c: CheckResult) =>
    ['RDP', 'TCP', 'serial', 'screen not', 'screen matches'].findIndex((p) => c.name.startsWith(p));
  checks.sort((a, b) => rank(a) - rank(b));
  const result: SmokeResult = {
    passed: failures.length === 0,
    failures,
    checks,
    disk,
    imageDescription: describeDisk(disk),
    arch,
    firmware,
    tpm,
    accelerator,
    memoryMiB,
    rdpEnabled,
    ...(rdp ? { rdp } : {}),
    ...(rdpEnabled && vm ? { rdpHostPort: vm.ports[rdpGuestPort] } : {}),
    timings: {
      ...(firstSerial !== undefined ? { firstSerial } : {}),
      ...(rdpReady !== undefined ? { rdpReady } : {}),
      ...(launched !== undefined ? { launched } : {}),
      total,
    },
    ...(referenceDifference !== undefined ? { referenceDifference } : {}),
    screenshots: recorder?.files ?? [],
    serialLog,
    qemuLog,
    evidenceDir,
    ...(shutdown ? { shutdown } : {}),
    ...(vm ? { qemuPid: vm.pid } : {}),
  };
  if (!result.passed && firstSerial === undefined) {
    result.failures.push(
      'the guest printed nothing on the serial console (it may not have booted at all, or its console is not on the serial port)',
    );
  }
  await writeFile(
    join(evidenceDir, 'result.json'),
    JSON.stringify({ ...result, serialTail: await tailFile(serialLog, 50) }, null, 2) + '\n',
  );
  return result;
}
