import { defineCommand } from '../core/command.js';
import { pipelineInputs, pipelineOutputs, runPipeline } from './pipeline-stages.js';

// The root action (`uses: org/orb-actions@v1`): every stage in one step.
export default defineCommand({
  name: 'pipeline',
  title: 'Build, convert, publish and smoke-test a golden image in one step',
  description:
    'Runs build-golden-image (or takes an existing disk), convert-and-compress, publish and smoke-test in order, passing each ' +
    "stage's manifest to the next. Every stage's outputs are exposed with its prefix (build-, convert-, publish-, smoke-).",
  action: true,
  inputs: pipelineInputs,
  outputs: pipelineOutputs,
  run: runPipeline,
});
