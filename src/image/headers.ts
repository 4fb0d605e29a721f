/**
 * What a disk image's own header says it is and which other files it names, read by us from its
 * first bytes. Why not `qemu-img info`: probing lets a file choose how QEMU reads it, and opening
 * an image already opens the files its header names (a qcow2 external data file, VMDK extents),
 * so the decision must be taken before QEMU sees the file. Pure parsing: no file is opened here.
 */

/** Reads `length` bytes at `offset` of the image (short at its end). */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export interface VmdkExtent {
  access: string;
  sectors: number;
  type: string;
  /** the file name as written in the descriptor (absent for ZERO extents) */
  name?: string;
  offset: number;
}

export type Header =
  | { format: 'raw' }
  | { format: 'vhdx' | 'vpc' | 'vdi' }
  | {
      format: 'qcow2';
      backing?: string;
      backingFormat?: string;
      /** set when the incompatible "external data file" bit is: the name ('' when none is stored) */
      dataFile?: string;
      encrypted: boolean;
      /** incompatible feature bits orb (and QEMU 7) do not know */
      unknownFeatures: bigint;
    }
  | { format: 'vmdk'; kind: 'sparse'; parent?: string }
  | { format: 'vmdk'; kind: 'descriptor'; createType?: string; parent?: string; extents: VmdkExtent[] }
  /** recognised, but not a format orb reads (or a variant of one that needs other files) */
  | { format: 'refused'; name: string; detail?: string }
  /** a format orb reads, with a header too damaged to judge */
  | { format: 'damaged'; name: string; detail: string };

const QCOW2_EXT_BACKING_FORMAT = 0xe2792aca;
const QCOW2_EXT_DATA_FILE = 0x44415441;
/** dirty, corrupt, external data file, compression type, extended L2 */
const QCOW2_KNOWN_INCOMPAT = 0x1fn;
const QCOW2_INCOMPAT_DATA_FILE = 0x4n;
/** QEMU's limit for a qcow2 backing file name */
const QCOW2_MAX_BACKING_NAME = 1023;
/** QEMU reads a VMDK descriptor from here in a sparse file, whatever the header says */
const VMDK_SPARSE_DESC_AT = 0x200;
/** and this much of it (DESC_SIZE in QEMU's vmdk driver) */
const VMDK_DESC_BYTES = 20 * 512;
/** a descriptor file larger than this is not a descriptor (QEMU's limit is 16 MiB; real ones are < 2 KiB) */
export const VMDK_MAX_DESCRIPTOR = 1 << 20;

function startsWith(head: Buffer, magic: string, at = 0): boolean {
  return head.length >= at + magic.length && head.toString('latin1', at, at + magic.length) === magic;
}

function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.toString('utf8', 0, nul < 0 ? buf.length : nul);
}

function safeNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`${what} out of range`);
  return Number(v);
}

/**
 * Decides the format from `head` (the first 64 KiB or the whole file if shorter), as QEMU's
 * probes would, but for every format orb reads also extracts the names of other files.
 * Anything not recognised is raw: read as raw, no header can make it name a file.
 */
export async function parseHeader(head: Buffer, readAt: ReadAt): Promise<Header> {
  if (startsWith(head, 'QFI\xfb')) return parseQcow2(head, readAt);
  if (startsWith(head, 'KDMV')) return parseVmdkSparse(head, readAt);
  if (startsWith(head, 'COWD')) return { format: 'refused', name: 'vmdk', detail: 'version 3, COWD' };
  if (startsWith(head, 'vhdxfile')) return { format: 'vhdx' };
  if (startsWith(head, 'conectix')) {
    // VHD footer copy at offset 0 (dynamic disks); type 2 fixed, 3 dynamic, 4 differencing
    const type = head.length >= 64 ? head.readUInt32BE(60) : 0;
    if (type === 2 || type === 3) return { format: 'vpc' };
    return {
      format: 'refused',
      name: 'vpc',
      detail: type === 4 ? 'a differencing disk, which needs its parent' : `disk type ${type}`,
    };
  }
  if (head.length >= 0x50 && head.readUInt32LE(0x40) === 0xbeda107f) {
    // VDI image types: 1 normal (dynamic), 2 fixed, 3 undo, 4 differencing
    const type = head.readUInt32LE(0x4c);
    if (type === 1 || type === 2) return { format: 'vdi' };
    return { format: 'refused', name: 'vdi', detail: `image type ${type}, undo or differencing` };
  }
  if (startsWith(head, 'QED\0')) return { format: 'refused', name: 'qed' };
  if (startsWith(head, 'LUKS\xba\xbe')) return { format: 'refused', name: 'luks', detail: 'encrypted' };
  if (startsWith(head, 'WithoutFreeSpace') || startsWith(head, 'WithouFreSpacExt'))
    return { format: 'refused', name: 'parallels' };
  if (startsWith(head, 'Bochs Virtual HD Image')) return { format: 'refused', name: 'bochs' };
  if (startsWith(head, '#!/bin/sh\n#V2.0 Format')) return { format: 'refused', name: 'cloop' };
  if (looksLikeVmdkDescriptor(head)) return parseVmdkDescriptor(head.toString('utf8'));
  return { format: 'raw' };
}

async function parseQcow2(head: Buffer, readAt: ReadAt): Promise<Header> {
  if (head.length < 72) return { format: 'damaged', name: 'qcow2', detail: 'header too short' };
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3)
    return { format: 'refused', name: 'qcow2', detail: `version ${version}` };
  const backingOffset = safeNumber(head.readBigUInt64BE(8), 'backing file offset');
  const backingSize = head.readUInt32BE(16);
  const clusterBits = head.readUInt32BE(20);
  const encrypted = head.readUInt32BE(32) !== 0;
  let incompat = 0n;
  let extStart = 72;
  if (version === 3) {
    if (head.length < 104) return { format: 'damaged', name: 'qcow2', detail: 'header too short' };
    incompat = head.readBigUInt64BE(72);
    extStart = head.readUInt32BE(100);
  }
  const h: Header & { format: 'qcow2' } = {
    format: 'qcow2',
    encrypted,
    unknownFeatures: incompat & ~QCOW2_KNOWN_INCOMPAT,
  };
  // Extensions run to the backing file name, or to the end of the first cluster (as in QEMU).
  const clusterSize = clusterBits >= 9 && clusterBits <= 21 ? 2 ** clusterBits : 65536;
  const extEnd = backingOffset > 0 ? Math.min(backingOffset, clusterSize) : clusterSize;
  const area = extEnd <= head.length ? head : await readAt(0, extEnd);
  let dataFileName: string | undefined;
  for (let off = extStart, n = 0; off + 8 <= Math.min(extEnd, area.length) && n < 256; n++) {
    const type = area.readUInt32BE(off);
    const len = area.readUInt32BE(off + 4);
    if (type === 0) break;
    const data = area.subarray(off + 8, Math.min(off + 8 + len, area.length));
    if (type === QCOW2_EXT_BACKING_FORMAT) h.backingFormat = cString(data);
    if (type === QCOW2_EXT_DATA_FILE) dataFileName = cString(data);
    off += 8 + Math.ceil(len / 8) * 8;
  }
  if (incompat & QCOW2_INCOMPAT_DATA_FILE) h.dataFile = dataFileName ?? '';
  if (backingOffset > 0 && backingSize > 0) {
    // Longer than QEMU accepts: still a name, shown cut (QEMU would refuse to open it).
    const name = await readAt(backingOffset, Math.min(backingSize, QCOW2_MAX_BACKING_NAME + 1));
    h.backing = name.toString('utf8');
  }
  return h;
}

async function parseVmdkSparse(head: Buffer, readAt: ReadAt): Promise<Header> {
  if (head.length < 44) return { format: 'damaged', name: 'vmdk', detail: 'header too short' };
  const capacity = head.readBigUInt64LE(12);
  const descSectors = head.readBigUInt64LE(28);
  const descCount = head.readBigUInt64LE(36);
  if (capacity === 0n && descSectors !== 0n) {
    // QEMU then reads the embedded descriptor as a descriptor file: its extents are other files.
    const at = safeNumber(descSectors * 512n, 'descriptor offset');
    const len = Math.min(safeNumber(descCount * 512n, 'descriptor size'), VMDK_MAX_DESCRIPTOR);
    return parseVmdkDescriptor(cString(await readAt(at, len)));
  }
  // QEMU looks for a parent (backing file) in the bytes at 0x200, and we also in the declared
  // descriptor: a name in either is refused.
  const fixed = cString(await readAt(VMDK_SPARSE_DESC_AT, VMDK_DESC_BYTES));
  let parent = parentHint(fixed);
  if (parent === undefined && descSectors !== 0n && descCount !== 0n) {
    const at = safeNumber(descSectors * 512n, 'descriptor offset');
    const len = Math.min(safeNumber(descCount * 512n, 'descriptor size'), VMDK_MAX_DESCRIPTOR);
    parent = parentHint(cString(await readAt(at, len)));
  }
  return parent === undefined
    ? { format: 'vmdk', kind: 'sparse' }
    : { format: 'vmdk', kind: 'sparse', parent };
}

/** QEMU's own test: after comment and blank lines, a `version=N` line. */
function looksLikeVmdkDescriptor(head: Buffer): boolean {
  const text = head.toString('latin1', 0, Math.min(head.length, 4096));
  for (const line of text.split('\n')) {
    const l = line.replace(/\r$/, '');
    if (l.startsWith('#') || l.trim() === '') continue;
    return /^version=[123]$/.test(l);
  }
  return false;
}

/** QEMU takes the first occurrence of `parentFileNameHint`, wherever it is. */
function parentHint(desc: string): string | undefined {
  const at = desc.indexOf('parentFileNameHint');
  if (at < 0) return undefined;
  const m = /^parentFileNameHint\s*=\s*"([^"]*)"/.exec(desc.slice(at));
  // An occurrence QEMU would still act on, but not in the usual form: report it as written.
  return m ? m[1]! : desc.slice(at, at + 120).split('\n')[0]!;
}

export function parseVmdkDescriptor(desc: string): Header {
  const extents: VmdkExtent[] = [];
  let createType: string | undefined;
  for (const raw of desc.split('\n')) {
    const line = raw.trim();
    const ct = /^createType\s*=\s*"([^"]*)"/.exec(line);
    if (ct) createType = ct[1];
    const m = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)")?(?:\s+(\d+))?/.exec(line);
    if (m) {
      const e: VmdkExtent = { access: m[1]!, sectors: Number(m[2]), type: m[3]!, offset: Number(m[5] ?? 0) };
      if (m[4] !== undefined) e.name = m[4];
      extents.push(e);
    }
  }
  const parent = parentHint(desc);
  return {
    format: 'vmdk',
    kind: 'descriptor',
    ...(createType !== undefined ? { createType } : {}),
    ...(parent !== undefined ? { parent } : {}),
    extents,
  };
}
