import { chmod, link, lstat, mkdtemp, rm, unlink } from 'node:fs/promises';
import { connect, createServer, isIPv4, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { NbdConnection, type ConnectionContext } from './nbd-connection.js';
import { MAX_STRING } from './nbd-protocol.js';
import type { ExportSource, ServeStats } from './source.js';

export type { ExportSource, ServeStats } from './source.js';

/**
 * A read-only NBD server (fixed newstyle, structured replies, base:allocation) exporting one
 * ExportSource, for QEMU, qemu-img/qemu-io and libnbd clients. Generic over the source: `orb serve`
 * puts blocks fetched on demand behind it, tests a file. Listens on a Unix socket (the default:
 * only this user can connect) or on a 127.0.0.0/8 TCP port, never beyond this machine.
 */
export interface NbdServerOptions {
  source: ExportSource;
  /** The name clients ask for; the empty name (the default export of nbd+unix:///) works too. */
  exportName: string;
  /** Path of the Unix socket to create (mode 0600); its folder must exist. */
  socket?: string;
  /** Or a loopback TCP address; port 0 picks a free one (see `address`). */
  listen?: { host: string; port: number };
  log: Logger;
  /** Aborting it closes the server, as close() does. */
  signal?: AbortSignal;
  /** Clients served at once; more are refused (default 64). */
  maxClients?: number;
}

export type NbdAddress = { socket: string } | { host: string; port: number };

export interface NbdServer {
  readonly address: NbdAddress;
  /** The NBD URI clients take (`nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME`). */
  readonly uri: string;
  readonly stats: Readonly<ServeStats>;
  /** Ends every connection, stops listening and removes the socket; settles within 2 s. */
  close(): Promise<void>;
}

/** The longest Unix socket path Linux takes (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;
const CLOSE_DEADLINE_MS = 2000;
/** Distinct warnings remembered; past this a failing source could make the set grow forever. */
const MAX_REMEMBERED_WARNINGS = 1000;

export async function startNbdServer(opts: NbdServerOptions): Promise<NbdServer> {
  const { source, exportName, log } = opts;
  if (!Number.isSafeInteger(source.size) || source.size < 0)
    throw new OrbError('internal', `NBD export size ${source.size} is not a byte count`);
  if (Buffer.byteLength(exportName) > MAX_STRING || exportName.includes('\0'))
    throw new UsageError(`NBD export name too long or holding a NUL: "${exportName.slice(0, 40)}"`);
  if (!!opts.socket === !!opts.listen)
    throw new UsageError('give the NBD server either a socket path or a TCP address');
  if (opts.listen) checkLoopback(opts.listen);
  if (opts.signal?.aborted) throw new OrbError('interrupted', 'interrupted before the NBD server started');

  const stats: ServeStats = {
    connections: 0,
    peakConnections: 0,
    totalConnections: 0,
    requests: 0,
    bytesServed: 0,
    errors: 0,
  };
  const warned = new Set<string>();
  let closing = false;
  const ctx: ConnectionContext = {
    source,
    exportName,
    log,
    stats,
    isClosing: () => closing,
    warnOnce(message) {
      if (warned.has(message) || warned.size > MAX_REMEMBERED_WARNINGS) return;
      warned.add(message);
      log.warn(
        warned.size > MAX_REMEMBERED_WARNINGS
          ? `${message} (${MAX_REMEMBERED_WARNINGS} distinct NBD warnings so far: no more are shown)`
          : message,
      );
    },
  };
  const conns = new Set<NbdConnection>();
  const maxClients = opts.maxClients ?? 64;
  const server = createServer({ noDelay: true }, (sock: Socket) => {
    if (closing || conns.size >= maxClients) {
      if (!closing) ctx.warnOnce(`refused an NBD client: ${maxClients} are connected already`);
      sock.destroy();
      return;
    }
    const conn = new NbdConnection(sock, ctx);
    conns.add(conn);
    stats.connections++;
    stats.totalConnections++;
    stats.peakConnections = Math.max(stats.peakConnections, stats.connections);
    conn.done
      .catch((err: unknown) =>
        log.error(`NBD connection failed: ${err instanceof Error ? err.message : String(err)}`),
      )
      .finally(() => {
        conns.delete(conn);
        stats.connections--;
      });
  });

  let address: NbdAddress;
  let uri: string;
  let socketIno: number | undefined;
  const name = encodeURIComponent(exportName);
  if (opts.socket) {
    socketIno = await listenUnix(server, opts.socket);
    address = { socket: opts.socket };
    uri = `nbd+unix:///${name}?socket=${opts.socket}`;
  } else {
    const { host, port } = opts.listen!;
    await listenOn(server, () => server.listen({ host, port, exclusive: true }), `${host}:${port}`);
    const a = server.address();
    const bound = typeof a === 'object' && a ? a.port : port;
    address = { host, port: bound };
    uri = `nbd://${host}:${bound}/${name}`;
  }

  // Accept failures (EMFILE) surface here; without a listener they would end the process.
  server.on('error', (err) => ctx.warnOnce(`the NBD server could not accept a client: ${err.message}`));

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      closing = true;
      opts.signal?.removeEventListener('abort', onAbort);
      const stopped = new Promise<void>((r) => server.close(() => r()));
      for (const c of conns) c.destroy();
      const done = Promise.all([stopped, ...[...conns].map((c) => c.done.catch(() => {}))]);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([done, new Promise((r) => (timer = setTimeout(r, CLOSE_DEADLINE_MS - 200)))]);
      clearTimeout(timer);
      if (opts.socket && socketIno !== undefined) await removeOurSocket(opts.socket, socketIno);
    })());
  const onAbort = (): void => void close();
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  log.debug(`NBD server for "${exportName}" (${source.size} bytes) at ${uri}`);
  return {
    address,
    uri,
    stats,
    close,
  };
}

function checkLoopback(listen: { host: string; port: number }): void {
  if (!isIPv4(listen.host) || !listen.host.startsWith('127.'))
    throw new UsageError(
      `the NBD server listens only on 127.0.0.0/8, not ${listen.host}`,
      'NBD has no authentication or encryption here; reach it from elsewhere through an SSH tunnel',
    );
  if (!Number.isInteger(listen.port) || listen.port < 0 || listen.port > 65535)
    throw new UsageError(`not a TCP port: ${listen.port}`);
}

function listenOn(server: Server, start: () => void, where: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void =>
      reject(
        new OrbError('environment', `cannot listen on ${where}: ${err.message}`, {
          cause: err,
          ...(err.code === 'EADDRINUSE' ? { hint: 'another server is using it; pick another' } : {}),
        }),
      );
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
    start();
  });
}

/**
 * Binds the socket in a fresh private folder, makes it 0600, then links it into place: at no
 * moment does `path` name a socket other users could connect to (a chmod after listening on the
 * final path would leave that window), and a link, unlike a rename, never replaces a socket
 * another server put there meanwhile. Returns the socket's inode, so close() removes only ours.
 */
async function listenUnix(server: Server, path: string): Promise<number> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH)
    throw new UsageError(
      `the NBD socket path is longer than ${MAX_SOCKET_PATH} bytes: ${path}`,
      'Unix socket paths are limited by the kernel; use a shorter folder',
    );
  await clearStaleSocket(path);
  const dir = dirname(path);
  const tmp = await mkdtemp(join(dir, '.nbd-')).catch((err: NodeJS.ErrnoException) => {
    throw new OrbError('environment', `cannot create the NBD socket in ${dir}: ${err.message}`, {
      cause: err,
    });
  });
  try {
    const staging = join(tmp, 's');
    if (Buffer.byteLength(staging) > MAX_SOCKET_PATH)
      throw new UsageError(`the NBD socket folder path is too long: ${dir}`, 'use a shorter folder');
    await listenOn(server, () => server.listen({ path: staging }), staging);
    await chmod(staging, 0o600);
    await link(staging, path).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'EEXIST'
        ? new OrbError('environment', `another server is listening on ${path}`, {
            hint: 'stop it, or give another --socket',
          })
        : new OrbError('environment', `cannot create the NBD socket ${path}: ${err.message}`, { cause: err });
    });
    return (await lstat(path)).ino;
  } catch (err) {
    server.close();
    throw err;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** A socket left by a server that died is removed; a live one, or any other file, is an error. */
async function clearStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket())
    throw new UsageError(`${path} exists and is not a socket`, 'give a path that does not exist yet');
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive)
    throw new OrbError('environment', `another server is listening on ${path}`, {
      hint: 'stop it, or give another --socket',
    });
  await unlink(path);
}

async function removeOurSocket(path: string, ino: number): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (st?.isSocket() && st.ino === ino) await unlink(path).catch(() => {});
}
