import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';

/**
 * What `--image` names: a disk file (booted as it is, through an overlay), a chunked layout, or a
 * published reference (both turned into a local disk first). `dispose` removes what was made.
 */
export interface ImageSource {
  kind: 'file' | 'layout' | 'reference';
  /** local disk image to boot */
  path: string;
  /** manifest that came with it (pulled or unpacked), if any */
  manifest?: string;
  dispose(): Promise<void>;
}

const REFERENCE_RE = /^[a-z][a-z0-9+.-]*:\/\//;

export async function resolveImageSource(text: string, opts: { log: Logger; signal?: AbortSignal }): Promise<ImageSource> {
  void opts;
  const none = async () => undefined;
  if (text.startsWith('oci-layout:')) return unsupported(text, 'layout');
  if (REFERENCE_RE.test(text)) return unsupported(text, 'reference');
  const path = resolve(text);
  const st = await stat(path).catch(() => undefined);
  if (!st) {
    throw new OrbError('input', `image ${text} does not exist`, {
      hint: 'give a disk image file, oci-layout:DIR:TAG for a chunked layout, or a published reference such as oci://HOST/REPO:TAG',
    });
  }
  if (st.isDirectory()) {
    if (await stat(join(path, 'oci-layout')).catch(() => undefined)) return unsupported(text, 'layout');
    throw new OrbError('input', `image ${text} is a directory, not a disk image or an OCI layout`);
  }
  return { kind: 'file', path, dispose: none };
}

function unsupported(text: string, kind: 'layout' | 'reference'): never {
  throw new OrbError(
    'environment',
    kind === 'layout'
      ? `booting a chunked layout directly (${text}) is not available in this build`
      : `pulling ${text} before the smoke test is not available in this build`,
    { hint: "run 'orb pull' first and give the resulting disk file to --image" },
  );
}
