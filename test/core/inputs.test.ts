import { describe, expect, it } from 'vitest';
import { coerce, parseDuration, parseSize, resolveInputs, type InputSpec } from '../../src/core/inputs.js';
import { parseArgs } from '../../src/cli/main.js';
import setupQemu from '../../src/commands/setup-qemu.js';

describe('input parsing and validation', () => {
  it('parses sizes and durations', () => {
    expect(parseSize('64M')).toBe(64 * 1024 ** 2);
    expect(parseSize('1.5GiB')).toBe(1.5 * 1024 ** 3);
    expect(parseSize('10GB')).toBe(10e9);
    expect(parseSize('ten')).toBeUndefined();
    expect(parseDuration('90')).toBe(90);
    expect(parseDuration('1h30m')).toBe(5400);
    expect(parseDuration('7d')).toBe(7 * 86400);
    expect(parseDuration('5 parsecs')).toBeUndefined();
  });

  it('names the input and what is accepted', () => {
    const spec: InputSpec = { name: 'level', type: 'integer', min: 1, max: 22, description: 'zstd level' };
    expect(() => coerce(spec, '99')).toThrow(
      /input 'level': 99 is out of range; expected a whole number from 1 to 22/,
    );
    expect(() => coerce(spec, 'x')).toThrow(/input 'level'.*expected a whole number/);
    const e: InputSpec = { name: 'format', type: 'enum', choices: ['raw', 'qcow2'], description: '' };
    expect(() => coerce(e, 'vmdk')).toThrow(/expected one of raw, qcow2/);
  });

  it('never echoes a secret value in an error', () => {
    const spec: InputSpec = { name: 'password', type: 'integer', secret: true, description: '' };
    expect(() => coerce(spec, 'hunter2')).toThrow(/input 'password': \*\*\* is not valid/);
  });

  it('fails on a missing required value and applies defaults and env fallbacks', () => {
    const specs: InputSpec[] = [
      { name: 'to', type: 'string', required: true, description: 'target' },
      { name: 'token', type: 'string', env: ['GITHUB_TOKEN'], description: '' },
      { name: 'n', type: 'integer', default: 4, description: '' },
    ];
    expect(() => resolveInputs(specs, {}, {})).toThrow(/input 'to' is required/);
    expect(resolveInputs(specs, { to: 'x' }, { GITHUB_TOKEN: 'abc' })).toEqual({
      to: 'x',
      token: 'abc',
      n: 4,
    });
  });

  it('rejects unknown flags and stray arguments; --no-x negates booleans', () => {
    expect(() => parseArgs(setupQemu, ['--nope'])).toThrow(/unknown option --nope/);
    expect(() => parseArgs(setupQemu, ['stray'])).toThrow(/unexpected argument 'stray'/);
    expect(parseArgs(setupQemu, ['--no-install', '--json']).raw).toEqual({ install: false });
    expect(() => parseArgs(setupQemu, ['--arch', 'x86_64', '--arch=aarch64'])).toThrow(/given twice/);
  });
});
