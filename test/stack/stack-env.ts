// What *.pg.test.ts files import: the shared stack started by global-setup.ts,
// and helpers that keep tests isolated from each other on it.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { recordInStack, type StackInfo } from '../../local/local-stack.ts';

export type { StackInfo } from '../../local/local-stack.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    stack: StackInfo;
  }
}

let recorded = false;

/**
 * A worker whose main vitest process is killed on its own (a signal to that
 * pid only) is orphaned: it spins at full CPU and even goes on running tests.
 * Listed in the stack's pid file, it is killed with the stack's processes by
 * the main process's exit hook or, if that died by SIGKILL, by the reaper.
 */
function recordThisWorker(stack: StackInfo): void {
  // In a threads pool the "worker" is the main process itself.
  if (recorded || process.pid === stack.ownerPid) return;
  recorded = true;
  recordInStack(stack.tempDir, { name: 'vitest worker', pid: process.pid, stopSignal: 'SIGKILL' });
}

/**
 * The stack's connection info. Also sets the emulator variables in this
 * worker, for code that reads them rather than taking explicit settings.
 */
export function getStack(): StackInfo {
  const stack = inject('stack');
  if (!stack) {
    throw new Error(
      'no local stack was provided: getStack() works only in the vitest "stack" project ' +
        '(files named *.pg.test.ts, run with `npx vitest run --project stack`)',
    );
  }
  process.env.PUBSUB_EMULATOR_HOST = stack.pubsubEmulatorHost;
  process.env.FIRESTORE_EMULATOR_HOST = stack.firestoreEmulatorHost;
  process.env.METADATA_SERVER_DETECTION = 'none';
  recordThisWorker(stack);
  return stack;
}

// As soon as a test file imports this, not only once it calls getStack().
{
  const stack = inject('stack') as StackInfo | undefined;
  if (stack) recordThisWorker(stack);
}

let counter = 0;

/** Short, unique across workers and runs: pid, time and randomness. */
function uniqueSuffix(): string {
  counter += 1;
  return `${process.pid.toString(36)}${Date.now().toString(36)}${randomBytes(2).toString('hex')}${counter}`;
}

/** The same server URL with another database name. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

/**
 * Creates a fresh, empty database on the local or cloud cluster and returns
 * its URL. `name` is a readable prefix; a unique suffix is always added, so
 * tests never see each other's tables, slots' data or publications.
 */
export async function createDatabase(which: 'local' | 'cloud', name = 'test'): Promise<string> {
  const stack = getStack();
  const serverUrl = which === 'local' ? stack.localUrl : stack.cloudUrl;
  const prefix = name.toLowerCase().replace(/[^a-z0-9_]+/g, '_').slice(0, 30) || 'test';
  const database = `${prefix}_${uniqueSuffix()}`.slice(0, 63);
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE "${database}"`);
  } finally {
    await client.end();
  }
  return withDatabase(serverUrl, database);
}

/**
 * A project id no other test uses, so Pub/Sub topics and Firestore documents
 * never collide on the shared emulators. Follows GCP's rules: 6–30 chars,
 * lowercase letters, digits and hyphens, starting with a letter.
 */
export function uniqueProjectId(prefix = 'test'): string {
  const head = prefix.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^[^a-z]+/, '') || 'test';
  const tail = `${Date.now().toString(36).slice(-5)}${randomBytes(3).toString('hex')}${counter++}`;
  return `${head.slice(0, 29 - tail.length)}-${tail}`.slice(0, 30);
}
