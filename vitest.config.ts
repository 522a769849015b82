import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Each file starts its own loopback servers; two cores, so keep the pool small.
    pool: 'forks',
    maxWorkers: 2,
  },
});
