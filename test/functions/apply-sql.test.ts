import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type Change, type RelationDescriptor, UNCHANGED_TOAST } from '../../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError } from '../../core/errors.ts';
import { classifyApplyError } from '../../functions/apply-engine.ts';
import {
  buildCreateTable,
  buildDelete,
  buildInsert,
  buildTruncate,
  buildUpdate,
  groupChanges,
  isSafeTypeName,
  planDdlReplay,
  splitStatements,
  textArrayLiteral,
} from '../../functions/apply-sql.ts';

const col = (name: string, type: string, key = false) => ({ name, type, typeOid: 25, typmod: -1, key });

const accounts: RelationDescriptor = {
  oid: 1,
  schema: 'public',
  name: 'Accounts',
  replicaIdentity: 'default',
  columns: [col('id', 'integer', true), col('balance', 'numeric(40,10)'), col('note', 'text')],
};
const log: RelationDescriptor = {
  oid: 2,
  schema: 'app',
  name: 'log',
  replicaIdentity: 'full',
  columns: [col('at', 'timestamp with time zone'), col('doc', 'json'), col('msg', 'text')],
};
const ddlLog: RelationDescriptor = {
  oid: 3,
  schema: 'lifeboat',
  name: 'ddl_log',
  replicaIdentity: 'default',
  columns: [col('id', 'bigint', true), col('ddl', 'text')],
};
const relations = [accounts, log, ddlLog];

describe('type names', () => {
  it('accepts what format_type prints', () => {
    for (const t of [
      'integer',
      'numeric(40,10)',
      'character varying(20)',
      'timestamp with time zone',
      'timestamp(3) without time zone',
      'interval day to second(3)',
      'integer[]',
      'text[][]',
      'public.mood',
      'public.mood[]',
      '"Mood"',
      'app."My ""odd"" type"[]',
      'double precision',
      'bit varying(5)',
    ]) {
      expect(isSafeTypeName(t), t).toBe(true);
    }
  });

  it('refuses anything that could carry SQL', () => {
    for (const t of ['int); DROP TABLE x; --', 'int --', 'text; select 1', '"unterminated', 'a.b.c', "text'", 'int /* x */', '']) {
      expect(isSafeTypeName(t), t).toBe(false);
    }
    expect(() => buildInsert({ ...accounts, columns: [col('id', 'int; DROP TABLE t', true)] }, [['1']])).toThrow(ValidationError);
  });
});

describe('text[] literals', () => {
  it('quotes every element and escapes only quotes and backslashes', () => {
    expect(textArrayLiteral(['a', null, '', 'NULL', 'x,y', '{}', 'say "hi"', 'back\\slash', ' sp '])).toBe(
      '{"a",NULL,"","NULL","x,y","{}","say \\"hi\\"","back\\\\slash"," sp "}',
    );
  });
});

describe('statements', () => {
  it('builds an INSERT that casts unnested text with quoted identifiers', () => {
    const s = buildInsert(accounts, [
      ['1', '12.5', null],
      ['2', '0', "it's"],
    ]);
    expect(s.text).toBe(
      'INSERT INTO "public"."Accounts" ("id", "balance", "note") SELECT u.v0::integer, u.v1::numeric(40,10), u.v2::text ' +
        'FROM unnest($1::text[], $2::text[], $3::text[]) AS u(v0, v1, v2)',
    );
    expect(s.values).toEqual(['{"1","2"}', '{"12.5","0"}', `{NULL,"it's"}`]);
  });

  it('builds an UPDATE by key, leaving unchanged TOAST out of SET', () => {
    const [group] = groupChanges([{ op: 'update', rel: 0, new: ['7', '1.5', UNCHANGED_TOAST] }], relations);
    expect(group).toMatchObject({ kind: 'update', identity: 'key', setColumns: [1] });
    const s = buildUpdate(accounts, group as Extract<typeof group, { kind: 'update' }>);
    expect(s.text).toBe(
      'UPDATE "public"."Accounts" AS t SET "balance" = u.n1::numeric(40,10) FROM unnest($1::text[], $2::text[]) AS u(k0, n1) WHERE t."id" = u.k0::integer',
    );
    expect(s.values).toEqual(['{"7"}', '{"1.5"}']);
  });

  it('a PK-changing update sets the key and locates the row by the old key', () => {
    const [group] = groupChanges([{ op: 'update', rel: 0, key: ['7', null, null], new: ['8', '1', 'x'] }], relations);
    const s = buildUpdate(accounts, group as Extract<typeof group, { kind: 'update' }>);
    expect(s.text).toContain('SET "id" = u.n0::integer, "balance" = u.n1::numeric(40,10), "note" = u.n2::text');
    expect(s.values[0]).toEqual('{"7"}');
  });

  it('FULL identity matches every old column, as text where there is no equality operator, one ctid per old row', () => {
    const [group] = groupChanges([{ op: 'delete', rel: 1, old: ['2026-01-01 00:00:00+00', '{"a":1}', null] }], relations);
    const s = buildDelete(log, group as Extract<typeof group, { kind: 'delete' }>);
    expect(s.text).toContain('s."doc"::text IS NOT DISTINCT FROM (u.o1::json)::text');
    expect(s.text).toContain('s."at" IS NOT DISTINCT FROM u.o0::timestamp with time zone');
    expect(s.text).toContain('DISTINCT ON (u.ord)');
    expect(s.text).toContain('WHERE t.ctid = m.tid');
  });

  it('TRUNCATE keeps the source flags; CREATE TABLE keys the key columns', () => {
    expect(buildTruncate([accounts, log], { cascade: true, restartIdentity: true })).toBe(
      'TRUNCATE ONLY "public"."Accounts", "app"."log" RESTART IDENTITY CASCADE',
    );
    expect(buildCreateTable(accounts)).toEqual([
      'CREATE SCHEMA IF NOT EXISTS "public"',
      'CREATE TABLE IF NOT EXISTS "public"."Accounts" ("id" integer, "balance" numeric(40,10), "note" text, PRIMARY KEY ("id"))',
    ]);
    expect(buildCreateTable(log)[1]).not.toContain('PRIMARY KEY');
  });
});

describe('grouping', () => {
  const ins = (id: string): Change => ({ op: 'insert', rel: 0, new: [id, '0', null] });
  const upd = (id: string, balance: string): Change => ({ op: 'update', rel: 0, new: [id, balance, 'n'] });

  it('groups consecutive runs of one table and op, and cuts at a row touched twice', () => {
    const groups = groupChanges([ins('1'), ins('2'), upd('1', '5'), upd('2', '5'), upd('1', '6'), { op: 'delete', rel: 0, key: ['2', null, null] }], relations);
    expect(groups.map((g) => [g.kind, 'rows' in g ? g.rows.length : 'locators' in g ? g.locators.length : 0])).toEqual([
      ['insert', 2],
      ['update', 2],
      ['update', 1],
      ['delete', 1],
    ]);
  });

  it('cuts an update group after a PK change when a later update targets the new key', () => {
    const groups = groupChanges(
      [
        { op: 'update', rel: 0, key: ['1', null, null], new: ['2', '0', 'x'] },
        { op: 'update', rel: 0, key: ['2', null, null], new: ['3', '0', 'x'] },
      ],
      relations,
    );
    expect(groups).toHaveLength(2);
  });

  it('cuts FULL-identity groups at identical old rows', () => {
    const row = ['2026-01-01 00:00:00+00', '{}', 'same'];
    const groups = groupChanges(
      [
        { op: 'delete', rel: 1, old: row },
        { op: 'delete', rel: 1, old: row },
      ],
      relations,
    );
    expect(groups).toHaveLength(2);
  });

  it('a lifeboat.ddl_log insert is a barrier of its own', () => {
    const groups = groupChanges([ins('1'), { op: 'insert', rel: 2, new: ['1', 'ALTER TABLE t ADD c int'] }, ins('2')], relations);
    expect(groups.map((g) => g.kind)).toEqual(['insert', 'ddl', 'insert']);
  });

  it('keeps every change, in order (property)', () => {
    const change = fc.oneof(
      fc.integer({ min: 1, max: 4 }).map((id) => ins(String(id))),
      fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 9 })).map(([id, b]) => upd(String(id), String(b))),
      fc.integer({ min: 1, max: 4 }).map((id): Change => ({ op: 'delete', rel: 0, key: [String(id), null, null] })),
      fc.constant<Change>({ op: 'truncate', rels: [0], cascade: false, restartIdentity: false }),
    );
    fc.assert(
      fc.property(fc.array(change, { maxLength: 40 }), (changes) => {
        const groups = groupChanges(changes, relations);
        const flattened: string[] = [];
        for (const g of groups) {
          if (g.kind === 'insert') g.rows.forEach((r) => flattened.push(`insert:${String(r[0])}`));
          else if (g.kind === 'update') {
            const seen = new Set<string>();
            for (const r of g.rows) {
              // No row is touched twice within one statement.
              expect(seen.has(String(r.locator[0]))).toBe(false);
              seen.add(String(r.locator[0]));
              flattened.push(`update:${String(r.new[0])}`);
            }
          } else if (g.kind === 'delete') g.locators.forEach((l) => flattened.push(`delete:${String(l[0])}`));
          else if (g.kind === 'truncate') flattened.push('truncate');
        }
        const expected = changes.map((c) => (c.op === 'truncate' ? 'truncate' : `${c.op}:${String((c.op === 'delete' ? c.key : c.new)![0])}`));
        expect(flattened).toEqual(expected);
      }),
    );
  });
});

describe('DDL replay plan', () => {
  it('splits top-level statements, keeping quoted text, comments and function bodies whole', () => {
    const sql = `CREATE TABLE "a;b" (x text DEFAULT 'it''s; fine'); -- a comment; here
      CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;
      /* block; comment */ SELECT E'\\'; still';`;
    expect(splitStatements(sql)).toEqual([
      `CREATE TABLE "a;b" (x text DEFAULT 'it''s; fine')`,
      '-- a comment; here\n      CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$',
      "/* block; comment */ SELECT E'\\'; still'",
    ]);
  });

  it('leaves out data changes and transaction control, never silently', () => {
    const plan = planDdlReplay('BEGIN; CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE INDEX ON t (id); COMMIT;');
    expect(plan.run).toEqual(['CREATE TABLE t (id int)', 'CREATE INDEX ON t (id)']);
    expect(plan.skipped.map((s) => s.statement)).toEqual(['BEGIN', 'INSERT INTO t VALUES (1)', 'COMMIT']);
  });

  it('drops CONCURRENTLY, which cannot run in the apply transaction', () => {
    const plan = planDdlReplay('create unique index concurrently i on t (a); DROP INDEX CONCURRENTLY j');
    expect(plan.run).toEqual(['create unique index i on t (a)', 'DROP INDEX j']);
    expect(plan.rewritten).toHaveLength(2);
  });
});

// The engine's error mapping is pure too; it lives here to keep unit tests in one file.
describe('classifyApplyError (apply-engine)', () => {
  const pgError = (code: string, message = 'boom') => Object.assign(new Error(message), { code });

  it('maps SQLSTATE classes explicitly', () => {
    for (const code of ['40001', '40P01', '08006', '57P01', '53300', '55P03', '57014']) {
      expect(classifyApplyError(pgError(code)), code).toBeInstanceOf(RetryableError);
    }
    for (const code of ['23505', '42703', '22P02', '42P01', '0A000', 'XX000']) {
      const err = classifyApplyError(pgError(code));
      expect(err, code).toBeInstanceOf(PermanentError);
      expect(err.message).toContain(`SQLSTATE ${code}`);
      expect(err.remedy).toMatch(/resume/);
    }
  });

  it('treats a lost socket as retryable and keeps Lifeboat errors as they are', () => {
    expect(classifyApplyError(pgError('ECONNRESET', 'read ECONNRESET'))).toBeInstanceOf(RetryableError);
    expect(classifyApplyError(new Error('Connection terminated unexpectedly'))).toBeInstanceOf(RetryableError);
    const own = new ValidationError('bad type name');
    expect(classifyApplyError(own)).toBe(own);
    expect(classifyApplyError(new TypeError('x is undefined'))).toBeInstanceOf(PermanentError);
  });
});
