import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

/**
 * The thread behind OrderedHasher (src/transfer/hasher.ts; bundled as dist/orb/hash-worker.js):
 * reads the assembled file back in order, segment by segment as the main thread says each one
 * has landed, and hashes zero gaps without reading them. Imports nothing of ours, so it stays one
 * small file in the bundle.
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

if (parentPort) {
  const port = parentPort;
  const step = createSegmentHasher((workerData as { path: string }).path);
  port.on('message', (m: HashMessage) => {
    const reply = step(m);
    if (reply) port.postMessage(reply);
  });
}
