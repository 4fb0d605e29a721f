import { defineCommand } from '../core/command.js';
import { demoInputs, runDemo } from './demo-run.js';

/** The README's main job: the whole pipeline on this machine, with embedded defaults. */
export default defineCommand({
  name: 'demo',
  title: 'Run the whole pipeline on this machine with embedded defaults',
  description:
    'Sets up QEMU (installing Debian packages when root or with sudo), builds a Debian 12 cloud image with mmdebstrap (once, cached), ' +
    'builds a golden image from it with the real cloud-init, converts it to the chunked format, publishes it to an oci-layout: directory, ' +
    'smoke-tests the published image over RDP with TLS and pulls it back.',
  action: false,
  inputs: demoInputs,
  outputs: [
    { name: 'accelerator', description: 'kvm or tcg' },
    { name: 'reference', description: 'the published image (oci-layout:DIR@DIGEST)' },
    { name: 'digest', description: 'manifest digest' },
    {
      name: 'content-digest',
      description: 'orb2 content root of the pulled disk, equal to the converted one',
    },
    { name: 'pulled-image', description: 'the raw disk pulled back' },
    { name: 'smoke-passed', description: 'true when the smoke test passed' },
    { name: 'work-dir', description: 'where everything was written' },
  ],
  run: runDemo,
});
