// Pure tests of the stranded-tail report: the SQL rendering
// (agent/stranded-tail-sql.ts) and the pure parts of agent/stranded-tail.ts
// (merging the two sources, coverage, the JSON report round trip).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { UNCHANGED_TOAST, type ChangeBatch, type RelationDescriptor } from '../../core/change-batch.ts';
import { ValidationError } from '../../core/errors.ts';
import { commentSafe, planStrandedTailSql, renderStrandedTailSql } from '../../agent/stranded-tail-sql.ts';
import {
  assembleTail,
  encodeStrandedTailReport,
  parseStrandedTailReport,
  strandedTailKey,
  strandedTailTotals,
  uncoveredRanges,
  type StaleBatchRow,
  type StrandedTail,
  type StrandedTransaction,
} from '../../agent/stranded-tail.ts';

const col = (name: string, type: string, key = false) => ({ name, type, typeOid: 25, typmod: -1, key });

/** Quotes, a space, unicode, mixed case and a line break in names. */
const hostile: RelationDescriptor = {
  oid: 16384,
  schema: 'Sch"ema ü',
  name: "Tab'le\nDROP TABLE x; --",
  replicaIdentity: 'default',
  columns: [col('Id', 'integer', true), col("na me'", 'text'), col('found', 'numeric(10,2)'), col('big', 'text')],
};
const full: RelationDescriptor = {
  oid: 16390,
  schema: 'public',
  name: 'events',
  replicaIdentity: 'full',
  columns: [col('at', 'timestamp with time zone', true), col('doc', 'json', true), col('n', 'integer', true)],
};
const moods: RelationDescriptor = {
  oid: 16400,
  schema: 'public',
  name: 'moods',
  replicaIdentity: 'default',
  columns: [col('id', 'bigint', true), col('mood', 'public.mood'), col('tags', 'text[]')],
};
const ddlLog: RelationDescriptor = {
  oid: 16500,
  schema: 'lifeboat',
  name: 'ddl_log',
  replicaIdentity: 'default',
  columns: [col('id', 'bigint', true), col('ddl', 'text'), col('search_path', 'text'), col('command_tag', 'text'), col('object_identity', 'text')],
};

const L = (n: number) => BigInt(0x1000000 + n * 0x100);

function tx(n: number, changes: StrandedTransaction['changes'], foundIn: StrandedTransaction['foundIn'] = ['local-slot']): StrandedTransaction {
  return { xid: 700 + n, commitLsn: L(n), endLsn: L(n) + 0x30n, commitTime: `2026-11-23T13:31:0${n % 10}.123456Z`, foundIn, changes };
}

function tailOf(relations: RelationDescriptor[], transactions: StrandedTransaction[], over: Partial<StrandedTail> = {}): StrandedTail {
  const { totals, rows } = strandedTailTotals(relations, transactions);
  return {
    stream: 'main',
    slot: 'lifeboat_main',
    publication: 'lifeboat',
    collectedAt: '2026-11-23T14:00:00.000Z',
    watermark: L(0),
    slotConfirmedFlushLsn: L(0),
    targetFencingEpoch: 4,
    complete: true,
    relations,
    transactions,
    totals,
    rows,
    coverage: {
      onlyInStaleBatches: transactions.filter((t) => t.foundIn.length === 1 && t.foundIn[0] === 'stale-batches').length,
      onlyInSlot: transactions.filter((t) => t.foundIn.length === 1 && t.foundIn[0] === 'local-slot').length,
      inBoth: transactions.filter((t) => t.foundIn.length === 2).length,
      staleBatches: 0,
      staleBatchesWithoutTransactions: 0,
      unreadableStaleBatches: [],
      alreadyApplied: 0,
      uncovered: [],
      differingCopies: [],
    },
    warnings: [],
    ...over,
  };
}

/** The lines of a script that are not comments or blank. */
const sqlLines = (script: string) => script.split('\n').filter((l) => l !== '' && !l.startsWith('--'));

describe('renderStrandedTailSql', () => {
  it('writes inserts with every identifier quoted and every value cast from escaped text', () => {
    const sql = renderStrandedTailSql(
      tailOf([hostile], [tx(1, [{ op: 'insert', rel: 0, new: ['1', "O'Brien", null, 'back\\slash'] }])]),
    );
    expect(sql).toContain(
      `INSERT INTO "Sch""ema ü"."Tab'le\nDROP TABLE x; --" ("Id", "na me'", "found", "big") OVERRIDING SYSTEM VALUE ` +
        `VALUES ('1'::integer, 'O''Brien'::text, NULL,  E'back\\\\slash'::text);`,
    );
  });

  it('names each transaction, wraps it in BEGIN/COMMIT and says the file was not applied', () => {
    const sql = renderStrandedTailSql(
      tailOf(
        [moods],
        [
          tx(1, [{ op: 'insert', rel: 0, new: ['1', 'happy', '{a,"b c"}'] }], ['local-slot', 'stale-batches']),
          tx(2, [{ op: 'insert', rel: 0, new: ['2', 'sad', null] }], ['stale-batches']),
        ],
      ),
    );
    expect(sql).toMatch(/^-- Lifeboat stranded-tail report, stream main\n--\n-- NOT APPLIED/);
    expect(sql).toContain('-- Transaction 1 of 2: xid 701, commit LSN 0/1000100 (end 0/1000130), committed 2026-11-23T13:31:01.123456Z, found in the local slot and lifeboat.stale_batches\nBEGIN;\n');
    expect(sql).toContain('found in lifeboat.stale_batches\nBEGIN;\n');
    expect(sql).toContain(`VALUES ('1'::bigint, 'happy'::public.mood, '{a,"b c"}'::text[]);\nCOMMIT;`);
    expect(sql).toContain('--   "public"."moods": 2 inserts, 0 updates, 0 deletes, 0 truncates');
    expect(sql).toContain('-- Found only in lifeboat.stale_batches: 1; only in the local slot: 0; in both: 1.');
    // Commit order: transaction 1 before transaction 2.
    expect(sql.indexOf('commit LSN 0/1000100')).toBeLessThan(sql.indexOf('commit LSN 0/1000200'));
    expect(sqlLines(sql).filter((l) => l === 'BEGIN;')).toHaveLength(2);
    expect(sqlLines(sql).filter((l) => l === 'COMMIT;')).toHaveLength(2);
  });

  it('updates by key, leaving unchanged TOAST and an unchanged key out of SET, and checks that one row changed', () => {
    const [plan] = planStrandedTailSql(tailOf([hostile], [tx(1, [{ op: 'update', rel: 0, new: ['7', 'new name', '1.50', UNCHANGED_TOAST] }])]));
    const statement = plan!.statements[0]!;
    expect(statement.kind).toBe('row');
    expect(statement.sql).toContain(`UPDATE "Sch""ema ü"."Tab'le\nDROP TABLE x; --" SET "na me'" = 'new name'::text, "found" = '1.50'::numeric(10,2) WHERE "Id" = '7'::integer;`);
    expect(statement.sql).not.toContain('"big"');
    expect(statement.sql).not.toContain('SET "Id"');
    // A column called "found" stays a column inside the PL/pgSQL block.
    expect(statement.sql).toMatch(/^DO \$lifeboat\$ #variable_conflict use_column\n/);
    expect(statement.sql).toContain('GET DIAGNOSTICS changed = ROW_COUNT;');
    expect(statement.sql).toContain("IF changed <> 1 THEN RAISE EXCEPTION USING MESSAGE = 'stranded tail: transaction xid 701 (commit LSN 0/1000100): the UPDATE of ");
  });

  it('locates a row by its old key when the key changed, and sets the new key', () => {
    const [plan] = planStrandedTailSql(tailOf([hostile], [tx(1, [{ op: 'update', rel: 0, key: ['7', null, null, null], new: ['8', 'n', null, UNCHANGED_TOAST] }])]));
    expect(plan!.statements[0]!.sql).toContain(`SET "Id" = '8'::integer, "na me'" = 'n'::text, "found" = NULL WHERE "Id" = '7'::integer;`);
  });

  it('finds REPLICA IDENTITY FULL rows by every old column, one row by ctid, json compared as text', () => {
    const old = ['2026-11-23 13:31:02.123456+00', '{"a": 1}', null];
    const [plan] = planStrandedTailSql(
      tailOf(
        [full],
        [
          tx(1, [
            { op: 'update', rel: 0, old, new: ['2026-11-23 13:31:02.123456+00', '{"a": 2}', null] },
            { op: 'update', rel: 0, old, new: [...old] },
            { op: 'delete', rel: 0, old },
          ]),
        ],
      ),
    );
    const [update, noop, del] = plan!.statements;
    const where =
      `WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM "public"."events" WHERE "at" IS NOT DISTINCT FROM '2026-11-23 13:31:02.123456+00'::timestamp with time zone ` +
      `AND "doc"::text IS NOT DISTINCT FROM ('{"a": 1}'::json)::text AND "n" IS NULL LIMIT 1)`;
    expect(update!.sql).toContain(`UPDATE "public"."events" SET "doc" = '{"a": 2}'::json ${where};`);
    expect(noop).toMatchObject({ kind: 'note', sql: '' });
    expect(noop!.comment.join(' ')).toContain('changes no value');
    expect(del!.sql).toContain(`DELETE FROM "public"."events" ${where};`);
    expect(del!.sql).toContain('the DELETE of public.events changed ');
  });

  it('deletes by key; picks another dollar-quote tag when a value contains the usual one', () => {
    const [plan] = planStrandedTailSql(
      tailOf([moods], [tx(1, [{ op: 'delete', rel: 0, key: ['1', null, null] }, { op: 'delete', rel: 0, key: ['$lifeboat$', null, null] }])]),
    );
    expect(plan!.statements[0]!.sql).toMatch(/^DO \$lifeboat\$[\s\S]*DELETE FROM "public"\."moods" WHERE "id" = '1'::bigint;[\s\S]*END \$lifeboat\$$/);
    expect(plan!.statements[1]!.sql).toMatch(/^DO \$lifeboat_1\$[\s\S]*'\$lifeboat\$'::bigint[\s\S]*END \$lifeboat_1\$$/);
  });

  it('writes a TRUNCATE commented out, with a warning', () => {
    const tail = tailOf([moods, hostile], [tx(1, [{ op: 'truncate', rels: [0, 1], cascade: true, restartIdentity: true }])]);
    const sql = renderStrandedTailSql(tail);
    expect(sql).toContain(`-- TRUNCATE ONLY "public"."moods", "Sch""ema ü"."Tab'le\\x0aDROP TABLE x; --" RESTART IDENTITY CASCADE;`);
    expect(sql).toContain('-- WARNING: the local side ran this TRUNCATE of');
    expect(sqlLines(sql).some((l) => l.includes('TRUNCATE'))).toBe(false);
    expect(planStrandedTailSql(tail)[0]!.statements[0]!.kind).toBe('truncate');
  });

  it('writes a captured schema change commented out, line by line, even with \\r line breaks', () => {
    const ddl = 'ALTER TABLE public.moods ADD COLUMN x int;\r\nINSERT INTO public.moods VALUES (9);\rCREATE INDEX CONCURRENTLY i ON public.moods (x)';
    const tail = tailOf([ddlLog], [tx(1, [{ op: 'insert', rel: 0, new: ['12', ddl, '"$user", public', 'ALTER TABLE', 'public.moods'] }])]);
    const sql = renderStrandedTailSql(tail);
    expect(sql).toContain('-- ALTER TABLE public.moods ADD COLUMN x int;');
    expect(sql).toContain('-- CREATE INDEX i ON public.moods (x);');
    expect(sql).toContain('lifeboat.ddl_log id 12, ALTER TABLE public.moods');
    expect(sql).toContain('left out (a data change: its rows arrive through replication): INSERT INTO public.moods VALUES (9)');
    expect(sqlLines(sql)).toEqual(["SET client_encoding = 'UTF8';", 'BEGIN;', 'COMMIT;']);
    const kinds = planStrandedTailSql(tail)[0]!.statements.map((s) => s.kind);
    expect(kinds).toEqual(['ddl', 'ddl']);
  });

  it('keeps every line break of a name or warning inside comments (property)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.string({ unit: 'binary' }), (name, warning) => {
        const clean = (s: string) => s.replace(/\u0000/g, '');
        const rel: RelationDescriptor = { ...moods, schema: clean(name) || 's', name: clean(name) || 't' };
        const sql = renderStrandedTailSql(
          tailOf([rel], [tx(1, [{ op: 'truncate', rels: [0], cascade: false, restartIdentity: false }])], { warnings: [warning], complete: false }),
        );
        // The only SQL outside comments: the encoding, BEGIN and COMMIT (the TRUNCATE is commented out).
        expect(sqlLines(sql)).toEqual(["SET client_encoding = 'UTF8';", 'BEGIN;', 'COMMIT;']);
      }),
      { numRuns: 200 },
    );
  });

  it('says so when nothing is stranded, and when the report may be incomplete', () => {
    const none = renderStrandedTailSql(tailOf([], []));
    expect(none).toContain('-- No stranded transactions: every local transaction up to the watermark 0/1000000 reached the cloud');
    expect(none).toContain('-- NOT APPLIED');
    expect(sqlLines(none)).toEqual(["SET client_encoding = 'UTF8';"]);
    const incomplete = renderStrandedTailSql(tailOf([], [], { complete: false, warnings: ['Positions (0/1, 0/2] are covered by nothing.'] }));
    expect(incomplete).toContain('-- MAY BE INCOMPLETE: see the warnings.');
    expect(incomplete).toContain('-- WARNING: Positions (0/1, 0/2] are covered by nothing.');
  });

  it('refuses a type name that is not format_type() output', () => {
    const bad: RelationDescriptor = { ...moods, columns: [col('id', 'bigint', true), col('mood', 'text); DROP TABLE x; --'), col('tags', 'text[]')] };
    expect(() => renderStrandedTailSql(tailOf([bad], [tx(1, [{ op: 'insert', rel: 0, new: ['1', 'x', null] }])]))).toThrow(ValidationError);
  });

  it('escapes control characters for comments', () => {
    expect(commentSafe('a\nb\rc\u2028d')).toBe('a\\x0ab\\x0dc\\x2028d');
  });
});

// ---------------------------------------------------------------------------
// The pure parts of agent/stranded-tail.ts

function batch(lsnPrev: bigint, transactions: ChangeBatch['transactions'], relations: RelationDescriptor[] = [moods], kind: ChangeBatch['kind'] = 'changes'): ChangeBatch {
  const last = transactions[transactions.length - 1];
  const lsnLast = last?.endLsn ?? lsnPrev + 0x10n;
  return {
    v: 1,
    kind,
    stream: 'main',
    epoch: 3,
    seq: 0,
    lsnPrev,
    lsnFirst: transactions[0]?.commitLsn ?? lsnLast,
    lsnLast,
    createdAt: '2026-11-23T13:31:02Z',
    relations,
    transactions,
    ...(kind === 'heartbeat' && { heartbeat: { sourceTime: '2026-11-23T13:31:02Z', walLsn: lsnLast, sequences: [] } }),
  };
}

const plainTx = (n: number, id = String(n)) => ({
  xid: 700 + n,
  commitLsn: L(n),
  endLsn: L(n) + 0x30n,
  commitTime: '2026-11-23T13:31:02.123456Z',
  changes: [{ op: 'insert' as const, rel: 0, new: [id, 'happy', null] }],
});
const staleRow = (id: number, b: ChangeBatch): StaleBatchRow => ({ id: String(id), lsnPrev: b.lsnPrev, lsnLast: b.lsnLast, batch: b, problem: undefined });

const inputs = {
  stream: 'main',
  slot: 'lifeboat_main',
  publication: 'lifeboat',
  collectedAt: '2026-11-23T14:00:00.000Z',
  targetFencingEpoch: 4,
};

describe('assembleTail', () => {
  it('keeps each transaction after W once, counts where it was, and finds (W, C] covered', () => {
    const w = plainTx(1).endLsn; // T1 applied
    const c = plainTx(3).endLsn; // the slot confirmed T2 and T3
    const stale = [staleRow(1, batch(w, [plainTx(2), plainTx(3)])), staleRow(2, batch(plainTx(3).endLsn, [plainTx(4)]))];
    const slot = [batch(c, [plainTx(4), plainTx(5)])];
    const tail = assembleTail({ ...inputs, watermark: w, slotConfirmedFlushLsn: c, slotBatches: slot, stale });
    expect(tail.transactions.map((t) => [t.xid, t.foundIn])).toEqual([
      [702, ['stale-batches']],
      [703, ['stale-batches']],
      [704, ['local-slot', 'stale-batches']],
      [705, ['local-slot']],
    ]);
    expect(tail.coverage).toMatchObject({ onlyInStaleBatches: 2, onlyInSlot: 1, inBoth: 1, uncovered: [], differingCopies: [], staleBatches: 2 });
    expect(tail.complete).toBe(true);
    expect(tail.warnings).toEqual([]);
    expect(tail.relations).toEqual([moods]);
    expect(tail.totals).toEqual([{ schema: 'public', name: 'moods', inserts: 4, updates: 0, deletes: 0, truncates: 0 }]);
    expect(tail.rows).toBe(4);
  });

  it('leaves out transactions at or below W and counts them as already applied', () => {
    const w = plainTx(2).endLsn;
    const tail = assembleTail({
      ...inputs,
      watermark: w,
      slotConfirmedFlushLsn: plainTx(0).endLsn,
      slotBatches: [batch(plainTx(0).endLsn, [plainTx(1), plainTx(2), plainTx(3)])],
      stale: [],
    });
    expect(tail.transactions.map((t) => t.xid)).toEqual([703]);
    expect(tail.transactions.every((t) => t.commitLsn > w)).toBe(true);
    expect(tail.coverage.alreadyApplied).toBe(2);
    expect(tail.complete).toBe(true);
  });

  it('warns when part of (W, C] is in neither source, with the range, and uses heartbeats as coverage', () => {
    const w = plainTx(1).endLsn;
    const c = plainTx(5).endLsn;
    // T2 and the heartbeat after it arrived; T3..T4 are still in flight; T5 arrived.
    const stale = [
      staleRow(1, batch(w, [plainTx(2)])),
      staleRow(2, batch(plainTx(2).endLsn, [], [], 'heartbeat')),
      staleRow(3, batch(plainTx(4).endLsn, [plainTx(5)])),
    ];
    const tail = assembleTail({ ...inputs, watermark: w, slotConfirmedFlushLsn: c, slotBatches: [], stale });
    const hbEnd = plainTx(2).endLsn + 0x10n;
    expect(tail.coverage.uncovered).toEqual([{ after: hbEnd, upTo: plainTx(4).endLsn }]);
    expect(tail.coverage.staleBatchesWithoutTransactions).toBe(1);
    expect(tail.complete).toBe(false);
    expect(tail.warnings[0]).toContain('may still be in the Pub/Sub backlog');
    expect(tail.warnings[0]).toContain('collect it again');
  });

  it('names copies that differ, keeps the slot copy, and reports unreadable stale batches', () => {
    const w = plainTx(1).endLsn;
    const stale = [
      staleRow(1, batch(w, [plainTx(2, 'other')])),
      { id: '9', lsnPrev: plainTx(2).endLsn, lsnLast: plainTx(3).endLsn, batch: undefined, problem: 'invalid ChangeBatch' },
    ];
    const tail = assembleTail({ ...inputs, watermark: w, slotConfirmedFlushLsn: w, slotBatches: [batch(w, [plainTx(2), plainTx(3)])], stale });
    expect(tail.coverage.differingCopies).toEqual([L(2)]);
    expect(tail.transactions[0]!.changes[0]).toMatchObject({ new: ['2', 'happy', null] });
    expect(tail.coverage.unreadableStaleBatches).toEqual([{ id: '9', lsnPrev: plainTx(2).endLsn, lsnLast: plainTx(3).endLsn, problem: 'invalid ChangeBatch' }]);
    // C = W: the slot covers everything, so the unreadable batch leaves no gap.
    expect(tail.complete).toBe(true);
    expect(tail.warnings.join(' ')).toContain('row 9');
    expect(tail.warnings.join(' ')).toContain('differ between their copies');
  });

  it('computes uncovered ranges as (after, upTo] intervals', () => {
    const r = (a: number, b: number) => ({ after: BigInt(a), upTo: BigInt(b) });
    expect(uncoveredRanges(10n, 50n, [])).toEqual([r(10, 50)]);
    expect(uncoveredRanges(10n, 50n, [r(0, 20), r(20, 60)])).toEqual([]);
    expect(uncoveredRanges(10n, 50n, [r(30, 40), r(15, 20)])).toEqual([r(10, 15), r(20, 30), r(40, 50)]);
    expect(uncoveredRanges(10n, 50n, [r(60, 70)])).toEqual([r(10, 50)]);
  });
});

describe('the JSON report', () => {
  it('parses back to the same tail, unchanged TOAST and all', () => {
    const tail = tailOf(
      [hostile, full],
      [
        tx(1, [{ op: 'update', rel: 0, new: ['7', 'n', null, UNCHANGED_TOAST] }], ['local-slot', 'stale-batches']),
        tx(2, [{ op: 'delete', rel: 1, old: ['2026-11-23 13:31:02+00', '{}', null] }, { op: 'truncate', rels: [0, 1], cascade: false, restartIdentity: true }], ['stale-batches']),
      ],
      { complete: false, coverage: { ...tailOf([], []).coverage, onlyInStaleBatches: 1, inBoth: 1, uncovered: [{ after: 1n, upTo: 2n }], differingCopies: [L(1)] }, warnings: ['w'] },
    );
    const text = encodeStrandedTailReport(tail, { epoch: 5, savedAt: '2026-11-23T14:00:01.000Z' });
    const back = parseStrandedTailReport(JSON.parse(text));
    expect(back.epoch).toBe(5);
    expect(back.savedAt).toBe('2026-11-23T14:00:01.000Z');
    expect(back.tail).toEqual(tail);
    expect(back.tail.transactions[0]!.changes[0]).toMatchObject({ new: ['7', 'n', null, UNCHANGED_TOAST] });
    // Readable: the summary first, one transaction per line.
    expect(text.split('\n')[3]).toContain('"summary": "2 local transaction(s), 2 row(s), committed after the cloud\'s watermark 0/1000000 never reached the cloud. NOT applied anywhere. MAY BE INCOMPLETE');
    expect(text.split('\n').filter((l) => l.startsWith('    {"xid":'))).toHaveLength(2);
  });

  it('parses back a report without transactions', () => {
    const tail = tailOf([], []);
    const back = parseStrandedTailReport(JSON.parse(encodeStrandedTailReport(tail, { epoch: 0, savedAt: '2026-11-23T14:00:01.000Z' })));
    expect(back.tail).toEqual(tail);
  });

  it('refuses a report whose totals or transactions do not hold up', () => {
    const tail = tailOf([moods], [tx(1, [{ op: 'insert', rel: 0, new: ['1', 'x', null] }])]);
    const json = JSON.parse(encodeStrandedTailReport(tail, { epoch: 1, savedAt: '2026-11-23T14:00:01.000Z' }));
    expect(() => parseStrandedTailReport({ ...json, rows: 2 })).toThrow(/rows is 2 but the transactions change 1/);
    const broken = structuredClone(json);
    broken.transactions[0].changes[0].new = ['1'];
    expect(() => parseStrandedTailReport(broken)).toThrow(/tuple has 1 value but relation public.moods has 3 columns/);
    expect(() => parseStrandedTailReport({ ...json, format: 'other' })).toThrow(ValidationError);
    expect(() => parseStrandedTailReport({ ...json, watermark: '0/2000000' })).toThrow(/ends at or before the watermark/);
  });

  it('names objects without characters that object keys refuse', () => {
    expect(strandedTailKey('reports/', 'main', 7, new Date('2026-11-23T13:31:02.123Z'))).toBe('reports/main/stranded-tail-epoch-7-20261123T133102.123Z');
  });
});
