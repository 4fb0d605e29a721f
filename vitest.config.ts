import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // VM-booting suites are CPU-heavy under TCG on two cores; run files one or two at a time.
    fileParallelism: true,
    maxWorkers: 2,
    globalSetup: ['test/global-setup.ts'],
    // workflow-parser imports its JSON schemas without import attributes; let Vite transform it.
    server: { deps: { inline: ['@actions/workflow-parser'] } },
  },
});
