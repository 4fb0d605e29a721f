import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { findCommand } from '../../src/commands/index.js';

/**
 * examples/kubernetes/ checked offline: every document parses, has a known apiVersion/kind and
 * the fields the API server requires (a small schema per kind, written from the Kubernetes and
 * CDI API references), the Job's claim is the Block PVC, and its orb command line uses only
 * flags `orb pull` declares, writing to the device path the PVC is attached at.
 */
type Schema =
  | { type: 'object'; required?: string[]; properties?: Record<string, Schema>; values?: Schema }
  | { type: 'array'; items: Schema; minItems?: number }
  | { type: 'string'; pattern?: RegExp; enum?: string[] }
  | { type: 'integer'; min?: number }
  | { type: 'boolean' }
  | { type: 'any' };

function validate(v: unknown, s: Schema, at: string, errs: string[]): void {
  switch (s.type) {
    case 'any':
      return;
    case 'string':
      if (typeof v !== 'string') return void errs.push(`${at}: not a string`);
      if (s.pattern && !s.pattern.test(v)) errs.push(`${at}: '${v}' does not match ${String(s.pattern)}`);
      if (s.enum && !s.enum.includes(v)) errs.push(`${at}: '${v}' is not one of ${s.enum.join(', ')}`);
      return;
    case 'integer':
      if (!Number.isInteger(v) || (s.min !== undefined && (v as number) < s.min))
        errs.push(`${at}: not an integer >= ${s.min ?? '-inf'}`);
      return;
    case 'boolean':
      if (typeof v !== 'boolean') errs.push(`${at}: not a boolean`);
      return;
    case 'array':
      if (!Array.isArray(v)) return void errs.push(`${at}: not a list`);
      if (s.minItems && v.length < s.minItems) errs.push(`${at}: fewer than ${s.minItems} items`);
      v.forEach((x, i) => validate(x, s.items, `${at}[${i}]`, errs));
      return;
    case 'object': {
      if (typeof v !== 'object' || v === null || Array.isArray(v))
        return void errs.push(`${at}: not a mapping`);
      const o = v as Record<string, unknown>;
      for (const r of s.required ?? []) if (!(r in o)) errs.push(`${at}.${r}: required`);
      for (const [k, x] of Object.entries(o)) {
        const p = s.properties?.[k] ?? s.values;
        if (p) validate(x, p, `${at}.${k}`, errs);
        else if (s.properties) errs.push(`${at}.${k}: unknown field`);
      }
    }
  }
}

const str: Schema = { type: 'string' };
const name: Schema = { type: 'string', pattern: /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/ };
const quantity: Schema = { type: 'string', pattern: /^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|m|k|M|G|T)?$/ };
const labels: Schema = { type: 'object', values: str };
const metadata: Schema = {
  type: 'object',
  required: ['name'],
  properties: { name, namespace: name, labels, annotations: labels },
};
const resources: Schema = {
  type: 'object',
  properties: {
    requests: { type: 'object', values: quantity },
    limits: { type: 'object', values: quantity },
  },
};
const accessModes: Schema = {
  type: 'array',
  minItems: 1,
  items: { type: 'string', enum: ['ReadWriteOnce', 'ReadOnlyMany', 'ReadWriteMany', 'ReadWriteOncePod'] },
};
const pvcSpec: Schema = {
  type: 'object',
  required: ['accessModes', 'resources'],
  properties: {
    accessModes,
    volumeMode: { type: 'string', enum: ['Block', 'Filesystem'] },
    resources: {
      type: 'object',
      required: ['requests'],
      properties: { requests: { type: 'object', required: ['storage'], values: quantity } },
    },
    storageClassName: str,
  },
};
const secretKeyRef: Schema = {
  type: 'object',
  required: ['name', 'key'],
  properties: { name, key: str, optional: { type: 'boolean' } },
};
const container: Schema = {
  type: 'object',
  required: ['name', 'image'],
  properties: {
    name,
    image: { type: 'string', pattern: /^[\w.-]+(\/[\w.-]+)*(:[\w.-]+)?(@sha256:[0-9a-f]{64})?$/ },
    command: { type: 'array', items: str },
    args: { type: 'array', items: str },
    env: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name'],
        properties: { name: str, value: str, valueFrom: { type: 'object', properties: { secretKeyRef } } },
      },
    },
    volumeDevices: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'devicePath'],
        properties: { name, devicePath: { type: 'string', pattern: /^\/dev\// } },
      },
    },
    volumeMounts: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'mountPath'],
        properties: { name, mountPath: str, readOnly: { type: 'boolean' } },
      },
    },
    resources,
    securityContext: {
      type: 'object',
      properties: {
        runAsUser: { type: 'integer', min: 0 },
        allowPrivilegeEscalation: { type: 'boolean' },
        privileged: { type: 'boolean' },
      },
    },
  },
};
const volume: Schema = {
  type: 'object',
  required: ['name'],
  properties: {
    name,
    persistentVolumeClaim: {
      type: 'object',
      required: ['claimName'],
      properties: { claimName: name, readOnly: { type: 'boolean' } },
    },
    emptyDir: { type: 'object', properties: { sizeLimit: quantity, medium: str } },
  },
};
const SCHEMAS: Record<string, Schema> = {
  'v1/PersistentVolumeClaim': {
    type: 'object',
    required: ['apiVersion', 'kind', 'metadata', 'spec'],
    properties: { apiVersion: str, kind: str, metadata, spec: pvcSpec },
  },
  'batch/v1/Job': {
    type: 'object',
    required: ['apiVersion', 'kind', 'metadata', 'spec'],
    properties: {
      apiVersion: str,
      kind: str,
      metadata,
      spec: {
        type: 'object',
        required: ['template'],
        properties: {
          backoffLimit: { type: 'integer', min: 0 },
          ttlSecondsAfterFinished: { type: 'integer', min: 0 },
          template: {
            type: 'object',
            required: ['spec'],
            properties: {
              metadata: { type: 'object', properties: { labels, annotations: labels } },
              spec: {
                type: 'object',
                required: ['containers', 'restartPolicy'],
                properties: {
                  // a Job's pods may not restart Always
                  restartPolicy: { type: 'string', enum: ['OnFailure', 'Never'] },
                  containers: { type: 'array', minItems: 1, items: container },
                  initContainers: { type: 'array', items: container },
                  volumes: { type: 'array', items: volume },
                },
              },
            },
          },
        },
      },
    },
  },
  'cdi.kubevirt.io/v1beta1/DataVolume': {
    type: 'object',
    required: ['apiVersion', 'kind', 'metadata', 'spec'],
    properties: {
      apiVersion: str,
      kind: str,
      metadata,
      spec: {
        type: 'object',
        required: ['source'],
        properties: {
          source: {
            type: 'object',
            properties: {
              http: {
                type: 'object',
                required: ['url'],
                properties: {
                  url: { type: 'string', pattern: /^https?:\/\// },
                  secretRef: name,
                  certConfigMap: name,
                },
              },
            },
          },
          storage: {
            type: 'object',
            required: ['resources'],
            properties: { ...(pvcSpec as { properties: Record<string, Schema> }).properties, accessModes },
          },
          pvc: pvcSpec,
        },
      },
    },
  },
};

const DIR = join(import.meta.dirname, '..', '..', 'examples', 'kubernetes');
const docs = readdirSync(DIR)
  .filter((f) => f.endsWith('.yaml'))
  .flatMap((f) =>
    parseAllDocuments(readFileSync(join(DIR, f), 'utf8')).map((d) => {
      expect(d.errors, f).toEqual([]);
      return { file: f, doc: d.toJS() as Record<string, unknown> & { apiVersion: string; kind: string } };
    }),
  );
const byKind = (kind: string) => docs.filter((d) => d.doc.kind === kind).map((d) => d.doc as any); // eslint-disable-line @typescript-eslint/no-explicit-any

describe('examples/kubernetes', () => {
  it('holds a Job, a Block PVC and a CDI DataVolume, each valid for its kind', () => {
    expect(docs.map((d) => `${d.doc.apiVersion}/${d.doc.kind}`).sort()).toEqual([
      'batch/v1/Job',
      'cdi.kubevirt.io/v1beta1/DataVolume',
      'v1/PersistentVolumeClaim',
    ]);
    for (const { file, doc } of docs) {
      const errs: string[] = [];
      validate(doc, SCHEMAS[`${doc.apiVersion}/${doc.kind}`]!, file, errs);
      expect(errs, file).toEqual([]);
    }
  });

  it('the validator catches what the API server would refuse', () => {
    const errs: string[] = [];
    validate(
      {
        apiVersion: 'batch/v1',
        kind: 'Job',
        metadata: { name: 'Bad_Name' },
        spec: { template: { spec: { restartPolicy: 'Always', containers: [] } } },
      },
      SCHEMAS['batch/v1/Job']!,
      'job',
      errs,
    );
    expect(errs.join('\n')).toMatch(/Bad_Name/);
    expect(errs.join('\n')).toMatch(/Always/);
    expect(errs.join('\n')).toMatch(/fewer than 1/);
  });

  it('the Job writes the Block PVC through its device path with flags orb pull declares', () => {
    const [job] = byKind('Job');
    const [pvc] = byKind('PersistentVolumeClaim');
    expect(pvc.spec.volumeMode).toBe('Block');
    const pod = job.spec.template.spec;
    const c = pod.containers[0];
    const claim = pod.volumes.find((v: { name: string }) => v.name === c.volumeDevices[0].name);
    expect(claim.persistentVolumeClaim.claimName).toBe(pvc.metadata.name);
    const args: string[] = c.args;
    expect(args[0]).toBe('pull');
    expect(args[1]).toMatch(/^oci:\/\//);
    const pull = findCommand('pull')!;
    const declared = new Set(pull.inputs.map((i) => i.name));
    for (const a of args.filter((x) => x.startsWith('--'))) expect(declared, a).toContain(a.slice(2));
    const device = c.volumeDevices[0].devicePath;
    expect(args[args.indexOf('--output') + 1]).toBe(device);
    expect(args[args.indexOf('--base') + 1]).toBe(device);
    // the journal lives in a writable mount, not beside the device
    const state = c.env.find((e: { name: string }) => e.name === 'ORB_STATE_DIR').value;
    expect(c.volumeMounts.map((m: { mountPath: string }) => m.mountPath)).toContain(state);
  });

  it('the DataVolume imports into a Block volume from an https URL', () => {
    const [dv] = byKind('DataVolume');
    expect(dv.spec.source.http.url).toMatch(/^https:\/\//);
    expect(dv.spec.storage.volumeMode).toBe('Block');
  });
});
