import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RunWriter } from '../../src/transfer/run-writer.js';

describe('RunWriter', () => {
  const file = (size: number) => {
    const p = join(mkdtempSync(join(tmpdir(), 'orb-rw-')), 'out');
    writeFileSync(p, Buffer.alloc(size));
    return p;
  };

  it('writes queued pieces to their offsets (40,000 bytes in two calls), clipped to the disk size', () => {
    const p = file(100_000);
    const buf = Buffer.alloc(200_000);
    for (let i = 0; i < buf.length; i++) buf[i] = i % 251;
    const lock = new Int32Array(new SharedArrayBuffer(4));
    const w = new RunWriter(p, 100_000, lock);
    w.add(0, 0, 40_000); // more than one 32 KiB call each
    w.add(40_000, 40_000, 40_000);
    w.add(90_000, 150_000, 20_000); // runs past the end: clipped to 10,000 bytes
    w.flush(buf);
    w.close();
    const got = readFileSync(p);
    expect(got.length).toBe(100_000);
    expect(got.subarray(0, 80_000).equals(buf.subarray(0, 80_000))).toBe(true);
    expect(got.subarray(80_000, 90_000).every((b) => b === 0)).toBe(true);
    expect(got.subarray(90_000).equals(buf.subarray(150_000, 160_000))).toBe(true);
    expect(Atomics.load(lock, 0)).toBe(0);
  });

  it('gives the turn back when a write fails, and forgets what it could not write', () => {
    const lock = new Int32Array(new SharedArrayBuffer(4));
    const w = new RunWriter(join(tmpdir(), 'orb-rw-missing', 'out'), 1000, lock);
    w.add(0, 0, 10);
    expect(() => w.flush(Buffer.alloc(10))).toThrow(/ENOENT/);
    expect(Atomics.load(lock, 0)).toBe(0);
    expect(() => w.flush(Buffer.alloc(10))).not.toThrow(); // nothing left queued
  });
});
