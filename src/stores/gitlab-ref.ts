import { UsageError } from '../core/errors.js';
import { sha256Digest } from '../core/untrusted.js';
import type { InputSpec } from '../core/inputs.js';

/** gitlab:// references (`gitlab://PROJECT/PACKAGE/VERSION[@sha256:...]`), inputs and file names. */
const NAME_RE = /^[A-Za-z0-9._-]+$/;
// GitLab's documented version rule: \A(\.?[\w\+-]+\.?)+\z
const VERSION_RE = /^(\.?[\w+-]+\.?)+$/;

export const gitlabInputs: InputSpec[] = [
  {
    name: 'gitlab-url',
    type: 'string',
    env: ['CI_API_V4_URL'],
    description:
      'GitLab: API base URL, e.g. https://gitlab.example.com/api/v4 (default: CI_API_V4_URL, else https://gitlab.com/api/v4)',
  },
  {
    name: 'gitlab-token',
    type: 'string',
    secret: true,
    env: ['GITLAB_TOKEN'],
    description: 'GitLab: personal, project or deploy token (default: CI_JOB_TOKEN in a GitLab job)',
  },
];

export interface GitlabRef {
  project: string;
  pkg: string;
  version: string;
  /** pinned manifest digest (`...VERSION@sha256:<hex>`) */
  digest?: string;
}

export function parseGitlabRef(ref: string): GitlabRef {
  const m = /^gitlab:\/\/(.+)\/([^/]+)\/([^/@]+)(?:@(sha256:[a-f0-9]{64}))?$/.exec(ref);
  if (!m)
    throw new UsageError(
      `'${ref}' is not a GitLab package reference`,
      'write gitlab://GROUP/PROJECT/PACKAGE/VERSION (or gitlab://PROJECT_ID/PACKAGE/VERSION)',
    );
  const [, project, pkg, version, digest] = m as unknown as [
    string,
    string,
    string,
    string,
    string | undefined,
  ];
  if (!NAME_RE.test(pkg))
    throw new UsageError(
      `GitLab package name '${pkg}' is invalid`,
      'use letters, digits, dots, hyphens and underscores',
    );
  if (!VERSION_RE.test(version))
    throw new UsageError(
      `GitLab package version '${version}' is invalid`,
      'use letters, digits, dots, hyphens, underscores and +',
    );
  return { project: project.replace(/^\/+|\/+$/g, ''), pkg, version, ...(digest ? { digest } : {}) };
}

export function blobFileName(digest: string): string {
  return sha256Digest(digest, 'blob digest').replace(':', '-');
}
