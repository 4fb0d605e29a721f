// One timed child process for the benchmarks: wall seconds, peak RSS and CPU seconds of it and its
// children (sampled every 50 ms), and its output. Progress lines are held back so they cost nothing.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { RssSampler } = await import(join(root, 'lib/image/bench/rss.js'));

/** `opts.env`: added to the environment. Rejects with the end of stderr when the exit code is not 0. */
export function timed(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ORB_PROGRESS_INTERVAL_MS: '600000', ...(opts.env ?? {}) },
    });
    const rss = new RssSampler(child.pid, true, 50).start();
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const peak = rss.stop();
      if (code !== 0)
        reject(new Error(`${cmd} ${args.slice(0, 3).join(' ')} failed (${code}): ${err.slice(-2000)}`));
      else resolve({ seconds, peak, cpu: rss.cpuSeconds, out, err });
    });
  });
}
