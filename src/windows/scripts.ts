/**
 * The PowerShell that runs inside Windows during a build: orb.ps1, on the answer media.
 *
 * - `-Mode firstlogon`: the single automatic logon after Setup runs it. It removes the stored
 *   logon password and the cached answer files, turns hibernation off (no hybrid shutdown: a
 *   stage must start from a clean boot), installs itself as a startup task run by SYSTEM, and
 *   shuts down. The disk is now the "installed" base. (Standalone media from `orb unattend`
 *   instead provisions and finalizes right in that logon.)
 * - `-Mode stage`: at every boot the task looks for stage media (orb\stage.json on any drive) and
 *   runs that stage: "provision" runs the user's scripts in order with their output on the serial
 *   port (the build keeps it as provision.log); "finalize" sets the real admin password, removes
 *   every trace of the build (task, answer files, logon password, orb's folder, temp files),
 *   trims free space, optionally runs sysprep, and shuts down.
 *
 * Each stage boots a qcow2 overlay of the previous one, so changing a script re-runs provisioning
 * on the cached installed base instead of reinstalling Windows.
 *
 * Free space: `Optimize-Volume -ReTrim` sends TRIM for all free clusters. The build attaches the
 * disk with discard=unmap, so QEMU punches those clusters out of the qcow2 and the image holds only
 * live data. It takes seconds. The alternatives write the whole free space instead: `cipher /w`
 * writes it three times (0x00, 0xFF, then random data, which also defeats compression, and every
 * pass allocates the full virtual size in the qcow2), and sdelete is not part of Windows.
 */

/**
 * Every place on C: where a build leaves an answer file, a password or orb's working files, as
 * paths relative to the system drive. Windows Setup caches the answer file in Panther (and under
 * Sysprep when it came from there); with UseConfigurationSet (dockur/windows always sets it) it
 * copies the configuration set to Windows\ConfigSetRoot; dockur/windows copies its /oem mount
 * through the media's $OEM$\$1\OEM folder to C:\OEM; orb works in ProgramData\orb. The final stage
 * removes all of it (and the Winlogon values below) before trimming free space and sysprep.
 */
export const BUILD_TRACES: readonly string[] = [
  'unattend.xml',
  'autounattend.xml',
  'OEM',
  'Windows\\Panther\\unattend.xml',
  'Windows\\Panther\\autounattend.xml',
  'Windows\\Panther\\unattend-original.xml',
  'Windows\\Panther\\Unattend',
  'Windows\\System32\\Sysprep\\unattend.xml',
  'Windows\\System32\\Sysprep\\autounattend.xml',
  'Windows\\System32\\Sysprep\\Panther\\unattend.xml',
  'Windows\\ConfigSetRoot',
  'ProgramData\\orb',
];

/** Winlogon values that hold (or act on) the automatic logon's password. */
export const WINLOGON_SECRETS: readonly string[] = ['DefaultPassword', 'AutoLogonCount'];

/** BUILD_TRACES as a PowerShell array literal (single quotes: no expansion). */
function psList(items: readonly string[]): string {
  return items.map((i) => `'${i.replace(/'/g, "''")}'`).join(', ');
}

// The serial port is how the build hears from the guest; COM1 exists on every QEMU x86 machine.
// Written without backticks: this text lives in a JavaScript template literal. Name lists are quoted
// ('a', 'b'): bare words work in PowerShell, but the grammar test/windows/powershell-parse.test.ts checks
// these scripts with rejects a bare-word list in a command argument.
const COMMON = String.raw`
$ErrorActionPreference = 'Stop'
$orb = Join-Path $env:ProgramData 'orb'
$logs = Join-Path $orb 'logs'
New-Item -ItemType Directory -Force -Path $logs | Out-Null
$port = $null
try {
  $port = New-Object System.IO.Ports.SerialPort 'COM1', 115200, 'None', 8, 'One'
  $port.Open()
} catch { $port = $null }
function Say([string]$line) {
  try { Add-Content -LiteralPath (Join-Path $logs 'orb.log') -Value $line } catch {}
  if ($port) { try { $port.WriteLine($line) } catch {} }
}
function Remove-LogonPassword {
  $wl = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon'
  Remove-ItemProperty -Path $wl -Name ${psList(WINLOGON_SECRETS)} -ErrorAction SilentlyContinue
  Set-ItemProperty -Path $wl -Name AutoAdminLogon -Value '0' -ErrorAction SilentlyContinue
}
function Remove-AnswerFiles {
  # Windows keeps copies of the answer file; they hold the (only obfuscated) setup password.
  # Folders (C:\OEM, orb's own) stay until the final stage: the scripts may still run from them.
  foreach ($t in @(${psList(BUILD_TRACES)})) {
    $p = Join-Path $env:SystemDrive $t
    if ($t -like '*.xml') { Remove-Item -LiteralPath $p -Force -ErrorAction SilentlyContinue }
  }
  Remove-LogonPassword
}
function Remove-BuildTraces {
  # Everything in BUILD_TRACES, folders included; orb's own folder last, by the caller (logs).
  foreach ($t in @(${psList(BUILD_TRACES)})) {
    $p = Join-Path $env:SystemDrive $t
    if ($p -ne $orb) { Remove-Item -LiteralPath $p -Recurse -Force -ErrorAction SilentlyContinue }
  }
  Remove-LogonPassword
}
function Disable-Hibernation {
  # Also disables Fast Startup, whose hybrid shutdown would skip the next boot's startup task.
  & powercfg.exe /hibernate off | Out-Null
}
`;

/**
 * One script, two entry points: `-Mode firstlogon` (from the answer media, by the automatic
 * logon) and `-Mode stage` (from C:\ProgramData\orb, by the startup task).
 */
export const ORB_PS1 = String.raw`# orb: unattended build steps inside Windows. See https://github.com/ (orb-actions) docs/windows.md.
param([string]$Mode = 'stage')
${COMMON}
$rebooting = $false
$progressFile = Join-Path $orb 'progress.txt'

function Find-Media([string]$relative, [int]$tries) {
  for ($i = 0; $i -lt $tries; $i++) {
    $f = Get-PSDrive -PSProvider FileSystem | ForEach-Object { Join-Path $_.Root $relative } |
      Where-Object { Test-Path -LiteralPath $_ } | Select-Object -First 1
    if ($f) { return $f }
    Start-Sleep -Seconds 2
  }
  return $null
}

function Invoke-Provision($stage, [string]$media) {
  Say 'ORB-STAGE provision'
  $work = Join-Path $orb 'scripts'
  New-Item -ItemType Directory -Force -Path $work | Out-Null
  if (Test-Path -LiteralPath (Join-Path $media 'scripts')) {
    Copy-Item -Path (Join-Path $media 'scripts\*') -Destination $work -Force
  }
  # A script that exits 3010 (reboot required) gets its reboot; the next boot continues after it.
  $skip = 0
  if (Test-Path -LiteralPath $progressFile) { $skip = [int](Get-Content -LiteralPath $progressFile) }
  $n = 0
  foreach ($name in @($stage.scripts)) {
    $n++
    if ($n -le $skip) { continue }
    Say "ORB-SCRIPT-BEGIN $n $name"
    $ErrorActionPreference = 'Continue'
    Push-Location $work
    & powershell.exe -NoProfile -ExecutionPolicy Bypass -File (Join-Path $work $name) 2>&1 | ForEach-Object { Say ([string]$_) }
    $code = $LASTEXITCODE
    Pop-Location
    $ErrorActionPreference = 'Stop'
    if ($null -eq $code) { $code = 0 }
    Say "ORB-SCRIPT-END $n $code"
    if ($code -eq 3010 -and $stage.standalone) {
      Say "script $name asked for a reboot; the final shutdown serves as one"
      $code = 0
    }
    if ($code -eq 3010) {
      Set-Content -LiteralPath $progressFile -Value $n
      Say "script $name asked for a reboot; continuing after it"
      $script:rebooting = $true
      return $false
    }
    if ($code -ne 0) { throw "script $name exited with code $code" }
  }
  Remove-Item -LiteralPath $progressFile, $work -Recurse -Force -ErrorAction SilentlyContinue
  Say 'ORB-DONE provisioned'
  return $true
}

function Set-AdminPassword($stage) {
  if (-not $stage.password) { return }
  $secure = ConvertTo-SecureString -String $stage.password -AsPlainText -Force
  Set-LocalUser -Name $stage.user -Password $secure
  if ($stage.builtinAdmin) {
    $builtin = Get-LocalUser | Where-Object { $_.SID.Value -like '*-500' } | Select-Object -First 1
    if ($builtin) { Set-LocalUser -InputObject $builtin -Password $secure }
  }
  $stage.password = $null
}

function Invoke-Finalize($stage, [string]$media) {
  Say 'ORB-STAGE finalize'
  # Read before the clean-up: in dockur/windows the media is C:\OEM, which the clean-up removes.
  $sysprepXml = $null
  if ($stage.sysprep) { $sysprepXml = Get-Content -Raw -LiteralPath (Join-Path $media 'sysprep-unattend.xml') }
  Set-AdminPassword $stage
  Unregister-ScheduledTask -TaskName 'orb-stage' -Confirm:$false -ErrorAction SilentlyContinue
  Remove-BuildTraces
  Disable-Hibernation
  Get-ChildItem -LiteralPath "$env:windir\Temp" -Force -ErrorAction SilentlyContinue | Remove-Item -Recurse -Force -ErrorAction SilentlyContinue
  try {
    Optimize-Volume -DriveLetter C -ReTrim -ErrorAction Stop
    Say 'free space trimmed (Optimize-Volume -ReTrim)'
  } catch {
    Say ('trim failed (' + $_.Exception.Message + '); free space stays allocated in the image')
  }
  if ($stage.sysprep) {
    $answer = Join-Path "$env:windir\Temp" 'orb-sysprep.xml'
    Set-Content -LiteralPath $answer -Value $sysprepXml -Encoding UTF8 -NoNewline
    Remove-Item -LiteralPath "$env:windir\System32\Sysprep\Sysprep_succeeded.tag" -Force -ErrorAction SilentlyContinue
    Say 'running sysprep /generalize /oobe'
    $p = Start-Process -FilePath "$env:windir\System32\Sysprep\sysprep.exe" -ArgumentList '/generalize', '/oobe', '/quit', '/quiet', "/unattend:$answer" -PassThru -Wait
    if (-not (Test-Path -LiteralPath "$env:windir\System32\Sysprep\Sysprep_succeeded.tag")) {
      $err = Get-Content -LiteralPath "$env:windir\System32\Sysprep\Panther\setuperr.log" -Tail 20 -ErrorAction SilentlyContinue
      foreach ($l in $err) { Say $l }
      throw ('sysprep failed (exit ' + $p.ExitCode + '); see the lines above from setuperr.log')
    }
    # Sysprep keeps its own copy (Panther\unattend.xml, secret-free) for the clones' first boot.
    Remove-Item -LiteralPath $answer -Force -ErrorAction SilentlyContinue
    Remove-Item -LiteralPath $orb -Recurse -Force -ErrorAction SilentlyContinue
    Say 'ORB-DONE generalized'
  } else {
    Remove-Item -LiteralPath $orb -Recurse -Force -ErrorAction SilentlyContinue
    Say 'ORB-DONE finalized'
  }
}

function Register-StageTask {
  Copy-Item -LiteralPath $PSCommandPath -Destination (Join-Path $orb 'orb.ps1') -Force
  $arg = '-NoProfile -ExecutionPolicy Bypass -File "' + (Join-Path $orb 'orb.ps1') + '" -Mode stage'
  $action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arg
  $trigger = New-ScheduledTaskTrigger -AtStartup
  $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
  $settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit (New-TimeSpan -Hours 72) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
  Register-ScheduledTask -TaskName 'orb-stage' -Action $action -Trigger $trigger -Principal $principal -Settings $settings -Force | Out-Null
}

$shutdown = $true
$what = $Mode
try {
  if ($Mode -eq 'firstlogon') {
    # orb build: record the installed base and hand over to the startup task for later stages.
    # Standalone answer media (orb unattend): provision and finalize right here, in this logon.
    $build = Get-Content -Raw -LiteralPath (Join-Path $PSScriptRoot 'build.json') | ConvertFrom-Json
    Say 'ORB-STAGE install'
    Remove-AnswerFiles
    Disable-Hibernation
    if ($build.standalone) {
      $shutdown = [bool]$build.shutdown
      $what = 'provision'
      if (Invoke-Provision $build $PSScriptRoot) {
        $what = 'finalize'
        Invoke-Finalize $build $PSScriptRoot
      }
    } else {
      Register-StageTask
      Say 'ORB-DONE installed'
    }
  } else {
    $descriptor = Find-Media 'orb\stage.json' 60
    if (-not $descriptor) { $shutdown = $false; exit 0 }
    $media = Split-Path -Parent $descriptor
    $stage = Get-Content -Raw -LiteralPath $descriptor | ConvertFrom-Json
    $what = $stage.stage
    switch ($stage.stage) {
      'provision' { [void](Invoke-Provision $stage $media) }
      'finalize' { Invoke-Finalize $stage $media }
      default { throw ('unknown stage ' + $stage.stage) }
    }
  }
} catch {
  Say ('ORB-FAIL ' + $what + ': ' + $_.Exception.Message)
} finally {
  if ($port) { $port.Close() }
  if ($rebooting) { Restart-Computer -Force } elseif ($shutdown) { Stop-Computer -Force }
}
`;
