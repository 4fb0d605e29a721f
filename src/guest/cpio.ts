/**
 * A cpio "newc" (SVR4, no CRC) archive writer: the format the Linux kernel unpacks as initramfs.
 * Written here so building a test guest needs no root (no mknod, no chown: owners and device
 * nodes are just numbers in the archive).
 */

export type CpioEntry =
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev' | 'blockdev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

/** One header + name + data, each padded to 4 bytes as newc requires. */
function record(
  ino: number,
  mode: number,
  name: string,
  data: Buffer,
  rdev: [number, number] = [0, 0],
  nlink = 1,
): Buffer[] {
  const nameBuf = Buffer.from(name + '\0', 'utf8');
  const header =
    '070701' +
    hex8(ino) +
    hex8(mode) +
    hex8(0) + // uid
    hex8(0) + // gid
    hex8(nlink) +
    hex8(0) + // mtime: fixed, so archives (and their cache keys) are reproducible
    hex8(data.length) +
    hex8(0) + // dev major
    hex8(0) + // dev minor
    hex8(rdev[0]) +
    hex8(rdev[1]) +
    hex8(nameBuf.length) +
    hex8(0); // check
  const head = Buffer.from(header, 'ascii');
  return [head, nameBuf, pad4(head.length + nameBuf.length), data, pad4(data.length)];
}

/**
 * Serialises entries in the given order (parents must come before children; the kernel does not
 * create missing directories). Paths are stored without the leading slash.
 */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 721;
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    if (!name) continue;
    switch (e.type) {
      case 'file':
        parts.push(...record(ino++, S_IFREG | (e.mode ?? 0o644), name, e.data));
        break;
      case 'dir':
        parts.push(...record(ino++, S_IFDIR | (e.mode ?? 0o755), name, Buffer.alloc(0), [0, 0], 2));
        break;
      case 'symlink':
        parts.push(...record(ino++, S_IFLNK | 0o777, name, Buffer.from(e.target, 'utf8')));
        break;
      case 'chardev':
      case 'blockdev':
        parts.push(
          ...record(
            ino++,
            (e.type === 'chardev' ? S_IFCHR : S_IFBLK) | (e.mode ?? 0o600),
            name,
            Buffer.alloc(0),
            [e.major, e.minor],
          ),
        );
        break;
    }
  }
  parts.push(...record(0, 0, 'TRAILER!!!', Buffer.alloc(0), [0, 0], 1));
  return Buffer.concat(parts);
}

/** Parses a newc archive (used by tests to check the writer against GNU cpio's view). */
export function readCpio(
  buf: Buffer,
): { name: string; mode: number; data: Buffer; rdev: [number, number] }[] {
  const out: { name: string; mode: number; data: Buffer; rdev: [number, number] }[] = [];
  let off = 0;
  for (;;) {
    const magic = buf.toString('ascii', off, off + 6);
    if (magic !== '070701') throw new Error(`bad cpio magic at ${off}`);
    const field = (i: number): number =>
      parseInt(buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const rdev: [number, number] = [field(9), field(10)];
    const nameSize = field(11);
    const nameStart = off + 110;
    const name = buf.toString('utf8', nameStart, nameStart + nameSize - 1);
    let dataStart = nameStart + nameSize;
    dataStart += (4 - (dataStart % 4)) % 4;
    const data = buf.subarray(dataStart, dataStart + size);
    off = dataStart + size;
    off += (4 - (off % 4)) % 4;
    if (name === 'TRAILER!!!') return out;
    out.push({ name, mode, data, rdev });
  }
}
