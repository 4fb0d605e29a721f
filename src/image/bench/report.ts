import { UsageError } from '../../core/errors.js';
import { formatBytes, formatDuration } from '../../core/progress.js';

export interface Measure {
  inBytes: number;
  outBytes: number;
  compressSeconds: number;
  decompressSeconds: number;
  peakRss: number;
}

export interface MethodResult {
  id: string;
  label: string;
  data: Measure;
  zeros?: Measure;
  predicted: { outBytes: number; compressSeconds: number; decompressSeconds: number };
  full?: Measure & { sizeErrorPct: number; timeErrorPct: number };
  /** compress + transfer at `bandwidth` + decompress, predicted for the whole image */
  deliverySeconds: number;
  ratio: number;
  compressMBps: number;
  decompressMBps: number;
}

export interface BenchReport {
  input: string;
  inputFormat: string;
  virtualSize: number;
  dataBytes: number;
  zeroBytes: number;
  sampleBytes: number;
  /** false when the sample is all the data (the prediction is then a measurement) */
  sampled: boolean;
  bandwidth: number;
  methods: MethodResult[];
  skipped: { id: string; why: string }[];
  recommended: string;
  reason: string;
}

/** "100Mbit", "1Gbit/s", "1 Gbps", "50MB/s", "12.5MiB/s" → bytes per second. */
export function parseBandwidth(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)(bit|bps|b|B)(?:\/s|ps)?\s*$/.exec(text);
  if (!m || Number(m[1]) <= 0) {
    throw new UsageError(
      `bandwidth '${text}' is not valid`,
      'write it like 100Mbit, 1Gbit, 50MB/s or 12MiB/s',
    );
  }
  const power = { '': 0, k: 1, m: 2, g: 3, t: 4 }[m[2]!.toLowerCase()] ?? 0;
  const n = Number(m[1]) * (m[3] ? 1024 : 1000) ** power;
  // upper-case B means bytes; b, bit and bps mean bits
  return m[4] === 'B' ? n : n / 8;
}

export function formatBandwidth(bps: number): string {
  const bits = bps * 8;
  if (bits >= 1e9) return `${(bits / 1e9).toFixed(bits % 1e9 ? 1 : 0)} Gbit/s`;
  return `${(bits / 1e6).toFixed(bits % 1e6 ? 1 : 0)} Mbit/s`;
}

/**
 * The method that gets the image onto a client soonest: compress once + transfer at the stated
 * bandwidth + decompress. Ties within 5% go to the chunked format, which also makes every later
 * version cheaper to ship (only changed chunks travel).
 */
export function recommend(results: MethodResult[], bandwidth: number): { id: string; reason: string } {
  if (!results.length) return { id: '', reason: 'no method could be measured' };
  const sorted = [...results].sort((a, b) => a.deliverySeconds - b.deliverySeconds);
  let best = sorted[0]!;
  const chunked = results.find((r) => r.id === 'chunked');
  if (chunked && best.id !== 'chunked' && chunked.deliverySeconds <= best.deliverySeconds * 1.05)
    best = chunked;
  const parts = (r: MethodResult) =>
    `${secs(r.deliverySeconds)} (compress ${secs(r.predicted.compressSeconds)}, transfer ${formatBytes(r.predicted.outBytes)} in ${secs(
      r.predicted.outBytes / bandwidth,
    )}, decompress ${secs(r.predicted.decompressSeconds)})`;
  const runner = sorted.find((r) => r.id !== best.id);
  let reason = `at ${formatBandwidth(bandwidth)}, ${best.label} gets the image to a client in ${parts(best)}`;
  if (runner) reason += `; next: ${runner.label}, ${secs(runner.deliverySeconds)}`;
  if (best.id === 'chunked') reason += '. Later versions ship only their changed chunks.';
  else if (chunked)
    reason += `. chunked: ${secs(chunked.deliverySeconds)}, and later versions ship only changed chunks.`;
  return { id: best.id, reason };
}

/** seconds with a decimal below a minute: benchmark figures are often a few seconds */
const secs = (s: number) => (s < 60 ? `${s.toFixed(s < 10 ? 2 : 1)}s` : formatDuration(s));

const mb = (n: number) => (Number.isFinite(n) ? n.toFixed(n >= 100 ? 0 : 1) : '-');

export function tableRows(rep: BenchReport): { header: string[]; rows: string[][] } {
  const full = rep.methods.some((m) => m.full);
  const header = [
    'method',
    'sample ratio',
    'compress MB/s',
    'decompress MB/s',
    'peak RSS',
    rep.sampled ? 'predicted size' : 'size',
    rep.sampled ? 'predicted time' : 'time',
    `delivery at ${formatBandwidth(rep.bandwidth)}`,
  ];
  if (full) header.push('full size (err)', 'full time (err)');
  const rows = rep.methods.map((m) => {
    const row = [
      m.id === rep.recommended ? `**${m.label}**` : m.label,
      m.ratio.toFixed(2),
      mb(m.compressMBps),
      mb(m.decompressMBps),
      formatBytes(Math.max(m.data.peakRss, m.zeros?.peakRss ?? 0)),
      formatBytes(m.predicted.outBytes),
      secs(m.predicted.compressSeconds),
      secs(m.deliverySeconds),
    ];
    if (full) {
      row.push(
        m.full ? `${formatBytes(m.full.outBytes)} (${signed(m.full.sizeErrorPct)})` : '-',
        m.full ? `${secs(m.full.compressSeconds)} (${signed(m.full.timeErrorPct)})` : '-',
      );
    }
    return row;
  });
  return { header, rows };
}

const signed = (pct: number) => `${pct >= 0 ? '+' : ''}${pct.toFixed(1)}%`;

/** Plain-text table for the terminal. */
export function textTable(header: string[], rows: string[][]): string {
  const clean = (s: string) => s.replace(/\*\*/g, '');
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => clean(r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => clean(c).padEnd(widths[i]!)).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** Horizontal bars for terminals and markdown, where mermaid does not render. */
export function barChart(
  items: { label: string; value: number }[],
  unit: (v: number) => string,
  width = 40,
): string {
  const max = Math.max(...items.map((i) => i.value), 1e-9);
  const lw = Math.max(...items.map((i) => i.label.length));
  return items
    .map(
      (i) =>
        `${i.label.padEnd(lw)} ${'█'.repeat(Math.max(1, Math.round((i.value / max) * width)))} ${unit(i.value)}`,
    )
    .join('\n');
}

/** A mermaid xychart (GitHub renders it in job summaries) of delivery time per method. */
export function mermaidChart(rep: BenchReport): string {
  const ms = rep.methods;
  const q = (s: string) => `"${s.replace(/"/g, "'")}"`;
  return [
    'xychart-beta',
    `  title ${q(`Time to get the image to a client at ${formatBandwidth(rep.bandwidth)} (minutes)`)}`,
    `  x-axis [${ms.map((m) => q(m.id)).join(', ')}]`,
    '  y-axis "minutes"',
    `  bar [${ms.map((m) => (m.deliverySeconds / 60).toFixed(2)).join(', ')}]`,
  ].join('\n');
}

export function reportText(rep: BenchReport): string {
  const { header, rows } = tableRows(rep);
  const lines = [
    `${rep.input}: ${rep.inputFormat}, ${formatBytes(rep.virtualSize)} virtual, ${formatBytes(rep.dataBytes)} data; ` +
      (rep.sampled
        ? `measured on a ${formatBytes(rep.sampleBytes)} sample, full image predicted`
        : 'measured on all the data'),
    '',
    textTable(header, rows),
    '',
    barChart(
      rep.methods.map((m) => ({ label: m.id, value: m.deliverySeconds })),
      (v) => secs(v),
    ),
    '',
    `recommended: ${rep.recommended}: ${rep.reason}`,
  ];
  for (const s of rep.skipped) lines.push(`skipped ${s.id}: ${s.why}`);
  return lines.join('\n');
}
