// The stranded tail against the real local and cloud clusters: a hard
// failover leaves local transactions in three places (applied on the cloud,
// refused as stale batches, still only in the local slot); the report must
// hold every one after the watermark exactly once, consume nothing, parse
// back, and, applied to the cloud as it stood at the watermark, reproduce the
// local tables.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { ChangeBatcher, UnknownTypeError } from '../../agent/change-batcher.ts';
import { startReplicationStream } from '../../agent/replication-stream.ts';
import {
  applyStrandedTail,
  collectStrandedTail,
  parseStrandedTailReport,
  saveStrandedTail,
  type StrandedTail,
} from '../../agent/stranded-tail.ts';
import { renderStrandedTailSql } from '../../agent/stranded-tail-sql.ts';
import { createFsObjectStore } from '../../adapters/object-store-fs.ts';
import { UNCHANGED_TOAST, type ChangeBatch } from '../../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { formatLsn, parseLsn, type Lsn } from '../../core/lsn.ts';
import { applyBatch, setFencingEpoch } from '../../functions/apply-engine.ts';
import { ensureTargetSchema } from '../../functions/target-schema.ts';
import { connect, defer, dropSlotEventually, nextWithin } from '../helpers/pg-test-resources.ts';
import { tableChecksum } from '../helpers/table-checksum.ts';
import { createDatabase, getStack, withDatabase } from '../stack/stack-env.ts';

const run = promisify(execFile);
const logger = createLogger({ component: 'stranded-tail-test', level: 'error' });
const STREAM = 'main';
const PUBLICATION = 'Lifeboat "Pub" ü';

// Quotes, spaces, unicode, mixed case, a non-public schema; a column named
// like PL/pgSQL's FOUND and one like the DO block's own variable.
const HOSTILE = `"Sch""ema ü"."Tab'le ""Q"" Ω"`;
const HOSTILE_NAME = `Sch"ema ü.Tab'le "Q" Ω`;
const TABLES = [HOSTILE_NAME, 'public.events', 'public.scratch'];

const SCHEMA = [
  `CREATE SCHEMA "Sch""ema ü"`,
  `CREATE TABLE ${HOSTILE} ("Id" int PRIMARY KEY, "na me'" text, "found" numeric(10,2), "MixedCase" timestamptz, big text)`,
  // EXTERNAL: out of line without compression, so the 100 kB value is surely TOASTed.
  `ALTER TABLE ${HOSTILE} ALTER COLUMN big SET STORAGE EXTERNAL`,
  'CREATE TABLE public.events (at timestamptz, doc json, changed int)',
  'ALTER TABLE public.events REPLICA IDENTITY FULL',
  "CREATE TYPE public.mood AS ENUM ('happy', 'sad')",
  'CREATE TABLE public.scratch (id int PRIMARY KEY, v text, m public.mood)',
];
const BASE_ROWS = [
  `INSERT INTO ${HOSTILE} VALUES (1, 'one', 1.10, '2026-01-01 00:00:00+00', repeat('x', 100000)), (2, 'two', 2.20, NULL, 'small'), (3, 'three', NULL, NULL, NULL)`,
  // Two identical rows: FULL identity must change exactly one of them.
  `INSERT INTO public.events VALUES ('2026-01-01 00:00:00+00', '{"a": 1}', 1), ('2026-01-01 00:00:00+00', '{"a": 1}', 1)`,
  `INSERT INTO public.scratch VALUES (1, 'a', 'happy'), (2, 'b', NULL)`,
];

/** Runs statements in one transaction; returns its 32-bit xid (as pgoutput's Begin carries it). */
async function txn(sql: pg.Client, statements: string[]): Promise<number> {
  await sql.query('BEGIN');
  for (const s of statements) await sql.query(s);
  const res = await sql.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x');
  await sql.query('COMMIT');
  return Number(BigInt(res.rows[0]!.x) & 0xffffffffn);
}

async function slotState(sql: pg.Client, slot: string): Promise<{ confirmed: Lsn; active: boolean }> {
  const r = await sql.query<{ c: string; active: boolean }>('SELECT confirmed_flush_lsn::text AS c, active FROM pg_replication_slots WHERE slot_name = $1', [slot]);
  return { confirmed: parseLsn(r.rows[0]!.c), active: r.rows[0]!.active };
}

async function waitInactive(sql: pg.Client, slot: string): Promise<void> {
  for (let i = 0; i < 200 && (await slotState(sql, slot)).active; i++) await new Promise((r) => setTimeout(r, 50));
}

/** The agent's path: stream from the slot, one transaction per batch, epoch 1. */
async function agentBatches(url: string, slot: string, startLsn: Lsn, commits: number, whileOpen: () => Promise<void>): Promise<ChangeBatch[]> {
  const types = await connect(url);
  await types.query('SET search_path = pg_catalog');
  const typeNames = new Map<string, string>();
  const stream = await startReplicationStream({ connectionString: url, slot, publication: PUBLICATION, logger });
  defer(() => stream.close());
  const batcher = new ChangeBatcher({
    stream: STREAM,
    epoch: () => 1,
    startLsn,
    maxRows: 1,
    maxBytes: 1 << 30,
    maxDelayMs: 3_600_000,
    clock: Date.now,
    typeName: (oid, typmod) => typeNames.get(`${oid}:${typmod}`),
    logger,
  });
  const out: ChangeBatch[] = [];
  for (let seen = 0; seen < commits; ) {
    const item = await nextWithin(stream);
    try {
      out.push(...batcher.push(item));
    } catch (err) {
      if (!(err instanceof UnknownTypeError)) throw err;
      for (const t of err.types) {
        const r = await types.query<{ name: string }>('SELECT format_type($1::oid, $2::int) AS name', [t.oid, t.typmod]);
        typeNames.set(`${t.oid}:${t.typmod}`, r.rows[0]!.name);
      }
      out.push(...batcher.push(item));
    }
    if (item.message.tag === 'commit') seen++;
  }
  await whileOpen();
  await stream.close();
  return out.filter((b) => b.kind === 'changes');
}

async function checksums(url: string): Promise<Record<string, { rows: number; md5: string }>> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const out: Record<string, { rows: number; md5: string }> = {};
    for (const t of TABLES) out[t] = await tableChecksum(c, t);
    return out;
  } finally {
    await c.end();
  }
}

/** A new database on the cloud cluster, copied from `url`'s (which must have no open sessions). */
async function copyDatabase(url: string): Promise<string> {
  const source = decodeURIComponent(new URL(url).pathname.slice(1));
  const name = `${source.slice(0, 50)}_copy${randomBytes(2).toString('hex')}`;
  const admin = new pg.Client({ connectionString: getStack().cloudUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)} TEMPLATE ${pg.escapeIdentifier(source)}`);
  } finally {
    await admin.end();
  }
  return withDatabase(getStack().cloudUrl, name);
}

function uniqueSlot(): string {
  return `lb_tail_${randomBytes(5).toString('hex')}`;
}

/** Local database with the schema, base rows, publication and a pgoutput slot; a target at the slot's start. */
async function setup(schema: string[], baseRows: string[]) {
  const localUrl = await createDatabase('local', 'tail');
  const local = await connect(localUrl);
  for (const s of [...schema, ...baseRows]) await local.query(s);
  await local.query(`CREATE PUBLICATION ${pg.escapeIdentifier(PUBLICATION)} FOR ALL TABLES`);
  const slot = uniqueSlot();
  const created = await local.query<{ lsn: string }>("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", [slot]);
  defer(() => dropSlotEventually(localUrl, slot));
  const start = parseLsn(created.rows[0]!.lsn);
  // The target as the initial copy left it: same tables and rows, W = the slot's start.
  const targetUrl = await createDatabase('cloud', 'tail_target');
  const target = new pg.Client({ connectionString: targetUrl });
  await target.connect();
  await ensureTargetSchema(target);
  for (const s of [...schema, ...baseRows]) await target.query(s);
  await target.query('INSERT INTO lifeboat.stream_state (stream, watermark, snapshot_complete) VALUES ($1, $2::pg_lsn, true)', [STREAM, formatLsn(start)]);
  return { localUrl, local, slot, start, targetUrl, target };
}

describe('stranded tail after a hard failover', () => {
  it('finds every local transaction after the watermark once, consumes nothing, and reproduces the local tables', async () => {
    const { localUrl, local, slot, start, targetUrl, target } = await setup(SCHEMA, BASE_ROWS);

    // T1..T3 reach the cloud; T4..T6 are published but refused after the failover; T7..T9 never leave.
    const applied = [
      await txn(local, [`INSERT INTO ${HOSTILE} VALUES (10, 'ten', 10.00, NULL, NULL)`, `UPDATE ${HOSTILE} SET "na me'" = 'two''s' WHERE "Id" = 2`]),
      await txn(local, [`UPDATE ${HOSTILE} SET "found" = 9.99 WHERE "Id" = 1`]),
      await txn(local, [`DELETE FROM ${HOSTILE} WHERE "Id" = 3`]),
    ];
    const stale = [
      await txn(local, [
        `INSERT INTO ${HOSTILE} VALUES (11, E'Ω ü \\\\ back''slash\nnewline', 11.11, '2026-11-23 13:31:02.123456+00', 'eleven')`,
        'UPDATE public.events SET changed = 2 WHERE ctid = (SELECT ctid FROM public.events LIMIT 1)',
      ]),
      await txn(local, [`UPDATE ${HOSTILE} SET "Id" = 12 WHERE "Id" = 10`]),
      await txn(local, ['DELETE FROM public.events WHERE changed = 2', `INSERT INTO ${HOSTILE} VALUES (13, 'thirteen', NULL, NULL, NULL)`]),
    ];
    let collectWhileActive: unknown;
    const batches = await agentBatches(localUrl, slot, start, 6, async () => {
      collectWhileActive = await collectStrandedTail({ source: local, target, stream: STREAM, slot, publication: PUBLICATION, logger }).catch((e: unknown) => e);
    });
    expect(collectWhileActive).toBeInstanceOf(RetryableError);
    expect(String((collectWhileActive as Error).message)).toContain('is in use');
    expect(batches.map((b) => b.transactions[0]!.xid)).toEqual([...applied, ...stale]);

    for (const b of batches.slice(0, 3)) expect((await applyBatch(target, b, { logger })).outcome).toBe('applied');
    const w = batches[2]!.lsnLast;
    // Hard failover: the cloud takes epoch 5; the agent's epoch-1 batches arrive after it.
    await setFencingEpoch(target, STREAM, 5);
    for (const b of batches.slice(3)) expect((await applyBatch(target, b, { logger })).outcome).toBe('stale-epoch');

    // Pub/Sub had acknowledged T4 and T5: the agent confirmed up to T5's end.
    await waitInactive(local, slot);
    const c = batches[4]!.lsnLast;
    await local.query('SELECT pg_replication_slot_advance($1, $2::pg_lsn)', [slot, formatLsn(c)]);
    expect((await slotState(local, slot)).confirmed).toBe(c);

    const slotOnly = [
      await txn(local, [`UPDATE ${HOSTILE} SET "na me'" = 'uno $lifeboat$' WHERE "Id" = 1`]),
      await txn(local, [
        `INSERT INTO ${HOSTILE} VALUES (14, NULL, NULL, NULL, NULL)`,
        `UPDATE ${HOSTILE} SET "MixedCase" = '2026-11-23 13:31:02.654321+00' WHERE "Id" = 11`,
      ]),
      await txn(local, ['TRUNCATE public.scratch', "INSERT INTO public.scratch VALUES (5, 'e', 'sad')"]),
    ];

    // The cloud as it stood at W, copied before anything is applied to it.
    await target.end();
    const restoreUrl = await copyDatabase(targetUrl);
    const atW = await checksums(targetUrl);
    const cloud = await connect(targetUrl);

    // Values come out as the agent's walsender prints them, whatever this session set.
    await local.query("SET DateStyle = 'SQL, DMY'");
    await local.query("SET TimeZone = 'Asia/Kolkata'");
    const tail = await collectStrandedTail({ source: local, target: cloud, stream: STREAM, slot, publication: PUBLICATION, logger });

    // Nothing consumed: the slot stands where it stood, and a second read sees the same.
    expect((await slotState(local, slot)).confirmed).toBe(c);
    expect(tail.watermark).toBe(w);
    expect(tail.slotConfirmedFlushLsn).toBe(c);
    expect(tail.targetFencingEpoch).toBe(5);
    expect(tail.complete).toBe(true);
    expect(tail.warnings).toEqual([expect.stringContaining('1 transaction(s) ran a TRUNCATE')]);

    // Every transaction after W exactly once, in commit order; none at or before W.
    expect(tail.transactions.map((t) => t.xid)).toEqual([...stale, ...slotOnly]);
    expect(tail.transactions.every((t) => t.commitLsn > w)).toBe(true);
    expect(new Set(tail.transactions.map((t) => t.commitLsn)).size).toBe(6);
    expect(tail.transactions.map((t) => t.foundIn)).toEqual([
      ['stale-batches'],
      ['stale-batches'],
      ['local-slot', 'stale-batches'],
      ['local-slot'],
      ['local-slot'],
      ['local-slot'],
    ]);
    expect(tail.coverage).toMatchObject({ onlyInStaleBatches: 2, onlyInSlot: 3, inBoth: 1, uncovered: [], differingCopies: [], staleBatches: 3 });
    // Exact text, and unchanged TOAST kept apart from NULL.
    const hostile = tail.relations.findIndex((r) => r.schema === 'Sch"ema ü' && r.name === `Tab'le "Q" Ω`);
    expect(tail.relations[hostile]!.columns.map((col) => col.type)).toEqual(['integer', 'text', 'numeric(10,2)', 'timestamp with time zone', 'text']);
    expect(tail.transactions[0]!.changes[0]).toMatchObject({ op: 'insert', rel: hostile, new: ['11', "Ω ü \\ back'slash\nnewline", '11.11', expect.stringMatching(/^2026-11-23 13:31:02\.123456/), 'eleven'] });
    expect(tail.transactions[3]!.changes[0]).toMatchObject({ op: 'update', new: ['1', 'uno $lifeboat$', '9.99', '2026-01-01 00:00:00+00', UNCHANGED_TOAST] });
    expect(tail.transactions[5]!.changes[0]).toMatchObject({ op: 'truncate', cascade: false, restartIdentity: false });
    // User types come schema-qualified, as the agent names them.
    expect(tail.relations.find((r) => r.name === 'scratch')!.columns.map((col) => col.type)).toEqual(['integer', 'text', 'public.mood']);
    expect(tail.totals).toEqual([
      { schema: 'Sch"ema ü', name: `Tab'le "Q" Ω`, inserts: 3, updates: 3, deletes: 0, truncates: 0 },
      { schema: 'public', name: 'events', inserts: 0, updates: 1, deletes: 1, truncates: 0 },
      { schema: 'public', name: 'scratch', inserts: 1, updates: 0, deletes: 0, truncates: 1 },
    ]);
    expect(tail.rows).toBe(9);
    const again = await collectStrandedTail({ source: local, target: cloud, stream: STREAM, slot, publication: PUBLICATION, logger, now: () => new Date(tail.collectedAt) });
    expect(again).toEqual(tail);

    // Saved as JSON and SQL; the JSON reads back to the same tail.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-tail-'));
    defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const store = createFsObjectStore(dir);
    const now = new Date('2026-11-23T14:00:00.123Z');
    const saved = await saveStrandedTail(tail, { objectStore: store, prefix: 'reports/', stream: STREAM, epoch: 5, now, logger });
    expect(saved).toMatchObject({ transactions: 6, rows: 9 });
    expect(saved.jsonUri).toMatch(/\/reports\/main\/stranded-tail-epoch-5-20261123T140000\.123Z\.json$/);
    const report = parseStrandedTailReport(JSON.parse((await store.get(saved.jsonUri)).toString('utf8')));
    expect(report).toEqual({ tail, epoch: 5, savedAt: now.toISOString() });
    const script = (await store.get(saved.sqlUri)).toString('utf8');
    expect(script).toBe(renderStrandedTailSql(tail));

    // Applying refuses the TRUNCATE unless asked, before anything runs.
    await expect(applyStrandedTail(cloud, tail, { logger })).rejects.toThrow(ValidationError);
    expect(await checksums(targetUrl)).toEqual(atW);

    // Asked: the cloud at W plus the tail equals the local tables.
    const result = await applyStrandedTail(cloud, report.tail, { runTruncates: true, logger });
    expect(result).toEqual({ appliedTransactions: 6, appliedRows: 9, skippedBefore: 0 });
    const localSums = await checksums(localUrl);
    expect(await checksums(targetUrl)).toEqual(localSums);

    // Applied twice, the first transaction conflicts: it stops there, naming it, and changes nothing.
    const second = await applyStrandedTail(cloud, tail, { runTruncates: true, logger }).catch((e: unknown) => e);
    expect(second).toBeInstanceOf(PermanentError);
    expect((second as PermanentError).message).toContain(`transaction 1 of 6 (xid ${stale[0]}, commit LSN ${formatLsn(tail.transactions[0]!.commitLsn)})`);
    expect((second as PermanentError).details).toMatchObject({ appliedTransactions: 0 });
    expect(await checksums(targetUrl)).toEqual(localSums);

    // An UPDATE whose row is gone on the serving side stops there, naming the transaction; a later start is allowed.
    await cloud.query(`DELETE FROM ${HOSTILE} WHERE "Id" = 1`);
    const missing = await applyStrandedTail(cloud, tail, { fromCommitLsn: tail.transactions[3]!.commitLsn, runTruncates: true, logger }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(PermanentError);
    expect((missing as PermanentError).message).toContain(`transaction 4 of 6 (xid ${slotOnly[0]}`);
    expect((missing as PermanentError).message).toContain('changed 0 rows instead of 1');

    // The operator's path: psql runs the saved script on the copy taken at W.
    await run('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', fileURLToPath(saved.sqlUri), '-d', restoreUrl]);
    const restored = await checksums(restoreUrl);
    expect(restored[HOSTILE_NAME]).toEqual(localSums[HOSTILE_NAME]);
    expect(restored['public.events']).toEqual(localSums['public.events']);
    // The TRUNCATE stayed commented out: the rows from before it remain, next to the new one.
    const restoredClient = await connect(restoreUrl);
    expect((await restoredClient.query('SELECT id FROM public.scratch ORDER BY id')).rows.map((r) => r.id)).toEqual([1, 2, 5]);

    // A stale batch still in flight: the tail says it may be incomplete, and where.
    await cloud.query('DELETE FROM lifeboat.stale_batches WHERE lsn_first = $1::pg_lsn', [formatLsn(batches[3]!.lsnFirst)]);
    const partial = await collectStrandedTail({ source: local, target: cloud, stream: STREAM, slot, publication: PUBLICATION, logger });
    expect(partial.complete).toBe(false);
    expect(partial.coverage.uncovered).toEqual([{ after: w, upTo: batches[3]!.lsnLast }]);
    expect(partial.transactions.map((t) => t.xid)).toEqual([stale[1], stale[2], ...slotOnly]);
    expect(partial.warnings[0]).toContain('may still be in the Pub/Sub backlog');
    expect(renderStrandedTailSql(partial)).toContain('-- MAY BE INCOMPLETE');
  });

  it('writes a report that says so when nothing is stranded', async () => {
    const { local, slot, target } = await setup(['CREATE TABLE t (id int PRIMARY KEY)'], []);
    defer(() => target.end());
    const tail: StrandedTail = await collectStrandedTail({ source: local, target, stream: STREAM, slot, publication: PUBLICATION, logger });
    expect(tail.transactions).toEqual([]);
    expect(tail.complete).toBe(true);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-tail-'));
    defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const store = createFsObjectStore(dir);
    const saved = await saveStrandedTail(tail, { objectStore: store, prefix: '', stream: STREAM, epoch: 2, now: new Date(), logger });
    expect(saved).toMatchObject({ transactions: 0, rows: 0 });
    const json = JSON.parse((await store.get(saved.jsonUri)).toString('utf8'));
    expect(json.summary).toMatch(/^No stranded transactions after the cloud's watermark/);
    expect(parseStrandedTailReport(json).tail).toEqual(tail);
    expect((await store.get(saved.sqlUri)).toString('utf8')).toContain('-- No stranded transactions');
    // A stream the target does not know is a clear error, not an empty report.
    await expect(collectStrandedTail({ source: local, target, stream: 'other', slot, publication: PUBLICATION, logger })).rejects.toThrow(/stream other is unknown on the target/);
  });
});
