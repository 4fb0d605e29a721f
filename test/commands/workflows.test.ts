import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseWorkflow, NoOperationTraceWriter } from '@actions/workflow-parser';
import { parseAction } from '@actions/workflow-parser/actions/action-parser';
import { commands, findCommand } from '../../src/commands/index.js';
import { ROOT } from '../helpers/cli.js';

const run = promisify(execFile);
const ORB_REPO = 'org/orb-actions';

const githubWorkflows = [
  ...readdirSync(join(ROOT, '.github/workflows')).map((f) => join('.github/workflows', f)),
  ...readdirSync(join(ROOT, 'workflows'))
    .filter((f) => f.startsWith('github-'))
    .map((f) => join('workflows', f)),
].filter((f) => f.endsWith('.yml'));

const actionFiles = [
  ...(existsSync(join(ROOT, 'action.yml')) ? ['action.yml'] : []),
  ...commands.filter((c) => c.action && c.name !== 'pipeline').map((c) => join(c.name, 'action.yml')),
];

function errorsOf(result: { context: { errors: { getErrors(): { message: string }[] } } }): string[] {
  return result.context.errors.getErrors().map((e) => e.message);
}

interface Step {
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
}
interface Job {
  steps?: Step[];
  uses?: string;
  permissions?: Record<string, string>;
}

function stepsOf(file: string): { job: string; jobDef: Job; step?: Step }[] {
  const doc = parse(readFileSync(join(ROOT, file), 'utf8')) as {
    jobs?: Record<string, Job>;
    runs?: { steps?: Step[] };
  };
  const out: { job: string; jobDef: Job; step?: Step }[] = [];
  for (const [job, jobDef] of Object.entries(doc.jobs ?? {})) {
    out.push({ job, jobDef });
    for (const step of jobDef.steps ?? []) out.push({ job, jobDef, step });
  }
  for (const step of doc.runs?.steps ?? []) out.push({ job: 'composite', jobDef: {}, step });
  return out;
}

describe('GitHub workflows and actions, validated offline', () => {
  for (const file of githubWorkflows) {
    it(`${file} parses with @actions/workflow-parser without errors`, () => {
      const result = parseWorkflow(
        { name: file, content: readFileSync(join(ROOT, file), 'utf8') },
        new NoOperationTraceWriter(),
      );
      expect(errorsOf(result)).toEqual([]);
    });
  }
  for (const file of actionFiles) {
    it(`${file} parses as an action`, () => {
      const result = parseAction(
        { name: file, content: readFileSync(join(ROOT, file), 'utf8') },
        new NoOperationTraceWriter(),
      );
      expect(errorsOf(result)).toEqual([]);
    });
  }

  const all = [...githubWorkflows, ...actionFiles];
  it('no run: step interpolates inputs or event data (they go through env:)', () => {
    for (const file of all) {
      for (const { step } of stepsOf(file)) {
        if (!step?.run) continue;
        expect(step.run, `${file}: ${step.run.slice(0, 60)}`).not.toMatch(
          /\$\{\{\s*(inputs|github\.event|secrets|steps|needs)\./,
        );
      }
    }
  });

  it('third-party actions and workflows are pinned by commit SHA', () => {
    for (const file of all) {
      for (const { step, jobDef } of stepsOf(file)) {
        const uses = step?.uses ?? (step ? undefined : jobDef.uses);
        if (
          !uses ||
          uses.startsWith('./') ||
          uses.startsWith(`${ORB_REPO}/`) ||
          uses.startsWith(`${ORB_REPO}@`)
        )
          continue;
        expect(uses, file).toMatch(/@[0-9a-f]{40}$/);
      }
    }
  });

  it('our actions are called only with inputs they declare', () => {
    for (const file of all) {
      for (const { step } of stepsOf(file)) {
        const m =
          step?.uses &&
          (new RegExp(`^${ORB_REPO}/([a-z-]+)@`).exec(step.uses) ??
            (step.uses.startsWith(`${ORB_REPO}@`) ? [step.uses, 'pipeline'] : null));
        if (!m || m[1] === '.github') continue;
        const cmd = findCommand(m[1]!);
        expect(cmd, `${file}: unknown action ${m[1]}`).toBeDefined();
        const declared = new Set(cmd!.inputs.map((i) => i.name));
        for (const key of Object.keys(step!.with ?? {}))
          expect(declared, `${file}: ${m[1]} has no input '${key}'`).toContain(key);
      }
    }
  });

  it('permissions are minimal: empty by default, write scopes only on jobs that publish', () => {
    for (const file of githubWorkflows) {
      const doc = parse(readFileSync(join(ROOT, file), 'utf8')) as {
        permissions?: unknown;
        jobs: Record<string, Job>;
      };
      expect(doc.permissions, `${file} needs a top-level permissions: block`).toBeDefined();
      for (const [name, job] of Object.entries(doc.jobs)) {
        const perms = job.permissions ?? {};
        const writes = Object.entries(perms)
          .filter(([, v]) => v === 'write')
          .map(([k]) => k);
        if (writes.includes('packages') || writes.includes('id-token')) {
          const text = JSON.stringify(job);
          expect(text, `${file}:${name} asks for packages/id-token write without publishing`).toMatch(
            /publish|golden-image\.yml|release-image\.yml/,
          );
        }
      }
    }
  });
});

describe('GitLab CI/CD components, validated with gitlab-ci-local --preview', () => {
  const bin = join(ROOT, 'node_modules/.bin/gitlab-ci-local');

  async function preview(files: Record<string, string>): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), 'orb-glci-'));
    cpSync(join(ROOT, 'templates'), join(dir, 'templates'), { recursive: true });
    for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
    // gitlab-ci-local reads the commit it runs on: give it one.
    const git = ['-c', 'user.name=orb', '-c', 'user.email=orb@localhost'];
    await run('git', ['init', '-q'], { cwd: dir });
    await run('git', ['add', '-A'], { cwd: dir });
    await run('git', [...git, 'commit', '-qm', 'preview'], { cwd: dir });
    const { stdout } = await run(bin, ['--preview'], {
      cwd: dir,
      env: { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH}` },
    });
    return stdout;
  }

  it("the project's own .gitlab-ci.yml (self-testing the components) expands and validates", async () => {
    const out = await preview({ '.gitlab-ci.yml': readFileSync(join(ROOT, '.gitlab-ci.yml'), 'utf8') });
    expect(out).toContain('orb-convert:');
    expect(out).toContain('orb-publish:');
    expect(out).toContain('orb-pull:');
  });

  for (const example of readdirSync(join(ROOT, 'workflows')).filter((f) => f.startsWith('gitlab-'))) {
    it(`workflows/${example} expands with the local components`, async () => {
      // Offline, a component include is resolved to the same file in templates/.
      const text = readFileSync(join(ROOT, 'workflows', example), 'utf8').replace(
        /component: \$CI_SERVER_FQDN\/org\/orb-actions\/([a-z-]+)@v1/g,
        'local: templates/$1.yml',
      );
      const out = await preview({ '.gitlab-ci.yml': text });
      expect(out).toMatch(/orb-[a-z-]+:/);
    });
  }

  it('templates never put inputs straight into scripts (they go through variables)', () => {
    for (const f of readdirSync(join(ROOT, 'templates'))) {
      const text = readFileSync(join(ROOT, 'templates', f), 'utf8');
      const doc = text.split('\n---\n')[1] ?? '';
      const jobs = parse(doc) as Record<string, { script?: string[] }>;
      for (const job of Object.values(jobs)) {
        for (const line of job.script ?? []) expect(line, `${f}: ${line}`).not.toContain('$[[');
      }
    }
  });
});
