// Per-test resources for the *.pg.test.ts files: connections, slots and
// streams opened by a test are released after it, in reverse order. Importing
// this module registers the afterEach hook in the importing test file (vitest
// isolates modules per file, so each file gets its own list).
import pg from 'pg';
import { afterEach } from 'vitest';
import type { ReplicationStream, StreamedMessage } from '../../agent/replication-stream.ts';

const cleanups: (() => Promise<unknown> | unknown)[] = [];

afterEach(async () => {
  let first: unknown;
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch (err) {
      first ??= err;
    }
  }
  if (first !== undefined) throw first;
});

/** Runs `fn` after the current test, before the ones deferred earlier. */
export function defer(fn: () => Promise<unknown> | unknown): void {
  cleanups.push(fn);
}

/** A connected client, closed after the test. */
export async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  defer(() => c.end().catch(() => {}));
  return c;
}

/**
 * Drops a slot once its walsender let go of it. Slots are cluster-wide and
 * hold WAL, so a test that made one must not leave it behind.
 */
export async function dropSlotEventually(url: string, slot: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    for (let i = 0; i < 100; i++) {
      const r = await c.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      if (r.rows.length === 0) return;
      if (!r.rows[0]!.active) {
        await c.query('SELECT pg_drop_replication_slot($1)', [slot]);
        return;
      }
      await new Promise((res) => setTimeout(res, 100));
    }
    throw new Error(`slot ${slot} stayed active`);
  } finally {
    await c.end();
  }
}

/** The next message of a replication stream, or an error after `ms`. */
export async function nextWithin(stream: ReplicationStream, ms = 20_000): Promise<StreamedMessage> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const r = await Promise.race([
      stream.next(),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no message within ${ms} ms`)), ms))),
    ]);
    if (r.done) throw new Error('stream ended');
    return r.value;
  } finally {
    clearTimeout(timer);
  }
}
