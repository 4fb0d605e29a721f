import '../stores/schemes.js';
import { defineCommand } from '../core/command.js';
import type { InputSpec } from '../core/inputs.js';
import { formatBytes } from '../core/progress.js';
import { isLocalInput, localContentDigest, storeContentDigest, type DigestResult } from '../image/digest.js';
import { openStore, storeInputs } from '../stores/open.js';
import { accessInputs, storeOptions } from './publish.js';

const own: InputSpec[] = [
  {
    name: 'ref',
    type: 'string',
    required: true,
    positional: 0,
    description:
      'a disk file (raw, qcow2, vhdx, vmdk, ...), a chunked layout (DIR or oci-layout:DIR:TAG) or a published image (oci://HOST/REPO:TAG, s3://..., ...)',
  },
  {
    name: 'threads',
    type: 'integer',
    min: 1,
    max: 256,
    description: 'hashing threads for a disk file (default: all cores)',
  },
  ...accessInputs,
];
const inputs = [...own, ...storeInputs('pull', own)];

export default defineCommand({
  name: 'digest',
  title:
    "Print a disk's content digest (orb2 root), the same for a raw disk, its qcow2, its chunked layout and the pulled disk",
  description:
    'The content identity of the chunked format: a sha256 root over the 32 KiB block digests and zero runs (docs/chunked-format-v2.md, ' +
    '"Content identity"). For a disk file only the data extents are read and hashed on all cores; holes cost nothing. For a layout or ' +
    'a published image, the index is checked and its root printed: only the manifest, the config and the index are read.',
  action: false,
  usage: 'FILE_OR_REF [--json]',
  inputs,
  outputs: [
    { name: 'content-digest', description: 'orb2:sha256:<hex>' },
    { name: 'virtual-size', description: 'disk size in bytes' },
    { name: 'source', description: 'disk (a file was hashed), layout or store (an index was read)' },
  ],
  async run(inp, ctx) {
    const ref = inp.string('ref');
    let r: DigestResult;
    if (await isLocalInput(ref)) {
      r = await localContentDigest(ref, {
        ...(inp.optNumber('threads') ? { threads: inp.number('threads') } : {}),
        progress: (label, total) => ctx.progress(label, total),
        signal: ctx.signal,
      });
    } else {
      const opened = await openStore(ref, storeOptions(inp, inputs, ctx));
      try {
        r = await storeContentDigest(opened);
      } finally {
        await opened.store.close?.();
      }
    }
    ctx.log.info(
      r.kind === 'disk'
        ? `read ${formatBytes(r.readBytes)} of data of a ${formatBytes(r.virtualSize)} disk`
        : `read the index (${formatBytes(r.readBytes)}) of a ${formatBytes(r.virtualSize)} disk`,
    );
    return { 'content-digest': r.contentDigest, 'virtual-size': r.virtualSize, source: r.kind };
  },
});
