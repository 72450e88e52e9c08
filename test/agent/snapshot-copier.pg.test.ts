import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { agentStateFile, planStart, readAgentState, writeAgentState } from '../../agent/agent-state.ts';
import type { InsertMessage, RelationMessage } from '../../agent/pgoutput-reader.ts';
import {
  createLogicalSlot,
  createReplicationClient,
  startReplicationStream,
  type ReplicationStream,
  type StreamedMessage,
} from '../../agent/replication-stream.ts';
import { SnapshotCopier, type SnapshotProgress } from '../../agent/snapshot-copier.ts';
import { dropSlot, ensurePublication, inspectSlot, listPublishedTables, type TableName } from '../../agent/source-setup.ts';
import { parseChangeBatch, toWireJson, type ChangeBatch, type Tuple } from '../../core/change-batch.ts';
import { RetryableError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { connect, defer, dropSlotEventually, nextWithin } from '../helpers/pg-test-resources.ts';

const logger = createLogger({ component: 'snapshot-copier-test', level: 'error' });

const uniqueSlot = () => `lb_snap_${randomBytes(5).toString('hex')}`;

/** A replication connection that created the slot and stays open (and idle) so its snapshot lives. */
async function createSlotKeepingSnapshot(url: string, slot: string) {
  const repl = createReplicationClient(url);
  await repl.connect();
  defer(() => dropSlotEventually(url, slot));
  defer(() => repl.end().catch(() => {}));
  const created = await createLogicalSlot(repl, slot);
  return { repl, created };
}

async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, ms = 5_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((res) => setTimeout(res, 50));
  }
}

const display = (t: { schema: string; name: string }) => `${t.schema}.${t.name}`;
const tableOf = (b: ChangeBatch) => display(b.relations[b.snapshot!.relation]!);

// The tricky types: each value below goes into row 1 before the slot exists
// (so it travels in the snapshot) and is copied to row 2 after (so it travels
// through pgoutput); both must print the same.
const TYPES_DDL = [
  "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
  'CREATE DOMAIN posint AS int CHECK (VALUE > 0)',
  `CREATE TABLE types (
     id int PRIMARY KEY, n numeric, n40 numeric(40,10), i8 bigint, i8min bigint, i2 smallint, f8 float8, f4 real,
     b boolean, c3 character(3), vc varchar(10), t text, te text, tn text, j json, jb jsonb,
     ts timestamp, tstz timestamptz, d date, iv interval, tm time, tmtz timetz, by bytea, u uuid,
     ia int[], ta text[], m mood, ma mood[], r int4range, tr tstzrange, ip inet, net cidr, mac macaddr,
     pt point, bits bit varying, cash money, dom posint, dropped int, big_toast text,
     g int GENERATED ALWAYS AS (id * 2) STORED)`,
  'ALTER TABLE types DROP COLUMN dropped',
  'ALTER TABLE types ALTER COLUMN big_toast SET STORAGE EXTERNAL',
];
const TOAST = randomBytes(50_000).toString('hex'); // 100 kB, stored out of line
const TYPES_ROW: Record<string, string | null> = {
  n: '12345678901234567890.12345678901234567890',
  n40: '123456789012345678901234567890.1234567890',
  i8: '9223372036854775807',
  i8min: '-9223372036854775808',
  i2: '-32768',
  f8: '1.7976931348623157e+308',
  f4: '3.4028235e+38',
  b: 'true',
  c3: 'a',
  vc: 'héllo',
  t: 'héllo 𝄞 日本 \t\n"\'\\ end',
  te: '',
  tn: null,
  j: '{"big": 12345678901234567890, "f": 1.10, "dup": 1, "dup": 2}',
  jb: '{"big": 12345678901234567890, "f": 1.10, "dup": 1, "dup": 2}',
  ts: '2026-11-23 10:11:12.123456',
  tstz: '2026-11-23 10:11:12.123456+00',
  d: '2026-02-28',
  iv: '1 year 2 mons 3 days 04:05:06.789',
  tm: '23:59:59.999999',
  tmtz: '12:00:00+05:30',
  by: '\\xdeadbeef00',
  u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  ia: '{1,NULL,3}',
  ta: '{"a b","q\\"uote",NULL,""}',
  m: 'happy',
  ma: '{sad,happy}',
  r: '[1,10)',
  tr: '["2026-01-01 00:00:00+00","2026-01-02 00:00:00+00")',
  ip: '192.168.0.1',
  net: '10.0.0.0/8',
  mac: '08:00:2b:01:02:03',
  pt: '(1.5,-2)',
  bits: '1011',
  cash: '12.34',
  dom: '5',
  big_toast: TOAST,
};
const TYPES_COLUMNS = Object.keys(TYPES_ROW);

describe('snapshot copier against PostgreSQL 15', () => {
  it('copies every table at the slot point, in chunks; later writes come only through the stream', async () => {
    const url = await createDatabase('local', 'snapshot');
    const sql = await connect(url);
    for (const stmt of [
      ...TYPES_DDL,
      'CREATE TABLE big (id int PRIMARY KEY, v text)',
      'CREATE TABLE exact (id int PRIMARY KEY)',
      'CREATE TABLE empty (id int PRIMARY KEY)',
      'CREATE TABLE nopk (v text)',
      'ALTER TABLE nopk REPLICA IDENTITY FULL',
      'CREATE TABLE idx (code text NOT NULL, x int)',
      'CREATE UNIQUE INDEX idx_code ON idx (code)',
      'ALTER TABLE idx REPLICA IDENTITY USING INDEX idx_code',
      'CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)',
      'CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100)',
      'CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (100) TO (200)',
    ]) {
      await sql.query(stmt);
    }
    await sql.query("INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 25000) g");
    await sql.query('INSERT INTO exact SELECT generate_series(1, 20000)');
    await sql.query("INSERT INTO nopk VALUES ('one'), ('one'), (NULL)");
    await sql.query("INSERT INTO idx VALUES ('a', 1), ('b', NULL)");
    await sql.query("INSERT INTO parted VALUES (1, 'p1'), (150, 'p2')");
    await sql.query(
      `INSERT INTO types (id, ${TYPES_COLUMNS.join(', ')}) VALUES (1, ${TYPES_COLUMNS.map((_, i) => `$${i + 1}`).join(', ')})`,
      TYPES_COLUMNS.map((c) => TYPES_ROW[c]),
    );
    await ensurePublication(sql, { publication: 'lifeboat', slot: 'unused', tables: [], excludeTables: [], maxSlotWalKeepSize: '1GB' }, { logger });
    const tables = await listPublishedTables(sql, 'lifeboat');
    expect(tables.map(display)).toEqual([
      'public.big',
      'public.empty',
      'public.exact',
      'public.idx',
      'public.nopk',
      'public.parted_1',
      'public.parted_2',
      'public.types',
    ]);

    const slot = uniqueSlot();
    const { repl, created } = await createSlotKeepingSnapshot(url, slot);
    const consistentLsn = created.consistentPoint;

    // After the slot, before the copy: one transaction the snapshot must not show.
    await sql.query('BEGIN');
    await sql.query("INSERT INTO big VALUES (25001, 'after slot')");
    await sql.query("UPDATE big SET v = 'changed' WHERE id = 1");
    await sql.query('DELETE FROM big WHERE id = 2');
    await sql.query(`INSERT INTO types (id, ${TYPES_COLUMNS.join(', ')}) SELECT 2, ${TYPES_COLUMNS.join(', ')} FROM types WHERE id = 1`);
    await sql.query("INSERT INTO nopk VALUES ('two')");
    await sql.query("INSERT INTO idx VALUES ('c', 3)");
    await sql.query("INSERT INTO parted VALUES (2, 'p1 again')");
    await sql.query('COMMIT');

    const snapshotId = randomUUID();
    const progressSeen: SnapshotProgress[] = [];
    let imported = false;
    const copier = new SnapshotCopier({
      connectionString: url,
      snapshotName: created.snapshotName,
      consistentLsn,
      tables,
      chunkRows: 10_000,
      stream: 'main',
      epoch: 3,
      snapshotId,
      firstSeq: 7,
      onSnapshotImported: () => (imported = true),
      onProgress: (p) => progressSeen.push(p),
      logger,
    });
    const batches: ChangeBatch[] = [];
    let wroteDuringCopy = false;
    for await (const batch of copier.batches()) {
      expect(imported).toBe(true);
      batches.push(batch);
      if (!wroteDuringCopy && batch.kind === 'snapshot' && tableOf(batch) === 'public.big') {
        // While the copy is under way: row 20000 is in a chunk not read yet.
        wroteDuringCopy = true;
        await sql.query("UPDATE big SET v = 'during copy' WHERE id = 20000");
        await sql.query("INSERT INTO big VALUES (25002, 'during copy')");
      }
    }
    await repl.end(); // only now may the exported snapshot die

    // Every batch is a valid ChangeBatch that survives the wire form.
    for (const b of batches) expect(parseChangeBatch(JSON.parse(JSON.stringify(toWireJson(b))))).toEqual(b);
    expect(batches.map((b) => b.seq)).toEqual(batches.map((_, i) => 7 + i));
    expect(copier.nextSeq).toBe(7 + batches.length);
    for (const b of batches) {
      expect([b.lsnPrev, b.lsnFirst, b.lsnLast]).toEqual([consistentLsn, consistentLsn, consistentLsn]);
      expect([b.stream, b.epoch]).toEqual(['main', 3]);
    }

    const chunks = batches.filter((b) => b.kind === 'snapshot');
    const shape = (name: string) => chunks.filter((b) => tableOf(b) === name).map((b) => [b.snapshot!.chunk, b.snapshot!.rows.length, b.snapshot!.lastChunk]);
    expect(shape('public.big')).toEqual([
      [0, 10_000, false],
      [1, 10_000, false],
      [2, 5_000, true],
    ]);
    // A multiple of chunkRows ends with an empty last chunk (no read-ahead beyond one chunk).
    expect(shape('public.exact')).toEqual([
      [0, 10_000, false],
      [1, 10_000, false],
      [2, 0, true],
    ]);
    expect(shape('public.empty')).toEqual([[0, 0, true]]);
    for (const b of chunks) expect(b.snapshot).toMatchObject({ snapshotId, relation: 0, consistentLsn });

    const rowsOf = (name: string): Tuple[] => chunks.filter((b) => tableOf(b) === name).flatMap((b) => b.snapshot!.rows);
    const big = new Map(rowsOf('public.big').map((r) => [r[0], r[1]]));
    expect(big.size).toBe(25_000);
    expect(big.get('1')).toBe('v1'); // not 'changed'
    expect(big.get('2')).toBe('v2'); // not deleted
    expect(big.get('20000')).toBe('v20000'); // not 'during copy'
    expect(big.has('25001')).toBe(false);
    expect(big.has('25002')).toBe(false);
    expect(rowsOf('public.nopk')).toEqual([['one'], ['one'], [null]]);
    expect(rowsOf('public.idx')).toEqual([
      ['a', '1'],
      ['b', null],
    ]);
    expect(rowsOf('public.parted_1')).toEqual([['1', 'p1']]);
    expect(rowsOf('public.parted_2')).toEqual([['150', 'p2']]);

    // The last batch certifies the whole copy.
    const marker = batches.at(-1)!;
    expect(marker.kind).toBe('marker');
    expect(marker.marker).toEqual({
      markerId: snapshotId,
      reason: 'snapshot-complete',
      snapshot: {
        snapshotId,
        consistentLsn,
        tables: [
          { schema: 'public', name: 'big', chunks: 3, rows: 25_000 },
          { schema: 'public', name: 'empty', chunks: 1, rows: 0 },
          { schema: 'public', name: 'exact', chunks: 3, rows: 20_000 },
          { schema: 'public', name: 'idx', chunks: 1, rows: 2 },
          { schema: 'public', name: 'nopk', chunks: 1, rows: 3 },
          { schema: 'public', name: 'parted_1', chunks: 1, rows: 1 },
          { schema: 'public', name: 'parted_2', chunks: 1, rows: 1 },
          { schema: 'public', name: 'types', chunks: 1, rows: 1 },
        ],
      },
    });

    // Progress: per table, exact counts for small tables, done at the end.
    const done = copier.progress();
    expect(done).toMatchObject({ snapshotId, state: 'done', tablesTotal: 8, tablesDone: 8, rowsCopied: 45_008, estimatedRows: 45_008, etaSeconds: 0 });
    expect(done.tables.find((t) => t.name === 'big')).toMatchObject({ state: 'done', rowsCopied: 25_000, chunks: 3, estimatedRows: 25_000, estimateIsExact: true, etaSeconds: 0 });
    const midBig = progressSeen.find((p) => p.tables.some((t) => t.name === 'big' && t.state === 'copying' && t.rowsCopied === 10_000));
    expect(midBig?.state).toBe('copying');
    expect(midBig?.tables.find((t) => t.name === 'big')?.estimatedRows).toBe(25_000);
    expect(progressSeen.map((p) => p.rowsCopied)).toEqual([...progressSeen.map((p) => p.rowsCopied)].sort((a, b) => a - b));

    // The stream continues exactly after the consistent point.
    const stream = await startReplicationStream({ connectionString: url, slot, publication: 'lifeboat', logger });
    defer(() => stream.close());
    const items: StreamedMessage[] = [];
    let commits = 0;
    while (commits < 3) {
      const item = await nextWithin(stream);
      items.push(item);
      if (item.message.tag === 'commit') commits++;
    }
    const firstBegin = items.find((i) => i.message.tag === 'begin')!.message as Extract<StreamedMessage['message'], { tag: 'begin' }>;
    expect(firstBegin.finalLsn).toBeGreaterThan(consistentLsn);
    const firstCommitAt = items.findIndex((i) => i.message.tag === 'commit');
    const firstTx = items.slice(0, firstCommitAt);
    const relations = new Map<number, RelationMessage>();
    for (const i of items) if (i.message.tag === 'relation') relations.set(i.message.oid, i.message);
    const relName = (oid: number) => `${relations.get(oid)!.namespace}.${relations.get(oid)!.name}`;
    const changes = firstTx
      .filter((i) => ['insert', 'update', 'delete'].includes(i.message.tag))
      .map((i) => {
        const m = i.message as InsertMessage & { key?: Tuple };
        return [i.message.tag, relName(m.relationOid), (m.new ?? m.key)?.[0]];
      });
    expect(changes).toEqual([
      ['insert', 'public.big', '25001'],
      ['update', 'public.big', '1'],
      ['delete', 'public.big', '2'],
      ['insert', 'public.types', '2'],
      ['insert', 'public.nopk', 'two'],
      ['insert', 'public.idx', 'c'],
      ['insert', 'public.parted_1', '2'],
    ]);
    // The writes made during the copy are the next transactions.
    const later = items.slice(firstCommitAt + 1).filter((i) => i.message.tag === 'update' || i.message.tag === 'insert');
    expect(later.map((i) => (i.message as InsertMessage).new.slice(0, 2))).toEqual([
      ['20000', 'during copy'],
      ['25002', 'during copy'],
    ]);

    // Type fidelity: the snapshot's text equals what pgoutput sends for the same values.
    const snapRow = rowsOf('public.types')[0]!;
    const streamed = (firstTx.find((i) => i.message.tag === 'insert' && relName(i.message.relationOid) === 'public.types')!.message as InsertMessage).new;
    expect(streamed.slice(1)).toEqual(snapRow.slice(1));
    expect(snapRow[0]).toBe('1');
    const typesRel = chunks.find((b) => tableOf(b) === 'public.types')!.relations[0]!;
    const value = (column: string) => snapRow[typesRel.columns.findIndex((c) => c.name === column)];
    expect(value('n')).toBe('12345678901234567890.12345678901234567890');
    expect(value('n40')).toBe('123456789012345678901234567890.1234567890');
    expect(value('i8min')).toBe('-9223372036854775808');
    expect(value('j')).toBe('{"big": 12345678901234567890, "f": 1.10, "dup": 1, "dup": 2}');
    expect(value('jb')).toBe('{"f": 1.10, "big": 12345678901234567890, "dup": 2}');
    expect(value('tstz')).toMatch(/^2026-11-23 \d\d:11:12\.123456[+-]\d\d/);
    expect(value('b')).toBe('t'); // a ::text cast would give 'true'
    expect(value('c3')).toBe('a  '); // … would trim the padding
    expect(value('ip')).toBe('192.168.0.1'); // … would add /32
    expect(value('te')).toBe('');
    expect(value('tn')).toBeNull();
    expect(value('big_toast')).toBe(TOAST);
    const casts = await sql.query<{ b: string; c3: string; ip: string }>('SELECT b::text AS b, c3::text AS c3, ip::text AS ip FROM types WHERE id = 1');
    expect(casts.rows[0]).toEqual({ b: 'true', c3: 'a', ip: '192.168.0.1/32' });

    // Descriptors: the same shape pgoutput's Relation message gives (generated and dropped columns left out).
    expect(typesRel.columns.map((c) => c.name)).toEqual(['id', ...TYPES_COLUMNS]);
    for (const b of chunks.filter((c) => c.snapshot!.chunk === 0)) {
      const descriptor = b.relations[0]!;
      const rel = [...relations.values()].find((r) => r.namespace === descriptor.schema && r.name === descriptor.name);
      if (!rel) continue; // no change streamed for this table
      expect({ oid: descriptor.oid, replicaIdentity: descriptor.replicaIdentity, columns: descriptor.columns.map((c) => [c.name, c.typeOid, c.typmod, c.key]) }).toEqual({
        oid: rel.oid,
        replicaIdentity: rel.replicaIdentity,
        columns: rel.columns.map((c) => [c.name, c.typeOid, c.typmod, c.isKey]),
      });
    }
    expect([...relations.values()].map((r) => `${r.namespace}.${r.name}`).sort()).toEqual([
      'public.big',
      'public.idx',
      'public.nopk',
      'public.parted_1',
      'public.types',
    ]);
    expect(typesRel.columns.find((c) => c.name === 'n40')).toMatchObject({ type: 'numeric(40,10)', typmod: 2621454, key: false });
    expect(typesRel.columns.find((c) => c.name === 'ma')?.type).toBe('mood[]');
    expect(chunks.find((b) => tableOf(b) === 'public.nopk')!.relations[0]).toMatchObject({ replicaIdentity: 'full' });
    expect(chunks.find((b) => tableOf(b) === 'public.idx')!.relations[0]!.columns.map((c) => c.key)).toEqual([true, false]);
  });

  it('a copy that cannot import the snapshot is a RetryableError: the snapshot is restarted', async () => {
    const url = await createDatabase('local', 'snapshot_gone');
    const sql = await connect(url);
    await sql.query('CREATE TABLE t (id int PRIMARY KEY)');
    const slot = uniqueSlot();
    const { repl, created } = await createSlotKeepingSnapshot(url, slot);
    await repl.end(); // the exported snapshot dies with its connection
    const copier = new SnapshotCopier({
      connectionString: url,
      snapshotName: created.snapshotName,
      consistentLsn: created.consistentPoint,
      tables: [{ schema: 'public', name: 't' }],
      chunkRows: 100,
      stream: 'main',
      epoch: 0,
      snapshotId: randomUUID(),
      logger,
    });
    const err = await copier.batches().next().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetryableError);
    expect((err as Error).message).toMatch(new RegExp(`the exported snapshot ${created.snapshotName} is gone`));
    expect((err as RetryableError).remedy).toContain('restarts the snapshot');
    expect(copier.progress().state).toBe('failed');
  });

  it('an interrupted copy restarts cleanly under a new snapshotId (state file + planStart)', async () => {
    const url = await createDatabase('local', 'snapshot_restart');
    const sql = await connect(url);
    await sql.query('CREATE TABLE t (id int PRIMARY KEY)');
    await sql.query('INSERT INTO t SELECT generate_series(1, 300)');
    await ensurePublication(sql, { publication: 'lifeboat', slot: 'unused', tables: [], excludeTables: [], maxSlotWalKeepSize: '1GB' }, { logger });
    const tables: TableName[] = await listPublishedTables(sql, 'lifeboat');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-snapshot-state-'));
    defer(async () => fs.rmSync(dir, { recursive: true, force: true }));
    const file = agentStateFile(dir, 'main');
    const slot = uniqueSlot();
    const plan = async () => planStart({ state: await readAgentState(file, 'main'), slot: await inspectSlot(sql, slot), resnapshot: false, slotName: slot });

    expect((await plan()).action).toBe('fresh-snapshot');
    const first = await createSlotKeepingSnapshot(url, slot);
    const firstId = randomUUID();
    await writeAgentState(file, { stream: 'main', slot, snapshotId: firstId, consistentLsn: first.created.consistentPoint, snapshotCompletedAt: null });
    const interrupted = new SnapshotCopier({
      connectionString: url,
      snapshotName: first.created.snapshotName,
      consistentLsn: first.created.consistentPoint,
      tables,
      chunkRows: 100,
      stream: 'main',
      epoch: 0,
      snapshotId: firstId,
      logger,
    });
    for await (const batch of interrupted.batches()) {
      expect(batch.snapshot?.chunk).toBe(0);
      break; // the agent dies after the first chunk
    }
    // Stopping early closed the copy's connection (the transaction is gone).
    const copyBackends = () =>
      sql.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()', ['lifeboat-snapshot']).then((r) => r.rows.length);
    expect(await eventually(copyBackends, (n) => n === 0)).toBe(0);

    // Shutdown (AbortSignal) stops a copy between chunks with a RetryableError.
    const controller = new AbortController();
    const aborted = new SnapshotCopier({
      connectionString: url,
      snapshotName: first.created.snapshotName,
      consistentLsn: first.created.consistentPoint,
      tables,
      chunkRows: 100,
      stream: 'main',
      epoch: 0,
      snapshotId: firstId,
      signal: controller.signal,
      logger,
    });
    const it = aborted.batches();
    expect((await it.next()).value?.snapshot?.chunk).toBe(0);
    controller.abort();
    const stopped = await it.next().catch((e: unknown) => e);
    expect(stopped).toBeInstanceOf(RetryableError);
    expect((stopped as Error).message).toBe('snapshot copy aborted');
    expect(await eventually(copyBackends, (n) => n === 0)).toBe(0);
    await first.repl.end();

    const restart = await plan();
    expect(restart.action).toBe('restart-snapshot');
    expect(restart.reason).toContain(`Snapshot ${firstId} was interrupted before it completed`);
    expect(await dropSlot(sql, slot)).toBe(true);

    const second = await createSlotKeepingSnapshot(url, slot);
    const secondId = randomUUID();
    await writeAgentState(file, { stream: 'main', slot, snapshotId: secondId, consistentLsn: second.created.consistentPoint, snapshotCompletedAt: null });
    const copier = new SnapshotCopier({
      connectionString: url,
      snapshotName: second.created.snapshotName,
      consistentLsn: second.created.consistentPoint,
      tables,
      chunkRows: 100,
      stream: 'main',
      epoch: 0,
      snapshotId: secondId,
      logger,
    });
    const batches: ChangeBatch[] = [];
    for await (const batch of copier.batches()) batches.push(batch);
    await second.repl.end();
    expect(batches.map((b) => b.snapshot?.rows.length ?? b.kind)).toEqual([100, 100, 100, 0, 'marker']);
    expect(new Set(batches.map((b) => b.snapshot?.snapshotId ?? b.marker?.snapshot?.snapshotId))).toEqual(new Set([secondId]));
    expect(second.created.consistentPoint).toBeGreaterThanOrEqual(first.created.consistentPoint);

    await writeAgentState(file, {
      stream: 'main',
      slot,
      snapshotId: secondId,
      consistentLsn: second.created.consistentPoint,
      snapshotCompletedAt: new Date().toISOString(),
    });
    expect((await plan()).action).toBe('stream-from-slot');
  });
});
