import { RDP_CONNECTION_CONFIRM, testGuestDisk } from './guests.js';

/**
 * Guests for the smoke tests, composed from the shared test-guest builders:
 *   smoke-rdp  network up, an RDP answerer on 3389 that reads the whole TPKT-framed Connection
 *              Request (any length: ours carries a cookie) and sends a Connection Confirm
 *              selecting standard RDP, and busybox httpd on 8006 (the dockur web viewer's port)
 * The standard 'silent' and 'noboot' variants cover the failures.
 */
const REPLY = `#!/bin/sh
hdr=$(dd bs=1 count=4 2>/dev/null | od -An -tx1 | tr -d ' \\n')
case "$hdr" in 0300*) ;; *) exit 0 ;; esac
len=$((0x$(echo "$hdr" | cut -c5-8)))
[ "$len" -gt 4 ] || exit 0
rest=$(dd bs=1 count=$((len - 4)) 2>/dev/null | od -An -tx1 | tr -d ' \\n')
case "$rest" in ??e0*) ;; *) exit 0 ;; esac
cat /etc/orb/smoke-cc.bin
cat >/dev/null
`;

const SMOKE_RDP = `orb_net_up
mkdir -p /tmp/www && echo orb-smoke > /tmp/www/index.html
orb_http_serve 8006 /tmp/www
nc -ll -p 3389 -e /bin/orb-smoke-rdp-reply &
orb_wait_listen 3389
orb_marker smoke-rdp-listening
`;

export const SMOKE_GUEST_OPTIONS = {
  variants: { 'smoke-rdp': SMOKE_RDP },
  files: {
    '/bin/orb-smoke-rdp-reply': { data: REPLY, mode: 0o755 },
    '/etc/orb/smoke-cc.bin': RDP_CONNECTION_CONFIRM,
  },
};

/** Boot disk (raw, cached) of a smoke-test guest: 'smoke-rdp', or a standard variant. */
export function smokeGuestDisk(variant: 'smoke-rdp' | 'silent' | 'noboot' | 'poweroff'): Promise<string> {
  return testGuestDisk(variant, variant === 'smoke-rdp' ? SMOKE_GUEST_OPTIONS : {});
}
