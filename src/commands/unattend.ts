import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { resolve, join } from 'node:path';
import { defineCommand } from '../core/command.js';
import { trackPath } from '../core/cleanup.js';
import { ANSWER_INPUTS, answerInputs } from '../builder/inputs.js';
import { makeDataIso } from '../builder/iso.js';
import { checkScriptPaths, writeAnswerMedia } from '../windows/media.js';
import { buildAutounattend, buildSysprepUnattend } from '../windows/unattend.js';
import { familyInfo } from '../windows/families.js';

export default defineCommand({
  name: 'unattend',
  title: 'Write autounattend.xml and the provisioning scripts for your own VM tooling',
  description:
    'Generates the answer file (windowsPE, specialize, oobeSystem) and orb\\ with the first-logon script and your provisioning scripts, ' +
    'without booting anything. Put the folder on any drive Windows Setup sees (a second ISO, Packer cd_files, a USB stick): after ' +
    'Setup the first logon runs the scripts in order, removes the cached answer files and the stored logon password, trims free ' +
    'space, optionally runs sysprep, and shuts down. autounattend.xml holds the admin password: treat it as a secret. orb\\ holds no ' +
    'secret: for dockur/windows, mount autounattend.xml as /custom.xml and only orb\\ as /oem (docs/windows.md).',
  action: false,
  usage: '--out DIR --edition NAME',
  inputs: [
    {
      name: 'out',
      type: 'string',
      required: true,
      alias: 'o',
      description: 'directory to write autounattend.xml and orb\\ into',
    },
    ...ANSWER_INPUTS,
    {
      name: 'virtio-drivers',
      type: 'boolean',
      default: true,
      description:
        'load the virtio-win storage and network drivers in Windows PE (attach the virtio-win ISO as a CD)',
    },
    {
      name: 'shutdown',
      type: 'boolean',
      default: true,
      description: 'power off after the first-logon steps (build tools wait for that)',
    },
    {
      name: 'iso',
      type: 'string',
      description: 'also write the folder as an ISO image at this path (label ORBANSWER)',
    },
  ],
  outputs: [
    { name: 'dir', description: 'the directory written' },
    { name: 'autounattend', description: 'path of autounattend.xml' },
    { name: 'iso', description: 'path of the answer ISO, when asked for' },
    { name: 'windows-version', description: 'the Windows release the answer file targets' },
    { name: 'scripts', description: 'number of provisioning scripts included' },
    { name: 'admin-user', description: 'the administrator account' },
    { name: 'admin-password', description: 'the generated password, when none was given', secret: true },
  ],
  async run(inputs, ctx) {
    const answer = answerInputs(inputs, { virtio: inputs.bool('virtio-drivers'), mask: ctx.mask });
    if (answer.passwordWarning) ctx.log.warn(answer.passwordWarning);
    checkScriptPaths(answer.scripts, '.ps1');
    const out = resolve(inputs.string('out'));
    const staging = `${out}.partial`;
    await rm(staging, { recursive: true, force: true });
    const tracked = trackPath(staging);
    try {
      await writeAnswerMedia(
        staging,
        buildAutounattend(answer.unattend),
        {
          family: answer.family,
          computerName: answer.unattend.computerName,
          adminUser: answer.unattend.adminUser,
        },
        {
          scripts: answer.scripts,
          sysprep: answer.sysprep,
          sysprepUnattendXml: buildSysprepUnattend(answer.unattend),
          shutdown: inputs.bool('shutdown'),
        },
      );
      // Replace only what we own in the target directory; anything else the user keeps there stays.
      await mkdir(out, { recursive: true });
      for (const entry of await readdir(staging)) {
        await rm(join(out, entry), { recursive: true, force: true });
        await rename(join(staging, entry), join(out, entry));
      }
    } finally {
      await rm(staging, { recursive: true, force: true });
      tracked.keep();
    }
    let iso: string | undefined;
    if (inputs.has('iso')) {
      iso = resolve(inputs.string('iso'));
      await makeDataIso(out, iso, { label: 'ORBANSWER', signal: ctx.signal });
    }
    ctx.log.info(
      `wrote ${join(out, 'autounattend.xml')} for ${familyInfo(answer.family).label} with ${answer.scripts.length} script(s)`,
    );
    if (answer.passwordGenerated)
      ctx.log.info('generated an admin password: see the admin-password result (--json)');
    return {
      dir: out,
      autounattend: join(out, 'autounattend.xml'),
      iso,
      'windows-version': answer.family,
      scripts: answer.scripts.length,
      'admin-user': answer.unattend.adminUser,
      // Only a generated password is returned: one the caller gave is theirs already.
      'admin-password': answer.passwordGenerated ? answer.unattend.adminPassword : undefined,
    };
  },
});
