import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseHostPort, probeOnce, probeRdp, RdpProbeError } from '../../src/rdp/probe.js';
import {
  connectionRequest,
  parseConfirm,
  PROTOCOL_HYBRID,
  PROTOCOL_RDP,
  PROTOCOL_SSL,
} from '../../src/rdp/x224.js';
import { orb } from '../helpers/cli.js';
import { freePort, startXrdp, type Xrdp } from '../helpers/xrdp.js';

/** A TCP server on 127.0.0.1 whose behaviour per connection is given. */
async function tcpServer(
  onConn: (s: Socket) => void,
): Promise<{ port: number; server: Server; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  return { port: typeof addr === 'object' && addr ? addr.port : 0, server, sockets };
}

async function closeServer(s: { server: Server; sockets: Set<Socket> }): Promise<void> {
  for (const sock of s.sockets) sock.destroy();
  await new Promise<void>((r) => s.server.close(() => r()));
}

async function probeError(p: Promise<unknown>): Promise<RdpProbeError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(RdpProbeError);
    return err as RdpProbeError;
  }
  throw new Error('the probe succeeded but should have failed');
}

describe('X.224 encoding', () => {
  it('builds a Connection Request with cookie and negotiation request', () => {
    const pdu = connectionRequest({ cookie: 'orb', requestedProtocols: PROTOCOL_SSL | PROTOCOL_HYBRID });
    expect(pdu[0]).toBe(3);
    expect(pdu.readUInt16BE(2)).toBe(pdu.length);
    expect(pdu[4]).toBe(pdu.length - 5); // LI
    expect(pdu[5]).toBe(0xe0);
    expect(pdu.subarray(11, 11 + 22).toString('ascii')).toBe('Cookie: mstshash=orb\r\n');
    const neg = pdu.subarray(pdu.length - 8);
    expect([...neg]).toEqual([1, 0, 8, 0, 3, 0, 0, 0]);
    // without a cookie: the 19-byte PDU every RDP client sends first
    expect(connectionRequest().toString('hex')).toBe('030000130ee000000000000100080003000000');
  });

  it('parses confirms, failures, legacy confirms and garbage', () => {
    const cc = (neg: number[]) =>
      Buffer.from([3, 0, 0, 11 + neg.length, 6 + neg.length, 0xd0, 0, 0, 0x12, 0x34, 0, ...neg]);
    expect(parseConfirm(cc([2, 0x1f, 8, 0, 2, 0, 0, 0]))).toMatchObject({
      kind: 'confirm',
      selected: 2,
      flags: 0x1f,
      negotiated: true,
    });
    expect(parseConfirm(cc([3, 0, 8, 0, 5, 0, 0, 0]))).toMatchObject({ kind: 'failure', code: 5 });
    expect(parseConfirm(cc([]))).toMatchObject({
      kind: 'confirm',
      selected: PROTOCOL_RDP,
      negotiated: false,
    });
    expect(parseConfirm(cc([2, 0, 8, 0, 1, 0, 0, 0]).subarray(0, 15))).toMatchObject({ kind: 'incomplete' }); // TPKT says more is coming
    expect(parseConfirm(cc([2, 0, 8]))).toMatchObject({ kind: 'not-rdp', detail: /truncated/ });
    expect(parseConfirm(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'))).toMatchObject({
      kind: 'not-rdp',
      preview: '"SSH-2.0-OpenSSH_9.2\\r\\n"',
    });
    expect(parseConfirm(Buffer.from([3, 0, 0, 11, 6, 0x80, 0, 0, 0, 0, 0]))).toMatchObject({
      kind: 'disconnect',
    });
  });

  it('parses HOST:PORT', () => {
    expect(parseHostPort('127.0.0.1:3390')).toEqual({ host: '127.0.0.1', port: 3390 });
    expect(parseHostPort('winhost')).toEqual({ host: 'winhost', port: 3389 });
    expect(parseHostPort('[::1]:4000')).toEqual({ host: '::1', port: 4000 });
    expect(() => parseHostPort('h:99999')).toThrow(/not HOST:PORT/);
  });
});

describe('RDP probe against xrdp', () => {
  let xrdp: Xrdp;
  beforeAll(async () => {
    xrdp = await startXrdp();
  });
  afterAll(async () => {
    await xrdp?.stop();
  });

  it('gets a Connection Confirm selecting TLS and completes the handshake', async () => {
    const r = await probeRdp({ host: xrdp.host, port: xrdp.port, timeoutMs: 10_000, cookie: 'orb' });
    expect(r.protocol).toBe('tls'); // xrdp offers no CredSSP, so of TLS|CredSSP it picks TLS
    expect(r.negotiated).toBe(true);
    expect(r.tls?.subject).toBe(xrdp.subject);
    expect(r.tls?.issuer).toBe(xrdp.subject);
    expect(r.tls?.selfSigned).toBe(true);
    expect(r.tls?.expired).toBe(false);
    expect(r.tls?.version).toMatch(/^TLSv1\.[23]$/);
    expect(new Date(r.tls!.validTo).getTime()).toBeGreaterThan(Date.now());
    expect(r.attempts).toBe(1);
  });

  it('orb rdp-probe HOST:PORT --json reports protocol and tls-subject', async () => {
    const r = await orb(['rdp-probe', `${xrdp.host}:${xrdp.port}`, '--timeout', '10', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(out).toMatchObject({
      protocol: 'tls',
      'tls-subject': xrdp.subject,
      'tls-issuer': xrdp.subject,
      host: xrdp.host,
      port: xrdp.port,
      attempts: 1,
    });
    expect(out['tls-not-after']).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(r.stderr).toMatch(/answered RDP: TLS, certificate CN=orb-xrdp-test/);
  });

  it('orb rdp-probe fails with a clear message and a non-zero exit', async () => {
    const port = await freePort();
    const r = await orb(['rdp-probe', `127.0.0.1:${port}`, '--timeout', '2', '--json']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(
      /error: RDP check failed: no RDP answer from 127\.0\.0\.1:\d+ within 2 s .*connection refused/,
    );
    expect(r.stderr).toMatch(/hint: /);
    const bad = await orb(['rdp-probe', 'host:notaport']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/'host:notaport' is not HOST:PORT/);
  });

  it('reports standard RDP security when only that is offered', async () => {
    const r = await probeOnce({
      host: xrdp.host,
      port: xrdp.port,
      timeoutMs: 5000,
      requestedProtocols: PROTOCOL_RDP,
    });
    expect(r).toMatchObject({ ok: true, result: { protocol: 'rdp', negotiated: true } });
    expect(r.ok && r.result.tls).toBeUndefined();
  });

  it('reports standard RDP security from an xrdp configured for it, and can demand a protocol', async () => {
    const x = await startXrdp({ securityLayer: 'rdp' });
    try {
      const r = await probeRdp({ host: x.host, port: x.port, timeoutMs: 5000 });
      expect(r).toMatchObject({ protocol: 'rdp', description: 'standard RDP security (no TLS)' });
      const err = await probeError(
        probeRdp({ host: x.host, port: x.port, timeoutMs: 5000, expectProtocols: ['tls', 'credssp'] }),
      );
      expect(err.failure.reason).toBe('unexpected-protocol');
      expect(err.message).toMatch(/selected standard RDP security \(no TLS\); expected tls or credssp/);
    } finally {
      await x.stop();
    }
  });
});

describe('RDP probe failures', () => {
  it('reports a negotiation failure from an xrdp that requires TLS but has no certificate', async () => {
    const x = await startXrdp({ securityLayer: 'tls', certificate: false });
    try {
      const t0 = Date.now();
      const err = await probeError(probeRdp({ host: x.host, port: x.port, timeoutMs: 20_000 }));
      expect(Date.now() - t0).toBeLessThan(5000); // a definite answer: no retries
      expect(err.failure).toMatchObject({ reason: 'negotiation-failure', code: 3 });
      expect(err.message).toMatch(/refused the negotiation: RDP_NEG_FAILURE SSL_CERT_NOT_ON_SERVER \(3\)/);
      expect(err.hint).toBeTruthy();
    } finally {
      await x.stop();
    }
  });

  it('says the port is closed, after retrying until the timeout', async () => {
    const port = await freePort();
    const t0 = Date.now();
    const err = await probeError(probeRdp({ host: '127.0.0.1', port, timeoutMs: 2500, intervalMs: 500 }));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(2000);
    expect(err.failure.reason).toBe('refused');
    expect(err.attempts).toBeGreaterThan(2);
    expect(err.message).toMatch(/within 3 s .*connection refused: nothing listens on 127\.0\.0\.1:\d+/);
  });

  it('says what a non-RDP server sent, without waiting for the timeout', async () => {
    const http = await tcpServer((s) =>
      s.once('data', () => s.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n')),
    );
    try {
      const t0 = Date.now();
      const err = await probeError(probeRdp({ host: '127.0.0.1', port: http.port, timeoutMs: 20_000 }));
      expect(Date.now() - t0).toBeLessThan(3000);
      expect(err.failure.reason).toBe('not-rdp');
      expect(err.message).toMatch(/is not an RDP server: .*TPKT.*"HTTP\/1\.1 400 Bad Request/);
    } finally {
      await closeServer(http);
    }
  });

  it('tells a silent listener from one that hangs up', async () => {
    const silent = await tcpServer(() => {});
    const hangup = await tcpServer((s) => s.end());
    try {
      const a = await probeError(
        probeRdp({
          host: '127.0.0.1',
          port: silent.port,
          timeoutMs: 1500,
          attemptTimeoutMs: 700,
          intervalMs: 200,
        }),
      );
      expect(a.failure.reason).toBe('no-answer');
      expect(a.message).toMatch(/accepted the TCP connection but sent no Connection Confirm/);
      const b = await probeError(
        probeRdp({ host: '127.0.0.1', port: hangup.port, timeoutMs: 1000, intervalMs: 200 }),
      );
      expect(b.failure.reason).toBe('closed');
      expect(b.message).toMatch(/closed it without a Connection Confirm/);
    } finally {
      await closeServer(silent);
      await closeServer(hangup);
    }
  });

  it('reports a server that selects TLS but cannot do it', async () => {
    // Answers with a valid Confirm selecting TLS, then garbage instead of a ServerHello.
    const fake = await tcpServer((s) =>
      s.once('data', () => {
        s.write(Buffer.from('030000130ed000001234000200080001000000', 'hex'));
        s.once('data', () => s.end('not tls at all\r\n'));
      }),
    );
    try {
      const err = await probeError(
        probeRdp({ host: '127.0.0.1', port: fake.port, timeoutMs: 1500, intervalMs: 300 }),
      );
      expect(err.failure.reason).toBe('tls-failed');
      expect(err.message).toMatch(/selected tls but the TLS handshake failed/);
    } finally {
      await closeServer(fake);
    }
  });
});
