import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { createBlockOps, type BlockOp, type BlockWorkerData } from './block-ops.js';

/**
 * Two kinds of thread (bundled as dist/orb/hash-worker.js):
 *  - behind OrderedHasher (src/transfer/hasher.ts, file artifacts): reads the assembled file
 *    back in order, segment by segment as the main thread says each one has landed, and hashes
 *    zero gaps without reading them;
 *  - behind BlockPool (src/transfer/block-pool.ts, v2 disks; workerData.mode 'blocks'): decodes
 *    and verifies frames and base blocks and writes them into the output (block-ops.ts).
 */
export type HashMessage =
  { type: 'file'; offset: number; length: number } | { type: 'zeros'; length: number } | { type: 'end' };

export type HashReply = { digest: string } | { error: string };

const BUF = 4 << 20;

export function createSegmentHasher(path: string): (m: HashMessage) => HashReply | undefined {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(BUF);
  const zeros = Buffer.alloc(BUF);
  let fd: number | undefined;
  return (m) => {
    try {
      if (m.type === 'file') {
        fd ??= openSync(path, 'r');
        let left = m.length;
        let pos = m.offset;
        while (left > 0) {
          const n = readSync(fd, buf, 0, Math.min(left, buf.length), pos);
          if (n === 0) throw new Error(`file ended at ${pos}`);
          hash.update(n === buf.length ? buf : buf.subarray(0, n));
          left -= n;
          pos += n;
        }
      } else if (m.type === 'zeros') {
        for (let left = m.length; left > 0;) {
          const n = Math.min(left, zeros.length);
          hash.update(n === zeros.length ? zeros : zeros.subarray(0, n));
          left -= n;
        }
      } else {
        if (fd !== undefined) closeSync(fd);
        fd = undefined;
        return { digest: 'sha256:' + hash.digest('hex') };
      }
    } catch (e) {
      return { error: e instanceof Error ? e.message : String(e) };
    }
    return undefined;
  };
}

if (parentPort && (workerData as { mode?: string }).mode === 'blocks') {
  const port = parentPort;
  const ops = createBlockOps(workerData as BlockWorkerData);
  port.on('message', (msg: { id: number; m: BlockOp } | { close: true }) => {
    if ('close' in msg) {
      ops.close();
      port.postMessage({ closed: true });
      return;
    }
    try {
      const r = ops.run(msg.m);
      const transfer =
        r.op === 'base'
          ? [r.matched.buffer as ArrayBuffer, ...(r.digests ? [r.digests.buffer as ArrayBuffer] : [])]
          : [];
      port.postMessage({ id: msg.id, r }, transfer);
    } catch (e) {
      port.postMessage({ id: msg.id, error: e instanceof Error ? e.message : String(e) });
    }
  });
} else if (parentPort) {
  const port = parentPort;
  const step = createSegmentHasher((workerData as { path: string }).path);
  port.on('message', (m: HashMessage) => {
    const reply = step(m);
    if (reply) port.postMessage(reply);
  });
}
