// Prints one plain line, "tests: N passed, N failed, N skipped", so a CI log
// reader that does not know vitest's format still sees the counts. When
// LIFEBOAT_TEST_SUMMARY_FILE is set (scripts/bootstrap.mjs sets it), the line
// is also written there so the bootstrap can print it as the very last line.
import { writeFileSync } from 'node:fs';
import type { Reporter, TestModule } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const mod of testModules) {
      for (const test of mod.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
      }
      // A file that failed to load has no tests but must still count as a failure.
      if (mod.state() === 'failed' && [...mod.children.allTests()].length === 0) failed++;
    }
    const line = `tests: ${passed} passed, ${failed} failed, ${skipped} skipped`;
    process.stdout.write(`\n${line}\n`);
    const file = process.env.LIFEBOAT_TEST_SUMMARY_FILE;
    if (file) writeFileSync(file, `${line}\n`);
  }
}
