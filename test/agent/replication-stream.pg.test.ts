import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { UNCHANGED_TOAST, type PgoutputMessage } from '../../agent/pgoutput-reader.ts';
import {
  classifyReplicationError,
  createLogicalSlot,
  createReplicationClient,
  parseDurationMs,
  quoteIdent,
  quoteReplLiteral,
  startReplicationStream,
  type ReplicationStream,
  type ReplicationStreamOptions,
  type StreamedMessage,
} from '../../agent/replication-stream.ts';
import { PermanentError, RetryableError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { parseLsn, type Lsn } from '../../core/lsn.ts';
import { startPostgresCluster } from '../../local/local-stack.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { connect, defer, dropSlotEventually, nextWithin } from '../helpers/pg-test-resources.ts';

// Quiet logs: the tests check behaviour, not log lines.
const logger = createLogger({ component: 'replication-stream-test', level: 'error' });

// Slots are cluster-wide and hold WAL: every test drops the ones it made.

function uniqueSlot(): string {
  return `lb_test_${randomBytes(6).toString('hex')}`;
}

/** A fresh database with `ddl`, a publication and a slot created after the DDL. */
async function setup(ddl: string[], publication = 'lifeboat') {
  const url = await createDatabase('local', 'repl');
  const sql = await connect(url);
  for (const stmt of ddl) await sql.query(stmt);
  await sql.query(`CREATE PUBLICATION ${quoteIdent(publication)} FOR ALL TABLES`);
  const slot = uniqueSlot();
  const repl = createReplicationClient(url);
  await repl.connect();
  const created = await createLogicalSlot(repl, slot);
  await repl.end();
  defer(() => dropSlotEventually(url, slot));
  return { url, sql, slot, publication, created };
}

async function open(opts: ReplicationStreamOptions): Promise<ReplicationStream> {
  const s = await startReplicationStream({ logger, ...opts });
  defer(() => s.close());
  return s;
}

async function readUntil(stream: ReplicationStream, stop: (m: StreamedMessage) => boolean): Promise<StreamedMessage[]> {
  const out: StreamedMessage[] = [];
  for (;;) {
    const m = await nextWithin(stream);
    out.push(m);
    if (stop(m)) return out;
  }
}

const isCommit = (m: StreamedMessage) => m.message.tag === 'commit';

/** Splits messages into transactions (Begin … Commit); returns changes of each. */
function transactions(items: StreamedMessage[]) {
  const txs: { begin: StreamedMessage; changes: StreamedMessage[]; commit: StreamedMessage }[] = [];
  let cur: { begin: StreamedMessage; changes: StreamedMessage[] } | undefined;
  for (const it of items) {
    if (it.message.tag === 'begin') cur = { begin: it, changes: [] };
    else if (it.message.tag === 'commit') {
      txs.push({ ...cur!, commit: it });
      cur = undefined;
    } else if (cur) cur.changes.push(it);
  }
  return txs;
}

function tagged<T extends PgoutputMessage['tag']>(m: StreamedMessage | undefined, tag: T): Extract<PgoutputMessage, { tag: T }> {
  expect(m?.message.tag).toBe(tag);
  return m!.message as Extract<PgoutputMessage, { tag: T }>;
}

async function slotPosition(sql: pg.Client, slot: string): Promise<{ confirmed: Lsn; active: boolean }> {
  const r = await sql.query<{ confirmed_flush_lsn: string; active: boolean }>(
    'SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1',
    [slot],
  );
  return { confirmed: parseLsn(r.rows[0]!.confirmed_flush_lsn), active: r.rows[0]!.active };
}

async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, ms = 5_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((res) => setTimeout(res, 50));
  }
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

describe('replication stream against PostgreSQL 15', () => {
  it('streams typed messages with the exact text the server printed', async () => {
    // An awkward publication name proves identifier + literal quoting end to end.
    const pub = `we"ird's pub\\`;
    const { url, sql, slot } = await setup(
      [
        'CREATE TABLE t (id int PRIMARY KEY, n numeric, j jsonb, ts timestamptz, b bytea, big text, s text, u text)',
        // EXTERNAL: out-of-line without compression, so the 100 kB value is surely TOASTed.
        'ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL',
        'CREATE TABLE other (id int PRIMARY KEY)',
      ],
      pub,
    );
    const stream = await open({ connectionString: url, slot, publication: pub });

    const big = randomBytes(50_000).toString('hex'); // 100 kB
    const numeric = '12345678901234567890.12345678901234567890';
    const unicode = 'héllo 𝄞 日本 \t\n"\'\\ end';
    await sql.query('INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8), (2, NULL, NULL, NULL, NULL, $9, NULL, NULL)', [
      1,
      numeric,
      '{"big": 12345678901234567890, "f": 1.10, "dup": 1, "dup": 2}',
      '2026-11-23 10:11:12.123456+00',
      '\\xdeadbeef00',
      big,
      '',
      unicode,
      'small',
    ]);
    const source = (
      await sql.query<Record<string, string | null>>(
        'SELECT id::text, n::text, j::text, ts::text, b::text, big, s, u FROM t WHERE id = 1',
      )
    ).rows[0]!;
    await sql.query("UPDATE t SET s = 'changed' WHERE id = 1"); // big unchanged → UNCHANGED_TOAST
    await sql.query('UPDATE t SET id = 3 WHERE id = 2'); // key change → old key tuple
    await sql.query('DELETE FROM t WHERE id = 3');
    await sql.query('BEGIN');
    await sql.query('INSERT INTO other VALUES (1)');
    await sql.query("SELECT pg_logical_emit_message(true, 'lifeboat', 'in-tx')");
    const xid = Number((await sql.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x')).rows[0]!.x);
    await sql.query('COMMIT');
    await sql.query('TRUNCATE other');
    const hb = (await sql.query<{ lsn: string }>("SELECT pg_logical_emit_message(false, 'lifeboat', 'heartbeat')::text AS lsn")).rows[0]!.lsn;

    const items = await readUntil(stream, (m) => m.message.tag === 'message' && !m.message.transactional);
    const txs = transactions(items);
    expect(txs).toHaveLength(6);

    for (const tx of txs) {
      const begin = tagged(tx.begin, 'begin');
      const commit = tagged(tx.commit, 'commit');
      expect(begin.finalLsn).toBe(commit.commitLsn);
      expect(commit.endLsn).toBeGreaterThan(commit.commitLsn);
      // The Commit's WAL position is its end LSN: the position to confirm.
      expect(tx.commit.lsn).toBe(commit.endLsn);
      expect(begin.commitTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
      expect(begin.commitTimeMicros).toBe(commit.commitTimeMicros);
      expect(Math.abs(Date.parse(commit.commitTime) - Date.now())).toBeLessThan(60_000);
    }

    // tx1: relation, then two inserts with exact text.
    const [rel, ins1, ins2] = txs[0]!.changes;
    const relation = tagged(rel, 'relation');
    expect(relation).toMatchObject({ namespace: 'public', name: 't', replicaIdentity: 'default' });
    expect(relation.columns.map((c) => [c.name, c.isKey, c.typeOid])).toEqual([
      ['id', true, 23],
      ['n', false, 1700],
      ['j', false, 3802],
      ['ts', false, 1184],
      ['b', false, 17],
      ['big', false, 25],
      ['s', false, 25],
      ['u', false, 25],
    ]);
    const row1 = tagged(ins1, 'insert').new;
    expect(row1).toEqual([source.id, source.n, source.j, source.ts, source.b, source.big, source.s, source.u]);
    expect(row1[1]).toBe(numeric);
    expect(row1[2]).toBe('{"f": 1.10, "big": 12345678901234567890, "dup": 2}');
    expect(row1[3]).toMatch(/^2026-11-2\d \d\d:\d\d:12\.123456[+-]/); // session time zone, µs kept
    expect(row1[4]).toBe('\\xdeadbeef00');
    expect(row1[5]).toBe(big);
    expect(row1[6]).toBe(''); // '' is not NULL
    expect(row1[7]).toBe(unicode);
    expect(tagged(ins2, 'insert').new).toEqual(['2', null, null, null, null, 'small', null, null]);

    // tx2: the TOASTed column is unchanged: a marker, not NULL and not the value.
    const upd = tagged(txs[1]!.changes[0], 'update');
    expect(upd.relationOid).toBe(relation.oid);
    expect(upd.key).toBeUndefined();
    expect(upd.old).toBeUndefined();
    expect(upd.new).toEqual([source.id, numeric, source.j, source.ts, source.b, UNCHANGED_TOAST, 'changed', unicode]);

    // tx3: key change carries the old key; tx4: delete carries the key.
    const keyUpd = tagged(txs[2]!.changes[0], 'update');
    expect(keyUpd.key).toEqual(['2', null, null, null, null, null, null, null]);
    expect(keyUpd.new).toEqual(['3', null, null, null, null, 'small', null, null]);
    const del = tagged(txs[3]!.changes[0], 'delete');
    expect(del.key).toEqual(['3', null, null, null, null, null, null, null]);

    // tx5: a new relation, an insert and a transactional message, with the xid.
    expect(tagged(txs[4]!.begin, 'begin').xid).toBe(xid);
    const [otherRel, otherIns, txMsg] = txs[4]!.changes;
    const other = tagged(otherRel, 'relation');
    expect(other.name).toBe('other');
    expect(tagged(otherIns, 'insert').new).toEqual(['1']);
    const m = tagged(txMsg, 'message');
    expect(m).toMatchObject({ transactional: true, prefix: 'lifeboat' });
    expect(m.content.toString()).toBe('in-tx');
    expect(txMsg!.lsn).toBe(m.lsn);

    // tx6: truncate (after a fresh Relation message: TRUNCATE gives the table a new relfilenode).
    expect(txs[5]!.changes.slice(0, -1).every((c) => c.message.tag === 'relation')).toBe(true);
    expect(tagged(txs[5]!.changes.at(-1), 'truncate')).toEqual({
      tag: 'truncate',
      cascade: false,
      restartIdentity: false,
      relationOids: [other.oid],
    });

    // The heartbeat: non-transactional, at the LSN the function returned.
    const last = items.at(-1)!;
    const heartbeat = tagged(last, 'message');
    expect(heartbeat.transactional).toBe(false);
    expect(heartbeat.content.toString()).toBe('heartbeat');
    expect(heartbeat.lsn).toBe(parseLsn(hb));
    expect(last.lsn).toBe(heartbeat.lsn);
  });

  it('confirm() alone moves confirmed_flush_lsn, across keepalives and reconnects', async () => {
    const { url, sql, slot } = await setup(['CREATE TABLE t (id int PRIMARY KEY)']);
    // A 1 s wal_sender_timeout makes the walsender ask for replies every ~0.5 s;
    // a long status interval leaves only those replies (and confirms) to answer.
    const u = new URL(url);
    u.searchParams.set('options', '-c wal_sender_timeout=1000');
    const withTimeout = u.toString();
    const stream = await open({ connectionString: withTimeout, slot, publication: 'lifeboat', statusIntervalMs: 60_000 });
    const initial = (await slotPosition(sql, slot)).confirmed;

    await sql.query('INSERT INTO t VALUES (1)');
    await sql.query('INSERT INTO t VALUES (2)');
    const a = (await readUntil(stream, isCommit)).at(-1)!;
    expect(a.lsn).toBeGreaterThan(initial);
    stream.confirm(a.lsn);
    expect((await eventually(() => slotPosition(sql, slot), (p) => p.confirmed === a.lsn)).confirmed).toBe(a.lsn);

    const bItems = await readUntil(stream, isCommit);
    const b = bItems.at(-1)!;
    expect(tagged(bItems.find((m) => m.message.tag === 'insert'), 'insert').new).toEqual(['2']);
    // Received but not confirmed: wait through several reply-requested keepalives.
    const before = stream.stats().keepaliveRepliesRequested;
    await sleep(3_000);
    const stats = stream.stats();
    expect(stats.keepaliveRepliesRequested - before).toBeGreaterThanOrEqual(2);
    expect(stats.receivedLsn).toBeGreaterThanOrEqual(b.lsn);
    expect(stats.serverWalEnd).toBeGreaterThanOrEqual(b.lsn);
    const replication = await sql.query<{ flush_lsn: string; sent_lsn: string }>(
      'SELECT flush_lsn::text, sent_lsn::text FROM pg_stat_replication WHERE pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1)',
      [slot],
    );
    expect(parseLsn(replication.rows[0]!.flush_lsn)).toBe(a.lsn); // we answered, with the confirmed LSN only
    expect(parseLsn(replication.rows[0]!.sent_lsn)).toBeGreaterThanOrEqual(b.lsn);
    expect(await slotPosition(sql, slot)).toEqual({ confirmed: a.lsn, active: true });
    // A position beyond what was received is refused.
    expect(() => stream.confirm(stats.receivedLsn + 1_000_000n)).toThrow(/beyond the last position/);

    await stream.close();
    expect((await eventually(() => slotPosition(sql, slot), (p) => !p.active)).confirmed).toBe(a.lsn);

    // Reopened from the slot's position: B (received, never confirmed) comes again.
    const again = await open({ connectionString: url, slot, publication: 'lifeboat' });
    const bAgain = await readUntil(again, isCommit);
    expect(tagged(bAgain.find((m) => m.message.tag === 'insert'), 'insert').new).toEqual(['2']);
    expect(bAgain.at(-1)!.lsn).toBe(b.lsn);
    again.confirm(b.lsn);
    await again.close(); // close sends the final status update at once
    expect((await eventually(() => slotPosition(sql, slot), (p) => !p.active)).confirmed).toBe(b.lsn);
  });

  it('keeps memory bounded with a slow consumer (socket paused)', async () => {
    const { url, sql, slot } = await setup(['CREATE TABLE t (id int PRIMARY KEY, pad text)']);
    const maxQueueBytes = 64 * 1024;
    const stream = await open({ connectionString: url, slot, publication: 'lifeboat', maxQueueBytes, maxQueueMessages: 1_000 });
    const rows = 30_000;
    await sql.query(`INSERT INTO t SELECT g, repeat('x', 300) || g FROM generate_series(1, $1) g`, [rows]);

    // Do not pull for a while: the queue fills to its limit and stops.
    await eventually(async () => stream.stats(), (s) => s.paused, 10_000);
    await sleep(500);
    const idle = stream.stats();
    expect(idle.paused).toBe(true);
    // Bound: the limit plus what was already parsed from one socket read (≤ 64 KiB).
    expect(idle.queuedBytes).toBeLessThanOrEqual(maxQueueBytes + 128 * 1024);

    let inserts = 0;
    let expected = 1;
    for (;;) {
      const m = await nextWithin(stream);
      if (m.message.tag === 'insert') {
        inserts++;
        expect(m.message.new[0]).toBe(String(expected++));
        if (inserts % 2_000 === 0) await sleep(20); // slow consumer
      }
      if (m.message.tag === 'commit') break;
    }
    expect(inserts).toBe(rows);
    const s = stream.stats();
    expect(s.pauseCount).toBeGreaterThan(1);
    expect(s.maxQueuedBytesSeen).toBeLessThanOrEqual(maxQueueBytes + 128 * 1024);
    expect(s.maxQueuedMessagesSeen).toBeLessThanOrEqual(1_000 + 3_000);
  });

  it('answers keepalives from the status timer even while paused', async () => {
    const { url, sql, slot } = await setup(['CREATE TABLE t (id int PRIMARY KEY, pad text)']);
    const u = new URL(url);
    u.searchParams.set('options', '-c wal_sender_timeout=1500');
    // Default status interval: read from the server as min(10 s, timeout / 3) = 500 ms.
    const stream = await open({ connectionString: u.toString(), slot, publication: 'lifeboat', maxQueueBytes: 16 * 1024 });
    expect(stream.statusIntervalMs).toBe(500);
    const walsender = async () =>
      (await sql.query<{ pid: number | null }>('SELECT active_pid AS pid FROM pg_replication_slots WHERE slot_name = $1', [slot])).rows[0]!
        .pid;
    const pid = await walsender();
    expect(pid).not.toBeNull();
    // ~12 MB: more than the socket buffers hold, so the walsender blocks on a full socket.
    const rows = 20_000;
    await sql.query(`INSERT INTO t SELECT g, repeat('y', 600) FROM generate_series(1, $1) g`, [rows]);
    await eventually(async () => stream.stats(), (s) => s.paused, 10_000);
    // Not pulling for 4 × wal_sender_timeout: keepalives cannot be read, only our timer speaks.
    await sleep(6_000);
    expect(stream.stats().paused).toBe(true);
    const items = await readUntil(stream, isCommit);
    expect(items.filter((m) => m.message.tag === 'insert')).toHaveLength(rows);
    // Still the same walsender: it never timed us out (buffered data alone could hide a dead connection).
    expect(await walsender()).toBe(pid);
    await sql.query("INSERT INTO t VALUES (0, 'after')");
    const after = await readUntil(stream, isCommit);
    expect(tagged(after.find((m) => m.message.tag === 'insert'), 'insert').new).toEqual(['0', 'after']);
  });

  it('createLogicalSlot exports a snapshot consistent with the slot start', async () => {
    const url = await createDatabase('local', 'snap');
    const sql = await connect(url);
    await sql.query('CREATE TABLE t (id int PRIMARY KEY)');
    await sql.query('INSERT INTO t SELECT generate_series(1, 10)');
    await sql.query('CREATE PUBLICATION lifeboat FOR ALL TABLES');
    const slot = uniqueSlot();
    const repl = createReplicationClient(url);
    await repl.connect();
    defer(() => dropSlotEventually(url, slot));
    const created = await createLogicalSlot(repl, slot);
    expect(created.slotName).toBe(slot);
    expect(created.snapshotName).toMatch(/^[0-9A-F]+-[0-9A-F]+-\d+$/);
    expect((await slotPosition(sql, slot)).confirmed).toBe(created.consistentPoint);

    await sql.query('INSERT INTO t VALUES (11)'); // after the slot: streamed, not in the snapshot

    // While `repl` stays open and idle, another connection copies at the snapshot.
    const copier = await connect(url);
    await copier.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await copier.query(`SET TRANSACTION SNAPSHOT ${pg.escapeLiteral(created.snapshotName)}`);
    const copied = await copier.query<{ n: string }>('SELECT count(*)::text AS n FROM t');
    expect(copied.rows[0]!.n).toBe('10');
    await copier.query('COMMIT');
    await repl.end();

    const stream = await open({ connectionString: url, slot, publication: 'lifeboat' });
    const items = await readUntil(stream, isCommit);
    expect(items.filter((m) => m.message.tag === 'insert').map((m) => (m.message as { new: unknown[] }).new)).toEqual([['11']]);

    // Creating it twice is a clear permanent error.
    const repl2 = createReplicationClient(url);
    await repl2.connect();
    defer(() => repl2.end().catch(() => {}));
    await expect(createLogicalSlot(repl2, slot)).rejects.toThrow(/already exists/);
  });

  describe('errors', () => {
    it('a missing slot is a PermanentError with a remedy', async () => {
      const url = await createDatabase('local', 'noslot');
      const err = await startReplicationStream({ connectionString: url, slot: 'lb_no_such_slot', publication: 'x', logger }).catch((e) => e);
      expect(err).toBeInstanceOf(PermanentError);
      expect(err.message).toMatch(/replication slot "lb_no_such_slot" does not exist/);
      expect(err.remedy).toMatch(/Recreate it/);
    });

    it('a slot in use by another connection is a RetryableError', async () => {
      const { url, slot } = await setup(['CREATE TABLE t (id int PRIMARY KEY)']);
      await open({ connectionString: url, slot, publication: 'lifeboat' });
      const err = await startReplicationStream({ connectionString: url, slot, publication: 'lifeboat', logger }).catch((e) => e);
      expect(err).toBeInstanceOf(RetryableError);
      expect(err.message).toMatch(/is in use/);
    });

    it('a missing publication surfaces through the iterator as a PermanentError', async () => {
      const { url, sql, slot } = await setup(['CREATE TABLE t (id int PRIMARY KEY)']);
      const stream = await open({ connectionString: url, slot, publication: 'no_such_pub' });
      await sql.query('INSERT INTO t VALUES (1)');
      const err = await nextWithin(stream).catch((e) => e);
      expect(err).toBeInstanceOf(PermanentError);
      expect(err.message).toMatch(/publication/);
    });

    it('a terminated walsender surfaces as a RetryableError', async () => {
      const { url, sql, slot } = await setup(['CREATE TABLE t (id int PRIMARY KEY)']);
      const stream = await open({ connectionString: url, slot, publication: 'lifeboat' });
      const pending = stream.next().then(
        () => new Error('expected the stream to fail'),
        (e: unknown) => e,
      );
      await sql.query('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      const err = await pending;
      expect(err).toBeInstanceOf(RetryableError);
      // And it stays failed.
      await expect(stream.next()).rejects.toBe(err);
    });

    it('disconnects when PostgreSQL shuts down, so a fast shutdown is not held up', async () => {
      // Its own cluster: the shared one must keep running. At shutdown a logical
      // walsender waits for flush = everything sent, which we never confirm.
      const base = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-shutdown-'));
      fs.chmodSync(base, 0o755);
      const cluster = await startPostgresCluster({ name: 'shutdown', dir: path.join(base, 'data'), log: () => {}, stopTimeoutMs: 20_000 });
      try {
        const sql = new pg.Client({ connectionString: cluster.url });
        await sql.connect();
        await sql.query('CREATE TABLE t (id int PRIMARY KEY)');
        await sql.query('CREATE PUBLICATION lifeboat FOR ALL TABLES');
        const slot = uniqueSlot();
        const repl = createReplicationClient(cluster.url);
        await repl.connect();
        await createLogicalSlot(repl, slot);
        await repl.end();
        const stream = await open({ connectionString: cluster.url, slot, publication: 'lifeboat' });
        await sql.query('INSERT INTO t VALUES (1)');
        await sql.end();
        await readUntil(stream, isCommit); // received, not confirmed
        const pending = stream.next().then(
          () => new Error('expected the stream to fail'),
          (e: unknown) => e,
        );
        const t0 = Date.now();
        await cluster.stop(); // SIGINT = fast shutdown; SIGKILL only after 20 s
        expect(Date.now() - t0).toBeLessThan(5_000);
        const err = await pending;
        expect(err).toBeInstanceOf(RetryableError);
        expect((err as Error).message).toMatch(/shutting down/);
      } finally {
        await cluster.stop();
        fs.rmSync(base, { recursive: true, force: true });
      }
    });

    it('break out of for-await closes the stream and frees the slot', async () => {
      const { url, sql, slot } = await setup(['CREATE TABLE t (id int PRIMARY KEY)']);
      const stream = await open({ connectionString: url, slot, publication: 'lifeboat' });
      await sql.query('INSERT INTO t VALUES (1)');
      for await (const m of stream) {
        if (m.message.tag === 'insert') break;
      }
      expect((await eventually(() => slotPosition(sql, slot), (p) => !p.active)).active).toBe(false);
      expect(await stream.next()).toEqual({ value: undefined, done: true });
    });
  });
});

describe('replication helpers (pure)', () => {
  it('quotes identifiers and replication literals', () => {
    expect(quoteIdent('a"b')).toBe('"a""b"');
    expect(quoteReplLiteral(`"x's\\"`)).toBe(`'"x''s\\"'`);
    expect(() => quoteIdent('a\0')).toThrow(/NUL/);
  });

  it('parses durations', () => {
    expect(parseDurationMs('60s')).toBe(60_000);
    expect(parseDurationMs('1min')).toBe(60_000);
    expect(parseDurationMs('500ms')).toBe(500);
    expect(parseDurationMs('0')).toBe(0);
    expect(parseDurationMs('bogus')).toBeUndefined();
  });

  it('classifies server errors', () => {
    const dbErr = (code: string, message: string, detail?: string) => Object.assign(new Error(message), { code, detail });
    const invalid = classifyReplicationError(
      dbErr('55000', 'cannot read from logical replication slot "s"', 'This slot has been invalidated because it exceeded the maximum reserved size.'),
      's',
      'p',
    );
    expect(invalid).toBeInstanceOf(PermanentError);
    expect((invalid as PermanentError).remedy).toMatch(/max_slot_wal_keep_size/);
    expect(classifyReplicationError(dbErr('57P01', 'terminating connection due to administrator command'), 's', 'p')).toBeInstanceOf(RetryableError);
    expect(classifyReplicationError(new Error('Connection terminated unexpectedly'), 's', 'p')).toBeInstanceOf(RetryableError);
    expect(classifyReplicationError(dbErr('42501', 'permission denied'), 's', 'p')).toBeInstanceOf(PermanentError);
    expect(classifyReplicationError(dbErr('42601', 'syntax error'), 's', 'p')).toBeInstanceOf(PermanentError);
  });
});
