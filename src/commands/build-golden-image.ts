import { mkdir, readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { defineCommand, type RunContext } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import { formatBytes, formatDuration } from '../core/progress.js';
import { ANSWER_INPUTS, answerInputs, type AnswerInputs } from '../builder/inputs.js';
import {
  resolveAccelerator,
  TeeLogger,
  type BuildResult,
  type CommonBuildOptions,
} from '../builder/build-env.js';
import { actionsCacheAvailable } from '../builder/actions-cache.js';
import { defaultCacheDir, isUrl, obtain } from '../builder/download.js';
import { exists } from '../core/fsutil.js';
import { buildWindows } from '../builder/windows.js';
import { buildLinux } from '../builder/linux.js';
import { checkScriptPaths } from '../windows/media.js';
import { generatePassword } from '../windows/accounts.js';

export default defineCommand({
  name: 'build-golden-image',
  aliases: ['build'],
  title: 'Build a golden Windows or Linux disk image unattended in headless QEMU',
  description:
    'Windows: installs from an ISO with a generated answer file (virtio drivers loaded in Windows PE), runs your PowerShell scripts, ' +
    'cleans up, trims, optionally sysprep-generalizes. Linux: boots a cloud image with a cloud-init NoCloud seed. Each stage is a qcow2 ' +
    'layer recorded in the output directory, so a rerun continues where the last one stopped and a changed script does not reinstall; ' +
    'the installed Windows base is cached by ISO digest and answer inputs. Watches the VM over QMP with screenshots and the serial log.',
  action: true,
  usage: '--iso WINDOWS.iso --edition NAME [--script a.ps1 ...]',
  inputs: [
    {
      name: 'os',
      type: 'enum',
      choices: ['windows', 'linux'],
      default: 'windows',
      description: 'what to build',
    },
    {
      name: 'iso',
      type: 'string',
      description: 'Windows installation ISO: path or http(s) URL (downloads resume and are cached)',
    },
    {
      name: 'iso-sha256',
      type: 'string',
      description: 'expected sha256 of the ISO (checked; also the cache key in Actions)',
    },
    {
      name: 'virtio-win',
      type: 'string',
      description: 'virtio-win driver ISO: path or URL. Without it the disk is SATA and the NIC e1000e',
    },
    { name: 'virtio-win-sha256', type: 'string', description: 'expected sha256 of the virtio-win ISO' },
    { name: 'cloud-image', type: 'string', description: 'Linux cloud image (qcow2 or raw): path or URL' },
    { name: 'cloud-image-sha256', type: 'string', description: 'expected sha256 of the cloud image' },
    ...ANSWER_INPUTS,
    { name: 'packages', type: 'list', description: 'Linux: packages cloud-init installs' },
    {
      name: 'ssh-authorized-key',
      type: 'list',
      description: 'Linux: public SSH keys for the admin user (password SSH logins are then off)',
    },
    {
      name: 'accelerator',
      type: 'enum',
      choices: ['auto', 'kvm', 'tcg'],
      default: 'auto',
      description: 'auto probes KVM (the setup-qemu output can be passed here)',
    },
    {
      name: 'timeout',
      type: 'duration',
      default: '4h',
      min: 10,
      description: 'limit for each boot of the build',
    },
    {
      name: 'stall-timeout',
      type: 'duration',
      default: '30m',
      min: 5,
      description:
        'fail when the guest shows no progress (disk writes, serial output, screen changes) this long',
    },
    {
      name: 'boot-key-window',
      type: 'duration',
      description:
        "how long Enter is pressed after power-on for Windows' 'Press any key to boot from CD or DVD' prompt (default 60s with KVM, 120s with TCG; 0 turns it off)",
    },
    {
      name: 'screenshot-interval',
      type: 'duration',
      default: '3m',
      min: 1,
      description: 'how often a screenshot is kept',
    },
    {
      name: 'output-format',
      type: 'enum',
      choices: ['qcow2', 'raw'],
      default: 'qcow2',
      description: 'format of the output disk',
    },
    {
      name: 'out',
      type: 'string',
      default: 'orb-build',
      alias: 'o',
      description: 'build directory: layers, state, logs, screenshots and the output disk',
    },
    {
      name: 'name',
      type: 'string',
      default: 'golden',
      description: 'file name of the output disk (without extension)',
    },
    {
      name: 'dockur',
      type: 'boolean',
      default: false,
      description: 'also write the /storage folder dockur/windows boots without reinstalling (out/dockur)',
    },
    {
      name: 'dockur-format',
      type: 'enum',
      choices: ['raw', 'qcow2'],
      default: 'raw',
      description: 'disk format in the dockur folder (data.img or data.qcow2)',
    },
    {
      name: 'cache',
      type: 'boolean',
      default: true,
      description:
        'cache downloads and the installed Windows base (cache dir; Actions cache in GitHub Actions)',
    },
    {
      name: 'cache-dir',
      type: 'string',
      env: ['ORB_CACHE_DIR'],
      description: 'local cache directory (default: runner tool cache in Actions, ~/.cache/orb elsewhere)',
    },
    {
      name: 'resume',
      type: 'boolean',
      default: true,
      description:
        'continue after the stages an earlier run finished with the same inputs (false: start over)',
    },
  ],
  outputs: [
    { name: 'disk', description: 'path of the output disk image' },
    {
      name: 'manifest',
      description: 'path of the manifest for the next stages (convert, publish, smoke-test)',
    },
    { name: 'format', description: 'format of the output disk' },
    { name: 'build-log', description: 'path of the build log' },
    { name: 'screenshots', description: 'directory of the screenshots taken during the build' },
    { name: 'latest-screenshot', description: 'the last screenshot taken' },
    { name: 'provision-log', description: 'output of the provisioning scripts' },
    { name: 'stages-run', description: 'stages that ran in this invocation (comma-separated)' },
    { name: 'stages-reused', description: 'stages taken from an earlier run or the cache' },
    { name: 'cache-hit', description: 'true when the installed base came from the cache' },
    { name: 'dockur-dir', description: 'the dockur/windows storage folder, when asked for' },
    { name: 'admin-user', description: 'the administrator account' },
    { name: 'admin-password', description: 'its password, when it was generated', secret: true },
    { name: 'seconds', description: 'build time' },
  ],
  async run(inputs, ctx) {
    // 1. Everything that can be checked without touching the disk or the network, before any work.
    const os = inputs.string('os') as 'windows' | 'linux';
    const outDir = resolve(inputs.string('out'));
    const cacheDir = resolve(inputs.optString('cache-dir') ?? defaultCacheDir());
    const scripts = inputs.list('script').map((s) => resolve(s));
    const arch = inputs.string('arch') as CommonBuildOptions['arch'];
    const name = safeName(inputs.string('name'));
    let windows: { answer: AnswerInputs; iso: string } | undefined;
    let linux: { image: string; user: string } | undefined;
    if (os === 'windows') {
      if (!inputs.has('iso'))
        throw new UsageError(
          "input 'iso' is required for a Windows build",
          'give the Windows ISO as a path or URL',
        );
      const answer = answerInputs(inputs, { virtio: inputs.has('virtio-win'), mask: ctx.mask });
      checkScriptPaths(scripts, '.ps1');
      windows = { answer, iso: inputs.string('iso') };
    } else {
      if (!inputs.has('cloud-image'))
        throw new UsageError(
          "input 'cloud-image' is required for a Linux build",
          'give a cloud image (qcow2 or raw) as a path or URL',
        );
      checkScriptPaths(scripts, '.sh');
      const user = inputs.string('admin-user');
      if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(user)) {
        throw new UsageError(
          `input 'admin-user': '${user}' is not a valid Linux user name`,
          'use lower-case letters, digits, - and _, starting with a letter',
        );
      }
      linux = { image: inputs.string('cloud-image'), user };
    }
    for (const [input, source] of [
      ['iso', windows?.iso],
      ['virtio-win', inputs.optString('virtio-win')],
      ['cloud-image', linux?.image],
      ...scripts.map((s) => ['script', s]),
    ]) {
      if (source && !isUrl(source) && !(await exists(source))) {
        throw new UsageError(
          `input '${input}': ${source} does not exist`,
          'give an existing file or an http(s) URL',
        );
      }
    }
    const password = windows
      ? windows.answer.unattend.adminPassword
      : (inputs.optString('admin-password') ?? generatePassword());
    const generated = windows ? windows.answer.passwordGenerated : !inputs.has('admin-password');
    ctx.mask(password);

    // 2. The build: its directory, its log, downloads, the VM stages.
    await mkdir(outDir, { recursive: true });
    const log = new TeeLogger(ctx.log, join(outDir, 'build.log'));
    const env = { log, progress: ctx.progress, signal: ctx.signal, summary: ctx.summary };
    const obtainOpts = { cacheDir, log, progress: ctx.progress, signal: ctx.signal };
    let started = false;
    try {
      const common = (accel: 'kvm' | 'tcg'): CommonBuildOptions => ({
        outDir,
        name,
        arch,
        firmware: inputs.string('firmware') as CommonBuildOptions['firmware'],
        accel,
        memoryBytes: inputs.number('memory'),
        cpus: inputs.number('cpus'),
        diskBytes: inputs.number('disk-size'),
        timeoutMs: inputs.number('timeout') * 1000,
        stallMs: inputs.number('stall-timeout') * 1000,
        screenshotEveryMs: inputs.number('screenshot-interval') * 1000,
        outputFormat: inputs.string('output-format') as 'qcow2' | 'raw',
        cacheDir,
        cache: inputs.bool('cache'),
        actionsCache: inputs.bool('cache') && ctx.mode === 'action' && actionsCacheAvailable(),
        resume: inputs.bool('resume'),
        ...(inputs.bool('dockur')
          ? { dockur: { format: inputs.string('dockur-format') as 'raw' | 'qcow2' } }
          : {}),
        scripts,
        sysprep: inputs.bool('sysprep'),
        adminUser: windows ? windows.answer.unattend.adminUser : linux!.user,
        adminPassword: password,
      });
      let result: BuildResult;
      if (windows) {
        const { answer } = windows;
        if (answer.passwordWarning) log.warn(answer.passwordWarning);
        const iso = await obtain({
          ...obtainOpts,
          source: windows.iso,
          sha256: inputs.optString('iso-sha256'),
          what: 'Windows ISO',
        });
        const virtio = inputs.has('virtio-win')
          ? await obtain({
              ...obtainOpts,
              source: inputs.string('virtio-win'),
              sha256: inputs.optString('virtio-win-sha256'),
              what: 'virtio-win ISO',
            })
          : undefined;
        const accel = await resolveAccelerator(inputs.string('accelerator'), arch, log);
        started = true;
        result = await buildWindows(
          {
            ...common(accel),
            iso: iso.path,
            isoSha256: iso.sha256,
            ...(virtio ? { virtio: { path: virtio.path, sha256: virtio.sha256 } } : {}),
            family: answer.family,
            unattend: answer.unattend,
            ...(inputs.optNumber('boot-key-window') !== undefined
              ? { bootKeysMs: inputs.number('boot-key-window') * 1000 }
              : {}),
          },
          env,
        );
      } else {
        const image = await obtain({
          ...obtainOpts,
          source: linux!.image,
          sha256: inputs.optString('cloud-image-sha256'),
          what: 'cloud image',
        });
        const accel = await resolveAccelerator(inputs.string('accelerator'), arch, log);
        const computer = inputs.string('computer-name');
        started = true;
        result = await buildLinux(
          {
            ...common(accel),
            image: image.path,
            imageSha256: image.sha256,
            hostname: computer === '*' ? name : computer,
            packages: inputs.list('packages'),
            sshAuthorizedKeys: inputs.list('ssh-authorized-key'),
            timeZone: inputs.string('time-zone'),
          },
          env,
        );
      }
      await report(ctx, result, outDir);
      return {
        disk: result.disk,
        manifest: result.manifest,
        format: result.format,
        'build-log': result.buildLog,
        screenshots: result.screenshotsDir,
        'latest-screenshot': result.latestScreenshot,
        'provision-log': result.provisionLog,
        'stages-run': result.ran.join(','),
        'stages-reused': result.reused.join(','),
        'cache-hit': result.cacheHit,
        'dockur-dir': result.dockurDir,
        'admin-user': windows ? windows.answer.unattend.adminUser : linux!.user,
        'admin-password': generated ? password : undefined,
        seconds: Math.round(result.seconds),
      };
    } catch (err) {
      log.error(`build failed: ${(err as Error).message}`);
      if (started) {
        const latest = await newestScreenshot(join(outDir, 'screenshots'));
        ctx.summary.heading('build-golden-image failed').text(`${(err as Error).message}`);
        if (latest) {
          ctx.summary.text(
            `Latest screenshot: \`${latest}\` (in the orb-build-evidence artifact in Actions)`,
          );
          log.info(`latest screenshot: ${latest}`);
        }
        log.info(`build log: ${join(outDir, 'build.log')}; guest logs in ${join(outDir, 'logs')}`);
        await uploadEvidence(ctx, outDir);
      }
      throw err;
    } finally {
      await log.close();
    }
  },
});

function safeName(name: string): string {
  const n = name.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[.-]+/, '');
  if (!n) throw new UsageError(`input 'name': '${name}' is not usable as a file name`);
  return n.slice(0, 63);
}

async function newestScreenshot(dir: string): Promise<string | undefined> {
  const files = await readdir(dir).catch(() => [] as string[]);
  let best: { f: string; t: number } | undefined;
  for (const f of files.filter((x) => x.endsWith('.png'))) {
    const t = (await stat(join(dir, f))).mtimeMs;
    if (!best || t >= best.t) best = { f: join(dir, f), t };
  }
  return best?.f;
}

/** Actions: logs and screenshots as a workflow artifact (never the disk, never a secret). */
async function uploadEvidence(ctx: RunContext, outDir: string): Promise<void> {
  if (ctx.mode !== 'action' || !ctx.uploadArtifact) return;
  const files: string[] = [join(outDir, 'build.log')];
  for (const sub of ['logs', 'screenshots']) {
    for (const f of await readdir(join(outDir, sub)).catch(() => [] as string[]))
      files.push(join(outDir, sub, f));
  }
  try {
    await ctx.uploadArtifact('orb-build-evidence', files, outDir);
  } catch (err) {
    ctx.log.warn(`could not upload the build logs and screenshots: ${(err as Error).message}`);
  }
}

async function report(ctx: RunContext, r: BuildResult, outDir: string): Promise<void> {
  const size = (await stat(r.disk)).size;
  ctx.summary
    .heading('build-golden-image')
    .table(
      ['', ''],
      [
        ['disk', `${r.disk} (${r.format}, ${formatBytes(size)})`],
        ['stages run', r.ran.join(', ') || 'none'],
        ['stages reused', r.reused.join(', ') || 'none'],
        ['installed base from cache', r.cacheHit ? 'yes' : 'no'],
        ['generalized', r.generalized ? 'yes' : 'no'],
        ['time', formatDuration(r.seconds)],
        ...(r.dockurDir ? [['dockur/windows folder', r.dockurDir]] : []),
        ...(r.latestScreenshot ? [['latest screenshot', r.latestScreenshot]] : []),
      ],
    );
  ctx.log.info(
    `done: ${r.disk} (${formatBytes(size)}) in ${formatDuration(r.seconds)}; manifest ${r.manifest}`,
  );
  if (r.latestScreenshot) ctx.log.info(`latest screenshot: ${r.latestScreenshot}`);
  await uploadEvidence(ctx, outDir);
}
