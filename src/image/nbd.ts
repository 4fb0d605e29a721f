import { connect, type Socket } from 'node:net';
import { OrbError } from '../core/errors.js';

/**
 * A small NBD client (fixed-newstyle handshake, NBD_OPT_GO, simple replies, pipelined
 * NBD_CMD_READ) for reading the guest-visible content of qcow2/vhdx/vmdk/vdi/vpc images through
 * `qemu-nbd` on a unix socket. Why NBD and not a pipe from `qemu-img convert`/`dd`: random
 * access (we read only the data extents), several reads in flight, bytes land directly in our
 * buffers, and QEMU's own decoders (all formats, compressed clusters) do the work. See
 * docs/compression.md for the measurements.
 */
const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC_OPT = 0x0003e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const INFO_EXPORT = 0;
const CMD_READ = 0;
const CMD_DISC = 2;
/** qemu-nbd refuses requests above 32 MiB */
export const NBD_MAX_READ = 32 << 20;

interface Pending {
  target: Uint8Array;
  filled: number;
  resolve(): void;
  reject(err: Error): void;
}

export class NbdClient {
  size = 0;
  private rx: Buffer[] = [];
  private rxBytes = 0;
  private waiter: (() => void) | undefined;
  private nextHandle = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private current: Pending | undefined;
  private failed: Error | undefined;
  private transmission = false;

  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', (err) => this.fail(new OrbError('input', `NBD connection failed: ${err.message}`)));
    sock.on('close', () =>
      this.fail(new OrbError('input', 'the NBD server closed the connection (the image reader stopped)')),
    );
  }

  static async connect(socketPath: string, exportName = ''): Promise<NbdClient> {
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = connect(socketPath);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const c = new NbdClient(sock);
    await c.handshake(exportName);
    return c;
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    this.waiter?.();
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.current = undefined;
  }

  private onData(d: Buffer): void {
    if (!this.transmission) {
      this.rx.push(d);
      this.rxBytes += d.length;
      this.waiter?.();
      return;
    }
    let pos = 0;
    while (pos < d.length) {
      if (this.current) {
        const p = this.current;
        const n = Math.min(d.length - pos, p.target.length - p.filled);
        p.target.set(d.subarray(pos, pos + n), p.filled);
        p.filled += n;
        pos += n;
        if (p.filled === p.target.length) {
          this.current = undefined;
          p.resolve();
        }
        continue;
      }
      // reply header: 16 bytes, possibly split across packets
      const need = 16 - this.rxBytes;
      const take = Math.min(need, d.length - pos);
      this.rx.push(d.subarray(pos, pos + take));
      this.rxBytes += take;
      pos += take;
      if (this.rxBytes < 16) break;
      const hdr = Buffer.concat(this.rx, 16);
      this.rx = [];
      this.rxBytes = 0;
      if (hdr.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
        this.fail(new OrbError('internal', 'NBD protocol error: bad reply magic'));
        this.sock.destroy();
        return;
      }
      const error = hdr.readUInt32BE(4);
      const handle = hdr.readBigUInt64BE(8);
      const p = this.pending.get(handle);
      this.pending.delete(handle);
      if (!p) {
        this.fail(new OrbError('internal', 'NBD protocol error: reply for an unknown request'));
        this.sock.destroy();
        return;
      }
      if (error !== 0) {
        // qemu-nbd sends no payload after an error; the stream stays in step.
        p.reject(
          new OrbError(
            'input',
            `reading the image failed (NBD error ${error}${error === 5 ? ': I/O error, the image is damaged or truncated' : ''})`,
          ),
        );
        continue;
      }
      if (p.target.length === 0) p.resolve();
      else this.current = p;
    }
  }

  private async readExact(n: number): Promise<Buffer> {
    while (this.rxBytes < n) {
      if (this.failed) throw this.failed;
      await new Promise<void>((r) => (this.waiter = r));
      this.waiter = undefined;
    }
    const all = Buffer.concat(this.rx);
    this.rx = all.length > n ? [all.subarray(n)] : [];
    this.rxBytes = all.length - n;
    return all.subarray(0, n);
  }

  private async handshake(exportName: string): Promise<void> {
    const hello = await this.readExact(18);
    if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) {
      throw new OrbError('internal', 'NBD server does not speak the fixed-newstyle protocol');
    }
    const serverFlags = hello.readUInt16BE(16);
    if (!(serverFlags & FLAG_FIXED_NEWSTYLE))
      throw new OrbError('internal', 'NBD server lacks fixed-newstyle negotiation');
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
    const name = Buffer.from(exportName, 'utf8');
    const opt = Buffer.alloc(16 + 4 + name.length + 2);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(OPT_GO, 8);
    opt.writeUInt32BE(4 + name.length + 2, 12);
    opt.writeUInt32BE(name.length, 16);
    name.copy(opt, 20);
    opt.writeUInt16BE(0, 20 + name.length);
    this.sock.write(Buffer.concat([clientFlags, opt]));
    for (;;) {
      const h = await this.readExact(20);
      if (h.readBigUInt64BE(0) !== REPLY_MAGIC_OPT)
        throw new OrbError('internal', 'NBD protocol error in option reply');
      const type = h.readUInt32BE(12);
      const len = h.readUInt32BE(16);
      const data = len > 0 ? await this.readExact(len) : Buffer.alloc(0);
      if (type & 0x80000000) {
        throw new OrbError(
          'internal',
          `NBD server refused the export (${type & 0x7fffffff}): ${data.subarray(0).toString('utf8')}`,
        );
      }
      if (type === REP_INFO && data.length >= 12 && data.readUInt16BE(0) === INFO_EXPORT) {
        this.size = Number(data.readBigUInt64BE(2));
      }
      if (type === REP_ACK) break;
    }
    this.transmission = true;
    const rest = Buffer.concat(this.rx);
    this.rx = [];
    this.rxBytes = 0;
    if (rest.length) this.onData(rest);
  }

  /** Read `target.length` bytes at `offset` into `target` (at most NBD_MAX_READ). */
  read(offset: number, target: Uint8Array): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (target.length > NBD_MAX_READ) return Promise.reject(new OrbError('internal', 'NBD read too large'));
    const handle = this.nextHandle++;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(REQUEST_MAGIC, 0);
    req.writeUInt16BE(0, 4);
    req.writeUInt16BE(CMD_READ, 6);
    req.writeBigUInt64BE(handle, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(target.length, 24);
    return new Promise<void>((resolve, reject) => {
      this.pending.set(handle, { target, filled: 0, resolve, reject });
      this.sock.write(req);
    });
  }

  async close(): Promise<void> {
    if (!this.failed && this.transmission) {
      const req = Buffer.alloc(28);
      req.writeUInt32BE(REQUEST_MAGIC, 0);
      req.writeUInt16BE(CMD_DISC, 6);
      req.writeBigUInt64BE(this.nextHandle++, 8);
      this.sock.write(req);
    }
    this.failed ??= new OrbError('internal', 'NBD client closed');
    await new Promise<void>((resolve) => this.sock.end(() => resolve()));
    this.sock.destroy();
  }
}
