// The apply engine against real PostgreSQL: the local cluster is the source
// (real pgoutput through the agent's ReplicationStream and ChangeBatcher, with
// DDL capture), the cloud cluster the target. Precise cases (snapshots,
// epochs, halts) use hand-built batches.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { ChangeBatcher, UnknownTypeError } from '../../agent/change-batcher.ts';
import { ensureDdlCapture } from '../../agent/ddl-capture.ts';
import { createLogicalSlot, createReplicationClient, startReplicationStream, type ReplicationStream, type StreamedMessage } from '../../agent/replication-stream.ts';
import { emitHeartbeat, readSequences } from '../../agent/source-setup.ts';
import { type ChangeBatch, type ChangeBatchWire, parseChangeBatch, toWireJson as toWire } from '../../core/change-batch.ts';
import { RetryableError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { type Lsn, formatLsn } from '../../core/lsn.ts';
import {
  ApplyGapError,
  StreamHaltedError,
  applyBatch,
  readStreamState,
  resumeStream,
  setFencingEpoch,
} from '../../functions/apply-engine.ts';
import { ensureTargetSchema, TARGET_SCHEMA_VERSION } from '../../functions/target-schema.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { tableChecksum, userTables } from '../helpers/table-checksum.ts';
import { connect, defer, nextWithin } from '../helpers/pg-test-resources.ts';

const execFileAsync = promisify(execFile);
const logger = createLogger({ component: 'apply-engine-test', level: 'critical' });
const PUBLICATION = 'lifeboat_test';
const STREAM = 'main';

// ---------------------------------------------------------------------------
// Hand-built batches

const lsn = (n: number): string => formatLsn(BigInt(n));
const at = '2026-11-23T13:31:02.123456Z';

function wire(partial: Partial<ChangeBatchWire> & Pick<ChangeBatchWire, 'kind' | 'lsnPrev' | 'lsnFirst' | 'lsnLast'>): ChangeBatch {
  return parseChangeBatch({ v: 1, stream: STREAM, epoch: 1, seq: 0, createdAt: at, relations: [], transactions: [], ...partial });
}

function snapshotComplete(consistent: number, snapshotId: string, tables: { schema: string; name: string; chunks: number; rows: number }[] = []): ChangeBatch {
  return wire({
    kind: 'marker',
    lsnPrev: lsn(consistent),
    lsnFirst: lsn(consistent),
    lsnLast: lsn(consistent),
    marker: { markerId: `done-${snapshotId}`, reason: 'snapshot-complete', snapshot: { snapshotId, consistentLsn: lsn(consistent), tables } },
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
const bagRel = {
  oid: 16401,
  schema: 'public',
  name: 'bag',
  replicaIdentity: 'full' as const,
  columns: [{ name: 'v', type: 'text', typeOid: 25, typmod: -1, key: true }],
};

/** A changes batch of one transaction per entry, inserting/updating public.items. */
function itemsBatch(prev: number, txs: { end: number; changes: ChangeBatchWire['transactions'][number]['changes'] }[], epoch = 1): ChangeBatch {
  let commit = prev;
  return wire({
    kind: 'changes',
    epoch,
    lsnPrev: lsn(prev),
    lsnFirst: lsn(prev + 1),
    lsnLast: lsn(txs[txs.length - 1]!.end),
    relations: [itemsRel],
    transactions: txs.map((tx, i) => {
      const out = { xid: 1000 + i, commitLsn: lsn(i === 0 ? prev + 1 : commit), endLsn: lsn(tx.end), commitTime: at, changes: tx.changes };
      commit = tx.end;
      return out;
    }),
  });
}

function snapshotChunk(snapshotId: string, consistent: number, relation: typeof itemsRel | typeof bagRel, chunk: number, rows: string[][], lastChunk: boolean): ChangeBatch {
  return wire({
    kind: 'snapshot',
    lsnPrev: lsn(consistent),
    lsnFirst: lsn(consistent),
    lsnLast: lsn(consistent),
    relations: [relation],
    snapshot: { snapshotId, relation: 0, chunk, rows, lastChunk, consistentLsn: lsn(consistent) },
  });
}

async function freshTarget(name: string): Promise<pg.Client> {
  const target = await connect(await createDatabase('cloud', name));
  await ensureTargetSchema(target);
  return target;
}

// ---------------------------------------------------------------------------
// Real batches: source → pgoutput → ChangeBatcher

interface Pipeline {
  source: pg.Client;
  target: pg.Client;
  sourceUrl: string;
  /** Batches for everything the source committed since the last capture. */
  capture(opts?: { maxRows?: number }): Promise<ChangeBatch[]>;
}

/** `preSql` runs on the source before DDL capture and the slot: those tables are missing on the target. */
async function pipeline(name: string, preSql: string[] = []): Promise<Pipeline> {
  const sourceUrl = await createDatabase('local', name);
  const source = await connect(sourceUrl);
  const target = await freshTarget(name);
  for (const sql of preSql) await source.query(sql);
  await ensureDdlCapture(source);
  await source.query(`CREATE PUBLICATION ${PUBLICATION} FOR ALL TABLES`);
  const slot = `apply_${randomBytes(4).toString('hex')}`;
  const repl = createReplicationClient(sourceUrl);
  await repl.connect();
  const created = await createLogicalSlot(repl, slot);
  await repl.end();
  defer(async () => {
    const c = new pg.Client({ connectionString: sourceUrl });
    await c.connect();
    await c.query('SELECT pg_drop_replication_slot($1)', [slot]).catch(() => undefined);
    await c.end();
  });
  // The initial copy of a database whose published tables are empty.
  const copied = await applyBatch(target, snapshotComplete(Number(created.consistentPoint), 'initial'), { logger });
  expect(copied.outcome).toBe('snapshot-complete');

  const typeNames = new Map<string, string>();
  let position: Lsn = created.consistentPoint;
  let seq = 1;
  let captures = 0;
  return {
    source,
    target,
    sourceUrl,
    async capture(opts = {}) {
      const sentinel = `test-end-${captures++}`;
      await source.query("SELECT pg_logical_emit_message(false, $1, 'x')", [sentinel]);
      const stream = await startReplicationStream({ connectionString: sourceUrl, slot, publication: PUBLICATION, startLsn: position, logger });
      try {
        const batcher = new ChangeBatcher({
          stream: STREAM,
          epoch: () => 1,
          startLsn: position,
          maxRows: opts.maxRows ?? 5000,
          maxBytes: 256 * 1024 * 1024,
          maxDelayMs: 3_600_000,
          clock: () => Date.now(),
          typeName: (oid, typmod) => typeNames.get(`${oid}:${typmod}`),
          firstSeq: seq,
          logger,
        });
        const batches: ChangeBatch[] = [];
        for (;;) {
          const item = await nextWithin(stream, 30_000);
          if (item.message.tag === 'message' && item.message.prefix === sentinel) break;
          try {
            batches.push(...batcher.push(item));
          } catch (err) {
            if (!(err instanceof UnknownTypeError)) throw err;
            for (const t of err.types) {
              const r = await source.query<{ name: string }>('SELECT format_type($1::oid, $2::int) AS name', [t.oid, t.typmod]);
              typeNames.set(`${t.oid}:${t.typmod}`, r.rows[0]!.name);
            }
            batches.push(...batcher.push(item));
          }
        }
        batches.push(...batcher.flush());
        const last = batches[batches.length - 1];
        if (last !== undefined) {
          position = last.lsnLast;
          seq = last.seq + 1;
          stream.confirm(position);
        }
        // Every batch survives the wire form, as it would through Pub/Sub.
        return batches.map((b) => parseChangeBatch(JSON.parse(JSON.stringify(toWire(b)))));
      } finally {
        await stream.close();
      }
    },
  };
}


async function applyInOrder(target: pg.Client, batches: readonly ChangeBatch[]): Promise<void> {
  for (const b of batches) {
    const r = await applyBatch(target, b, { logger });
    expect(['applied', 'heartbeat', 'marker']).toContain(r.outcome);
  }
}

async function expectSameTables(source: pg.Client, target: pg.Client): Promise<string[]> {
  const tables = await userTables(source);
  expect(await userTables(target)).toEqual(tables);
  for (const t of tables) {
    expect(await tableChecksum(target, t), t).toEqual(await tableChecksum(source, t));
  }
  return tables;
}

// ---------------------------------------------------------------------------

describe('apply engine', () => {
  it('migrates the target schema idempotently', async () => {
    const target = await freshTarget('apply_schema');
    expect(await ensureTargetSchema(target)).toEqual({ from: TARGET_SCHEMA_VERSION, to: TARGET_SCHEMA_VERSION });
  });

  it('applies every change kind and the type-fidelity matrix exactly (real pgoutput)', async () => {
    const toast = randomBytes(50_000).toString('hex');
    const p = await pipeline('apply_types', ['CREATE TABLE pre_existing (id int PRIMARY KEY, v text)']);
    const { source, target } = p;
    await source.query("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')");
    await source.query(`CREATE TABLE types (
       id int PRIMARY KEY, n40 numeric(40,10), n numeric, i8 bigint, i8min bigint, j json, jb jsonb, tstz timestamptz, ts timestamp,
       d date, iv interval, by bytea, u uuid, ia int[], ta text[], m mood, ma mood[], r int4range, tr tstzrange, vc varchar(20),
       t text, e text, big text, pt point, g int GENERATED ALWAYS AS (id * 2) STORED)`);
    await source.query('ALTER TABLE types ALTER COLUMN big SET STORAGE EXTERNAL');
    await source.query('CREATE TABLE nopk (a int, b json)');
    await source.query('ALTER TABLE nopk REPLICA IDENTITY FULL');
    await source.query(`INSERT INTO types VALUES (1, '123456789012345678901234567890.1234567890', '1e-30', 9223372036854775807, -9223372036854775808,
       '{"big": 12345678901234567890, "a": 1, "a": 2, "f": 1.10}', '{"big": 12345678901234567890, "f": 1.10}',
       '2026-11-23 13:31:02.123456+00', '1999-12-31 23:59:59.999999', '2026-02-28', '1 year 2 mons -3 days 04:05:06.789',
       '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', '{"a b","c,d",NULL,""}', 'happy', '{sad,happy}',
       '[1,10)', '[2026-01-01 00:00:00+00,2026-12-31 00:00:00+00)', 'héllo wörld', '日本語 🚀 ''quoted'' "dq" \\ back', '', $1, '(1.5,-2)')`, [toast]);
    await source.query("INSERT INTO types (id, t, e) VALUES (2, NULL, ''), (3, 'x', 'y')");
    await source.query("INSERT INTO pre_existing VALUES (1, 'one'), (2, 'two')");
    await source.query("INSERT INTO nopk VALUES (1, '{\"x\": 1}'), (1, '{\"x\": 1}'), (2, NULL)");
    // Unchanged TOAST: big stays, t changes.
    await source.query("UPDATE types SET t = 'changed' WHERE id = 1");
    // PK change, delete, FULL identity update of one of two identical rows, delete.
    await source.query('UPDATE types SET id = 30 WHERE id = 3');
    await source.query('DELETE FROM types WHERE id = 2');
    await source.query("UPDATE nopk SET a = 5 WHERE ctid = (SELECT min(ctid) FROM nopk WHERE a = 1)");
    await source.query('DELETE FROM nopk WHERE a = 2');
    await source.query("UPDATE pre_existing SET v = 'uno' WHERE id = 1");
    await source.query('CREATE TABLE gone (id int PRIMARY KEY)');
    await source.query('INSERT INTO gone VALUES (1), (2)');
    await source.query('TRUNCATE gone');
    await source.query('INSERT INTO gone VALUES (3)');

    const batches = await p.capture({ maxRows: 4 });
    expect(batches.length).toBeGreaterThan(3);
    await applyInOrder(target, batches);

    await expectSameTables(source, target);
    // Every column, as text, equal on both sides (generated column included).
    const rowText = 'SELECT t::text AS row FROM types t ORDER BY id';
    expect((await target.query(rowText)).rows).toEqual((await source.query(rowText)).rows);
    const big = await target.query<{ len: number; same: boolean }>('SELECT length(big) AS len, big = $1 AS same FROM types WHERE id = 1', [toast]);
    expect(big.rows[0]).toEqual({ len: 100_000, same: true });
    // The pre-existing table was created on the target from its descriptor, with its key.
    const pk = await target.query("SELECT 1 FROM pg_index WHERE indrelid = 'public.pre_existing'::regclass AND indisprimary");
    expect(pk.rowCount).toBe(1);
    const state = await readStreamState(target, STREAM);
    expect(state?.watermark).toBe(batches[batches.length - 1]!.lsnLast);
  });

  it('gives the same state when every batch is delivered twice and shuffled', async () => {
    const p = await pipeline('apply_shuffle');
    const { source, target } = p;
    await source.query('CREATE TABLE acc (id int PRIMARY KEY, bal bigint NOT NULL, note text)');
    await source.query('CREATE TABLE hist (id bigserial PRIMARY KEY, acc int, delta int)');
    await source.query("INSERT INTO acc SELECT g, 0, 'n' FROM generate_series(1, 50) g");
    for (let i = 0; i < 60; i++) {
      const id = (i * 7) % 50 + 1;
      await source.query('BEGIN');
      await source.query('UPDATE acc SET bal = bal + $2 WHERE id = $1', [id, i]);
      await source.query('UPDATE acc SET bal = bal - 1 WHERE id = $1', [((id + 3) % 50) + 1]);
      await source.query('INSERT INTO hist (acc, delta) VALUES ($1, $2)', [id, i]);
      if (i % 13 === 0) await source.query('DELETE FROM hist WHERE id = (SELECT min(id) FROM hist)');
      await source.query('COMMIT');
      if (i === 30) {
        const seqs = await readSequences(source, [{ schema: 'public', name: 'hist' }]);
        await emitHeartbeat(source, seqs);
      }
    }
    const batches = await p.capture({ maxRows: 7 });
    expect(batches.length).toBeGreaterThan(20);
    expect(batches.some((b) => b.kind === 'heartbeat')).toBe(true);

    // Pub/Sub without order: every batch twice, shuffled; a gap comes back later.
    const queue = [...batches, ...batches].sort(() => Math.random() - 0.5);
    const outcomes = new Map<string, number>();
    let attempts = 0;
    while (queue.length > 0) {
      const b = queue.shift()!;
      attempts++;
      expect(attempts).toBeLessThan(20_000);
      try {
        const r = await applyBatch(target, b, { logger });
        outcomes.set(r.outcome, (outcomes.get(r.outcome) ?? 0) + 1);
      } catch (err) {
        expect(err).toBeInstanceOf(ApplyGapError);
        queue.push(b);
      }
    }
    expect(outcomes.get('duplicate')).toBe(batches.length);
    await expectSameTables(source, target);
    const seq = await target.query<{ last_value: string }>('SELECT last_value::text FROM public.hist_id_seq');
    expect(Number(seq.rows[0]!.last_value)).toBeGreaterThanOrEqual(31);
  });

  it('serializes concurrent deliveries of the same batch', async () => {
    const url = await createDatabase('cloud', 'apply_concurrent');
    const a = await connect(url);
    const b = await connect(url);
    await ensureTargetSchema(a);
    await applyBatch(a, snapshotComplete(100, 's1'), { logger });
    const batch = itemsBatch(100, [{ end: 110, changes: [{ op: 'insert', rel: 0, new: ['1', 'x'] }] }]);
    const results = await Promise.all([applyBatch(a, batch, { logger }), applyBatch(b, batch, { logger })]);
    expect(results.map((r) => r.outcome).sort()).toEqual(['applied', 'duplicate']);
    expect((await a.query('SELECT count(*)::int AS n FROM items')).rows[0]).toEqual({ n: 1 });
  });

  it('refuses a stale epoch inside the transaction, keeps the payload, applies nothing', async () => {
    const target = await freshTarget('apply_epoch');
    await applyBatch(target, snapshotComplete(100, 's1'), { logger });
    await applyBatch(target, itemsBatch(100, [{ end: 110, changes: [{ op: 'insert', rel: 0, new: ['1', 'a'] }] }], 3), { logger });
    expect(await setFencingEpoch(target, STREAM, 4)).toBe(4);
    expect(await setFencingEpoch(target, STREAM, 2)).toBe(4); // never lowered

    const stale = itemsBatch(110, [{ end: 120, changes: [{ op: 'insert', rel: 0, new: ['2', 'b'] }] }], 3);
    const r = await applyBatch(target, stale, { logger, attributes: { seq: '7' } });
    expect(r).toMatchObject({ outcome: 'stale-epoch', appliedRows: 0, watermark: 110n });
    expect((await applyBatch(target, stale, { logger })).outcome).toBe('stale-epoch'); // redelivered: kept once
    expect((await target.query('SELECT count(*)::int AS n FROM items')).rows[0]).toEqual({ n: 1 });
    const kept = await target.query('SELECT epoch, fencing_epoch, lsn_first::text, attributes, payload FROM lifeboat.stale_batches');
    expect(kept.rows).toHaveLength(1);
    expect(kept.rows[0]).toMatchObject({ epoch: '3', fencing_epoch: '4', lsn_first: lsn(111), attributes: { seq: '7' } });
    expect(parseChangeBatch(kept.rows[0].payload)).toEqual(stale);

    // The new writer's epoch applies.
    const fresh = itemsBatch(110, [{ end: 120, changes: [{ op: 'insert', rel: 0, new: ['2', 'b'] }] }], 4);
    expect((await applyBatch(target, fresh, { logger })).outcome).toBe('applied');
  });

  it('runs the snapshot flow, including a restarted copy with a new id', async () => {
    const target = await freshTarget('apply_snapshot');
    const change = itemsBatch(200, [{ end: 210, changes: [{ op: 'update', rel: 0, new: ['1', 'changed'] }] }]);
    // Chunks out of order and twice; changes wait for the copy.
    expect((await applyBatch(target, snapshotChunk('s1', 100, itemsRel, 1, [['3', 'c']], true), { logger })).outcome).toBe('snapshot-chunk');
    await expect(applyBatch(target, change, { logger })).rejects.toBeInstanceOf(ApplyGapError);
    await expect(applyBatch(target, snapshotComplete(100, 's1', [{ schema: 'public', name: 'items', chunks: 2, rows: 3 }]), { logger })).rejects.toThrow(
      /public.items has 1 of 2 chunks/,
    );
    // Restarted copy: s2 replaces s1 and empties the table at its first chunk.
    expect((await applyBatch(target, snapshotChunk('s2', 200, itemsRel, 0, [['1', 'a'], ['2', 'b']], false), { logger })).outcome).toBe('snapshot-chunk');
    expect((await applyBatch(target, snapshotChunk('s2', 200, itemsRel, 0, [['1', 'a'], ['2', 'b']], false), { logger })).outcome).toBe('duplicate');
    expect((await applyBatch(target, snapshotChunk('s1', 100, itemsRel, 0, [['9', 'old']], false), { logger })).outcome).toBe('superseded-snapshot');
    expect((await applyBatch(target, snapshotComplete(100, 's1', [{ schema: 'public', name: 'items', chunks: 2, rows: 3 }]), { logger })).outcome).toBe(
      'superseded-snapshot',
    );
    expect((await applyBatch(target, snapshotChunk('s2', 200, itemsRel, 1, [['3', 'c']], true), { logger })).outcome).toBe('snapshot-chunk');
    expect((await applyBatch(target, snapshotChunk('s2', 200, bagRel, 0, [['x'], ['x']], true), { logger })).outcome).toBe('snapshot-chunk');
    const done = await applyBatch(
      target,
      snapshotComplete(200, 's2', [
        { schema: 'public', name: 'items', chunks: 2, rows: 3 },
        { schema: 'public', name: 'bag', chunks: 1, rows: 2 },
      ]),
      { logger },
    );
    expect(done).toMatchObject({ outcome: 'snapshot-complete', watermark: 200n });
    expect((await applyBatch(target, snapshotChunk('s2', 200, bagRel, 0, [['x'], ['x']], true), { logger })).outcome).toBe('duplicate');
    expect((await applyBatch(target, change, { logger })).outcome).toBe('applied');
    expect((await target.query('SELECT id, v FROM items ORDER BY id')).rows).toEqual([
      { id: 1, v: 'changed' },
      { id: 2, v: 'b' },
      { id: 3, v: 'c' },
    ]);
    expect((await target.query('SELECT count(*)::int AS n FROM bag')).rows[0]).toEqual({ n: 2 });
  });

  it('moves sequences forward only', async () => {
    const target = await freshTarget('apply_sequences');
    await applyBatch(target, snapshotComplete(100, 's1'), { logger });
    await target.query('CREATE SEQUENCE public.s1');
    await target.query("SELECT setval('public.s1', 50)");
    const heartbeat = (prev: number, value: string, isCalled: boolean) =>
      wire({
        kind: 'heartbeat',
        lsnPrev: lsn(prev),
        lsnFirst: lsn(prev + 5),
        lsnLast: lsn(prev + 5),
        heartbeat: { sourceTime: at, walLsn: lsn(prev + 5), sequences: [{ schema: 'public', name: 's1', lastValue: value, isCalled }, { schema: 'public', name: 'new_seq', lastValue: '9', isCalled: true }] },
      });
    expect((await applyBatch(target, heartbeat(100, '40', true), { logger })).outcome).toBe('heartbeat');
    expect((await target.query('SELECT last_value::int AS v, is_called FROM public.s1')).rows[0]).toEqual({ v: 50, is_called: true });
    await applyBatch(target, heartbeat(105, '51', false), { logger }); // next value 51 = position 50: not ahead
    expect((await target.query('SELECT last_value::int AS v, is_called FROM public.s1')).rows[0]).toEqual({ v: 50, is_called: true });
    await applyBatch(target, heartbeat(110, '70', true), { logger });
    expect((await target.query('SELECT last_value::int AS v FROM public.s1')).rows[0]).toEqual({ v: 70 });
    expect((await target.query('SELECT last_value::int AS v FROM public.new_seq')).rows[0]).toEqual({ v: 9 });
  });

  it('moves the watermark through an operator marker, audits it and returns it', async () => {
    const target = await freshTarget('apply_marker');
    await applyBatch(target, snapshotComplete(100, 's1'), { logger });
    const drain = wire({ kind: 'marker', lsnPrev: lsn(100), lsnFirst: lsn(150), lsnLast: lsn(150), marker: { markerId: 'd-1', reason: 'drain', requestedBy: 'ops' } });
    const r = await applyBatch(target, drain, { logger });
    expect(r).toMatchObject({ outcome: 'marker', watermark: 150n, marker: { markerId: 'd-1', reason: 'drain' } });
    expect((await applyBatch(target, drain, { logger })).outcome).toBe('duplicate');
    const audit = await target.query("SELECT actor, detail->>'markerId' AS id FROM lifeboat.audit WHERE action = 'marker-drain'");
    expect(audit.rows).toEqual([{ actor: 'ops', id: 'd-1' }]);
  });

  it('halts on a change that cannot apply, refuses later deliveries, and resumes with a skip', async () => {
    const target = await freshTarget('apply_halt');
    await applyBatch(target, snapshotComplete(100, 's1'), { logger });
    await applyBatch(target, itemsBatch(100, [{ end: 110, changes: [{ op: 'insert', rel: 0, new: ['1', 'a'] }] }]), { logger });
    await target.query("INSERT INTO items VALUES (2, 'diverged')");
    const bad = itemsBatch(110, [{ end: 120, changes: [{ op: 'insert', rel: 0, new: ['2', 'b'] }, { op: 'insert', rel: 0, new: ['3', 'c'] }] }]);
    const next = itemsBatch(120, [{ end: 130, changes: [{ op: 'update', rel: 0, new: ['1', 'a2'] }] }]);

    const err = await applyBatch(target, bad, { logger, attributes: { messageId: 'm-1' } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StreamHaltedError);
    expect(err).toMatchObject({ causedHalt: true, retryable: false });
    expect((err as StreamHaltedError).message).toMatch(/duplicate key/);
    expect((err as StreamHaltedError).remedy).toMatch(/resume/);
    expect((await target.query('SELECT count(*)::int AS n FROM items')).rows[0]).toEqual({ n: 2 }); // nothing of it applied
    const state = await readStreamState(target, STREAM);
    expect(state).toMatchObject({ halted: true, watermark: 110n, halt: { batch: { lsnFirst: lsn(111), lsnLast: lsn(120), attributes: { messageId: 'm-1' } } } });

    for (const b of [next, bad]) {
      const refused = await applyBatch(target, b, { logger }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(StreamHaltedError);
      expect(refused).toMatchObject({ causedHalt: false });
    }
    await expect(resumeStream(target, STREAM, { actor: 'ops', reason: 'wrong', skipBatch: { lsnFirst: 120n, lsnLast: 130n } })).rejects.toThrow(/halted on batch/);
    const resumed = await resumeStream(target, STREAM, { actor: 'ops', reason: 'row 2 was written on the target by hand', skipBatch: { lsnFirst: 111n, lsnLast: 120n } });
    expect(resumed).toMatchObject({ wasHalted: true, watermark: 120n });
    expect((await applyBatch(target, next, { logger })).outcome).toBe('applied');
    const audit = await target.query('SELECT actor, action FROM lifeboat.audit ORDER BY id');
    expect(audit.rows.filter((r) => r.action !== 'snapshot-start' && r.action !== 'snapshot-complete')).toEqual([
      { actor: 'apply', action: 'halt' },
      { actor: 'ops', action: 'resume-skip-batch' },
    ]);
  });

  it('halts when an update finds no row (divergence is never skipped); resume without skip re-applies', async () => {
    const target = await freshTarget('apply_missing_row');
    await applyBatch(target, snapshotComplete(100, 's1'), { logger });
    await applyBatch(target, itemsBatch(100, [{ end: 110, changes: [{ op: 'insert', rel: 0, new: ['1', 'a'] }] }]), { logger });
    await target.query('DELETE FROM items');
    const upd = itemsBatch(110, [{ end: 120, changes: [{ op: 'update', rel: 0, new: ['1', 'b'] }] }]);
    await expect(applyBatch(target, upd, { logger })).rejects.toThrow(/1 of 1 row to update in public.items was not found/);
    await target.query("INSERT INTO items VALUES (1, 'repaired')");
    await resumeStream(target, STREAM, { actor: 'ops', reason: 'repaired row 1' });
    expect((await applyBatch(target, upd, { logger })).outcome).toBe('applied');
    expect((await target.query('SELECT v FROM items')).rows).toEqual([{ v: 'b' }]);
  });

  it('reports a lost connection as retryable', async () => {
    const url = await createDatabase('cloud', 'apply_conn');
    const target = await connect(url);
    await ensureTargetSchema(target);
    await applyBatch(target, snapshotComplete(100, 's1'), { logger });
    const pid = (await target.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const killer = await connect(url);
    target.on('error', () => undefined);
    await killer.query('SELECT pg_terminate_backend($1)', [pid]);
    const err = await applyBatch(target, itemsBatch(100, [{ end: 110, changes: [{ op: 'insert', rel: 0, new: ['1', 'a'] }] }]), { logger }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetryableError);
  });

  it('replays a DDL sequence mixed with DML, and pgbench -i, ending equal', async () => {
    const p = await pipeline('apply_ddl');
    const { source, target } = p;
    await source.query('CREATE TABLE t1 (id int PRIMARY KEY, a text)');
    await source.query("INSERT INTO t1 SELECT g, 'a' || g FROM generate_series(1, 20) g");
    await source.query('ALTER TABLE t1 ADD COLUMN b int');
    await source.query('UPDATE t1 SET b = id * 10');
    await source.query('ALTER TABLE t1 DROP COLUMN a');
    await source.query("CREATE TYPE colour AS ENUM ('red', 'green')");
    await source.query('CREATE TABLE t2 (id bigserial PRIMARY KEY, c colour NOT NULL, t1 int REFERENCES t1)');
    await source.query('CREATE INDEX t2_c ON t2 (c)');
    await source.query("INSERT INTO t2 (c, t1) VALUES ('red', 1), ('green', 2)");
    // One query string with DDL and DML: the DDL replays once, the INSERT arrives as rows.
    await source.query("CREATE TABLE t3 (id int PRIMARY KEY); INSERT INTO t3 VALUES (1), (2); ALTER TABLE t3 ADD COLUMN x text DEFAULT 'd'");
    await source.query('DROP TABLE t2');
    // A new enum value used right away (next transaction, same batch), and a concurrent index.
    await source.query("ALTER TYPE colour ADD VALUE 'blue'");
    await source.query('CREATE TABLE t4 (id int PRIMARY KEY, c colour)');
    await source.query("INSERT INTO t4 VALUES (1, 'blue'), (2, 'red')");
    await source.query('CREATE INDEX CONCURRENTLY t4_c ON t4 (c)');
    await execFileAsync('/usr/lib/postgresql/15/bin/pgbench', ['-i', '-s', '1', '-q', p.sourceUrl]);

    const batches = await p.capture({ maxRows: 5000 });
    await applyInOrder(target, batches);
    const tables = await expectSameTables(source, target);
    expect(tables).toEqual(['public.pgbench_accounts', 'public.pgbench_branches', 'public.pgbench_history', 'public.pgbench_tellers', 'public.t1', 'public.t3', 'public.t4']);
    const cols = await target.query("SELECT string_agg(attname, ',' ORDER BY attnum) AS c FROM pg_attribute WHERE attrelid = 't1'::regclass AND attnum > 0 AND NOT attisdropped");
    expect(cols.rows[0]).toEqual({ c: 'id,b' });
    expect((await target.query("SELECT 1 FROM pg_type WHERE typname = 'colour'")).rowCount).toBe(1);
    expect((await target.query("SELECT 1 FROM pg_indexes WHERE indexname = 't4_c'")).rowCount).toBe(1);
    expect((await target.query("SELECT 1 FROM pg_index WHERE indrelid = 'pgbench_accounts'::regclass AND indisprimary")).rowCount).toBe(1);
    expect((await tableChecksum(target, 'pgbench_accounts')).rows).toBe(100_000);
    // The DDL log itself arrived too, and DDL on lifeboat objects was never logged.
    const logged = await target.query<{ n: number }>('SELECT count(*)::int AS n FROM lifeboat.ddl_log');
    const sourceLogged = await source.query<{ n: number }>("SELECT count(*)::int AS n FROM lifeboat.ddl_log WHERE object_identity LIKE 'lifeboat.%'");
    expect(logged.rows[0]!.n).toBeGreaterThan(10);
    expect(sourceLogged.rows[0]!.n).toBe(0);
  });
});
