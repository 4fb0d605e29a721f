import { createRequire } from 'node:module';
import TreeSitter from '@vscode/tree-sitter-wasm';
import { create } from 'xmlbuilder2';

/**
 * A real PowerShell parser for the tests: the tree-sitter PowerShell grammar, compiled to WASM and
 * run by web-tree-sitter (both shipped in @vscode/tree-sitter-wasm, so `npm ci` needs no compiler
 * and downloads nothing at install time). Plus the layers Windows peels off a command line before
 * PowerShell sees it: XML entities (autounattend.xml), cmd.exe's quotes and carets, the C runtime's
 * argument splitting, and powershell.exe's own -Command / -EncodedCommand handling.
 */

export interface SyntaxProblem {
  /** 1-based */
  line: number;
  /** 1-based */
  column: number;
  kind: 'error' | 'missing' | 'unclosed';
  /** the token tree-sitter expected but did not find (MISSING), or the one left open */
  expected?: string;
  sourceLine: string;
}

type Parser = InstanceType<typeof TreeSitter.Parser>;
type SyntaxNode = InstanceType<typeof TreeSitter.Node>;

let parser: Promise<Parser> | undefined;

async function load(): Promise<Parser> {
  await TreeSitter.Parser.init();
  const require = createRequire(import.meta.url);
  const wasm = require.resolve('@vscode/tree-sitter-wasm/wasm/tree-sitter-powershell.wasm');
  const language = await TreeSitter.Language.load(wasm);
  const p = new TreeSitter.Parser();
  p.setLanguage(language);
  return p;
}

/** Every ERROR and MISSING node in the script; empty when it parses cleanly. */
export async function powershellSyntaxProblems(script: string): Promise<SyntaxProblem[]> {
  parser ??= load();
  const tree = (await parser).parse(script);
  if (!tree) throw new Error('tree-sitter returned no tree');
  const lines = script.split(/\r?\n/);
  const problems: SyntaxProblem[] = [];
  const seen = new Set<string>();
  const report = (node: SyntaxNode, kind: SyntaxProblem['kind'], expected?: string): void => {
    const { row, column } = node.startPosition;
    const key = `${row}:${column}:${kind}`;
    if (seen.has(key)) return;
    seen.add(key);
    problems.push({
      line: row + 1,
      column: column + 1,
      kind,
      ...(expected !== undefined ? { expected } : {}),
      sourceLine: lines[row] ?? '',
    });
  };
  const visit = (node: SyntaxNode, insideError: boolean): void => {
    if (node.isMissing) report(node, 'missing', node.type);
    if (node.isError) {
      // tree-sitter's recovery often starts the ERROR node far above the mistake (at the enclosing
      // function); a bracket it holds open points at the line that actually broke. The ERROR
      // nodes nested in it are the same mistake's aftermath.
      if (!insideError) report(node, 'error');
      for (const open of unclosed(node)) report(open, 'unclosed', open.type);
    }
    for (const child of node.children) if (child) visit(child, insideError || node.isError);
  };
  visit(tree.rootNode, false);
  // Belt and braces: hasError also covers anything the walk above could not attribute.
  if (!problems.length && tree.rootNode.hasError) {
    problems.push({ line: 1, column: 1, kind: 'error', sourceLine: lines[0] ?? '' });
  }
  tree.delete();
  return problems;
}

const PAIRS: Record<string, string> = { '{': '}', '(': ')', '[': ']', '@(': ')', '$(': ')', '@{': '}' };

/** Opening brackets among an ERROR node's own tokens that no token after them closes. */
function unclosed(error: SyntaxNode): SyntaxNode[] {
  const stack: SyntaxNode[] = [];
  for (const c of error.children) {
    if (!c || c.childCount) continue;
    if (c.type in PAIRS) stack.push(c);
    else if (stack.length && PAIRS[stack[stack.length - 1]!.type] === c.type) stack.pop();
  }
  return stack;
}

/** "line 12, col 5: missing '}'" with the line and a caret: what a failing test prints. */
export function formatProblems(name: string, problems: readonly SyntaxProblem[], max = 8): string {
  const more = problems.length > max ? `\n(and ${problems.length - max} more)` : '';
  return (
    problems
      .slice(0, max)
      .map((p) => {
        const what =
          p.kind === 'missing'
            ? `missing '${p.expected ?? '?'}'`
            : p.kind === 'unclosed'
              ? `'${p.expected ?? '?'}' never closed`
              : 'syntax error';
        return (
          `${name}:${p.line}:${p.column}: ${what}\n` +
          `  ${p.sourceLine}\n  ${' '.repeat(Math.max(0, p.column - 1))}^`
        );
      })
      .join('\n') + more
  );
}

/**
 * How the C runtime (and CommandLineToArgvW, which powershell.exe uses) splits a Windows command
 * line: whitespace separates arguments outside quotes; 2n backslashes before a quote give n and
 * the quote toggles quoting; 2n+1 give n and a literal quote; other backslashes are literal; `""`
 * inside quotes is one literal quote.
 */
export function splitWindowsCommandLine(line: string): string[] {
  const args: string[] = [];
  let cur = '';
  let inArg = false;
  let quoted = false;
  for (let i = 0; i < line.length;) {
    const ch = line[i]!;
    if (ch === '\\') {
      let n = 0;
      while (line[i] === '\\') {
        n++;
        i++;
      }
      inArg = true;
      if (line[i] === '"') {
        cur += '\\'.repeat(Math.floor(n / 2));
        if (n % 2) {
          cur += '"';
          i++;
        }
      } else {
        cur += '\\'.repeat(n);
      }
      continue;
    }
    if (ch === '"') {
      inArg = true;
      if (quoted && line[i + 1] === '"') {
        cur += '"';
        i += 2;
        continue;
      }
      quoted = !quoted;
      i++;
      continue;
    }
    if ((ch === ' ' || ch === '\t') && !quoted) {
      if (inArg) args.push(cur);
      cur = '';
      inArg = false;
      i++;
      continue;
    }
    cur += ch;
    inArg = true;
    i++;
  }
  if (inArg) args.push(cur);
  return args;
}

/**
 * What `cmd.exe /c REST` hands to CreateProcess: with a leading quote, cmd removes that quote and
 * the last one on the line (its documented /S behaviour, and what it does for most lines without
 * /S), then a caret outside quotes escapes the next character.
 */
export function cmdLayer(rest: string): string {
  let s = rest.trim();
  if (s.startsWith('"')) {
    const last = s.lastIndexOf('"');
    s = last > 0 ? s.slice(1, last) + s.slice(last + 1) : s.slice(1);
  }
  let out = '';
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === '"') quoted = !quoted;
    if (ch === '^' && !quoted && i + 1 < s.length) {
      out += s[++i];
      continue;
    }
    out += ch;
  }
  return out;
}

function exeName(arg: string): string {
  return (arg.split(/[\\/]/).pop() ?? '').toLowerCase().replace(/\.exe$/, '');
}

/** `-co` matches -Command: powershell.exe accepts any unambiguous prefix, with - or /. */
function isParam(arg: string, full: string, shortest: number): boolean {
  const m = /^[-/]([A-Za-z]+)$/.exec(arg);
  if (!m) return false;
  const name = m[1]!.toLowerCase();
  return name.length >= shortest && full.startsWith(name);
}

// powershell.exe parameters that take a value, so the value is not mistaken for the command.
const VALUE_PARAMS: [string, number][] = [
  ['executionpolicy', 2],
  ['windowstyle', 1],
  ['inputformat', 2],
  ['outputformat', 1],
  ['version', 1],
  ['psconsolefile', 2],
  ['configurationname', 4],
  ['workingdirectory', 2],
];

export interface PowerShellInvocation {
  how: 'command' | 'encoded' | 'file';
  /** the PowerShell text (-Command, decoded -EncodedCommand) or the -File path */
  text: string;
}

/**
 * The PowerShell a process command line runs, peeling `cmd /c` first; undefined when the line
 * does not start powershell.exe or pwsh.
 */
export function powershellFromCommandLine(line: string): PowerShellInvocation | undefined {
  const argv = splitWindowsCommandLine(line);
  const exe = exeName(argv[0] ?? '');
  if (exe === 'cmd') {
    const m = /^\s*(?:"[^"]*"|\S+)((?:\s+\/[a-bd-jl-z]\S*)*)\s+\/[ck]\s+(.*)$/is.exec(line);
    return m ? powershellFromCommandLine(cmdLayer(m[2]!)) : undefined;
  }
  if (exe !== 'powershell' && exe !== 'pwsh') return undefined;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (isParam(a, 'command', 1)) return { how: 'command', text: argv.slice(i + 1).join(' ') };
    if (isParam(a, 'encodedcommand', 1) || /^[-/]ec$/i.test(a)) {
      return { how: 'encoded', text: Buffer.from(argv[i + 1] ?? '', 'base64').toString('utf16le') };
    }
    if (isParam(a, 'file', 1)) return { how: 'file', text: argv[i + 1] ?? '' };
    if (VALUE_PARAMS.some(([full, n]) => isParam(a, full, n))) {
      i++;
      continue;
    }
    // powershell.exe treats the first argument that is not a parameter as the start of -Command.
    if (!a.startsWith('-') && !a.startsWith('/')) return { how: 'command', text: argv.slice(i).join(' ') };
  }
  return undefined;
}

/** `-EncodedCommand` takes base64 of UTF-16LE text. */
export function encodeCommand(script: string): string {
  return Buffer.from(script, 'utf16le').toString('base64');
}

export interface AnswerFileCommand {
  /** RunSynchronousCommand or SynchronousCommand, with its pass */
  where: string;
  /** the command line as Windows reads it, XML entities decoded */
  commandLine: string;
}

type El = {
  localName?: string;
  nodeType: number;
  textContent: string | null;
  parentNode: El | null;
  childNodes: Iterable<El>;
};

/** Every command line an answer file runs (RunSynchronous Path, FirstLogonCommands CommandLine). */
export function answerFileCommands(xml: string): AnswerFileCommand[] {
  const doc = create(xml).node as unknown as El;
  const out: AnswerFileCommand[] = [];
  const passOf = (e: El): string => {
    for (let p: El | null = e; p; p = p.parentNode) {
      if (p.localName === 'settings') {
        const attr = (p as unknown as { getAttribute(n: string): string | null }).getAttribute('pass');
        return attr ?? '?';
      }
    }
    return '?';
  };
  const walk = (e: El): void => {
    const parent = e.parentNode?.localName;
    const isCommand =
      (e.localName === 'Path' && parent === 'RunSynchronousCommand') ||
      (e.localName === 'CommandLine' && parent === 'SynchronousCommand');
    if (e.nodeType === 1 && isCommand) {
      out.push({ where: `${passOf(e)}/${parent}`, commandLine: e.textContent ?? '' });
    }
    for (const c of e.childNodes) walk(c);
  };
  walk(doc);
  return out;
}
