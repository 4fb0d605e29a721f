import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedCert } from './certs.js';

/**
 * Debian's xrdp as a real RDP server for tests: its own xrdp.ini, certificate, key and log in a
 * temporary directory, bound to 127.0.0.1 on a free port, in the foreground (--nodaemon, no
 * pid file), stopped by stop(). xrdp-sesman is not started: the probe never gets past TLS.
 */
export interface Xrdp {
  host: string;
  port: number;
  /** subject of the generated certificate, as the probe reports it ("CN=..., O=...") */
  subject: string;
  dir: string;
  log(): string;
  stop(): Promise<void>;
}

export interface XrdpOptions {
  securityLayer?: 'negotiate' | 'tls' | 'rdp';
  /** false: no certificate configured (xrdp then cannot do TLS) */
  certificate?: boolean;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function startOnce(opts: XrdpOptions): Promise<Xrdp> {
  const dir = mkdtempSync(join(tmpdir(), 'orb-xrdp-'));
  const port = await freePort();
  const cn = `orb-xrdp-test-${port}`;
  const subject = `CN=${cn}, O=orb-actions tests`;
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  if (opts.certificate !== false) {
    selfSignedCert({ cert, key, subject: `/CN=${cn}/O=orb-actions tests` });
  }
  const ini = join(dir, 'xrdp.ini');
  const logFile = join(dir, 'xrdp.log');
  writeFileSync(
    ini,
    [
      '[Globals]',
      'ini_version=1',
      'fork=false',
      `port=tcp://127.0.0.1:${port}`,
      `security_layer=${opts.securityLayer ?? 'negotiate'}`,
      'crypt_level=high',
      `certificate=${opts.certificate === false ? join(dir, 'missing-cert.pem') : cert}`,
      `key_file=${opts.certificate === false ? join(dir, 'missing-key.pem') : key}`,
      'ssl_protocols=TLSv1.2, TLSv1.3',
      '[Logging]',
      `LogFile=${logFile}`,
      'LogLevel=DEBUG',
      'EnableSyslog=false',
      'EnableConsole=true',
      'ConsoleLevel=INFO',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn('xrdp', ['--nodaemon', '--config', ini], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: dir,
  });
  let out = '';
  // xrdp's stdout is block-buffered in a pipe; its log file is written at once, so wait on that.
  const readLog = () => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const ready = new Promise<void>((resolve, reject) => {
    const t0 = Date.now();
    const poll = setInterval(() => {
      if (/listening to port/.test(readLog())) {
        clearInterval(poll);
        resolve();
      } else if (child.exitCode !== null || child.signalCode !== null) {
        clearInterval(poll);
        reject(
          new Error(
            `xrdp exited (${child.exitCode ?? child.signalCode}) before listening:\n${readLog()}${out}`,
          ),
        );
      } else if (Date.now() - t0 > 10_000) {
        clearInterval(poll);
        reject(new Error(`xrdp did not start listening within 10 s:\n${readLog()}${out}`));
      }
    }, 50);
  });
  try {
    await ready;
  } catch (err) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    host: '127.0.0.1',
    port,
    subject,
    dir,
    log: () => readLog() + out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Starts xrdp; retries on a lost race for the free port. */
export async function startXrdp(opts: XrdpOptions = {}): Promise<Xrdp> {
  let last: unknown;
  for (let i = 0; i < 3; i++) {
    try {
      return await startOnce(opts);
    } catch (err) {
      last = err;
    }
  }
  throw last;
}
