// Fencing the local database on the real PostgreSQL: what a fence does to new
// and existing sessions and to the app role, lifting it with a valid lease
// only, and the agent fencing itself when its lease store stops answering.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fenceLocalDatabase, liftLocalFence, readLocalFence, checkFencePrivileges, FENCE_TABLE } from '../../agent/local-fence.ts';
import type { Logger } from '../../core/log.ts';
import { parseConfig } from '../../core/config.ts';
import { PermanentError } from '../../core/errors.ts';
import { createLease, LeaseClient, requestTakeover, type CompareAndSetResult, type Lease, type LeaseSnapshot, type LeaseStore } from '../../core/writer-lease.ts';
import { defer, dropSlotEventually } from '../helpers/pg-test-resources.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { startAgentHarness, waitFor } from './agent-harness.ts';

const quiet: Logger = {
  level: 'critical',
  isLevelEnabled: () => false,
  debug: () => {},
  info: () => {},
  notice: () => {},
  warn: () => {},
  error: () => {},
  critical: () => {},
  child: () => quiet,
};

// The fenced database makes new sessions read-only: the test's own housekeeping overrides it.
const READ_WRITE = '-c default_transaction_read_only=off';

/** A session that survives being terminated (pg emits 'error' on an idle client). */
async function session(url: string, opts: { user?: string; readWrite?: boolean } = {}): Promise<pg.Client> {
  const u = new URL(url);
  if (opts.user) u.username = opts.user;
  const c = new pg.Client({ connectionString: u.toString(), ...(opts.readWrite && { options: READ_WRITE }) });
  c.on('error', () => {});
  await c.connect();
  defer(() => c.end().catch(() => {}));
  return c;
}

async function sqlState(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  }
}

const timing = parseConfig({ project: 'fence-test', lease: { ttlSeconds: 30, renewIntervalSeconds: 5, clockSkewMarginSeconds: 5 } });

let url: string;
let database: string;
let appRole: string;
let admin: pg.Client;

beforeAll(async () => {
  url = await createDatabase('local', 'fence');
  database = decodeURIComponent(new URL(url).pathname.slice(1));
  appRole = `app_${database.slice(-12)}`;
  admin = new pg.Client({ connectionString: url, options: READ_WRITE });
  await admin.connect();
  await admin.query('CREATE TABLE t (id int PRIMARY KEY)');
  await admin.query(`CREATE ROLE ${pg.escapeIdentifier(appRole)} LOGIN`);
  await admin.query(`GRANT ALL ON t TO ${pg.escapeIdentifier(appRole)}`);
  // A direct grant as well as PUBLIC's default: both must go for the role to be locked out.
  await admin.query(`GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(database)} TO ${pg.escapeIdentifier(appRole)}`);
});

afterAll(async () => {
  if (!admin) return;
  await admin.query(`DROP OWNED BY ${pg.escapeIdentifier(appRole)}`).catch(() => {});
  await admin.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(appRole)}`).catch(() => {});
  await admin.end();
});

describe('fenceLocalDatabase / liftLocalFence', () => {
  it('makes new sessions of every role read-only, terminates existing ones, locks the app role out, and lifts only with a valid lease', async () => {
    expect(await checkFencePrivileges(admin, { database, appRole })).toEqual([]);
    const idle = await session(url);
    const app = await session(url, { user: appRole });
    await app.query('INSERT INTO t VALUES (1)');
    const idlePid = (await idle.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const appPid = (await app.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const spared = await session(url);
    const sparedPid = (await spared.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;

    const fence = await fenceLocalDatabase(admin, { database, appRole, revokeConnect: true, reason: 'the test fences it', epoch: 3, sparePids: [sparedPid], logger: quiet });
    expect(fence.alreadyFenced).toBe(false);
    expect(fence.terminated.map((s) => s.pid).sort()).toEqual([idlePid, appPid].sort());
    expect(fence.revokedConnect).toEqual([appRole, 'PUBLIC']);
    expect(fence.appRoleCanConnect).toBe(false);
    expect(fence.problems).toEqual([]);

    // Existing sessions are gone, idle or not; the spared one still works.
    expect(await sqlState(idle.query('SELECT 1'))).toBeDefined();
    expect(await sqlState(app.query('SELECT 1'))).toBeDefined();
    expect((await spared.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    // A new superuser session starts read-only.
    const fresh = await session(url);
    expect(await sqlState(fresh.query('INSERT INTO t VALUES (2)'))).toBe('25006');
    // …while reading and logical messages (heartbeats, markers) still work.
    expect((await fresh.query('SELECT count(*)::int AS n FROM t')).rows[0].n).toBe(1);
    await fresh.query(`SELECT pg_logical_emit_message(true, 'fence-test', 'x')`);
    // The app role cannot connect at all.
    expect(await sqlState(session(url, { user: appRole }))).toBe('42501');

    const state = await readLocalFence(admin);
    expect(state.fenced).toBe(true);
    expect(state.record).toMatchObject({ fenced: true, reason: 'the test fences it', epoch: 3, revokedConnect: [appRole, 'PUBLIC'] });

    // The record never travels in a FOR ALL TABLES publication (it is unlogged).
    await admin.query('CREATE PUBLICATION fence_test_all FOR ALL TABLES');
    const published = await admin.query<{ t: string }>(`SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = 'fence_test_all'`);
    expect(published.rows.map((r) => r.t)).toEqual(['public.t']);
    expect(FENCE_TABLE).toBe('lifeboat.fence');

    // Idempotent: the first record stays, and so does every role to give CONNECT back to.
    const freshPid = (await fresh.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const again = await fenceLocalDatabase(admin, { database, appRole, revokeConnect: true, reason: 'a second reason', epoch: 4, sparePids: [sparedPid], logger: quiet });
    expect(again.alreadyFenced).toBe(true);
    expect(again.revokedConnect).toEqual([]);
    expect(again.terminated.map((s) => s.pid)).toEqual([freshPid]);
    expect((await readLocalFence(admin)).record).toMatchObject({ reason: 'the test fences it', epoch: 3, revokedConnect: [appRole, 'PUBLIC'] });

    // Lifting needs a lease that lets local write.
    const now = Date.now();
    const held: Lease = { ...createLease('local', now, timing, 'test'), epoch: 3 };
    const refusals: Lease[] = [
      { ...createLease('cloud', now, timing, 'test'), epoch: 4 },
      requestTakeover(held, 'cloud', now, 'the app is down'),
      { ...held, renewedAt: now - 60_000, leaseExpiresAt: now - 30_000 },
      { ...held, epoch: 2 },
    ];
    for (const lease of refusals) {
      await expect(liftLocalFence(admin, { database, lease, timing, now, logger: quiet })).rejects.toThrow(PermanentError);
    }
    expect((await readLocalFence(admin)).fenced).toBe(true);

    const whileFenced = await session(url);
    const whileFencedPid = (await whileFenced.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const lift = await liftLocalFence(admin, { database, lease: held, timing, now, sparePids: [sparedPid], logger: quiet });
    expect(lift.lifted).toBe(true);
    expect(lift.regranted).toEqual([appRole, 'PUBLIC']);
    // A session opened while fenced started read-only: it is ended so that it reconnects writable.
    expect(lift.terminated.map((s) => s.pid)).toContain(whileFencedPid);

    const after = await session(url);
    await after.query('INSERT INTO t VALUES (2)');
    const appAgain = await session(url, { user: appRole });
    await appAgain.query('INSERT INTO t VALUES (3)');
    const lifted = await readLocalFence(admin);
    expect(lifted.fenced).toBe(false);
    expect(lifted.record).toMatchObject({ fenced: false, revokedConnect: [] });
    expect(lifted.record?.liftedAt).not.toBeNull();

    // Lifting an unfenced database changes nothing and ends no session.
    const noop = await liftLocalFence(admin, { database, lease: held, timing, now, logger: quiet });
    expect(noop).toMatchObject({ lifted: false, terminated: [] });
    await after.query('INSERT INTO t VALUES (4)');
    await admin.query('DROP PUBLICATION fence_test_all');
  });

  it('fences even when the named app role does not exist, and says so', async () => {
    const other = await createDatabase('local', 'fencenorole');
    const db = decodeURIComponent(new URL(other).pathname.slice(1));
    const c = await session(other, { readWrite: true });
    const result = await fenceLocalDatabase(c, { database: db, appRole: 'no_such_role_here', revokeConnect: true, reason: 'test', logger: quiet });
    expect(result.problems.join(' ')).toMatch(/no_such_role_here does not exist/);
    expect((await readLocalFence(c)).fenced).toBe(true);
    expect(await checkFencePrivileges(c, { database: db, appRole: 'no_such_role_here' })).toEqual([expect.stringMatching(/does not exist/)]);
    // The client must be connected to the database it fences (the record lives there).
    await expect(fenceLocalDatabase(c, { database: 'postgres', reason: 'test', logger: quiet })).rejects.toThrow(/connected to database/);
  });
});

/** A lease store that, once told to, never answers again. */
class HangingLeaseStore implements LeaseStore {
  hanging = false;
  hungCalls = 0;
  constructor(private readonly inner: LeaseStore) {}
  read(): Promise<LeaseSnapshot | undefined> {
    if (this.hanging) return this.hang();
    return this.inner.read();
  }
  compareAndSet(expectedVersion: string | null, next: Lease): Promise<CompareAndSetResult> {
    if (this.hanging) return this.hang();
    return this.inner.compareAndSet(expectedVersion, next);
  }
  private hang<T>(): Promise<T> {
    this.hungCalls += 1;
    return new Promise<T>(() => {});
  }
}

describe('the agent when its lease store stops answering', () => {
  it('fences the local database before ttl − margin after its last confirmed renewal, stops, and lifts the fence once it holds the lease again', async () => {
    const dbUrl = await createDatabase('local', 'leaseloss');
    const db = await session(dbUrl);
    await db.query('CREATE TABLE items (id int PRIMARY KEY)');
    const h = await startAgentHarness(dbUrl, 'leaseloss', {
      lease: { ttlSeconds: 8, renewIntervalSeconds: 1, clockSkewMarginSeconds: 2 },
    });
    defer(() => h.close());
    defer(() => dropSlotEventually(dbUrl, 'lifeboat_leaseloss'));
    const cfg = h.config();
    const store = new HangingLeaseStore(h.leaseStore());
    // Fencing gets 2.5 s before the deadline; a loaded machine fences in well under that.
    const run = h.startAgent({ lease: { client: new LeaseClient({ store, timing: cfg }), fenceLeadMs: 2_500 } });

    await waitFor('streaming', () => run.agent.status().phase === 'streaming');
    expect(run.agent.status().fence.state).toBe('unfenced');
    await db.query('INSERT INTO items VALUES (1)');
    await waitFor('the row', () => h.changes('insert').length === 1);
    const firstRenewal = run.agent.status().lease!.renewedAt;
    await waitFor('a renewal', () => run.agent.status().lease!.renewedAt !== firstRenewal);
    const idle = await session(dbUrl);

    store.hanging = true;
    const hungAt = Date.now();
    const outcome = await run.done;

    expect(outcome.ending).toBe('fenced');
    const status = run.agent.status();
    const lastConfirmed = Date.parse(status.lease!.renewedAt!);
    const deadline = Date.parse(status.lease!.selfFenceAt!);
    const fencedAt = Date.parse(status.fence.fencedAt!);
    // In order: the last confirmed renewal started, the store went silent, the fence was complete, the deadline.
    expect(lastConfirmed).toBeLessThanOrEqual(hungAt);
    expect(hungAt).toBeLessThan(fencedAt);
    expect(fencedAt).toBeLessThan(deadline);
    expect(deadline).toBe(lastConfirmed + (cfg.lease.ttlSeconds - cfg.lease.clockSkewMarginSeconds) * 1000);
    // The renewals that hung never answered: the deadline timer did not wait for them.
    // (Each was abandoned after its bound; the fence came from the timer, not from a renewal answer.)
    expect(store.hungCalls).toBeGreaterThan(0);
    expect(status.phase).toBe('fenced');
    expect(status.fence.state).toBe('fenced');

    expect(await sqlState(idle.query('SELECT 1'))).toBeDefined();
    const fresh = await session(dbUrl);
    expect(await sqlState(fresh.query('INSERT INTO items VALUES (2)'))).toBe('25006');
    // The fence ended every session that was open, the test's own too.
    expect(await sqlState(db.query('SELECT 1'))).toBeDefined();
    const inspect = await session(dbUrl, { readWrite: true });
    const state = await readLocalFence(inspect);
    expect(state.record).toMatchObject({ fenced: true, epoch: 1 });
    expect(state.record!.reason).toMatch(/no renewal was confirmed since/);

    // With the store answering again, a new start acquires the lease and only then lifts the fence.
    store.hanging = false;
    const again = h.startAgent({ lease: { client: new LeaseClient({ store, timing: cfg }) } });
    try {
      await waitFor('streaming again', () => again.agent.status().phase === 'streaming');
      expect(again.agent.status().fence.state).toBe('unfenced');
      const writer = await session(dbUrl);
      await writer.query('INSERT INTO items VALUES (3)');
      await waitFor('the row after the restart', () => h.changes('insert').some((c) => c.op === 'insert' && c.new[0] === '3'));
      expect((await readLocalFence(writer)).fenced).toBe(false);
    } finally {
      expect((await again.stop()).ending).toBe('stopped');
    }
  }, 120_000);
});
