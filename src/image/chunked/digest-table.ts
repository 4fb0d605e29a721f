/**
 * Digest -> id lookups for deduplication (docs/chunked-format-v2.md, "Memory"): an open-addressing
 * table of 32-bit ids keyed by the digest's first bytes and confirmed against the full digest,
 * which the caller already stores (the index's digest array). A Map keyed by hex strings would
 * cost ~150 bytes per block; this costs 8-16 (2M blocks of a 60 GB disk: ~32 MiB).
 */
export class DigestTable {
  private ids: Uint32Array;
  private mask: number;
  private used = 0;

  /** `digestOf(id)`: the 32-byte digest the id stands for (a view is fine). */
  constructor(
    private readonly digestOf: (id: number) => Uint8Array,
    expected = 1024,
  ) {
    let cap = 1024;
    while (cap < expected * 2) cap *= 2;
    this.ids = new Uint32Array(cap);
    this.mask = cap - 1;
  }

  get size(): number {
    return this.used;
  }

  private static home(d: Uint8Array): number {
    // sha256 output is uniform: its first four bytes are as good a hash as any
    return (d[0]! | (d[1]! << 8) | (d[2]! << 16) | (d[3]! << 24)) >>> 0;
  }

  private static same(a: Uint8Array, b: Uint8Array): boolean {
    for (let i = 0; i < 32; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  /** The id of `digest`, or -1. */
  get(digest: Uint8Array): number {
    for (let i = DigestTable.home(digest) & this.mask; ; i = (i + 1) & this.mask) {
      const v = this.ids[i]!;
      if (v === 0) return -1;
      if (DigestTable.same(this.digestOf(v - 1), digest)) return v - 1;
    }
  }

  /** Adds `id` under its digest unless that digest is present (the first id wins). */
  add(id: number): void {
    if ((this.used + 1) * 2 > this.ids.length) this.grow();
    if (this.place(this.ids, this.mask, id)) this.used++;
  }

  private place(ids: Uint32Array, mask: number, id: number): boolean {
    const d = this.digestOf(id);
    for (let i = DigestTable.home(d) & mask; ; i = (i + 1) & mask) {
      const v = ids[i]!;
      if (v === 0) {
        ids[i] = id + 1;
        return true;
      }
      if (DigestTable.same(this.digestOf(v - 1), d)) return false;
    }
  }

  private grow(): void {
    const old = this.ids;
    this.ids = new Uint32Array(old.length * 2);
    this.mask = this.ids.length - 1;
    for (const v of old) if (v !== 0) this.place(this.ids, this.mask, v - 1);
  }
}

/** 32-byte digests appended in pages (no copy on growth). */
export class DigestPages {
  private pages: Buffer[] = [];
  private n = 0;
  get count(): number {
    return this.n;
  }
  push(d: Uint8Array): number {
    const i = this.n++;
    if ((i & 0xffff) === 0) this.pages.push(Buffer.allocUnsafe(32 << 16));
    this.pages[i >> 16]!.set(d.subarray(0, 32), (i & 0xffff) * 32);
    return i;
  }
  get(i: number): Buffer {
    const off = (i & 0xffff) * 32;
    return this.pages[i >> 16]!.subarray(off, off + 32);
  }
}
