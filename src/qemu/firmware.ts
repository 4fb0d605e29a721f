import { existsSync } from 'node:fs';
import { OrbError } from '../core/errors.js';

export type Arch = 'x86_64' | 'aarch64';
export type Firmware = 'bios' | 'uefi' | 'uefi-secure';

export interface UefiFirmware {
  code: string;
  vars: string;
  secure: boolean;
}

// Debian and Ubuntu paths (ovmf, qemu-efi-aarch64). 4M images first: the 2M ones lack room for
// Secure Boot keys and newer distributions drop them.
const X86_PLAIN: [string, string][] = [
  ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_VARS_4M.fd'],
  ['/usr/share/OVMF/OVMF_CODE.fd', '/usr/share/OVMF/OVMF_VARS.fd'],
  ['/usr/share/edk2/ovmf/OVMF_CODE.fd', '/usr/share/edk2/ovmf/OVMF_VARS.fd'],
];
const X86_SECURE: [string, string][] = [
  ['/usr/share/OVMF/OVMF_CODE_4M.secboot.fd', '/usr/share/OVMF/OVMF_VARS_4M.ms.fd'],
  ['/usr/share/OVMF/OVMF_CODE_4M.ms.fd', '/usr/share/OVMF/OVMF_VARS_4M.ms.fd'],
  ['/usr/share/OVMF/OVMF_CODE.secboot.fd', '/usr/share/OVMF/OVMF_VARS.ms.fd'],
];
const ARM: [string, string][] = [
  ['/usr/share/AAVMF/AAVMF_CODE.fd', '/usr/share/AAVMF/AAVMF_VARS.fd'],
  ['/usr/share/qemu-efi-aarch64/QEMU_EFI.fd', '/usr/share/AAVMF/AAVMF_VARS.fd'],
];

export function findUefi(
  arch: Arch,
  secure: boolean,
  exists: (p: string) => boolean = existsSync,
): UefiFirmware | undefined {
  const candidates = arch === 'aarch64' ? ARM : secure ? X86_SECURE : X86_PLAIN;
  for (const [code, vars] of candidates) {
    if (exists(code) && exists(vars)) return { code, vars, secure };
  }
  return undefined;
}

export function requireUefi(arch: Arch, secure: boolean): UefiFirmware {
  const fw = findUefi(arch, secure);
  if (!fw) {
    const pkg = arch === 'aarch64' ? 'qemu-efi-aarch64' : 'ovmf';
    throw new OrbError('environment', `no ${secure ? 'Secure Boot ' : ''}UEFI firmware for ${arch} found`, {
      hint: `install the '${pkg}' package (orb setup-qemu does)`,
    });
  }
  return fw;
}
