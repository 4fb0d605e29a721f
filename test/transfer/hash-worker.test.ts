import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createSegmentHasher } from '../../src/transfer/hash-worker.js';
import { OrderedHasher } from '../../src/transfer/hasher.js';

const dir = mkdtempSync(join(tmpdir(), 'orb-hash-worker-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the ordered hash worker (a TypeScript module, not code in a string)', () => {
  const data = Buffer.from('x'.repeat(3000));
  const path = join(dir, 'f');
  writeFileSync(path, Buffer.concat([data, Buffer.alloc(5000), data]));
  const expected =
    'sha256:' +
    createHash('sha256')
      .update(Buffer.concat([data, Buffer.alloc(5000), data]))
      .digest('hex');

  it('hashes file segments and zero gaps in order', () => {
    const step = createSegmentHasher(path);
    expect(step({ type: 'file', offset: 0, length: 3000 })).toBeUndefined();
    expect(step({ type: 'zeros', length: 5000 })).toBeUndefined();
    expect(step({ type: 'file', offset: 8000, length: 3000 })).toBeUndefined();
    expect(step({ type: 'end' })).toEqual({ digest: expected });
  });

  it('reports a file that ends early instead of throwing in the thread', () => {
    const step = createSegmentHasher(path);
    expect(step({ type: 'file', offset: 10_000, length: 5000 })).toEqual({ error: 'file ended at 11000' });
  });

  it('runs as a worker thread behind OrderedHasher', async () => {
    const h = new OrderedHasher(path, [
      { offset: 0, length: 3000, zero: false },
      { offset: 3000, length: 5000, zero: true },
      { offset: 8000, length: 3000, zero: false },
    ]);
    h.markDone(2);
    h.markDone(0);
    expect(await h.finish()).toBe(expected);
  });
});
