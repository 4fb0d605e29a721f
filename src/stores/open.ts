import { UsageError } from '../core/errors.js';
import type { InputSpec, OutputSpec } from '../core/inputs.js';
import type { Logger } from '../core/log.js';
import type { BlobStore } from './store.js';

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
    `use one of: ${
      knownSchemes()
        .map((s) => s + '...')
        .join(', ') || '(no backends registered)'
    }`,
  );
}

/**
 * Inputs a backend adds to `orb publish` / `orb pull` (and their actions): declare them here at
 * import time (from the backend module or its line in schemes.ts); the commands append them to
 * their own declarations (the first declaration of a name wins) and pass every input value to
 * the factory in `StoreOptions.options`, keyed by input name.
 */
const extraInputs: { commands: readonly StoreCommand[]; spec: InputSpec }[] = [];
export type StoreCommand = 'publish' | 'pull';

export function registerStoreInputs(commands: readonly StoreCommand[], specs: readonly InputSpec[]): void {
  for (const spec of specs) extraInputs.push({ commands, spec });
}

/** Backend inputs for `command`, minus names in `taken` (the command's own inputs). */
export function storeInputs(command: StoreCommand, taken: readonly InputSpec[]): InputSpec[] {
  const names = new Set(taken.map((s) => s.name));
  const out: InputSpec[] = [];
  for (const { commands, spec } of extraInputs) {
    if (!commands.includes(command) || names.has(spec.name)) continue;
    names.add(spec.name);
    out.push(spec);
  }
  return out;
}

/** Outputs a backend adds (declared like inputs; values come from BlobStore.publishedOutputs()). */
const extraOutputs: { commands: readonly StoreCommand[]; spec: OutputSpec }[] = [];

export function registerStoreOutputs(commands: readonly StoreCommand[], specs: readonly OutputSpec[]): void {
  for (const spec of specs) extraOutputs.push({ commands, spec });
}

export function storeOutputs(command: StoreCommand, taken: readonly OutputSpec[]): OutputSpec[] {
  const names = new Set(taken.map((s) => s.name));
  const out: OutputSpec[] = [];
  for (const { commands, spec } of extraOutputs) {
    if (!commands.includes(command) || names.has(spec.name)) continue;
    names.add(spec.name);
    out.push(spec);
  }
  return out;
}
