import { UsageError } from '../core/errors.js';

/**
 * The Windows releases we generate answer files for. They share the answer-file schema; what
 * differs is the virtio-win driver folder, the Windows 11 hardware checks, and a few OOBE
 * settings that only client editions have.
 */
export type WindowsFamily = 'win10' | 'win11' | 'server2019' | 'server2022' | 'server2025';
export const WINDOWS_FAMILIES: readonly WindowsFamily[] = [
  'win10',
  'win11',
  'server2019',
  'server2022',
  'server2025',
];

export type WindowsArch = 'x86_64' | 'aarch64';

export interface FamilyInfo {
  family: WindowsFamily;
  label: string;
  server: boolean;
  /** folder name inside the virtio-win ISO, e.g. viostor\w11\amd64 */
  virtioFolder: string;
  /** Windows 11 refuses to install without TPM 2.0 / Secure Boot / 4 GiB unless told otherwise */
  hardwareChecks: boolean;
  /** ARM64 builds of this release exist (virtio-win ships ARM64 drivers for them) */
  arm64: boolean;
}

const TABLE: Record<WindowsFamily, FamilyInfo> = {
  win10: {
    family: 'win10',
    label: 'Windows 10',
    server: false,
    virtioFolder: 'w10',
    hardwareChecks: false,
    arm64: true,
  },
  win11: {
    family: 'win11',
    label: 'Windows 11',
    server: false,
    virtioFolder: 'w11',
    hardwareChecks: true,
    arm64: true,
  },
  server2019: {
    family: 'server2019',
    label: 'Windows Server 2019',
    server: true,
    virtioFolder: '2k19',
    hardwareChecks: false,
    arm64: false,
  },
  server2022: {
    family: 'server2022',
    label: 'Windows Server 2022',
    server: true,
    virtioFolder: '2k22',
    hardwareChecks: false,
    arm64: false,
  },
  server2025: {
    family: 'server2025',
    label: 'Windows Server 2025',
    server: true,
    virtioFolder: '2k25',
    hardwareChecks: false,
    arm64: false,
  },
};

export function familyInfo(family: WindowsFamily): FamilyInfo {
  return TABLE[family];
}

/** The `processorArchitecture` attribute of every answer-file component. */
export function componentArch(arch: WindowsArch): 'amd64' | 'arm64' {
  return arch === 'aarch64' ? 'arm64' : 'amd64';
}

/** The architecture folder of the virtio-win ISO (it spells ARM64 in capitals). */
export function virtioArchFolder(arch: WindowsArch): string {
  return arch === 'aarch64' ? 'ARM64' : 'amd64';
}

/**
 * Accepts what users type ("11", "win11", "Windows Server 2022", "2k22", "server-2025") or
 * "auto", which guesses from the edition name as it appears in install.wim
 * ("Windows 11 Pro", "Windows Server 2022 SERVERDATACENTER").
 */
export function resolveFamily(value: string | undefined, edition: string | undefined): WindowsFamily {
  const v = (value ?? 'auto')
    .trim()
    .toLowerCase()
    .replace(/[\s_-]+/g, '');
  if (v && v !== 'auto') {
    const f = ALIASES[v];
    if (!f) {
      throw new UsageError(
        `input 'windows-version': '${value}' is not a Windows release we know`,
        `use one of auto, ${WINDOWS_FAMILIES.join(', ')} (also 10, 11, 2019, 2022, 2025)`,
      );
    }
    return f;
  }
  const guessed = familyFromEdition(edition ?? '');
  if (guessed) return guessed;
  throw new UsageError(
    `cannot tell the Windows release from edition '${edition ?? ''}'`,
    "set --windows-version (10, 11, server2019, server2022 or server2025), or give the edition by its name, such as 'Windows 11 Pro'",
  );
}

const ALIASES: Record<string, WindowsFamily> = {};
for (const [family, names] of [
  ['win10', ['10', 'win10', 'windows10', 'w10']],
  ['win11', ['11', 'win11', 'windows11', 'w11']],
  ['server2019', ['2019', 'server2019', 'windowsserver2019', 'ws2019', '2k19']],
  ['server2022', ['2022', 'server2022', 'windowsserver2022', 'ws2022', '2k22']],
  ['server2025', ['2025', 'server2025', 'windowsserver2025', 'ws2025', '2k25']],
] as const) {
  for (const n of names) ALIASES[n] = family;
}

/** Image names in install.wim: "Windows 11 Pro", "Windows Server 2022 SERVERDATACENTER". */
export function familyFromEdition(edition: string): WindowsFamily | undefined {
  const e = edition.toLowerCase();
  const server = /windows\s*server\s*(2019|2022|2025)\b/.exec(e);
  if (server) return `server${server[1]}` as WindowsFamily;
  const client = /windows\s*(10|11)\b/.exec(e);
  if (client) return `win${client[1]}` as WindowsFamily;
  return undefined;
}

export function checkArch(family: WindowsFamily, arch: WindowsArch): void {
  if (arch === 'aarch64' && !TABLE[family].arm64) {
    throw new UsageError(
      `${TABLE[family].label} has no ARM64 edition to install`,
      'use --arch x86_64, or Windows 10/11 for aarch64',
    );
  }
}
