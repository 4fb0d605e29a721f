import type { Logger } from '../core/log.js';
import type { Progress } from '../core/progress.js';
import type { RetryPolicy } from '../net/retry.js';
import type { DiskIndex } from '../formats/disk-index.js';
import type { Descriptor } from '../formats/oci-media.js';
import type { BlobStore } from '../stores/store.js';
import type { BlockPool } from './block-pool.js';
import type { Base } from './pull-base.js';
import type { Journal } from './pull-journal.js';

/** What the steps of a v2 disk pull share (src/transfer/pull-disk.ts and pull-from-base.ts). */
export interface DiskPullContext {
  store: BlobStore;
  display: string;
  index: DiskIndex;
  packs: Descriptor[];
  pool: BlockPool;
  journal: Journal;
  base?: Base | undefined;
  /** the base is the output device itself: blocks found in place are not written again */
  inPlace: boolean;
  concurrency: number;
  retry: RetryPolicy;
  log: Logger;
  progress(label: string, total?: number): Progress;
  signal?: AbortSignal | undefined;
  memoryBudget: number;
}
