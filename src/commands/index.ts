import type { CommandDef } from '../core/command.js';
// One import per command, one line each (several people add commands here).
import demo from './demo.js';
import setupQemu from './setup-qemu.js';
import rdpProbe from './rdp-probe.js';
import smokeTest from './smoke-test.js';
import unattend from './unattend.js';
import buildGoldenImage from './build-golden-image.js';
import publish from './publish.js';
import pull from './pull.js';
import blobUrl from './blob-url.js';
import install from './install.js';
import convertAndCompress from './convert-and-compress.js';
import bench from './bench.js';
import pipeline from './pipeline.js';
import digest from './digest.js';
import serve from './serve.js';

/** Every command; the CLI, the action entry points and the generated docs all read this list. */
export const commands: readonly CommandDef[] = [
  setupQemu,
  demo,
  rdpProbe,
  smokeTest,
  unattend,
  buildGoldenImage,
  publish,
  pull,
  blobUrl,
  install,
  convertAndCompress,
  bench,
  pipeline,
  digest,
  serve,
];

export function findCommand(name: string): CommandDef | undefined {
  return commands.find((c) => c.name === name || c.aliases?.includes(name));
}
