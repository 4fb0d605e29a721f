/**
 * A stand-in for a Linux cloud image: a small bootable disk (BIOS and UEFI) whose init plays
 * cloud-init's NoCloud datasource. It finds the seed CD (user-data + meta-data), reports the
 * hostname and users it was given, writes the `write_files` entries (base64, as orb emits them),
 * runs the `runcmd` script and powers off as `power_state` asks. Not a YAML parser: it reads the
 * layout orb's seed writer produces, which is what the test checks.
 */
import { buildBootDisk, buildInitramfs } from './guests.js';
import { guestPrelude, storageModules } from './installer-iso.js';

const CLOUD_MAIN = `
echo "ORB-GUEST: cloud image booted, disk $target"
seed=$(mount_media user-data) || { echo "ORB-GUEST: no NoCloud seed"; while :; do sleep 3600; done; }
[ -f "$seed/meta-data" ] || echo "ORB-GUEST: seed without meta-data"
# NoCloud finds its seed by the volume label: read it from the ISO 9660 primary volume descriptor.
label=$(for d in /dev/sr*; do dd if="$d" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' '; echo; done | grep -x cidata)
echo "ORB-GUEST: NoCloud seed found (label=$label)"
host=$(sed -n 's/^local-hostname: *//p' "$seed/meta-data")
echo "ORB-GUEST: hostname=$host"
user=$(sed -n 's/^ *- name: *//p' "$seed/user-data" | head -1)
grep -q '^ *passwd: *"\\{0,1\\}\\$6\\$' "$seed/user-data" && echo "ORB-GUEST: user=$user with a sha512-crypt password"
# write_files: "- path: X" ... "content: BASE64" pairs
awk '/^ *- path: /{p=$3} /^ *content: /{print p, $2}' "$seed/user-data" | while read -r p c; do
  mkdir -p "$(dirname "$p")"
  echo "$c" | base64 -d > "$p"
  chmod 755 "$p"
done
runner=$(grep -A2 '^runcmd:' "$seed/user-data" | grep -o '/var/lib/orb/run.sh' | head -1)
[ -n "$runner" ] && sh "$runner"
grep -q 'mode: poweroff' "$seed/user-data" && { sync; poweroff -f; }
while :; do sleep 3600; done
`;

const APPEND = 'console=tty0 console=ttyS0,115200 loglevel=4';

/** The test cloud image (raw, 40 MiB, cached). Boot it with a seed ISO built by orb. */
export async function buildCloudImage(): Promise<string> {
  const modules = storageModules();
  const initrd = await buildInitramfs({ init: guestPrelude(modules) + CLOUD_MAIN, modules });
  return buildBootDisk({ initrd, append: APPEND, sizeMiB: 40, label: 'ORBCLOUD' });
}
