/** The last few non-empty lines of a tool's output, for one-line error messages. */
export function lastLines(text: string, n = 2): string {
  const lines = text
    .trim()
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.slice(-n).join(' / ') || 'no details';
}
