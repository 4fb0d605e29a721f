import type { Socket } from 'node:net';
import { OrbError } from '../core/errors.js';
import { redact, type Logger } from '../core/log.js';
import * as P from './nbd-protocol.js';
import { ConnectionClosed, SocketReader } from './socket-reader.js';
import type { ExportSource, ServeStats } from './source.js';

/** What every connection of one server shares. */
export interface ConnectionContext {
  source: ExportSource;
  exportName: string;
  log: Logger;
  /** Logs a warning the first time this exact text is seen (a failing store fails many reads). */
  warnOnce(message: string): void;
  isClosing(): boolean;
  stats: ServeStats;
}

/**
 * Bounds on what one client can make us hold. Option payloads: the largest legal one is a few
 * 4 KiB strings. In flight: QEMU keeps at most 16 requests outstanding per connection, libnbd
 * 64; past these we stop reading requests until replies go out, so memory stays at about
 * MAX_IN_FLIGHT_BYTES plus MAX_REPLY_BACKLOG per client whatever it sends.
 */
const MAX_OPTION_LENGTH = 64 << 10;
const MAX_OPTIONS = 256;
const HANDSHAKE_TIMEOUT_MS = 30_000;
const MAX_IN_FLIGHT = 64;
const MAX_IN_FLIGHT_BYTES = 128 << 20;
const MAX_REPLY_BACKLOG = 64 << 20;
/** The id we give base:allocation when a client selects it (any value is allowed). */
const ALLOCATION_CONTEXT_ID = 1;
const TRANSMISSION_FLAGS =
  P.TFLAG.HAS_FLAGS | P.TFLAG.READ_ONLY | P.TFLAG.SEND_FLUSH | P.TFLAG.CAN_MULTI_CONN;

/** A name a client sent, fit for a log line: bounded, quoted, control characters escaped. */
const shown = (name: string): string => JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}...` : name);

/** The client broke the protocol: we hang up (the spec allows a hard disconnect then). */
class ProtocolError extends Error {}

/** One client: the fixed-newstyle handshake, then requests served concurrently until it leaves. */
export class NbdConnection {
  private readonly reader: SocketReader;
  private readonly abort = new AbortController();
  private structured = false;
  private allocation = false;
  private inFlight = 0;
  private inFlightBytes = 0;
  private wake: (() => void) | undefined;
  /** Settles when the session is over and the socket closed. */
  readonly done: Promise<void>;

  constructor(
    private readonly sock: Socket,
    private readonly ctx: ConnectionContext,
  ) {
    this.reader = new SocketReader(sock);
    // Socket errors (a client reset) end the session through 'close'; nothing to report.
    sock.on('error', () => {});
    const closed = new Promise<void>((resolve) =>
      sock.on('close', () => {
        this.abort.abort();
        this.notify();
        resolve();
      }),
    );
    sock.on('drain', () => this.notify());
    // Settled only once the socket is gone, so the server counts (and close() ends) it till then.
    this.done = this.run().finally(() => closed);
  }

  /** Hangs up now: pending source reads are aborted and their replies dropped. */
  destroy(): void {
    this.sock.destroy();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async run(): Promise<void> {
    let graceful = false;
    try {
      if (await this.handshake()) await this.transmission();
      graceful = true;
    } catch (err) {
      if (err instanceof ProtocolError) this.ctx.warnOnce(`NBD client dropped: ${err.message}`);
      else if (!(err instanceof ConnectionClosed)) throw err;
    } finally {
      this.abort.abort();
      if (graceful && !this.sock.destroyed) {
        // Flush the last replies, then close; a client that never closes its side is cut off.
        this.sock.end();
        setTimeout(() => this.sock.destroy(), 2000).unref();
      } else this.sock.destroy();
    }
  }

  private send(...bufs: Buffer[]): void {
    if (this.sock.destroyed || this.sock.writableEnded) return;
    // One reply's parts back to back: writes of other replies cannot come between them, since
    // they are queued synchronously here, and cork makes them one segment.
    this.sock.cork();
    for (const b of bufs) this.sock.write(b);
    this.sock.uncork();
  }

  private knows(name: string): boolean {
    return name === this.ctx.exportName || name === '';
  }

  /** True when the client went on to transmission, false when it ended the session cleanly. */
  private async handshake(): Promise<boolean> {
    const timer = setTimeout(() => {
      this.ctx.warnOnce('an NBD client did not finish its handshake in 30 s: dropped');
      this.sock.destroy();
    }, HANDSHAKE_TIMEOUT_MS);
    try {
      const hello = Buffer.alloc(18);
      hello.writeBigUInt64BE(P.NBDMAGIC, 0);
      hello.writeBigUInt64BE(P.IHAVEOPT, 8);
      hello.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
      this.send(hello);
      const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
      if (clientFlags & ~(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES))
        throw new ProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
      const noZeroes = (clientFlags & P.FLAG_NO_ZEROES) !== 0;
      for (let n = 0; n < MAX_OPTIONS; n++) {
        const h = await this.reader.read(16);
        if (h.readBigUInt64BE(0) !== P.IHAVEOPT) throw new ProtocolError('bad option magic');
        const opt = h.readUInt32BE(8);
        const len = h.readUInt32BE(12);
        if (len > MAX_OPTION_LENGTH)
          throw new ProtocolError(`option ${opt} carries ${len} bytes (at most ${MAX_OPTION_LENGTH})`);
        const data = await this.reader.read(len);
        if (this.ctx.isClosing() && opt !== P.OPT.ABORT) {
          this.send(P.optionError(opt, P.REP.ERR_SHUTDOWN, 'the server is shutting down'));
          continue;
        }
        const next = this.option(opt, data, noZeroes);
        if (next !== 'more') return next === 'transmit';
      }
      throw new ProtocolError(`more than ${MAX_OPTIONS} options`);
    } finally {
      clearTimeout(timer);
    }
  }

  private option(opt: number, data: Buffer, noZeroes: boolean): 'more' | 'transmit' | 'end' {
    const { exportName, source } = this.ctx;
    const invalid = (why: string): 'more' => {
      this.send(P.optionError(opt, P.REP.ERR_INVALID, why));
      return 'more';
    };
    const unknown = (name: string): 'more' => {
      this.send(
        P.optionError(
          opt,
          P.REP.ERR_UNKNOWN,
          `no export ${shown(name)} (this server has ${shown(exportName)})`,
        ),
      );
      return 'more';
    };
    switch (opt) {
      case P.OPT.EXPORT_NAME: {
        const name = data.toString('utf8');
        // No way to refuse this option but hanging up (the spec says so).
        if (data.length > P.MAX_STRING || !this.knows(name))
          throw new ProtocolError(`asked for an unknown export ${shown(name)}`);
        this.send(P.exportNameReply(source.size, TRANSMISSION_FLAGS, noZeroes));
        return 'transmit';
      }
      case P.OPT.GO:
      case P.OPT.INFO: {
        const req = P.parseGo(data);
        if (!req) return invalid('malformed export request');
        if (!this.knows(req.name)) return unknown(req.name);
        this.send(P.optionReply(opt, P.REP.INFO, P.infoExport(source.size, TRANSMISSION_FLAGS)));
        if (req.infos.includes(P.INFO.NAME))
          this.send(P.optionReply(opt, P.REP.INFO, P.infoName(exportName)));
        this.send(P.optionReply(opt, P.REP.INFO, P.infoBlockSize()));
        this.send(P.optionReply(opt, P.REP.ACK));
        return opt === P.OPT.GO ? 'transmit' : 'more';
      }
      case P.OPT.LIST:
        if (data.length !== 0) return invalid('NBD_OPT_LIST takes no data');
        this.send(P.optionReply(opt, P.REP.SERVER, P.serverEntry(exportName)), P.optionReply(opt, P.REP.ACK));
        return 'more';
      case P.OPT.ABORT:
        this.send(P.optionReply(opt, P.REP.ACK));
        return 'end';
      case P.OPT.STRUCTURED_REPLY:
        if (data.length !== 0) return invalid('NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structured = true;
        this.send(P.optionReply(opt, P.REP.ACK));
        return 'more';
      case P.OPT.LIST_META_CONTEXT:
      case P.OPT.SET_META_CONTEXT: {
        if (!this.structured) return invalid('negotiate structured replies first');
        const req = P.parseMetaQuery(data);
        if (!req) return invalid('malformed metadata context query');
        if (!this.knows(req.name)) return unknown(req.name);
        const listing = opt === P.OPT.LIST_META_CONTEXT;
        const match = P.matchesAllocation(req.queries, listing);
        if (!listing) this.allocation = match;
        if (match)
          this.send(
            P.optionReply(
              opt,
              P.REP.META_CONTEXT,
              P.metaContext(listing ? 0 : ALLOCATION_CONTEXT_ID, P.BASE_ALLOCATION),
            ),
          );
        this.send(P.optionReply(opt, P.REP.ACK));
        return 'more';
      }
      default:
        this.send(P.optionError(opt, P.REP.ERR_UNSUP, `option ${opt} is not supported`));
        return 'more';
    }
  }

  /** Waits until the client may send another request without growing what we hold. */
  private async capacity(): Promise<void> {
    while (
      this.inFlight >= MAX_IN_FLIGHT ||
      this.inFlightBytes >= MAX_IN_FLIGHT_BYTES ||
      this.sock.writableLength > MAX_REPLY_BACKLOG
    ) {
      if (this.sock.destroyed) throw new ConnectionClosed();
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  private async transmission(): Promise<void> {
    for (;;) {
      await this.capacity();
      if (await this.reader.atEnd()) return; // the client hung up without NBD_CMD_DISC
      const h = await this.reader.read(28);
      if (h.readUInt32BE(0) !== P.REQUEST_MAGIC) throw new ProtocolError('bad request magic');
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const cookie = Buffer.from(h.subarray(8, 16));
      const offset = h.readBigUInt64BE(16);
      const length = h.readUInt32BE(24);
      this.ctx.stats.requests++;
      switch (type) {
        case P.CMD.READ:
          this.read(cookie, offset, length);
          break;
        case P.CMD.BLOCK_STATUS:
          this.blockStatus(cookie, offset, length, flags);
          break;
        case P.CMD.WRITE:
          // Its payload follows; read past it to stay in step, unless it is absurd.
          if (length > P.MAX_READ) throw new ProtocolError(`a write of ${length} bytes`);
          await this.reader.skip(length);
          this.fail(cookie, P.ERRNO.EPERM, 'the export is read-only');
          break;
        case P.CMD.TRIM:
        case P.CMD.WRITE_ZEROES:
          this.fail(cookie, P.ERRNO.EPERM, 'the export is read-only');
          break;
        case P.CMD.FLUSH:
          this.send(P.simpleReply(cookie, 0)); // nothing is ever written
          break;
        case P.CMD.DISC:
          while (this.inFlight > 0 && !this.sock.destroyed) await new Promise<void>((r) => (this.wake = r));
          return;
        default:
          this.fail(cookie, P.ERRNO.EINVAL, `command ${type} is not supported`);
      }
    }
  }

  private fail(cookie: Buffer, errno: number, message: string): void {
    this.send(this.structured ? P.errorChunk(cookie, errno, message) : P.simpleReply(cookie, errno));
  }

  /** The request's offset as a number when [offset, offset+length) lies inside the export. */
  private inside(offset: bigint, length: number): number | undefined {
    return offset + BigInt(length) <= BigInt(this.ctx.source.size) ? Number(offset) : undefined;
  }

  /** Runs one request's work concurrently with the others; a failure answers EIO to it alone. */
  private track(cookie: Buffer, bytes: number, work: (signal: AbortSignal) => Promise<void>): void {
    const signal = this.abort.signal;
    this.inFlight++;
    this.inFlightBytes += bytes;
    work(signal)
      .catch((err: unknown) => {
        if (signal.aborted) return;
        this.ctx.stats.errors++;
        const message = err instanceof Error ? err.message : String(err);
        this.ctx.warnOnce(`an NBD client got an I/O error: ${message}`);
        // the client prints it: redacted here since it does not pass through our logger
        this.fail(cookie, P.ERRNO.EIO, redact(message));
      })
      .finally(() => {
        this.inFlight--;
        this.inFlightBytes -= bytes;
        this.notify();
      });
  }

  private read(cookie: Buffer, offset: bigint, length: number): void {
    if (length === 0 || length > P.MAX_READ)
      return this.fail(cookie, P.ERRNO.EINVAL, `reads are 1 byte to ${P.MAX_READ} bytes`);
    const at = this.inside(offset, length);
    if (at === undefined) return this.fail(cookie, P.ERRNO.EINVAL, 'read beyond the end of the export');
    this.track(cookie, length, async (signal) => {
      const data = await this.ctx.source.read(at, length, signal);
      if (!Buffer.isBuffer(data) || data.length !== length)
        throw new OrbError(
          'internal',
          `the export source returned ${data?.length} bytes for a read of ${length}`,
        );
      if (signal.aborted) return;
      if (this.structured) this.send(P.offsetDataHeader(cookie, at, length), data);
      else this.send(P.simpleReply(cookie, 0), data);
      this.ctx.stats.bytesServed += length;
    });
  }

  private blockStatus(cookie: Buffer, offset: bigint, length: number, flags: number): void {
    if (!this.structured || !this.allocation)
      return this.fail(cookie, P.ERRNO.EINVAL, 'base:allocation was not negotiated');
    const at = length === 0 ? undefined : this.inside(offset, length);
    if (at === undefined) return this.fail(cookie, P.ERRNO.EINVAL, 'status beyond the end of the export');
    this.track(cookie, 0, async (signal) => {
      const extents = this.ctx.source.status ? await this.ctx.source.status(at, length, signal) : [];
      if (signal.aborted) return;
      const reqOne = (flags & P.CMD_FLAG_REQ_ONE) !== 0;
      this.send(
        P.blockStatusChunk(cookie, ALLOCATION_CONTEXT_ID, P.allocationDescriptors(extents, length, reqOne)),
      );
    });
  }
}
