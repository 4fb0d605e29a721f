// Importing this module registers every backend's scheme with open.ts (one line per backend).
import { registerScheme } from './open.js';
import { openLayoutStore } from './layout.js';
import { openRegistryStore } from './registry.js';

registerScheme('oci://', openRegistryStore);
registerScheme('oci-layout:', openLayoutStore);
import { openS3 } from './s3.js';
registerScheme('s3://', openS3);
import { openHttps } from './https.js';
registerScheme('https://', openHttps);
registerScheme('http://', openHttps);
import { openGitlab } from './gitlab.js';
registerScheme('gitlab://', openGitlab);
import { openGithubRelease } from './github-release.js';
registerScheme('github-release://', openGithubRelease);
