import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { guestKernelBoot } from '../helpers/guests.js';
import { ROOT } from '../helpers/cli.js';

/**
 * A separate Node process starts a VM (QEMU + swtpm) straight from the TypeScript sources (Node 24
 * strips types; a resolve hook maps our '.js' import specifiers to the '.ts' files), prints the
 * pids, and waits to be killed.
 */
const CHILD = `
import { registerHooks } from 'node:module';
registerHooks({
  resolve(spec, ctx, next) {
    try { return next(spec, ctx); } catch (e) {
      if (/^\\.{1,2}\\//.test(spec) && spec.endsWith('.js')) return next(spec.slice(0, -3) + '.ts', ctx);
      throw e;
    }
  },
});
const { startVm } = await import(${JSON.stringify(join(ROOT, 'src/qemu/runner.ts'))});
const [kernel, initrd, append] = process.argv.slice(2);
const vm = await startVm({ kernel, initrd, append, tpm: true, memoryMiB: 128, name: 'orphan-check' });
process.stdout.write(JSON.stringify({ qemu: vm.pid, swtpm: vm.tpmPid, workDir: vm.workDir }) + '\\n');
setInterval(() => {}, 1 << 30);
`;

/** Alive and not a zombie (a killed child may wait a moment for its new parent to reap it). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function gone(pids: number[], ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!pids.some(running)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

async function startChild(): Promise<{
  child: ChildProcess;
  pids: { qemu: number; swtpm: number; workDir: string };
}> {
  const dir = mkdtempSync(join(tmpdir(), 'orb-orphan-'));
  const script = join(dir, 'child.mjs');
  writeFileSync(script, CHILD);
  const k = await guestKernelBoot('silent');
  const child = spawn(process.execPath, [script, k.kernel, k.initrd, k.append], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`child exited (${code}) before starting the VM: ${err}`)));
  });
  return { child, pids: JSON.parse(line) as { qemu: number; swtpm: number; workDir: string } };
}

describe('no orphaned QEMU or swtpm', () => {
  it('when the process that started the VM is SIGKILLed (pdeathsig)', async () => {
    const { child, pids } = await startChild();
    expect(running(pids.qemu)).toBe(true);
    expect(running(pids.swtpm)).toBe(true);
    expect(readFileSync(`/proc/${pids.qemu}/cmdline`, 'utf8')).toContain('qemu-system-x86_64');
    child.kill('SIGKILL');
    expect(await gone([pids.qemu, pids.swtpm], 10_000)).toBe(true);
  });

  it('when it is interrupted (SIGTERM): children stopped, temporary work dir removed', async () => {
    const { child, pids } = await startChild();
    expect(existsSync(pids.workDir)).toBe(true);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(143);
    expect(await gone([pids.qemu, pids.swtpm], 10_000)).toBe(true);
    expect(existsSync(pids.workDir)).toBe(false);
  });
});
