/**
 * Finds a 32-byte digest among n digests (one Buffer, 32 bytes each) without a Map of strings:
 * keys are the digest's first 41 bits with the item number in the low 23 bits, sorted natively
 * (8 bytes per item; 64 MiB at the format's 2^23-entry limit), then confirmed against the full
 * digest.
 */
const ITEM_BITS = 23n;
const ITEM_MASK = (1n << ITEM_BITS) - 1n;

export class DigestLookup {
  private readonly keys: BigUint64Array;

  constructor(
    private readonly digests: Buffer,
    readonly count = digests.length / 32,
  ) {
    if (count > Number(ITEM_MASK) + 1) throw new Error(`digest lookup: ${count} items is above 2^23`);
    this.keys = new BigUint64Array(count);
    for (let i = 0; i < count; i++)
      this.keys[i] = ((digests.readBigUInt64BE(i * 32) >> ITEM_BITS) << ITEM_BITS) | BigInt(i);
    this.keys.sort();
  }

  /** The item number of `digest`, or -1. */
  find(digest: Uint8Array): number {
    const d = Buffer.from(digest.buffer, digest.byteOffset, 32);
    const prefix = (d.readBigUInt64BE(0) >> ITEM_BITS) << ITEM_BITS;
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.keys[mid]! < prefix) lo = mid + 1;
      else hi = mid;
    }
    for (let k = lo; k < this.count && (this.keys[k]! & ~ITEM_MASK) === prefix; k++) {
      const i = Number(this.keys[k]! & ITEM_MASK);
      if (this.digests.compare(d, 0, 32, i * 32, i * 32 + 32) === 0) return i;
    }
    return -1;
  }
}
