// vitest globalSetup of the 'stack' project: one local stack for the whole
// run, shared by every *.pg.test.ts file through inject('stack').
import fs from 'node:fs';
import type { TestProject } from 'vitest/node';
import { childPids, isProcessAlive, processesWithCwdUnder, startLocalStack } from '../../local/local-stack.ts';
// Type-only, erased at run time: stack-env.ts imports the 'vitest' runtime,
// which must not load here. Its ProvidedContext declaration types provide().
import type {} from './stack-env.ts';

/**
 * vitest answers SIGINT/SIGTERM to its main process with process.exit(),
 * without terminating its fork workers: orphaned, they spin at full CPU and go
 * on running tests. The stack's own exit hook stops the stack; this one takes
 * the workers along. (A worker that imported stack-env.ts is also in the
 * stack's pid file, for the reaper, should this process die by SIGKILL.)
 */
function killOrphanedWorkers(): void {
  for (const pid of childPids(process.pid)) {
    let cmdline = '';
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (!cmdline.startsWith('node (vitest')) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const stack = await startLocalStack();
  const { info } = stack;
  // Workers are forked after this and inherit these; clients built without
  // explicit settings then find the emulators too.
  process.env.PUBSUB_EMULATOR_HOST = info.pubsubEmulatorHost;
  process.env.FIRESTORE_EMULATOR_HOST = info.firestoreEmulatorHost;
  process.env.METADATA_SERVER_DETECTION = 'none';
  project.provide('stack', info);
  process.on('exit', killOrphanedWorkers);

  return async () => {
    // Teardown means a normal end: vitest terminates its workers itself.
    process.off('exit', killOrphanedWorkers);
    await stack.stop();
    const survivors = stack.pids().filter((pid) => isProcessAlive(pid));
    const strays = processesWithCwdUnder(info.tempDir);
    if (survivors.length > 0 || strays.length > 0) {
      throw new Error(
        `local stack left processes behind after stop(): ` +
          `pids ${[...survivors, ...strays].join(', ')} (of ${JSON.stringify(info.pids)}) still run; ` +
          `kill them by hand and check the stop logic in test/stack/local-stack.ts`,
      );
    }
  };
}
