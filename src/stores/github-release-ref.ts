import { UsageError } from '../core/errors.js';
import { sha256Digest } from '../core/untrusted.js';
import type { InputSpec } from '../core/inputs.js';
import type { Descriptor, ImageManifest } from '../formats/oci-media.js';

/** github-release:// references, inputs, asset names and the release-notes section. */
export const NOTES_BEGIN = '<!-- orb:begin -->';
export const NOTES_END = '<!-- orb:end -->';

export const githubInputs: InputSpec[] = [
  {
    name: 'github-token',
    type: 'string',
    secret: true,
    env: ['GITHUB_TOKEN', 'GH_TOKEN'],
    description: 'GitHub releases: token (default: GITHUB_TOKEN; needs contents: write to publish)',
  },
  {
    name: 'github-api-url',
    type: 'string',
    env: ['GITHUB_API_URL'],
    description:
      'GitHub releases: API base URL (default: GITHUB_API_URL, else https://api.github.com; GHES: https://HOST/api/v3)',
  },
];

export interface GithubRef {
  owner: string;
  repo: string;
  tag: string;
  digest?: string;
}

export function parseGithubRef(ref: string): GithubRef {
  const m =
    /^github-release:\/\/([A-Za-z0-9-]+)\/([A-Za-z0-9._-]+)\/([^@\s]+?)(?:@(sha256:[a-f0-9]{64}))?$/.exec(
      ref,
    );
  if (!m)
    throw new UsageError(
      `'${ref}' is not a GitHub release reference`,
      'write github-release://OWNER/REPO/TAG',
    );
  const tag = m[3]!;
  if (/\.\.|^[./]|[\s~^:?*[\\]|\/$/.test(tag)) throw new UsageError(`'${tag}' is not a valid git tag name`);
  return { owner: m[1]!, repo: m[2]!, tag, ...(m[4] ? { digest: m[4] } : {}) };
}

export function assetName(digest: string): string {
  return sha256Digest(digest, 'blob digest').replace(':', '-');
}

/** The orb section of the release notes: how to pull, and every asset's digest. */
export function releaseNotes(ref: GithubRef, digest: string, manifest: Buffer): string {
  const base = `github-release://${ref.owner}/${ref.repo}/${ref.tag}`;
  let m: Partial<ImageManifest> = {};
  try {
    m = JSON.parse(manifest.toString('utf8')) as ImageManifest;
  } catch {
    /* listed without layers */
  }
  const rows = [m.config, ...(m.layers ?? [])].filter((d): d is Descriptor => !!d?.digest);
  const lines = [
    NOTES_BEGIN,
    '### Disk image',
    '',
    'Pull it with `orb` (parallel, verified against these digests, resumable):',
    '',
    '```sh',
    `orb pull ${base} --output disk.img`,
    '```',
    '',
    `Manifest \`${digest}\` (\`manifest.json\`); to pin this exact image: \`orb pull ${base}@${digest} --output disk.img\``,
    '',
    '| asset | media type | size | sha256 |',
    '|---|---|---|---|',
  ];
  const seen = new Set<string>();
  let budget = 100_000; // GitHub caps release bodies at 125,000 characters
  let omitted = 0;
  for (const d of rows) {
    if (seen.has(d.digest)) continue;
    seen.add(d.digest);
    const line = `| ${assetName(d.digest)} | ${d.mediaType} | ${d.size} | \`${d.digest.slice(7)}\` |`;
    if ((budget -= line.length + 1) < 0) {
      omitted++;
      continue;
    }
    lines.push(line);
  }
  if (omitted) lines.push('', `…and ${omitted} more blobs: see manifest.json.`);
  lines.push(NOTES_END);
  return lines.join('\n');
}

/** Replaces our section of the notes, keeping whatever people wrote around it. */
export function mergeNotes(existing: string, ours: string): string {
  const a = existing.indexOf(NOTES_BEGIN);
  const b = existing.indexOf(NOTES_END);
  if (a >= 0 && b > a) return existing.slice(0, a) + ours + existing.slice(b + NOTES_END.length);
  return existing.trim() ? `${existing.trim()}\n\n${ours}` : ours;
}
