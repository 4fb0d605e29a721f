import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WINDOWS_FAMILIES, type WindowsArch, type WindowsFamily } from '../../src/windows/families.js';
import { writeAnswerMedia } from '../../src/windows/media.js';
import { ORB_PS1 } from '../../src/windows/scripts.js';
import {
  buildAutounattend,
  buildSysprepUnattend,
  firstLogonCommand,
  type Firmware,
  type UnattendOptions,
} from '../../src/windows/unattend.js';
import {
  answerFileCommands,
  cmdLayer,
  encodeCommand,
  formatProblems,
  powershellFromCommandLine,
  powershellSyntaxProblems,
  splitWindowsCommandLine,
} from '../helpers/powershell.js';

// Every PowerShell script and command line orb generates goes through a real PowerShell grammar
// here: a typo in a script that only ever runs inside a Windows VM otherwise shows up as a build
// that hangs for an hour in CI.

async function expectParses(name: string, script: string): Promise<void> {
  const problems = await powershellSyntaxProblems(script);
  expect(problems, formatProblems(name, problems)).toEqual([]);
}

const GIB = 1024 ** 3;

function options(family: WindowsFamily, arch: WindowsArch, firmware: Firmware): UnattendOptions {
  return {
    family,
    arch,
    firmware,
    edition: '1',
    productKey: 'AAAAA-BBBBB-CCCCC-DDDDD-EEEEE',
    locale: 'en-US',
    timeZone: 'UTC',
    computerName: '*',
    adminUser: family.startsWith('server') ? 'Administrator' : 'builder',
    // The password never reaches a command line, but a hostile one proves it.
    adminPassword: `P@ss"w'o^r%d<&>$x\``,
    memoryBytes: 2 * GIB,
    cpus: 1,
    diskBytes: 32 * GIB,
    virtio: true,
  };
}

/** Every answer file variant orb can write: families, architectures, firmware. */
function answerFiles(): { name: string; xml: string }[] {
  const out: { name: string; xml: string }[] = [];
  for (const family of WINDOWS_FAMILIES) {
    for (const arch of ['x86_64', 'aarch64'] as const) {
      if (arch === 'aarch64' && family !== 'win11') continue;
      for (const firmware of ['bios', 'uefi', 'uefi-secure'] as const) {
        const o = options(family, arch, firmware);
        out.push({ name: `autounattend ${family} ${arch} ${firmware}`, xml: buildAutounattend(o) });
        out.push({ name: `sysprep ${family} ${arch}`, xml: buildSysprepUnattend(o) });
      }
    }
  }
  return out;
}

// Programs answer files may run besides PowerShell; anything else needs a parser here first.
const OTHER_PROGRAMS = /^reg\.exe add /;

describe('the parser catches broken PowerShell', () => {
  it.each([
    ['an unclosed brace', 'function Say([string]$line) {\n  Write-Host $line\n'],
    ['an unclosed string', "Say 'ORB-DONE\nexit 0\n"],
    ['an unclosed parenthesis', 'if ($code -eq 3010 { exit 1 }\n'],
    ['a stray closing brace', "Write-Host 'a'\n}\n"],
    ['an unclosed subexpression', '$x = @(1, 2\n'],
    ['an unclosed double-quoted string', 'Say "ORB-FAIL $what\nexit 1\n'],
    ['an unclosed index', '$args[0\n'],
  ])('%s', async (_name, script) => {
    const problems = await powershellSyntaxProblems(script);
    expect(problems.length).toBeGreaterThan(0);
    expect(formatProblems('broken.ps1', problems)).toMatch(/^broken\.ps1:\d+:\d+: (syntax error|missing)/);
  });

  it('reports the line of the error', async () => {
    const script = ORB_PS1.replace("Say 'ORB-STAGE finalize'", "Say ('ORB-STAGE finalize'");
    const problems = await powershellSyntaxProblems(script);
    expect(problems.length).toBeGreaterThan(0);
    const line = script.split('\n').findIndex((l) => l.includes("Say ('ORB-STAGE finalize'")) + 1;
    // tree-sitter reports an unclosed parenthesis where the statement it swallowed ends: at the
    // broken line or within the next few
    expect(problems.some((p) => p.line >= line && p.line <= line + 5)).toBe(true);
  });

  it('in a command line and an encoded command too', async () => {
    const broken = powershellFromCommandLine(firstLogonCommand().replace('} else {', '} else '));
    expect(broken?.how).toBe('command');
    expect((await powershellSyntaxProblems(broken!.text)).length).toBeGreaterThan(0);
    const encoded = powershellFromCommandLine(
      `powershell.exe -NoProfile -EncodedCommand ${encodeCommand('if (1 {')}`,
    );
    expect(encoded).toEqual({ how: 'encoded', text: 'if (1 {' });
    expect((await powershellSyntaxProblems(encoded!.text)).length).toBeGreaterThan(0);
  });

  it('accepts valid PowerShell', async () => {
    await expectParses(
      'ok.ps1',
      "param([string]$Mode = 'stage')\ntry { & $f -Mode firstlogon } catch { exit 3 }\n",
    );
  });
});

describe('Windows command-line layers', () => {
  it('splits arguments as the C runtime does', () => {
    expect(splitWindowsCommandLine('a "b c" d')).toEqual(['a', 'b c', 'd']);
    expect(splitWindowsCommandLine('a\\\\b "c\\"d" e\\\\\\"f')).toEqual(['a\\\\b', 'c"d', 'e\\"f']);
    expect(splitWindowsCommandLine('"a\\\\" b')).toEqual(['a\\', 'b']);
    expect(splitWindowsCommandLine('"say ""hi"""')).toEqual(['say "hi"']);
    expect(splitWindowsCommandLine('  x   ""  ')).toEqual(['x', '']);
  });

  it('peels cmd /c quotes and carets', () => {
    expect(cmdLayer('"powershell -Command "Write-Host 1""')).toBe('powershell -Command "Write-Host 1"');
    expect(cmdLayer('echo a^&b "c^d"')).toBe('echo a&b "c^d"');
    expect(
      powershellFromCommandLine('cmd.exe /d /c "powershell.exe -NoProfile -Command "Write-Host ^(1^)""'),
    ).toEqual({ how: 'command', text: 'Write-Host ^(1^)' });
    expect(powershellFromCommandLine('cmd /c powershell -ex Bypass -c Get-Date ^| Out-Null')).toEqual({
      how: 'command',
      text: 'Get-Date | Out-Null',
    });
  });

  it('finds the PowerShell in powershell.exe arguments', () => {
    expect(powershellFromCommandLine('reg.exe add HKLM\\X /f')).toBeUndefined();
    expect(powershellFromCommandLine('powershell -NoProfile -File "C:\\orb\\orb.ps1" -Mode stage')).toEqual({
      how: 'file',
      text: 'C:\\orb\\orb.ps1',
    });
    expect(
      powershellFromCommandLine(
        'PowerShell.EXE -ExecutionPolicy Bypass -WindowStyle Hidden /co "Get-Date; 1"',
      ),
    ).toEqual({ how: 'command', text: 'Get-Date; 1' });
    const script = 'Write-Host \'ünïcode\' "$env:TEMP"';
    expect(powershellFromCommandLine(`pwsh -ec ${encodeCommand(script)}`)).toEqual({
      how: 'encoded',
      text: script,
    });
  });

  it('decodes the XML layer of answer files', () => {
    const xml =
      '<unattend xmlns="urn:schemas-microsoft-com:unattend"><settings pass="oobeSystem"><component>' +
      '<FirstLogonCommands><SynchronousCommand><CommandLine>powershell -c "if (1 -lt 2) { &amp; x }"</CommandLine>' +
      '</SynchronousCommand></FirstLogonCommands></component></settings></unattend>';
    expect(answerFileCommands(xml)).toEqual([
      { where: 'oobeSystem/SynchronousCommand', commandLine: 'powershell -c "if (1 -lt 2) { & x }"' },
    ]);
  });
});

describe('generated PowerShell parses', () => {
  it('orb.ps1 (the script on the answer media)', async () => {
    await expectParses('orb.ps1', ORB_PS1);
  });

  it('the first-logon command line', async () => {
    const ps = powershellFromCommandLine(firstLogonCommand());
    expect(ps?.how).toBe('command');
    expect(ps!.text).toContain('-Mode firstlogon');
    await expectParses('FirstLogonCommands', ps!.text);
    // Whether Windows starts it directly or through `cmd /c`, PowerShell gets the same text.
    expect(powershellFromCommandLine(`cmd.exe /c ${firstLogonCommand()}`)).toEqual(ps);
  });

  it('every command line in every answer file variant', async () => {
    let powershell = 0;
    for (const { name, xml } of answerFiles()) {
      for (const c of answerFileCommands(xml)) {
        const ps = powershellFromCommandLine(c.commandLine);
        if (!ps) {
          expect(c.commandLine, `${name} ${c.where}: a program this test cannot parse`).toMatch(
            OTHER_PROGRAMS,
          );
          continue;
        }
        powershell++;
        expect(ps.how, `${name} ${c.where}`).not.toBe('file');
        await expectParses(`${name} ${c.where}`, ps.text);
        // Nothing of the password may end up on a command line (they are logged by Windows).
        expect(c.commandLine).not.toContain("w'o^r");
      }
    }
    expect(powershell).toBeGreaterThan(0);
  });

  describe('the answer media as written to disk', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'orb-pwsh-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it.each([
      ['build', false],
      ['standalone', true],
    ])('%s media: every .ps1 and every answer-file command', async (_kind, standalone) => {
      const media = join(dir, String(standalone));
      const user = join(dir, 'user.ps1');
      await writeFile(user, "Write-Host 'user script'\n");
      const o = options('win11', 'x86_64', 'uefi');
      await writeAnswerMedia(
        media,
        buildAutounattend(o),
        { family: o.family, computerName: o.computerName, adminUser: o.adminUser },
        standalone
          ? { scripts: [user], sysprep: true, sysprepUnattendXml: buildSysprepUnattend(o), shutdown: true }
          : undefined,
      );
      const files = (await readdir(media, { recursive: true })).map(String);
      const scripts = files.filter((f) => f.toLowerCase().endsWith('.ps1'));
      expect(scripts).toContain(join('orb', 'orb.ps1'));
      for (const f of scripts) {
        const text = await readFile(join(media, f), 'utf8');
        // The media copy is CRLF, as Windows tools expect; the grammar must accept it the same.
        if (f.endsWith('orb.ps1')) expect(text).toContain('\r\n');
        await expectParses(relative(dir, join(media, f)), text);
      }
      for (const f of files.filter((x) => x.endsWith('.xml'))) {
        for (const c of answerFileCommands(await readFile(join(media, f), 'utf8'))) {
          const ps = powershellFromCommandLine(c.commandLine);
          if (ps) await expectParses(`${f} ${c.where}`, ps.text);
          else expect(c.commandLine).toMatch(OTHER_PROGRAMS);
        }
      }
    });
  });
});

describe('no PowerShell escapes this test', () => {
  // A new place that starts PowerShell with a command (or writes a script) must be added above.
  const COVERED = ['src/windows/scripts.ts', 'src/windows/unattend.ts'];
  const INVOKES = /powershell(\.exe)?['"`]?\s*(-|,\s*['"`]-)|pwsh(\.exe)?\s+-|EncodedCommand|ORB_PS1\s*=/i;

  it('only the covered modules generate PowerShell', async () => {
    const root = join(import.meta.dirname, '..', '..');
    const files = (await readdir(join(root, 'src'), { recursive: true }))
      .map(String)
      .filter((f) => f.endsWith('.ts'));
    const found: string[] = [];
    for (const f of files) {
      const text = await readFile(join(root, 'src', f), 'utf8');
      if (INVOKES.test(text)) found.push(`src/${f.split('\\').join('/')}`);
    }
    expect(found.sort()).toEqual(COVERED);
  });
});
