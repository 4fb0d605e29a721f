import { describe, expect, it } from 'vitest';
import {
  BlockRecorder,
  MAX_PROFILE_BLOCKS,
  MAX_PROFILE_BYTES,
  decodeBootProfile,
  encodeBootProfile,
} from '../../src/formats/boot-profile.js';

const disk = {
  virtualSize: 100 * 32768 + 512,
  blockSize: 32768,
  contentDigest: `orb2:sha256:${'ab'.repeat(32)}`,
};

describe('boot profile format', () => {
  it('round-trips blocks in read order (runs, backward jumps, the last partial block)', () => {
    const blocks = [0, 1, 2, 50, 51, 7, 100, 3, 99];
    const blob = encodeBootProfile({ ...disk, blocks });
    expect(decodeBootProfile(blob, disk)).toEqual({ ...disk, blocks });
    expect(blob.length).toBeLessThan(60 + 2 * blocks.length + 8);
    expect(decodeBootProfile(encodeBootProfile({ ...disk, blocks: [] }), disk).blocks).toEqual([]);
  });

  it('refuses a profile of another disk or another geometry', () => {
    const blob = encodeBootProfile({ ...disk, blocks: [1, 2] });
    expect(() =>
      decodeBootProfile(blob, { ...disk, contentDigest: `orb2:sha256:${'cd'.repeat(32)}` }),
    ).toThrow(/recorded on another disk/);
    expect(() => decodeBootProfile(blob, { ...disk, virtualSize: disk.virtualSize * 2 })).toThrow(/geometry/);
    expect(() => decodeBootProfile(blob, { ...disk, blockSize: 65536 })).toThrow(/geometry/);
  });

  it('refuses hostile bytes: out-of-range runs, repeats, lies in counts, truncation, trailing bytes, oversize', () => {
    // block 101 is past the end of a 101-block disk
    const out = encodeBootProfile({ ...disk, virtualSize: 200 * 32768, blocks: [5, 150] });
    expect(() => decodeBootProfile(out, disk)).toThrow(); // geometry first
    const big = { ...disk, virtualSize: 200 * 32768 };
    const far = encodeBootProfile({ ...big, blocks: [150] });
    far.writeBigUInt64LE(BigInt(disk.virtualSize), 8);
    expect(() => decodeBootProfile(far, disk)).toThrow(/outside the disk's 101 blocks/);

    const twice = encodeBootProfile({ ...disk, blocks: [4, 9, 4] });
    expect(() => decodeBootProfile(twice, disk)).toThrow(/block 4 appears twice/);

    const good = encodeBootProfile({ ...disk, blocks: [1, 2, 3, 10] });
    const lie = Buffer.from(good);
    lie.writeUInt32LE(3, 56); // declares 3 blocks, runs hold 4
    expect(() => decodeBootProfile(lie, disk)).toThrow(/more than the 3 blocks/);
    const huge = Buffer.from(good);
    huge.writeUInt32LE(MAX_PROFILE_BLOCKS + 1, 56);
    expect(() => decodeBootProfile(huge, disk)).toThrow(/at most/);
    const runs = Buffer.from(good);
    runs.writeUInt32LE(50, 52);
    expect(() => decodeBootProfile(runs, disk)).toThrow(/runs for|truncated/);
    expect(() => decodeBootProfile(good.subarray(0, good.length - 1), disk)).toThrow(/truncated/);
    expect(() => decodeBootProfile(Buffer.concat([good, Buffer.from([0])]), disk)).toThrow(
      /follow the last run/,
    );
    expect(() => decodeBootProfile(Buffer.alloc(MAX_PROFILE_BYTES + 1), disk)).toThrow(/at most/);
    expect(() =>
      decodeBootProfile(Buffer.from('not a profile at all, clearly not one, no magic here at all..'), disk),
    ).toThrow(/bad magic/);
    const endless = Buffer.concat([good.subarray(0, 60), Buffer.alloc(20, 0xff)]);
    endless.writeUInt32LE(1, 52);
    expect(() => decodeBootProfile(endless, disk)).toThrow(/too long/);
  });

  it('records first reads in order, skips what keep() refuses, and stops at its limit', () => {
    const r = new BlockRecorder(disk.virtualSize, disk.blockSize, (b) => b !== 7, 5);
    r.note(32768 * 3 + 100, 10); // block 3
    r.note(0, 32768 * 2); // blocks 0, 1
    r.note(32768 * 3, 1); // again: ignored
    r.note(32768 * 6, 32768 * 2 + 1); // 6, 7 (refused), 8
    expect(r.blocks).toEqual([3, 0, 1, 6, 8]);
    r.note(32768 * 20, 1);
    expect(r.full).toBe(true);
    expect(r.blocks).toHaveLength(5);
    const f = new BlockRecorder(disk.virtualSize, disk.blockSize);
    f.note(0, 1);
    f.freeze();
    f.note(32768 * 9, 1);
    expect(f.blocks).toEqual([0]);
  });
});
