import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { create } from 'xmlbuilder2';
import { Inputs, Summary, type CommandDef, type Outputs, type RunContext } from '../../src/core/command.js';
import { OrbError } from '../../src/core/errors.js';
import { resolveInputs, type RawInputs } from '../../src/core/inputs.js';
import { mask, redact } from '../../src/core/log.js';
import { nullProgress } from '../../src/core/progress.js';
import unattendCommand from '../../src/commands/unattend.js';
import {
  encodeUnattendPassword,
  generatePassword,
  passwordComplexityProblem,
} from '../../src/windows/accounts.js';
import {
  familyFromEdition,
  resolveFamily,
  WINDOWS_FAMILIES,
  type WindowsFamily,
} from '../../src/windows/families.js';
import { BUILD_TRACES, ORB_PS1 } from '../../src/windows/scripts.js';
import { secretForms } from '../../src/core/log.js';
import { emulateDockurSetup, listFiles, removeTraces } from '../helpers/windows-setup.js';
import {
  buildAutounattend,
  buildSysprepUnattend,
  UNATTEND_NS,
  WCM_NS,
  type UnattendOptions,
} from '../../src/windows/unattend.js';

const PASSWORD = 'S3cret<&>"pass\'';
const GIB = 1024 ** 3;

function base(family: WindowsFamily, extra: Partial<UnattendOptions> = {}): UnattendOptions {
  return {
    family,
    arch: 'x86_64',
    firmware: 'uefi',
    edition: family.startsWith('server') ? 'Windows Server 2022 SERVERDATACENTER' : 'Windows 11 Pro',
    locale: 'de-DE',
    timeZone: 'W. Europe Standard Time',
    computerName: 'GOLDEN-01',
    adminUser: 'builder',
    adminPassword: PASSWORD,
    memoryBytes: 8 * GIB,
    cpus: 4,
    diskBytes: 80 * GIB,
    virtio: true,
    ...extra,
  };
}

// A tiny query layer over the DOM xmlbuilder2 parses into.
type El = {
  localName: string;
  namespaceURI: string | null;
  textContent: string | null;
  childNodes: Iterable<El>;
  nodeType: number;
  getAttribute(n: string): string | null;
  getAttributeNS(ns: string, n: string): string | null;
};
function parse(xml: string): El {
  return (create(xml).node as unknown as { documentElement: El }).documentElement;
}
function kids(e: El, name?: string): El[] {
  return [...e.childNodes].filter((c) => c.nodeType === 1 && (!name || c.localName === name));
}
function pass(root: El, name: string): El {
  const s = kids(root, 'settings').filter((x) => x.getAttribute('pass') === name);
  expect(s, `pass ${name}`).toHaveLength(1);
  return s[0]!;
}
function comp(settings: El, name: string): El | undefined {
  return kids(settings, 'component').find((c) => c.getAttribute('name') === name);
}
function path(e: El, ...names: string[]): El[] {
  let cur = [e];
  for (const n of names) cur = cur.flatMap((c) => kids(c, n));
  return cur;
}
function text(e: El, ...names: string[]): string | undefined {
  return path(e, ...names)[0]?.textContent ?? undefined;
}
function all(e: El, name: string): El[] {
  const out: El[] = [];
  const walk = (x: El) => {
    for (const c of kids(x)) {
      if (c.localName === name) out.push(c);
      walk(c);
    }
  };
  walk(e);
  return out;
}

describe('autounattend.xml per Windows family', () => {
  for (const family of WINDOWS_FAMILIES) {
    it(`${family}: passes, components, drivers, disk, accounts, first logon`, () => {
      const xml = buildAutounattend(base(family));
      const root = parse(xml);
      expect(root.localName).toBe('unattend');
      expect(root.namespaceURI).toBe(UNATTEND_NS);
      const pe = pass(root, 'windowsPE');
      const spec = pass(root, 'specialize');
      const oobe = pass(root, 'oobeSystem');
      for (const c of all(root, 'component')) {
        expect(c.getAttribute('processorArchitecture')).toBe('amd64');
        expect(c.getAttribute('publicKeyToken')).toBe('31bf3856ad364e35');
        expect(c.getAttribute('versionScope')).toBe('nonSxS');
      }
      // windowsPE: language, drivers for this family's folder, disk layout, image, EULA
      const intl = comp(pe, 'Microsoft-Windows-International-Core-WinPE')!;
      expect(text(intl, 'SetupUILanguage', 'UILanguage')).toBe('de-DE');
      expect(text(intl, 'InputLocale')).toBe('de-DE');
      const folder = {
        win10: 'w10',
        win11: 'w11',
        server2019: '2k19',
        server2022: '2k22',
        server2025: '2k25',
      }[family];
      const driverPaths = path(
        comp(pe, 'Microsoft-Windows-PnpCustomizationsWinPE')!,
        'DriverPaths',
        'PathAndCredentials',
      );
      const paths = driverPaths.map((p) => text(p, 'Path'));
      for (const d of ['viostor', 'vioscsi', 'NetKVM']) expect(paths).toContain(`E:\\${d}\\${folder}\\amd64`);
      expect(new Set(driverPaths.map((p) => p.getAttributeNS(WCM_NS, 'keyValue'))).size).toBe(
        driverPaths.length,
      );
      expect(driverPaths.every((p) => p.getAttributeNS(WCM_NS, 'action') === 'add')).toBe(true);
      const setup = comp(pe, 'Microsoft-Windows-Setup')!;
      const types = path(setup, 'DiskConfiguration', 'Disk', 'CreatePartitions', 'CreatePartition').map((p) =>
        text(p, 'Type'),
      );
      expect(types).toEqual(['EFI', 'MSR', 'Primary']);
      expect(text(setup, 'ImageInstall', 'OSImage', 'InstallTo', 'PartitionID')).toBe('3');
      const modify = path(setup, 'DiskConfiguration', 'Disk', 'ModifyPartitions', 'ModifyPartition');
      expect(modify.map((m) => [text(m, 'Order'), text(m, 'PartitionID'), text(m, 'Format')])).toEqual([
        ['1', '1', 'FAT32'],
        ['2', '3', 'NTFS'],
      ]);
      expect(text(setup, 'ImageInstall', 'OSImage', 'InstallFrom', 'MetaData', 'Key')).toBe('/IMAGE/NAME');
      expect(text(setup, 'UserData', 'AcceptEula')).toBe('true');
      expect(path(setup, 'UserData', 'ProductKey')).toHaveLength(0);
      expect(text(setup, 'DynamicUpdate', 'Enable')).toBe('false');
      // Windows 11 on plain UEFI without TPM: LabConfig bypasses in windowsPE; nobody else gets them
      const labConfig = path(setup, 'RunSynchronous', 'RunSynchronousCommand').map(
        (c) => text(c, 'Path') ?? '',
      );
      if (family === 'win11') {
        expect(labConfig.some((p) => p.includes('LabConfig') && p.includes('BypassTPMCheck'))).toBe(true);
        expect(labConfig.some((p) => p.includes('BypassSecureBootCheck'))).toBe(true);
        expect(labConfig.some((p) => p.includes('BypassRAMCheck'))).toBe(false);
      } else {
        expect(labConfig).toEqual([]);
      }
      // specialize: name, zone, Remote Desktop on and allowed through the firewall
      const shellSpec = comp(spec, 'Microsoft-Windows-Shell-Setup')!;
      expect(text(shellSpec, 'ComputerName')).toBe('GOLDEN-01');
      expect(text(shellSpec, 'TimeZone')).toBe('W. Europe Standard Time');
      expect(
        text(comp(spec, 'Microsoft-Windows-TerminalServices-LocalSessionManager')!, 'fDenyTSConnections'),
      ).toBe('false');
      expect(text(comp(spec, 'Networking-MPSSVC-Svc')!, 'FirewallGroups', 'FirewallGroup', 'Active')).toBe(
        'true',
      );
      // specialize (the installed system's registry, before OOBE): no automatic device encryption
      const specCmds = path(
        comp(spec, 'Microsoft-Windows-Deployment')!,
        'RunSynchronous',
        'RunSynchronousCommand',
      );
      expect(specCmds.map((c) => text(c, 'Path'))).toContain(
        'reg.exe add HKLM\\SYSTEM\\CurrentControlSet\\Control\\BitLocker /v PreventDeviceEncryption /t REG_DWORD /d 1 /f',
      );
      expect(specCmds.map((c) => text(c, 'Order'))).toEqual(specCmds.map((_, i) => String(i + 1)));
      // (windowsPE commands write Windows PE's own registry: the value would not reach the disk)
      expect(xml.split('PreventDeviceEncryption')).toHaveLength(2);
      // oobeSystem: OOBE screens skipped, the account, one automatic logon that runs orb.ps1
      const shell = comp(oobe, 'Microsoft-Windows-Shell-Setup')!;
      expect(text(shell, 'OOBE', 'HideEULAPage')).toBe('true');
      expect(text(shell, 'OOBE', 'ProtectYourPC')).toBe('3');
      const server = family.startsWith('server');
      expect(path(shell, 'OOBE', 'HideOnlineAccountScreens')).toHaveLength(server ? 0 : 1);
      expect(path(shell, 'UserAccounts', 'AdministratorPassword')).toHaveLength(server ? 1 : 0);
      const account = path(shell, 'UserAccounts', 'LocalAccounts', 'LocalAccount')[0]!;
      expect(text(account, 'Name')).toBe('builder');
      expect(text(account, 'Group')).toBe('Administrators');
      expect(text(account, 'Password', 'PlainText')).toBe('false');
      expect(text(account, 'Password', 'Value')).toBe(encodeUnattendPassword(PASSWORD, 'Password'));
      expect(text(shell, 'AutoLogon', 'Username')).toBe('builder');
      expect(text(shell, 'AutoLogon', 'LogonCount')).toBe('1');
      const cmd = text(shell, 'FirstLogonCommands', 'SynchronousCommand', 'CommandLine')!;
      expect(cmd).toContain('orb\\orb.ps1');
      expect(cmd).toContain("'OEM\\orb.ps1'");
      expect(cmd).toContain('-Mode firstlogon');
      expect(text(comp(oobe, 'Microsoft-Windows-International-Core')!, 'UserLocale')).toBe('de-DE');
      // the password itself is nowhere in the file, and its encoding decodes back to it
      expect(xml).not.toContain(PASSWORD);
      expect(xml).not.toContain('S3cret');
      expect(Buffer.from(text(account, 'Password', 'Value')!, 'base64').toString('utf16le')).toBe(
        PASSWORD + 'Password',
      );
    });
  }

  it('BIOS: MBR layout with an active system partition, Windows on partition 2', () => {
    const setup = comp(
      pass(parse(buildAutounattend(base('win10', { firmware: 'bios' }))), 'windowsPE'),
      'Microsoft-Windows-Setup',
    )!;
    const mods = path(setup, 'DiskConfiguration', 'Disk', 'ModifyPartitions', 'ModifyPartition');
    expect(mods.map((m) => text(m, 'Active'))).toEqual(['true', undefined]);
    expect(text(setup, 'ImageInstall', 'OSImage', 'InstallTo', 'PartitionID')).toBe('2');
  });

  it('Windows 11 bypasses only the checks this VM fails', () => {
    const checks = (o: Partial<UnattendOptions>) =>
      all(parse(buildAutounattend(base('win11', o))), 'RunSynchronousCommand')
        .map((c) => text(c, 'Path') ?? '')
        .filter((p) => p.includes('LabConfig'))
        .map((p) => /\/v (\w+)/.exec(p)![1]);
    expect(checks({ firmware: 'uefi-secure' })).toEqual([]);
    expect(checks({ firmware: 'uefi-secure', memoryBytes: 2 * GIB, cpus: 1, diskBytes: 32 * GIB })).toEqual([
      'BypassRAMCheck',
      'BypassCPUCheck',
      'BypassStorageCheck',
    ]);
    expect(checks({ firmware: 'bios' })).toEqual(['BypassTPMCheck', 'BypassSecureBootCheck']);
  });

  it('aarch64, edition by index, product key, no virtio, built-in Administrator', () => {
    const xml = buildAutounattend(
      base('win11', {
        arch: 'aarch64',
        edition: '6',
        productKey: 'AAAAA-BBBBB-CCCCC-DDDDD-EEEEE',
        virtio: false,
        adminUser: 'Administrator',
      }),
    );
    const root = parse(xml);
    expect(all(root, 'component').every((c) => c.getAttribute('processorArchitecture') === 'arm64')).toBe(
      true,
    );
    const setup = comp(pass(root, 'windowsPE'), 'Microsoft-Windows-Setup')!;
    expect(text(setup, 'ImageInstall', 'OSImage', 'InstallFrom', 'MetaData', 'Key')).toBe('/IMAGE/INDEX');
    expect(text(setup, 'ImageInstall', 'OSImage', 'InstallFrom', 'MetaData', 'Value')).toBe('6');
    expect(text(setup, 'UserData', 'ProductKey', 'Key')).toBe('AAAAA-BBBBB-CCCCC-DDDDD-EEEEE');
    expect(comp(pass(root, 'windowsPE'), 'Microsoft-Windows-PnpCustomizationsWinPE')).toBeUndefined();
    const shell = comp(pass(root, 'oobeSystem'), 'Microsoft-Windows-Shell-Setup')!;
    expect(path(shell, 'UserAccounts', 'LocalAccounts')).toHaveLength(0);
    expect(text(shell, 'UserAccounts', 'AdministratorPassword', 'Value')).toBe(
      encodeUnattendPassword(PASSWORD, 'AdministratorPassword'),
    );
  });

  it('the sysprep answer file keeps drivers, skips OOBE and holds no password', () => {
    const xml = buildSysprepUnattend(base('win11'));
    const root = parse(xml);
    expect(
      text(comp(pass(root, 'generalize'), 'Microsoft-Windows-PnpSysprep')!, 'PersistAllDeviceInstalls'),
    ).toBe('true');
    expect(
      text(
        comp(pass(root, 'oobeSystem'), 'Microsoft-Windows-Shell-Setup')!,
        'OOBE',
        'HideLocalAccountScreen',
      ),
    ).toBe('true');
    expect(all(root, 'Password')).toHaveLength(0);
    expect(all(root, 'AutoLogon')).toHaveLength(0);
  });

  it('rejects what Windows Setup would stop at', () => {
    expect(() => buildAutounattend(base('win11', { timeZone: 'Europe/Berlin' }))).toThrow(/IANA/);
    expect(() => buildAutounattend(base('win11', { locale: 'german' }))).toThrow(/language tag/);
    expect(() => buildAutounattend(base('win11', { productKey: 'nope' }))).toThrow(/product-key/);
  });

  it('tells the release from edition names and version aliases', () => {
    expect(familyFromEdition('Windows 11 Pro')).toBe('win11');
    expect(familyFromEdition('Windows 10 Enterprise LTSC')).toBe('win10');
    expect(familyFromEdition('Windows Server 2022 SERVERDATACENTER')).toBe('server2022');
    expect(familyFromEdition('Windows Server 2025 Standard (Desktop Experience)')).toBe('server2025');
    expect(resolveFamily('2k19', undefined)).toBe('server2019');
    expect(resolveFamily('auto', 'Windows 10 Pro')).toBe('win10');
    expect(() => resolveFamily('auto', '6')).toThrow(/Windows release/);
  });

  it('generated passwords meet the Windows policy', () => {
    for (let i = 0; i < 50; i++) {
      const p = generatePassword();
      expect(p).toHaveLength(20);
      expect(passwordComplexityProblem(p, 'orb')).toBeUndefined();
    }
    expect(passwordComplexityProblem('short1A', 'x')).toMatch(/8/);
    expect(passwordComplexityProblem('alllowercase', 'x')).toMatch(/three/);
  });

  it('orb.ps1 removes every build trace in the final stage, and only answer files at the first logon', () => {
    const list = '@(' + BUILD_TRACES.map((t) => `'${t}'`).join(', ') + ')';
    expect(ORB_PS1.split(list)).toHaveLength(3); // Remove-AnswerFiles and Remove-BuildTraces
    for (const t of ['OEM', 'Windows\\ConfigSetRoot', 'ProgramData\\orb', 'Windows\\Panther\\unattend.xml'])
      expect(BUILD_TRACES).toContain(t);
    const finalize = ORB_PS1.slice(ORB_PS1.indexOf('function Invoke-Finalize'));
    const body = finalize.slice(0, finalize.indexOf('\nfunction '));
    expect(body).toContain('Remove-BuildTraces');
    // the sysprep answer is read before C:\OEM (its media in dockur) goes, and its temp copy removed
    expect(body.indexOf('sysprep-unattend.xml')).toBeLessThan(body.indexOf('Remove-BuildTraces'));
    expect(body).toMatch(/Remove-Item -LiteralPath \$answer/);
    expect(ORB_PS1).toContain("-Name 'DefaultPassword', 'AutoLogonCount'");
  });

  it('orb.ps1 is complete PowerShell (no template leftovers, balanced braces)', () => {
    expect(ORB_PS1).not.toContain('${');
    expect(ORB_PS1).toMatch(/^param\(\[string\]\$Mode/m);
    const count = (c: string) => ORB_PS1.split(c).length - 1;
    expect(count('{')).toBe(count('}'));
    expect(count('(')).toBe(count(')'));
    for (const m of [
      'ORB-STAGE install',
      'ORB-DONE installed',
      'ORB-DONE provisioned',
      'ORB-DONE generalized',
      'ORB-FAIL',
      'Optimize-Volume',
      'sysprep.exe',
    ]) {
      expect(ORB_PS1).toContain(m);
    }
  });
});

/** Runs a command in this process the way the CLI does, capturing the log through redact(). */
async function runCommand(cmd: CommandDef, raw: RawInputs): Promise<{ outputs: Outputs; log: string[] }> {
  const values = resolveInputs(cmd.inputs, raw);
  for (const s of cmd.inputs)
    if (s.secret && typeof values[s.name] === 'string') mask(values[s.name] as string);
  const log: string[] = [];
  const put = (m: string) => log.push(redact(m));
  const ctx: RunContext = {
    log: { info: put, warn: put, error: put, debug: put },
    progress: () => nullProgress,
    summary: new Summary(),
    mask,
    signal: new AbortController().signal,
    mode: 'cli',
  };
  return { outputs: await cmd.run(new Inputs(values, cmd.inputs), ctx), log };
}

describe('orb unattend --out DIR', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'orb-unattend-'));
    await writeFile(join(dir, 'install tools.ps1'), "Write-Output 'tools'\n");
    await writeFile(join(dir, 'b.ps1'), "Write-Output 'b'\n");
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('writes the answer file, orb.ps1 and the scripts in order; the generated password is only a masked output', async () => {
    const out = join(dir, 'media');
    const { outputs, log } = await runCommand(unattendCommand, {
      out,
      edition: 'Windows Server 2025 SERVERSTANDARD',
      script: [join(dir, 'install tools.ps1'), join(dir, 'b.ps1')],
      iso: join(dir, 'answer.iso'),
    });
    const password = String(outputs['admin-password']);
    expect(password).toHaveLength(20);
    expect(outputs['windows-version']).toBe('server2025');
    expect(unattendCommand.outputs.find((o) => o.name === 'admin-password')?.secret).toBe(true);
    expect(log.join('\n')).not.toContain(password);
    expect(redact(`x ${password} y`)).toBe('x *** y');
    const xml = await readFile(join(out, 'autounattend.xml'), 'utf8');
    expect(xml).toContain(encodeUnattendPassword(password, 'Password'));
    expect((await stat(join(out, 'autounattend.xml'))).mode & 0o077).toBe(0);
    const build = JSON.parse(await readFile(join(out, 'orb', 'build.json'), 'utf8'));
    expect(build).toMatchObject({
      standalone: true,
      sysprep: true,
      shutdown: true,
      scripts: ['01-install_tools.ps1', '02-b.ps1'],
    });
    expect(JSON.stringify(build)).not.toContain(password);
    expect(await readdir(join(out, 'orb', 'scripts'))).toEqual(['01-install_tools.ps1', '02-b.ps1']);
    expect(await readFile(join(out, 'orb', 'orb.ps1'), 'utf8')).toContain('\r\n');
    expect(await readFile(join(out, 'orb', 'sysprep-unattend.xml'), 'utf8')).toContain(
      'PersistAllDeviceInstalls',
    );
    expect((await stat(join(dir, 'answer.iso'))).size).toBeGreaterThan(20_000);
  });

  it('dockur media flow: orb\\ (the /oem mount) holds no secret, and after the clean-up list no answer file, password or orb folder is left on C:', async () => {
    const password = 'Dockur-Flow-Pass-9';
    const out = join(dir, 'dockur-media');
    await runCommand(unattendCommand, {
      out,
      edition: 'Windows 11 Pro',
      'admin-password': password,
      script: [join(dir, 'b.ps1')],
    });
    const forms = secretForms(password);
    const answerMarkers = ['<AutoLogon>', '<LocalAccounts>', '<AdministratorPassword>', 'FirstLogonCommands'];
    const dirty = async (root: string) => {
      const found: string[] = [];
      for (const f of await listFiles(root)) {
        const data = await readFile(join(root, f), 'latin1');
        if (forms.some((x) => data.includes(x)) || answerMarkers.some((m) => data.includes(m))) found.push(f);
      }
      return found;
    };
    // What the documented mounts copy to C:\OEM carries no secret at all.
    expect(await dirty(join(out, 'orb'))).toEqual([]);
    for (const [name, oemDir] of [
      ['documented mounts (orb folder as /oem)', join(out, 'orb')],
      ['the old instructions (whole media folder as /oem)', out],
    ] as const) {
      const c = join(dir, `c-${name.length}`, 'C');
      await emulateDockurSetup(c, { customXml: join(out, 'autounattend.xml'), oemDir });
      const files = await listFiles(c);
      expect(files).toContain(oemDir === out ? 'OEM/orb/orb.ps1' : 'OEM/orb.ps1');
      expect((await dirty(c)).length, name).toBeGreaterThan(0); // Setup's cached copies, before the clean-up
      // the documented mounts never copy the answer file to C:\OEM (only sysprep's secret-free one)
      if (oemDir !== out)
        expect(files.filter((f) => f.startsWith('OEM') && /unattend/i.test(f))).toEqual([
          'OEM/sysprep-unattend.xml',
        ]);
      await removeTraces(c, BUILD_TRACES);
      expect(await dirty(c), name).toEqual([]);
      expect(
        (await listFiles(c)).filter((f) => /unattend|(^|\/)orb(\/|$)|^OEM\//i.test(f)),
        name,
      ).toEqual([]);
    }
  });

  it('fails before writing anything on bad input', async () => {
    const out = join(dir, 'bad');
    await expect(
      runCommand(unattendCommand, { out, edition: 'Windows 11 Pro', script: [join(dir, 'x.sh')] }),
    ).rejects.toThrow(/\.ps1/);
    await expect(runCommand(unattendCommand, { out })).rejects.toThrow(/edition/);
    await expect(
      runCommand(unattendCommand, { out, edition: 'Windows Server 2022 X', 'admin-password': 'password' }),
    ).rejects.toBeInstanceOf(OrbError);
    await expect(
      runCommand(unattendCommand, { out, edition: 'Windows Server 2022 X', arch: 'aarch64' }),
    ).rejects.toThrow(/ARM64/);
    await expect(stat(out)).rejects.toThrow();
  });
});
