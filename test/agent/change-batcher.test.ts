import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  HEARTBEAT_PREFIX,
  MARKER_PREFIX,
  ChangeBatcher,
  UnknownTypeError,
  type ChangeBatcherOptions,
  type TypeRef,
} from '../../agent/change-batcher.ts';
import type {
  PgoutputMessage,
  RelationMessage,
  TupleValue,
} from '../../agent/pgoutput-reader.ts';
import type { StreamedMessage } from '../../agent/replication-stream.ts';
import { encodeBatch } from '../../core/batch-codec.ts';
import {
  UNCHANGED_TOAST,
  batchRowCount,
  parseChangeBatch,
  toWireJson,
  type Change,
  type ChangeBatch,
  type ReplicaIdentity,
} from '../../core/change-batch.ts';
import { PermanentError, RetryableError } from '../../core/errors.ts';
import type { Logger } from '../../core/log.ts';

// ---------------------------------------------------------------------------
// Hand-built pgoutput messages

const silentLogger: Logger = {
  level: 'critical',
  isLevelEnabled: () => false,
  debug: () => {},
  info: () => {},
  notice: () => {},
  warn: () => {},
  error: () => {},
  critical: () => {},
  child: () => silentLogger,
};

/** format_type(oid, typmod) as the catalog would answer. */
const CATALOG = new Map<string, string>([
  ['23/-1', 'integer'],
  ['25/-1', 'text'],
  ['1700/655366', 'numeric(10,2)'],
  ['1043/14', 'character varying(10)'],
  ['1184/-1', 'timestamp with time zone'],
]);
const typeKey = (oid: number, typmod: number): string => `${oid}/${typmod}`;
const fullCatalog = (oid: number, typmod: number): string | undefined => CATALOG.get(typeKey(oid, typmod));

type ColumnSpec = readonly [name: string, typeOid: number, typmod: number, key: boolean];

function relation(oid: number, namespace: string, name: string, replicaIdentity: ReplicaIdentity, columns: readonly ColumnSpec[]): RelationMessage {
  return {
    tag: 'relation',
    oid,
    namespace,
    name,
    replicaIdentity,
    columns: columns.map(([colName, typeOid, typmod, key]) => ({ flags: key ? 1 : 0, isKey: key, name: colName, typeOid, typmod })),
  };
}

const ACCOUNTS = relation(16001, 'public', 'accounts', 'default', [
  ['id', 23, -1, true],
  ['owner', 25, -1, false],
  ['balance', 1700, 655366, false],
]);
const EVENTS = relation(16002, 'public', 'events', 'full', [
  ['id', 23, -1, true],
  ['body', 25, -1, true],
]);
const AUDIT = relation(16003, 'public', 'audit', 'nothing', [
  ['at', 1184, -1, false],
  ['what', 25, -1, false],
]);

const COMMIT_MICROS = 848_000_000_000_000n; // 2026-11-15T…; any instant works
const commitTimeText = '2026-11-15T19:33:20.000000Z';

/** Builds a stream with increasing LSNs, as a walsender would send it. */
class StreamScript {
  lsn: bigint;
  private xid = 1000;
  constructor(startLsn = 0x1000_0000n) {
    this.lsn = startLsn;
  }

  /** Begin, the given messages, Commit. Returns the items and the transaction's LSNs. */
  tx(messages: PgoutputMessage[], xid = this.xid++): { items: StreamedMessage[]; xid: number; commitLsn: bigint; endLsn: bigint } {
    const commitLsn = this.lsn + 0x100n + BigInt(messages.length) * 0x40n;
    const endLsn = commitLsn + 0x30n;
    this.lsn = endLsn;
    const items: StreamedMessage[] = [
      { lsn: commitLsn - BigInt(messages.length + 1) * 0x40n, message: { tag: 'begin', finalLsn: commitLsn, commitTimeMicros: COMMIT_MICROS, commitTime: commitTimeText, xid } },
      ...messages.map((message, i) => ({ lsn: commitLsn - BigInt(messages.length - i) * 0x40n, message })),
      { lsn: endLsn, message: { tag: 'commit', flags: 0, commitLsn, endLsn, commitTimeMicros: COMMIT_MICROS, commitTime: commitTimeText } },
    ];
    return { items, xid, commitLsn, endLsn };
  }

  /** A non-transactional logical message. */
  message(prefix: string, content: string | Buffer, transactional = false): StreamedMessage {
    this.lsn += 0x80n;
    const buf = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
    return { lsn: this.lsn, message: { tag: 'message', transactional, lsn: this.lsn, prefix, content: buf } };
  }

  heartbeat(sequences: unknown[] = [], sourceTime = '2026-11-23T13:31:02.123456Z'): StreamedMessage {
    return this.message(HEARTBEAT_PREFIX, JSON.stringify({ sourceTime, sequences }));
  }
}

const insert = (rel: RelationMessage, values: TupleValue[]): PgoutputMessage => ({ tag: 'insert', relationOid: rel.oid, new: values });
const update = (rel: RelationMessage, values: TupleValue[], extra: { key?: TupleValue[]; old?: TupleValue[] } = {}): PgoutputMessage => ({
  tag: 'update',
  relationOid: rel.oid,
  key: extra.key,
  old: extra.old,
  new: values,
});
const del = (rel: RelationMessage, extra: { key?: TupleValue[]; old?: TupleValue[] }): PgoutputMessage => ({
  tag: 'delete',
  relationOid: rel.oid,
  key: extra.key,
  old: extra.old,
});
const accountRow = (id: number, owner = `owner-${id}`, balance = '10.00'): TupleValue[] => [String(id), owner, balance];

interface Harness {
  batcher: ChangeBatcher;
  clock: { now: number };
  epoch: { value: number };
  /** Pushes every item, collecting batches. */
  pushAll(items: StreamedMessage[]): ChangeBatch[];
}

function harness(overrides: Partial<ChangeBatcherOptions> = {}): Harness {
  const clock = { now: Date.parse('2026-11-23T12:00:00Z') };
  const epoch = { value: 4 };
  const batcher = new ChangeBatcher({
    stream: 'main',
    epoch: () => epoch.value,
    startLsn: 0x1000_0000n,
    maxRows: 1000,
    maxBytes: 1 << 20,
    maxDelayMs: 200,
    clock: () => clock.now,
    typeName: fullCatalog,
    logger: silentLogger,
    ...overrides,
  });
  return {
    batcher,
    clock,
    epoch,
    pushAll(items) {
      const out: ChangeBatch[] = [];
      for (const item of items) out.push(...batcher.push(item));
      return out;
    },
  };
}

/** Round trip through the wire form: throws when the batch breaks a rule of the contract. */
function roundTrip(batch: ChangeBatch): ChangeBatch {
  const parsed = parseChangeBatch(JSON.parse(JSON.stringify(toWireJson(batch))));
  expect(parsed).toEqual(batch);
  return parsed;
}

function expectChain(batches: ChangeBatch[], startLsn: bigint, firstSeq = 0): void {
  let prev = startLsn;
  batches.forEach((batch, i) => {
    roundTrip(batch);
    expect(batch.lsnPrev).toBe(prev);
    expect(batch.seq).toBe(firstSeq + i);
    prev = batch.lsnLast;
  });
}

const xids = (batch: ChangeBatch): number[] => batch.transactions.map((tx) => tx.xid);

// ---------------------------------------------------------------------------

describe('ChangeBatcher: cutting batches', () => {
  it('packs whole transactions and cuts when the next one would exceed maxRows', () => {
    const h = harness({ maxRows: 5 });
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1)), insert(ACCOUNTS, accountRow(2))]);
    const t2 = s.tx([insert(ACCOUNTS, accountRow(3)), insert(ACCOUNTS, accountRow(4))]);
    const t3 = s.tx([insert(ACCOUNTS, accountRow(5)), insert(ACCOUNTS, accountRow(6))]);

    expect(h.pushAll([...t1.items, ...t2.items])).toEqual([]);
    const cut = h.pushAll(t3.items);
    expect(cut).toHaveLength(1);
    expect(xids(cut[0]!)).toEqual([t1.xid, t2.xid]);
    expect(batchRowCount(cut[0]!)).toBe(4);
    expect(cut[0]!.lsnFirst).toBe(t1.commitLsn);
    expect(cut[0]!.lsnLast).toBe(t2.endLsn);
    expect(cut[0]!.epoch).toBe(4);
    expect(cut[0]!.createdAt).toBe('2026-11-23T12:00:00.000Z');

    const rest = h.batcher.flush();
    expect(xids(rest[0]!)).toEqual([t3.xid]);
    expect(h.batcher.flush()).toEqual([]);
    expectChain([...cut, ...rest], 0x1000_0000n);
    // Every batch carries the descriptor of what it touches, even when an earlier batch had it.
    expect(rest[0]!.relations.map((r) => r.name)).toEqual(['accounts']);
  });

  it('cuts as soon as a batch is full rather than waiting for the next transaction', () => {
    const h = harness({ maxRows: 4 });
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1)), insert(ACCOUNTS, accountRow(2))]);
    const t2 = s.tx([insert(ACCOUNTS, accountRow(3)), insert(ACCOUNTS, accountRow(4))]);
    expect(h.pushAll(t1.items)).toEqual([]);
    const cut = h.pushAll(t2.items);
    expect(cut.map(xids)).toEqual([[t1.xid, t2.xid]]);
    expect(h.batcher.bufferedBytes()).toBe(0);
  });

  it('cuts by estimated bytes, and the estimate tracks the real JSON size', () => {
    const s = new StreamScript();
    const big = (id: number): TupleValue[] => [String(id), 'x'.repeat(1500), '1.00'];
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, big(1))]);
    const t2 = s.tx([insert(ACCOUNTS, big(2))]);
    const t3 = s.tx([insert(ACCOUNTS, big(3))]);

    // Measure with generous limits first.
    const probe = harness();
    probe.pushAll(t1.items);
    const oneTx = probe.batcher.bufferedBytes();
    probe.pushAll(t2.items);
    const twoTx = probe.batcher.bufferedBytes();
    const [measured] = probe.batcher.flush();
    const actual = Buffer.byteLength(JSON.stringify(toWireJson(measured!)));
    expect(twoTx / actual).toBeGreaterThan(0.9);
    expect(twoTx / actual).toBeLessThan(1.15);

    const h = harness({ maxBytes: twoTx + Math.floor((twoTx - oneTx) / 2) });
    expect(h.pushAll([...t1.items, ...t2.items])).toEqual([]);
    const cut = h.pushAll(t3.items);
    expect(cut.map(xids)).toEqual([[t1.xid, t2.xid]]);
    expect(h.batcher.flush().map(xids)).toEqual([[t3.xid]]);
    expect(h.batcher.stats().bytes).toBeGreaterThan(twoTx);
  });

  it('cuts on time: on tick once maxDelayMs passed since the first commit, or at a later commit', () => {
    const h = harness({ maxDelayMs: 100 });
    const s = new StreamScript();
    const t0 = h.clock.now;
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    expect(h.batcher.msUntilDue(t0)).toBeUndefined();
    expect(h.pushAll(t1.items)).toEqual([]);
    expect(h.batcher.openBatchAgeMs(t0 + 50)).toBe(50);
    expect(h.batcher.msUntilDue(t0 + 50)).toBe(50);
    expect(h.batcher.tick(t0 + 99)).toEqual([]);
    const due = h.batcher.tick(t0 + 100);
    expect(due.map(xids)).toEqual([[t1.xid]]);
    expect(h.batcher.openBatchAgeMs(t0 + 500)).toBe(0);
    expect(h.batcher.tick(t0 + 500)).toEqual([]);

    // A commit arriving after the deadline cuts the batch including itself.
    const t2 = s.tx([insert(ACCOUNTS, accountRow(2))]);
    const t3 = s.tx([insert(ACCOUNTS, accountRow(3))]);
    h.clock.now = t0 + 1000;
    expect(h.pushAll(t2.items)).toEqual([]);
    h.clock.now = t0 + 1150;
    const late = h.pushAll(t3.items);
    expect(late.map(xids)).toEqual([[t2.xid, t3.xid]]);
    expect(late[0]!.createdAt).toBe(new Date(t0 + 1150).toISOString());
    expectChain([...due, ...late], 0x1000_0000n);
  });

  it('with maxDelayMs 0 every transaction is a batch at its commit', () => {
    const h = harness({ maxDelayMs: 0 });
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const t2 = s.tx([insert(ACCOUNTS, accountRow(2))]);
    const out = h.pushAll([...t1.items, ...t2.items]);
    expect(out.map(xids)).toEqual([[t1.xid], [t2.xid]]);
    expectChain(out, 0x1000_0000n);
  });

  it('sends a transaction larger than the limits alone, never split (the codec claim-checks it)', () => {
    const h = harness({ maxRows: 3 });
    const s = new StreamScript();
    const small = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const huge = s.tx(Array.from({ length: 50 }, (_, i) => insert(ACCOUNTS, accountRow(100 + i, 'y'.repeat(200)))));
    const after = s.tx([insert(ACCOUNTS, accountRow(2))]);
    expect(h.pushAll(small.items)).toEqual([]);
    const out = h.pushAll(huge.items);
    expect(out.map(xids)).toEqual([[small.xid], [huge.xid]]);
    expect(batchRowCount(out[1]!)).toBe(50);
    const rest = h.pushAll(after.items);
    expect(rest).toEqual([]);
    const all = [...out, ...h.batcher.flush()];
    expectChain(all, 0x1000_0000n);
    expect(encodeBatch(out[1]!, { claimCheckAboveBytes: 1024, compressAboveBytes: 1 << 30 }).kind).toBe('claim-check');
  });

  it('keeps an unfinished transaction out of flush() and tick()', () => {
    const h = harness();
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const t2 = s.tx([insert(ACCOUNTS, accountRow(2)), insert(ACCOUNTS, accountRow(3))]);
    h.pushAll(t1.items);
    h.pushAll(t2.items.slice(0, -1)); // t2 not committed yet
    expect(h.batcher.inTransaction()).toBe(true);
    const buffered = h.batcher.bufferedBytes();
    const flushed = h.batcher.flush();
    expect(flushed.map(xids)).toEqual([[t1.xid]]);
    expect(h.batcher.bufferedBytes()).toBeGreaterThan(0);
    expect(h.batcher.bufferedBytes()).toBeLessThan(buffered);
    expect(h.batcher.tick(h.clock.now + 10_000)).toEqual([]);
    h.pushAll(t2.items.slice(-1));
    expectChain([...flushed, ...h.batcher.flush()], 0x1000_0000n);
  });

  it('reads the epoch when a batch is cut', () => {
    const h = harness({ maxDelayMs: 0 });
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const t2 = s.tx([insert(ACCOUNTS, accountRow(2))]);
    const [b1] = h.pushAll(t1.items);
    h.epoch.value = 9;
    const [b2] = h.pushAll(t2.items);
    expect([b1!.epoch, b2!.epoch]).toEqual([4, 9]);
  });

  it('counts rows, transactions, batches and bytes of what it returned', () => {
    const h = harness({ maxRows: 2 });
    const s = new StreamScript();
    const out = h.pushAll([
      ...s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1)), insert(ACCOUNTS, accountRow(2))]).items,
      ...s.tx([insert(ACCOUNTS, accountRow(3))]).items,
      s.heartbeat(),
    ]);
    const stats = h.batcher.stats();
    expect(out).toHaveLength(3);
    expect(stats).toMatchObject({ batches: 3, heartbeatBatches: 1, transactions: 2, rows: 3, droppedResentTransactions: 0 });
    expect(stats.bytes).toBeGreaterThan(0);
  });
});

describe('ChangeBatcher: chain and heartbeats', () => {
  it('flushes the open batch before a heartbeat and chains both', () => {
    const h = harness({ firstSeq: 7 });
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const hb = s.heartbeat([{ schema: 'public', name: 'accounts_id_seq', lastValue: '9007199254740993', isCalled: true }]);
    const t2 = s.tx([insert(ACCOUNTS, accountRow(2))]);
    const hb2 = s.heartbeat();

    expect(h.pushAll(t1.items)).toEqual([]);
    const atHeartbeat = h.batcher.push(hb);
    expect(atHeartbeat.map((b) => b.kind)).toEqual(['changes', 'heartbeat']);
    const [changes, heartbeat] = atHeartbeat as [ChangeBatch, ChangeBatch];
    expect(heartbeat.lsnPrev).toBe(changes.lsnLast);
    expect(heartbeat.lsnFirst).toBe(hb.lsn);
    expect(heartbeat.lsnLast).toBe(hb.lsn);
    expect(heartbeat.heartbeat).toEqual({
      sourceTime: '2026-11-23T13:31:02.123456Z',
      walLsn: hb.lsn,
      sequences: [{ schema: 'public', name: 'accounts_id_seq', lastValue: '9007199254740993', isCalled: true }],
    });
    expect(heartbeat.relations).toEqual([]);

    const idle = [...h.pushAll(t2.items), ...h.batcher.push(hb2)];
    expect(idle.map((b) => b.kind)).toEqual(['changes', 'heartbeat']);
    // An idle heartbeat (nothing open) is a batch of its own.
    const hb3 = s.heartbeat();
    const alone = h.batcher.push(hb3);
    expect(alone.map((b) => b.kind)).toEqual(['heartbeat']);
    expectChain([...atHeartbeat, ...idle, ...alone], 0x1000_0000n, 7);
    expect(h.batcher.lastBatchLsn()).toBe(hb3.lsn);
  });

  it('rejects malformed heartbeat content as a permanent error', () => {
    const bad = [
      'not json',
      JSON.stringify({ sourceTime: 'yesterday', sequences: [] }),
      JSON.stringify({ sourceTime: '2026-11-23T13:31:02Z' }),
      JSON.stringify({ sourceTime: '2026-11-23T13:31:02Z', sequences: [{ schema: 's', name: 'n', lastValue: 12, isCalled: true }] }),
      JSON.stringify({ sourceTime: '2026-11-23T13:31:02Z', sequences: [], extra: 1 }),
    ];
    for (const content of bad) {
      const h = harness();
      const s = new StreamScript();
      expect(() => h.batcher.push(s.message(HEARTBEAT_PREFIX, content))).toThrow(PermanentError);
    }
    const h = harness();
    expect(() => h.batcher.push(new StreamScript().message(HEARTBEAT_PREFIX, Buffer.from([0xff, 0xfe])))).toThrow(/not UTF-8 JSON/);
  });

  it('ignores (and counts) logical messages of other tools; refuses unknown or transactional lifeboat messages', () => {
    const h = harness();
    const s = new StreamScript();
    expect(h.batcher.push(s.message('pgl-ddl', '{}'))).toEqual([]);
    // A transaction holding only another tool's message has no changes: dropped, counted.
    const onlyForeign = s.tx([s.message('wal2json-marker', 'x', true).message]);
    expect(h.pushAll(onlyForeign.items)).toEqual([]);
    expect(h.batcher.stats()).toMatchObject({ ignoredMessages: 2, droppedEmptyTransactions: 1 });

    expect(() => harness().batcher.push(s.message('lifeboat-other', '{}'))).toThrow(/unknown Lifeboat logical message prefix/);
    expect(() => harness().batcher.push(s.message('lifeboat', '{}'))).toThrow(PermanentError);
    const inTx = s.tx([s.message(HEARTBEAT_PREFIX, '{}', true).message]);
    expect(() => harness().pushAll(inTx.items)).toThrow(/must be non-transactional/);
  });

  it('drops transactions and heartbeats re-sent at or before the start position', () => {
    const s = new StreamScript(0x2000_0000n);
    const old1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const oldHb = s.heartbeat();
    const old2 = s.tx([insert(ACCOUNTS, accountRow(2))]);
    const fresh = s.tx([insert(ACCOUNTS, accountRow(3))]);

    const h = harness({ startLsn: old2.endLsn });
    const out = h.pushAll([...old1.items, oldHb, ...old2.items, ...fresh.items]);
    expect(out).toEqual([]);
    const [batch] = h.batcher.flush();
    expect(xids(batch!)).toEqual([fresh.xid]);
    expect(batch!.lsnPrev).toBe(old2.endLsn);
    // The relation message inside the dropped transaction still describes later changes.
    expect(batch!.relations.map((r) => r.name)).toEqual(['accounts']);
    expect(h.batcher.stats()).toMatchObject({ droppedResentTransactions: 2, droppedResentHeartbeats: 1, transactions: 1 });
    roundTrip(batch!);
  });

  it('refuses a transaction that straddles the start position or goes backwards', () => {
    const s = new StreamScript(0x2000_0000n);
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const straddling = harness({ startLsn: t1.commitLsn + 1n });
    expect(() => straddling.pushAll(t1.items)).toThrow(/starts before position/);

    const t2 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(2))]);
    const h = harness({ startLsn: 0x2000_0000n });
    h.pushAll(t2.items);
    expect(() => h.pushAll(t1.items)).toThrow(/starts before position/);
  });
});

describe('ChangeBatcher: markers', () => {
  const markerJson = (over: Record<string, unknown> = {}) => JSON.stringify({ markerId: 'm-1', reason: 'takeover', requestedBy: 'cloud', ...over });
  const markerTx = (s: StreamScript, content = markerJson()) => s.tx([s.message(MARKER_PREFIX, content, true).message]);

  it('turns a marker transaction into a marker batch at its end LSN, after cutting the open batch', () => {
    const h = harness({ firstSeq: 3 });
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const t2 = s.tx([insert(ACCOUNTS, accountRow(2))]);
    const m = markerTx(s);
    const t3 = s.tx([insert(ACCOUNTS, accountRow(3))]);

    expect(h.pushAll([...t1.items, ...t2.items])).toEqual([]);
    const atMarker = h.pushAll(m.items);
    expect(atMarker.map((b) => b.kind)).toEqual(['changes', 'marker']);
    const [changes, marker] = atMarker as [ChangeBatch, ChangeBatch];
    expect(xids(changes)).toEqual([t1.xid, t2.xid]);
    expect(marker.lsnPrev).toBe(t2.endLsn);
    expect(marker.lsnFirst).toBe(m.endLsn);
    expect(marker.lsnLast).toBe(m.endLsn);
    expect(marker.marker).toEqual({ markerId: 'm-1', reason: 'takeover', requestedBy: 'cloud' });
    expect(marker.epoch).toBe(4);
    expect(marker.transactions).toEqual([]);

    // The chain goes on after it, and the wire contract accepts it.
    h.pushAll(t3.items);
    const after = h.batcher.flush();
    expect(after[0]!.lsnPrev).toBe(m.endLsn);
    expectChain([...atMarker, ...after], 0x1000_0000n, 3);
    expect(encodeBatch(marker, { compressAboveBytes: 1 << 20, claimCheckAboveBytes: 1 << 22 }).kind).toBe('inline');
    expect(h.batcher.stats()).toMatchObject({ markerBatches: 1, batches: 3, transactions: 3, droppedEmptyTransactions: 0 });
  });

  it('sends an idle marker alone, without requestedBy when none was given', () => {
    const h = harness();
    const s = new StreamScript();
    const out = h.pushAll(markerTx(s, JSON.stringify({ markerId: 'drain-7', reason: 'drain' })).items);
    expect(out.map((b) => b.kind)).toEqual(['marker']);
    expect(out[0]!.marker).toEqual({ markerId: 'drain-7', reason: 'drain' });
    expectChain(out, 0x1000_0000n);
  });

  it('drops a marker transaction re-sent at or before the start position', () => {
    const s = new StreamScript(0x2000_0000n);
    const m = markerTx(s);
    const fresh = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    const h = harness({ startLsn: m.endLsn });
    expect(h.pushAll([...m.items, ...fresh.items])).toEqual([]);
    expect(h.batcher.flush().map((b) => b.kind)).toEqual(['changes']);
    expect(h.batcher.stats()).toMatchObject({ markerBatches: 0, droppedResentTransactions: 1 });
  });

  it('refuses malformed marker content as a permanent error, and the error sticks', () => {
    const bad = [
      'not json',
      JSON.stringify({ reason: 'takeover' }),
      JSON.stringify({ markerId: '', reason: 'takeover' }),
      JSON.stringify({ markerId: 'm', reason: 'snapshot-complete' }),
      JSON.stringify({ markerId: 'm', reason: 'reboot' }),
      JSON.stringify({ markerId: 'm', reason: 'takeover', extra: true }),
      JSON.stringify({ markerId: 'm', reason: 'takeover', requestedBy: 7 }),
    ];
    for (const content of bad) {
      const h = harness();
      const s = new StreamScript();
      expect(() => h.pushAll(markerTx(s, content).items), content).toThrow(/malformed lifeboat-marker message/);
      expect(() => h.pushAll(s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]).items)).toThrow(PermanentError);
    }
  });

  it('refuses a non-transactional marker, a marker beside changes, and two markers in one transaction', () => {
    const s = new StreamScript();
    expect(() => harness().batcher.push(s.message(MARKER_PREFIX, markerJson()))).toThrow(/markers must be transactional/);

    const mixed = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1)), s.message(MARKER_PREFIX, markerJson(), true).message]);
    expect(() => harness().pushAll(mixed.items)).toThrow(/must be alone in its transaction/);

    const twice = s.tx([s.message(MARKER_PREFIX, markerJson(), true).message, s.message(MARKER_PREFIX, markerJson({ markerId: 'm-2' }), true).message]);
    expect(() => harness().pushAll(twice.items)).toThrow(/holds two lifeboat-marker messages/);

    // Other lifeboat prefixes stay errors, transactional or not.
    const other = s.tx([s.message('lifeboat-checkpoint', '{}', true).message]);
    expect(() => harness().pushAll(other.items)).toThrow(/unknown Lifeboat logical message prefix "lifeboat-checkpoint"/);
  });
});

describe('ChangeBatcher: relations and changes', () => {
  it('describes a table twice when its shape changes inside a batch, each change pointing at its own shape', () => {
    const h = harness();
    const s = new StreamScript();
    const altered = relation(ACCOUNTS.oid, 'public', 'accounts', 'default', [
      ['id', 23, -1, true],
      ['owner', 25, -1, false],
      ['balance', 1700, 655366, false],
      ['nickname', 1043, 14, false],
    ]);
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1)), EVENTS, insert(EVENTS, ['1', 'hello'])]);
    const t2 = s.tx([altered, insert(altered, [...accountRow(2), 'bob']), insert(EVENTS, ['2', 'again'])]);
    // Same shape re-sent (a cache invalidation): no new descriptor.
    const t3 = s.tx([{ ...altered }, insert(altered, [...accountRow(3), null])]);
    h.pushAll([...t1.items, ...t2.items, ...t3.items]);
    const [batch] = h.batcher.flush();
    const b = roundTrip(batch!);
    expect(b.relations.map((r) => `${r.name}/${r.columns.length}`)).toEqual(['accounts/3', 'events/2', 'accounts/4']);
    expect(b.relations[2]!.columns[3]).toEqual({ name: 'nickname', type: 'character varying(10)', typeOid: 1043, typmod: 14, key: false });
    const rels = b.transactions.map((tx) => tx.changes.map((c) => (c.op === 'truncate' ? -1 : c.rel)));
    expect(rels).toEqual([[0, 1], [2, 1], [2]]);
  });

  it('follows a shape change inside one transaction', () => {
    const h = harness();
    const s = new StreamScript();
    const twoCols = relation(16010, 'public', 'notes', 'default', [
      ['id', 23, -1, true],
      ['body', 25, -1, false],
    ]);
    const threeCols = relation(16010, 'public', 'notes', 'default', [
      ['id', 23, -1, true],
      ['body', 25, -1, false],
      ['score', 23, -1, false],
    ]);
    const t = s.tx([twoCols, insert(twoCols, ['1', 'a']), threeCols, insert(threeCols, ['2', 'b', '5'])]);
    h.pushAll(t.items);
    const b = roundTrip(h.batcher.flush()[0]!);
    expect(b.relations.map((r) => r.columns.length)).toEqual([2, 3]);
    expect(b.transactions[0]!.changes.map((c) => (c.op === 'insert' ? c.rel : -1))).toEqual([0, 1]);
  });

  it('maps default-identity updates and deletes (key only when it changed, unchanged TOAST kept)', () => {
    const h = harness();
    const s = new StreamScript();
    const t = s.tx([
      ACCOUNTS,
      update(ACCOUNTS, ['1', UNCHANGED_TOAST, '5.00']),
      update(ACCOUNTS, ['7', 'o', '5.00'], { key: ['1', null, null] }),
      del(ACCOUNTS, { key: ['7', null, null] }),
    ]);
    h.pushAll(t.items);
    const b = roundTrip(h.batcher.flush()[0]!);
    expect(b.transactions[0]!.changes).toEqual([
      { op: 'update', rel: 0, new: ['1', UNCHANGED_TOAST, '5.00'] },
      { op: 'update', rel: 0, new: ['7', 'o', '5.00'], key: ['1', null, null] },
      { op: 'delete', rel: 0, key: ['7', null, null] },
    ] satisfies Change[]);
    expect(b.relations[0]!.columns.map((c) => c.key)).toEqual([true, false, false]);
  });

  it('maps REPLICA IDENTITY FULL updates and deletes with the whole old row', () => {
    const h = harness();
    const s = new StreamScript();
    const t = s.tx([EVENTS, update(EVENTS, ['1', UNCHANGED_TOAST], { old: ['1', 'long text'] }), del(EVENTS, { old: ['1', 'long text'] })]);
    h.pushAll(t.items);
    const b = roundTrip(h.batcher.flush()[0]!);
    expect(b.relations[0]!.replicaIdentity).toBe('full');
    expect(b.relations[0]!.columns.every((c) => c.key)).toBe(true);
    expect(b.transactions[0]!.changes).toEqual([
      { op: 'update', rel: 0, new: ['1', UNCHANGED_TOAST], old: ['1', 'long text'] },
      { op: 'delete', rel: 0, old: ['1', 'long text'] },
    ]);
  });

  it('maps truncate with its relations and option bits', () => {
    const h = harness();
    const s = new StreamScript();
    const t = s.tx([
      ACCOUNTS,
      insert(ACCOUNTS, accountRow(1)),
      EVENTS,
      AUDIT,
      { tag: 'truncate', cascade: true, restartIdentity: false, relationOids: [EVENTS.oid, AUDIT.oid, EVENTS.oid] },
      { tag: 'truncate', cascade: false, restartIdentity: true, relationOids: [ACCOUNTS.oid] },
    ]);
    h.pushAll(t.items);
    const b = roundTrip(h.batcher.flush()[0]!);
    expect(b.relations.map((r) => r.name)).toEqual(['accounts', 'events', 'audit']);
    expect(b.transactions[0]!.changes.slice(1)).toEqual([
      { op: 'truncate', rels: [1, 2], cascade: true, restartIdentity: false },
      { op: 'truncate', rels: [0], cascade: false, restartIdentity: true },
    ]);
    expect(batchRowCount(b)).toBe(1);
  });

  it('allows inserts into a REPLICA IDENTITY NOTHING table and refuses its updates, naming the table', () => {
    const h = harness();
    const s = new StreamScript();
    h.pushAll(s.tx([AUDIT, insert(AUDIT, ['2026-11-23 12:00:00+00', 'login'])]).items);
    const t2 = s.tx([update(AUDIT, ['2026-11-23 12:00:00+00', 'logout'])]);
    let error: unknown;
    try {
      h.pushAll(t2.items);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(PermanentError);
    expect((error as PermanentError).message).toContain('public.audit');
    expect((error as PermanentError).remedy).toMatch(/primary key|REPLICA IDENTITY/);
    // The error sticks: carrying on would skip the update silently.
    expect(() => h.batcher.push(s.heartbeat())).toThrow(error as Error);
    // Complete transactions are still consistent and can be flushed.
    expect(h.batcher.flush().map(xids)).toHaveLength(1);
  });

  it('refuses messages that break the protocol', () => {
    const s = new StreamScript();
    const cases: { name: string; items: StreamedMessage[]; error: RegExp }[] = [
      { name: 'change without Begin', items: [{ lsn: 1n, message: insert(ACCOUNTS, accountRow(1)) }], error: /outside a transaction/ },
      { name: 'unknown relation', items: s.tx([insert(ACCOUNTS, accountRow(1))]).items, error: /before any Relation message/ },
      { name: 'wrong tuple length', items: s.tx([ACCOUNTS, insert(ACCOUNTS, ['1'])]).items, error: /has 1 values but the relation has 3 columns/ },
      { name: 'full identity without old row', items: s.tx([EVENTS, update(EVENTS, ['1', 'x'])]).items, error: /does not carry the whole old row/ },
      { name: 'old row under default identity', items: s.tx([ACCOUNTS, del(ACCOUNTS, { old: accountRow(1) })]).items, error: /not FULL/ },
      {
        name: 'nested Begin',
        items: [s.tx([]).items[0]!, s.tx([]).items[0]!],
        error: /while transaction \d+ is still open/,
      },
      { name: 'Commit without Begin', items: s.tx([ACCOUNTS]).items.slice(-1), error: /without a Begin/ },
      { name: 'heartbeat inside a transaction', items: [s.tx([]).items[0]!, s.heartbeat()], error: /inside transaction/ },
    ];
    for (const c of cases) {
      const h = harness();
      expect(() => h.pushAll(c.items), c.name).toThrow(c.error);
    }
    const noKey = relation(16020, 'public', 'nokey', 'default', [['a', 25, -1, false]]);
    expect(() => harness().pushAll(s.tx([noKey, del(noKey, { key: ['x'] })]).items)).toThrow(/no replica identity key columns.*public\.nokey|public\.nokey.*no replica identity key/);
  });

  it('validates its options', () => {
    expect(() => harness({ stream: 'Not Valid' })).toThrow(/stream/);
    expect(() => harness({ maxRows: 0 })).toThrow(/maxRows/);
    expect(() => harness({ startLsn: -1n })).toThrow(/startLsn/);
    const h = harness({ maxDelayMs: 0 });
    h.epoch.value = -1;
    expect(() => h.pushAll(new StreamScript().tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]).items)).toThrow(/epoch/);
    const broken = harness({ clock: () => Number.NaN });
    expect(() => broken.pushAll(new StreamScript().tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]).items)).toThrow(/clock returned NaN/);
    expect(() => harness().batcher.tick(Number.NaN)).toThrow(/not a time/);
  });
});

describe('ChangeBatcher: unknown types', () => {
  it('signals missing type names without changing state, and takes the same item again', () => {
    const cache = new Map<string, string>([['23/-1', 'integer']]);
    const h = harness({ typeName: (oid, typmod) => cache.get(typeKey(oid, typmod)), maxDelayMs: 0 });
    const s = new StreamScript();
    const t1 = s.tx([ACCOUNTS, insert(ACCOUNTS, accountRow(1))]);
    h.batcher.push(t1.items[0]!); // Begin
    let signal: unknown;
    try {
      h.batcher.push(t1.items[1]!);
    } catch (err) {
      signal = err;
    }
    expect(signal).toBeInstanceOf(UnknownTypeError);
    expect(signal).toBeInstanceOf(RetryableError);
    const types: readonly TypeRef[] = (signal as UnknownTypeError).types;
    expect(types).toEqual([
      { oid: 25, typmod: -1 },
      { oid: 1700, typmod: 655366 },
    ]);
    // Skipping the item would lose the relation: refused.
    expect(() => h.batcher.push(t1.items[2]!)).toThrow(/different item/);
    // Pushing it again while still unknown signals again.
    expect(() => h.batcher.push(t1.items[1]!)).toThrow(UnknownTypeError);

    for (const t of types) cache.set(typeKey(t.oid, t.typmod), CATALOG.get(typeKey(t.oid, t.typmod))!);
    expect(h.batcher.push(t1.items[1]!)).toEqual([]);
    const out = h.pushAll(t1.items.slice(2));
    expect(out).toHaveLength(1);
    const b = roundTrip(out[0]!);
    expect(b.relations[0]!.columns.map((c) => c.type)).toEqual(['integer', 'text', 'numeric(10,2)']);
    expect(b.transactions[0]!.changes).toHaveLength(1);
  });
});

// ---------------------------------------------------------------------------
// Property: random transaction streams

interface TableShape {
  readonly oid: number;
  readonly namespace: string;
  readonly name: string;
  readonly identity: ReplicaIdentity;
}

const TABLES: readonly TableShape[] = [
  { oid: 17001, namespace: 'public', name: 'accounts', identity: 'default' },
  { oid: 17002, namespace: 'public', name: 'events', identity: 'full' },
  { oid: 17003, namespace: 'App Schema', name: 'Mixed "Case"', identity: 'index' },
  { oid: 17004, namespace: 'public', name: 'audit', identity: 'nothing' },
];
const COLUMN_TYPES: readonly (readonly [number, number])[] = [
  [23, -1],
  [25, -1],
  [1700, 655366],
  [1043, 14],
];

function shapeMessage(table: TableShape, columnCount: number): RelationMessage {
  const columns: ColumnSpec[] = [];
  for (let i = 0; i < columnCount; i++) {
    const [oid, typmod] = COLUMN_TYPES[i]!;
    const key = table.identity === 'full' || (table.identity !== 'nothing' && i === 0);
    columns.push([`c${i}`, oid, typmod, key]);
  }
  return relation(table.oid, table.namespace, table.name, table.identity, columns);
}

const text = fc.oneof(fc.string({ maxLength: 12 }), fc.string({ unit: 'grapheme', maxLength: 6 })).map((v) => v.replaceAll('\u0000', ''));
const rawChange = fc.record({
  table: fc.nat({ max: TABLES.length - 1 }),
  op: fc.constantFrom('insert', 'update', 'delete', 'truncate'),
  values: fc.array(fc.option(text, { nil: null }), { minLength: 4, maxLength: 4 }),
  toast: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  keyChanged: fc.boolean(),
  truncateTables: fc.uniqueArray(fc.nat({ max: TABLES.length - 1 }), { minLength: 1, maxLength: 3 }),
  cascade: fc.boolean(),
  restartIdentity: fc.boolean(),
  resendRelation: fc.boolean(),
});
type RawChange = typeof rawChange extends fc.Arbitrary<infer T> ? T : never;

const event = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('tx' as const), changes: fc.array(rawChange, { minLength: 1, maxLength: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('heartbeat' as const), sequences: fc.nat({ max: 2 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('alter' as const), table: fc.nat({ max: TABLES.length - 1 }), columns: fc.integer({ min: 2, max: 4 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.nat({ max: 300 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('foreign' as const), transactional: fc.boolean() }) },
);

/** A change as the test expects to read it back, independent of rel indices. */
interface ResolvedChange {
  op: string;
  tables: string[];
  new?: TupleValue[];
  key?: TupleValue[];
  old?: TupleValue[];
  cascade?: boolean;
  restartIdentity?: boolean;
}
type Expected = { kind: 'tx'; xid: number; commitLsn: bigint; endLsn: bigint; changes: ResolvedChange[] } | { kind: 'heartbeat'; lsn: bigint };

const shapeLabel = (r: { schema: string; name: string; columns: readonly { name: string }[] }): string => `${r.schema}.${r.name}(${r.columns.map((c) => c.name).join(',')})`;
const messageLabel = (m: RelationMessage): string => `${m.namespace}.${m.name}(${m.columns.map((c) => c.name).join(',')})`;

/** Turns generated events into stream items plus what must come out. */
function buildStream(events: (typeof event extends fc.Arbitrary<infer T> ? T : never)[], resentTxs: number) {
  const s = new StreamScript(0x3000_0000n);
  const shapes = TABLES.map((t) => shapeMessage(t, 3));
  // pgoutput describes a relation once per session and again after it changes.
  const described = TABLES.map(() => false);
  const steps: ({ kind: 'item'; item: StreamedMessage } | { kind: 'tick'; ms: number })[] = [];
  const expected: Expected[] = [];
  let startLsn = s.lsn;

  const row = (raw: RawChange, shape: RelationMessage, toastAllowed: boolean): TupleValue[] =>
    shape.columns.map((c, i) => {
      if (c.isKey && shape.replicaIdentity !== 'full') return raw.values[i] ?? `k${i}`;
      if (toastAllowed && raw.toast[i]) return UNCHANGED_TOAST;
      return raw.values[i] ?? null;
    });
  const keyTuple = (raw: RawChange, shape: RelationMessage): TupleValue[] => shape.columns.map((c, i) => (c.isKey ? (raw.values[i] ?? `k${i}`) : null));

  for (const ev of events) {
    if (ev.kind === 'tick') {
      steps.push({ kind: 'tick', ms: ev.ms });
    } else if (ev.kind === 'alter') {
      shapes[ev.table] = shapeMessage(TABLES[ev.table]!, ev.columns);
      described[ev.table] = false;
    } else if (ev.kind === 'heartbeat') {
      const sequences = Array.from({ length: ev.sequences }, (_, i) => ({ schema: 'public', name: `seq_${i}`, lastValue: String(i * 7), isCalled: i % 2 === 0 }));
      const item = s.heartbeat(sequences);
      steps.push({ kind: 'item', item });
      expected.push({ kind: 'heartbeat', lsn: item.lsn });
    } else if (ev.kind === 'foreign') {
      if (ev.transactional) {
        const t = s.tx([s.message('other-tool', 'x', true).message]);
        for (const item of t.items) steps.push({ kind: 'item', item });
      } else {
        steps.push({ kind: 'item', item: s.message('other-tool', 'x') });
      }
    } else {
      const messages: PgoutputMessage[] = [];
      const changes: ResolvedChange[] = [];
      const describe = (i: number, force: boolean): RelationMessage => {
        const shape = shapes[i]!;
        if (!described[i] || force) messages.push(described[i] ? { ...shape } : shape);
        described[i] = true;
        return shape;
      };
      for (const raw of ev.changes) {
        const table = TABLES[raw.table]!;
        const op = table.identity === 'nothing' && (raw.op === 'update' || raw.op === 'delete') ? 'insert' : raw.op;
        if (op === 'truncate') {
          const shapesUsed = raw.truncateTables.map((i) => describe(i, false));
          messages.push({ tag: 'truncate', cascade: raw.cascade, restartIdentity: raw.restartIdentity, relationOids: shapesUsed.map((m) => m.oid) });
          changes.push({ op, tables: shapesUsed.map(messageLabel), cascade: raw.cascade, restartIdentity: raw.restartIdentity });
          continue;
        }
        const shape = describe(raw.table, raw.resendRelation);
        const label = [messageLabel(shape)];
        if (op === 'insert') {
          const values = row(raw, shape, false);
          messages.push(insert(shape, values));
          changes.push({ op, tables: label, new: values });
        } else if (op === 'update') {
          const values = row(raw, shape, true);
          if (table.identity === 'full') {
            const old = row(raw, shape, false).map((v) => (v === null ? 'old' : v));
            messages.push(update(shape, values, { old }));
            changes.push({ op, tables: label, new: values, old });
          } else if (raw.keyChanged) {
            const key = keyTuple(raw, shape);
            messages.push(update(shape, values, { key }));
            changes.push({ op, tables: label, new: values, key });
          } else {
            messages.push(update(shape, values));
            changes.push({ op, tables: label, new: values });
          }
        } else if (table.identity === 'full') {
          const old = row(raw, shape, false);
          messages.push(del(shape, { old }));
          changes.push({ op, tables: label, old });
        } else {
          const key = keyTuple(raw, shape);
          messages.push(del(shape, { key }));
          changes.push({ op, tables: label, key });
        }
      }
      const t = s.tx(messages);
      for (const item of t.items) steps.push({ kind: 'item', item });
      if (resentTxs > 0) {
        resentTxs--;
        startLsn = t.endLsn; // already confirmed before this run
      } else {
        expected.push({ kind: 'tx', xid: t.xid, commitLsn: t.commitLsn, endLsn: t.endLsn, changes });
      }
    }
  }
  // Heartbeats at or before the start are re-sends too.
  return { steps, expected: expected.filter((e) => (e.kind === 'tx' ? e.endLsn > startLsn : e.lsn > startLsn)), startLsn };
}

function resolve(batch: ChangeBatch, change: Change): ResolvedChange {
  const name = (i: number): string => shapeLabel(batch.relations[i]!);
  if (change.op === 'truncate') return { op: 'truncate', tables: change.rels.map(name), cascade: change.cascade, restartIdentity: change.restartIdentity };
  const out: ResolvedChange = { op: change.op, tables: [name(change.rel)] };
  if (change.op !== 'delete') out.new = change.new;
  if (change.op !== 'insert' && change.key !== undefined) out.key = change.key;
  if (change.op !== 'insert' && change.old !== undefined) out.old = change.old;
  return out;
}

describe('ChangeBatcher (property)', () => {
  it('returns valid batches that chain without gaps and carry every transaction once, in commit order', () => {
    fc.assert(
      fc.property(
        fc.array(event, { maxLength: 40 }),
        fc.nat({ max: 2 }),
        fc.record({ maxRows: fc.integer({ min: 1, max: 12 }), maxBytes: fc.integer({ min: 200, max: 6000 }), maxDelayMs: fc.nat({ max: 400 }) }),
        fc.boolean(),
        (events, resentTxs, limits, coldTypeCache) => {
          const { steps, expected, startLsn } = buildStream(events, resentTxs);
          const cache = new Map<string, string>(coldTypeCache ? [] : CATALOG);
          let typeSignals = 0;
          const clock = { now: 1_700_000_000_000 };
          const batcher = new ChangeBatcher({
            stream: 'prop',
            epoch: () => 2,
            startLsn,
            ...limits,
            clock: () => clock.now,
            typeName: (oid, typmod) => cache.get(typeKey(oid, typmod)),
            logger: silentLogger,
          });
          const batches: ChangeBatch[] = [];
          for (const step of steps) {
            if (step.kind === 'tick') {
              clock.now += step.ms;
              batches.push(...batcher.tick());
              // tick cut whatever was due
              expect(batcher.openBatchAgeMs()).toBeLessThan(Math.max(1, limits.maxDelayMs));
              continue;
            }
            try {
              batches.push(...batcher.push(step.item));
            } catch (err) {
              if (!(err instanceof UnknownTypeError)) throw err;
              typeSignals++;
              for (const t of err.types) cache.set(typeKey(t.oid, t.typmod), CATALOG.get(typeKey(t.oid, t.typmod))!);
              batches.push(...batcher.push(step.item));
            }
          }
          batches.push(...batcher.flush());
          expect(batcher.bufferedBytes()).toBe(0);
          if (!coldTypeCache) expect(typeSignals).toBe(0);

          // (1) valid, (3) one unbroken chain with consecutive seqs.
          expectChain(batches, startLsn);
          // (2) every transaction and heartbeat once, in order, with exactly its changes.
          const seen: Expected[] = [];
          for (const batch of batches) {
            if (batch.kind === 'heartbeat') seen.push({ kind: 'heartbeat', lsn: batch.lsnLast });
            for (const tx of batch.transactions) {
              seen.push({ kind: 'tx', xid: tx.xid, commitLsn: tx.commitLsn, endLsn: tx.endLsn, changes: tx.changes.map((c) => resolve(batch, c)) });
            }
            // Limits: several transactions share a batch only within maxRows.
            if (batch.transactions.length > 1) expect(batchRowCount(batch)).toBeLessThanOrEqual(limits.maxRows);
          }
          expect(seen).toEqual(expected);
          const stats = batcher.stats();
          expect(stats.batches).toBe(batches.length);
          expect(stats.transactions).toBe(expected.filter((e) => e.kind === 'tx').length);
          expect(stats.rows).toBe(batches.reduce((sum, b) => sum + batchRowCount(b), 0));
        },
      ),
      { numRuns: 150 },
    );
  });
});
