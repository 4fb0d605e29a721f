import { open, stat } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import { requireTool, run } from '../core/proc.js';
import { lastLines } from './tool-output.js';
import type { ImageInfo } from './disk.js';
import { isChunkedLayout, parseLayoutRef, readChunkedLayout } from './chunked/read.js';
import { qemuInfoName, qemuName, vetImage } from './untrusted.js';
export { qemuNameOf } from './untrusted.js';

export { INPUT_FORMATS, type InputFormat, type ImageInfo } from './disk.js';

interface QemuInfo {
  format?: string;
  'virtual-size'?: number;
  'actual-size'?: number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'dirty-flag'?: boolean;
  'format-specific'?: {
    type?: string;
    data?: { 'compression-type'?: string; 'create-type'?: string; encrypted?: boolean };
  };
  encrypted?: boolean;
}

/** Formats where `qemu-img check` can find truncation and corrupt metadata before we read. */
const CHECKABLE = new Set(['qcow2', 'vhdx', 'vdi', 'vmdk']);

export async function inspectImage(
  input: string,
  opts: { signal?: AbortSignal; check?: boolean; allow?: readonly string[] } = {},
): Promise<ImageInfo> {
  const { dir: path, tag } = parseLayoutRef(input);
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new OrbError(
      'input',
      `cannot read input ${path}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`,
      {
        hint: 'check the path (a previous stage may have failed to produce it)',
      },
    );
  });
  if (st.isDirectory()) {
    if (await isChunkedLayout(path)) {
      const img = await readChunkedLayout(path, tag);
      return {
        path,
        format: 'chunked',
        virtualSize: img.config.virtualSize,
        fileBytes: img.storedBytes,
        tag: img.tag,
        contentDigest: img.config.contentDigest,
        layout: img,
      };
    }
    throw new OrbError('input', `${path} is a directory, not a disk image or an orb chunked layout`, {
      hint: 'give a disk image file, an orb manifest (.orb.json) or a directory written by --format chunked',
    });
  }
  // Fail on unreadable files here, with the OS's reason, rather than deep inside qemu-img.
  try {
    const fh = await open(path, 'r');
    await fh.close();
  } catch (err) {
    throw new OrbError('input', `cannot read input ${path}: ${(err as Error).message}`, {
      hint: 'check the file permissions',
    });
  }
  // The header decides the format and which other files may be read; QEMU gets them pinned.
  const vetted = await vetImage(path, opts.allow ? { allow: opts.allow } : {});
  const name = qemuName(vetted);
  const qemuImg = requireTool('qemu-img', 'qemu-utils');
  // -U: do not take the image lock, so a converter can read an image that a stopped-but-not-
  // yet-reaped QEMU still holds; we only read.
  const res = await run(qemuImg, ['info', '-U', '--output=json', qemuInfoName(vetted)], {
    signal: opts.signal,
  });
  if (res.code !== 0) {
    throw new OrbError('input', `qemu-img cannot read ${path}: ${lastLines(res.stderr)}`, {
      hint: 'the file is not a disk image qemu-img understands, or it is damaged',
    });
  }
  let info: QemuInfo;
  try {
    info = JSON.parse(res.stdout) as QemuInfo;
  } catch {
    throw new OrbError('internal', `unexpected qemu-img info output for ${path}`);
  }
  const fmt = vetted.format;
  if (info.format !== fmt) {
    throw new OrbError('internal', `qemu-img read ${path} as ${info.format ?? '?'}, its header says ${fmt}`);
  }
  if (info.encrypted || info['format-specific']?.data?.encrypted) {
    throw new OrbError('input', `${path} is encrypted; orb cannot read encrypted images`);
  }
  const virtualSize = info['virtual-size'];
  if (typeof virtualSize !== 'number' || virtualSize <= 0) {
    throw new OrbError('input', `${path} reports no virtual size`, { hint: 'the image header is damaged' });
  }
  if (opts.check !== false && CHECKABLE.has(fmt)) await checkImage(qemuImg, path, name, opts.signal);
  const result: ImageInfo = { path, format: fmt, virtualSize, fileBytes: st.blocks * 512, qemu: name };
  if (vetted.external.length > 0) result.external = vetted.external;
  if (info['cluster-size']) result.clusterSize = info['cluster-size'];
  const ct = info['format-specific']?.data?.['compression-type'];
  if (ct) result.compressionType = ct;
  return result;
}

/** `qemu-img check` reads metadata only (seconds even for 150 GB) and finds truncated files. */
async function checkImage(qemuImg: string, path: string, name: string, signal?: AbortSignal): Promise<void> {
  const res = await run(qemuImg, ['check', '-U', name], { signal });
  // 0 clean, 3 leaked clusters only (wasted space, data intact), 63 check not supported
  if (res.code === 0 || res.code === 3 || res.code === 63) return;
  const detail = lastLines(res.stderr || res.stdout, 3);
  throw new OrbError('input', `${path} is damaged or truncated (qemu-img check found errors): ${detail}`, {
    hint: 'copy the image again from its source; if the copy was cut short, its end is missing',
  });
}
