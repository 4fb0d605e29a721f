import { UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { BlobStore } from './types.js';

/**
 * Target and source references by scheme: `oci://HOST/REPO:TAG`, `oci-layout:DIR:TAG`,
 * `s3://BUCKET/PREFIX`, `gitlab://PROJECT/PACKAGE/VERSION`, `github-release://OWNER/REPO/TAG`,
 * `https://...`. Each backend module registers its scheme(s) in `schemes.ts`.
 */
export interface StoreOptions {
  log: Logger;
  signal?: AbortSignal;
  /** backend-specific options from command inputs (plain-http, s3-endpoint, tokens, ...) */
  options: Record<string, string | number | boolean | undefined>;
}

export interface OpenedStore {
  store: BlobStore;
  /** the tag or version the reference names, when it names one */
  tag?: string;
  /** the reference without secrets, for logs and outputs */
  display: string;
}

export type StoreFactory = (ref: string, opts: StoreOptions) => Promise<OpenedStore>;

const factories = new Map<string, StoreFactory>();

export function registerScheme(prefix: string, factory: StoreFactory): void {
  factories.set(prefix, factory);
}

export function knownSchemes(): string[] {
  return [...factories.keys()];
}

export async function openStore(ref: string, opts: StoreOptions): Promise<OpenedStore> {
  for (const [prefix, factory] of factories) {
    if (ref.startsWith(prefix)) return factory(ref, opts);
  }
  throw new UsageError(
    `unsupported reference '${ref}'`,
    `use one of: ${knownSchemes().map((s) => s + '...').join(', ') || '(no backends registered)'}`,
  );
}
