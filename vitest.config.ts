import { defineConfig } from 'vitest/config';

// Two projects, named by where a test runs (zero-cache style):
//   *.test.ts     pure: no network, no processes
//   *.pg.test.ts  against the real local stack (PostgreSQL x2, Pub/Sub and
//                 Firestore emulators), started once per run by globalSetup
export default defineConfig({
  test: {
    reporters: ['default', './test/summary-reporter.ts'],
    // Two cores: the stack's four servers already compete with the tests.
    fileParallelism: false,
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/**/*.pg.test.ts', 'node_modules/**'],
          // Property tests are CPU-bound; on a loaded 2-core machine 5 s is too tight.
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'stack',
          include: ['test/**/*.pg.test.ts'],
          globalSetup: ['test/stack/global-setup.ts'],
          testTimeout: 120_000,
          hookTimeout: 180_000,
        },
      },
    ],
  },
});
