import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { ensureDdlCapture, isDdlCaptureEnabled } from '../../agent/ddl-capture.ts';
import { PermanentError } from '../../core/errors.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { connect, defer } from '../helpers/pg-test-resources.ts';

interface Logged {
  command_tag: string;
  object_identity: string | null;
  ddl: string;
  search_path: string;
}

async function logged(client: pg.Client): Promise<Logged[]> {
  return (await client.query<Logged>('SELECT command_tag, object_identity, ddl, search_path FROM lifeboat.ddl_log ORDER BY id')).rows;
}

describe('DDL capture', () => {
  it('logs each top-level DDL statement once, in order, with its search_path', async () => {
    const url = await createDatabase('local', 'ddl_capture');
    const c = await connect(url);
    await ensureDdlCapture(c);
    await ensureDdlCapture(c); // idempotent
    expect(await isDdlCaptureEnabled(c)).toBe(true);
    expect(await logged(c)).toEqual([]);

    await c.query('CREATE SCHEMA app');
    await c.query('SET search_path = app, public');
    await c.query('CREATE TABLE t (id int PRIMARY KEY)');
    await c.query('ALTER TABLE t ADD COLUMN v text');
    await c.query("CREATE TYPE mood AS ENUM ('sad', 'ok')");
    await c.query('CREATE INDEX t_v ON t (v)');
    await c.query('INSERT INTO t VALUES (1)'); // DML: not logged
    await c.query('DROP INDEX t_v');
    await c.query('CREATE TABLE a (id int); CREATE TABLE b (id int); INSERT INTO a VALUES (1)');
    await c.query('RESET search_path');

    const rows = await logged(c);
    expect(rows.map((r) => [r.command_tag, r.object_identity, r.ddl])).toEqual([
      ['CREATE SCHEMA', 'app', 'CREATE SCHEMA app'],
      ['CREATE TABLE', 'app.t, app.t_pkey', 'CREATE TABLE t (id int PRIMARY KEY)'],
      ['ALTER TABLE', 'app.t', 'ALTER TABLE t ADD COLUMN v text'],
      ['CREATE TYPE', 'app.mood', "CREATE TYPE mood AS ENUM ('sad', 'ok')"],
      ['CREATE INDEX', 'app.t_v', 'CREATE INDEX t_v ON t (v)'],
      ['DROP INDEX', 'app.t_v', 'DROP INDEX t_v'],
      ['CREATE TABLE', 'app.a', 'CREATE TABLE a (id int); CREATE TABLE b (id int); INSERT INTO a VALUES (1)'],
    ]);
    expect(rows[1]!.search_path).toBe('app, public');
  });

  it('ignores the lifeboat schema and publication commands', async () => {
    const url = await createDatabase('local', 'ddl_capture_skip');
    const c = await connect(url);
    await ensureDdlCapture(c);
    await c.query('CREATE TABLE lifeboat.own (id int)');
    await c.query('ALTER TABLE lifeboat.own ADD COLUMN v int');
    await c.query('DROP TABLE lifeboat.own');
    await c.query('CREATE PUBLICATION p FOR ALL TABLES');
    await c.query('ALTER PUBLICATION p SET (publish = insert)');
    await c.query('DROP PUBLICATION p');
    expect(await logged(c)).toEqual([]);
    await c.query('CREATE TABLE mine (id int)');
    await c.query('DROP TABLE mine');
    expect((await logged(c)).map((r) => r.command_tag)).toEqual(['CREATE TABLE', 'DROP TABLE']);
  });

  it('says a superuser is needed when the role may not create event triggers', async () => {
    const url = await createDatabase('local', 'ddl_capture_role');
    const admin = await connect(url);
    const role = `plain_${Date.now().toString(36)}`;
    await admin.query(`CREATE ROLE ${role} LOGIN`);
    defer(async () => {
      await admin.query(`DROP OWNED BY ${role}`).catch(() => undefined);
      await admin.query(`DROP ROLE ${role}`);
    });
    await admin.query(`GRANT CREATE ON DATABASE ${pg.escapeIdentifier(new URL(url).pathname.slice(1))} TO ${role}`);
    const u = new URL(url);
    u.username = role;
    const plain = await connect(u.toString());
    const err = await ensureDdlCapture(plain).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).remedy).toMatch(/superuser/);
    expect(await isDdlCaptureEnabled(admin)).toBe(false);
  });
});
