import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { OrbError } from '../core/errors.js';
import { mask } from '../core/log.js';

/**
 * Where registry credentials come from, first match wins:
 *   1. explicit username/password (inputs `username`/`password`, env ORB_REGISTRY_USERNAME/PASSWORD)
 *   2. CI conventions: GITHUB_TOKEN for ghcr.io; CI_REGISTRY_USER/CI_REGISTRY_PASSWORD for the
 *      GitLab registry named by CI_REGISTRY (registry.gitlab.com when CI_REGISTRY is unset)
 *   3. docker `config.json` ($DOCKER_CONFIG or ~/.docker) and containers `auth.json`
 *      (REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers), including base64 `auth` fields,
 *      identity tokens and credential helpers (`credsStore`, `credHelpers`).
 * No credentials is fine: pulls from public repositories use anonymous tokens.
 */
export interface Credentials {
  username?: string;
  password?: string;
  /** OAuth2 refresh token (docker `identitytoken`) */
  identityToken?: string;
  /** a registry token to send as Bearer directly (docker `registrytoken`) */
  registryToken?: string;
  /** where they came from, for logs (never the secret) */
  source: string;
}

export interface CredentialOptions {
  username?: string | undefined;
  password?: string | undefined;
  env?: NodeJS.ProcessEnv;
  /** explicit docker config.json path (tests) */
  dockerConfig?: string;
}

interface DockerAuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
  registrytoken?: string;
}

interface DockerConfig {
  auths?: Record<string, DockerAuthEntry>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

function hostOf(value: string): string {
  return value.replace(/^[a-z]+:\/\//, '').replace(/\/.*$/, '');
}

/** Keys under which docker stores a registry's credentials. */
function candidateKeys(host: string): string[] {
  const keys = [host, `https://${host}`, `http://${host}`, `https://${host}/v1/`, `https://${host}/v2/`];
  if (host === 'docker.io' || host === 'registry-1.docker.io' || host === 'index.docker.io') {
    keys.push('https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io');
  }
  return keys;
}

function configFiles(env: NodeJS.ProcessEnv, explicit?: string): string[] {
  if (explicit) return [explicit];
  const files: string[] = [];
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE);
  files.push(join(env.DOCKER_CONFIG || join(env.HOME || homedir(), '.docker'), 'config.json'));
  if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  files.push(join(env.HOME || homedir(), '.config', 'containers', 'auth.json'));
  return files;
}

function readConfig(path: string): DockerConfig | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  try {
    return JSON.parse(text) as DockerConfig;
  } catch (err) {
    throw new OrbError('input', `${path} is not valid JSON: ${(err as Error).message}`, {
      hint: 'fix or remove the file (docker login rewrites it)',
    });
  }
}

function fromEntry(entry: DockerAuthEntry, source: string): Credentials | undefined {
  if (entry.identitytoken)
    return {
      identityToken: entry.identitytoken,
      ...(entry.username ? { username: entry.username } : {}),
      source,
    };
  if (entry.registrytoken) return { registryToken: entry.registrytoken, source };
  if (entry.username && entry.password) return { username: entry.username, password: entry.password, source };
  if (entry.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), source };
  }
  return undefined;
}

function fromHelper(helper: string, host: string, source: string): Credentials | undefined {
  const res = spawnSync(`docker-credential-${helper}`, ['get'], {
    input: host,
    encoding: 'utf8',
    timeout: 15_000,
  });
  if (res.error || res.status !== 0) return undefined;
  try {
    const out = JSON.parse(res.stdout) as { Username?: string; Secret?: string };
    if (!out.Secret) return undefined;
    // Helpers return "<token>" as the user name for identity tokens.
    if (out.Username === '<token>') return { identityToken: out.Secret, source };
    return { username: out.Username ?? '', password: out.Secret, source };
  } catch {
    return undefined;
  }
}

export function resolveCredentials(host: string, opts: CredentialOptions = {}): Credentials | undefined {
  const env = opts.env ?? process.env;
  const found = lookup(host, opts, env);
  mask(found?.password);
  mask(found?.identityToken);
  mask(found?.registryToken);
  return found;
}

function lookup(host: string, opts: CredentialOptions, env: NodeJS.ProcessEnv): Credentials | undefined {
  if (opts.password) {
    return {
      username: opts.username || 'orb',
      password: opts.password,
      source: 'the username/password inputs',
    };
  }
  const name = host.replace(/:443$/, '');
  if (name === 'ghcr.io' && env.GITHUB_TOKEN) {
    // GHCR accepts any user name with a token; the actor is what docker/login-action sends.
    return { username: env.GITHUB_ACTOR || 'orb', password: env.GITHUB_TOKEN, source: 'GITHUB_TOKEN' };
  }
  const gitlab = env.CI_REGISTRY ? hostOf(env.CI_REGISTRY) : 'registry.gitlab.com';
  if ((name === gitlab || host === gitlab) && env.CI_REGISTRY_USER && env.CI_REGISTRY_PASSWORD) {
    return {
      username: env.CI_REGISTRY_USER,
      password: env.CI_REGISTRY_PASSWORD,
      source: 'CI_REGISTRY_USER/CI_REGISTRY_PASSWORD',
    };
  }
  for (const file of configFiles(env, opts.dockerConfig)) {
    const config = readConfig(file);
    if (!config) continue;
    const keys = candidateKeys(host);
    const helper = keys.map((k) => config.credHelpers?.[k]).find(Boolean);
    if (helper) {
      const c = fromHelper(helper, host, `docker-credential-${helper}`);
      if (c) return c;
    }
    for (const [key, entry] of Object.entries(config.auths ?? {})) {
      if (!keys.includes(key) && hostOf(key) !== host) continue;
      const c = fromEntry(entry, file);
      if (c) return c;
    }
    if (config.credsStore) {
      const c = fromHelper(config.credsStore, host, `docker-credential-${config.credsStore}`);
      if (c) return c;
    }
  }
  return undefined;
}
