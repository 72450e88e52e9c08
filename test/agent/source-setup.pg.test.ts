import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import {
  createLogicalSlot,
  createReplicationClient,
  startReplicationStream,
  type ReplicationStream,
  type StreamedMessage,
} from '../../agent/replication-stream.ts';
import {
  checkPrivileges,
  checkSourceSettings,
  comparePublication,
  describeReplicaIdentityProblems,
  dropSlot,
  emitHeartbeat,
  ensureLifeboatSchema,
  ensurePublication,
  ensureSourceReady,
  evaluateSourceSettings,
  findTablesWithoutReplicaIdentity,
  formatSettingsProblems,
  inspectSlot,
  listPublishedTables,
  planPublication,
  readPublication,
  readSequences,
  reconcilePublicationTables,
  settingBytes,
  slotProblem,
  walRetentionWarning,
  type SourceSettings,
  type SourceSetupConfig,
} from '../../agent/source-setup.ts';
import { PermanentError, ValidationError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { startPostgresCluster } from '../../local/local-stack.ts';
import { createDatabase, withDatabase } from '../stack/stack-env.ts';
import { connect, defer, dropSlotEventually, nextWithin } from '../helpers/pg-test-resources.ts';

// Quiet: reconcile logs an error by design in one test.
const logger = createLogger({ component: 'source-setup-test', level: 'critical' });

async function freshDb(name: string, ddl: string[] = []): Promise<{ url: string; sql: pg.Client }> {
  const url = await createDatabase('local', name);
  const sql = await connect(url);
  for (const stmt of ddl) await sql.query(stmt);
  return { url, sql };
}

const uniqueSlot = () => `lb_setup_${randomBytes(5).toString('hex')}`;

function config(over: Partial<SourceSetupConfig> = {}): SourceSetupConfig {
  return { publication: 'lifeboat', slot: uniqueSlot(), tables: [], excludeTables: [], maxSlotWalKeepSize: '1GB', ...over };
}

async function makeSlot(url: string, slot: string) {
  const repl = createReplicationClient(url);
  await repl.connect();
  const created = await createLogicalSlot(repl, slot);
  await repl.end();
  defer(() => dropSlotEventually(url, slot));
  return created;
}

const names = (tables: readonly { schema: string; name: string }[]) => tables.map((t) => `${t.schema}.${t.name}`);

describe('settings', () => {
  it('the shared cluster (wal_level=logical, 1GB keep size) passes; another configured keep size is a warning', async () => {
    const { sql } = await freshDb('settings');
    expect((await sql.query('SHOW wal_level')).rows[0]).toEqual({ wal_level: 'logical' });
    expect(await checkSourceSettings(sql, config({ maxSlotWalKeepSize: '1GB' }))).toEqual([]);
    expect(await checkSourceSettings(sql, config({ maxSlotWalKeepSize: '1024MB' }))).toEqual([]);

    const problems = await checkSourceSettings(sql, config({ maxSlotWalKeepSize: '4GB' }));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({
      severity: 'warning',
      setting: 'max_slot_wal_keep_size',
      current: '1 GiB',
      wanted: '4GB',
      takesEffect: 'reload',
      sql: ["ALTER SYSTEM SET max_slot_wal_keep_size = '4GB';"],
    });
    expect(problems[0]!.message).toContain('less than source.maxSlotWalKeepSize (4GB)');
    expect(problems[0]!.then).toContain("Or set source.maxSlotWalKeepSize to '1GB'");
  });

  it('formats every failing setting with the statement and restart or reload (pure)', () => {
    const row = (name: string, setting: string, context: string, unit: string | null = null) => ({ name, setting, unit, context, pendingRestart: false });
    const s: SourceSettings = {
      serverVersionNum: 150004,
      settings: {
        wal_level: { ...row('wal_level', 'replica', 'postmaster'), pendingRestart: true },
        max_replication_slots: row('max_replication_slots', '10', 'postmaster'),
        max_wal_senders: row('max_wal_senders', '4', 'postmaster'),
        max_slot_wal_keep_size: row('max_slot_wal_keep_size', '-1', 'sighup', 'MB'),
      },
      usedSlots: 9,
      slotExists: false,
      usedWalSenders: 3,
    };
    const problems = evaluateSourceSettings(s, { maxSlotWalKeepSize: '4GB' });
    expect(problems.map((p) => [p.severity, p.setting, p.wanted, p.takesEffect, p.sql])).toEqual([
      ['error', 'wal_level', 'logical', 'restart', ['ALTER SYSTEM SET wal_level = logical;']],
      ['error', 'max_replication_slots', '≥ 11', 'restart', ['ALTER SYSTEM SET max_replication_slots = 11;']],
      ['error', 'max_wal_senders', '≥ 5', 'restart', ['ALTER SYSTEM SET max_wal_senders = 5;']],
      ['error', 'max_slot_wal_keep_size', '4GB', 'reload', ["ALTER SYSTEM SET max_slot_wal_keep_size = '4GB';"]],
    ]);
    expect(formatSettingsProblems(problems)).toBe(
      [
        '- wal_level is replica; logical replication needs wal_level = logical. A new value is already set but waits for a restart of PostgreSQL.',
        '  Run as a superuser: ALTER SYSTEM SET wal_level = logical;',
        '  Then restart PostgreSQL: wal_level is read only at server start (pg_settings.context = postmaster).',
        '- max_replication_slots is 10 and 9 slots are in use; Lifeboat needs 1 free slot for its stream and 1 spare (failback creates the new slot before it drops the old one).',
        '  Run as a superuser: ALTER SYSTEM SET max_replication_slots = 11;',
        '  Then restart PostgreSQL: max_replication_slots is read only at server start (pg_settings.context = postmaster).',
        '- max_wal_senders is 4 and 3 walsenders are running; Lifeboat needs 2 free: one for its stream and one spare, because the walsender of a killed agent lingers until wal_sender_timeout.',
        '  Run as a superuser: ALTER SYSTEM SET max_wal_senders = 5;',
        '  Then restart PostgreSQL: max_wal_senders is read only at server start (pg_settings.context = postmaster).',
        "- max_slot_wal_keep_size is -1 (unlimited): a stalled slot would keep WAL until the disk is full. Set it to source.maxSlotWalKeepSize (4GB).",
        "  Run as a superuser: ALTER SYSTEM SET max_slot_wal_keep_size = '4GB';",
        '  Then reload the configuration (SELECT pg_reload_conf();): no restart is needed for max_slot_wal_keep_size.',
      ].join('\n'),
    );

    // The stream's existing slot needs no new one: only the spare.
    expect(evaluateSourceSettings({ ...s, slotExists: true, usedSlots: 9 }, { maxSlotWalKeepSize: '4GB' }).map((p) => p.setting)).not.toContain(
      'max_replication_slots',
    );
    expect(evaluateSourceSettings({ ...s, serverVersionNum: 140010 }, { maxSlotWalKeepSize: '4GB' })[0]!.message).toMatch(/PostgreSQL 14 is too old/);
    expect(settingBytes({ setting: '1024', unit: 'MB' })).toBe(1024 ** 3);
    expect(settingBytes({ setting: '2', unit: '8kB' })).toBe(16 * 1024);
  });

  it('a wal_level=replica server fails with every problem listed at once', async () => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-replica-'));
    fs.chmodSync(base, 0o755);
    const cluster = await startPostgresCluster({
      name: 'replica-level',
      dir: path.join(base, 'data'),
      log: () => {},
      settings: { wal_level: 'replica', max_wal_senders: 1, max_slot_wal_keep_size: -1 },
    });
    const sql = new pg.Client({ connectionString: cluster.url });
    try {
      await sql.connect();
      const problems = await checkSourceSettings(sql, config({ maxSlotWalKeepSize: '4GB' }));
      expect(problems.map((p) => `${p.severity} ${p.setting} ${p.takesEffect}`)).toEqual([
        'error wal_level restart',
        'error max_wal_senders restart',
        'error max_slot_wal_keep_size reload',
      ]);
      const err = await ensureSourceReady(sql, config({ maxSlotWalKeepSize: '4GB' })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PermanentError);
      const message = (err as Error).message;
      expect(message).toMatch(/^the source database is not ready for Lifeboat \(3 problems\):/);
      expect(message).toContain('ALTER SYSTEM SET wal_level = logical;');
      expect(message).toContain('ALTER SYSTEM SET max_wal_senders = 2;');
      expect(message).toContain("ALTER SYSTEM SET max_slot_wal_keep_size = '4GB';");
    } finally {
      await sql.end().catch(() => {});
      await cluster.stop();
      fs.rmSync(base, { recursive: true, force: true });
    }
  });
});

describe('privileges', () => {
  it('names the missing REPLICATION attribute, SELECT grants and superuser-only publication', async () => {
    const { url, sql } = await freshDb('privs', [
      'CREATE TABLE secret (id serial PRIMARY KEY, v text)',
      'CREATE TABLE open (id int PRIMARY KEY)',
    ]);
    const role = `lb_agent_${randomBytes(4).toString('hex')}`;
    await sql.query(`CREATE ROLE ${role} LOGIN`);
    await sql.query(`GRANT SELECT ON open TO ${role}`);
    defer(async () => {
      await sql.query(`DROP OWNED BY ${role}`).catch(() => {});
      await sql.query(`DROP ROLE ${role}`);
    });
    const u = new URL(url);
    u.username = role;
    const agent = await connect(u.toString());

    const tables = [
      { schema: 'public', name: 'open' },
      { schema: 'public', name: 'secret' },
    ];
    const problems = await checkPrivileges(agent, tables, { schema: true, publication: { name: 'lifeboat', allTables: true } });
    expect(problems.map((p) => p.sql)).toEqual([
      [`ALTER ROLE "${role}" REPLICATION;`],
      [`GRANT SELECT ON TABLE "public"."secret" TO "${role}";`],
      ['CREATE PUBLICATION "lifeboat" FOR ALL TABLES;'],
      [`GRANT SELECT ON SEQUENCE "public"."secret_id_seq" TO "${role}";`],
      [`CREATE SCHEMA "lifeboat" AUTHORIZATION "${role}";`],
    ]);
    expect(problems[0]!.message).toBe(`role ${role} may not use logical replication: it needs the REPLICATION attribute (or superuser).`);
    expect(problems[1]!.message).toContain('cannot read 1 published table (SELECT is needed for the initial copy): public.secret');

    // A listed publication needs the tables' owner, not a superuser.
    const listed = await checkPrivileges(agent, tables, { publication: { name: 'lifeboat', allTables: false } });
    expect(listed.find((p) => p.message.includes('does not own'))?.sql).toEqual(['CREATE PUBLICATION "lifeboat" FOR TABLE ONLY "public"."open", ONLY "public"."secret";']);

    // After the grants, nothing is missing.
    await sql.query(`ALTER ROLE ${role} REPLICATION`);
    await sql.query(`GRANT SELECT ON secret TO ${role}`);
    await sql.query(`GRANT SELECT ON SEQUENCE secret_id_seq TO ${role}`);
    expect(await checkPrivileges(agent, tables)).toEqual([]);

    // The superuser passes everything.
    expect(await checkPrivileges(sql, tables, { schema: true, publication: { name: 'lifeboat', allTables: true } })).toEqual([]);
  });

  it('ensureSourceReady lists a configured table that does not exist, with a hint', async () => {
    const { sql } = await freshDb('ready', ['CREATE TABLE "Orders" (id int PRIMARY KEY)', 'CREATE TABLE items (id int PRIMARY KEY)']);
    const err = await ensureSourceReady(sql, config({ tables: ['public.orders', 'public.items', 'public.nope'] })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as Error).message).toContain('source.tables names public.orders, which does not exist: did you mean public.Orders?');
    expect((err as Error).message).toContain('source.tables names public.nope, which does not exist: no such table');
    const ok = await ensureSourceReady(sql, config({ tables: ['public.Orders'] }));
    expect(ok.warnings).toEqual([]);
    expect(names(ok.plan.tables)).toEqual(['public.Orders']);
  });
});

describe('publication', () => {
  it('creates FOR ALL TABLES once and is idempotent', async () => {
    const { sql } = await freshDb('pub_all', ['CREATE TABLE a (id int PRIMARY KEY)', 'CREATE TABLE b (id int PRIMARY KEY)']);
    const cfg = config();
    expect(await ensurePublication(sql, cfg, { logger })).toMatchObject({ action: 'created', mode: 'all-tables' });
    expect(await ensurePublication(sql, cfg, { logger })).toMatchObject({ action: 'unchanged', mode: 'all-tables' });
    const state = await readPublication(sql, 'lifeboat');
    expect(state).toMatchObject({ allTables: true, viaRoot: false, publish: { insert: true, update: true, delete: true, truncate: true } });
    expect(await ensureLifeboatSchema(sql)).toBe('created');
    expect(await ensureLifeboatSchema(sql)).toBe('exists');
    // FOR ALL TABLES includes tables in the lifeboat schema: the agent keeps none of its own state there.
    await sql.query('CREATE TABLE lifeboat.ddl_log (id int PRIMARY KEY)');
    expect(names(await listPublishedTables(sql, 'lifeboat'))).toEqual(['lifeboat.ddl_log', 'public.a', 'public.b']);
  });

  it('creates a listed publication with exactly the tables named, and reports a missing one', async () => {
    const { sql } = await freshDb('pub_listed', ['CREATE TABLE a (id int PRIMARY KEY)', 'CREATE TABLE b (id int PRIMARY KEY)', 'CREATE TABLE c (id int)']);
    const err = await ensurePublication(sql, config({ tables: ['public.a', 'public.zz'] }), { logger }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as Error).message).toContain('source.tables names a table that does not exist: public.zz (no such table');
    expect(await readPublication(sql, 'lifeboat')).toBeUndefined();

    const cfg = config({ tables: ['public.b', 'public.a', 'public.c'], excludeTables: ['public.c'] });
    expect(await ensurePublication(sql, cfg, { logger })).toMatchObject({ action: 'created', mode: 'listed' });
    expect(names((await readPublication(sql, 'lifeboat'))!.tables)).toEqual(['public.a', 'public.b']);
    expect(await ensurePublication(sql, cfg, { logger })).toMatchObject({ action: 'unchanged' });
  });

  it('reports a publication that differs, changes it only with alterExisting', async () => {
    const { sql } = await freshDb('pub_differs', ['CREATE TABLE a (id int PRIMARY KEY)', 'CREATE TABLE b (id int PRIMARY KEY, v text)']);
    await sql.query("CREATE PUBLICATION lifeboat FOR TABLE a, b WHERE (id > 0) WITH (publish = 'insert, update')");
    const cfg = config({ tables: ['public.a'] });
    const err = await ensurePublication(sql, cfg, { logger }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    const e = err as PermanentError;
    expect(e.message).toContain('publication lifeboat differs from the config:');
    expect(e.message).toContain('also publishes public.b, which the config does not list in source.tables.');
    expect(e.message).toContain('has row filters or column lists on public.b');
    expect(e.message).toContain('does not publish delete, truncate');
    expect(e.remedy).toContain('ALTER PUBLICATION "lifeboat" SET TABLE ONLY "public"."a";');
    expect(e.remedy).toContain(`ALTER PUBLICATION "lifeboat" SET (publish = 'insert, update, delete, truncate');`);
    expect(e.remedy).toContain('--alter-publication');
    // Nothing was changed.
    expect(names((await readPublication(sql, 'lifeboat'))!.tables)).toEqual(['public.a', 'public.b']);

    expect(await ensurePublication(sql, cfg, { alterExisting: true, logger })).toMatchObject({ action: 'altered' });
    const after = (await readPublication(sql, 'lifeboat'))!;
    expect(names(after.tables)).toEqual(['public.a']);
    expect(after.rowFilters).toEqual([]);
    expect(after.publish).toEqual({ insert: true, update: true, delete: true, truncate: true });
    expect(await ensurePublication(sql, cfg, { logger })).toMatchObject({ action: 'unchanged' });

    // From a list to FOR ALL TABLES: DROP + CREATE in one transaction.
    const all = config();
    await expect(ensurePublication(sql, all, { logger })).rejects.toThrow(/wants FOR ALL TABLES/);
    expect(await ensurePublication(sql, all, { alterExisting: true, logger })).toMatchObject({ action: 'altered' });
    expect((await readPublication(sql, 'lifeboat'))!.allTables).toBe(true);
  });

  it('excludeTables: lists every user table but the excluded ones, and reconcile adds new tables', async () => {
    const { sql } = await freshDb('pub_except', [
      'CREATE TABLE keep (id int PRIMARY KEY)',
      'CREATE TABLE cache (id int PRIMARY KEY)',
      'CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id)',
      'CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100)',
      'CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (100) TO (200)',
      'CREATE TABLE logs (id int PRIMARY KEY) PARTITION BY RANGE (id)',
      'CREATE TABLE logs_old PARTITION OF logs FOR VALUES FROM (0) TO (100)',
      'CREATE TABLE logs_new PARTITION OF logs FOR VALUES FROM (100) TO (200)',
      'CREATE UNLOGGED TABLE scratch (id int)',
    ]);
    const cfg = config({ excludeTables: ['public.cache', 'public.logs_old'] });
    const plan = await planPublication(sql, cfg);
    // A partitioned table stands for its partitions, unless one of them is excluded.
    expect(plan.mode).toBe('all-except');
    expect(names(plan.tables)).toEqual(['public.keep', 'public.logs_new', 'public.parted']);
    expect(await ensurePublication(sql, cfg, { logger })).toMatchObject({ action: 'created', mode: 'all-except' });
    expect(names(await listPublishedTables(sql, 'lifeboat'))).toEqual(['public.keep', 'public.logs_new', 'public.parted_1', 'public.parted_2']);
    expect(await reconcilePublicationTables(sql, cfg, logger)).toEqual({ added: [], addedWithUnstreamedRows: [], unexpected: [] });

    // New tables: one already written to (those rows were never streamed), one empty.
    await sql.query('CREATE TABLE late_with_rows (id int PRIMARY KEY)');
    await sql.query('INSERT INTO late_with_rows VALUES (1)');
    await sql.query('CREATE TABLE late_empty (id int PRIMARY KEY)');
    await sql.query('CREATE TABLE parted_3 PARTITION OF parted FOR VALUES FROM (200) TO (300)'); // covered by parted
    await sql.query('CREATE TABLE late_parted (id int) PARTITION BY RANGE (id)');
    await sql.query('CREATE TABLE late_parted_1 PARTITION OF late_parted FOR VALUES FROM (0) TO (10)');
    await sql.query('INSERT INTO late_parted VALUES (1)');
    await sql.query('CREATE TABLE inh_parent (id int)');
    await sql.query('CREATE TABLE inh_child () INHERITS (inh_parent)');
    await sql.query('INSERT INTO inh_child VALUES (1)'); // the parent itself holds no row
    const result = await reconcilePublicationTables(sql, cfg, logger);
    expect(names(result.added)).toEqual(['public.inh_child', 'public.inh_parent', 'public.late_empty', 'public.late_parted', 'public.late_with_rows']);
    expect(names(result.addedWithUnstreamedRows)).toEqual(['public.inh_child', 'public.late_parted', 'public.late_with_rows']);
    expect(names(await listPublishedTables(sql, 'lifeboat'))).toContain('public.parted_3');
    expect((await reconcilePublicationTables(sql, cfg, logger)).added).toEqual([]);

    // Someone added an excluded table by hand: reported, not silently removed.
    await sql.query('ALTER PUBLICATION lifeboat ADD TABLE cache');
    expect(names((await reconcilePublicationTables(sql, cfg, logger)).unexpected)).toEqual(['public.cache']);
    await expect(ensurePublication(sql, cfg, { logger })).rejects.toThrow(/also publishes public\.cache, which the config excludes/);
  });

  it('comparePublication reports options and FOR TABLES IN SCHEMA (pure)', () => {
    const plan = { publication: 'lifeboat', mode: 'listed' as const, tables: [{ schema: 'public', name: 'a' }], missing: [] };
    const { differences } = comparePublication(plan, {
      name: 'lifeboat',
      owner: 'postgres',
      allTables: false,
      publish: { insert: true, update: true, delete: true, truncate: true },
      viaRoot: true,
      tables: [{ schema: 'public', name: 'a' }],
      rowFilters: [],
      columnLists: [],
      schemas: ['app'],
    });
    expect(differences.map((d) => d.sql)).toEqual([
      ['ALTER PUBLICATION "lifeboat" DROP TABLES IN SCHEMA "app";'],
      ['ALTER PUBLICATION "lifeboat" SET (publish_via_partition_root = false);'],
    ]);
  });
});

describe('replica identity', () => {
  it('reports published tables whose UPDATE and DELETE PostgreSQL would refuse', async () => {
    const { sql } = await freshDb('ident', [
      'CREATE TABLE with_pk (id int PRIMARY KEY)',
      'CREATE TABLE no_pk (v text)',
      'CREATE TABLE full_ident (v text)',
      'ALTER TABLE full_ident REPLICA IDENTITY FULL',
      'CREATE TABLE nothing_ident (id int PRIMARY KEY)',
      'ALTER TABLE nothing_ident REPLICA IDENTITY NOTHING',
      'CREATE TABLE index_ident (code text NOT NULL)',
      'CREATE UNIQUE INDEX index_ident_code ON index_ident (code)',
      'ALTER TABLE index_ident REPLICA IDENTITY USING INDEX index_ident_code',
      'CREATE TABLE index_gone (code text NOT NULL)',
      'CREATE UNIQUE INDEX index_gone_code ON index_gone (code)',
      'ALTER TABLE index_gone REPLICA IDENTITY USING INDEX index_gone_code',
      'DROP INDEX index_gone_code',
      'CREATE TABLE "Mixed Case" (v text)',
    ]);
    await ensurePublication(sql, config(), { logger });
    const problems = await findTablesWithoutReplicaIdentity(sql, 'lifeboat');
    expect(problems.map((p) => [`${p.schema}.${p.name}`, p.identity])).toEqual([
      ['public.Mixed Case', 'default'],
      ['public.index_gone', 'index'],
      ['public.no_pk', 'default'],
      ['public.nothing_ident', 'nothing'],
    ]);
    const report = describeReplicaIdentityProblems(problems);
    expect(report).toContain('4 published tables have no usable replica identity:');
    expect(report).toContain(
      '- public.no_pk: it has no primary key and the default replica identity, so PostgreSQL refuses UPDATE and DELETE on it while it is published (inserts still replicate).',
    );
    expect(report).toContain('ALTER TABLE "public"."Mixed Case" REPLICA IDENTITY FULL;');
    expect(report).toContain('add public.index_gone to source.excludeTables');
    expect(report).toContain('public.index_gone: its replica identity index was dropped');

    // As the report says: an UPDATE on such a table now fails on the source.
    await sql.query("INSERT INTO no_pk VALUES ('x')");
    await expect(sql.query("UPDATE no_pk SET v = 'y'")).rejects.toThrow(/does not have a replica identity/);

    // Fixed later (periodic re-check): it disappears from the report.
    await sql.query('ALTER TABLE no_pk REPLICA IDENTITY FULL');
    expect((await findTablesWithoutReplicaIdentity(sql, 'lifeboat')).map((p) => p.name)).not.toContain('no_pk');
  });
});

describe('slot', () => {
  it('inspects a live slot and reports a missing one as undefined', async () => {
    const { url, sql } = await freshDb('slot', ['CREATE TABLE t (id int PRIMARY KEY)']);
    await ensurePublication(sql, config(), { logger });
    const slot = uniqueSlot();
    expect(await inspectSlot(sql, slot)).toBeUndefined();
    const created = await makeSlot(url, slot);
    await sql.query('INSERT INTO t SELECT generate_series(1, 1000)');
    const info = (await inspectSlot(sql, slot))!;
    expect(info).toMatchObject({ name: slot, plugin: 'pgoutput', slotType: 'logical', temporary: false, active: false, activePid: null, walStatus: 'reserved' });
    expect(info.database).toBe(info.currentDatabase);
    expect(info.confirmedFlushLsn).toBe(created.consistentPoint);
    expect(info.restartLsn).toBeLessThanOrEqual(created.consistentPoint);
    expect(info.retainedWalBytes).toBeGreaterThan(0);
    expect(info.currentWalLsn).toBeGreaterThan(created.consistentPoint);
    expect(info.safeWalSizeBytes).toBeGreaterThan(0);
    expect(slotProblem(info)).toBeUndefined();
    expect(walRetentionWarning(info, 1024 ** 3)).toBeUndefined();
    expect(walRetentionWarning(info, 1)).toMatch(new RegExp(`replication slot "${slot}" retains .* of WAL, above source.walRetentionWarnBytes \\(1 B\\); .* more and PostgreSQL invalidates it\\.`));

    // A slot in another database with the same name is not ours.
    const other = await connect(withDatabase(url, 'postgres'));
    const elsewhere = (await inspectSlot(other, slot))!;
    expect(slotProblem(elsewhere)?.message).toMatch(/belongs to database .*, not postgres/);

    expect(await dropSlot(sql, slot)).toBe(true);
    expect(await dropSlot(sql, slot)).toBe(false);
    expect(await inspectSlot(sql, slot)).toBeUndefined();
  });

  it('a slot invalidated past max_slot_wal_keep_size is lost, with the --resnapshot remedy', async () => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-lost-'));
    fs.chmodSync(base, 0o755);
    const cluster = await startPostgresCluster({
      name: 'lost-slot',
      dir: path.join(base, 'data'),
      log: () => {},
      settings: { max_slot_wal_keep_size: '1MB' },
    });
    const sql = new pg.Client({ connectionString: cluster.url });
    try {
      await sql.connect();
      await sql.query('CREATE TABLE t (id int)');
      await sql.query('CREATE PUBLICATION lifeboat FOR ALL TABLES');
      const slot = uniqueSlot();
      const repl = createReplicationClient(cluster.url);
      await repl.connect();
      await createLogicalSlot(repl, slot);
      await repl.end();
      // Move WAL three segments past the slot, then checkpoint: the slot is invalidated.
      for (let i = 0; i < 3; i++) {
        await sql.query('INSERT INTO t VALUES (1)');
        await sql.query('SELECT pg_switch_wal()');
      }
      await sql.query('CHECKPOINT');
      const info = (await inspectSlot(sql, slot))!;
      expect(info.walStatus).toBe('lost');
      expect(info.restartLsn).toBeUndefined();
      expect(info.retainedWalBytes).toBeNull();
      const problem = slotProblem(info)!;
      expect(problem).toBeInstanceOf(PermanentError);
      expect(problem.message).toContain(`replication slot "${slot}" was invalidated (wal_status = lost)`);
      expect(problem.message).toContain('changes were lost from the stream');
      expect(problem.remedy).toContain('lifeboat agent --resnapshot');
      expect(await dropSlot(sql, slot)).toBe(true);
    } finally {
      await sql.end().catch(() => {});
      await cluster.stop();
      fs.rmSync(base, { recursive: true, force: true });
    }
  });
});

describe('heartbeat and sequences', () => {
  it('reads owned, identity and default sequences exactly, including setval(…, false)', async () => {
    const { sql } = await freshDb('seqs', [
      'CREATE SEQUENCE shared_ids START 500',
      'CREATE TABLE a (id bigserial PRIMARY KEY, ref bigint DEFAULT nextval(\'shared_ids\'))',
      'CREATE TABLE b (id bigint GENERATED ALWAYS AS IDENTITY (START 7) PRIMARY KEY)',
      'CREATE TABLE c (id int PRIMARY KEY)',
      'CREATE SEQUENCE unrelated',
    ]);
    const tables = [
      { schema: 'public', name: 'a' },
      { schema: 'public', name: 'b' },
      { schema: 'public', name: 'c' },
    ];
    expect(await readSequences(sql, tables)).toEqual([
      { schema: 'public', name: 'a_id_seq', lastValue: '1', isCalled: false },
      { schema: 'public', name: 'b_id_seq', lastValue: '7', isCalled: false },
      { schema: 'public', name: 'shared_ids', lastValue: '500', isCalled: false },
    ]);
    await sql.query('INSERT INTO a DEFAULT VALUES');
    await sql.query('INSERT INTO a DEFAULT VALUES');
    await sql.query("SELECT setval('b_id_seq', 9007199254740993)");
    await sql.query("SELECT setval('shared_ids', 1000, false)"); // pg_sequences would show NULL here
    expect(await readSequences(sql, tables)).toEqual([
      { schema: 'public', name: 'a_id_seq', lastValue: '2', isCalled: true },
      { schema: 'public', name: 'b_id_seq', lastValue: '9007199254740993', isCalled: true },
      { schema: 'public', name: 'shared_ids', lastValue: '1000', isCalled: false },
    ]);
    expect(await readSequences(sql, [{ schema: 'public', name: 'c' }])).toEqual([]);
    expect(await readSequences(sql, [])).toEqual([]);
  });

  it('emitHeartbeat comes back through the replication stream with its content', async () => {
    const { url, sql } = await freshDb('heartbeat', ['CREATE TABLE t (id serial PRIMARY KEY)']);
    await ensurePublication(sql, config(), { logger });
    const slot = uniqueSlot();
    await makeSlot(url, slot);
    const stream = await startReplicationStream({ connectionString: url, slot, publication: 'lifeboat', logger });
    defer(() => stream.close());

    await sql.query('INSERT INTO t DEFAULT VALUES');
    const sequences = await readSequences(sql, await listPublishedTables(sql, 'lifeboat'));
    expect(sequences).toEqual([{ schema: 'public', name: 't_id_seq', lastValue: '1', isCalled: true }]);
    const hb = await emitHeartbeat(sql, sequences);
    expect(hb.sourceTime).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/);
    expect(JSON.parse(hb.content)).toEqual({ sourceTime: hb.sourceTime, sequences });

    let received: StreamedMessage | undefined;
    while (!received) {
      const item = await nextWithin(stream);
      if (item.message.tag === 'message') received = item;
    }
    const message = received!.message as Extract<StreamedMessage['message'], { tag: 'message' }>;
    expect(message.transactional).toBe(false);
    expect(message.prefix).toBe('lifeboat-heartbeat');
    expect(message.lsn).toBe(hb.lsn);
    expect(received!.lsn).toBe(hb.lsn);
    expect(JSON.parse(message.content.toString('utf8'))).toEqual({
      sourceTime: hb.sourceTime,
      sequences: [{ schema: 'public', name: 't_id_seq', lastValue: '1', isCalled: true }],
    });
    // The source clock: close to now() (not a timed assertion: it is the server's own value).
    const serverNow = (await sql.query<{ t: Date }>('SELECT now() AS t')).rows[0]!.t;
    expect(Date.parse(hb.sourceTime)).toBeLessThanOrEqual(serverNow.getTime());
  });
});
