import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { commands } from '../../src/commands/index.js';
import { commandHelp, parseArgs } from '../../src/cli/main.js';
import { ROOT } from '../helpers/cli.js';

interface ActionYml {
  inputs?: Record<string, { description: string; required?: boolean; default?: string }>;
  outputs?: Record<string, { description: string }>;
  runs: { using: string; main: string };
}

describe('one declaration per command', () => {
  for (const cmd of commands.filter((c) => c.action)) {
    const folder = cmd.name === 'pipeline' ? ROOT : join(ROOT, cmd.name);
    it(`${cmd.name}/action.yml lists exactly the declared inputs and outputs`, () => {
      const yml = parse(readFileSync(join(folder, 'action.yml'), 'utf8')) as ActionYml;
      expect(Object.keys(yml.inputs ?? {}).sort()).toEqual(cmd.inputs.map((i) => i.name).sort());
      expect(Object.keys(yml.outputs ?? {}).sort()).toEqual(cmd.outputs.map((o) => o.name).sort());
      for (const spec of cmd.inputs) {
        const entry = yml.inputs![spec.name]!;
        expect(entry.required ?? false).toBe(!!spec.required);
        expect(entry.default).toBe(spec.default === undefined ? undefined : String(spec.default));
      }
      expect(yml.runs.using).toBe('node24');
      expect(existsSync(join(folder, yml.runs.main))).toBe(true);
    });

    it(`${cmd.name}: every input is a CLI flag, in --help and in the README table`, () => {
      const help = commandHelp(cmd);
      const readme = readFileSync(
        cmd.name === 'pipeline' ? join(ROOT, 'docs/pipeline.md') : join(folder, 'README.md'),
        'utf8',
      );
      for (const spec of cmd.inputs) {
        expect(help).toContain(`--${spec.name}`);
        expect(readme).toContain(`| \`${spec.name}\` | \`--${spec.name}\``);
        if (spec.type !== 'boolean' && spec.type !== 'list') {
          expect(() => parseArgs(cmd, [`--${spec.name}`])).toThrow(/needs a value/);
        }
      }
      for (const o of cmd.outputs) expect(readme).toContain(`| \`${o.name}\` |`);
    });
  }

  it('output and input names are kebab-case and unique', () => {
    for (const cmd of commands) {
      const names = cmd.outputs.map((o) => o.name);
      expect(new Set(names).size).toBe(names.length);
      for (const n of names) expect(n).toMatch(/^[a-z][a-z0-9-]*$/);
    }
  });
});
