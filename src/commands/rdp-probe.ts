import { defineCommand } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import { parseHostPort, probeRdp, type RdpProbeResult } from '../rdp/probe.js';
import { PROTOCOL_DESCRIPTION, type RdpProtocol } from '../rdp/x224.js';

const PROTOCOLS = Object.keys(PROTOCOL_DESCRIPTION) as RdpProtocol[];

/** Parses the expect-protocol list (shared with smoke-test). */
export function expectedProtocols(values: string[]): RdpProtocol[] {
  for (const v of values) {
    if (!PROTOCOLS.includes(v as RdpProtocol)) {
      throw new UsageError(
        `input 'expect-protocol': '${v}' is not valid; expected any of ${PROTOCOLS.join(', ')}`,
      );
    }
  }
  return values as RdpProtocol[];
}

/** The probe's result as output keys (shared with smoke-test, so both report the same names). */
export function rdpOutputs(r: RdpProbeResult): Record<string, string | number | boolean> {
  return {
    protocol: r.protocol,
    'protocol-description': r.description,
    'tls-subject': r.tls?.subject ?? '',
    'tls-issuer': r.tls?.issuer ?? '',
    'tls-not-before': r.tls?.validFrom ?? '',
    'tls-not-after': r.tls?.validTo ?? '',
    'tls-version': r.tls?.version ?? '',
    'tls-fingerprint': r.tls?.fingerprint256 ?? '',
  };
}

export const rdpOutputSpecs = [
  {
    name: 'protocol',
    description:
      'security protocol the server selected: rdp (standard RDP security), tls, credssp (NLA), rdstls or credssp-ex',
  },
  { name: 'protocol-description', description: 'the selected protocol in words' },
  { name: 'tls-subject', description: "subject of the server's TLS certificate (empty without TLS)" },
  { name: 'tls-issuer', description: "issuer of the server's TLS certificate" },
  { name: 'tls-not-before', description: 'start of the certificate validity (ISO 8601)' },
  { name: 'tls-not-after', description: 'end of the certificate validity (ISO 8601)' },
  { name: 'tls-version', description: 'negotiated TLS version' },
  { name: 'tls-fingerprint', description: 'SHA-256 fingerprint of the certificate' },
] as const;

export default defineCommand({
  name: 'rdp-probe',
  title: 'Check that a host answers RDP: X.224 negotiation and TLS handshake',
  description:
    'Connects to HOST:PORT, sends an X.224 Connection Request offering TLS and CredSSP, requires a Connection Confirm, ' +
    'reports the security protocol the server selected and, for TLS-based protocols, completes a TLS handshake and reports the certificate. ' +
    'Retries until the timeout while the port is closed or silent; a non-RDP answer or a negotiation failure fails at once.',
  action: false,
  usage: 'HOST:PORT',
  inputs: [
    {
      name: 'target',
      type: 'string',
      required: true,
      positional: 0,
      description: 'HOST:PORT to probe (port 3389 when omitted)',
    },
    {
      name: 'timeout',
      type: 'duration',
      default: 30,
      min: 1,
      max: 86400,
      description: 'seconds to keep retrying before the check fails',
    },
    {
      name: 'expect-protocol',
      type: 'list',
      description: `fail unless the server selects one of these (${PROTOCOLS.join(', ')}); empty accepts any`,
    },
  ],
  outputs: [
    ...rdpOutputSpecs,
    { name: 'host', description: 'probed host' },
    { name: 'port', description: 'probed port' },
    { name: 'attempts', description: 'connection attempts made' },
    { name: 'seconds', description: 'seconds until the server answered' },
  ],
  async run(inputs, ctx) {
    const { host, port } = parseHostPort(inputs.string('target'));
    const expect = expectedProtocols(inputs.list('expect-protocol'));
    const timeout = inputs.number('timeout');
    ctx.log.info(`probing RDP on ${host}:${port} (up to ${timeout} s)`);
    let lastReason = '';
    const r = await probeRdp({
      host,
      port,
      timeoutMs: timeout * 1000,
      expectProtocols: expect,
      signal: ctx.signal,
      cookie: 'orb',
      onAttempt: (n, f) => {
        // One line per change of state, not per attempt: a 10-minute wait stays readable.
        if (f.reason !== lastReason) ctx.log.info(`attempt ${n}: ${f.message}; retrying`);
        lastReason = f.reason;
      },
    });
    ctx.log.info(
      `${host}:${port} answered RDP: ${r.description}${r.tls ? `, certificate ${r.tls.subject}` : ''}`,
    );
    if (r.tls?.expired)
      ctx.log.warn(
        `the server's certificate is not valid now (valid ${r.tls.validFrom} to ${r.tls.validTo})`,
      );
    ctx.summary.heading('rdp-probe').table(
      ['', ''],
      [
        ['target', `${host}:${port}`],
        ['protocol', r.description],
        ...(r.tls
          ? [
              ['certificate subject', r.tls.subject],
              ['issuer', r.tls.issuer],
              ['valid', `${r.tls.validFrom} to ${r.tls.validTo}`],
              ['TLS', `${r.tls.version} ${r.tls.cipher}`],
            ]
          : []),
        ['answered after', `${r.seconds.toFixed(1)} s (${r.attempts} attempts)`],
      ],
    );
    return { ...rdpOutputs(r), host, port, attempts: r.attempts, seconds: Number(r.seconds.toFixed(2)) };
  },
});
