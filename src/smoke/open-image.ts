import '../stores/schemes.js';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { trackPath } from '../core/cleanup.js';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { stageManifestPath } from '../core/stage-manifest-file.js';
import type { Progress } from '../core/progress.js';
import { knownSchemes, openStore, type StoreOptions } from '../stores/open.js';
import { pull } from '../transfer/pull.js';

/**
 * What `--image` names: a disk file (booted as it is, through an overlay), or a chunked layout or
 * published reference, which are pulled first (verified against their digests) into a temporary
 * directory that `dispose` removes.
 */
export interface ImageSource {
  kind: 'file' | 'layout' | 'reference';
  /** local disk image to boot */
  path: string;
  /** stage manifest that came with a pulled image */
  manifest?: string;
  /** what the user named, for messages */
  display: string;
  /** bytes fetched from the store to get it (pulled references) */
  bytesFetched?: number;
  dispose(): Promise<void>;
}

export interface SourceOptions {
  log: Logger;
  signal?: AbortSignal;
  progress(label: string, total?: number): Progress;
  /** access options for registries and stores (credentials, plain-http, S3 endpoint) */
  store: StoreOptions;
  /** where pulled images go (default RUNNER_TEMP or the temporary directory) */
  pullDir?: string;
}

const SCHEME_RE = /^[a-z][a-z0-9+.-]*:/;

export function looksLikeReference(text: string): boolean {
  return SCHEME_RE.test(text) && knownSchemes().some((s) => text.startsWith(s));
}

export async function resolveImageSource(text: string, opts: SourceOptions): Promise<ImageSource> {
  if (looksLikeReference(text))
    return pullImage(text, text.startsWith('oci-layout:') ? 'layout' : 'reference', opts);
  const path = resolve(text);
  const st = await stat(path).catch(() => undefined);
  if (!st) {
    throw new OrbError('input', `image ${text} does not exist`, {
      hint: `give a disk image file, oci-layout:DIR:TAG for a chunked layout, or a published reference (${knownSchemes()
        .map((s) => s + '...')
        .join(', ')})`,
    });
  }
  if (st.isDirectory()) {
    // A chunked layout written by convert-and-compress: pull its only (or 'latest') image.
    if (await stat(join(path, 'oci-layout')).catch(() => undefined))
      return pullImage(`oci-layout:${path}`, 'layout', opts);
    throw new OrbError('input', `image ${text} is a directory, not a disk image or an OCI layout`);
  }
  return { kind: 'file', path, display: text, dispose: async () => undefined };
}

async function pullImage(
  ref: string,
  kind: 'layout' | 'reference',
  opts: SourceOptions,
): Promise<ImageSource> {
  const root = opts.pullDir ?? (process.env.RUNNER_TEMP || tmpdir());
  await mkdir(root, { recursive: true });
  const dir = await mkdtemp(join(root, 'orb-smoke-pull-'));
  const tracked = trackPath(dir);
  const dispose = async () => {
    await rm(dir, { recursive: true, force: true });
    tracked.keep();
  };
  try {
    opts.log.info(
      `${kind === 'layout' ? 'unpacking the chunked layout' : 'pulling'} ${ref} for the smoke test`,
    );
    const opened = await openStore(ref, opts.store);
    try {
      const r = await pull({
        source: opened.store,
        ref: opened.tag ?? 'latest',
        display: opened.display,
        output: join(dir, 'image'),
        // disks come back as sparse raw; published files (a qcow2) as they were published
        format: 'auto',
        concurrency: 6,
        manifestPath: stageManifestPath(join(dir, 'image')),
        log: opts.log,
        progress: opts.progress,
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      return {
        kind,
        path: r.path,
        ...(r.manifestPath ? { manifest: r.manifestPath } : {}),
        display: opened.display,
        bytesFetched: r.bytesDownloaded,
        dispose,
      };
    } finally {
      await opened.store.close?.();
    }
  } catch (err) {
    await dispose();
    throw err;
  }
}
