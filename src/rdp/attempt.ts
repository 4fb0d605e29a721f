import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import {
  connectionRequest,
  NEG_FAILURES,
  parseConfirm,
  PROTOCOL_DESCRIPTION,
  PROTOCOL_HYBRID,
  PROTOCOL_SSL,
  protocolName,
  responseFlags,
  usesTls,
  type RdpProtocol,
} from './x224.js';

/**
 * A real RDP check, not an open-port check: a half-started machine (or a QEMU port forward with
 * nobody behind it) accepts TCP connections, but only an RDP stack answers an X.224 Connection
 * Request with a Connection Confirm, and only a configured one completes the TLS handshake.
 */

export type FailureReason =
  | 'refused' // nothing listens (ECONNREFUSED)
  | 'unreachable' // routing / DNS / other socket errors
  | 'no-answer' // connected (or connecting), but nothing came back in time
  | 'closed' // the peer closed or reset before a full reply
  | 'not-rdp' // bytes came back, but not a TPKT/X.224 Connection Confirm
  | 'disconnect' // an X.224 Disconnect Request instead of a Confirm
  | 'negotiation-failure' // RDP_NEG_FAILURE: an RDP server refusing what we offered
  | 'tls-failed' // Confirm received, TLS handshake failed
  | 'unexpected-protocol'; // a working RDP server, but not the security protocol the caller demanded

export interface AttemptFailure {
  reason: FailureReason;
  message: string;
  /** RDP_NEG_FAILURE code */
  code?: number;
}

export interface TlsInfo {
  /** certificate subject, RFC 2253-like "CN=host, O=org" */
  subject: string;
  issuer: string;
  validFrom: string;
  validTo: string;
  selfSigned: boolean;
  /** not valid now (expired or not yet valid): reported, not fatal: RDP hosts often run with stale self-signed certs */
  expired: boolean;
  fingerprint256: string;
  version: string;
  cipher: string;
}

export interface RdpProbeResult {
  host: string;
  port: number;
  protocol: RdpProtocol;
  protocolCode: number;
  description: string;
  /** false: an old server that sent a Confirm without negotiation data (standard RDP security) */
  negotiated: boolean;
  flags: string[];
  tls?: TlsInfo;
  attempts: number;
  /** from the first attempt to success */
  seconds: number;
  /** round trip of the Connection Request in the successful attempt */
  replyMs: number;
}

export interface AttemptOptions {
  host: string;
  port: number;
  timeoutMs: number;
  requestedProtocols?: number;
  cookie?: string;
  /** complete the TLS handshake when the server selects a TLS-based protocol (default true) */
  tls?: boolean;
  signal?: AbortSignal;
}

type AttemptResult =
  { ok: true; result: Omit<RdpProbeResult, 'attempts' | 'seconds'> } | { ok: false; failure: AttemptFailure };

/** Comma-joined "CN=a, O=b" from node's newline-separated X509 name. */
function dn(name: string): string {
  return name.split('\n').filter(Boolean).join(', ');
}

function tlsInfo(sock: TLSSocket): TlsInfo | undefined {
  const cert = sock.getPeerX509Certificate();
  if (!cert) return undefined;
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  const now = Date.now();
  return {
    subject: dn(cert.subject),
    issuer: dn(cert.issuer),
    validFrom: Number.isNaN(from.getTime()) ? cert.validFrom : from.toISOString(),
    validTo: Number.isNaN(to.getTime()) ? cert.validTo : to.toISOString(),
    selfSigned: cert.subject === cert.issuer,
    expired: now < from.getTime() || now > to.getTime(),
    fingerprint256: cert.fingerprint256,
    version: sock.getProtocol() ?? '',
    cipher: sock.getCipher()?.name ?? '',
  };
}

function socketFailure(
  err: NodeJS.ErrnoException,
  host: string,
  port: number,
  connected: boolean,
): AttemptFailure {
  const where = `${host}:${port}`;
  switch (err.code) {
    case 'ECONNREFUSED':
      return { reason: 'refused', message: `connection refused: nothing listens on ${where}` };
    case 'ECONNRESET':
    case 'EPIPE':
      return {
        reason: 'closed',
        message: `${where} reset the connection ${connected ? 'before sending a Connection Confirm' : 'while connecting'}`,
      };
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return { reason: 'unreachable', message: `cannot resolve host '${host}'` };
    default:
      return {
        reason: 'unreachable',
        message: `cannot connect to ${where}: ${err.code ?? ''} ${err.message}`.replace(/\s+/g, ' '),
      };
  }
}

/** One attempt: connect, Connection Request, Connection Confirm, then TLS when selected. */
export function probeOnce(opts: AttemptOptions): Promise<AttemptResult> {
  const { host, port } = opts;
  const requested = opts.requestedProtocols ?? PROTOCOL_SSL | PROTOCOL_HYBRID;
  return new Promise((resolve) => {
    let settled = false;
    let connected = false;
    let phase: 'connect' | 'confirm' | 'tls' = 'connect';
    let received = Buffer.alloc(0);
    let sentAt = 0;
    let tlsSock: TLSSocket | undefined;
    const sock: Socket = netConnect({ host, port });
    const finish = (r: AttemptResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      // A polite close after success (the server logs a disconnect, not an error); destroy otherwise.
      if (r.ok && tlsSock) tlsSock.end();
      else if (r.ok) sock.end();
      else {
        tlsSock?.destroy();
        sock.destroy();
      }
      setTimeout(() => {
        tlsSock?.destroy();
        sock.destroy();
      }, 1000).unref();
      resolve(r);
    };
    const onAbort = () => finish({ ok: false, failure: { reason: 'no-answer', message: 'interrupted' } });
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => {
      const s = (opts.timeoutMs / 1000).toFixed(opts.timeoutMs < 10_000 ? 1 : 0);
      const message =
        phase === 'connect'
          ? `no answer from ${host}:${port}: TCP connect did not complete within ${s} s`
          : phase === 'confirm'
            ? received.length
              ? `${host}:${port} sent ${received.length} bytes but no complete Connection Confirm within ${s} s`
              : `${host}:${port} accepted the TCP connection but sent no Connection Confirm within ${s} s`
            : `${host}:${port} selected a TLS protocol but the TLS handshake did not complete within ${s} s`;
      finish({ ok: false, failure: { reason: phase === 'tls' ? 'tls-failed' : 'no-answer', message } });
    }, opts.timeoutMs);

    sock.setNoDelay(true);
    sock.once('connect', () => {
      connected = true;
      phase = 'confirm';
      sentAt = performance.now();
      sock.write(connectionRequest({ requestedProtocols: requested, cookie: opts.cookie }));
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (phase === 'tls') return; // reported by the TLS socket
      finish({ ok: false, failure: socketFailure(err, host, port, connected) });
    });
    sock.on('close', () => {
      if (phase === 'tls') return;
      const seen = received.length ? ` after ${received.length} bytes` : '';
      finish({
        ok: false,
        failure: {
          reason: 'closed',
          message: `${host}:${port} accepted the TCP connection, then closed it${seen} without a Connection Confirm`,
        },
      });
    });
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const p = parseConfirm(received);
      if (p.kind === 'incomplete') return;
      const replyMs = performance.now() - sentAt;
      if (p.kind === 'not-rdp') {
        finish({
          ok: false,
          failure: {
            reason: 'not-rdp',
            message: `${host}:${port} is not an RDP server: ${p.detail}; received ${p.preview}`,
          },
        });
        return;
      }
      if (p.kind === 'disconnect') {
        finish({
          ok: false,
          failure: {
            reason: 'disconnect',
            message: `${host}:${port} answered the Connection Request with an X.224 Disconnect Request`,
          },
        });
        return;
      }
      if (p.kind === 'failure') {
        const f = NEG_FAILURES[p.code];
        const what = f ? `${f.name} (${p.code}): ${f.meaning}` : `unknown failure code ${p.code}`;
        finish({
          ok: false,
          failure: {
            reason: 'negotiation-failure',
            code: p.code,
            message: `${host}:${port} is an RDP server but refused the negotiation: RDP_NEG_FAILURE ${what}`,
          },
        });
        return;
      }
      const protocol = protocolName(p.selected);
      if (!protocol || (p.selected !== 0 && (p.selected & ~requested) !== 0)) {
        finish({
          ok: false,
          failure: {
            reason: 'not-rdp',
            message: `${host}:${port} selected protocol 0x${p.selected.toString(16)}, which was not offered (offered 0x${requested.toString(16)})`,
          },
        });
        return;
      }
      const base = {
        host,
        port,
        protocol,
        protocolCode: p.selected,
        description: PROTOCOL_DESCRIPTION[protocol],
        negotiated: p.negotiated,
        flags: responseFlags(p.flags),
        replyMs: Math.round(replyMs),
      };
      if (!usesTls(p.selected) || opts.tls === false) {
        finish({ ok: true, result: base });
        return;
      }
      // TLS starts on the same TCP connection right after the Confirm (MS-RDPBCGR 5.4.5.1).
      phase = 'tls';
      sock.removeListener('data', onData);
      tlsSock = tlsConnect({
        socket: sock,
        // Self-signed certificates are the norm for RDP hosts; we report the certificate, not trust it.
        rejectUnauthorized: false,
        // Old Windows servers speak TLS 1.0 only; nothing secret is sent, so accept what they offer.
        minVersion: 'TLSv1',
        ciphers: 'DEFAULT:@SECLEVEL=0',
        ...(isIP(host) ? {} : { servername: host }),
      });
      tlsSock.once('secureConnect', () => {
        finish({ ok: true, result: { ...base, tls: tlsInfo(tlsSock!) } });
      });
      tlsSock.on('error', (err: NodeJS.ErrnoException) => {
        finish({
          ok: false,
          failure: {
            reason: 'tls-failed',
            message:
              `${host}:${port} selected ${protocol} but the TLS handshake failed: ${err.code ?? ''} ${err.message}`.replace(
                /\s+/g,
                ' ',
              ),
          },
        });
      });
      tlsSock.on('close', () => {
        finish({
          ok: false,
          failure: {
            reason: 'tls-failed',
            message: `${host}:${port} selected ${protocol} but closed the connection during the TLS handshake`,
          },
        });
      });
    };
    sock.on('data', onData);
  });
}
