/**
 * The server side of the NBD wire format (the protocol document of the NetworkBlockDevice
 * project, doc/proto.md): constants, reply encoders and the parsers of the option payloads this
 * server accepts. Pure functions over buffers, so the connection code reads as the protocol's
 * steps and the encodings can be tested alone. All integers are big-endian.
 */

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags: the same two bits. */
export const FLAG_FIXED_NEWSTYLE = 1;
export const FLAG_NO_ZEROES = 2;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags. CAN_MULTI_CONN: read-only, so every connection sees the same bytes. */
export const TFLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  CAN_MULTI_CONN: 1 << 8,
} as const;

export const CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;
export const CMD_FLAG_REQ_ONE = 1 << 3;

export const REPLY_FLAG_DONE = 1;
export const REPLY_TYPE = { NONE: 0, OFFSET_DATA: 1, BLOCK_STATUS: 5, ERROR: 0x8001 } as const;

export const ERRNO = { EPERM: 1, EIO: 5, EINVAL: 22, ESHUTDOWN: 108 } as const;

/** base:allocation flags */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
export const BASE_ALLOCATION = 'base:allocation';

/** The largest read this server answers (qemu-nbd's limit too, and the block size it advertises). */
export const MAX_READ = 32 << 20;
/** The spec's bound on any string: export names, queries, error messages. */
export const MAX_STRING = 4096;

export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(type, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
}

/** An error reply with a message the client prints to its user. */
export function optionError(option: number, type: number, message: string): Buffer {
  return optionReply(option, type, Buffer.from(message.slice(0, 200), 'utf8'));
}

export function infoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(INFO.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function infoName(name: string): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(INFO.NAME, 0);
  return Buffer.concat([b, Buffer.from(name, 'utf8')]);
}

/** Minimum 1 (any alignment), preferred 4 KiB, maximum what we answer in one read. */
export function infoBlockSize(): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  b.writeUInt32BE(1, 2);
  b.writeUInt32BE(4096, 6);
  b.writeUInt32BE(MAX_READ, 10);
  return b;
}

/** The answer to NBD_OPT_EXPORT_NAME: no option-reply framing, just size and flags. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

export function serverEntry(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n.length, 0);
  return Buffer.concat([b, n]);
}

export function metaContext(id: number, name: string): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(id, 0);
  return Buffer.concat([b, Buffer.from(name, 'utf8')]);
}

export function simpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return b;
}

export function chunkHeader(cookie: Buffer, type: number, length: number, flags = REPLY_FLAG_DONE): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** Header and offset of an OFFSET_DATA chunk; the data itself follows it on the wire. */
export function offsetDataHeader(cookie: Buffer, offset: number, dataLength: number): Buffer {
  const h = chunkHeader(cookie, REPLY_TYPE.OFFSET_DATA, 8 + dataLength);
  const o = Buffer.alloc(8);
  o.writeBigUInt64BE(BigInt(offset), 0);
  return Buffer.concat([h, o]);
}

export function errorChunk(cookie: Buffer, errno: number, message: string): Buffer {
  const msg = Buffer.from(message.slice(0, 200), 'utf8');
  const p = Buffer.alloc(6);
  p.writeUInt32BE(errno, 0);
  p.writeUInt16BE(msg.length, 4);
  return Buffer.concat([chunkHeader(cookie, REPLY_TYPE.ERROR, 6 + msg.length), p, msg]);
}

export function blockStatusChunk(cookie: Buffer, contextId: number, descriptors: [number, number][]): Buffer {
  const p = Buffer.alloc(4 + 8 * descriptors.length);
  p.writeUInt32BE(contextId, 0);
  descriptors.forEach(([length, flags], i) => {
    p.writeUInt32BE(length, 4 + 8 * i);
    p.writeUInt32BE(flags, 8 + 8 * i);
  });
  return Buffer.concat([chunkHeader(cookie, REPLY_TYPE.BLOCK_STATUS, p.length), p]);
}

/** A length-prefixed string at `pos` (u32 length), or undefined when it overruns or is too long. */
function readString(data: Buffer, pos: number): { text: string; next: number } | undefined {
  if (pos + 4 > data.length) return undefined;
  const n = data.readUInt32BE(pos);
  if (n > MAX_STRING || pos + 4 + n > data.length) return undefined;
  return { text: data.toString('utf8', pos + 4, pos + 4 + n), next: pos + 4 + n };
}

/** NBD_OPT_GO / NBD_OPT_INFO: export name, then the information types the client asks for. */
export function parseGo(data: Buffer): { name: string; infos: number[] } | undefined {
  const s = readString(data, 0);
  if (!s || s.next + 2 > data.length) return undefined;
  const count = data.readUInt16BE(s.next);
  if (s.next + 2 + 2 * count !== data.length) return undefined;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(s.next + 2 + 2 * i));
  return { name: s.text, infos };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name, then the queries. */
export function parseMetaQuery(data: Buffer): { name: string; queries: string[] } | undefined {
  const s = readString(data, 0);
  if (!s || s.next + 4 > data.length) return undefined;
  const count = data.readUInt32BE(s.next);
  const queries: string[] = [];
  let pos = s.next + 4;
  for (let i = 0; i < count; i++) {
    const q = readString(data, pos);
    if (!q) return undefined;
    queries.push(q.text);
    pos = q.next;
  }
  return pos === data.length ? { name: s.text, queries } : undefined;
}

/**
 * Which queries name base:allocation. For a list, no query at all and the bare namespace `base:`
 * also match (the spec: an empty list asks for every context); for a set, only the full name.
 */
export function matchesAllocation(queries: string[], listing: boolean): boolean {
  if (listing && queries.length === 0) return true;
  return queries.some((q) => q === BASE_ALLOCATION || (listing && q === 'base:'));
}

/**
 * base:allocation descriptors for a request of `length` bytes from the source's extents: zero
 * lengths dropped, neighbours with the same flags merged, the total clipped to the request (the
 * spec forbids more), one descriptor when the client set REQ_ONE, and a bounded count. When the
 * extents say nothing usable the whole range is reported as data, which is always true.
 */
export function allocationDescriptors(
  extents: readonly { length: number; zero: boolean }[],
  length: number,
  reqOne: boolean,
  maxDescriptors = 1024,
): [number, number][] {
  const out: [number, number][] = [];
  let left = length;
  for (const e of extents) {
    if (left <= 0) break;
    if (!Number.isSafeInteger(e.length) || e.length <= 0) continue;
    const n = Math.min(e.length, left);
    const flags = e.zero ? STATE_HOLE | STATE_ZERO : 0;
    const last = out[out.length - 1];
    if (last && last[1] === flags) last[0] += n;
    else if (out.length < maxDescriptors) out.push([n, flags]);
    else break;
    left -= n;
  }
  if (out.length === 0) return [[length, 0]];
  return reqOne ? [out[0]!] : out;
}
