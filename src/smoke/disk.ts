import { open, stat } from 'node:fs/promises';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { OrbError } from '../core/errors.js';
import { requireTool, run, spawnTracked } from '../core/proc.js';
import { formatBytes } from '../core/progress.js';
import { DamagedImage, qemuInfoName, qemuName, vetImage } from '../image/untrusted.js';

/**
 * Everything we learn about a disk image before booting it, so that a corrupt or wrong file fails
 * with a clear message instead of as a mysterious boot timeout many minutes later.
 */
export interface DiskFacts {
  path: string;
  /** qemu-img's format name: raw, qcow2, vhdx, vmdk, ... */
  format: string;
  virtualSize: number;
  fileSize: number;
  /** the image's own backing file, when it has one (a qcow2 delta) */
  backing?: string;
  /** other files the image names that the user allowed (QEMU reads them as part of the disk) */
  external?: string[];
  /** the name QEMU opens the image by: format and every named file pinned (src/image/untrusted.ts) */
  qemu: string;
  /** partitioning seen in the first sector */
  partitioning: 'gpt' | 'mbr' | 'none';
  /** firmware the partitioning suggests: GPT disks boot UEFI, MBR disks BIOS */
  suggestedFirmware: 'bios' | 'uefi';
  /** qemu-img check result for formats with metadata (qcow2, vhdx, ...) */
  check?: 'clean' | 'leaks';
}

const COMPRESSED_MAGIC: [Buffer, string][] = [
  [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), 'zstd'],
  [Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), 'xz'],
  [Buffer.from([0x1f, 0x8b]), 'gzip'],
  [Buffer.from([0x04, 0x22, 0x4d, 0x18]), 'lz4'],
];

/** Formats whose metadata `qemu-img check` can verify. */
const CHECKABLE = new Set(['qcow2', 'qed', 'vdi', 'vhdx', 'parallels']);

function corrupt(path: string, why: string, hint?: string): OrbError {
  return new OrbError('input', `${path} is not a bootable disk image: ${why}`, {
    hint:
      hint ??
      'check that the file was copied or downloaded completely (compare its sha256 with the published digest), or rebuild it',
  });
}

interface QemuImgInfo {
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
}

/** qemu-img info, check and the first sector: a verdict in seconds, whatever the image size. */
export async function inspectDisk(
  path: string,
  signal?: AbortSignal,
  allow?: readonly string[],
): Promise<DiskFacts> {
  const abs = resolve(path);
  const st = await stat(abs).catch(() => undefined);
  if (!st)
    throw new OrbError('input', `image ${path} does not exist`, {
      hint: 'give the path of a disk image (raw or qcow2), or a published reference',
    });
  if (st.isDirectory())
    throw new OrbError('input', `image ${path} is a directory`, {
      hint: 'give a disk image file, or an oci-layout:DIR:TAG reference for a chunked layout',
    });
  if (!st.isFile() && !st.isBlockDevice()) throw new OrbError('input', `image ${path} is not a regular file`);
  if (st.isFile() && st.size === 0) throw corrupt(path, 'the file is empty');

  const head = Buffer.alloc(8);
  const fh = await open(abs, 'r');
  try {
    await fh.read(head, 0, 8, 0);
  } finally {
    await fh.close();
  }
  for (const [magic, name] of COMPRESSED_MAGIC) {
    if (head.subarray(0, magic.length).equals(magic)) {
      throw corrupt(
        path,
        `it is ${name}-compressed`,
        `decompress it first (for example 'zstd -d'), or give the chunked layout or published reference, which smoke-test unpacks itself`,
      );
    }
  }

  // Booting an image that names a host file would hand that file to the guest: the same gate as
  // convert, before QEMU opens anything.
  const vetted = await vetImage(abs, allow ? { allow } : {}).catch((err: unknown) => {
    throw err instanceof DamagedImage ? corrupt(path, err.reason) : err;
  });
  const name = qemuName(vetted);
  const qemuImg = requireTool('qemu-img', 'qemu-utils');
  // -U: only reading metadata; another reader holding the image (a running VM) must not stop us.
  const info = await run(qemuImg, ['info', '-U', '--output=json', qemuInfoName(vetted)], {
    signal,
    timeoutMs: 60_000,
  });
  if (info.code !== 0) {
    throw corrupt(
      path,
      `qemu-img cannot open it: ${info.stderr.trim().split('\n').pop() ?? `exit ${info.code}`}`,
    );
  }
  let parsed: QemuImgInfo;
  try {
    parsed = JSON.parse(info.stdout) as QemuImgInfo;
  } catch {
    throw new OrbError('internal', `unexpected qemu-img info output for ${path}`);
  }
  const format = vetted.format;
  const virtualSize = parsed['virtual-size'];
  if (!virtualSize) throw corrupt(path, 'its virtual size is 0');
  // A raw file whose size is not whole sectors is a truncated copy more often than not.
  if (format === 'raw' && st.isFile() && st.size % 512 !== 0) {
    throw corrupt(path, `its size (${st.size} bytes) is not a multiple of 512: likely a truncated copy`);
  }

  let check: DiskFacts['check'];
  if (CHECKABLE.has(format)) check = await checkMetadata(qemuImg, name, format, path, signal);

  const sector = await firstSector(qemuImg, abs, name, format, signal);
  if (sector.every((b) => b === 0)) {
    throw corrupt(
      path,
      'its first sector is empty (no boot loader, no partition table)',
      'this is a blank or wiped disk, or the wrong file',
    );
  }
  if (sector[510] !== 0x55 || sector[511] !== 0xaa) {
    throw corrupt(
      path,
      'its first sector has no boot signature (55 AA): no partition table and no boot loader',
      'this is not a whole-disk image (a partition or file-system image, or another file)',
    );
  }
  let partitioning: DiskFacts['partitioning'] = 'none';
  for (let i = 0; i < 4; i++) {
    const type = sector[446 + i * 16 + 4]!;
    if (type === 0xee) partitioning = 'gpt';
    else if (type !== 0 && partitioning === 'none') partitioning = 'mbr';
  }
  const backing = vetted.options.backing
    ? (parsed['full-backing-filename'] ?? parsed['backing-filename'])
    : undefined;
  return {
    path: abs,
    format,
    qemu: name,
    ...(vetted.external.length > 0 ? { external: vetted.external } : {}),
    virtualSize,
    fileSize: st.size,
    ...(backing ? { backing } : {}),
    partitioning,
    suggestedFirmware: partitioning === 'gpt' ? 'uefi' : 'bios',
    ...(check ? { check } : {}),
  };
}

/**
 * qemu-img check with bounded output: a badly damaged 150 GB image prints millions of
 * "Leaked cluster" lines; we keep the JSON summary and the first few ERROR lines.
 */
async function checkMetadata(
  qemuImg: string,
  name: string,
  format: string,
  shown: string,
  signal?: AbortSignal,
): Promise<'clean' | 'leaks'> {
  const child = spawnTracked(qemuImg, ['check', '-U', '--output=json', name], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  const errors: string[] = [];
  let partial = '';
  const onAbort = () => child.kill('SIGKILL');
  signal?.addEventListener('abort', onAbort, { once: true });
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    if (stdout.length < 64 * 1024) stdout += d;
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    const lines = (partial + d).split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) if (errors.length < 3 && /error|could not|cannot/i.test(l)) errors.push(l.trim());
    if (partial.length > 4096) partial = '';
  });
  const code = await new Promise<number | null>((res, rej) => {
    child.once('error', rej);
    child.once('close', (c) => res(c));
  }).finally(() => signal?.removeEventListener('abort', onAbort));
  if (signal?.aborted) throw new OrbError('interrupted', 'interrupted while checking the image');
  if (partial && errors.length < 3 && /error|could not|cannot/i.test(partial)) errors.push(partial.trim());
  // 0 clean, 3 leaked clusters only (harmless: wasted space), 2 corruptions, 1 could not check.
  if (code === 0) return 'clean';
  if (code === 3) return 'leaks';
  let counts = '';
  try {
    const j = JSON.parse(stdout) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
    counts = `${j.corruptions ?? 0} corruptions, ${j.leaks ?? 0} leaked clusters, ${j['check-errors'] ?? 0} check errors`;
  } catch {
    /* no summary: the errors say it */
  }
  const detail = [counts, ...errors].filter(Boolean).join('; ');
  throw corrupt(shown, `qemu-img check found its ${format} metadata damaged: ${detail || `exit ${code}`}`);
}

async function firstSector(
  qemuImg: string,
  abs: string,
  name: string,
  format: string,
  signal?: AbortSignal,
): Promise<Buffer> {
  if (format === 'raw') {
    const buf = Buffer.alloc(512);
    const fh = await open(abs, 'r');
    try {
      await fh.read(buf, 0, 512, 0);
    } finally {
      await fh.close();
    }
    return buf;
  }
  const dir = await mkdtemp(join(tmpdir(), 'orb-sector-'));
  try {
    const out = join(dir, 'sector.raw');
    const r = await run(qemuImg, ['dd', '-U', '-O', 'raw', 'bs=512', 'count=1', `if=${name}`, `of=${out}`], {
      signal,
      timeoutMs: 60_000,
    });
    if (r.code !== 0)
      throw corrupt(abs, `its first sector cannot be read: ${r.stderr.trim().split('\n').pop() ?? ''}`);
    const buf = await readFile(out);
    return buf.length >= 512 ? buf.subarray(0, 512) : Buffer.concat([buf, Buffer.alloc(512 - buf.length)]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A qcow2 overlay whose backing file is the image: the guest writes into the overlay, the image
 * is opened read-only by QEMU and never changes.
 */
export async function createOverlay(
  disk: DiskFacts,
  overlayPath: string,
  signal?: AbortSignal,
): Promise<void> {
  const qemuImg = requireTool('qemu-img', 'qemu-utils');
  // An image that names allowed files is the backing by its pinned json: name, so that QEMU opens
  // exactly those at boot; a self-contained one by its path (pinned by -F, names nothing).
  // -u with the size: qemu-img create would open the backing without its own backing node and
  // refuse the pinned options; QEMU opens the whole chain at boot.
  const backing = disk.external
    ? ['-u', '-b', disk.qemu, overlayPath, String(disk.virtualSize)]
    : ['-b', disk.path, overlayPath];
  const r = await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-F', disk.format, ...backing], {
    signal,
    timeoutMs: 60_000,
  });
  if (r.code !== 0) {
    throw new OrbError(
      'environment',
      `cannot create the overlay for ${basename(disk.path)}: ${r.stderr.trim()}`,
      {
        hint: 'the overlay lives in the temporary directory (TMPDIR); check that it is writable and has free space',
      },
    );
  }
}

export function describeDisk(d: DiskFacts): string {
  return `${basename(d.path)}: ${d.format}, ${formatBytes(d.virtualSize)} virtual, ${formatBytes(d.fileSize)} on disk, ${d.partitioning === 'none' ? 'no partition table' : d.partitioning.toUpperCase()}`;
}
