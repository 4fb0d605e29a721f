import { OrbError } from '../core/errors.js';
import { partialOutput } from '../core/fsutil.js';
import type { Progress } from '../core/progress.js';
import { requireTool, run } from '../core/proc.js';

/**
 * The few qemu-img operations a build needs: new qcow2 disks, overlays on a finished layer, and
 * flattening a layer chain into one standalone image.
 */
function qemuImg(): string {
  return requireTool('qemu-img', 'qemu-utils');
}

export interface ImgInfo {
  format: string;
  virtualSize: number;
  actualSize: number;
  backing?: string;
}

export async function imgInfo(path: string, signal?: AbortSignal): Promise<ImgInfo> {
  const res = await run(qemuImg(), ['info', '--output=json', '-U', path], { signal, timeoutMs: 60_000 });
  if (res.code !== 0) {
    throw new OrbError(
      'input',
      `${path} is not a disk image qemu-img can read: ${res.stderr.trim().split('\n').pop() ?? ''}`,
    );
  }
  const j = JSON.parse(res.stdout) as {
    format: string;
    'virtual-size': number;
    'actual-size': number;
    'full-backing-filename'?: string;
  };
  return {
    format: j.format,
    virtualSize: j['virtual-size'],
    actualSize: j['actual-size'],
    backing: j['full-backing-filename'],
  };
}

/** An empty qcow2 of `bytes` virtual size: disk use follows the data written, not the size. */
export async function createQcow2(path: string, bytes: number, signal?: AbortSignal): Promise<void> {
  await run(qemuImg(), ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', path, String(bytes)], {
    check: true,
    signal,
  });
}

/** A qcow2 overlay whose unchanged clusters read through to `backing` (absolute path recorded). */
export async function createOverlay(
  path: string,
  backing: string,
  backingFormat: string,
  signal?: AbortSignal,
): Promise<void> {
  await run(qemuImg(), ['create', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', backing, path], {
    check: true,
    signal,
  });
}

export async function resizeImage(path: string, bytes: number, signal?: AbortSignal): Promise<void> {
  await run(qemuImg(), ['resize', '-q', path, String(bytes)], { check: true, signal });
}

/**
 * Copies `src` (a layer orb made, or the json: name of a vetted image, src/image/untrusted.ts;
 * with its whole backing chain) into one standalone image in `format`, written as
 * `.partial` and renamed when complete. Zero and unallocated clusters stay holes.
 */
export async function flatten(
  src: string,
  dest: string,
  format: 'qcow2' | 'raw',
  progress?: Progress,
  signal?: AbortSignal,
): Promise<void> {
  const out = await partialOutput(dest);
  // `convert -p` reports only "(42.00/100%)": a percentage, not bytes.
  progress?.setTotal(100, 'percent');
  try {
    const args = [
      'convert',
      '-p',
      '-O',
      format,
      ...(format === 'qcow2' ? ['-o', 'lazy_refcounts=off'] : []),
      src,
      out.partial,
    ];
    await run(qemuImg(), args, {
      check: true,
      signal,
      onStdout: (chunk) => {
        const m = /\((\d+(?:\.\d+)?)\/100%\)/g;
        let last: RegExpExecArray | null = null;
        for (let x = m.exec(chunk); x; x = m.exec(chunk)) last = x;
        if (last) progress?.set(Number(last[1]));
      },
    });
    await out.commit();
    progress?.done();
  } catch (err) {
    await out.abort();
    throw err;
  }
}
