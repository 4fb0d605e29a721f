import { OrbError } from '../core/errors.js';
import { partialOutput } from '../core/fsutil.js';
import { requireTool, run } from '../core/proc.js';

/**
 * Small data ISOs (answer media, stage media, cloud-init seeds) made with xorriso. Joliet for
 * Windows, Rock Ridge for Linux guests; long Joliet names because script names can be long.
 */
export interface IsoOptions {
  /** volume label: Windows shows it, cloud-init's NoCloud looks for "cidata" */
  label: string;
  signal?: AbortSignal;
}

export async function makeDataIso(sourceDir: string, outPath: string, o: IsoOptions): Promise<void> {
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(o.label)) throw new OrbError('internal', `bad volume label ${o.label}`);
  const xorriso = requireTool('xorriso', 'xorriso');
  const out = await partialOutput(outPath);
  try {
    await run(
      xorriso,
      [
        '-as',
        'mkisofs',
        '-quiet',
        '-o',
        out.partial,
        '-V',
        o.label,
        '-J',
        '-joliet-long',
        '-r',
        '-iso-level',
        '3',
        sourceDir,
      ],
      { check: true, signal: o.signal, timeoutMs: 120_000 },
    );
    await out.commit();
  } catch (err) {
    await out.abort();
    throw err;
  }
}
