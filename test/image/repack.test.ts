import { describe, expect, it } from 'vitest';
import { IndexBuilder } from '../../src/formats/disk-index.js';
import { LAYER_REPACK, decideRepack, keepsFrame } from '../../src/image/chunked/repack.js';

const digest = (i: number) => Buffer.alloc(32, i + 1);

/** A base whose pack p has live frames of `live[p]` bytes out of 1000. */
function base(live: number[]) {
  const ib = new IndexBuilder(1 << 30);
  let block = 0;
  live.forEach((bytes, p) => {
    ib.addPack({ digest: 'sha256:' + p.toString(16).padStart(64, '0'), size: 1000 });
    const f = ib.addFrame(p, 0, bytes, 1);
    ib.addEntry(block, f, 0, digest(block));
    block++;
  });
  return ib.finish();
}

describe('repack policy', () => {
  it('keeps packs at least half live, rewrites the others', () => {
    const b = base([1000, 500, 499, 10]);
    const d = decideRepack(b);
    expect([...d.rewrite]).toEqual([2, 3]);
    expect(d.full).toBe(false);
    expect(d.reason).toMatch(/2 base pack\(s\).*50%|2 base pack\(s\)/);
    expect([0, 1, 2, 3].map((f) => keepsFrame(b, d, f))).toEqual([true, true, false, false]);
  });
  it('nothing to do on a fresh base', () => {
    expect(decideRepack(base([900, 1000])).reason).toBeUndefined();
  });
  it('starts over when the base lists too many packs, or when asked', () => {
    const many = base(Array.from({ length: LAYER_REPACK + 1 }, () => 1000));
    expect(decideRepack(many).full).toBe(true);
    expect(decideRepack(many).reason).toMatch(/more than 400/);
    const d = decideRepack(base([1000]), true);
    expect(d.full && !keepsFrame(base([1000]), d, 0)).toBe(true);
  });
});
