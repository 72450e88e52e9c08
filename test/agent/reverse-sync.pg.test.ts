// Reverse sync (cloud → local) for failback, on the real local and cloud
// clusters: local is rebuilt from the cloud while the cloud takes writes, the
// drain brings the last of them, and forward streaming resumes from a new slot.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { agentStateFile, planStart, readAgentState, writeAgentState } from '../../agent/agent-state.ts';
import { ensureDdlCapture } from '../../agent/ddl-capture.ts';
import { ReverseSync, dropReverseReplication, resumeForwardStreaming, reverseStreamName } from '../../agent/reverse-sync.ts';
import { inspectSlot } from '../../agent/source-setup.ts';
import { PermanentError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { formatLsn, parseLsn } from '../../core/lsn.ts';
import { readStreamState, setFencingEpoch } from '../../functions/apply-engine.ts';
import { ensureTargetSchema } from '../../functions/target-schema.ts';
import { connect, defer, dropSlotEventually } from '../helpers/pg-test-resources.ts';
import { tableChecksum, userTables } from '../helpers/table-checksum.ts';
import { createDatabase } from '../stack/stack-env.ts';

const logger = createLogger({ component: 'reverse-sync-test', level: 'error' });
const hex = () => randomBytes(4).toString('hex');

const SHARED_SCHEMA = [
  'CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL)',
  'CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id), amount numeric(12,2) NOT NULL)',
  'CREATE TABLE events (kind text, n int)',
  'ALTER TABLE events REPLICA IDENTITY FULL',
  'CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL, version int NOT NULL)',
  // Out of line and uncompressed: updates that leave it alone send it as unchanged TOAST.
  'ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL',
  'CREATE SCHEMA app',
  'CREATE TABLE app.items (id bigint PRIMARY KEY, label text, tags text[])',
];

// ~9.6 kB of hex per row: stored out of line.
const BIG_TEXT = `(SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 300) AS g)`;

async function run(client: pg.ClientBase, statements: readonly string[]): Promise<void> {
  for (const s of statements) await client.query(s);
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Small transactions on the cloud until stopped: inserts with FKs, updates of TOASTed rows and of a FULL-identity table, deletes. */
function startCloudWriter(url: string) {
  const client = new pg.Client({ connectionString: url });
  let stopping = false;
  let iterations = 0;
  const done = (async () => {
    await client.connect();
    try {
      for (let i = 1; !stopping && i <= 3000; i++) {
        await client.query('BEGIN');
        const c = await client.query<{ id: number }>('INSERT INTO customers (name) VALUES ($1) RETURNING id', [`cloud-${i}`]);
        await client.query('INSERT INTO orders (customer_id, amount) VALUES ($1, $2)', [c.rows[0]!.id, `${i}.25`]);
        await client.query('UPDATE docs SET version = version + 1 WHERE id = $1', [(i % 4) + 1]);
        await client.query('UPDATE events SET n = n + 1000 WHERE kind = $1', [`k${i % 60}`]);
        if (i % 7 === 0) await client.query('UPDATE orders SET amount = amount + 1 WHERE id = $1', [(i % 300) + 1]);
        if (i % 10 === 0) {
          await client.query('DELETE FROM events WHERE kind = $1', [`k${(i / 10) % 60}`]);
          await client.query("INSERT INTO app.items VALUES ($1, 'added on the cloud', '{x,\"y z\"}')", [1000 + i]);
        }
        await client.query('COMMIT');
        iterations = i;
        await new Promise((r) => setTimeout(r, 10));
      }
    } finally {
      await client.end();
    }
  })();
  done.catch(() => undefined);
  return {
    get iterations() {
      return iterations;
    },
    async stop(): Promise<number> {
      stopping = true;
      await done;
      return iterations;
    },
  };
}

async function slotRow(client: pg.ClientBase, slot: string) {
  const r = await client.query<{ confirmed: string | null; active: boolean }>(
    'SELECT confirmed_flush_lsn::text AS confirmed, active FROM pg_replication_slots WHERE slot_name = $1',
    [slot],
  );
  return r.rows[0];
}

/** Changes the slot would stream now, through pgoutput with the publication (peek: nothing is consumed). */
async function pendingChanges(client: pg.ClientBase, slot: string, publication: string): Promise<number> {
  const r = await client.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
    [slot, publication],
  );
  return Number(r.rows[0]!.n);
}

/** A target on the cloud database whose forward stream is complete at `watermark` and fenced at `epoch`. */
async function prepareTarget(cloud: pg.Client, stream: string, watermark: string, epoch: number): Promise<void> {
  await ensureTargetSchema(cloud);
  await cloud.query(
    `INSERT INTO lifeboat.stream_state (stream, watermark, snapshot_id, snapshot_consistent_lsn, snapshot_complete, snapshot_completed_at)
     VALUES ($1, $2::pg_lsn, 'forward-copy-1', $2::pg_lsn, true, now())`,
    [stream, watermark],
  );
  await setFencingEpoch(cloud, stream, epoch, 'test');
}

async function databaseName(url: string): Promise<string> {
  return decodeURIComponent(new URL(url).pathname.slice(1));
}

describe('reverse sync and resuming forward streaming', () => {
  it('rebuilds local from the cloud under writes, drains, and resumes forward streaming from a new slot without looping back', async () => {
    const cloudUrl = await createDatabase('cloud', 'reverse_cloud');
    const localUrl = await createDatabase('local', 'reverse_local');
    const cloud = await connect(cloudUrl);
    const local = await connect(localUrl);
    const stream = 'main';
    const reverseSlot = `lb_rev_${hex()}`;
    const reversePublication = 'lifeboat_reverse';
    const forwardSlot = `lb_fwd_${hex()}`;
    const forwardPublication = 'lifeboat_main';
    defer(() => dropSlotEventually(cloudUrl, reverseSlot));
    defer(() => dropSlotEventually(localUrl, forwardSlot));

    // The cloud: what the app wrote there while failed over, plus the apply function's bookkeeping.
    await run(cloud, [
      ...SHARED_SCHEMA,
      'CREATE TABLE notes (id int PRIMARY KEY, note text)', // created on the cloud during the failover
      "INSERT INTO customers (name) SELECT 'customer-' || g FROM generate_series(1, 120) AS g",
      "INSERT INTO orders (customer_id, amount) SELECT (g % 120) + 1, g * 1.5 FROM generate_series(1, 300) AS g",
      "INSERT INTO events SELECT 'k' || g, g FROM generate_series(0, 59) AS g",
      `INSERT INTO docs SELECT g, ${BIG_TEXT}, 0 FROM generate_series(1, 4) AS g`,
      "INSERT INTO app.items SELECT g, 'item ' || g, ARRAY['a', 'b' || g] FROM generate_series(1, 50) AS g",
      "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10) AS g",
    ]);
    await prepareTarget(cloud, stream, '0/1000', 4);

    // Local: DDL capture and the forward publication and slot as the agent left them, an
    // older divergent copy, and rows the cloud never got (the stranded tail).
    await ensureDdlCapture(local);
    await run(local, SHARED_SCHEMA);
    await local.query(`CREATE PUBLICATION ${forwardPublication} FOR ALL TABLES`);
    const oldSlot = await local.query<{ lsn: string }>("SELECT lsn::text AS lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')", [forwardSlot]);
    const oldSlotLsn = parseLsn(oldSlot.rows[0]!.lsn);
    await run(local, [
      "INSERT INTO customers (name) SELECT 'old-' || g FROM generate_series(1, 100) AS g",
      "INSERT INTO orders (customer_id, amount) SELECT (g % 100) + 1, g FROM generate_series(1, 200) AS g",
      "INSERT INTO events SELECT 'old' || g, -g FROM generate_series(1, 40) AS g",
      "INSERT INTO docs SELECT g, 'old body', 7 FROM generate_series(1, 4) AS g",
      "INSERT INTO app.items SELECT g, 'old item', NULL FROM generate_series(1, 30) AS g",
      // stranded: never reached the cloud
      "INSERT INTO customers (id, name) VALUES (901, 'stranded-a'), (902, 'stranded-b')",
      'INSERT INTO orders (id, customer_id, amount) VALUES (9001, 901, 1), (9002, 902, 2)',
    ]);
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-reverse-'));
    defer(() => fs.rmSync(stateDir, { recursive: true, force: true }));
    await writeAgentState(agentStateFile(stateDir, stream), {
      stream,
      slot: forwardSlot,
      snapshotId: 'forward-copy-1',
      consistentLsn: oldSlotLsn,
      snapshotCompletedAt: new Date().toISOString(),
    });
    const ddlLogRows = async () => Number((await local.query<{ n: string }>('SELECT count(*) AS n FROM lifeboat.ddl_log')).rows[0]!.n);
    const ddlLogBefore = await ddlLogRows();

    // The local fence (agent/local-fence.ts does this in production): new sessions start read-only.
    await local.query(`ALTER DATABASE ${pg.escapeIdentifier(await databaseName(localUrl))} SET default_transaction_read_only = on`);

    const writer = startCloudWriter(cloudUrl);
    defer(() => writer.stop().catch(() => undefined));
    const sync = new ReverseSync({
      cloudUrl,
      localUrl,
      stream,
      slot: reverseSlot,
      publication: reversePublication,
      epoch: 4,
      chunkRows: 64,
      heartbeatIntervalMs: 200,
      logger,
    });
    defer(() => sync.stop());
    await waitFor('the cloud writer to start', () => writer.iterations > 0);
    await sync.start();

    const started = sync.status();
    expect(started.copiedTables).toBe(6);
    expect(started.rowsCopied).toBeGreaterThanOrEqual(120 + 300 + 60 + 4 + 50 + 10);
    expect(['streaming', 'caught-up']).toContain(started.phase);
    const writesAtStreamStart = writer.iterations;

    // The fence holds for everyone else while local is rebuilt.
    const app = await connect(localUrl);
    await expect(app.query("INSERT INTO customers (name) VALUES ('app write')")).rejects.toMatchObject({ code: '25006' });

    await waitFor('more cloud writes while streaming', () => writer.iterations >= writesAtStreamStart + 30);
    await waitFor('the reverse sync to catch up', () => sync.status().caughtUp);
    const caughtUp = sync.status();
    expect(caughtUp.phase).toBe('caught-up');
    expect(caughtUp.lagBytes).toBe(0);
    expect(caughtUp.detail).toMatch(/^Caught up: /);

    // The cloud stops taking writes (it is fenced in production), then the drain.
    const cloudWrites = await writer.stop();
    expect(cloudWrites).toBeGreaterThan(writesAtStreamStart);
    const cloudLsnBeforeDrain = parseLsn((await cloud.query<{ l: string }>('SELECT pg_current_wal_lsn()::text AS l')).rows[0]!.l);
    const drained = await sync.drain({ timeoutMs: 60_000 });
    expect(drained.cloudWalLsn).toBeGreaterThanOrEqual(cloudLsnBeforeDrain);
    expect(drained.appliedLsn).toBeGreaterThan(drained.cloudWalLsn);

    for (const table of await userTables(cloud)) {
      const want = await tableChecksum(cloud, table);
      expect({ table, ...(await tableChecksum(local, table)) }).toEqual({ table, ...want });
    }
    expect((await local.query('SELECT 1 FROM customers WHERE id >= 901 UNION ALL SELECT 1 FROM orders WHERE id >= 9001')).rows).toEqual([]);
    expect((await local.query("SELECT count(*)::int AS n FROM customers WHERE name LIKE 'old-%'")).rows[0].n).toBe(0);
    expect((await local.query<{ n: number }>('SELECT count(*)::int AS n FROM customers')).rows[0]!.n).toBe(120 + cloudWrites);
    // Sequences travel in the heartbeats: local hands out no value the cloud used.
    for (const seq of ['customers_id_seq', 'orders_id_seq']) {
      const onCloud = (await cloud.query<{ v: string }>(`SELECT last_value::text AS v FROM ${seq}`)).rows[0]!.v;
      const onLocal = (await local.query<{ v: string }>(`SELECT last_value::text AS v FROM ${seq}`)).rows[0]!.v;
      expect(BigInt(onLocal)).toBeGreaterThanOrEqual(BigInt(onCloud));
    }
    // Reverse sync ran with session_replication_role = replica: DDL capture logged nothing.
    expect(await ddlLogRows()).toBe(ddlLogBefore);
    // Heartbeats go on after the drain, so the watermark may have moved past it since.
    const reverseState = await readStreamState(local, reverseStreamName(stream));
    expect(reverseState?.watermark).toBeGreaterThanOrEqual(drained.appliedLsn);

    await sync.stop();
    expect(sync.status().phase).toBe('stopped');

    // Resume forward streaming, as failback does once the cloud is fenced at epoch 5.
    await setFencingEpoch(cloud, stream, 5, 'test');
    const localLsnBefore = parseLsn((await local.query<{ l: string }>('SELECT pg_current_wal_lsn()::text AS l')).rows[0]!.l);
    const resumed = await resumeForwardStreaming({
      localUrl,
      stream,
      slot: forwardSlot,
      publication: forwardPublication,
      stateDir,
      targetClient: cloud,
      epoch: 5,
      reverse: { cloudUrl, slot: reverseSlot, publication: reversePublication },
      logger,
    });
    expect(resumed.droppedOldSlotAt).toBe(oldSlotLsn);
    expect(resumed.droppedReverseSlot).toBe(true);
    expect(resumed.droppedReversePublication).toBe(true);
    expect(resumed.consistentLsn).toBeGreaterThan(localLsnBefore);

    // A new slot: it starts after everything reverse sync wrote.
    const newSlot = await slotRow(local, forwardSlot);
    expect(newSlot?.confirmed).toBe(formatLsn(resumed.consistentLsn));
    // The agent's next start streams from it without a snapshot.
    const state = await readAgentState(agentStateFile(stateDir, stream), stream);
    expect(state).toMatchObject({ slot: forwardSlot, consistentLsn: resumed.consistentLsn, snapshotId: 'forward-copy-1' });
    const plan = planStart({ state, slot: await inspectSlot(local, forwardSlot), resnapshot: false, slotName: forwardSlot });
    expect(plan.action).toBe('stream-from-slot');
    // The target's chain continues at the new slot's consistent point; its fencing epoch stays.
    const target = await readStreamState(cloud, stream);
    expect(target).toMatchObject({ watermark: resumed.consistentLsn, epoch: 5, snapshotComplete: true });
    // The reverse slot and publication are gone from the cloud.
    expect(await slotRow(cloud, reverseSlot)).toBeUndefined();
    expect((await cloud.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [reversePublication])).rows).toEqual([]);
    // Local keeps DDL capture's log but not the reverse stream's bookkeeping.
    expect(resumed.droppedLocalBookkeeping).toContain('lifeboat.stream_state');
    expect((await local.query("SELECT to_regclass('lifeboat.stream_state') AS t, to_regclass('lifeboat.ddl_log') AS d")).rows[0]).toEqual({
      t: null,
      d: 'lifeboat.ddl_log',
    });

    // No loop: nothing reverse sync wrote is in the new slot; a local write after the fence lifts is.
    expect(await pendingChanges(local, forwardSlot, forwardPublication)).toBe(0);
    await local.query(`ALTER DATABASE ${pg.escapeIdentifier(await databaseName(localUrl))} RESET default_transaction_read_only`);
    const appAfter = await connect(localUrl);
    await appAfter.query("INSERT INTO customers (name) VALUES ('after failback')");
    expect(await pendingChanges(local, forwardSlot, forwardPublication)).toBeGreaterThan(0);
  });

  it('refuses to resume forward streaming with an epoch below the target fencing epoch, before dropping anything', async () => {
    const cloudUrl = await createDatabase('cloud', 'reverse_stale_cloud');
    const localUrl = await createDatabase('local', 'reverse_stale_local');
    const cloud = await connect(cloudUrl);
    const local = await connect(localUrl);
    const reverseSlot = `lb_rev_${hex()}`;
    const forwardSlot = `lb_fwd_${hex()}`;
    defer(() => dropSlotEventually(cloudUrl, reverseSlot));
    defer(() => dropSlotEventually(localUrl, forwardSlot));
    await prepareTarget(cloud, 'main', '0/1000', 6);
    await cloud.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [reverseSlot]);
    await local.query('CREATE PUBLICATION lifeboat_main FOR ALL TABLES');
    await local.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [forwardSlot]);
    const before = await slotRow(local, forwardSlot);
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-reverse-'));
    defer(() => fs.rmSync(stateDir, { recursive: true, force: true }));

    const attempt = resumeForwardStreaming({
      localUrl,
      stream: 'main',
      slot: forwardSlot,
      publication: 'lifeboat_main',
      stateDir,
      targetClient: cloud,
      epoch: 5,
      reverse: { cloudUrl, slot: reverseSlot, publication: 'lifeboat_reverse' },
      logger,
    });
    await expect(attempt).rejects.toBeInstanceOf(PermanentError);
    await expect(attempt).rejects.toThrow(/epoch 5 is below the target's fencing epoch 6/);
    expect(await slotRow(local, forwardSlot)).toEqual(before);
    expect(await slotRow(cloud, reverseSlot)).toBeDefined();
    expect(fs.readdirSync(stateDir)).toEqual([]);
    expect((await readStreamState(cloud, 'main'))?.watermark).toBe(parseLsn('0/1000'));

    // dropReverseReplication on its own clears the cloud side, and is idempotent.
    expect(await dropReverseReplication({ cloudUrl, slot: reverseSlot, publication: 'lifeboat_reverse' }, logger)).toEqual({
      droppedSlot: true,
      droppedPublication: false,
    });
    expect(await dropReverseReplication({ cloudUrl, slot: reverseSlot, publication: 'lifeboat_reverse' }, logger)).toEqual({
      droppedSlot: false,
      droppedPublication: false,
    });
  });

  it('stops with a clear error when the reverse slot is lost while streaming, and nothing claims to be drained', async () => {
    const cloudUrl = await createDatabase('cloud', 'reverse_lost_cloud');
    const localUrl = await createDatabase('local', 'reverse_lost_local');
    const cloud = await connect(cloudUrl);
    const local = await connect(localUrl);
    const reverseSlot = `lb_rev_${hex()}`;
    defer(() => dropSlotEventually(cloudUrl, reverseSlot));
    await run(cloud, ['CREATE TABLE t (id int PRIMARY KEY, v text)', "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) AS g"]);
    await run(local, ['CREATE TABLE t (id int PRIMARY KEY, v text)']);

    const sync = new ReverseSync({ cloudUrl, localUrl, stream: 'main', slot: reverseSlot, publication: 'lifeboat_reverse', heartbeatIntervalMs: 200, logger });
    defer(() => sync.stop());
    await sync.start();
    expect(sync.status()).toMatchObject({ copiedTables: 1, rowsCopied: 20 });
    await waitFor('streaming', () => sync.status().caughtUp);

    // A lost connection is retried from the local watermark; nothing is lost or applied twice.
    await cloud.query('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1', [reverseSlot]);
    await cloud.query("INSERT INTO t SELECT g, 'after ' || g FROM generate_series(21, 25) AS g");
    await cloud.query("UPDATE t SET v = 'changed' WHERE id = 3");
    await sync.drain({ timeoutMs: 30_000 });
    expect(await tableChecksum(local, 't')).toEqual(await tableChecksum(cloud, 't'));
    expect((await tableChecksum(local, 't')).rows).toBe(25);

    // Someone drops the slot: end its walsender and drop it before the sync reconnects.
    await waitFor(
      'the reverse slot to be dropped',
      async () => {
        await cloud.query('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active', [reverseSlot]);
        const r = await cloud.query<{ dropped: boolean }>(
          'SELECT pg_drop_replication_slot(slot_name) IS NULL AS dropped FROM pg_replication_slots WHERE slot_name = $1 AND NOT active',
          [reverseSlot],
        ).catch(() => ({ rows: [] as { dropped: boolean }[] }));
        return r.rows.length > 0 || (await slotRow(cloud, reverseSlot)) === undefined;
      },
      30_000,
    );
    await waitFor('the sync to fail', () => sync.status().phase === 'failed', 30_000);
    const failed = sync.status();
    expect(failed.caughtUp).toBe(false);
    expect(failed.detail).toMatch(new RegExp(`^Reverse sync failed: .*(replication slot|reverse slot) "${reverseSlot}"`));
    await expect(sync.wait()).rejects.toBeInstanceOf(PermanentError);
    await expect(sync.drain({ timeoutMs: 1_000 })).rejects.toBeInstanceOf(PermanentError);
  });
});
