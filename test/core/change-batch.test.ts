import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  PG_EPOCH_UNIX_MICROS,
  UNCHANGED_TOAST,
  batchRowCount,
  batchTables,
  formatIsoMicros,
  formatIssuePath,
  isUnchangedToast,
  parseChangeBatch,
  toWireJson,
  type Change,
  type ChangeBatch,
  type ChangeBatchWire,
  type RelationDescriptor,
  type Transaction,
  type TupleValue,
} from '../../core/change-batch.ts';
import { ValidationError } from '../../core/errors.ts';

// ---------------------------------------------------------------------------
// Fixtures: three relations, one per interesting replica identity.

const column = (name: string, type: string, typeOid: number, key: boolean, typmod = -1) => ({ name, type, typeOid, typmod, key });

const accounts: RelationDescriptor = {
  oid: 16390,
  schema: 'public',
  name: 'accounts',
  replicaIdentity: 'default',
  columns: [
    column('id', 'bigint', 20, true),
    column('owner', 'text', 25, false),
    column('balance', 'numeric(40,10)', 1700, false, 2621454),
    column('notes', 'text', 25, false),
    column('updated_at', 'timestamp with time zone', 1184, false),
  ],
};

const audit: RelationDescriptor = {
  oid: 16400,
  schema: 'app',
  name: 'audit',
  replicaIdentity: 'full',
  columns: [column('at', 'timestamp with time zone', 1184, true), column('what', 'text', 25, true)],
};

const moods: RelationDescriptor = {
  oid: 16410,
  schema: 'app',
  name: 'moods',
  replicaIdentity: 'index',
  columns: [column('code', 'text', 25, true), column('moods', 'public.mood[]', 16420, false)],
};

const logOnly: RelationDescriptor = {
  oid: 16430,
  schema: 'app',
  name: 'log_only',
  replicaIdentity: 'nothing',
  columns: [column('line', 'text', 25, false)],
};

function tx(xid: number, commitLsn: bigint, endLsn: bigint, changes: Change[]): Transaction {
  return { xid, commitLsn, endLsn, commitTime: '2026-11-23T13:31:02.123456Z', changes };
}

function validBatch(): ChangeBatch {
  return {
    v: 1,
    kind: 'changes',
    stream: 'main',
    epoch: 2,
    seq: 9,
    lsnPrev: 0x100n,
    lsnFirst: 0x110n,
    lsnLast: 0x300n,
    createdAt: '2026-11-23T13:31:02.5+01:00',
    relations: [accounts, audit, moods, logOnly],
    transactions: [
      tx(700, 0x110n, 0x180n, [
        { op: 'insert', rel: 0, new: ['1', 'ann', '1234567890123456789012345678901.0000000001', '', null] },
        { op: 'update', rel: 0, new: ['1', 'ann', '0', UNCHANGED_TOAST, '2026-11-23 13:31:02.123456+00'] },
        { op: 'update', rel: 0, new: ['2', 'ann', '0', UNCHANGED_TOAST, null], key: ['1', null, null, null, null] },
        { op: 'update', rel: 1, new: [UNCHANGED_TOAST, UNCHANGED_TOAST], old: ['2026-01-01 00:00:00+00', 'x'] },
        { op: 'insert', rel: 3, new: ['only inserts here'] },
      ]),
      tx(701, 0x180n, 0x300n, [
        { op: 'delete', rel: 0, key: ['2', null, null, null, null] },
        { op: 'delete', rel: 1, old: ['2026-01-01 00:00:00+00', 'x'] },
        { op: 'update', rel: 2, new: ['happy', '{happy,"very sad"}'] },
        { op: 'truncate', rels: [2, 1], cascade: true, restartIdentity: false },
      ]),
    ],
  };
}

/** Wire JSON of the valid batch, edited, then parsed: returns the error message. */
function problemsAfter(edit: (wire: ChangeBatchWire & Record<string, unknown>) => void): string {
  const wire = JSON.parse(JSON.stringify(toWireJson(validBatch())));
  edit(wire);
  try {
    parseChangeBatch(wire);
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return (err as Error).message;
  }
  throw new Error('parseChangeBatch accepted the edited batch');
}

/** In-memory batch, edited, then sent through the wire form. */
function problemsAfterInMemory(edit: (batch: ChangeBatch) => void): string {
  const batch = validBatch();
  edit(batch);
  return problemsAfter((wire) => Object.assign(wire, toWireJson(batch)));
}

/** A wire change, typed loosely so tests can break it. */
interface LooseChange {
  op: string;
  new?: unknown[];
  key?: unknown[];
  old?: unknown[];
  [field: string]: unknown;
}
const changeAt = (wire: ChangeBatchWire, t: number, c: number): LooseChange => wire.transactions[t]?.changes[c] as unknown as LooseChange;

// ---------------------------------------------------------------------------

describe('parseChangeBatch accepts the contract', () => {
  it('round-trips the fixture through JSON text', () => {
    const text = JSON.stringify(toWireJson(validBatch()));
    expect(parseChangeBatch(JSON.parse(text))).toStrictEqual(validBatch());
  });

  it('writes unchanged TOAST as 0 and LSNs as canonical text', () => {
    const wire = toWireJson(validBatch());
    expect(wire.lsnFirst).toBe('0/110');
    expect(changeAt(wire, 0, 1).new).toEqual(['1', 'ann', '0', 0, '2026-11-23 13:31:02.123456+00']);
    expect(parseChangeBatch(wire).transactions[0]?.changes[1]).toEqual({
      op: 'update',
      rel: 0,
      new: ['1', 'ann', '0', UNCHANGED_TOAST, '2026-11-23 13:31:02.123456+00'],
    });
  });

  it('accepts zero-padded LSN text', () => {
    const batch = parseChangeBatch({ ...toWireJson(validBatch()), lsnPrev: '00000000/00000100' });
    expect(batch.lsnPrev).toBe(0x100n);
  });

  it('keeps the marker distinct from every string and null', () => {
    expect(isUnchangedToast(UNCHANGED_TOAST)).toBe(true);
    expect(isUnchangedToast('0')).toBe(false);
    expect(isUnchangedToast(null)).toBe(false);
    expect(UNCHANGED_TOAST).toBe(Symbol.for('lifeboat.unchanged-toast'));
    // Stringifying it by accident fails loudly instead of writing a value.
    expect(() => `${UNCHANGED_TOAST as unknown as string}`).toThrow(TypeError);
  });

  it('counts rows and names tables', () => {
    const batch = validBatch();
    expect(batchRowCount(batch)).toBe(8);
    expect(batchTables(batch)).toEqual(['public.accounts', 'app.audit', 'app.log_only', 'app.moods']);
    const snapshot: ChangeBatch = {
      ...batch,
      kind: 'snapshot',
      lsnFirst: 0x300n,
      transactions: [],
      snapshot: { snapshotId: '00000003-00000002-1', relation: 2, chunk: 0, rows: [['a', null], ['b', '{}']], lastChunk: true, consistentLsn: 0x300n },
    };
    expect(parseChangeBatch(toWireJson(snapshot))).toStrictEqual(snapshot);
    expect(batchRowCount(snapshot)).toBe(2);
    expect(batchTables(snapshot)).toEqual(['app.moods']);
  });
});

describe('parseChangeBatch rejects with messages that name the path', () => {
  it.each<[string, (wire: ChangeBatchWire & Record<string, unknown>) => void, string]>([
    ['empty object', (wire) => Object.keys(wire).forEach((k) => delete wire[k]), 'invalid ChangeBatch (11 problems): v: required field is missing (expected 1); kind: required field is missing (expected "changes" | "snapshot" | "heartbeat" | "marker"); stream: required field is missing (expected string)'],
    ['wrong version', (wire) => Object.assign(wire, { v: 2 }), 'v: unsupported ChangeBatch version 2: this code understands v1'],
    ['unknown kind', (wire) => Object.assign(wire, { kind: 'ddl' }), 'kind: unknown kind "ddl": expected changes, snapshot, heartbeat or marker'],
    ['unknown field', (wire) => Object.assign(wire, { extra: true }), '(top level): Unrecognized key: "extra"'],
    ['missing field', (wire) => delete (wire as Record<string, unknown>).createdAt, 'createdAt: required field is missing (expected string)'],
    ['bad stream id', (wire) => Object.assign(wire, { stream: 'Main' }), 'stream: stream id must match [a-z0-9][a-z0-9_-]{0,62}'],
    ['negative epoch', (wire) => Object.assign(wire, { epoch: -1 }), 'epoch: Too small: expected number to be >=0'],
    ['bad LSN', (wire) => Object.assign(wire, { lsnLast: '1/' }), 'lsnLast: invalid LSN "1/"'],
    ['bad createdAt', (wire) => Object.assign(wire, { createdAt: 'yesterday' }), 'createdAt: must be an ISO-8601 date-time'],
    [
      'commitTime without microseconds',
      (wire) => Object.assign(wire.transactions[0] ?? {}, { commitTime: '2026-11-23T13:31:02.123Z' }),
      'transactions[0].commitTime: must be UTC ISO-8601 with microseconds',
    ],
    ['impossible commitTime', (wire) => Object.assign(wire.transactions[0] ?? {}, { commitTime: '2026-02-30T13:31:02.123456Z' }), 'transactions[0].commitTime: must be UTC'],
    ['unknown op', (wire) => Object.assign(changeAt(wire, 0, 0), { op: 'upsert' }), 'transactions[0].changes[0].op: unknown op "upsert": expected insert, update, delete or truncate'],
    ['number value', (wire) => changeAt(wire, 0, 0).new?.splice(0, 1, 1), 'transactions[0].changes[0].new[0]: number 1 is not a value'],
    ['object value', (wire) => changeAt(wire, 0, 0).new?.splice(0, 1, {}), 'new[0]: expected a string, null, or 0 (unchanged TOAST), got an object'],
    ['NUL in text', (wire) => changeAt(wire, 0, 0).new?.splice(1, 1, 'a\u0000b'), 'transactions[0].changes[0].new[1]: text contains U+0000 (NUL)'],
    [
      'tuple length',
      (wire) => changeAt(wire, 0, 0).new?.pop(),
      'transactions[0].changes[0].new: tuple has 4 values but relation public.accounts has 5 columns',
    ],
    ['rel out of range', (wire) => Object.assign(changeAt(wire, 0, 0), { rel: 4 }), 'transactions[0].changes[0].rel: relation index 4 is out of range: the batch has 4 relations'],
    ['truncate rel out of range', (wire) => Object.assign(changeAt(wire, 1, 3), { rels: [0, 9] }), 'transactions[1].changes[3].rels[1]: relation index 9 is out of range'],
    ['truncate rel twice', (wire) => Object.assign(changeAt(wire, 1, 3), { rels: [1, 1] }), 'transactions[1].changes[3].rels[1]: relation index 1 is listed twice'],
    ['empty truncate', (wire) => Object.assign(changeAt(wire, 1, 3), { rels: [] }), 'rels: a truncate lists at least one relation'],
    ['TOAST in insert', (wire) => changeAt(wire, 0, 0).new?.splice(3, 1, 0), 'transactions[0].changes[0].new[3]: unchanged-TOAST marker (0) is only allowed in the new tuple of an update'],
    ['TOAST in old', (wire) => changeAt(wire, 0, 3).old?.splice(1, 1, 0), 'transactions[0].changes[3].old[1]: unchanged-TOAST marker (0) is only allowed'],
    ['TOAST in key', (wire) => changeAt(wire, 1, 0).key?.splice(0, 1, 0), 'transactions[1].changes[0].key[0]: unchanged-TOAST marker (0) is only allowed'],
    ['delete with both', (wire) => Object.assign(changeAt(wire, 1, 0), { old: ['2', null, null, null, null] }), 'transactions[1].changes[0]: a delete must have exactly one of key'],
    ['delete with neither', (wire) => delete changeAt(wire, 1, 0).key, 'transactions[1].changes[0]: a delete must have exactly one of key'],
    ['delete key on FULL', (wire) => Object.assign(changeAt(wire, 1, 1), { key: changeAt(wire, 1, 1).old, old: undefined }), 'transactions[1].changes[1].key: relation app.audit has REPLICA IDENTITY FULL'],
    ['FULL update without old', (wire) => delete changeAt(wire, 0, 3).old, 'transactions[0].changes[3].old: relation app.audit has REPLICA IDENTITY FULL: an UPDATE must carry the old row'],
    ['old on DEFAULT', (wire) => Object.assign(changeAt(wire, 0, 1), { old: ['1', 'a', '0', '', null] }), 'transactions[0].changes[1].old: relation public.accounts has REPLICA IDENTITY DEFAULT: only REPLICA IDENTITY FULL sends the old row'],
    ['update on NOTHING', (wire) => Object.assign(changeAt(wire, 0, 4), { op: 'update' }), 'transactions[0].changes[4].op: relation app.log_only has REPLICA IDENTITY NOTHING: PostgreSQL cannot publish its UPDATEs'],
    [
      'key tuple with a non-key value',
      (wire) => changeAt(wire, 1, 0).key?.splice(1, 1, 'ann'),
      'transactions[1].changes[0].key[1]: column "owner" is not part of the replica identity of public.accounts, so the key tuple must have null there',
    ],
    ['key tuple without the key', (wire) => changeAt(wire, 1, 0).key?.splice(0, 1, null), 'transactions[1].changes[0].key[0]: key column "id" of public.accounts must have a value'],
    [
      'update locating the row by an unchanged-TOAST key',
      (wire) => changeAt(wire, 0, 1).new?.splice(0, 1, 0),
      'transactions[0].changes[1].new[0]: key column "id" of public.accounts is an unchanged-TOAST marker',
    ],
    [
      'key flags missing for a DEFAULT relation',
      (wire) => wire.relations[0]?.columns.forEach((c) => (c.key = false)),
      'relation public.accounts has no key columns (REPLICA IDENTITY DEFAULT without a key)',
    ],
    ['duplicate column', (wire) => Object.assign(wire.relations[1]?.columns[1] ?? {}, { name: 'at' }), 'relations[1].columns[1].name: column "at" appears twice in app.audit'],
    ['unknown replica identity', (wire) => Object.assign(wire.relations[0] ?? {}, { replicaIdentity: 'partial' }), 'relations[0].replicaIdentity: unknown replicaIdentity "partial"'],
    ['empty transaction', (wire) => wire.transactions[1]?.changes.splice(0), 'transactions[1].changes: a transaction must have at least one change'],
    ['no transactions', (wire) => wire.transactions.splice(0), "transactions: a 'changes' batch needs at least one transaction"],
    [
      'heartbeat payload on a changes batch',
      (wire) => Object.assign(wire, { heartbeat: { sourceTime: '2026-11-23T13:31:02Z', walLsn: '0/1', sequences: [] } }),
      "heartbeat: a 'changes' batch must not have a heartbeat payload",
    ],
  ])('%s', (_name, edit, expected) => {
    expect(problemsAfter(edit)).toContain(expected);
  });

  it.each<[string, (batch: ChangeBatch) => void, string]>([
    ['lsnFirst after lsnLast', (b) => (b.lsnFirst = 0x400n), 'lsnFirst: lsnFirst 0/400 is after lsnLast 0/300'],
    ['lsnPrev after lsnFirst', (b) => (b.lsnPrev = 0x111n), 'lsnPrev: lsnPrev 0/111 is after lsnFirst 0/110'],
    ['first commit is not lsnFirst', (b) => (b.lsnFirst = 0x105n), 'transactions[0].commitLsn: commitLsn 0/110 of the first transaction must equal lsnFirst 0/105'],
    ['last end is not lsnLast', (b) => (b.lsnLast = 0x301n), 'transactions[1].endLsn: endLsn 0/300 of the last transaction must equal lsnLast 0/301'],
    ['endLsn not after commitLsn', (b) => Object.assign(b.transactions[0] ?? {}, { endLsn: 0x110n }), 'transactions[0].endLsn: endLsn 0/110 must be after commitLsn 0/110'],
    [
      'overlapping transactions',
      (b) => Object.assign(b.transactions[1] ?? {}, { commitLsn: 0x17fn }),
      "transactions[1].commitLsn: transactions out of order: commitLsn 0/17F is before the previous transaction's endLsn 0/180",
    ],
    [
      'heartbeat with transactions and no payload',
      (b) => (b.kind = 'heartbeat'),
      "heartbeat: a 'heartbeat' batch needs a heartbeat payload",
    ],
    [
      'marker that spans positions',
      (b) => Object.assign(b, { kind: 'marker', transactions: [], marker: { markerId: 'm1', reason: 'drain' } }),
      "lsnFirst: a 'marker' batch stands for one position: lsnFirst 0/110 must equal lsnLast 0/300",
    ],
    [
      'sequence value that is not an integer',
      (b) =>
        Object.assign(b, {
          kind: 'heartbeat',
          lsnFirst: 0x300n,
          transactions: [],
          heartbeat: { sourceTime: '2026-11-23T13:31:02.5Z', walLsn: 0x400n, sequences: [{ schema: 'public', name: 'ids', lastValue: '1e3', isCalled: true }] },
        }),
      'heartbeat.sequences[0].lastValue: must be an integer as decimal text',
    ],
    [
      'unknown marker reason',
      (b) => Object.assign(b, { kind: 'marker', lsnFirst: 0x300n, transactions: [], marker: { markerId: 'm1', reason: 'restart' } }),
      'marker.reason: unknown marker reason "restart": expected takeover, drain or failback',
    ],
    [
      'snapshot row of the wrong length',
      (b) =>
        Object.assign(b, {
          kind: 'snapshot',
          lsnFirst: 0x300n,
          transactions: [],
          snapshot: { snapshotId: 's', relation: 2, chunk: 0, rows: [['a', null, 'extra']], lastChunk: false, consistentLsn: 0x300n },
        }),
      'snapshot.rows[0]: tuple has 3 values but relation app.moods has 2 columns',
    ],
  ])('%s', (_name, edit, expected) => {
    expect(problemsAfterInMemory(edit)).toContain(expected);
  });

  it('lists the first five problems and counts the rest', () => {
    const message = problemsAfter((wire) => {
      for (const change of wire.transactions[0]?.changes ?? []) if ('new' in change) change.new.push('x');
      for (const change of wire.transactions[1]?.changes ?? []) if ('new' in change) change.new.push('x');
      wire.relations.push({ ...(wire.relations[0] as RelationDescriptor), columns: [column('a', 'text', 25, false), column('a', 'text', 25, false)] });
    });
    expect(message).toMatch(/^invalid ChangeBatch \(7 problems\): relations\[4\]\.columns\[1\]\.name: .*; and 2 more$/);
    expect(message.split('; ').length).toBe(6);
  });

  it('rejects input that is not an object', () => {
    expect(() => parseChangeBatch(null)).toThrow('invalid ChangeBatch (1 problem): (top level): Invalid input: expected object, received null');
    expect(() => parseChangeBatch('{}')).toThrow('(top level): Invalid input: expected object, received string');
  });

  it('says where the problem is, in a readable path', () => {
    expect(formatIssuePath(['transactions', 0, 'changes', 3, 'new'])).toBe('transactions[0].changes[3].new');
    expect(formatIssuePath([])).toBe('(top level)');
    expect(problemsAfter((wire) => Object.assign(wire, { relations: 'none' }))).toBe(
      'invalid ChangeBatch (1 problem): relations: Invalid input: expected array, received string',
    );
  });
});

describe('commit times', () => {
  it('formats microseconds exactly', () => {
    expect(formatIsoMicros(1_795_440_662_123_456n)).toBe('2026-11-23T13:31:02.123456Z');
    expect(formatIsoMicros(PG_EPOCH_UNIX_MICROS)).toBe('2000-01-01T00:00:00.000000Z');
    expect(formatIsoMicros(-1n)).toBe('1969-12-31T23:59:59.999999Z');
  });

  it('every formatted instant is accepted and keeps its microseconds', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 253_402_300_799_999_999n }), (micros) => {
        const text = formatIsoMicros(micros);
        const batch = validBatch();
        (batch.transactions[0] as Transaction).commitTime = text;
        expect(parseChangeBatch(toWireJson(batch)).transactions[0]?.commitTime).toBe(text);
        expect(BigInt(Date.parse(text)) * 1000n + BigInt(text.slice(23, 26))).toBe(micros);
      }),
    );
  });
});

// ---------------------------------------------------------------------------
// Properties over generated batches on the fixture relations. (The codec tests
// generate relations too; here the point is the rules.)

const value = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 20 }).map((s) => s.replaceAll('\u0000', '')),
  fc.bigInt({ min: -(10n ** 40n), max: 10n ** 40n }).map(String),
  fc.constant(''),
  fc.constant(null),
);
const keyText = fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }).map((s) => s.replaceAll('\u0000', '') || 'k');
const maybeToast: fc.Arbitrary<TupleValue> = fc.oneof(value, fc.constant(UNCHANGED_TOAST));

const fixtureChange: fc.Arbitrary<Change> = fc.oneof(
  fc.tuple(keyText, value, value, value, value).map((row): Change => ({ op: 'insert', rel: 0, new: row })),
  fc.tuple(keyText, value, value, maybeToast, value).map((row): Change => ({ op: 'update', rel: 0, new: row })),
  fc.tuple(keyText, keyText).map(([id, oldId]): Change => ({ op: 'update', rel: 0, new: [id, null, null, UNCHANGED_TOAST, null], key: [oldId, null, null, null, null] })),
  keyText.map((id): Change => ({ op: 'delete', rel: 0, key: [id, null, null, null, null] })),
  fc.tuple(maybeToast, maybeToast, value, value).map(([a, b, c, d]): Change => ({ op: 'update', rel: 1, new: [a, b], old: [c, d] })),
  fc.tuple(value, value).map((old): Change => ({ op: 'delete', rel: 1, old })),
  fc.tuple(keyText, value).map((row): Change => ({ op: 'update', rel: 2, new: row })),
  fc.constant<Change>({ op: 'truncate', rels: [3, 0], cascade: false, restartIdentity: true }),
);

const fixtureBatch: fc.Arbitrary<ChangeBatch> = fc
  .record({
    start: fc.bigInt({ min: 0n, max: 1n << 62n }),
    txs: fc.array(fc.record({ gap: fc.bigInt({ min: 0n, max: 4096n }), size: fc.bigInt({ min: 1n, max: 4096n }), changes: fc.array(fixtureChange, { minLength: 1, maxLength: 6 }) }), {
      minLength: 1,
      maxLength: 5,
    }),
  })
  .map(({ start, txs }) => {
    let at = start;
    const transactions = txs.map(({ gap, size, changes }, i) => {
      const commitLsn = at + gap;
      at = commitLsn + size;
      return tx(i, commitLsn, at, changes);
    });
    return { ...validBatch(), lsnPrev: start, lsnFirst: transactions[0]?.commitLsn ?? start, lsnLast: at, transactions };
  });

describe('properties', () => {
  it('generated batches survive JSON text exactly', () => {
    fc.assert(
      fc.property(fixtureBatch, (batch) => {
        expect(parseChangeBatch(JSON.parse(JSON.stringify(toWireJson(batch))))).toStrictEqual(batch);
      }),
      { numRuns: 300 },
    );
  });

  it('a tuple one value short is always reported at its path', () => {
    fc.assert(
      fc.property(fixtureBatch, fc.nat(), fc.nat(), (batch, t, c) => {
        const txIndex = t % batch.transactions.length;
        const changes = batch.transactions[txIndex]?.changes ?? [];
        const changeIndex = c % changes.length;
        const change = changes[changeIndex];
        if (change === undefined || change.op === 'truncate' || change.op === 'delete') return;
        change.new.pop();
        const plural = change.new.length === 1 ? '' : 's';
        expect(() => parseChangeBatch(toWireJson(batch))).toThrow(`transactions[${txIndex}].changes[${changeIndex}].new: tuple has ${change.new.length} value${plural} but`);
      }),
    );
  });

  it('swapping two transactions is always rejected', () => {
    fc.assert(
      fc.property(fixtureBatch.filter((b) => b.transactions.length >= 2), fc.nat(), (batch, i) => {
        const a = i % (batch.transactions.length - 1);
        const txs = batch.transactions;
        [txs[a], txs[a + 1]] = [txs[a + 1] as Transaction, txs[a] as Transaction];
        expect(() => parseChangeBatch(toWireJson(batch))).toThrow(ValidationError);
      }),
    );
  });

  it('any number other than 0 as a value is rejected', () => {
    fc.assert(
      fc.property(fc.double().filter((n) => n !== 0), (n) => {
        const wire = toWireJson(validBatch());
        changeAt(wire, 0, 0).new?.splice(1, 1, n);
        expect(() => parseChangeBatch(wire)).toThrow('transactions[0].changes[0].new[1]: number');
      }),
    );
  });
});
