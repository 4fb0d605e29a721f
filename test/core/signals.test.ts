import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OciLayout } from '../../src/oci/layout.js';
import {
  ANN_CONTENT_DIGEST,
  DISK_ARTIFACT,
  DISK_CONFIG,
  OCI_MANIFEST,
  type ImageManifest,
} from '../../src/formats/oci-media.js';
import { actionEnv, NODE, ROOT } from '../helpers/cli.js';
import { smokeGuestDisk } from '../helpers/smoke-guests.js';

/**
 * SIGTERM and SIGINT end every command within 2 s in its long phase, with exit code 143 / 130, an
 * "interrupted" line, no child process left (QEMU, qemu-img, ...), and only the files the command
 * documents (pull: a resumable .partial; convert, publish, smoke-test: nothing). Each case runs
 * the CLI bundle with its own TMPDIR, waits until it is in the phase, then signals it.
 */
let dir: string;
const BOUND_MS = 2000;
const GiB = 2 ** 30;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'orb-signals-'));
});
const started: ChildProcess[] = [];
afterAll(() => {
  // a failed case must not leave its CLI running (hashing for minutes) after the file
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface Started {
  child: ChildProcess;
  stderr: () => string;
  stdout: () => string;
  tmp: string;
}

function start(name: string, args: string[], env: NodeJS.ProcessEnv = {}, script = 'bin/orb.js'): Started {
  const tmp = join(dir, `tmp-${name}`);
  mkdirSync(tmp, { recursive: true });
  const child = spawn(NODE, [script.startsWith('/') ? script : join(ROOT, script), ...args], {
    env: { ...process.env, ORB_PROGRESS_INTERVAL_MS: '200', TMPDIR: tmp, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  started.push(child);
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  return { child, stderr: () => stderr, stdout: () => stdout, tmp };
}

async function waitFor(what: string, s: Started, ok: () => boolean, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!ok()) {
    if (s.child.exitCode !== null || Date.now() > until)
      throw new Error(`${what} not seen (exit ${s.child.exitCode}):\n${s.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function procStat(pid: number): { ppid: number; state: string } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0]!, ppid: Number(rest[1]) };
  } catch {
    return undefined;
  }
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number);
}

/** Every live process below `root` (children reparented after it exits are caught by `owns`). */
function descendants(root: number): number[] {
  const parent = new Map(allPids().map((p) => [p, procStat(p)?.ppid ?? 0]));
  const out: number[] = [];
  for (const p of parent.keys()) {
    for (let q = parent.get(p); q; q = parent.get(q)) {
      if (q === root) {
        out.push(p);
        break;
      }
    }
  }
  return out;
}

/** Live (not zombie) processes among `pids`, or whose command line names `dir`. */
function leftovers(pids: number[], owned: string): string[] {
  const alive = (p: number) => {
    const st = procStat(p);
    return st !== undefined && st.state !== 'Z';
  };
  const named = allPids().filter((p) => {
    try {
      return p !== process.pid && readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(owned) && alive(p);
    } catch {
      return false;
    }
  });
  return [...new Set([...pids.filter(alive), ...named])].map((p) => {
    try {
      return `${p}: ${readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ')}`;
    } catch {
      return `${p}`;
    }
  });
}

/** Sends `sig` and checks the bound, the code, the message and that no child outlives the CLI. */
async function interrupt(s: Started, sig: 'SIGTERM' | 'SIGINT', owned: string): Promise<void> {
  const pid = s.child.pid!;
  const children = descendants(pid);
  const closed = new Promise<number | null>((r) => s.child.once('close', (c) => r(c)));
  const t0 = Date.now();
  s.child.kill(sig);
  const code = await closed;
  const took = Date.now() - t0;
  expect(took, s.stderr()).toBeLessThan(BOUND_MS);
  expect(code, s.stderr()).toBe(sig === 'SIGINT' ? 130 : 143);
  expect(s.stderr()).toMatch(new RegExp(`interrupted by ${sig}`));
  // SIGKILL reaches children as the CLI exits; give the kernel a moment (a zombie counts as gone)
  let left = leftovers(children, owned);
  for (let i = 0; i < 20 && left.length; i++) {
    await new Promise((r) => setTimeout(r, 50));
    left = leftovers(children, owned);
  }
  expect(left).toEqual([]);
}

/** An oci-layout holding a disk manifest of `size` bytes with no layers: all zeros, hashed whole. */
async function zeroDiskLayout(layoutDir: string, size: number): Promise<void> {
  const layout = new OciLayout(layoutDir);
  await layout.init();
  const contentDigest = 'sha256:' + '0'.repeat(64);
  const config = {
    schema: 'orb-disk/v1',
    virtualSize: size,
    chunkSize: 64 << 20,
    contentDigest,
    sourceFormat: 'raw',
    compression: 'zstd',
    level: 3,
    build: { os: 'test', arch: 'x86_64', firmware: 'bios' },
    architecture: 'amd64',
    os: 'linux',
    rootfs: { type: 'layers', diff_ids: [] },
  };
  const cfg = await layout.putBytes(JSON.stringify(config));
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_ARTIFACT,
    config: { mediaType: DISK_CONFIG, digest: cfg.digest, size: cfg.size },
    layers: [],
    annotations: { [ANN_CONTENT_DIGEST]: contentDigest },
  };
  const m = await layout.putBytes(JSON.stringify(manifest));
  await layout.tag(
    { mediaType: OCI_MANIFEST, digest: m.digest, size: m.size, artifactType: DISK_ARTIFACT },
    'big',
  );
}

describe('signals end every command within 2 s', () => {
  it('pull: SIGTERM while hashing a huge all-zero disk exits 143 and keeps the resumable .partial', async () => {
    const layout = join(dir, 'zero-layout');
    await zeroDiskLayout(layout, 256 * GiB);
    const out = join(dir, 'pulled.img');
    const args = ['pull', `oci-layout:${layout}:big`, '--output', out];
    const s = start('pull', args, { ORB_DEBUG: '1' });
    // the downloads (none) are done: what is left is hashing 256 GiB of zeros (minutes)
    await waitFor('the content-hash phase', s, () => /downloads done/.test(s.stderr()));
    await new Promise((r) => setTimeout(r, 300));
    await interrupt(s, 'SIGTERM', dir);
    expect(s.stderr()).toMatch(/kept in .*pulled\.img\.partial: run the same command again to continue/);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.partial`)).toBe(true);
    expect(existsSync(`${out}.partial.journal`)).toBe(true);

    // the rerun takes the partial up again, and SIGINT stops it the same way (exit 130)
    const again = start('pull-again', args, { ORB_DEBUG: '1' });
    await waitFor('the content-hash phase', again, () => /downloads done/.test(again.stderr()));
    await interrupt(again, 'SIGINT', dir);
    expect(again.stderr()).not.toMatch(/error:.*(exists|stale|different manifest)/i);
    expect(existsSync(`${out}.partial`)).toBe(true);
  }, 120_000);

  it('pull action: SIGTERM while hashing exits 143 with the error annotation and keeps the .partial', async () => {
    const layout = join(dir, 'zero-layout-action');
    await zeroDiskLayout(layout, 256 * GiB);
    const out = join(dir, 'action-pulled.img');
    const files = { output: join(dir, 'action-output'), summary: join(dir, 'action-summary') };
    const env = {
      ...actionEnv({ ref: `oci-layout:${layout}:big`, output: out }, files),
      RUNNER_DEBUG: '1',
    };
    const s = start('pull-action', [], env, 'dist/pull/index.js');
    await waitFor('the content-hash phase', s, () => /downloads done/.test(s.stdout()));
    await interrupt(s, 'SIGTERM', dir);
    expect(s.stdout()).toMatch(/::error::interrupted by SIGTERM/);
    expect(existsSync(`${out}.partial`)).toBe(true);
    expect(existsSync(out)).toBe(false);
  }, 120_000);

  it('a command that ignores its abort signal is still ended after 1.5 s, its children killed', async () => {
    // the guarantee under every other case: code that does not watch the signal cannot hold the exit
    const script = join(dir, 'stubborn.mjs');
    writeFileSync(
      script,
      [
        `import { commandSignal } from ${JSON.stringify(join(ROOT, 'lib/core/cleanup.js'))};`,
        `import { spawnTracked } from ${JSON.stringify(join(ROOT, 'lib/core/proc.js'))};`,
        'commandSignal();',
        "spawnTracked('sleep', ['600'], { stdio: 'ignore' });",
        "process.stderr.write('ready\\n');",
        'setInterval(() => undefined, 1000);',
      ].join('\n'),
    );
    const s = start('stubborn', [], {}, script);
    await waitFor('the child', s, () => /ready/.test(s.stderr()) && descendants(s.child.pid!).length > 0);
    const t0 = Date.now();
    await interrupt(s, 'SIGTERM', dir);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
  }, 30_000);

  it('convert: SIGTERM while hashing a large sparse raw disk exits 143 and leaves no output', async () => {
    const raw = join(dir, 'sparse.raw');
    writeFileSync(raw, 'not empty, so the disk is not only a hole');
    truncateSync(raw, 256 * GiB);
    const outDir = join(dir, 'convert-out');
    mkdirSync(outDir);
    const out = join(outDir, 'sparse.qcow2');
    const s = start('convert', ['convert', raw, '--output', out, '--format', 'qcow2']);
    await waitFor('the conversion phase', s, () => /data to read:/.test(s.stderr()));
    await new Promise((r) => setTimeout(r, 300));
    await interrupt(s, 'SIGTERM', dir);
    expect(readdirSync(outDir)).toEqual([]);
    expect(readdirSync(s.tmp)).toEqual([]);
  }, 120_000);

  describe('publish to a server that never answers', () => {
    let server: Server;
    let port = 0;
    let requests = 0;
    beforeAll(async () => {
      // accepts every request and never answers: publish waits in its HTTP calls and retries
      server = createServer(() => {
        requests++;
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      port = (server.address() as { port: number }).port;
    });
    afterAll(() => {
      server.closeAllConnections();
      server.close();
    });

    it('SIGINT exits 130 and writes nothing', async () => {
      const src = join(dir, 'pub.qcow2');
      spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '1G'], { stdio: 'ignore' });
      const before = [...readdirSync(dir), 'tmp-publish'].sort();
      const s = start('publish', ['publish', src, '--to', `oci://127.0.0.1:${port}/signals/disk:t1`]);
      await waitFor('a request to the registry', s, () => requests > 0);
      await new Promise((r) => setTimeout(r, 300));
      await interrupt(s, 'SIGINT', dir);
      expect(readdirSync(dir).sort()).toEqual(before);
      expect(readdirSync(s.tmp)).toEqual([]);
    }, 60_000);
  });

  it('smoke-test: SIGTERM while a silent guest boots stops QEMU, exits 143, removes the overlay', async () => {
    const image = join(dir, 'silent.img');
    copyFileSync(await smokeGuestDisk('silent'), image);
    const evidence = join(dir, 'evidence');
    const s = start('smoke', [
      'smoke-test',
      '--image',
      image,
      '--accelerator',
      'tcg',
      '--memory',
      '256M',
      '--cpus',
      '1',
      '--timeout',
      '120',
      '--evidence-dir',
      evidence,
    ]);
    await waitFor('QEMU started', s, () => /QEMU pid \d+/.test(s.stderr()), 120_000);
    await new Promise((r) => setTimeout(r, 1000));
    await interrupt(s, 'SIGTERM', dir);
    expect(readdirSync(s.tmp)).toEqual([]);
  }, 180_000);

  it('setup-qemu: SIGTERM during the KVM probe exits 143 and leaves no probe guest', async () => {
    // a probe guest that never answers (a hung nested-KVM boot) keeps setup-qemu in its probe
    const bin = join(dir, 'fake-qemu');
    mkdirSync(bin);
    const fake = join(bin, 'qemu-system-x86_64');
    writeFileSync(
      fake,
      `#!/bin/sh\ncase "$1" in --version) echo "QEMU emulator version 9.9.9" ;; *) exec sleep 600 ;; esac\n`,
      { mode: 0o755 },
    );
    const s = start('setup', ['setup-qemu', '--no-install', '--probe-timeout', '60'], {
      PATH: `${bin}:${process.env.PATH ?? ''}`,
    });
    const guest = () =>
      descendants(s.child.pid!).some((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').startsWith('sleep\x00600');
        } catch {
          return false;
        }
      });
    await waitFor('the probe guest', s, () => /probing KVM/.test(s.stderr()) && guest());
    await interrupt(s, 'SIGTERM', dir);
    expect(readdirSync(s.tmp)).toEqual([]);
  }, 60_000);
});
