import { defineCommand } from '../core/command.js';
import { benchInputs, benchOutputs, runBenchCommand } from '../image/bench/command.js';

export default defineCommand({
  name: 'bench',
  title: 'Measure compression methods on your own image and recommend one',
  description:
    'Compares qcow2+zstd, qcow2+zlib, raw.zst at several levels, the chunked format, xz and lz4 (where installed): size, ratio, ' +
    'compress and decompress MB/s, peak memory. Large images are measured on a sample drawn evenly from their data and the full ' +
    'size and time predicted (--full also runs the whole image and reports the prediction error). Recommends the method that gets ' +
    'the image to a client soonest at the stated bandwidth. The same runs as benchmark: true on the convert-and-compress action.',
  action: false,
  usage: '--input PATH [--bandwidth 100Mbit]',
  inputs: [
    {
      name: 'input',
      type: 'string',
      required: true,
      positional: 0,
      alias: 'i',
      description: 'disk image (any format qemu-img reads), orb manifest or chunked layout',
    },
    ...benchInputs,
  ],
  outputs: benchOutputs,
  run: (inp, ctx) => runBenchCommand(inp, ctx, inp.string('input')),
});
