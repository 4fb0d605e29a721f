import { open, realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { OrbError } from '../core/errors.js';
import { parseHeader, type Header } from './headers.js';

/**
 * The one gate every user- or remote-supplied disk image passes before QEMU opens it (convert,
 * publish of a disk, smoke-test, the Linux build's cloud image). Disk formats can name other
 * files: a qcow2 backing file or external data file, VMDK extents and parents, `json:{...}`
 * names that are QEMU options, protocol names (`nbd://`, `http://`). QEMU opens those while it
 * opens the image, so an image from someone else could make us read, and then publish, a file of
 * this machine. Here the header is read by us (never QEMU's probe), the format is pinned, and an
 * image naming any other file is refused unless the user listed exactly that file; QEMU then
 * gets a `json:` name that spells out every node (driver, file, backing or none, data file).
 *
 * Formats read: raw, qcow2 (v2/v3), VMDK (monolithicSparse and streamOptimized; descriptor
 * files only when every extent is allowed), VHDX, VHD (vpc: fixed or dynamic), VDI (dynamic or
 * fixed). QEMU's vhdx, vpc and vdi drivers have no backing file support, so those cannot name
 * other files. Everything else (QED, LUKS, Parallels, VHD/VDI differencing, ...) is refused.
 */
export const READABLE_FORMATS = ['raw', 'qcow2', 'vmdk', 'vhdx', 'vpc', 'vdi'] as const;
export type ReadableFormat = (typeof READABLE_FORMATS)[number];

/** The flag (and action input) that lists files an image may name. */
export const ALLOW_FLAG = '--allow-external-file';

export interface VettedImage {
  /** absolute path of the image */
  path: string;
  format: ReadableFormat;
  /** the other files QEMU will read for this image (each one the user allowed), resolved */
  external: string[];
  /** blockdev options opening exactly this image and what it was allowed to name */
  options: Record<string, unknown>;
}

export interface VetOptions {
  /** files the image may name (from --allow-external-file); compared after resolving symlinks */
  allow?: readonly string[];
}

const HEAD_BYTES = 64 * 1024;
/** a chain longer than this is a loop or an attack, not a real image */
const MAX_DEPTH = 16;

/** The qemu-img / qemu-nbd / qemu-system file name for a vetted image: no probing, no surprises. */
export function qemuName(v: Pick<VettedImage, 'options'>): string {
  return `json:${JSON.stringify(v.options)}`;
}

/**
 * The name for `qemu-img info`, which opens images without their backing file (and then refuses
 * backing options): the same pinning minus the backing node. Data files stay pinned.
 */
export function qemuInfoName(v: Pick<VettedImage, 'options'>): string {
  const { backing, ...rest } = v.options;
  return qemuName({ options: backing === null ? v.options : rest });
}

/**
 * How QEMU opens an input: its vetted name, or for a file orb wrote itself (an output being
 * verified) its path with the format pinned and no backing file.
 */
export function qemuNameOf(info: { path: string; format: string; qemu?: string }): string {
  if (info.qemu) return info.qemu;
  if (info.format !== 'raw' && info.format !== 'qcow2')
    throw new OrbError('internal', `${info.path} (${info.format}) was not vetted before QEMU opened it`);
  return qemuName({
    options: {
      driver: info.format,
      file: fileNode(info.path),
      ...(info.format === 'qcow2' ? { backing: null } : {}),
    },
  });
}

function fileNode(path: string): Record<string, unknown> {
  // locking off: like `qemu-img -U`, read an image another process still holds; we only read.
  return { driver: 'file', filename: path, locking: 'off' };
}

/**
 * Attacker-chosen bytes shown in a message: printable ASCII only (no line breaks, so no forged
 * log lines or workflow commands, no terminal escapes), bounded and quoted.
 */
export function shownName(name: string): string {
  const clean = name.replace(/[^\x20-\x7e]/g, '?');
  return JSON.stringify(clean.length > 200 ? `${clean.slice(0, 200)}...` : clean);
}

function shellQuote(s: string): string {
  return /^[\w./@%+=-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A header too broken to judge: smoke-test words it as a corrupt disk. */
export class DamagedImage extends OrbError {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super('input', message, {
      hint: 'copy the image again from its source; if the copy was cut short, its end is missing',
    });
  }
}

function refuse(path: string, what: string, hint?: string): OrbError {
  return new OrbError('input', `${path}: ${what}`, hint === undefined ? {} : { hint });
}

export async function vetImage(path: string, o: VetOptions = {}): Promise<VettedImage> {
  const allowed = new Set<string>();
  for (const a of o.allow ?? []) {
    const real = await realpath(resolve(a)).catch((err: NodeJS.ErrnoException) => {
      throw new OrbError(
        'input',
        `${ALLOW_FLAG} ${a}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`,
      );
    });
    allowed.add(real);
  }
  const external: string[] = [];
  const top = await vetNode(resolve(path), undefined, { allowed, external, depth: 0, top: resolve(path) });
  return { path: resolve(path), format: top.format, external, options: top.options };
}

interface Walk {
  allowed: Set<string>;
  external: string[];
  depth: number;
  /** the image the user gave, for messages */
  top: string;
}

/** Opens the file once, reads its header and whatever else the parser asks for, and closes it. */
async function headerOf(path: string): Promise<Header> {
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new OrbError(
      'input',
      `cannot read ${path}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`,
    );
  });
  try {
    const st = await fh.stat();
    // A FIFO or character device would block or never end; only files and block devices are disks.
    if (!st.isFile() && !st.isBlockDevice()) throw refuse(path, 'is not a regular file or block device');
    const head = Buffer.alloc(HEAD_BYTES);
    const { bytesRead } = await fh.read(head, 0, HEAD_BYTES, 0);
    const readAt = async (at: number, n: number): Promise<Buffer> => {
      const b = Buffer.alloc(n);
      const r = await fh.read(b, 0, n, at);
      return b.subarray(0, r.bytesRead);
    };
    return await parseHeader(head.subarray(0, bytesRead), readAt).catch((err: unknown) => {
      if (err instanceof RangeError)
        throw new DamagedImage(`${path} is damaged: ${err.message}`, err.message);
      throw err;
    });
  } finally {
    await fh.close();
  }
}

async function vetNode(
  path: string,
  declared: string | undefined,
  w: Walk,
): Promise<{ format: ReadableFormat; options: Record<string, unknown> }> {
  if (w.depth > MAX_DEPTH) throw refuse(w.top, `its chain of files is deeper than ${MAX_DEPTH} (a loop?)`);
  let h = await headerOf(path);
  // A parent that declares its child raw is read raw: nothing in a raw file is interpreted.
  if (declared === 'raw') h = { format: 'raw' };
  if (h.format === 'refused') {
    const detail = h.detail === undefined ? '' : ` (${h.detail})`;
    throw new OrbError('input', `${path} is in format '${h.name}'${detail}, which orb does not read`, {
      hint: `orb reads ${READABLE_FORMATS.join(', ')} (VMDK as one sparse file, or flat extents that are allowed)`,
    });
  }
  if (h.format === 'damaged') {
    throw new DamagedImage(`${path} is damaged: its ${h.name} ${h.detail}`, `${h.name} ${h.detail}`);
  }
  if (declared !== undefined && declared !== h.format) {
    throw refuse(
      path,
      `is declared ${shownName(declared)} by the image naming it, but its header says ${h.format}`,
    );
  }
  switch (h.format) {
    case 'raw':
    case 'vhdx':
    case 'vpc':
    case 'vdi':
      return { format: h.format, options: { driver: h.format, file: fileNode(path) } };
    case 'qcow2': {
      if (h.encrypted) throw refuse(path, 'is encrypted; orb cannot read encrypted images');
      if (h.unknownFeatures !== 0n)
        throw refuse(path, `uses qcow2 features orb does not know (0x${h.unknownFeatures.toString(16)})`);
      const options: Record<string, unknown> = { driver: 'qcow2', file: fileNode(path) };
      if (h.dataFile !== undefined) {
        if (h.dataFile === '') throw refuse(path, 'needs an external data file but does not name one');
        options['data-file'] = fileNode(await named(path, h.dataFile, 'external data file', w));
      }
      if (h.backing !== undefined) {
        const fmt = h.backingFormat;
        const p = await named(path, h.backing, 'backing file', w);
        const sub = await vetNode(p, fmt === undefined || fmt === '' ? undefined : fmt, {
          ...w,
          depth: w.depth + 1,
        });
        options.backing = sub.options;
      } else options.backing = null;
      return { format: 'qcow2', options };
    }
    case 'vmdk': {
      const options: Record<string, unknown> = { driver: 'vmdk', file: fileNode(path) };
      if (h.parent !== undefined) {
        const p = await named(path, h.parent, 'parent (backing file)', w);
        options.backing = (await vetNode(p, undefined, { ...w, depth: w.depth + 1 })).options;
      } else options.backing = null;
      if (h.kind === 'descriptor') {
        if (h.extents.length === 0) throw refuse(path, 'is a VMDK descriptor without extents');
        for (const e of h.extents) {
          if (e.type === 'ZERO') continue;
          if (e.name === undefined)
            throw refuse(path, `has a ${shownName(e.type)} extent without a file name`);
          // Flat extents are plain bytes: nothing in them is interpreted, nothing else is named.
          if (e.type !== 'FLAT' && e.type !== 'VMFS') {
            throw refuse(
              path,
              `is a VMDK descriptor with a ${shownName(e.type)} extent ${shownName(e.name)}; orb reads only flat extents of a descriptor`,
              'convert it to one file first (qemu-img convert -O vmdk -o subformat=monolithicSparse), on a machine where its files belong',
            );
          }
          // QEMU resolves extent names itself (relative to the descriptor): we check the same name.
          await named(path, e.name, 'extent', w);
        }
      }
      return { format: 'vmdk', options };
    }
  }
}

/**
 * A file name found inside `image`: refused unless it resolves (as QEMU resolves it: relative to
 * the image's directory) to a file the user allowed. Returns the resolved real path.
 */
async function named(image: string, name: string, role: string, w: Walk): Promise<string> {
  const shown = shownName(name);
  const how = `if you trust this image and that file, allow exactly it: ${ALLOW_FLAG} PATH; or make the image self-contained first (qemu-img convert -O qcow2 IMAGE flat.qcow2) on a machine where that file belongs`;
  if (name.startsWith('json:')) {
    throw refuse(
      image,
      `names a ${role} ${shown}, which is a QEMU option string, not a file; orb refuses such images`,
    );
  }
  const slash = name.indexOf('/');
  const beforeSlash = slash < 0 ? name : name.slice(0, slash);
  if (beforeSlash.includes(':')) {
    throw refuse(
      image,
      `names a ${role} ${shown}, which QEMU would open as a protocol (network or device), not a file; orb refuses such images`,
    );
  }
  if (name === '' || name.includes('\0')) throw refuse(image, `names an empty or invalid ${role} ${shown}`);
  const resolved = isAbsolute(name) ? name : join(dirname(image), name);
  const real = await realpath(resolved).catch(() => undefined);
  if (real === undefined || !w.allowed.has(real)) {
    throw refuse(
      image,
      `names another file as its ${role}: ${shown}; orb does not read files an image names`,
      // the resolved path is shown only when it is plain text (it comes from the image)
      real === undefined || !/^[\x20-\x7e]{1,300}$/.test(resolved)
        ? how
        : how.replace('PATH', shellQuote(resolved)),
    );
  }
  if (!w.external.includes(real)) w.external.push(real);
  return real;
}
