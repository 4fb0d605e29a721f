import { BLOCK_SIZE, ContentRoot } from '../formats/disk-index.js';
import type { Progress } from '../core/progress.js';
import type { DiskReader } from './disk.js';
import { InOrder, scanDisk, type Unit } from './scan.js';
import { SlotPool, slotCount, type WorkerPool } from './workers.js';

const UNIT = 4 << 20;

/**
 * The chunked format's content identity (orb2 root, src/formats/disk-index.ts) of any readable
 * disk: only the data extents are read, their 32 KiB blocks are zero-tested and hashed in the
 * worker threads, and holes join the zero runs without being read. Cost follows the data.
 */
export async function diskContentRoot(
  reader: DiskReader,
  pool: WorkerPool,
  progress?: Progress,
  signal?: AbortSignal,
): Promise<string> {
  const root = new ContentRoot(reader.virtualSize);
  const order = new InOrder();
  const sink = {
    process: (u: Unit) =>
      order.sequence(
        u.index,
        u.hole
          ? undefined
          : pool.run({ task: 'blocks', sab: u.sab, off: 0, len: u.length, block: BLOCK_SIZE }),
        (r) => {
          const n = Math.ceil(u.length / BLOCK_SIZE);
          if (!r) return root.zeros(n);
          const zero = r.zero as Uint8Array;
          const digests = r.digests as Uint8Array;
          for (let i = 0; i < n; i++) {
            if (zero[i]) root.zeros(1);
            else root.block(digests.subarray(i * 32, i * 32 + 32));
          }
        },
      ),
  };
  await scanDisk({
    reader,
    unitSize: UNIT,
    slots: new SlotPool(slotCount(UNIT, pool.size), UNIT),
    sink,
    ...(progress ? { progress } : {}),
    ...(signal ? { signal } : {}),
  });
  progress?.done();
  return root.digest();
}
