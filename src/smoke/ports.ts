import { connect } from 'node:net';
import type { QmpClient } from '../qemu/qmp.js';

/**
 * Is a guest TCP port open, seen through a QEMU user-mode (slirp) forward? The host side of a
 * forward accepts every connection at once, whatever the guest does, so a plain connect proves
 * nothing. The guest's answer shows up two ways: it refuses (slirp then closes our connection) or
 * it accepts (slirp lists the connection as ESTABLISHED in `info usernet`). A guest that is not up
 * yet leaves the connection in SYN_SENT.
 */
export type PortState = 'open' | 'closed' | 'no-answer';

export interface UsernetEntry {
  protocol: string;
  state: string;
  srcPort: number;
  dstPort: number;
}

/** Parses HMP `info usernet` lines like `TCP[ESTABLISHED]  17  127.0.0.1 45389  10.0.2.15  3389  0  0`. */
export function parseUsernet(text: string): UsernetEntry[] {
  const out: UsernetEntry[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(TCP|UDP)\[([A-Z_]+)\]\s+-?\d+\s+\S+\s+(\d+)\s+\S+\s+(\d+)/.exec(line);
    if (m) out.push({ protocol: m[1]!, state: m[2]!, srcPort: Number(m[3]), dstPort: Number(m[4]) });
  }
  return out;
}

/** One look at one port: connect through the forward and watch for the guest's verdict. */
export async function probeForwardedPort(
  qmp: QmpClient,
  hostPort: number,
  guestPort: number,
  timeoutMs: number,
): Promise<PortState> {
  const sock = connect({ host: '127.0.0.1', port: hostPort });
  let verdict: PortState | undefined;
  sock.on('error', () => {
    verdict ??= 'closed';
  });
  sock.on('close', () => {
    verdict ??= 'closed';
  });
  // A server that speaks first (SSH, SMTP) proves itself with data.
  sock.on('data', () => {
    verdict ??= 'open';
  });
  const deadline = Date.now() + timeoutMs;
  try {
    await new Promise<void>((resolve) => {
      sock.once('connect', () => resolve());
      sock.once('close', () => resolve());
    });
    while (verdict === undefined && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      if (verdict !== undefined) break;
      const entries = parseUsernet(await qmp.hmp('info usernet', { timeoutMs: 5000 }).catch(() => ''));
      if (
        entries.some(
          (e) =>
            e.protocol === 'TCP' &&
            e.state === 'ESTABLISHED' &&
            e.srcPort === hostPort &&
            e.dstPort === guestPort,
        )
      ) {
        verdict ??= 'open';
      }
    }
  } finally {
    sock.destroy();
  }
  return verdict ?? 'no-answer';
}
