import type { Inputs } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import type { InputSpec } from '../core/inputs.js';
import {
  checkAdminUser,
  checkComputerName,
  encodeUnattendPassword,
  generatePassword,
  passwordComplexityProblem,
} from '../windows/accounts.js';
import {
  checkArch,
  familyInfo,
  resolveFamily,
  type WindowsArch,
  type WindowsFamily,
} from '../windows/families.js';
import { checkUnattendOptions, type Firmware, type UnattendOptions } from '../windows/unattend.js';

/**
 * Inputs shared by `build-golden-image` and `unattend` (the answer-file inputs), declared once so
 * both commands, their flags and their docs agree.
 */
export const ANSWER_INPUTS: readonly InputSpec[] = [
  {
    name: 'edition',
    type: 'string',
    description: "Windows edition: its name in install.wim ('Windows 11 Pro') or its 1-based index",
  },
  {
    name: 'windows-version',
    type: 'enum',
    choices: ['auto', 'win10', 'win11', 'server2019', 'server2022', 'server2025'],
    default: 'auto',
    description: 'Windows release of the ISO; auto reads it from the edition name',
  },
  {
    name: 'product-key',
    type: 'string',
    secret: true,
    description: 'product key (optional; needed by some retail media)',
  },
  {
    name: 'locale',
    type: 'string',
    default: 'en-US',
    description: 'language and regional format (BCP-47 tag)',
  },
  {
    name: 'keyboard',
    type: 'string',
    description: "keyboard: a language tag (de-DE) or locale:layout ('0407:00000407'); default: the locale's",
  },
  {
    name: 'time-zone',
    type: 'string',
    default: 'UTC',
    description: "Windows time zone ID ('UTC', 'W. Europe Standard Time'); Linux: IANA name",
  },
  {
    name: 'computer-name',
    type: 'string',
    default: '*',
    description: "computer name; '*' lets Windows pick a random one (right for a cloned golden image)",
  },
  {
    name: 'admin-user',
    type: 'string',
    default: 'orb',
    description: 'name of the administrator account the build creates',
  },
  {
    name: 'admin-password',
    type: 'string',
    secret: true,
    env: ['ORB_ADMIN_PASSWORD'],
    description:
      'password of that account; when empty a strong one is generated and returned as the masked output admin-password',
  },
  {
    name: 'firmware',
    type: 'enum',
    choices: ['bios', 'uefi', 'uefi-secure'],
    default: 'uefi',
    description:
      'guest firmware; uefi-secure adds Secure Boot and a TPM 2.0 (swtpm), what Windows 11 asks for',
  },
  {
    name: 'arch',
    type: 'enum',
    choices: ['x86_64', 'aarch64'],
    default: 'x86_64',
    description: 'guest architecture',
  },
  {
    name: 'script',
    type: 'list',
    description:
      'provisioning script, repeatable, run once in the given order after installation (Windows: .ps1; Linux: .sh), output captured',
  },
  {
    name: 'sysprep',
    type: 'boolean',
    default: true,
    description:
      'generalize at the end (Windows sysprep /generalize; Linux cloud-init clean, new machine-id) so every clone gets its own identity',
  },
  {
    name: 'rdp',
    type: 'boolean',
    default: true,
    description: 'enable Remote Desktop and open its firewall rule',
  },
  {
    name: 'disk-size',
    type: 'size',
    default: '64G',
    min: 1 << 30,
    description: 'virtual size of the system disk (qcow2: host disk use follows the data)',
  },
  { name: 'memory', type: 'size', default: '4G', min: 128 << 20, description: 'guest memory' },
  { name: 'cpus', type: 'integer', default: 2, min: 1, max: 256, description: 'guest CPU count' },
];

export interface AnswerInputs {
  family: WindowsFamily;
  unattend: UnattendOptions;
  passwordGenerated: boolean;
  /** set when a given password misses Windows' complexity rule (only Server enforces it) */
  passwordWarning?: string;
  scripts: string[];
  sysprep: boolean;
}

/** Maps the shared inputs to answer-file options; generates the password when none was given. */
export function answerInputs(
  inputs: Inputs,
  opts: { virtio: boolean; mask: (s: string) => void },
): AnswerInputs {
  const edition = inputs.optString('edition');
  const productKey = inputs.optString('product-key');
  if (!edition && !productKey) {
    throw new UsageError(
      'Windows needs an edition to install unattended',
      "give --edition with the image name ('Windows 11 Pro') or index (see 'wiminfo install.wim' or 'dism /Get-WimInfo'), or a product key",
    );
  }
  const family = resolveFamily(inputs.string('windows-version'), edition);
  const arch = inputs.string('arch') as WindowsArch;
  checkArch(family, arch);
  const adminUser = inputs.string('admin-user');
  checkAdminUser(adminUser);
  const computerName = inputs.string('computer-name');
  checkComputerName(computerName);
  let adminPassword = inputs.optString('admin-password');
  const passwordGenerated = !adminPassword;
  if (!adminPassword) adminPassword = generatePassword();
  opts.mask(adminPassword);
  // The answer file carries these encodings of the password; they are as secret as it is.
  opts.mask(encodeUnattendPassword(adminPassword, 'Password'));
  opts.mask(encodeUnattendPassword(adminPassword, 'AdministratorPassword'));
  const weak = passwordComplexityProblem(adminPassword, adminUser);
  if (weak && familyInfo(family).server) {
    throw new UsageError(
      `input 'admin-password' does not meet Windows Server's password policy: ${weak}`,
      'use at least 8 characters from three of: lower case, upper case, digits, symbols; or leave it empty to get a generated one',
    );
  }
  const result: AnswerInputs = {
    family,
    passwordGenerated,
    ...(weak
      ? { passwordWarning: `the admin password is weak (${weak}); Windows client editions accept it` }
      : {}),
    scripts: inputs.list('script'),
    sysprep: inputs.bool('sysprep'),
    unattend: {
      family,
      arch,
      firmware: inputs.string('firmware') as Firmware,
      edition,
      productKey,
      locale: inputs.string('locale'),
      keyboard: inputs.optString('keyboard'),
      timeZone: inputs.string('time-zone'),
      computerName,
      adminUser,
      adminPassword,
      memoryBytes: inputs.number('memory'),
      cpus: inputs.number('cpus'),
      diskBytes: inputs.number('disk-size'),
      virtio: opts.virtio,
      rdp: inputs.bool('rdp'),
    },
  };
  checkUnattendOptions(result.unattend);
  return result;
}
