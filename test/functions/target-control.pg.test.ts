// The cloud target's control actions against the real "cloud" PostgreSQL
// cluster. The app role is a real login role; the tests connect as it to
// show that the gate holds at the data layer (privileges), not only through
// the session default that any client can SET off.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { type ChangeBatch, type ChangeBatchWire, parseChangeBatch } from '../../core/change-batch.ts';
import { PermanentError, ValidationError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { formatLsn } from '../../core/lsn.ts';
import { StreamHaltedError, applyBatch, readStreamState, setFencingEpoch } from '../../functions/apply-engine.ts';
import {
  advanceSequences,
  fenceCloudTarget,
  prepareTargetRoles,
  readControlObservations,
  rebaseStreamWatermark,
  setAppWriteAccess,
} from '../../functions/target-control.ts';
import { ensureTargetSchema } from '../../functions/target-schema.ts';
import { connect, defer } from '../helpers/pg-test-resources.ts';
import { createDatabase } from '../stack/stack-env.ts';

const logger = createLogger({ component: 'target-control-test', level: 'critical' });
const STREAM = 'main';

// ---------------------------------------------------------------------------
// Batches

const lsn = (n: number): string => formatLsn(BigInt(n));
const at = '2026-11-23T13:31:02.123456Z';

function wire(partial: Partial<ChangeBatchWire> & Pick<ChangeBatchWire, 'kind' | 'lsnPrev' | 'lsnFirst' | 'lsnLast'>): ChangeBatch {
  return parseChangeBatch({ v: 1, stream: STREAM, epoch: 1, seq: 0, createdAt: at, relations: [], transactions: [], ...partial });
}

/** An empty initial copy completed at `consistent`: the watermark starts there. */
function snapshotComplete(consistent: number, snapshotId: string, epoch = 1): ChangeBatch {
  return wire({
    kind: 'marker',
    epoch,
    lsnPrev: lsn(consistent),
    lsnFirst: lsn(consistent),
    lsnLast: lsn(consistent),
    marker: { markerId: `done-${snapshotId}`, reason: 'snapshot-complete', snapshot: { snapshotId, consistentLsn: lsn(consistent), tables: [] } },
  });
}

const itemsRel = {
  oid: 16400,
  schema: 'public',
  name: 'items',
  replicaIdentity: 'default' as const,
  columns: [
    { name: 'id', type: 'integer', typeOid: 23, typmod: -1, key: true },
    { name: 'v', type: 'text', typeOid: 25, typmod: -1, key: false },
  ],
};

/** One transaction on public.items, from `prev` to `end`. */
function itemsBatch(prev: number, end: number, change: ChangeBatchWire['transactions'][number]['changes'][number], epoch: number): ChangeBatch {
  return wire({
    kind: 'changes',
    epoch,
    lsnPrev: lsn(prev),
    lsnFirst: lsn(prev + 1),
    lsnLast: lsn(end),
    relations: [itemsRel],
    transactions: [{ xid: 1000, commitLsn: lsn(prev + 1), endLsn: lsn(end), commitTime: at, changes: [change] }],
  });
}

function heartbeat(prev: number, epoch: number): ChangeBatch {
  return wire({
    kind: 'heartbeat',
    epoch,
    lsnPrev: lsn(prev),
    lsnFirst: lsn(prev + 8),
    lsnLast: lsn(prev + 8),
    heartbeat: { sourceTime: at, walLsn: lsn(prev + 8), sequences: [] },
  });
}

// ---------------------------------------------------------------------------
// A target database with an app role

interface Target {
  url: string;
  admin: pg.Client;
  appRole: string;
  appUrl: string;
}

/** A fresh target database (lifeboat schema migrated) and a new login role for the app, dropped after the test. */
async function freshTarget(name: string, appRole = `app_${randomBytes(4).toString('hex')}`): Promise<Target> {
  const url = await createDatabase('cloud', name);
  const admin = await connect(url);
  await ensureTargetSchema(admin);
  const password = `pw-${randomBytes(8).toString('hex')}`;
  await admin.query(`CREATE ROLE ${pg.escapeIdentifier(appRole)} LOGIN PASSWORD ${pg.escapeLiteral(password)}`);
  defer(async () => {
    // Roles are cluster-wide: leave none behind.
    const cleanup = await connect(url);
    await cleanup.query('SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1', [appRole]);
    await cleanup.query(`DROP OWNED BY ${pg.escapeIdentifier(appRole)}`);
    await cleanup.query(`DROP ROLE ${pg.escapeIdentifier(appRole)}`);
  });
  const u = new URL(url);
  u.username = appRole;
  u.password = password;
  return { url, admin, appRole, appUrl: u.toString() };
}

/** A session logged in as the app role. A server-side termination is recorded, not thrown. */
async function appSession(t: Target): Promise<{ client: pg.Client; errors: Error[] }> {
  const errors: Error[] = [];
  const client = new pg.Client({ connectionString: t.appUrl });
  client.on('error', (err) => errors.push(err));
  await client.connect();
  defer(() => client.end().catch(() => {}));
  return { client, errors };
}

async function show(client: pg.Client, setting: string): Promise<string> {
  const res = await client.query<Record<string, string>>(`SHOW ${setting}`);
  return Object.values(res.rows[0]!)[0]!;
}

async function auditRows(admin: pg.Client, actionLike: string): Promise<{ id: string; at: Date; action: string; epoch: string | null }[]> {
  const res = await admin.query<{ id: string; at: Date; action: string; epoch: string | null }>(
    "SELECT id::text, at, action, detail->>'epoch' AS epoch FROM lifeboat.audit WHERE action LIKE $1 ORDER BY id",
    [actionLike],
  );
  return res.rows;
}

// ---------------------------------------------------------------------------

describe('the app role on the target (data-layer gate)', () => {
  it('cannot write before promotion, even with the read-only default SET off; can write once writable, also into a table the apply role creates later', async () => {
    const t = await freshTarget('tc_gate');
    await t.admin.query(`
      CREATE TABLE public.items (id int PRIMARY KEY, v text);
      INSERT INTO public.items VALUES (1, 'replicated');
      CREATE SCHEMA shop;
      CREATE TABLE shop.orders (id bigserial PRIMARY KEY, note text)`);

    const prepared = await prepareTargetRoles(t.admin, { stream: STREAM, appRole: t.appRole, logger });
    expect(prepared).toMatchObject({ writable: false, epoch: 0, schemas: ['public', 'shop'], tables: 2, sequences: 1, terminatedSessions: 0 });

    const before = await appSession(t);
    expect(await show(before.client, 'default_transaction_read_only')).toBe('on');
    expect((await before.client.query('SELECT v FROM public.items')).rows).toEqual([{ v: 'replicated' }]);
    await expect(before.client.query("INSERT INTO public.items VALUES (2, 'x')")).rejects.toMatchObject({ code: '25006' });
    await before.client.query('SET default_transaction_read_only = off');
    await expect(before.client.query("INSERT INTO public.items VALUES (2, 'x')")).rejects.toMatchObject({ code: '42501' });
    await expect(before.client.query("UPDATE public.items SET v = 'y'")).rejects.toMatchObject({ code: '42501' });
    await expect(before.client.query('DELETE FROM public.items')).rejects.toMatchObject({ code: '42501' });
    await expect(before.client.query('TRUNCATE public.items')).rejects.toMatchObject({ code: '42501' });
    await expect(before.client.query("INSERT INTO shop.orders (note) VALUES ('x')")).rejects.toMatchObject({ code: '42501' });
    await expect(before.client.query("SELECT nextval('shop.orders_id_seq')")).rejects.toMatchObject({ code: '42501' });

    // Writable only at exactly the target's fencing epoch.
    const writable = { stream: STREAM, appRole: t.appRole, writable: true, epoch: 2, logger };
    await expect(setAppWriteAccess(t.admin, writable)).rejects.toThrow(/no fencing epoch was written/);
    await setFencingEpoch(t.admin, STREAM, 2);
    await expect(setAppWriteAccess(t.admin, { ...writable, epoch: 1 })).rejects.toThrow(/already fenced at epoch 2 for stream main; this step is stale/);
    await expect(setAppWriteAccess(t.admin, { ...writable, epoch: 3 })).rejects.toThrow(/fencing epoch is 2 for stream main, below 3/);
    await expect(before.client.query("INSERT INTO public.items VALUES (2, 'x')")).rejects.toMatchObject({ code: '42501' });

    const granted = await setAppWriteAccess(t.admin, writable);
    expect(granted).toMatchObject({ writable: true, epoch: 2, notWritable: [], terminatedSessions: 1 });
    await expect(before.client.query('SELECT 1')).rejects.toThrow(); // its read-only default was fixed at connect: ended

    const after = await appSession(t);
    expect(await show(after.client, 'default_transaction_read_only')).toBe('off');
    await after.client.query("INSERT INTO public.items VALUES (2, 'from the cloud app')");
    await after.client.query("UPDATE public.items SET v = 'changed' WHERE id = 1");
    const order = await after.client.query<{ id: string }>("INSERT INTO shop.orders (note) VALUES ('first') RETURNING id::text");
    expect(order.rows).toEqual([{ id: '1' }]);

    // Tables the apply role (here the connected role) creates afterwards get the grants too.
    await t.admin.query('CREATE TABLE public.later (id bigserial PRIMARY KEY, v text); CREATE TABLE shop.later (id int PRIMARY KEY)');
    await after.client.query("INSERT INTO public.later (v) VALUES ('ok')");
    await after.client.query('INSERT INTO shop.later VALUES (1)');
    expect((await t.admin.query('SELECT count(*)::int AS n FROM public.later')).rows).toEqual([{ n: 1 }]);

    expect((await auditRows(t.admin, 'app-%')).map((r) => [r.action, r.epoch])).toEqual([
      ['app-read-only', '0'],
      ['app-writable', '2'],
    ]);
  });

  it('refuses to call the role read-only while PUBLIC can still write, and names the table (nothing changes)', async () => {
    const t = await freshTarget('tc_public', `Cloud App-${randomBytes(3).toString('hex')}`); // a name that needs quoting
    await t.admin.query('CREATE TABLE public.items (id int PRIMARY KEY); CREATE TABLE public.notes (id int PRIMARY KEY); GRANT INSERT ON public.notes TO PUBLIC');
    const error = await prepareTargetRoles(t.admin, { stream: STREAM, appRole: t.appRole, logger }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermanentError);
    expect((error as PermanentError).message).toContain('can still write 1 object after its writes were revoked: "public"."notes"');
    expect((error as PermanentError).remedy).toContain('PUBLIC');
    const app = await appSession(t);
    expect(await show(app.client, 'default_transaction_read_only')).toBe('off'); // rolled back with the rest
    expect(await auditRows(t.admin, 'app-%')).toEqual([]);

    await t.admin.query('REVOKE INSERT ON public.notes FROM PUBLIC');
    await prepareTargetRoles(t.admin, { stream: STREAM, appRole: t.appRole, logger });
    const later = await appSession(t);
    await later.client.query('SET default_transaction_read_only = off');
    await expect(later.client.query('INSERT INTO public.notes VALUES (1)')).rejects.toMatchObject({ code: '42501' });
  });

  it('a missing app role is a PermanentError naming it and saying how to create it', async () => {
    const t = await freshTarget('tc_norole');
    await setFencingEpoch(t.admin, STREAM, 1);
    const error = await setAppWriteAccess(t.admin, { stream: STREAM, appRole: 'no_such_app', writable: true, epoch: 1, logger }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermanentError);
    expect((error as PermanentError).message).toBe('the app role "no_such_app" does not exist on the target database server');
    expect((error as PermanentError).remedy).toContain('CREATE ROLE "no_such_app" LOGIN');
    await expect(setAppWriteAccess(t.admin, { stream: STREAM, appRole: '', writable: true, epoch: 1 })).rejects.toBeInstanceOf(ValidationError);
    await expect(prepareTargetRoles(t.admin, { stream: STREAM, appRole: t.appRole, schemas: ['lifeboat'] })).rejects.toBeInstanceOf(ValidationError);
  });
});

describe('as an ordinary apply role (no superuser, as on Cloud SQL)', () => {
  it('prepares, grants and fences with CREATEROLE, ownership of the tables and pg_signal_backend', async () => {
    const t = await freshTarget('tc_apply_role');
    const applyRole = `apply_${randomBytes(4).toString('hex')}`;
    const database = (await t.admin.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
    await t.admin.query(`CREATE ROLE ${applyRole} LOGIN CREATEROLE; GRANT pg_signal_backend TO ${applyRole};
      GRANT CREATE ON DATABASE ${pg.escapeIdentifier(database)} TO ${applyRole}; ALTER SCHEMA public OWNER TO ${applyRole};
      ALTER SCHEMA lifeboat OWNER TO ${applyRole}; GRANT ALL ON ALL TABLES IN SCHEMA lifeboat TO ${applyRole}; GRANT ALL ON ALL SEQUENCES IN SCHEMA lifeboat TO ${applyRole}`);
    defer(async () => {
      const cleanup = await connect(t.url);
      await cleanup.query(`REASSIGN OWNED BY ${applyRole} TO CURRENT_USER; DROP OWNED BY ${applyRole}`);
      await cleanup.query(`DROP ROLE ${applyRole}`);
    });
    const u = new URL(t.appUrl);
    u.username = applyRole;
    u.password = '';
    const apply = await connect(u.toString());
    await apply.query('CREATE TABLE public.items (id int PRIMARY KEY)');

    await prepareTargetRoles(apply, { stream: STREAM, appRole: t.appRole, applyRole, logger });
    const readOnly = await appSession(t);
    await readOnly.client.query('SET default_transaction_read_only = off');
    await expect(readOnly.client.query('INSERT INTO public.items VALUES (1)')).rejects.toMatchObject({ code: '42501' });

    await setFencingEpoch(apply, STREAM, 2);
    expect(await setAppWriteAccess(apply, { stream: STREAM, appRole: t.appRole, writable: true, epoch: 2, logger })).toMatchObject({ applyRole, terminatedSessions: 1 });
    await apply.query('CREATE TABLE public.later (id int PRIMARY KEY)');
    const writer = await appSession(t);
    await writer.client.query('INSERT INTO public.items VALUES (1); INSERT INTO public.later VALUES (1)');

    const fenced = await fenceCloudTarget(apply, { stream: STREAM, epoch: 3, appRole: t.appRole, logger });
    expect(fenced.access.terminatedSessions).toBe(1);
    await expect(writer.client.query('SELECT 1')).rejects.toThrow();
    const after = await appSession(t);
    await after.client.query('SET default_transaction_read_only = off');
    await expect(after.client.query('INSERT INTO public.later VALUES (2)')).rejects.toMatchObject({ code: '42501' });
  });
});

describe('fenceCloudTarget', () => {
  it('writes the epoch first, in the same transaction as the read-only gate; the old epoch is stale and the idle app session is ended', async () => {
    const t = await freshTarget('tc_fence');
    await t.admin.query('CREATE TABLE public.items (id int PRIMARY KEY, v text)');
    await applyBatch(t.admin, snapshotComplete(0x1000, 'snap-a'), { logger });
    await setFencingEpoch(t.admin, STREAM, 2);
    await setAppWriteAccess(t.admin, { stream: STREAM, appRole: t.appRole, writable: true, epoch: 2, logger });
    const idle = await appSession(t);
    await idle.client.query("INSERT INTO public.items VALUES (1, 'written while the cloud served')");

    const fenced = await fenceCloudTarget(t.admin, { stream: STREAM, epoch: 3, appRole: t.appRole, logger });
    expect(fenced).toMatchObject({ epoch: 3, previousEpoch: 2, access: { writable: false, epoch: 3, terminatedSessions: 1 } });
    await expect(idle.client.query('SELECT 1')).rejects.toThrow();
    expect((await t.admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1', [t.appRole])).rows).toEqual([{ n: 0 }]);

    // A batch of the cloud's old epoch (or an old agent's) is refused at the data layer and kept.
    const stale = await applyBatch(t.admin, itemsBatch(0x1000, 0x1100, { op: 'insert', rel: 0, new: ['2', 'late'] }, 2), { logger });
    expect(stale.outcome).toBe('stale-epoch');
    expect((await t.admin.query('SELECT count(*)::int AS n FROM lifeboat.stale_batches')).rows).toEqual([{ n: 1 }]);
    expect((await t.admin.query('SELECT id FROM public.items ORDER BY id')).rows).toEqual([{ id: 1 }]);

    const app = await appSession(t);
    await expect(app.client.query("INSERT INTO public.items VALUES (3, 'x')")).rejects.toMatchObject({ code: '25006' });
    await app.client.query('SET default_transaction_read_only = off');
    await expect(app.client.query("INSERT INTO public.items VALUES (3, 'x')")).rejects.toMatchObject({ code: '42501' });

    // One transaction: the same now(), the epoch row first.
    const rows = await t.admin.query<{ action: string; at: Date }>(
      "SELECT action, at FROM lifeboat.audit WHERE (action = 'fencing-epoch' AND detail->>'to' = '3') OR action = 'app-read-only' ORDER BY id",
    );
    expect(rows.rows.map((r) => r.action)).toEqual(['fencing-epoch', 'app-read-only']);
    expect(rows.rows[0]!.at.getTime()).toBe(rows.rows[1]!.at.getTime());

    // A retried fence changes nothing more and does not lower anything.
    const again = await fenceCloudTarget(t.admin, { stream: STREAM, epoch: 3, appRole: t.appRole, logger });
    expect(again).toMatchObject({ epoch: 3, previousEpoch: 3 });
    expect((await readStreamState(t.admin, STREAM))?.epoch).toBe(3);
    expect((await auditRows(t.admin, 'fencing-epoch')).length).toBe(2); // 2 by setFencingEpoch, 3 by the fence
  });
});

describe('advanceSequences', () => {
  it('sets every sequence past its own position and every value in its columns, plus the gap; once per epoch', async () => {
    const t = await freshTarget('tc_seq');
    await t.admin.query(`
      CREATE TABLE public.s_serial (id serial PRIMARY KEY, v text);
      INSERT INTO public.s_serial (id, v) VALUES (500, 'explicit id above the never-called sequence');
      CREATE TABLE public.s_ident (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);
      INSERT INTO public.s_ident VALUES (DEFAULT), (DEFAULT), (DEFAULT);
      SELECT setval(pg_get_serial_sequence('public.s_ident', 'id'), 40); -- as a heartbeat would have shipped it
      CREATE SEQUENCE public.shared_seq;
      CREATE TABLE public.s_shared (n bigint DEFAULT nextval('public.shared_seq'));
      INSERT INTO public.s_shared VALUES (9007199254740993); -- 2^53 + 1: exact only as bigint
      CREATE SEQUENCE public.countdown INCREMENT -1;
      SELECT setval('public.countdown', -50)`);
    const lifeboatSeq = async () => (await t.admin.query('SELECT last_value::text AS v, is_called FROM lifeboat.stale_batches_id_seq')).rows;
    const lifeboatSeqBefore = await lifeboatSeq();

    await expect(advanceSequences(t.admin, { stream: STREAM, epoch: 2, gap: 1000, logger })).rejects.toThrow(/no fencing epoch was written/);
    await setFencingEpoch(t.admin, STREAM, 2);
    await expect(advanceSequences(t.admin, { stream: STREAM, epoch: 3, gap: 1000, logger })).rejects.toBeInstanceOf(PermanentError);

    const advanced = await advanceSequences(t.admin, { stream: STREAM, epoch: 2, gap: 1000, logger });
    expect(advanced).toEqual([
      { schema: 'public', name: 'countdown', from: -50n, ownedMax: null, to: -1050n },
      { schema: 'public', name: 's_ident_id_seq', from: 40n, ownedMax: 3n, to: 1040n },
      { schema: 'public', name: 's_serial_id_seq', from: 0n, ownedMax: 500n, to: 1500n },
      { schema: 'public', name: 'shared_seq', from: 0n, ownedMax: 9007199254740993n, to: 9007199254741993n },
    ]);
    const next = async () =>
      (await t.admin.query<{ serial: string; ident: string; shared: string; down: string }>(
        "SELECT nextval('public.s_serial_id_seq')::text AS serial, nextval('public.s_ident_id_seq')::text AS ident, nextval('public.shared_seq')::text AS shared, nextval('public.countdown')::text AS down",
      )).rows[0];
    expect(await next()).toEqual({ serial: '1501', ident: '1041', shared: '9007199254741994', down: '-1051' });
    expect(await lifeboatSeq()).toEqual(lifeboatSeqBefore); // the lifeboat schema is left out

    // The runner retries the step at the same epoch: the recorded result, no second gap.
    const retried = await advanceSequences(t.admin, { stream: STREAM, epoch: 2, gap: 1000, logger });
    expect(retried).toEqual(advanced);
    expect(await next()).toEqual({ serial: '1502', ident: '1042', shared: '9007199254741995', down: '-1052' });

    // A new epoch (a later failover) advances again.
    await setFencingEpoch(t.admin, STREAM, 4);
    const later = await advanceSequences(t.admin, { stream: STREAM, epoch: 4, gap: 10n, logger });
    expect(later.find((s) => s.name === 's_serial_id_seq')).toEqual({ schema: 'public', name: 's_serial_id_seq', from: 1502n, ownedMax: 500n, to: 1512n });
    expect((await auditRows(t.admin, 'advance-sequences')).map((r) => r.epoch)).toEqual(['2', '4']);
  });

  it('refuses to pass a sequence maximum and changes nothing', async () => {
    const t = await freshTarget('tc_seq_max');
    await t.admin.query('CREATE TABLE public.tiny (id smallserial PRIMARY KEY); INSERT INTO public.tiny VALUES (32000); CREATE SEQUENCE public.roomy');
    await setFencingEpoch(t.admin, STREAM, 1);
    const error = await advanceSequences(t.admin, { stream: STREAM, epoch: 1, gap: 1000, logger }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermanentError);
    expect((error as PermanentError).message).toContain('"public"."tiny_id_seq" would need 33000, beyond its MAXVALUE 32767');
    expect((await t.admin.query("SELECT last_value::text AS v, is_called FROM public.roomy")).rows).toEqual([{ v: '1', is_called: false }]);
    expect(await auditRows(t.admin, 'advance-sequences')).toEqual([]);
  });
});

describe('readControlObservations', () => {
  it('reports the watermark, when a batch last moved it, the fencing epoch and a halt', async () => {
    const t = await freshTarget('tc_obs');
    expect(await readControlObservations(t.admin, STREAM)).toEqual({ appliedLsn: null, lastAppliedAt: null, fencingEpoch: 0, halted: false, haltReason: null });

    await applyBatch(t.admin, snapshotComplete(0x1000, 'snap-a'), { logger });
    const afterCopy = await readControlObservations(t.admin, STREAM);
    expect(afterCopy).toMatchObject({ appliedLsn: 0x1000n, fencingEpoch: 0, halted: false });
    expect(afterCopy.lastAppliedAt).toBeInstanceOf(Date);

    await applyBatch(t.admin, heartbeat(0x1000, 1), { logger });
    await setFencingEpoch(t.admin, STREAM, 4);
    const afterHeartbeat = await readControlObservations(t.admin, STREAM);
    expect(afterHeartbeat).toMatchObject({ appliedLsn: 0x1008n, fencingEpoch: 4, halted: false, haltReason: null });
    expect(afterHeartbeat.lastAppliedAt!.getTime()).toBeGreaterThan(afterCopy.lastAppliedAt!.getTime());

    // An update of a row the target does not have halts the stream.
    await t.admin.query('CREATE TABLE public.items (id int PRIMARY KEY, v text)');
    await expect(applyBatch(t.admin, itemsBatch(0x1008, 0x1100, { op: 'update', rel: 0, new: ['9', 'missing'] }, 4), { logger })).rejects.toBeInstanceOf(StreamHaltedError);
    const halted = await readControlObservations(t.admin, STREAM);
    expect(halted).toMatchObject({ appliedLsn: 0x1008n, halted: true });
    expect(halted.haltReason).toContain('the target diverged from the source');
  });
});

describe('rebaseStreamWatermark', () => {
  it('moves the watermark onto the new slot chain (here below the old one), so the next batch applies rather than counting as a duplicate', async () => {
    const t = await freshTarget('tc_rebase');
    await applyBatch(t.admin, snapshotComplete(0x50000, 'snap-old'), { logger });
    await applyBatch(t.admin, itemsBatch(0x50000, 0x50100, { op: 'insert', rel: 0, new: ['1', 'old chain'] }, 1), { logger });
    await fenceCloudTarget(t.admin, { stream: STREAM, epoch: 3, appRole: t.appRole, logger });

    // Without the rebase, the new chain's first batch would be taken for a duplicate (lsnLast ≤ W).
    const newChain = itemsBatch(0x300, 0x400, { op: 'insert', rel: 0, new: ['2', 'new chain'] }, 3);
    const rebase = { stream: STREAM, lsn: 0x300n, epoch: 3, reason: 'failback: new slot lifeboat_main', logger };

    await expect(rebaseStreamWatermark(t.admin, { ...rebase, epoch: 2 })).rejects.toThrow(/refused: the target is fenced at epoch 3/);
    expect(await rebaseStreamWatermark(t.admin, rebase)).toEqual({ changed: true, watermarkBefore: 0x50100n, watermark: 0x300n });
    const state = await readStreamState(t.admin, STREAM);
    expect(state).toMatchObject({ watermark: 0x300n, snapshotConsistentLsn: 0x300n, snapshotComplete: true, snapshotId: 'snap-old', epoch: 3, halted: false });

    const applied = await applyBatch(t.admin, newChain, { logger });
    expect(applied).toMatchObject({ outcome: 'applied', watermark: 0x400n, appliedRows: 1 });
    expect((await t.admin.query('SELECT id, v FROM public.items ORDER BY id')).rows).toEqual([
      { id: 1, v: 'old chain' },
      { id: 2, v: 'new chain' },
    ]);
    expect((await applyBatch(t.admin, newChain, { logger })).outcome).toBe('duplicate');

    // A retried rebase must not move W back under what the new chain applied since.
    expect(await rebaseStreamWatermark(t.admin, rebase)).toEqual({ changed: false, watermarkBefore: 0x400n, watermark: 0x400n });
    expect((await readStreamState(t.admin, STREAM))?.watermark).toBe(0x400n);

    // A fresh initial copy on the new chain (consistent point below the old copy's) is not mistaken for a superseded one.
    const resnapshot = await applyBatch(t.admin, snapshotComplete(0x500, 'snap-new', 3), { logger });
    expect(resnapshot.outcome).toBe('snapshot-complete');

    const audit = await t.admin.query<{ detail: Record<string, unknown> }>("SELECT detail FROM lifeboat.audit WHERE action = 'rebase-watermark'");
    expect(audit.rows).toEqual([
      { detail: { epoch: 3, lsn: '0/300', reason: 'failback: new slot lifeboat_main', fencingEpoch: 3, watermarkBefore: '0/50100', snapshotConsistentLsnBefore: '0/50000' } },
    ]);
  });

  it('refuses a stream without a complete initial copy', async () => {
    const t = await freshTarget('tc_rebase_nocopy');
    await setFencingEpoch(t.admin, STREAM, 1);
    await expect(rebaseStreamWatermark(t.admin, { stream: STREAM, lsn: 0x300n, epoch: 1, reason: 'test', logger })).rejects.toThrow(/no complete initial copy/);
    await expect(rebaseStreamWatermark(t.admin, { stream: STREAM, lsn: 0x300n, epoch: 1, reason: ' ', logger })).rejects.toBeInstanceOf(ValidationError);
  });
});
