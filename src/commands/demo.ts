import { defineCommand } from '../core/command.js';
import setupQemu from './setup-qemu.js';
import { Inputs } from '../core/command.js';
import { resolveInputs } from '../core/inputs.js';

/**
 * The README's main job. For now: set up QEMU and probe the accelerator; it grows into the whole
 * pipeline (build, convert, publish, pull, smoke-test) as the stages land.
 */
export default defineCommand({
  name: 'demo',
  title: 'Run the pipeline on this machine with embedded defaults',
  description: 'Sets up QEMU (installing packages when root or with sudo) and probes KVM, then runs the stages on a small Linux image.',
  action: false,
  inputs: [{ name: 'install', type: 'boolean', default: true, description: 'install missing packages with apt-get' }],
  outputs: setupQemu.outputs,
  async run(inputs, ctx) {
    const setupInputs = new Inputs(resolveInputs(setupQemu.inputs, { install: inputs.bool('install') }), setupQemu.inputs);
    return setupQemu.run(setupInputs, ctx);
  },
});
