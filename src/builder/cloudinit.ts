import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { OrbError } from '../core/errors.js';
import { requireTool, run } from '../core/proc.js';
import { stagedScriptName } from '../windows/media.js';
import { makeDataIso } from './iso.js';

/**
 * cloud-init NoCloud seed for Linux cloud images: an ISO labelled "cidata" holding user-data and
 * meta-data. One boot does everything: create the admin user, install packages, run the
 * provisioning scripts in order (their output on the serial console between orb's markers, see
 * protocol.ts), clean up, optionally generalize, trim, and power off.
 */
export interface SeedOptions {
  hostname: string;
  adminUser: string;
  adminPassword: string;
  sshAuthorizedKeys?: readonly string[];
  packages?: readonly string[];
  /** shell scripts, run in order as root */
  scripts?: readonly string[];
  /** cloud-init clean + new machine-id on next boot: every clone gets its own identity */
  generalize: boolean;
  /** IANA time zone */
  timeZone?: string;
  /** how long cloud-init waits before it powers off anyway after a failure (seconds) */
  powerOffTimeout?: number;
}

export const RUNNER_PATH = '/var/lib/orb/run.sh';
const SCRIPTS_DIR = '/var/lib/orb/scripts';
/** Runs after cloud-init has exited, right before the power-off (see buildUserData). */
export const AFTER_EXIT_PATH = '/var/lib/orb-after-exit.sh';

/**
 * cloud-init keeps writing after runcmd (semaphores, instance data, its log), so what the runner
 * cleaned comes back. power_state's condition command runs once cloud-init's process is gone and
 * before the power-off: there the clean-up is final. It always answers "yes, power off".
 */
export function afterExitScript(generalize: boolean): string {
  return `#!/bin/sh
rm -f ${AFTER_EXIT_PATH}
# Overwrite before removing: cloud-init's copies of user-data (the password hash) would otherwise
# stay in freed blocks; shred writes zeros in place, so no free-space pass has to find them.
find /var/lib/cloud -type f 2>/dev/null | while IFS= read -r f; do shred -n 0 -z "$f" 2>/dev/null; done
sync
rm -f /var/lib/cloud/instance/user-data.txt* /var/lib/cloud/instances/*/user-data.txt*
${
  generalize
    ? `cloud-init clean --logs --seed >/dev/null 2>&1 || cloud-init clean --logs >/dev/null 2>&1
rm -rf /var/lib/cloud/instances/* /var/lib/cloud/instance /var/lib/cloud/data/*
[ -f /etc/machine-id ] && : > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*`
    : ''
}
find /var/log -type f -name 'cloud-init*' 2>/dev/null | while IFS= read -r f; do : > "$f"; done
# cloud-init rewrites its copies of user-data (with the password hash) during the boot, and
# discard cannot reach a freed 4 KiB block inside a disk-format cluster still in use: zeros over
# all free space do (the build's disk turns zero writes into holes, so the output stays small).
# ext4 does not reuse blocks freed in a journal transaction that has not committed yet: commit
# the deletions above first, or the zero fill walks around exactly the blocks that held them.
sync
# ext4 keeps some clusters (reserved_clusters, up to 4096) that not even root may allocate: let
# the zero fill have them too, so no freed block escapes it.
for f in /sys/fs/ext4/*/reserved_clusters; do [ -w "$f" ] && echo 0 > "$f"; done 2>/dev/null
dd if=/dev/zero of=/var/tmp/orb-zero bs=1M 2>/dev/null
sync
# delayed allocation can refuse the last megabyte while 4 KiB blocks are still free
dd if=/dev/zero of=/var/tmp/orb-zero-tail bs=4k 2>/dev/null
sync
rm -f /var/tmp/orb-zero /var/tmp/orb-zero-tail
command -v fstrim >/dev/null 2>&1 && fstrim -a >/dev/null 2>&1
sync
exit 0
`;
}

/** sha512-crypt hash for cloud-init's `passwd` (the password goes to openssl on stdin, never argv). */
export async function hashPassword(password: string): Promise<string> {
  const openssl = requireTool('openssl', 'openssl');
  const res = await run(openssl, ['passwd', '-6', '-stdin'], { input: password + '\n', check: true });
  const hash = res.stdout.trim();
  if (!hash.startsWith('$6$'))
    throw new OrbError('environment', 'openssl did not produce a sha512-crypt hash');
  return hash;
}

/**
 * The script cloud-init runs (runcmd). POSIX sh, so the busybox test guest runs it too. It writes
 * to the serial port directly: the console may be elsewhere (graphics) and cloud-init's own
 * output goes to a log file we remove.
 */
export function runnerScript(names: readonly string[], generalize: boolean): string {
  const list = names.map((n) => `'${n.replace(/'/g, '')}'`).join(' ');
  return `#!/bin/sh
# orb: provisioning and clean-up, run once by cloud-init.
out=/dev/console
for t in /dev/ttyS0 /dev/ttyAMA0; do [ -c "$t" ] && { out=$t; break; }; done
mkdir -p /var/log 2>/dev/null
say() { echo "$*" > "$out"; echo "$*" >> /var/log/orb-provision.log 2>/dev/null; }
fail() { say "ORB-FAIL $*"; exit 1; }
say "ORB-STAGE provision"
n=0
for s in ${list}; do
  n=$((n + 1))
  say "ORB-SCRIPT-BEGIN $n $s"
  # Output streams live; the exit code travels through a file because a pipe loses it in POSIX sh.
  { ( cd ${SCRIPTS_DIR} && sh "./$s" ) 2>&1; echo "$?" > /tmp/orb-code; } | while IFS= read -r line; do say "$line"; done
  code=$(cat /tmp/orb-code 2>/dev/null || echo 255)
  rm -f /tmp/orb-code
  say "ORB-SCRIPT-END $n $code"
  [ "$code" = 0 ] || fail "script $s exited with code $code"
done
say "ORB-DONE provisioned"
say "ORB-STAGE finalize"
# user-data (with the password hash) is cached by cloud-init; the seed ISO is gone after the build.
rm -rf /var/lib/orb /var/log/orb-provision.log
rm -f /var/lib/cloud/instance/user-data.txt* /var/lib/cloud/instances/*/user-data.txt* /var/log/cloud-init*.log
${
  generalize
    ? `if command -v cloud-init >/dev/null 2>&1; then cloud-init clean --logs --seed >/dev/null 2>&1 || cloud-init clean --logs >/dev/null 2>&1; fi
[ -f /etc/machine-id ] && : > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
# Logs of the build boot describe the build machine, not the clones: kept as empty files.
find /var/log -type f 2>/dev/null | while IFS= read -r f; do : > "$f"; done`
    : ':'
}
command -v fstrim >/dev/null 2>&1 && fstrim -a >/dev/null 2>&1
sync
say "ORB-DONE ${generalize ? 'generalized' : 'finalized'}"
`;
}

export async function buildUserData(o: SeedOptions): Promise<string> {
  const names = (o.scripts ?? []).map((s, i) => stagedScriptName(i, s));
  const files = [];
  for (const [i, s] of (o.scripts ?? []).entries()) {
    files.push({
      path: `${SCRIPTS_DIR}/${names[i]}`,
      permissions: '0755',
      encoding: 'b64',
      content: (await readFile(s)).toString('base64'),
    });
  }
  files.push({
    path: AFTER_EXIT_PATH,
    permissions: '0755',
    encoding: 'b64',
    content: Buffer.from(afterExitScript(o.generalize)).toString('base64'),
  });
  files.push({
    path: RUNNER_PATH,
    permissions: '0755',
    encoding: 'b64',
    content: Buffer.from(runnerScript(names, o.generalize)).toString('base64'),
  });
  const config: Record<string, unknown> = {
    hostname: o.hostname,
    preserve_hostname: false,
    users: [
      {
        name: o.adminUser,
        gecos: 'orb admin',
        groups: ['sudo', 'wheel', 'adm'].join(','),
        sudo: 'ALL=(ALL) ALL',
        shell: '/bin/bash',
        lock_passwd: false,
        passwd: await hashPassword(o.adminPassword),
        ...(o.sshAuthorizedKeys?.length ? { ssh_authorized_keys: [...o.sshAuthorizedKeys] } : {}),
      },
    ],
    ssh_pwauth: !o.sshAuthorizedKeys?.length,
    write_files: files,
    runcmd: [['/bin/sh', RUNNER_PATH]],
    power_state: {
      mode: 'poweroff',
      condition: ['/bin/sh', AFTER_EXIT_PATH],
      timeout: o.powerOffTimeout ?? 60,
      message: 'orb: build stage finished',
    },
  };
  if (o.timeZone) config.timezone = o.timeZone;
  if (o.packages?.length) {
    config.package_update = true;
    config.packages = [...o.packages];
  }
  return '#cloud-config\n' + stringify(config, { lineWidth: 0 });
}

/** Writes the seed ISO; returns its path. The directory it was built from is left to the caller. */
export async function writeSeedIso(
  workDir: string,
  isoPath: string,
  o: SeedOptions,
  signal?: AbortSignal,
): Promise<void> {
  const dir = join(workDir, 'cidata');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'user-data'), await buildUserData(o), { mode: 0o600 });
  // A fresh instance-id makes cloud-init treat every build boot as a first boot.
  const meta = stringify({
    'instance-id': `orb-${randomBytes(6).toString('hex')}`,
    'local-hostname': o.hostname,
  });
  await writeFile(join(dir, 'meta-data'), meta);
  await makeDataIso(dir, isoPath, { label: 'cidata', signal });
}
