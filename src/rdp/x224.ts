/**
 * The first two PDUs of an RDP connection (MS-RDPBCGR 2.2.1.1 and 2.2.1.2): an X.224 Connection
 * Request carrying an RDP Negotiation Request, and the server's Connection Confirm carrying a
 * Negotiation Response or Failure. Both travel in a TPKT header (RFC 1006). Pure functions, so the
 * byte layout is tested without a network.
 */

/** requestedProtocols / selectedProtocol bits (MS-RDPBCGR 2.2.1.1.1) */
export const PROTOCOL_RDP = 0x0;
export const PROTOCOL_SSL = 0x1;
export const PROTOCOL_HYBRID = 0x2;
export const PROTOCOL_RDSTLS = 0x4;
export const PROTOCOL_HYBRID_EX = 0x8;

const TYPE_NEG_REQ = 0x01;
const TYPE_NEG_RSP = 0x02;
const TYPE_NEG_FAILURE = 0x03;

const X224_CR = 0xe0;
const X224_CC = 0xd0;
const X224_DR = 0x80;

/** Names used in outputs: short, stable, and what an admin calls them. */
export type RdpProtocol = 'rdp' | 'tls' | 'credssp' | 'rdstls' | 'credssp-ex';

export function protocolName(code: number): RdpProtocol | undefined {
  switch (code) {
    case PROTOCOL_RDP:
      return 'rdp';
    case PROTOCOL_SSL:
      return 'tls';
    case PROTOCOL_HYBRID:
      return 'credssp';
    case PROTOCOL_RDSTLS:
      return 'rdstls';
    case PROTOCOL_HYBRID_EX:
      return 'credssp-ex';
    default:
      return undefined;
  }
}

export const PROTOCOL_DESCRIPTION: Record<RdpProtocol, string> = {
  rdp: 'standard RDP security (no TLS)',
  tls: 'TLS',
  credssp: 'CredSSP (Network Level Authentication) over TLS',
  rdstls: 'RDSTLS',
  'credssp-ex': 'CredSSP with Early User Authorization (NLA) over TLS',
};

/** Protocols whose first step after the Connection Confirm is a TLS handshake. */
export function usesTls(code: number): boolean {
  return code !== PROTOCOL_RDP;
}

/** failureCode values of RDP_NEG_FAILURE (MS-RDPBCGR 2.2.1.2.2) with what they mean for a user. */
export const NEG_FAILURES: Record<number, { name: string; meaning: string }> = {
  1: { name: 'SSL_REQUIRED_BY_SERVER', meaning: 'the server requires TLS' },
  2: {
    name: 'SSL_NOT_ALLOWED_BY_SERVER',
    meaning: 'the server only allows standard RDP security (no TLS, no NLA)',
  },
  3: { name: 'SSL_CERT_NOT_ON_SERVER', meaning: 'the server has no certificate for TLS' },
  4: { name: 'INCONSISTENT_FLAGS', meaning: 'the server found the requested protocol flags inconsistent' },
  5: { name: 'HYBRID_REQUIRED_BY_SERVER', meaning: 'the server requires CredSSP (NLA)' },
  6: {
    name: 'SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER',
    meaning: 'the server requires TLS with user authentication',
  },
};

export interface ConnectionRequestOptions {
  /** bits of PROTOCOL_*; default TLS | CredSSP, which is what current clients offer first */
  requestedProtocols?: number;
  /** routing cookie `Cookie: mstshash=<cookie>`; omitted when empty */
  cookie?: string;
}

export function connectionRequest(opts: ConnectionRequestOptions = {}): Buffer {
  const requested = opts.requestedProtocols ?? PROTOCOL_SSL | PROTOCOL_HYBRID;
  // The cookie is ASCII up to CR LF; refuse anything that could break out of that line.
  const cookie = opts.cookie
    ? Buffer.from(`Cookie: mstshash=${opts.cookie.replace(/[^\x21-\x7e]/g, '')}\r\n`, 'ascii')
    : Buffer.alloc(0);
  const neg = Buffer.alloc(8);
  neg.writeUInt8(TYPE_NEG_REQ, 0);
  neg.writeUInt8(0, 1); // flags
  neg.writeUInt16LE(8, 2);
  neg.writeUInt32LE(requested, 4);
  const x224 = Buffer.alloc(7);
  // Length indicator counts the TPDU header after itself plus the variable part.
  x224.writeUInt8(6 + cookie.length + neg.length, 0);
  x224.writeUInt8(X224_CR, 1);
  x224.writeUInt16BE(0, 2); // DST-REF
  x224.writeUInt16BE(0, 4); // SRC-REF
  x224.writeUInt8(0, 6); // class 0
  const body = Buffer.concat([x224, cookie, neg]);
  const tpkt = Buffer.alloc(4);
  tpkt.writeUInt8(3, 0);
  tpkt.writeUInt8(0, 1);
  tpkt.writeUInt16BE(4 + body.length, 2);
  return Buffer.concat([tpkt, body]);
}

export type ConfirmParse =
  | { kind: 'incomplete' }
  /** bytes that are not a TPKT/X.224 answer at all; `preview` shows what they were */
  | { kind: 'not-rdp'; detail: string; preview: string }
  | { kind: 'disconnect' }
  /** Connection Confirm; `selected` undefined when the server sent no negotiation data (old servers: standard RDP) */
  | { kind: 'confirm'; selected: number; flags: number; negotiated: boolean; length: number }
  | { kind: 'failure'; code: number; length: number };

/** Printable view of unexpected bytes, so "not RDP" says what it saw (an HTTP banner, SSH, ...). */
export function previewBytes(buf: Buffer, max = 48): string {
  const head = buf.subarray(0, max);
  const printable = head.every((b) => b === 0x0a || b === 0x0d || b === 0x09 || (b >= 0x20 && b < 0x7f));
  const text = printable
    ? JSON.stringify(head.toString('ascii'))
    : head.toString('hex').replace(/(..)/g, '$1 ').trim();
  return buf.length > max ? `${text} ...` : text;
}

/** Parses the server's reply as far as it has arrived. */
export function parseConfirm(buf: Buffer): ConfirmParse {
  if (buf.length < 1) return { kind: 'incomplete' };
  if (buf[0] !== 3)
    return {
      kind: 'not-rdp',
      detail: 'the reply does not start with a TPKT header (version 3)',
      preview: previewBytes(buf),
    };
  if (buf.length >= 2 && buf[1] !== 0)
    return { kind: 'not-rdp', detail: 'TPKT reserved byte is not 0', preview: previewBytes(buf) };
  if (buf.length < 4) return { kind: 'incomplete' };
  const length = buf.readUInt16BE(2);
  if (length < 11 || length > 512) {
    return {
      kind: 'not-rdp',
      detail: `TPKT length ${length} is not that of a Connection Confirm`,
      preview: previewBytes(buf),
    };
  }
  if (buf.length < length) return { kind: 'incomplete' };
  const li = buf[4]!;
  const code = buf[5]! & 0xf0;
  if (li + 5 > length)
    return {
      kind: 'not-rdp',
      detail: `X.224 length indicator ${li} exceeds the TPKT length ${length}`,
      preview: previewBytes(buf),
    };
  if (code === X224_DR) return { kind: 'disconnect' };
  if (code !== X224_CC) {
    return {
      kind: 'not-rdp',
      detail: `X.224 TPDU code 0x${code.toString(16)} is not a Connection Confirm (0xd0)`,
      preview: previewBytes(buf),
    };
  }
  // Fixed part: LI, code, DST-REF(2), SRC-REF(2), class = 7 bytes from offset 4; negotiation data follows.
  if (length === 4 + 7)
    return { kind: 'confirm', selected: PROTOCOL_RDP, flags: 0, negotiated: false, length };
  if (length < 4 + 7 + 8)
    return {
      kind: 'not-rdp',
      detail: `truncated negotiation data (${length - 11} of 8 bytes)`,
      preview: previewBytes(buf),
    };
  const type = buf[11]!;
  const flags = buf[12]!;
  const negLen = buf.readUInt16LE(13);
  const value = buf.readUInt32LE(15);
  if (negLen !== 8)
    return {
      kind: 'not-rdp',
      detail: `negotiation data length ${negLen} is not 8`,
      preview: previewBytes(buf),
    };
  if (type === TYPE_NEG_RSP) return { kind: 'confirm', selected: value, flags, negotiated: true, length };
  if (type === TYPE_NEG_FAILURE) return { kind: 'failure', code: value, length };
  return {
    kind: 'not-rdp',
    detail: `negotiation data type ${type} is neither a response (2) nor a failure (3)`,
    preview: previewBytes(buf),
  };
}

/** Negotiation Response flags (MS-RDPBCGR 2.2.1.2.1), for the report. */
export function responseFlags(flags: number): string[] {
  const names: [number, string][] = [
    [0x01, 'extended-client-data'],
    [0x02, 'gfx'],
    [0x08, 'restricted-admin'],
    [0x10, 'redirected-authentication'],
  ];
  return names.filter(([bit]) => flags & bit).map(([, n]) => n);
}
