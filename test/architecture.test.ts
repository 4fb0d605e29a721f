import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, posix, relative } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helpers/cli.js';

/**
 * The layers of docs/architecture.md, kept true: every import in src/ (type-only ones too, since
 * they tie files together for a reader as much as for the compiler) points one way between
 * folders, src/formats/ imports nothing of ours, no file imports itself through others, and the
 * document names exactly the folders that exist.
 */
const SRC = join(ROOT, 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir)
    .sort()
    .flatMap((n) => {
      const p = join(dir, n);
      if (statSync(p).isDirectory()) return sourceFiles(p);
      return p.endsWith('.ts') ? [p] : [];
    });
}

/** Relative specifiers of one file: import/export ... from, import type, import(), `import('x').T`, new URL('./x', import.meta.url). */
function specifiers(path: string): string[] {
  const sf = ts.createSourceFile(path, readFileSync(path, 'utf8'), ts.ScriptTarget.Latest, true);
  const out: string[] = [];
  const str = (n: ts.Node | undefined): n is ts.StringLiteralLike =>
    !!n && (ts.isStringLiteral(n) || ts.isNoSubstitutionTemplateLiteral(n));
  const visit = (n: ts.Node): void => {
    if ((ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) && str(n.moduleSpecifier)) {
      out.push(n.moduleSpecifier.text);
    } else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument) && str(n.argument.literal)) {
      out.push(n.argument.literal.text);
    } else if (
      ts.isCallExpression(n) &&
      n.expression.kind === ts.SyntaxKind.ImportKeyword &&
      str(n.arguments[0])
    ) {
      out.push(n.arguments[0].text);
    } else if (
      ts.isNewExpression(n) &&
      n.expression.getText(sf) === 'URL' &&
      str(n.arguments?.[0]) &&
      n.arguments?.[1]?.getText(sf) === 'import.meta.url'
    ) {
      out.push(n.arguments[0].text);
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out.filter((s) => s.startsWith('./') || s.startsWith('../'));
}

/** src-relative path of every file and the src-relative paths it imports. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const abs of sourceFiles(SRC)) {
    const from = relative(SRC, abs).split('\\').join('/');
    const to = specifiers(abs).map((s) =>
      posix.normalize(posix.join(posix.dirname(from), s)).replace(/\.js$/, '.ts'),
    );
    graph.set(from, to);
  }
  return graph;
}

/** The layer a file belongs to: its top folder under src/ (subfolders belong to their parent). */
const folderOf = (file: string): string => (file.includes('/') ? file.slice(0, file.indexOf('/')) : '.');

/** Strongly connected components with more than one file (Tarjan). */
function cycles(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) found.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

describe('architecture: layers that only point down', () => {
  const graph = importGraph();
  const edges = [...graph].flatMap(([from, tos]) => tos.map((to) => [from, to] as const));

  it('parses the imports it is meant to check', () => {
    expect(graph.size).toBeGreaterThan(100);
    expect(edges.length).toBeGreaterThan(300);
    // every import resolves to a file that exists (else the checks below would miss edges)
    const missing = edges.filter(([, to]) => !graph.has(to) && !to.endsWith('.json'));
    expect(missing).toEqual([]);
  });

  it('no two folders import each other', () => {
    const between = new Map<string, string[]>();
    for (const [from, to] of edges) {
      const a = folderOf(from);
      const b = folderOf(to);
      if (a === b) continue;
      const key = `${a} -> ${b}`;
      between.set(key, [...(between.get(key) ?? []), `${from} -> ${to}`]);
    }
    const twoWay: string[] = [];
    for (const [key, list] of between) {
      const [a, b] = key.split(' -> ') as [string, string];
      const back = between.get(`${b} -> ${a}`);
      // a few edges each way are enough to see which one points up
      if (back && a < b)
        twoWay.push(`${a} <-> ${b}: ${[...list.slice(0, 3), ...back.slice(0, 3)].join(', ')}`);
    }
    expect(twoWay).toEqual([]);
  });

  it('src/formats/ imports nothing of ours', () => {
    const out = edges.filter(([from, to]) => folderOf(from) === 'formats' && folderOf(to) !== 'formats');
    expect(out).toEqual([]);
  });

  it('no file imports itself through others', () => {
    expect(cycles(graph)).toEqual([]);
  });
});

describe('architecture: docs/architecture.md', () => {
  const doc = readFileSync(join(ROOT, 'docs/architecture.md'), 'utf8');
  const named = new Set([...doc.matchAll(/(?<![\w./-])src\/([\w-]+)\//g)].map((m) => m[1]!));
  const folders = readdirSync(SRC).filter((n) => statSync(join(SRC, n)).isDirectory());

  it('every src/ folder it names exists', () => {
    expect([...named].filter((n) => !folders.includes(n))).toEqual([]);
  });

  it('names every src/ folder', () => {
    expect(folders.filter((n) => !named.has(n))).toEqual([]);
  });

  it('is linked from the README', () => {
    expect(readFileSync(join(ROOT, 'README.md'), 'utf8')).toContain('docs/architecture.md');
  });
});
