import { OrbError } from '../core/errors.js';
import { mask, type Logger } from '../core/log.js';
import type { Credentials } from './credentials.js';
import { HttpClient, HttpResponse } from './http.js';

/**
 * Registry authentication driven by the `WWW-Authenticate` challenge, as the distribution spec
 * describes it: `Basic` sends the credentials on every request; `Bearer` exchanges them (or
 * nothing, for anonymous pulls) for a short-lived token per scope set at the realm the challenge
 * names. Tokens are cached per scope set, refreshed before they expire, and refreshed once more
 * when the registry answers 401 to a token that should still be valid.
 */
export interface Challenge {
  scheme: 'bearer' | 'basic';
  realm: string;
  service?: string;
  scope?: string;
}

/** Parses the first challenge of a WWW-Authenticate header. */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*(Bearer|Basic)\s*(.*)$/i.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?/g;
  for (let p = re.exec(m[2]!); p; p = re.exec(m[2]!)) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  const scheme = m[1]!.toLowerCase() as 'bearer' | 'basic';
  return {
    scheme,
    realm: params.realm ?? '',
    ...(params.service !== undefined ? { service: params.service } : {}),
    ...(params.scope !== undefined ? { scope: params.scope } : {}),
  };
}

interface Token {
  value: string;
  expiresAt: number;
}

export class Authenticator {
  private challenge: Challenge | undefined;
  private readonly tokens = new Map<string, { pending: Promise<Token>; value?: string }>();

  constructor(
    private readonly http: HttpClient,
    readonly host: string,
    private readonly creds: Credentials | undefined,
    private readonly log: Logger,
  ) {}

  get scheme(): 'bearer' | 'basic' | 'none' {
    return this.challenge?.scheme ?? 'none';
  }

  /** Learns the challenge from a 401 answer (any endpoint); returns false when it has none. */
  learn(res: HttpResponse): boolean {
    const c = parseChallenge(res.header('www-authenticate'));
    if (!c) return false;
    this.challenge = c;
    return true;
  }

  /** The Authorization header for a request needing `scopes`, or undefined when none is needed. */
  async header(scopes: readonly string[]): Promise<string | undefined> {
    const c = this.challenge;
    if (!c) return undefined;
    if (c.scheme === 'basic') {
      if (!this.creds?.password) {
        throw new OrbError('network', `${this.host} asks for a user name and password`, {
          hint: credentialHint(this.host),
        });
      }
      return 'Basic ' + Buffer.from(`${this.creds.username ?? ''}:${this.creds.password}`).toString('base64');
    }
    if (this.creds?.registryToken) return `Bearer ${this.creds.registryToken}`;
    const key = [...scopes].sort().join(' ');
    const cached = this.tokens.get(key);
    if (cached) {
      const t = await cached.pending.catch(() => undefined);
      if (t && t.expiresAt - Date.now() > 10_000) return `Bearer ${t.value}`;
      if (this.tokens.get(key) === cached) this.tokens.delete(key);
    }
    let entry = this.tokens.get(key);
    if (!entry) {
      const e: { pending: Promise<Token>; value?: string } = { pending: this.fetchToken(c, scopes) };
      e.pending.then((t) => (e.value = t.value)).catch(() => undefined);
      this.tokens.set(key, e);
      entry = e;
    }
    try {
      return `Bearer ${(await entry.pending).value}`;
    } catch (err) {
      if (this.tokens.get(key) === entry) this.tokens.delete(key);
      throw err;
    }
  }

  /**
   * The registry rejected `used` for `scopes`: forget it, so the next header() fetches anew.
   * When several requests fail with the same token at once, only the first refresh happens.
   */
  invalidate(scopes: readonly string[], used?: string): void {
    const key = [...scopes].sort().join(' ');
    const cached = this.tokens.get(key);
    if (!cached) return;
    if (used === undefined || (cached.value !== undefined && `Bearer ${cached.value}` === used))
      this.tokens.delete(key);
  }

  private async fetchToken(c: Challenge, scopes: readonly string[]): Promise<Token> {
    if (!c.realm) throw new OrbError('network', `${this.host} sent a Bearer challenge without a realm`);
    const realm = new URL(c.realm);
    const all = new Set(scopes);
    if (c.scope) for (const s of c.scope.split(' ')) if (s) all.add(s);
    let res: HttpResponse;
    const who = this.creds ? `credentials from ${this.creds.source}` : 'anonymous access';
    try {
      if (this.creds?.identityToken) {
        const form = new URLSearchParams({
          grant_type: 'refresh_token',
          refresh_token: this.creds.identityToken,
          client_id: 'orb-actions',
        });
        if (c.service) form.set('service', c.service);
        form.set('scope', [...all].join(' '));
        res = await this.http.send({
          method: 'POST',
          url: realm,
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: form.toString(),
        });
      } else {
        if (c.service) realm.searchParams.set('service', c.service);
        for (const s of all) realm.searchParams.append('scope', s);
        const headers: Record<string, string> = {};
        if (this.creds?.password) {
          headers.authorization =
            'Basic ' + Buffer.from(`${this.creds.username ?? ''}:${this.creds.password}`).toString('base64');
        }
        res = await this.http.send({ method: 'GET', url: realm, headers });
      }
    } catch (err) {
      throw new OrbError(
        'network',
        `cannot reach the token service of ${this.host} (${realm.host}): ${(err as Error).message}`,
        { cause: err },
      );
    }
    if (res.status === 401 || res.status === 403) {
      await res.discard();
      throw new OrbError(
        'network',
        `the token service of ${this.host} rejected ${who} (HTTP ${res.status})`,
        {
          hint: this.creds
            ? `check the credentials from ${this.creds.source} and their permissions`
            : credentialHint(this.host),
        },
      );
    }
    if (res.status !== 200) {
      const body = (await res.text(64 << 10).catch(() => '')).slice(0, 300);
      throw new OrbError('network', `the token service of ${this.host} answered HTTP ${res.status}: ${body}`);
    }
    const json = JSON.parse(await res.text(1 << 20)) as {
      token?: string;
      access_token?: string;
      expires_in?: number;
    };
    const value = json.token || json.access_token;
    if (!value) throw new OrbError('network', `the token service of ${this.host} returned no token`);
    mask(value);
    // The spec's default lifetime is 60 s when expires_in is missing.
    const seconds = typeof json.expires_in === 'number' && json.expires_in > 0 ? json.expires_in : 60;
    this.log.debug(`token for ${[...all].join(' ')} from ${realm.host} (${who}), valid ${seconds} s`);
    return { value, expiresAt: Date.now() + seconds * 1000 };
  }
}

export function credentialHint(host: string): string {
  if (host === 'ghcr.io')
    return 'set GITHUB_TOKEN (with packages: write to publish) or log in with docker login ghcr.io';
  return `log in with 'docker login ${host}' (orb reads ~/.docker/config.json), or give the username and password inputs`;
}
