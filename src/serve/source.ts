/**
 * What an NBD export serves: a fixed-size run of bytes read on demand. The server knows nothing
 * of where they come from (a local file, blocks fetched over the network and checked first).
 */
export interface ExportSource {
  /** Bytes in the export; fixed for the server's life. */
  readonly size: number;
  /**
   * Exactly `length` bytes at `offset` (the server checks both against `size` first). May be slow
   * (a network fetch). A rejection fails this one request with EIO; the connection stays up.
   * `signal` aborts when the client goes away or the server closes.
   */
  read(offset: number, length: number, signal: AbortSignal): Promise<Buffer>;
  /**
   * Allocation from `offset` on, in order: runs of bytes that read as zero (`zero: true`, reported
   * as holes) or may not. May cover less than `length` (the client asks again for the rest) or
   * more (clipped). Without it every range is reported as data.
   */
  status?(offset: number, length: number, signal: AbortSignal): Promise<{ length: number; zero: boolean }[]>;
}

/** Counters a caller can show (how much a boot read, how many clients came). */
export interface ServeStats {
  /** Clients connected now, the most at once, and all since the start. */
  connections: number;
  peakConnections: number;
  totalConnections: number;
  /** Requests received, bytes of data sent in read replies, requests answered EIO. */
  requests: number;
  bytesServed: number;
  errors: number;
}
