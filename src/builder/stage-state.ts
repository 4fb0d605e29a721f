import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OrbError } from '../core/errors.js';
import { exists, writeFileAtomic } from '../core/fsutil.js';

/**
 * The build directory's memory: which stage is done, from which inputs (a key), and in which
 * disk layer. A rerun with the same inputs continues after the last finished stage; a changed
 * input invalidates that stage and everything after it, and nothing before.
 *
 *   installed     base.qcow2          the OS installed (Windows Setup ran; Linux: the cloud image imported)
 *   provisioned   provisioned.qcow2   overlay on base: the provisioning scripts ran
 *   final         final.qcow2         overlay on provisioned: cleaned, trimmed, sysprep'd or not
 */
export const STATE_FILE = 'build-state.json';
export const STATE_SCHEMA = 'orb-build-state/v1';
export const STAGES = ['installed', 'provisioned', 'final'] as const;
export type Stage = (typeof STAGES)[number];

export interface StageRecord {
  /** hash of everything that went into this stage, including the previous stage's key */
  key: string;
  /** the layer, relative to the build directory (or absolute for a cached base elsewhere) */
  disk: string;
  finishedAt: string;
  seconds: number;
  /** final stage: whether sysprep generalized the image */
  generalized?: boolean;
}

export interface BuildState {
  schema: typeof STATE_SCHEMA;
  os: 'windows' | 'linux';
  stages: Partial<Record<Stage, StageRecord>>;
}

export function emptyState(os: BuildState['os']): BuildState {
  return { schema: STATE_SCHEMA, os, stages: {} };
}

export async function loadState(dir: string, os: BuildState['os']): Promise<BuildState> {
  const path = join(dir, STATE_FILE);
  if (!(await exists(path))) return emptyState(os);
  let data: Partial<BuildState>;
  try {
    data = JSON.parse(await readFile(path, 'utf8')) as Partial<BuildState>;
  } catch (err) {
    throw new OrbError('input', `build state ${path} is unreadable: ${(err as Error).message}`, {
      hint: 'delete it (the build then starts from the beginning) or use a fresh output directory',
    });
  }
  if (
    data.schema !== STATE_SCHEMA ||
    data.os !== os ||
    typeof data.stages !== 'object' ||
    data.stages === null
  ) {
    return emptyState(os);
  }
  return { schema: STATE_SCHEMA, os, stages: data.stages };
}

export async function saveState(dir: string, state: BuildState): Promise<void> {
  await writeFileAtomic(join(dir, STATE_FILE), JSON.stringify(state, null, 2) + '\n');
}

/** Records a finished stage and forgets every later one (their inputs were built on the old layer). */
export function markDone(state: BuildState, stage: Stage, record: StageRecord): void {
  const after = STAGES.slice(STAGES.indexOf(stage) + 1);
  for (const s of after) delete state.stages[s];
  state.stages[stage] = record;
}

/** True when the stage is recorded with this key and its layer still exists. */
export async function isDone(state: BuildState, stage: Stage, key: string, dir: string): Promise<boolean> {
  const rec = state.stages[stage];
  if (!rec || rec.key !== key) return false;
  return exists(rec.disk.startsWith('/') ? rec.disk : join(dir, rec.disk));
}

export function lastDone(state: BuildState): Stage | undefined {
  return [...STAGES].reverse().find((s) => state.stages[s]);
}

/** Stable hash of a JSON-able recipe (object keys sorted, so property order does not matter). */
export function recipeKey(parts: unknown): string {
  return createHash('sha256').update(stableJson(parts)).digest('hex');
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stableJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
