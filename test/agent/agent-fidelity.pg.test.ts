// Type fidelity and change kinds through the whole agent path: capture,
// batch, encode, publish to the Pub/Sub emulator, pull, decode. Values must
// equal the server's own text output exactly.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UNCHANGED_TOAST, type Change, type ChangeBatch } from '../../core/change-batch.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { startAgentHarness, waitFor, type AgentHarness } from './agent-harness.ts';

// Values as the server prints them: no JS numbers, Dates or parsed JSON.
const asText = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

let db: pg.Client;
let h: AgentHarness;
let run: ReturnType<AgentHarness['startAgent']>;

const MATRIX_COLUMNS = `
  id int PRIMARY KEY,
  n numeric(50,10), n_free numeric, i8 bigint, i2 smallint, f4 real, f8 double precision, b bool,
  t text, vc varchar(10), ch char(5), j json, jb jsonb,
  ts timestamp, tstz timestamptz, d date, tm time, tmtz timetz, iv interval,
  by bytea, u uuid, arr int[], tarr text[], m mood, marr mood[], r int4range, tsr tstzrange,
  addr inet, net cidr, mac macaddr, cash money, bits bit(4), vbits varbit, pt point, big text`;

const ROW_1 = `(1,
  1234567890123456789012345678901234567890.0123456789, 0.1000000000000000000000000000001, 9223372036854775807, -32768, 3.14159, 1e-300, true,
  'žluťoučký kůň 😀 "quotes" \\ back', '', 'ab', '{"b": 12345678901234567890, "a": 1.10, "a": 2}', '{"big": 123456789012345678901234567890, "x": [1, 2.50]}',
  '2026-11-23 13:31:02.123456', '2026-11-23 13:31:02.123456+01', '2026-11-23', '23:59:59.999999', '10:00:00.000001+05:30', '1 year 2 mons 3 days 04:05:06.789',
  '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', '{"a b","c,d",NULL,""}', 'happy', '{sad,happy}', '[1,10)', '["2026-01-01 00:00:00+00",)',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, B'1010', B'101', '(1.5,-2)', repeat(md5('x'), 1))`;

beforeAll(async () => {
  const url = await createDatabase('local', 'fidelity');
  db = new pg.Client({ connectionString: url, types: asText });
  await db.connect();
  await db.query(`CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')`);
  await db.query(`CREATE TABLE matrix (${MATRIX_COLUMNS})`);
  await db.query(`CREATE TABLE full_identity (id int PRIMARY KEY, v text)`);
  await db.query(`ALTER TABLE full_identity REPLICA IDENTITY FULL`);
  await db.query(`CREATE TABLE keyed (id int PRIMARY KEY, v text)`);
  await db.query(`CREATE TABLE bulk (id int PRIMARY KEY, payload text)`);
  h = await startAgentHarness(url, 'fidelity', { batching: { claimCheckAboveBytes: '4MiB' } });
  run = h.startAgent();
  await waitFor('the snapshot to finish', () => h.received.some((b) => b.kind === 'marker'));
});

afterAll(async () => {
  await run?.stop();
  await h?.close();
  await db?.end();
});

function changesOf(table: string): { change: Change; batch: ChangeBatch }[] {
  return h.received.flatMap((batch) =>
    batch.kind !== 'changes'
      ? []
      : batch.transactions.flatMap((t) =>
          t.changes
            .filter((c) => c.op !== 'truncate' && batch.relations[c.rel]?.name === table)
            .map((change) => ({ change, batch })),
        ),
  );
}

describe('agent type fidelity and change kinds', () => {
  it('every common type arrives as the exact server text; NULL, empty string and unchanged TOAST stay distinct', async () => {
    await db.query(`INSERT INTO matrix VALUES ${ROW_1}`);
    await db.query(`INSERT INTO matrix (id, t, vc, big) VALUES (2, NULL, '', NULL)`);
    // A 100 kB value that does not compress, so it is stored out of line (TOAST).
    await db.query(`UPDATE matrix SET big = (SELECT string_agg(md5(g::text || random()::text), '') FROM generate_series(1, 3200) g) WHERE id = 1`);
    await db.query(`UPDATE matrix SET i2 = 7 WHERE id = 1`);
    await waitFor('four matrix changes', () => changesOf('matrix').length >= 4);

    const server = await db.query({ text: 'SELECT * FROM matrix ORDER BY id', rowMode: 'array' });
    const [ins1, ins2, bigUpdate, smallUpdate] = changesOf('matrix').map((c) => c.change);
    const relation = changesOf('matrix')[0]!.batch.relations.find((r) => r.name === 'matrix')!;
    expect(relation.columns.map((c) => c.name)).toEqual(server.fields.map((f) => f.name));
    expect(relation.columns.find((c) => c.name === 'n')?.type).toBe('numeric(50,10)');
    expect(relation.columns.find((c) => c.name === 'm')?.type).toBe('public.mood');

    // Insert 1 equals what the server prints now, except the two columns updated later.
    const row1 = server.rows[0] as (string | null)[];
    const bigIndex = relation.columns.findIndex((c) => c.name === 'big');
    const i2Index = relation.columns.findIndex((c) => c.name === 'i2');
    expect(ins1?.op).toBe('insert');
    const inserted = (ins1 as Extract<Change, { op: 'insert' }>).new;
    for (const [i, value] of row1.entries()) {
      if (i === bigIndex || i === i2Index) continue;
      expect({ column: relation.columns[i]!.name, value: inserted[i] }).toEqual({ column: relation.columns[i]!.name, value });
    }
    expect(inserted[i2Index]).toBe('-32768');
    // Spot checks of the traps: exact numerics, json text as written, microseconds.
    const col = (name: string) => inserted[relation.columns.findIndex((c) => c.name === name)];
    expect(col('n')).toBe('1234567890123456789012345678901234567890.0123456789');
    expect(col('j')).toBe('{"b": 12345678901234567890, "a": 1.10, "a": 2}');
    expect(col('jb')).toBe('{"x": [1, 2.50], "big": 123456789012345678901234567890}');
    expect(col('tstz')).toMatch(/\.123456/);
    expect(col('b')).toBe('t');

    // Row 2: NULL and '' are different things.
    const ins2Values = (ins2 as Extract<Change, { op: 'insert' }>).new;
    expect(ins2Values[relation.columns.findIndex((c) => c.name === 't')]).toBeNull();
    expect(ins2Values[relation.columns.findIndex((c) => c.name === 'vc')]).toBe('');

    // The big value arrives whole once, then stays "unchanged" (not NULL) in a later update.
    expect((bigUpdate as Extract<Change, { op: 'update' }>).new[bigIndex]).toBe(row1[bigIndex]);
    expect(((bigUpdate as Extract<Change, { op: 'update' }>).new[bigIndex] as string).length).toBe(3200 * 32);
    const small = (smallUpdate as Extract<Change, { op: 'update' }>).new;
    expect(small[bigIndex]).toBe(UNCHANGED_TOAST);
    expect(small[i2Index]).toBe('7');
  });

  it('carries a primary-key update, deletes under both replica identities, and TRUNCATE', async () => {
    await db.query(`INSERT INTO keyed VALUES (1, 'one'), (2, 'two')`);
    await db.query(`INSERT INTO full_identity VALUES (1, 'one'), (2, 'two')`);
    await db.query(`UPDATE keyed SET id = 10 WHERE id = 1`);
    await db.query(`DELETE FROM keyed WHERE id = 2`);
    await db.query(`UPDATE full_identity SET v = 'uno' WHERE id = 1`);
    await db.query(`DELETE FROM full_identity WHERE id = 2`);
    await db.query(`TRUNCATE keyed, full_identity`);
    await waitFor('the truncate', () => h.changes('truncate').length > 0);

    const keyed = changesOf('keyed').map((c) => c.change);
    expect(keyed[2]).toEqual({ op: 'update', rel: expect.any(Number), key: ['1', null], new: ['10', 'one'] });
    expect(keyed[3]).toEqual({ op: 'delete', rel: expect.any(Number), key: ['2', null] });
    const full = changesOf('full_identity').map((c) => c.change);
    expect(full[2]).toEqual({ op: 'update', rel: expect.any(Number), old: ['1', 'one'], new: ['1', 'uno'] });
    expect(full[3]).toEqual({ op: 'delete', rel: expect.any(Number), old: ['2', 'two'] });
    const truncateBatch = h.received.find((b) => b.transactions.some((t) => t.changes.some((c) => c.op === 'truncate')))!;
    const truncate = truncateBatch.transactions.flatMap((t) => t.changes).find((c) => c.op === 'truncate') as Extract<Change, { op: 'truncate' }>;
    expect(truncate.rels.map((i) => truncateBatch.relations[i]!.name).sort()).toEqual(['full_identity', 'keyed']);
  });

  it('ships a 50 MB transaction whole, by claim check through object storage', async () => {
    // 500 rows of 100 kB of hex that compresses only about 2:1.
    await db.query(`INSERT INTO bulk SELECT g, (SELECT string_agg(md5(g::text || s::text || random()::text), '') FROM generate_series(1, 3200) s) FROM generate_series(1, 500) g`);
    const size = Number((await db.query<{ n: string }>(`SELECT sum(length(payload)) AS n FROM bulk`)).rows[0]!.n);
    expect(size).toBeGreaterThanOrEqual(50 * 1024 * 1024 * 0.95);
    const rows = await waitFor('the bulk transaction', () => {
      const c = changesOf('bulk');
      return c.length === 500 ? c : undefined;
    }, 120_000);
    // One transaction, in one batch, never split.
    expect(new Set(rows.map((r) => r.batch)).size).toBe(1);
    expect(rows[0]!.batch.transactions).toHaveLength(1);
    const { readdirSync } = await import('node:fs');
    const claimChecks = readdirSync(`${h.dir}/objects`, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.gz') || f.endsWith('.json'));
    expect(claimChecks.length).toBeGreaterThanOrEqual(1);
  }, 180_000);
});
