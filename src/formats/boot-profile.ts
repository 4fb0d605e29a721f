import { ROOT_PREFIX } from './disk-index.js';

/**
 * A boot profile (issue 16): the blocks of a chunked v2 disk that a boot read, in the order of
 * their first read, so a later client fetches the boot's working set before anything else. It
 * belongs to exactly one disk (its orb2 content digest) and is published beside it as an OCI
 * referrer, so a reader treats it as hostile: every field is bounded and checked against the
 * disk it is about to be used for before a single block number is trusted.
 *
 * Binary layout, little-endian:
 *   0  8  magic "ORBBOOT1"
 *   8  8  virtual size (u64, < 2^53)
 *  16  4  block size (u32)
 *  20 32  content digest (the sha256 of the orb2 root)
 *  52  4  run count (u32)
 *  56  4  block count (u32): the sum of the run lengths
 *  60 ..  runs: zigzag uvarint (start - end of the previous run), uvarint (length - 1)
 * Runs are read-order runs of consecutive blocks; no block appears twice; nothing follows the
 * last run.
 */
export const BOOT_PROFILE_ARTIFACT = 'application/vnd.orb.boot-profile.v1';
/** at most this many blocks are recorded (32 GiB of 32 KiB blocks: far above any boot) */
export const MAX_PROFILE_BLOCKS = 1 << 20;
/** a profile of MAX_PROFILE_BLOCKS scattered blocks fits easily (each run <= 20 bytes) */
export const MAX_PROFILE_BYTES = 24 << 20;
const MAGIC = Buffer.from('ORBBOOT1', 'latin1');
const HEADER = 60;

export interface BootProfile {
  virtualSize: number;
  blockSize: number;
  /** orb2:sha256:<hex> of the disk the profile was recorded on */
  contentDigest: string;
  /** block numbers in the order of first read */
  blocks: number[];
}

/**
 * A malformed profile or a caller's mistake. This folder imports nothing of ours, so the serve
 * layer turns it into the user-facing error (src/serve/boot-profile.ts, asProfileError).
 */
export class BootProfileError extends Error {
  constructor(
    message: string,
    readonly internal = false,
  ) {
    super(message);
    this.name = 'BootProfileError';
  }
}

export function encodeBootProfile(p: BootProfile): Buffer {
  if (!p.contentDigest.startsWith(ROOT_PREFIX) || p.contentDigest.length !== ROOT_PREFIX.length + 64)
    throw new BootProfileError(`boot profile: ${p.contentDigest} is not an orb2 content digest`, true);
  if (p.blocks.length > MAX_PROFILE_BLOCKS)
    throw new BootProfileError(
      `boot profile: ${p.blocks.length} blocks (at most ${MAX_PROFILE_BLOCKS})`,
      true,
    );
  const runs: [number, number][] = [];
  for (const b of p.blocks) {
    const last = runs[runs.length - 1];
    if (last && b === last[0] + last[1]) last[1]++;
    else runs.push([b, 1]);
  }
  const body: number[] = [];
  let end = 0;
  for (const [start, len] of runs) {
    const delta = start - end;
    putVarint(body, delta >= 0 ? delta * 2 : -delta * 2 - 1);
    putVarint(body, len - 1);
    end = start + len;
  }
  const head = Buffer.alloc(HEADER);
  MAGIC.copy(head, 0);
  head.writeBigUInt64LE(BigInt(p.virtualSize), 8);
  head.writeUInt32LE(p.blockSize, 16);
  Buffer.from(p.contentDigest.slice(ROOT_PREFIX.length), 'hex').copy(head, 20);
  head.writeUInt32LE(runs.length, 52);
  head.writeUInt32LE(p.blocks.length, 56);
  return Buffer.concat([head, Buffer.from(body)]);
}

/** What the profile must match: the disk it is used for. */
export interface ProfileExpect {
  virtualSize: number;
  blockSize: number;
  contentDigest: string;
}

/**
 * Decodes a profile from a store, refusing (BootProfileError) anything that is not a well-formed
 * profile of exactly the `expect`ed disk: another disk's profile must never steer a fetch.
 */
export function decodeBootProfile(
  blob: Buffer,
  expect: ProfileExpect,
  display = 'boot profile',
): BootProfile {
  const fail = (why: string) => new BootProfileError(`${display}: ${why}`);
  if (blob.length > MAX_PROFILE_BYTES) throw fail(`${blob.length} bytes (at most ${MAX_PROFILE_BYTES})`);
  if (blob.length < HEADER || !blob.subarray(0, 8).equals(MAGIC))
    throw fail('not a boot profile (bad magic)');
  const size = blob.readBigUInt64LE(8);
  const bs = blob.readUInt32LE(16);
  const root = ROOT_PREFIX + blob.subarray(20, 52).toString('hex');
  if (root !== expect.contentDigest)
    throw fail(
      `recorded on another disk (${root.slice(0, 28)}…, this one is ${expect.contentDigest.slice(0, 28)}…)`,
    );
  if (size !== BigInt(expect.virtualSize) || bs !== expect.blockSize)
    throw fail(
      `its geometry (${size} bytes, ${bs}-byte blocks) is not the disk's (${expect.virtualSize}, ${expect.blockSize})`,
    );
  const runCount = blob.readUInt32LE(52);
  const total = blob.readUInt32LE(56);
  if (total > MAX_PROFILE_BLOCKS) throw fail(`${total} blocks (at most ${MAX_PROFILE_BLOCKS})`);
  if (runCount > total) throw fail(`${runCount} runs for ${total} blocks`);
  const blockCount = Math.ceil(expect.virtualSize / expect.blockSize);
  // Bits over the disk's blocks (bounded by the trusted geometry): a block twice is refused.
  const seen = new Uint8Array(Math.ceil(blockCount / 8));
  const blocks: number[] = [];
  const at = { pos: HEADER };
  let end = 0;
  for (let r = 0; r < runCount; r++) {
    const z = getVarint(blob, at, fail);
    const len = getVarint(blob, at, fail) + 1;
    const start = end + (z % 2 === 0 ? z / 2 : -(z + 1) / 2);
    if (start < 0 || start + len > blockCount)
      throw fail(
        `run ${r} (blocks ${start}..${start + len - 1}) lies outside the disk's ${blockCount} blocks`,
      );
    if (blocks.length + len > total) throw fail(`its runs hold more than the ${total} blocks it declares`);
    for (let b = start; b < start + len; b++) {
      if (seen[b >> 3]! & (1 << (b & 7))) throw fail(`block ${b} appears twice`);
      seen[b >> 3]! |= 1 << (b & 7);
      blocks.push(b);
    }
    end = start + len;
  }
  if (blocks.length !== total) throw fail(`its runs hold ${blocks.length} blocks, it declares ${total}`);
  if (at.pos !== blob.length) throw fail(`${blob.length - at.pos} bytes follow the last run`);
  return { virtualSize: expect.virtualSize, blockSize: bs, contentDigest: root, blocks };
}

function putVarint(out: number[], v: number): void {
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

/** An unsigned varint of at most 7 bytes (< 2^49: block numbers are far below). */
function getVarint(buf: Buffer, at: { pos: number }, fail: (why: string) => Error): number {
  let v = 0;
  let mul = 1;
  for (let i = 0; i < 7; i++) {
    if (at.pos >= buf.length) throw fail('truncated');
    const b = buf[at.pos++]!;
    v += (b & 0x7f) * mul;
    if (!(b & 0x80)) return v;
    mul *= 0x80;
  }
  throw fail('a number is too long');
}

/**
 * Records the blocks a boot reads, in the order of first read, at most `limit` of them (then it
 * stops recording and says so through `full`). `keep` leaves out blocks not worth prefetching
 * (zero blocks cost nothing).
 */
export class BlockRecorder {
  readonly blocks: number[] = [];
  full = false;
  private frozen = false;
  private readonly seen: Uint8Array;

  constructor(
    readonly virtualSize: number,
    readonly blockSize: number,
    private readonly keep: (block: number) => boolean = () => true,
    private readonly limit = MAX_PROFILE_BLOCKS,
  ) {
    this.seen = new Uint8Array(Math.ceil(Math.ceil(virtualSize / blockSize) / 8));
  }

  /** Notes a read of [offset, offset + length). */
  note(offset: number, length: number): void {
    if (this.frozen || length <= 0) return;
    const first = Math.floor(offset / this.blockSize);
    const end = Math.min(Math.ceil((offset + length) / this.blockSize), this.seen.length * 8);
    for (let b = first; b < end; b++) {
      if (this.seen[b >> 3]! & (1 << (b & 7))) continue;
      this.seen[b >> 3]! |= 1 << (b & 7);
      if (!this.keep(b)) continue;
      if (this.blocks.length >= this.limit) {
        this.full = true;
        this.frozen = true;
        return;
      }
      this.blocks.push(b);
    }
  }

  /** Stops recording (the boot is over: what comes after is not the boot's working set). */
  freeze(): void {
    this.frozen = true;
  }
}
