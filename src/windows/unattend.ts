import { create } from 'xmlbuilder2';
import type { XMLBuilder } from 'xmlbuilder2/lib/interfaces.js';
import { UsageError } from '../core/errors.js';
import { encodeUnattendPassword } from './accounts.js';
import {
  componentArch,
  familyInfo,
  virtioArchFolder,
  type WindowsArch,
  type WindowsFamily,
} from './families.js';

/**
 * autounattend.xml, built from typed options with an XML library (never by pasting strings, so a
 * password with `<` or `&` cannot break the file). Covers the windowsPE, specialize and oobeSystem
 * passes; the first logon hands over to orb's own scripts on the answer media (see scripts.ts).
 */
export const UNATTEND_NS = 'urn:schemas-microsoft-com:unattend';
export const WCM_NS = 'http://schemas.microsoft.com/WMIConfig/2002/State';
const XMLNS_NS = 'http://www.w3.org/2000/xmlns/';

export type Firmware = 'bios' | 'uefi' | 'uefi-secure';

export interface UnattendOptions {
  family: WindowsFamily;
  arch: WindowsArch;
  firmware: Firmware;
  /** image name in install.wim ("Windows 11 Pro") or its 1-based index ("6") */
  edition?: string;
  productKey?: string;
  /** BCP-47 tag: en-US, de-DE */
  locale: string;
  /** input locale: "0407:00000407" or a language tag (its default layout); defaults to the locale */
  keyboard?: string;
  /** Windows time zone ID (tzutil /l): "UTC", "W. Europe Standard Time" */
  timeZone: string;
  /** '*' for a random name */
  computerName: string;
  adminUser: string;
  adminPassword: string;
  /** the guest's memory, CPU count and disk size: decide which Windows 11 checks to bypass */
  memoryBytes?: number;
  cpus?: number;
  diskBytes?: number;
  /** a virtio-win ISO is attached: load its storage and network drivers in Windows PE */
  virtio: boolean;
  /** enable Remote Desktop and open its firewall group (default true) */
  rdp?: boolean;
  organization?: string;
}

/** The file names orb puts on the answer media beside autounattend.xml (scripts.ts writes them). */
export const MEDIA_DIR = 'orb';
export const ORB_SCRIPT = 'orb.ps1';

// Drive letters Windows PE may give the virtio-win CD. Setup skips paths that do not exist, and the
// letter depends on how many CD drives and disks there are, so every candidate is listed.
const DRIVER_LETTERS = ['D', 'E', 'F', 'G', 'H', 'I'];
// viostor: virtio-blk disks; vioscsi: virtio-scsi disks (what dockur/windows uses); NetKVM: virtio-net.
const DRIVERS = ['vioscsi', 'viostor', 'NetKVM'];

const GIB = 1024 ** 3;

export function checkUnattendOptions(o: UnattendOptions): void {
  if (o.timeZone.includes('/')) {
    throw new UsageError(
      `input 'time-zone': '${o.timeZone}' looks like an IANA zone; Windows needs its own zone ID`,
      "use a Windows time zone ID as listed by 'tzutil /l', such as 'UTC' or 'W. Europe Standard Time'",
    );
  }
  if (!/^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$/.test(o.locale)) {
    throw new UsageError(
      `input 'locale': '${o.locale}' is not a language tag`,
      'use a tag such as en-US, de-DE or ja-JP',
    );
  }
  if (
    o.keyboard &&
    !/^([0-9A-Fa-f]{4}:[0-9A-Fa-f{}-]{8,38}|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)(;.+)?$/.test(o.keyboard)
  ) {
    throw new UsageError(
      `input 'keyboard': '${o.keyboard}' is not an input locale`,
      "use a language tag (de-DE) or a locale:layout pair such as '0407:00000407'",
    );
  }
  if (o.productKey && !/^[0-9A-Za-z]{5}(-[0-9A-Za-z]{5}){4}$/.test(o.productKey)) {
    throw new UsageError("input 'product-key' is not of the form XXXXX-XXXXX-XXXXX-XXXXX-XXXXX");
  }
}

/** Which Windows 11 Setup checks this VM fails, and so must be bypassed through LabConfig. */
export function hardwareBypasses(o: UnattendOptions): string[] {
  if (!familyInfo(o.family).hardwareChecks) return [];
  const out: string[] = [];
  if (o.firmware !== 'uefi-secure') out.push('BypassTPMCheck', 'BypassSecureBootCheck');
  if (o.memoryBytes !== undefined && o.memoryBytes < 4 * GIB) out.push('BypassRAMCheck');
  if (o.cpus !== undefined && o.cpus < 2) out.push('BypassCPUCheck');
  if (o.diskBytes !== undefined && o.diskBytes < 64 * GIB) out.push('BypassStorageCheck');
  return out;
}

interface Ctx {
  arch: 'amd64' | 'arm64';
}

function component(settings: XMLBuilder, name: string, ctx: Ctx): XMLBuilder {
  return settings
    .ele('component')
    .att('name', name)
    .att('processorArchitecture', ctx.arch)
    .att('publicKeyToken', '31bf3856ad364e35')
    .att('language', 'neutral')
    .att('versionScope', 'nonSxS');
}

function leaf(parent: XMLBuilder, name: string, value: string | number | boolean): XMLBuilder {
  parent.ele(name).txt(String(value));
  return parent;
}

function added(parent: XMLBuilder, name: string, key?: string): XMLBuilder {
  const e = parent.ele(name).att(WCM_NS, 'wcm:action', 'add');
  if (key !== undefined) e.att(WCM_NS, 'wcm:keyValue', key);
  return e;
}

function newDocument(): XMLBuilder {
  return create({ version: '1.0', encoding: 'utf-8' })
    .ele(UNATTEND_NS, 'unattend')
    .att(XMLNS_NS, 'xmlns:wcm', WCM_NS);
}

function international(settings: XMLBuilder, name: string, o: UnattendOptions, ctx: Ctx, pe: boolean): void {
  const c = component(settings, name, ctx);
  if (pe) c.ele('SetupUILanguage').ele('UILanguage').txt(o.locale);
  leaf(c, 'InputLocale', o.keyboard || o.locale);
  leaf(c, 'SystemLocale', o.locale);
  leaf(c, 'UILanguage', o.locale);
  leaf(c, 'UserLocale', o.locale);
}

function runSynchronous(parent: XMLBuilder, commands: { path: string; description: string }[]): void {
  if (!commands.length) return;
  const rs = parent.ele('RunSynchronous');
  commands.forEach((cmd, i) => {
    const c = added(rs, 'RunSynchronousCommand');
    leaf(c, 'Order', i + 1);
    leaf(c, 'Path', cmd.path);
    leaf(c, 'Description', cmd.description);
  });
}

function diskConfiguration(setup: XMLBuilder, o: UnattendOptions): number {
  const disk = added(setup.ele('DiskConfiguration'), 'Disk');
  leaf(disk, 'DiskID', 0);
  leaf(disk, 'WillWipeDisk', true);
  const create = disk.ele('CreatePartitions');
  const modify = disk.ele('ModifyPartitions');
  // The Windows partition comes last and takes the rest of the disk, so growing the disk later
  // (dockur/windows DISK_SIZE, qemu-img resize) leaves room C: can be extended into.
  const parts: {
    type: string;
    size?: number;
    format?: string;
    label?: string;
    letter?: string;
    active?: boolean;
  }[] =
    o.firmware === 'bios'
      ? [
          { type: 'Primary', size: 500, format: 'NTFS', label: 'System Reserved', active: true },
          { type: 'Primary', format: 'NTFS', label: 'Windows', letter: 'C' },
        ]
      : [
          { type: 'EFI', size: 300, format: 'FAT32', label: 'System' },
          { type: 'MSR', size: 16 },
          { type: 'Primary', format: 'NTFS', label: 'Windows', letter: 'C' },
        ];
  let modified = 0;
  parts.forEach((p, i) => {
    const c = added(create, 'CreatePartition');
    leaf(c, 'Order', i + 1);
    leaf(c, 'Type', p.type);
    if (p.size !== undefined) leaf(c, 'Size', p.size);
    else leaf(c, 'Extend', true);
    if (p.type === 'MSR') return;
    const m = added(modify, 'ModifyPartition');
    // Orders count the ModifyPartition entries (the MSR has none); PartitionID counts partitions.
    leaf(m, 'Order', ++modified);
    leaf(m, 'PartitionID', i + 1);
    if (p.format) leaf(m, 'Format', p.format);
    if (p.label) leaf(m, 'Label', p.label);
    if (p.letter) leaf(m, 'Letter', p.letter);
    if (p.active) leaf(m, 'Active', true);
  });
  return parts.length;
}

function windowsPE(root: XMLBuilder, o: UnattendOptions, ctx: Ctx): void {
  const s = root.ele('settings').att('pass', 'windowsPE');
  international(s, 'Microsoft-Windows-International-Core-WinPE', o, ctx, true);
  if (o.virtio) {
    const paths = component(s, 'Microsoft-Windows-PnpCustomizationsWinPE', ctx).ele('DriverPaths');
    let key = 1;
    const os = familyInfo(o.family).virtioFolder;
    for (const driver of DRIVERS) {
      for (const letter of DRIVER_LETTERS) {
        leaf(
          added(paths, 'PathAndCredentials', String(key++)),
          'Path',
          `${letter}:\\${driver}\\${os}\\${virtioArchFolder(o.arch)}`,
        );
      }
    }
  }
  const setup = component(s, 'Microsoft-Windows-Setup', ctx);
  const windowsPartition = diskConfiguration(setup, o);
  const osImage = setup.ele('ImageInstall').ele('OSImage');
  if (o.edition) {
    const meta = added(osImage.ele('InstallFrom'), 'MetaData');
    const byIndex = /^\d+$/.test(o.edition);
    leaf(meta, 'Key', byIndex ? '/IMAGE/INDEX' : '/IMAGE/NAME');
    leaf(meta, 'Value', o.edition);
  }
  const to = osImage.ele('InstallTo');
  leaf(to, 'DiskID', 0);
  leaf(to, 'PartitionID', windowsPartition);
  leaf(osImage, 'InstallToAvailablePartition', false);
  leaf(osImage, 'WillShowUI', 'OnError');
  const user = setup.ele('UserData');
  leaf(user, 'AcceptEula', true);
  leaf(user, 'FullName', o.adminUser);
  leaf(user, 'Organization', o.organization ?? 'orb');
  if (o.productKey) {
    const pk = user.ele('ProductKey');
    leaf(pk, 'Key', o.productKey);
    leaf(pk, 'WillShowUI', 'OnError');
  }
  // Reproducible installs: no downloads from Windows Update in the middle of Setup.
  const du = setup.ele('DynamicUpdate');
  leaf(du, 'Enable', false);
  leaf(du, 'WillShowUI', 'Never');
  // LabConfig must exist before Setup evaluates the hardware, so it is written from windowsPE.
  runSynchronous(
    setup,
    hardwareBypasses(o).map((v) => ({
      path: `reg.exe add HKLM\\SYSTEM\\Setup\\LabConfig /v ${v} /t REG_DWORD /d 1 /f`,
      description: `Windows 11 Setup: ${v} (this VM's firmware or size fails the check)`,
    })),
  );
}

function specialize(root: XMLBuilder, o: UnattendOptions, ctx: Ctx): void {
  const s = root.ele('settings').att('pass', 'specialize');
  const shell = component(s, 'Microsoft-Windows-Shell-Setup', ctx);
  leaf(shell, 'ComputerName', o.computerName);
  leaf(shell, 'TimeZone', o.timeZone);
  if (o.rdp !== false) {
    leaf(
      component(s, 'Microsoft-Windows-TerminalServices-LocalSessionManager', ctx),
      'fDenyTSConnections',
      false,
    );
    const group = added(
      component(s, 'Networking-MPSSVC-Svc', ctx).ele('FirewallGroups'),
      'FirewallGroup',
      'RemoteDesktop',
    );
    leaf(group, 'Active', true);
    // The indirect string of the "Remote Desktop" rule group: works on every display language.
    leaf(group, 'Group', '@FirewallAPI.dll,-28752');
    leaf(group, 'Profile', 'all');
  }
  // Windows 11 (and 10 on modern hardware) turns on BitLocker device encryption by itself after
  // OOBE when it finds a TPM: the golden disk would then be encrypted with a key sealed to this
  // build's TPM, unreadable in every clone. Set before OOBE, so specialize (the installed system's
  // registry; windowsPE commands only reach Windows PE's own).
  const commands: { path: string; description: string }[] = [
    {
      path: 'reg.exe add HKLM\\SYSTEM\\CurrentControlSet\\Control\\BitLocker /v PreventDeviceEncryption /t REG_DWORD /d 1 /f',
      description: 'no automatic device encryption of the golden disk',
    },
  ];
  if (!familyInfo(o.family).server) {
    // Windows 11 OOBE insists on a network connection for account setup unless this is set.
    commands.push({
      path: 'reg.exe add HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\OOBE /v BypassNRO /t REG_DWORD /d 1 /f',
      description: 'OOBE: allow setup without a network',
    });
  }
  runSynchronous(component(s, 'Microsoft-Windows-Deployment', ctx), commands);
}

function oobeSettings(shell: XMLBuilder, o: UnattendOptions): void {
  const oobe = shell.ele('OOBE');
  leaf(oobe, 'HideEULAPage', true);
  leaf(oobe, 'HideOEMRegistrationScreen', true);
  leaf(oobe, 'HideWirelessSetupInOOBE', true);
  if (!familyInfo(o.family).server) {
    leaf(oobe, 'HideOnlineAccountScreens', true);
    leaf(oobe, 'HideLocalAccountScreen', true);
  }
  leaf(oobe, 'NetworkLocation', 'Work');
  // 3: do not turn on recommended settings (telemetry prompts stay off and are not asked).
  leaf(oobe, 'ProtectYourPC', 3);
}

function password(parent: XMLBuilder, name: 'Password' | 'AdministratorPassword', value: string): void {
  const p = parent.ele(name);
  leaf(p, 'Value', encodeUnattendPassword(value, name));
  leaf(p, 'PlainText', false);
}

function isBuiltinAdmin(user: string): boolean {
  return user.toLowerCase() === 'administrator';
}

/**
 * The command the first logon runs: find orb's script on whichever drive the answer media got, or
 * in C:\OEM: dockur/windows copies its /oem mount there through the media's $OEM$\$1\OEM folder.
 * The documented mount is the media's orb folder as /oem (C:\OEM\orb.ps1); C:\OEM\orb\orb.ps1 is
 * where the whole media folder mounted as /oem puts it. The final stage removes C:\OEM.
 */
export function firstLogonCommand(): string {
  const find =
    `$c = @(Get-PSDrive -PSProvider FileSystem | ForEach-Object { Join-Path $_.Root '${MEDIA_DIR}\\${ORB_SCRIPT}' }) + ` +
    `(Join-Path $env:SystemDrive 'OEM\\${ORB_SCRIPT}') + ` +
    `(Join-Path $env:SystemDrive 'OEM\\${MEDIA_DIR}\\${ORB_SCRIPT}'); ` +
    `$f = $c | Where-Object { Test-Path -LiteralPath $_ } | Select-Object -First 1; if ($f) { & $f -Mode firstlogon } else { exit 3 }`;
  return `powershell.exe -NoProfile -ExecutionPolicy Bypass -Command "${find}"`;
}

function oobeSystem(root: XMLBuilder, o: UnattendOptions, ctx: Ctx): void {
  const s = root.ele('settings').att('pass', 'oobeSystem');
  international(s, 'Microsoft-Windows-International-Core', o, ctx, false);
  const shell = component(s, 'Microsoft-Windows-Shell-Setup', ctx);
  oobeSettings(shell, o);
  const accounts = shell.ele('UserAccounts');
  // Server OOBE asks for the built-in Administrator's password unless the answer file sets it.
  if (familyInfo(o.family).server || isBuiltinAdmin(o.adminUser))
    password(accounts, 'AdministratorPassword', o.adminPassword);
  if (!isBuiltinAdmin(o.adminUser)) {
    const acc = added(accounts.ele('LocalAccounts'), 'LocalAccount');
    password(acc, 'Password', o.adminPassword);
    leaf(acc, 'Name', o.adminUser);
    leaf(acc, 'DisplayName', o.adminUser);
    leaf(acc, 'Group', 'Administrators');
  }
  // One automatic logon runs orb's first-logon script; that script removes the stored logon
  // password from the registry at once, and the final stage checks again.
  const auto = shell.ele('AutoLogon');
  password(auto, 'Password', o.adminPassword);
  leaf(auto, 'Enabled', true);
  leaf(auto, 'LogonCount', 1);
  leaf(auto, 'Username', o.adminUser);
  const cmd = added(shell.ele('FirstLogonCommands'), 'SynchronousCommand');
  leaf(cmd, 'Order', 1);
  leaf(cmd, 'CommandLine', firstLogonCommand());
  leaf(cmd, 'Description', 'orb: register the build stages and shut down');
  leaf(cmd, 'RequiresUserInput', false);
  leaf(shell, 'TimeZone', o.timeZone);
}

export function buildAutounattend(o: UnattendOptions): string {
  checkUnattendOptions(o);
  const ctx: Ctx = { arch: componentArch(o.arch) };
  const root = newDocument();
  windowsPE(root, o, ctx);
  specialize(root, o, ctx);
  oobeSystem(root, o, ctx);
  return root.end({ prettyPrint: true }) + '\n';
}

/**
 * The answer file sysprep gets for the generalized image's first boot: no secret in it (accounts
 * already exist), keeps the installed virtio drivers through generalize, and skips the OOBE
 * screens that would otherwise wait for someone on the console of every clone.
 */
export function buildSysprepUnattend(
  o: Pick<UnattendOptions, 'family' | 'arch' | 'locale' | 'keyboard' | 'timeZone'>,
): string {
  const ctx: Ctx = { arch: componentArch(o.arch) };
  const full = o as UnattendOptions;
  const root = newDocument();
  const gen = root.ele('settings').att('pass', 'generalize');
  leaf(component(gen, 'Microsoft-Windows-PnpSysprep', ctx), 'PersistAllDeviceInstalls', true);
  leaf(component(gen, 'Microsoft-Windows-Security-SPP', ctx), 'SkipRearm', 1);
  const spec = root.ele('settings').att('pass', 'specialize');
  const shell = component(spec, 'Microsoft-Windows-Shell-Setup', ctx);
  leaf(shell, 'ComputerName', '*');
  leaf(shell, 'TimeZone', o.timeZone);
  const oobe = root.ele('settings').att('pass', 'oobeSystem');
  international(oobe, 'Microsoft-Windows-International-Core', full, ctx, false);
  oobeSettings(component(oobe, 'Microsoft-Windows-Shell-Setup', ctx), full);
  return root.end({ prettyPrint: true }) + '\n';
}
