import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Inputs, Outputs, RunContext } from '../../core/command.js';
import type { InputSpec, OutputSpec } from '../../core/inputs.js';
import { formatBytes } from '../../core/progress.js';
import { METHOD_IDS } from './methods.js';
import { barChart, mermaidChart, parseBandwidth, reportText, tableRows } from './report.js';
import { runBench } from './run.js';

/** Inputs shared by `orb bench` and `benchmark: true` on convert-and-compress. */
export const benchInputs: InputSpec[] = [
  {
    name: 'sample-size',
    type: 'size',
    default: '256M',
    min: 4 << 20,
    description: 'bench: bytes of data sampled evenly from the image (the whole data if smaller)',
  },
  {
    name: 'bandwidth',
    type: 'string',
    default: '100Mbit',
    description: 'bench: link speed to clients for the recommendation (100Mbit, 1Gbit, 50MB/s)',
  },
  {
    name: 'methods',
    type: 'list',
    description: `bench: methods to compare (default all installed): ${METHOD_IDS.join(', ')}`,
  },
  {
    name: 'full',
    type: 'boolean',
    default: false,
    description: 'bench: also run every method on the whole image and report the prediction error',
  },
  {
    name: 'report',
    type: 'string',
    default: 'orb-bench.json',
    description: 'bench: where to write the JSON report',
  },
  {
    name: 'threads',
    type: 'integer',
    min: 1,
    max: 256,
    description: 'compression threads (default: all cores)',
  },
];

export const benchOutputs: OutputSpec[] = [
  {
    name: 'recommended',
    description: 'bench: the method that gets the image to a client soonest at the stated bandwidth',
  },
  { name: 'recommendation', description: 'bench: why, with the numbers' },
  { name: 'report', description: 'bench: path of the JSON report' },
];

export async function runBenchCommand(inp: Inputs, ctx: RunContext, input: string): Promise<Outputs> {
  const bandwidth = parseBandwidth(inp.string('bandwidth'));
  const rep = await runBench({
    input,
    sampleBytes: inp.number('sample-size'),
    bandwidth,
    methods: inp.list('methods'),
    full: inp.bool('full'),
    threads: inp.optNumber('threads'),
    log: ctx.log,
    signal: ctx.signal,
  });
  const reportPath = resolve(inp.string('report'));
  await writeFile(reportPath, JSON.stringify(rep, null, 2) + '\n');
  // the table goes to stderr in the CLI (stdout carries the result); to the log in Actions
  ctx.log.info('\n' + reportText(rep));
  const { header, rows } = tableRows(rep);
  ctx.summary
    .heading(`orb bench: ${input}`)
    .text(
      `${formatBytes(rep.virtualSize)} virtual, ${formatBytes(rep.dataBytes)} data. ` +
        (rep.sampled
          ? `Measured on a ${formatBytes(rep.sampleBytes)} sample drawn evenly from the data; full-image figures are predictions.`
          : 'Measured on all the data.'),
    )
    .table(header, rows)
    .code(mermaidChart(rep), 'mermaid')
    .code(
      barChart(
        rep.methods.map((m) => ({ label: m.id, value: m.deliverySeconds / 60 })),
        (v) => `${v.toFixed(1)} min`,
      ),
    )
    .text(`**Recommended: ${rep.recommended}**: ${rep.reason}`);
  return { recommended: rep.recommended, recommendation: rep.reason, report: reportPath };
}
