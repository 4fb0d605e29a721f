import '../stores/schemes.js';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { defineCommand } from '../core/command.js';
import { UsageError } from '../core/errors.js';
import type { InputSpec, OutputSpec } from '../core/inputs.js';
import { formatBytes } from '../core/progress.js';
import { openStore, storeInputs } from '../stores/open.js';
import { Filler } from '../serve/fill.js';
import { LazyDisk } from '../serve/lazy-disk.js';
import { startNbdServer } from '../serve/nbd-server.js';
import { openDiskV2, storeFetcher } from '../serve/open-image.js';
import { accessInputs, storeOptions } from './publish.js';

const own: InputSpec[] = [
  {
    name: 'ref',
    type: 'string',
    required: true,
    positional: 0,
    description:
      'the chunked disk image to serve: oci://HOST[:PORT]/REPO:TAG, oci-layout:DIR:TAG, or any store orb pull reads',
  },
  {
    name: 'socket',
    type: 'string',
    description: 'Unix socket of the NBD export (default: <cache>.sock); only this user may connect',
  },
  {
    name: 'listen',
    type: 'string',
    description: 'serve NBD on 127.0.0.1:PORT (or another 127.x address) instead of a Unix socket',
  },
  {
    name: 'cache',
    type: 'string',
    description:
      'the local disk being filled (sparse raw; <cache>.partial and <cache>.state until complete); ' +
      'default: ~/.cache/orb/serve/<content digest>/disk.raw',
  },
  {
    name: 'export-name',
    type: 'string',
    default: 'disk',
    description: 'the NBD export name (clients asking for the empty name get it too)',
  },
  {
    name: 'fill',
    type: 'boolean',
    default: true,
    description: 'fetch the rest of the disk in the background (--no-fill: only what reads ask for)',
  },
  {
    name: 'limit-rate',
    type: 'integer',
    default: 0,
    min: 0,
    description: 'bytes per second the background fill may use (0: no limit); reads are never limited',
  },
  {
    name: 'retry-seconds',
    type: 'integer',
    default: 60,
    min: 1,
    max: 3600,
    description: 'how long a read waits for an unreachable store before it fails with an I/O error',
  },
  ...accessInputs,
];
const inputs = [...own, ...storeInputs('pull', own)];

const outputs: OutputSpec[] = [
  { name: 'socket', description: 'the Unix socket served (when not --listen)' },
  { name: 'listen', description: 'HOST:PORT served (with --listen)' },
  { name: 'export', description: 'the NBD export name' },
  { name: 'uri', description: 'the NBD URI clients connect to' },
  { name: 'virtual-size', description: 'disk size in bytes' },
  { name: 'content-digest', description: 'orb2 content digest of the disk' },
  { name: 'cache', description: 'the local disk (complete when `complete` is true)' },
  { name: 'bytes-fetched', description: 'compressed bytes fetched from the store by this run' },
  { name: 'bytes-local', description: 'disk bytes verified in the cache' },
  { name: 'complete', description: 'every block is local and verified: the cache is the whole disk' },
];

export default defineCommand({
  name: 'serve',
  title: 'Serve a published disk over NBD before it is downloaded: blocks fetched on demand, verified',
  description:
    'Exports the disk of a chunked image as a read-only NBD server (Unix socket or 127.0.0.1). A read of a block not yet ' +
    'local fetches its frame by Range, checks its sha256, stores it in a sparse local cache and answers; zero blocks cost ' +
    'nothing. The rest is fetched in the background (--limit-rate), and once complete the cache is the verified disk. ' +
    'Interrupted, it continues from what is local. Runs until SIGTERM/SIGINT.',
  action: false,
  jsonLines: true,
  usage: 'REF [--socket PATH | --listen 127.0.0.1:PORT] [--cache PATH]',
  inputs,
  outputs,
  async run(inp, ctx) {
    if (inp.has('socket') && inp.has('listen')) throw new UsageError('give --socket or --listen, not both');
    const listen = inp.has('listen') ? parseListen(inp.string('listen')) : undefined;
    const opened = await openStore(inp.string('ref'), storeOptions(inp, inputs, ctx));
    try {
      const img = await openDiskV2(opened.store, opened.tag ?? 'latest', opened.display);
      const cache = resolve(inp.optString('cache') ?? defaultCache(img.index.contentDigest));
      const disk = await LazyDisk.open({
        index: img.index,
        display: opened.display,
        cache,
        fetch: storeFetcher(opened.store, ctx.log),
        log: ctx.log,
        retryMs: inp.number('retry-seconds') * 1000,
      });
      try {
        const socket = listen ? undefined : resolve(inp.optString('socket') ?? `${cache}.sock`);
        const server = await startNbdServer({
          source: {
            size: disk.size,
            read: (offset, length, signal) => disk.read(offset, length, signal),
            status: (offset, length) => Promise.resolve(disk.status(offset, length)),
          },
          exportName: inp.string('export-name'),
          ...(socket ? { socket } : { listen: listen! }),
          log: ctx.log,
          signal: ctx.signal,
        });
        const where = socket ? { socket } : { listen: `${listen!.host}:${portOf(server.address)}` };
        const filler =
          inp.bool('fill') && !disk.complete
            ? new Filler(disk, { rate: inp.number('limit-rate') })
            : undefined;
        void filler?.start();
        ctx.log.info(
          `serving ${opened.display} (${formatBytes(disk.size)}, ${img.index.contentDigest}) at ${server.uri}; ` +
            `${formatBytes(disk.map.localBytes())} local${filler ? ', filling in the background' : ''}`,
        );
        ctx.emit?.({
          ...where,
          export: inp.string('export-name'),
          uri: server.uri,
          'virtual-size': disk.size,
          'content-digest': img.index.contentDigest,
          cache,
        });
        const progress = setInterval(() => {
          if (!disk.complete)
            ctx.log.info(
              `${formatBytes(disk.map.localBytes())} local, ${formatBytes(disk.stats.bytesFetched)} fetched`,
            );
        }, 30_000);
        progress.unref();
        await new Promise<void>((r) => {
          if (ctx.signal.aborted) r();
          ctx.signal.addEventListener('abort', () => r(), { once: true });
        });
        clearInterval(progress);
        filler?.stop();
        await server.close();
        await disk.close();
        ctx.summary.heading('serve').table(
          ['', ''],
          [
            ['image', `${opened.display} (${img.index.contentDigest})`],
            ['fetched', formatBytes(disk.stats.bytesFetched)],
            ['local', `${formatBytes(disk.map.localBytes())}${disk.complete ? ' (complete)' : ''}`],
            ['cache', disk.complete ? cache : `${cache}.partial`],
          ],
        );
        return {
          ...where,
          export: inp.string('export-name'),
          uri: server.uri,
          'virtual-size': disk.size,
          'content-digest': img.index.contentDigest,
          cache: disk.complete ? cache : `${cache}.partial`,
          'bytes-fetched': disk.stats.bytesFetched,
          'bytes-local': disk.map.localBytes(),
          complete: disk.complete,
        };
      } finally {
        await disk.close();
      }
    } finally {
      await opened.store.close?.();
    }
  },
});

function parseListen(v: string): { host: string; port: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d{1,5})$/.exec(v);
  if (!m) throw new UsageError(`--listen ${v}: expected 127.0.0.1:PORT`);
  return { host: m[1]!, port: Number(m[2]) };
}

function portOf(a: { socket: string } | { host: string; port: number }): number {
  return 'port' in a ? a.port : 0;
}

/** One folder per image under orb's cache, so two images never share a cache or a socket. */
function defaultCache(contentDigest: string, env: NodeJS.ProcessEnv = process.env): string {
  const base =
    env.ORB_CACHE_DIR ??
    (env.RUNNER_TOOL_CACHE
      ? join(env.RUNNER_TOOL_CACHE, 'orb')
      : join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'orb'));
  return join(
    base,
    'serve',
    contentDigest.slice('orb2:sha256:'.length, 'orb2:sha256:'.length + 16),
    'disk.raw',
  );
}
