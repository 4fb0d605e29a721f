/**
 * The RDP check with retries: one attempt (attempt.ts) after another until the server answers,
 * a definite refusal, or the timeout.
 */
import { OrbError } from '../core/errors.js';
import type { RdpProtocol } from './x224.js';
import {
  probeOnce,
  type AttemptFailure,
  type AttemptOptions,
  type FailureReason,
  type RdpProbeResult,
} from './attempt.js';

export { probeOnce } from './attempt.js';

export type { AttemptFailure, AttemptOptions, FailureReason, RdpProbeResult, TlsInfo } from './attempt.js';

export interface ProbeOptions extends Omit<AttemptOptions, 'timeoutMs'> {
  /** total time for all attempts */
  timeoutMs: number;
  /** bound of one attempt (default 5 s) */
  attemptTimeoutMs?: number;
  /** pause between attempts (default 1 s) */
  intervalMs?: number;
  /** accept only these selected protocols (empty or absent: any) */
  expectProtocols?: readonly RdpProtocol[];
  /** reasons that end the probe at once: a definite answer that waiting will not change */
  finalReasons?: readonly FailureReason[];
  /** called after each failed attempt that will be retried */
  onAttempt?(attempt: number, failure: AttemptFailure): void;
}

export const DEFAULT_FINAL_REASONS: readonly FailureReason[] = [
  'negotiation-failure',
  'not-rdp',
  'unexpected-protocol',
];

const HINTS: Record<FailureReason, string> = {
  refused:
    'check that the RDP service runs and listens on that port (Windows: Remote Desktop enabled, firewall rule "Remote Desktop")',
  unreachable: 'check the host name and that the host is reachable from here',
  'no-answer':
    'the port accepts connections but nothing speaks RDP yet: the machine may still be booting (raise --timeout), or a firewall/forward swallows the traffic',
  closed:
    'something accepts the connection and drops it: the RDP service may still be starting (raise --timeout), or a port forward has no listener behind it',
  'not-rdp': 'another service listens on that port; check the port number',
  disconnect: 'the RDP server refused the connection request; check its logs',
  'negotiation-failure':
    'change the server\'s RDP security layer (Windows: "Require use of specific security layer" policy) or probe with the protocols it requires',
  'tls-failed':
    "the RDP server's TLS setup is broken (certificate or key missing or unreadable, TLS versions disabled); check its certificate configuration",
  'unexpected-protocol':
    'change the server\'s security layer (Windows: Remote Desktop "Allow connections only from computers running Remote Desktop with Network Level Authentication") or the expected protocols',
};

export class RdpProbeError extends OrbError {
  constructor(
    message: string,
    readonly failure: AttemptFailure,
    readonly attempts: number,
    readonly seconds: number,
  ) {
    super('check', message, { hint: HINTS[failure.reason] });
    this.name = 'RdpProbeError';
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

/**
 * Probes until an RDP server answers or `timeoutMs` passes. Failures that waiting can fix
 * (refused, closed, no answer, TLS not ready) are retried; a definite answer ends it at once.
 */
export async function probeRdp(opts: ProbeOptions): Promise<RdpProbeResult> {
  const start = performance.now();
  const deadline = start + opts.timeoutMs;
  const attemptTimeout = opts.attemptTimeoutMs ?? 5000;
  const interval = opts.intervalMs ?? 1000;
  const final = new Set(opts.finalReasons ?? DEFAULT_FINAL_REASONS);
  let attempts = 0;
  let last: AttemptFailure | undefined;
  for (;;) {
    if (opts.signal?.aborted)
      throw new OrbError('interrupted', `RDP probe of ${opts.host}:${opts.port} interrupted`);
    attempts++;
    const remaining = deadline - performance.now();
    const r = await probeOnce({ ...opts, timeoutMs: Math.max(500, Math.min(attemptTimeout, remaining)) });
    if (opts.signal?.aborted)
      throw new OrbError('interrupted', `RDP probe of ${opts.host}:${opts.port} interrupted`);
    if (r.ok) {
      const expected = opts.expectProtocols ?? [];
      if (expected.length === 0 || expected.includes(r.result.protocol)) {
        return { ...r.result, attempts, seconds: (performance.now() - start) / 1000 };
      }
      last = {
        reason: 'unexpected-protocol',
        message: `${opts.host}:${opts.port} answers RDP but selected ${r.result.description}; expected ${expected.join(' or ')}`,
      };
    } else {
      last = r.failure;
    }
    const seconds = (performance.now() - start) / 1000;
    if (final.has(last.reason)) {
      throw new RdpProbeError(`RDP check failed: ${last.message}`, last, attempts, seconds);
    }
    if (performance.now() + interval >= deadline) {
      const total = (opts.timeoutMs / 1000).toFixed(0);
      throw new RdpProbeError(
        `RDP check failed: no RDP answer from ${opts.host}:${opts.port} within ${total} s (${attempts} attempt${attempts === 1 ? '' : 's'}); last attempt: ${last.message}`,
        last,
        attempts,
        seconds,
      );
    }
    opts.onAttempt?.(attempts, last);
    await sleep(interval, opts.signal);
  }
}

/** "host:port", "[v6]:port" or "host" (port 3389). */
export function parseHostPort(text: string, defaultPort = 3389): { host: string; port: number } {
  const t = text.trim();
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(t) ?? /^([^:]+)(?::(\d+))?$/.exec(t);
  const port = m?.[2] === undefined ? defaultPort : Number(m[2]);
  if (!m || !m[1] || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new OrbError('usage', `'${text}' is not HOST:PORT`, {
      hint: 'for example 127.0.0.1:3389, myhost (port 3389) or [::1]:3390',
    });
  }
  return { host: m[1], port };
}
