import { execFileSync } from 'node:child_process';

/**
 * A throw-away self-signed certificate and key (PEM) for the test servers that speak TLS
 * (registry token signing, an https registry, xrdp). `subject` is openssl's `/CN=.../O=...` form;
 * `ip` adds it as a subjectAltName so clients can verify a server reached by address.
 */
export function selfSignedCert(o: { cert: string; key: string; subject: string; ip?: string }): void {
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      o.subject,
      ...(o.ip ? ['-addext', `subjectAltName=IP:${o.ip}`] : []),
      '-keyout',
      o.key,
      '-out',
      o.cert,
    ],
    { stdio: 'ignore' },
  );
}
