// The single bundle's entry: the CLI and every action wrapper share this code.
export { runCli } from './cli/main.js';
export { runAction } from './action/run.js';
