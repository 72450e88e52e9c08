// Everything the agent checks and creates on the source (the local
// PostgreSQL) before it streams, plus the small SQL it runs while streaming.
//
//   - Settings: wal_level, max_replication_slots, max_wal_senders and
//     max_slot_wal_keep_size, each problem with the exact statement to run and
//     whether PostgreSQL then needs a restart or a reload (pg_settings.context).
//     Room needed (decided here):
//       slots:   one for the stream's slot unless it exists already, plus ONE
//                SPARE: failback creates the new forward slot before it drops
//                the old one, so a failure between the two steps never leaves
//                the stream without a slot.
//       senders: TWO free walsenders, not counting one that serves our own
//                slot: the stream's connection, plus one spare because the
//                walsender of a killed agent lingers until wal_sender_timeout
//                (60 s by default) while the restarted agent already connects.
//     max_slot_wal_keep_size = -1 (unlimited) is an error: a stalled slot would
//     fill the disk. A value other than source.maxSlotWalKeepSize is a warning.
//   - Privileges: REPLICATION (or superuser) and SELECT on every published
//     table and its sequences, with the GRANT / ALTER ROLE to run.
//   - The publication: FOR ALL TABLES when source.tables and
//     source.excludeTables are empty; FOR TABLE ONLY <the listed tables>
//     otherwise. PostgreSQL 15 cannot say "all tables except", so with
//     excludeTables the publication lists every user table minus the
//     excluded ones, and reconcilePublicationTables() adds tables created
//     later. Trade-off: rows written to a new table BEFORE it is added are
//     never streamed; reconcile finds such tables exactly (it blocks writers
//     for a moment while it adds a table) and reports them so they are not
//     silently skipped (remedy: --resnapshot). FOR ALL TABLES has no such
//     gap, so prefer it. An existing publication that differs from the
//     config is reported, never altered silently (alterExisting lets
//     Lifeboat change it).
//   - The `lifeboat` schema: the agent's own objects on the source. No table
//     is needed by the agent today: its state is a file (agent-state.ts),
//     because FOR ALL TABLES publishes every table of every schema,
//     `lifeboat` included, and state kept in a replicated table would be
//     streamed to the standby. (A later DDL-capture table there IS meant to
//     travel in the stream, in commit order.)
//   - Replica identity: published tables whose UPDATE/DELETE PostgreSQL will
//     refuse, with what to do for each. Reported, never fatal: inserts still
//     replicate.
//   - The slot: inspectSlot() reads its state; a lost slot is a
//     PermanentError whose remedy is `lifeboat agent --resnapshot`. Slots are
//     created by createLogicalSlot (replication-stream.ts).
//   - Heartbeats and sequences: emitHeartbeat() writes a non-transactional
//     logical message that comes back through the slot; readSequences()
//     reads the sequences of the published tables for it.
//
// Every identifier in SQL is quoted with pg.escapeIdentifier; config values in
// statements shown to users with pg.escapeLiteral.

import pg from 'pg';
import { type SequenceState } from '../core/change-batch.ts';
import { type LifeboatConfig, formatBytes, parsePgSize } from '../core/config.ts';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import { type Logger, createLogger } from '../core/log.ts';
import { type Lsn, parseLsn } from '../core/lsn.ts';

/** The client type every function here takes: a pg.Client or a pooled client. */
export type SqlClient = Pick<pg.ClientBase, 'query'>;

/** The config fields the source setup reads. */
export type SourceSetupConfig = Pick<LifeboatConfig['source'], 'publication' | 'tables' | 'excludeTables' | 'maxSlotWalKeepSize'> & {
  /** The stream's slot (the config derives lifeboat_<stream> when unset). */
  readonly slot: string;
};

export interface TableName {
  readonly schema: string;
  readonly name: string;
}

/** The schema the agent owns on the source. */
export const LIFEBOAT_SCHEMA = 'lifeboat';
/** Prefix of the agent's non-transactional heartbeat messages. */
export const HEARTBEAT_MESSAGE_PREFIX = 'lifeboat-heartbeat';
/** Spare replication slots required beyond the stream's own (see header). */
export const SPARE_REPLICATION_SLOTS = 1;
/** Free walsenders required (see header). */
export const REQUIRED_FREE_WAL_SENDERS = 2;
const MIN_SERVER_VERSION_NUM = 150000;

const ident = (name: string): string => pg.escapeIdentifier(name);
const qualified = (t: TableName): string => `${ident(t.schema)}.${ident(t.name)}`;
/** `schema.name` as people write it (and as source.tables / excludeTables hold it). */
export const displayName = (t: TableName): string => `${t.schema}.${t.name}`;

function byName(a: TableName, b: TableName): number {
  return a.schema === b.schema ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) : a.schema < b.schema ? -1 : 1;
}

/** 'public.orders' → {schema, name}; the config already checked the shape. */
export function parseTableName(text: string): TableName {
  const dot = text.indexOf('.');
  if (dot <= 0 || dot === text.length - 1) {
    throw new ValidationError(`invalid table name ${JSON.stringify(text)}: expected schema.table, like public.orders`);
  }
  return { schema: text.slice(0, dot), name: text.slice(dot + 1) };
}

// ---------------------------------------------------------------------------
// Settings

export const CHECKED_SETTINGS = ['wal_level', 'max_replication_slots', 'max_wal_senders', 'max_slot_wal_keep_size'] as const;

export interface SettingRow {
  readonly name: string;
  readonly setting: string;
  /** pg_settings.unit, e.g. 'MB' for max_slot_wal_keep_size. */
  readonly unit: string | null;
  /** pg_settings.context: 'postmaster' needs a restart, 'sighup' a reload. */
  readonly context: string;
  /** A changed value is waiting for a restart. */
  readonly pendingRestart: boolean;
}

/** What the settings check looks at, read in one round trip by readSourceSettings. */
export interface SourceSettings {
  readonly serverVersionNum: number;
  readonly settings: Readonly<Record<string, SettingRow>>;
  /** Replication slots of any kind in the cluster. */
  readonly usedSlots: number;
  /** The stream's slot exists already (it needs no new slot). */
  readonly slotExists: boolean;
  /** Walsender processes, not counting one that serves our own slot. */
  readonly usedWalSenders: number;
}

export interface SettingsProblem {
  /** 'error' stops the agent; 'warning' is logged. */
  readonly severity: 'error' | 'warning';
  readonly setting: string;
  readonly current: string;
  readonly wanted: string;
  /** What is wrong, as a sentence. */
  readonly message: string;
  /** Statements to run, as a superuser. */
  readonly sql: readonly string[];
  /** When the change takes effect. */
  readonly takesEffect: 'restart' | 'reload' | 'immediately';
  /** The step after the SQL, as a sentence. */
  readonly then: string;
}

export async function readSourceSettings(client: SqlClient, slot: string): Promise<SourceSettings> {
  const rows = await client.query<{ name: string; setting: string; unit: string | null; context: string; pending_restart: boolean }>(
    'SELECT name, setting, unit, context, pending_restart FROM pg_settings WHERE name = ANY($1::text[])',
    [CHECKED_SETTINGS],
  );
  const usage = await client.query<{ version_num: number; used_slots: number; slot_exists: boolean; used_senders: number }>(
    `SELECT current_setting('server_version_num')::int AS version_num,
            (SELECT count(*)::int FROM pg_replication_slots) AS used_slots,
            EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) AS slot_exists,
            (SELECT count(*)::int FROM pg_stat_activity
              WHERE backend_type = 'walsender'
                AND pid IS DISTINCT FROM (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1)) AS used_senders`,
    [slot],
  );
  const u = usage.rows[0]!;
  const settings: Record<string, SettingRow> = {};
  for (const r of rows.rows) {
    settings[r.name] = { name: r.name, setting: r.setting, unit: r.unit, context: r.context, pendingRestart: r.pending_restart };
  }
  return { serverVersionNum: u.version_num, settings, usedSlots: u.used_slots, slotExists: u.slot_exists, usedWalSenders: u.used_senders };
}

/** A size setting in bytes from pg_settings' setting + unit ('1024' + 'MB'); -1 stays -1. */
export function settingBytes(row: Pick<SettingRow, 'setting' | 'unit'>): number | undefined {
  const n = Number(row.setting);
  if (!Number.isFinite(n)) return undefined;
  if (n < 0) return n;
  const m = /^(\d*)\s*(B|kB|MB|GB|TB)$/.exec(row.unit ?? 'B');
  if (!m) return undefined;
  const unitBytes = parsePgSize(`1${m[2]}`) ?? 1;
  return n * (m[1] ? Number(m[1]) : 1) * unitBytes;
}

/** Bytes as a PostgreSQL size setting ('4GB', 1024-based), in the largest unit that divides it. */
export function pgSizeText(bytes: number): string {
  for (const unit of ['TB', 'GB', 'MB', 'kB'] as const) {
    const size = parsePgSize(`1${unit}`)!;
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}B`;
}

function effect(row: SettingRow | undefined, name: string): Pick<SettingsProblem, 'takesEffect' | 'then'> {
  const context = row?.context ?? (name === 'max_slot_wal_keep_size' ? 'sighup' : 'postmaster');
  if (context === 'postmaster') {
    return { takesEffect: 'restart', then: `Then restart PostgreSQL: ${name} is read only at server start (pg_settings.context = postmaster).` };
  }
  if (context === 'sighup') {
    return { takesEffect: 'reload', then: `Then reload the configuration (SELECT pg_reload_conf();): no restart is needed for ${name}.` };
  }
  return { takesEffect: 'immediately', then: `It takes effect for new sessions; no restart is needed.` };
}

/**
 * The settings problems in `s` (pure). `maxSlotWalKeepSize` is the config's
 * PostgreSQL size ('4GB').
 */
export function evaluateSourceSettings(s: SourceSettings, cfg: Pick<SourceSetupConfig, 'maxSlotWalKeepSize'>): SettingsProblem[] {
  const problems: SettingsProblem[] = [];
  const row = (name: string) => s.settings[name];
  const pending = (r: SettingRow | undefined) =>
    r?.pendingRestart ? ' A new value is already set but waits for a restart of PostgreSQL.' : '';

  if (s.serverVersionNum < MIN_SERVER_VERSION_NUM) {
    problems.push({
      severity: 'error',
      setting: 'server_version_num',
      current: String(s.serverVersionNum),
      wanted: `≥ ${MIN_SERVER_VERSION_NUM}`,
      message: `PostgreSQL ${Math.floor(s.serverVersionNum / 10000)} is too old: Lifeboat needs PostgreSQL 15 or newer (exported snapshots with the new replication command syntax, pgoutput messages).`,
      sql: [],
      takesEffect: 'restart',
      then: 'Upgrade the server to PostgreSQL 15 or newer.',
    });
  }

  const walLevel = row('wal_level');
  if (walLevel?.setting !== 'logical') {
    problems.push({
      severity: 'error',
      setting: 'wal_level',
      current: walLevel?.setting ?? '(unknown)',
      wanted: 'logical',
      message: `wal_level is ${walLevel?.setting ?? 'unknown'}; logical replication needs wal_level = logical.${pending(walLevel)}`,
      sql: ['ALTER SYSTEM SET wal_level = logical;'],
      ...effect(walLevel, 'wal_level'),
    });
  }

  const slotsNeeded = (s.slotExists ? 0 : 1) + SPARE_REPLICATION_SLOTS;
  const slotsRow = row('max_replication_slots');
  const maxSlots = Number(slotsRow?.setting ?? 0);
  if (maxSlots - s.usedSlots < slotsNeeded) {
    const wanted = s.usedSlots + slotsNeeded;
    problems.push({
      severity: 'error',
      setting: 'max_replication_slots',
      current: String(maxSlots),
      wanted: `≥ ${wanted}`,
      message:
        `max_replication_slots is ${maxSlots} and ${s.usedSlots} slot${s.usedSlots === 1 ? ' is' : 's are'} in use; Lifeboat needs ` +
        `${s.slotExists ? '' : '1 free slot for its stream and '}${SPARE_REPLICATION_SLOTS} spare (failback creates the new slot before it drops the old one).${pending(slotsRow)}`,
      sql: [`ALTER SYSTEM SET max_replication_slots = ${wanted};`],
      ...effect(slotsRow, 'max_replication_slots'),
    });
  }

  const sendersRow = row('max_wal_senders');
  const maxSenders = Number(sendersRow?.setting ?? 0);
  if (maxSenders - s.usedWalSenders < REQUIRED_FREE_WAL_SENDERS) {
    const wanted = s.usedWalSenders + REQUIRED_FREE_WAL_SENDERS;
    problems.push({
      severity: 'error',
      setting: 'max_wal_senders',
      current: String(maxSenders),
      wanted: `≥ ${wanted}`,
      message:
        `max_wal_senders is ${maxSenders} and ${s.usedWalSenders} walsender${s.usedWalSenders === 1 ? ' is' : 's are'} running; Lifeboat needs ` +
        `${REQUIRED_FREE_WAL_SENDERS} free: one for its stream and one spare, because the walsender of a killed agent lingers until wal_sender_timeout.${pending(sendersRow)}`,
      sql: [`ALTER SYSTEM SET max_wal_senders = ${wanted};`],
      ...effect(sendersRow, 'max_wal_senders'),
    });
  }

  const keepRow = row('max_slot_wal_keep_size');
  const keepBytes = keepRow ? settingBytes(keepRow) : undefined;
  const wantedBytes = parsePgSize(cfg.maxSlotWalKeepSize);
  const setKeep = [`ALTER SYSTEM SET max_slot_wal_keep_size = ${pg.escapeLiteral(cfg.maxSlotWalKeepSize)};`];
  if (keepBytes === undefined || keepBytes < 0) {
    problems.push({
      severity: 'error',
      setting: 'max_slot_wal_keep_size',
      current: keepBytes === undefined ? '(unknown)' : '-1',
      wanted: cfg.maxSlotWalKeepSize,
      message:
        'max_slot_wal_keep_size is -1 (unlimited): a stalled slot would keep WAL until the disk is full. ' +
        `Set it to source.maxSlotWalKeepSize (${cfg.maxSlotWalKeepSize}).`,
      sql: setKeep,
      ...effect(keepRow, 'max_slot_wal_keep_size'),
    });
  } else if (wantedBytes !== undefined && keepBytes !== wantedBytes) {
    const current = formatBytes(keepBytes);
    problems.push({
      severity: 'warning',
      setting: 'max_slot_wal_keep_size',
      current,
      wanted: cfg.maxSlotWalKeepSize,
      message:
        keepBytes > wantedBytes
          ? `max_slot_wal_keep_size is ${current}, more than source.maxSlotWalKeepSize (${cfg.maxSlotWalKeepSize}): a stalled slot may keep more WAL on disk than configured.`
          : `max_slot_wal_keep_size is ${current}, less than source.maxSlotWalKeepSize (${cfg.maxSlotWalKeepSize}): PostgreSQL invalidates a stalled slot sooner than configured, which forces a full re-copy.`,
      sql: setKeep,
      ...effect(keepRow, 'max_slot_wal_keep_size'),
      then: `${effect(keepRow, 'max_slot_wal_keep_size').then} Or set source.maxSlotWalKeepSize to '${pgSizeText(keepBytes)}' to accept the server's value.`,
    });
  }
  return problems;
}

/** Reads and evaluates the source's settings. */
export async function checkSourceSettings(client: SqlClient, cfg: Pick<SourceSetupConfig, 'slot' | 'maxSlotWalKeepSize'>): Promise<SettingsProblem[]> {
  return evaluateSourceSettings(await readSourceSettings(client, cfg.slot), cfg);
}

/** One paragraph per problem: what is wrong, the SQL to run, then restart or reload. */
export function formatSettingsProblems(problems: readonly SettingsProblem[]): string {
  return problems
    .map((p) => {
      const lines = [`- ${p.message}`];
      if (p.sql.length > 0) lines.push(`  Run as a superuser: ${p.sql.join(' ')}`);
      lines.push(`  ${p.then}`);
      return lines.join('\n');
    })
    .join('\n');
}

// ---------------------------------------------------------------------------
// Privileges

export interface PrivilegeProblem {
  readonly message: string;
  /** Statements a superuser (or the owner) runs to fix it. */
  readonly sql: readonly string[];
}

const MAX_LISTED = 20;

/**
 * What the agent's role lacks: REPLICATION (unless superuser), SELECT on
 * `tables` and on their sequences, and, when `creates` says so, the right
 * to create the lifeboat schema or the publication.
 */
export async function checkPrivileges(
  client: SqlClient,
  tables: readonly TableName[],
  creates: { readonly schema?: boolean; readonly publication?: { readonly name: string; readonly allTables: boolean } } = {},
): Promise<PrivilegeProblem[]> {
  const problems: PrivilegeProblem[] = [];
  const role = (
    await client.query<{ name: string; superuser: boolean; replication: boolean; can_create: boolean }>(
      `SELECT r.rolname AS name, r.rolsuper AS superuser, r.rolreplication AS replication,
              has_database_privilege(current_database(), 'CREATE') AS can_create
         FROM pg_roles r WHERE r.rolname = current_user`,
    )
  ).rows[0]!;
  const me = ident(role.name);
  if (!role.superuser && !role.replication) {
    problems.push({
      message: `role ${role.name} may not use logical replication: it needs the REPLICATION attribute (or superuser).`,
      sql: [`ALTER ROLE ${me} REPLICATION;`],
    });
  }

  if (tables.length > 0) {
    const res = await client.query<{ schema: string; name: string; can_select: boolean; is_owner: boolean }>(
      `SELECT t.schema, t.name, has_table_privilege(c.oid, 'SELECT') AS can_select,
              pg_has_role(current_user, c.relowner, 'USAGE') AS is_owner
         FROM unnest($1::text[], $2::text[]) AS t(schema, name)
         JOIN pg_namespace n ON n.nspname = t.schema
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name`,
      [tables.map((t) => t.schema), tables.map((t) => t.name)],
    );
    const unreadable = res.rows.filter((r) => !r.can_select).sort(byName);
    if (unreadable.length > 0) {
      problems.push({
        message: `role ${role.name} cannot read ${unreadable.length} published table${unreadable.length === 1 ? '' : 's'} (SELECT is needed for the initial copy): ${listNames(unreadable)}.`,
        sql: grantStatements(unreadable, me, 'TABLE'),
      });
    }
    const pub = creates.publication;
    if (pub && !role.superuser) {
      if (pub.allTables) {
        problems.push({
          message: `publication ${pub.name} does not exist and only a superuser may create a FOR ALL TABLES publication.`,
          sql: [`CREATE PUBLICATION ${ident(pub.name)} FOR ALL TABLES;`],
        });
      } else {
        const notOwned = res.rows.filter((r) => !r.is_owner).sort(byName);
        if (notOwned.length > 0) {
          problems.push({
            message: `publication ${pub.name} does not exist and role ${role.name} does not own ${listNames(notOwned)}: adding a table to a publication needs its owner (or a superuser).`,
            sql: [`CREATE PUBLICATION ${ident(pub.name)} FOR TABLE ${tables.map((t) => `ONLY ${qualified(t)}`).join(', ')};`],
          });
        }
      }
    }

    const seqs = await client.query<{ schema: string; name: string; can_select: boolean }>(
      `${SEQUENCES_OF_TABLES_SQL}
       SELECT n.nspname AS schema, s.relname AS name, has_sequence_privilege(s.oid, 'SELECT') AS can_select
         FROM seqs JOIN pg_class s ON s.oid = seqs.oid JOIN pg_namespace n ON n.oid = s.relnamespace`,
      [tables.map((t) => t.schema), tables.map((t) => t.name)],
    );
    const hidden = seqs.rows.filter((r) => !r.can_select).sort(byName);
    if (hidden.length > 0) {
      problems.push({
        message: `role ${role.name} cannot read ${hidden.length} sequence${hidden.length === 1 ? '' : 's'} of the published tables (heartbeats ship their values so failover can set them): ${listNames(hidden)}.`,
        sql: grantStatements(hidden, me, 'SEQUENCE'),
      });
    }
  }

  if (creates.schema && !role.superuser && !role.can_create) {
    problems.push({
      message: `schema ${LIFEBOAT_SCHEMA} does not exist and role ${role.name} may not create schemas in this database.`,
      sql: [`CREATE SCHEMA ${ident(LIFEBOAT_SCHEMA)} AUTHORIZATION ${me};`],
    });
  }
  return problems;
}

function listNames(tables: readonly TableName[]): string {
  const shown = tables.slice(0, MAX_LISTED).map(displayName).join(', ');
  return tables.length > MAX_LISTED ? `${shown} and ${tables.length - MAX_LISTED} more` : shown;
}

function grantStatements(objects: readonly TableName[], role: string, kind: 'TABLE' | 'SEQUENCE'): string[] {
  if (objects.length <= MAX_LISTED) return objects.map((t) => `GRANT SELECT ON ${kind} ${qualified(t)} TO ${role};`);
  const schemas = [...new Set(objects.map((t) => t.schema))].sort();
  return schemas.map((s) => `GRANT SELECT ON ALL ${kind}S IN SCHEMA ${ident(s)} TO ${role};`);
}

// ---------------------------------------------------------------------------
// Publication

/**
 * all-tables: FOR ALL TABLES. listed: exactly source.tables (minus
 * excludeTables). all-except: every user table minus excludeTables, listed
 * explicitly (PostgreSQL 15 has no "except").
 */
export type PublicationMode = 'all-tables' | 'listed' | 'all-except';

export interface PublicationPlan {
  readonly publication: string;
  readonly mode: PublicationMode;
  /**
   * The relations to list in the publication (FOR TABLE ONLY …), sorted. A
   * partitioned table stands for all its partitions, now and later. For
   * all-tables: every publishable table, for information.
   */
  readonly tables: readonly TableName[];
  /** Configured names (source.tables) that do not exist, each with a hint. */
  readonly missing: readonly { readonly table: string; readonly hint: string }[];
}

export interface UserTable extends TableName {
  readonly oid: number;
  readonly kind: 'r' | 'p';
  /** The partitioned table this one is a partition of, if any. */
  readonly parentOid: number | null;
}

/** Every table PostgreSQL can publish (its is_publishable_class rules): permanent, not a catalog. */
async function listUserTables(client: SqlClient): Promise<UserTable[]> {
  const res = await client.query<{ oid: number; schema: string; name: string; kind: 'r' | 'p'; parent: number | null }>(
    `SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relkind AS kind,
            CASE WHEN c.relispartition THEN (SELECT i.inhparent::int FROM pg_inherits i WHERE i.inhrelid = c.oid) END AS parent
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND c.oid >= 16384
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
      ORDER BY 2, 3`,
  );
  return res.rows.map((r) => ({ oid: r.oid, schema: r.schema, name: r.name, kind: r.kind, parentOid: r.parent }));
}

/**
 * Which relations to publish for `excluded` (pure): top-level tables not
 * excluded; a partitioned table with an excluded partition somewhere below is
 * replaced by its remaining partitions.
 */
export function tablesForAllExcept(all: readonly UserTable[], excluded: ReadonlySet<string>): TableName[] {
  const children = new Map<number, UserTable[]>();
  for (const t of all) {
    if (t.parentOid !== null) children.set(t.parentOid, [...(children.get(t.parentOid) ?? []), t]);
  }
  const hasExcludedBelow = (t: UserTable): boolean =>
    (children.get(t.oid) ?? []).some((c) => excluded.has(displayName(c)) || hasExcludedBelow(c));
  const pick = (t: UserTable): TableName[] => {
    if (excluded.has(displayName(t))) return [];
    if (t.kind === 'p' && hasExcludedBelow(t)) return (children.get(t.oid) ?? []).flatMap(pick);
    return [{ schema: t.schema, name: t.name }];
  };
  return all.filter((t) => t.parentOid === null || !all.some((p) => p.oid === t.parentOid)).flatMap(pick).sort(byName);
}

export async function planPublication(client: SqlClient, source: Pick<SourceSetupConfig, 'publication' | 'tables' | 'excludeTables'>): Promise<PublicationPlan> {
  const all = await listUserTables(client);
  const excluded = new Set(source.excludeTables);
  if (source.tables.length === 0 && excluded.size === 0) {
    return { publication: source.publication, mode: 'all-tables', tables: all.map(({ schema, name }) => ({ schema, name })), missing: [] };
  }
  if (source.tables.length === 0) {
    return { publication: source.publication, mode: 'all-except', tables: tablesForAllExcept(all, excluded), missing: [] };
  }
  const known = new Map(all.map((t) => [displayName(t), t]));
  const missing: { table: string; hint: string }[] = [];
  const tables: TableName[] = [];
  for (const text of new Set(source.tables)) {
    if (excluded.has(text)) continue;
    if (known.has(text)) {
      tables.push(parseTableName(text));
      continue;
    }
    const folded = [...known.keys()].find((k) => k.toLowerCase() === text.toLowerCase());
    missing.push({
      table: text,
      hint: folded
        ? `did you mean ${folded}? Names are matched exactly, as PostgreSQL stores them.`
        : 'no such table (or it is temporary or unlogged, which cannot be published); create it or remove it from source.tables.',
    });
  }
  return { publication: source.publication, mode: 'listed', tables: tables.sort(byName), missing };
}

export interface PublicationState {
  readonly name: string;
  readonly owner: string;
  readonly allTables: boolean;
  readonly publish: { readonly insert: boolean; readonly update: boolean; readonly delete: boolean; readonly truncate: boolean };
  readonly viaRoot: boolean;
  /** Relations listed in the publication (pg_publication_rel), sorted. */
  readonly tables: readonly TableName[];
  /** Listed relations with a row filter (WHERE) or a column list. */
  readonly rowFilters: readonly TableName[];
  readonly columnLists: readonly TableName[];
  /** FOR TABLES IN SCHEMA entries. */
  readonly schemas: readonly string[];
}

export async function readPublication(client: SqlClient, name: string): Promise<PublicationState | undefined> {
  const pub = await client.query<{
    oid: number;
    owner: string;
    puballtables: boolean;
    pubinsert: boolean;
    pubupdate: boolean;
    pubdelete: boolean;
    pubtruncate: boolean;
    pubviaroot: boolean;
  }>(
    `SELECT p.oid::int AS oid, pg_get_userbyid(p.pubowner) AS owner, p.puballtables, p.pubinsert, p.pubupdate,
            p.pubdelete, p.pubtruncate, p.pubviaroot
       FROM pg_publication p WHERE p.pubname = $1`,
    [name],
  );
  const p = pub.rows[0];
  if (!p) return undefined;
  const rels = await client.query<{ schema: string; name: string; has_filter: boolean; has_columns: boolean }>(
    `SELECT n.nspname AS schema, c.relname AS name, pr.prqual IS NOT NULL AS has_filter, pr.prattrs IS NOT NULL AS has_columns
       FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE pr.prpubid = $1 ORDER BY 1, 2`,
    [p.oid],
  );
  const schemas = await client.query<{ schema: string }>(
    `SELECT n.nspname AS schema FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
      WHERE pn.pnpubid = $1 ORDER BY 1`,
    [p.oid],
  );
  const tableOf = (r: { schema: string; name: string }): TableName => ({ schema: r.schema, name: r.name });
  return {
    name,
    owner: p.owner,
    allTables: p.puballtables,
    publish: { insert: p.pubinsert, update: p.pubupdate, delete: p.pubdelete, truncate: p.pubtruncate },
    viaRoot: p.pubviaroot,
    tables: rels.rows.map(tableOf),
    rowFilters: rels.rows.filter((r) => r.has_filter).map(tableOf),
    columnLists: rels.rows.filter((r) => r.has_columns).map(tableOf),
    schemas: schemas.rows.map((r) => r.schema),
  };
}

export interface PublicationDifference {
  /** What differs, as a sentence. */
  readonly what: string;
  /** SQL that makes the publication match the config. */
  readonly sql: readonly string[];
}

export interface PublicationComparison {
  readonly differences: readonly PublicationDifference[];
  /** all-except mode: tables the publication lacks, normally created since the last check (reconcile adds them). */
  readonly toAdd: readonly TableName[];
}

const PUBLISH_ALL = `publish = 'insert, update, delete, truncate'`;

/** How an existing publication differs from the plan (pure). */
export function comparePublication(plan: PublicationPlan, state: PublicationState): PublicationComparison {
  const differences: PublicationDifference[] = [];
  const pub = ident(plan.publication);
  const list = (tables: readonly TableName[]) => tables.map((t) => `ONLY ${qualified(t)}`).join(', ');
  const createSql = plan.mode === 'all-tables' ? `CREATE PUBLICATION ${pub} FOR ALL TABLES;` : plan.tables.length > 0 ? `CREATE PUBLICATION ${pub} FOR TABLE ${list(plan.tables)};` : `CREATE PUBLICATION ${pub};`;
  let toAdd: TableName[] = [];

  if (plan.mode === 'all-tables' && !state.allTables) {
    differences.push({
      what: `publication ${plan.publication} lists ${state.tables.length} table${state.tables.length === 1 ? '' : 's'}${state.schemas.length > 0 ? ` and ${state.schemas.length} schema${state.schemas.length === 1 ? '' : 's'}` : ''}, but the config (empty source.tables and source.excludeTables) wants FOR ALL TABLES.`,
      sql: ['BEGIN;', `DROP PUBLICATION ${pub};`, createSql, 'COMMIT;'],
    });
  } else if (plan.mode !== 'all-tables' && state.allTables) {
    differences.push({
      what: `publication ${plan.publication} is FOR ALL TABLES, but the config ${plan.mode === 'listed' ? 'lists source.tables' : 'excludes tables (source.excludeTables)'}.`,
      sql: ['BEGIN;', `DROP PUBLICATION ${pub};`, createSql, 'COMMIT;'],
    });
  } else if (plan.mode !== 'all-tables') {
    const have = new Set(state.tables.map(displayName));
    const want = new Set(plan.tables.map(displayName));
    const extra = state.tables.filter((t) => !want.has(displayName(t)));
    const lacking = plan.tables.filter((t) => !have.has(displayName(t)));
    const setTable = [`ALTER PUBLICATION ${pub} SET TABLE ${list(plan.tables)};`];
    if (extra.length > 0) {
      differences.push({
        what: `publication ${plan.publication} also publishes ${listNames(extra)}, which the config ${plan.mode === 'listed' ? 'does not list in source.tables' : 'excludes (source.excludeTables)'}.`,
        sql: plan.tables.length > 0 ? setTable : [`ALTER PUBLICATION ${pub} DROP TABLE ${list(extra)};`],
      });
    }
    if (plan.mode === 'listed' && lacking.length > 0) {
      differences.push({ what: `publication ${plan.publication} lacks ${listNames(lacking)}, listed in source.tables.`, sql: setTable });
    }
    if (plan.mode === 'all-except') toAdd = lacking;
    if (state.schemas.length > 0) {
      differences.push({
        what: `publication ${plan.publication} publishes whole schemas (FOR TABLES IN SCHEMA ${state.schemas.join(', ')}), which Lifeboat never sets up.`,
        sql: [`ALTER PUBLICATION ${pub} DROP TABLES IN SCHEMA ${state.schemas.map(ident).join(', ')};`],
      });
    }
    const filtered = [...new Set([...state.rowFilters, ...state.columnLists].map(displayName))].sort();
    if (filtered.length > 0) {
      differences.push({
        what: `publication ${plan.publication} has row filters or column lists on ${filtered.join(', ')}: the standby would get partial tables, and the initial copy reads whole rows.`,
        sql: setTable,
      });
    }
  }

  const ops = state.publish;
  if (!(ops.insert && ops.update && ops.delete && ops.truncate)) {
    const off = (['insert', 'update', 'delete', 'truncate'] as const).filter((op) => !ops[op]);
    differences.push({
      what: `publication ${plan.publication} does not publish ${off.join(', ')}: those changes would never reach the standby.`,
      sql: [`ALTER PUBLICATION ${pub} SET (${PUBLISH_ALL});`],
    });
  }
  if (state.viaRoot) {
    differences.push({
      what: `publication ${plan.publication} has publish_via_partition_root = true; Lifeboat streams and copies partitions as themselves.`,
      sql: [`ALTER PUBLICATION ${pub} SET (publish_via_partition_root = false);`],
    });
  }
  return { differences, toAdd };
}

export interface EnsurePublicationOptions {
  /** Change an existing publication that differs from the config (the `--alter-publication` flag). Default false. */
  readonly alterExisting?: boolean;
  readonly logger?: Logger;
}

export interface EnsurePublicationResult {
  readonly publication: string;
  readonly action: 'created' | 'unchanged' | 'altered';
  readonly mode: PublicationMode;
  /** Tables added to an all-except publication (new since it was made). */
  readonly added: readonly TableName[];
  /** Of those, tables that already held rows: those rows were never streamed. */
  readonly addedWithUnstreamedRows: readonly TableName[];
}

/**
 * Creates the publication if missing; checks an existing one against the
 * config. Idempotent.
 * @throws ValidationError naming configured tables that do not exist;
 *   PermanentError listing what differs (and the SQL, and the flag) when an
 *   existing publication does not match and alterExisting is off, or when the
 *   role may not create it (with the statement for a superuser).
 */
export async function ensurePublication(client: pg.ClientBase, source: SourceSetupConfig, opts: EnsurePublicationOptions = {}): Promise<EnsurePublicationResult> {
  const log = opts.logger ?? createLogger({ component: 'source-setup' });
  const plan = await planPublication(client, source);
  if (plan.missing.length > 0) throw missingTablesError(plan);
  const base = { publication: plan.publication, mode: plan.mode, added: [], addedWithUnstreamedRows: [] };
  const pub = ident(plan.publication);

  const state = await readPublication(client, plan.publication);
  if (!state) {
    const sql =
      plan.mode === 'all-tables'
        ? `CREATE PUBLICATION ${pub} FOR ALL TABLES`
        : `CREATE PUBLICATION ${pub}${plan.tables.length > 0 ? ` FOR TABLE ${plan.tables.map((t) => `ONLY ${qualified(t)}`).join(', ')}` : ''}`;
    try {
      await client.query(`${sql} WITH (${PUBLISH_ALL}, publish_via_partition_root = false)`);
    } catch (err) {
      if (sqlState(err) === '42710') return ensurePublication(client, source, opts); // created concurrently: check it
      throw setupError(err, `create publication ${plan.publication}`, `${sql};`);
    }
    log.info('publication created', { publication: plan.publication, mode: plan.mode, tables: plan.mode === 'all-tables' ? 'all' : plan.tables.length });
    return { ...base, action: 'created' };
  }

  const { differences, toAdd } = comparePublication(plan, state);
  if (differences.length > 0) {
    if (!opts.alterExisting) {
      throw new PermanentError(
        `publication ${plan.publication} differs from the config: ${differences.map((d) => d.what).join(' ')}`,
        {
          remedy:
            'Lifeboat does not change a publication you may have edited. Choose one: ' +
            `(1) run, as its owner (${state.owner}) or a superuser: ${[...new Set(differences.flatMap((d) => d.sql))].join(' ')} ` +
            '(2) start the agent with --alter-publication to let Lifeboat make it match the config; ' +
            '(3) change source.tables / source.excludeTables to match the publication.',
          details: { publication: plan.publication, differences },
        },
      );
    }
    await alterPublication(client, plan, state);
    log.warn('publication altered to match the config', { publication: plan.publication, differences: differences.map((d) => d.what) });
    return { ...base, action: 'altered' };
  }
  if (toAdd.length > 0) {
    const added = await addTables(client, plan.publication, toAdd);
    return { ...base, action: 'altered', added: toAdd, addedWithUnstreamedRows: added };
  }
  return { ...base, action: 'unchanged' };
}

async function alterPublication(client: pg.ClientBase, plan: PublicationPlan, state: PublicationState): Promise<void> {
  const pub = ident(plan.publication);
  const options = `(${PUBLISH_ALL}, publish_via_partition_root = false)`;
  const list = plan.tables.map((t) => `ONLY ${qualified(t)}`).join(', ');
  // One transaction: the walsender never sees the publication missing.
  await inTransaction(client, `alter publication ${plan.publication}`, async () => {
    if (plan.mode === 'all-tables' || state.allTables || state.schemas.length > 0) {
      await client.query(`DROP PUBLICATION ${pub}`);
      const body = plan.mode === 'all-tables' ? ' FOR ALL TABLES' : list ? ` FOR TABLE ${list}` : '';
      await client.query(`CREATE PUBLICATION ${pub}${body} WITH ${options}`);
      return;
    }
    if (list) await client.query(`ALTER PUBLICATION ${pub} SET TABLE ${list}`);
    else if (state.tables.length > 0) await client.query(`ALTER PUBLICATION ${pub} DROP TABLE ${state.tables.map((t) => `ONLY ${qualified(t)}`).join(', ')}`);
    await client.query(`ALTER PUBLICATION ${pub} SET ${options}`);
  });
}

export interface ReconcileResult {
  /** Tables added to the publication now. */
  readonly added: readonly TableName[];
  /**
   * Added tables that already held rows when they were added: those rows were
   * written before the table was published, so they were never streamed.
   */
  readonly addedWithUnstreamedRows: readonly TableName[];
  /** Published tables the config excludes or does not list (reported, not removed). */
  readonly unexpected: readonly TableName[];
}

/**
 * For the all-except mode: adds user tables created since the publication was
 * made (call it at start and periodically). Other modes need nothing: FOR ALL
 * TABLES includes new tables by itself, and a listed publication is exactly
 * source.tables. See the header for the trade-off; added tables with rows are
 * logged as an error with the remedy.
 */
export async function reconcilePublicationTables(client: pg.ClientBase, source: SourceSetupConfig, logger?: Logger): Promise<ReconcileResult> {
  const log = logger ?? createLogger({ component: 'source-setup' });
  const plan = await planPublication(client, source);
  if (plan.mode !== 'all-except') return { added: [], addedWithUnstreamedRows: [], unexpected: [] };
  const state = await readPublication(client, plan.publication);
  if (!state) {
    throw new PermanentError(`publication ${plan.publication} does not exist`, {
      remedy: 'It was dropped while the agent ran; restart the agent (it creates the publication) and re-copy with --resnapshot, since changes made meanwhile were not streamed.',
    });
  }
  const { toAdd } = comparePublication(plan, state);
  const want = new Set(plan.tables.map(displayName));
  const unexpected = state.tables.filter((t) => !want.has(displayName(t)));
  if (unexpected.length > 0) {
    log.warn('publication publishes tables the config excludes', { publication: plan.publication, tables: unexpected.map(displayName) });
  }
  const withRows = toAdd.length > 0 ? await addTables(client, plan.publication, toAdd) : [];
  if (toAdd.length > 0) log.info('new tables added to the publication', { publication: plan.publication, tables: toAdd.map(displayName) });
  if (withRows.length > 0) {
    log.error('rows written before these tables were published were not streamed', {
      tables: withRows.map(displayName),
      remedy: 'Run `lifeboat agent --resnapshot` to copy everything again, or use FOR ALL TABLES (empty source.excludeTables), which has no such gap.',
    });
  }
  return { added: toAdd, addedWithUnstreamedRows: withRows, unexpected };
}

/** How long reconcile waits to block writers of a new table before trying again later. */
const ADD_TABLE_LOCK_TIMEOUT = '5s';

/**
 * Adds tables to the publication and returns those that already held rows.
 * In one transaction each table is first locked against writes (SHARE), so
 * every row visible then was written before it was published (never
 * streamed), and every later write is streamed: the answer is exact.
 */
async function addTables(client: pg.ClientBase, publication: string, tables: readonly TableName[]): Promise<TableName[]> {
  const withRows: TableName[] = [];
  await inTransaction(client, `add tables to publication ${publication}`, async () => {
    await client.query(`SET LOCAL lock_timeout = '${ADD_TABLE_LOCK_TIMEOUT}'`);
    await client.query(`LOCK TABLE ${tables.map(qualified).join(', ')} IN SHARE MODE`);
    await client.query(`ALTER PUBLICATION ${ident(publication)} ADD TABLE ${tables.map((t) => `ONLY ${qualified(t)}`).join(', ')}`);
    for (const t of tables) {
      // A partitioned table's rows are in its partitions; any other table counts only its own rows (ONLY).
      const kind = await client.query<{ relkind: string }>('SELECT relkind::text FROM pg_class WHERE oid = $1::regclass', [qualified(t)]);
      const only = kind.rows[0]?.relkind === 'p' ? '' : 'ONLY ';
      const r = await client.query<{ has_rows: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${only}${qualified(t)}) AS has_rows`);
      if (r.rows[0]?.has_rows) withRows.push(t);
    }
  });
  return withRows;
}

/** Tables the publication actually publishes (pg_publication_tables: leaf partitions, inheritance children). */
export async function listPublishedTables(client: SqlClient, publication: string): Promise<TableName[]> {
  const res = await client.query<TableName>(
    'SELECT schemaname AS schema, tablename AS name FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2',
    [publication],
  );
  return res.rows.map((r) => ({ schema: r.schema, name: r.name }));
}

function missingTablesError(plan: PublicationPlan): ValidationError {
  const lines = plan.missing.map((m) => `${m.table} (${m.hint})`);
  return new ValidationError(`source.tables names ${plan.missing.length === 1 ? 'a table that does' : 'tables that do'} not exist: ${lines.join('; ')}`, {
    remedy: 'Fix source.tables in lifeboat.yaml (schema-qualified names, exactly as in the database).',
    details: { missing: plan.missing },
  });
}

// ---------------------------------------------------------------------------
// The lifeboat schema

/**
 * Creates the `lifeboat` schema if missing. It holds no table of the agent's
 * own (see the header).
 */
export async function ensureLifeboatSchema(client: SqlClient): Promise<'created' | 'exists'> {
  const exists = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [LIFEBOAT_SCHEMA]);
  if (exists.rows.length > 0) return 'exists';
  try {
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${ident(LIFEBOAT_SCHEMA)}`);
    await client.query(
      `COMMENT ON SCHEMA ${ident(LIFEBOAT_SCHEMA)} IS ${pg.escapeLiteral('Owned by the Lifeboat agent. Its tables are replicated like any other; the agent keeps its own state in a file.')}`,
    );
  } catch (err) {
    throw setupError(err, `create schema ${LIFEBOAT_SCHEMA}`, `CREATE SCHEMA ${ident(LIFEBOAT_SCHEMA)} AUTHORIZATION <agent role>;`);
  }
  return 'created';
}

// ---------------------------------------------------------------------------
// Start-up check: every problem at once

export interface SourceReadiness {
  /** Problems that do not stop the agent (logged). */
  readonly warnings: readonly string[];
  readonly plan: PublicationPlan;
}

/**
 * Checks settings, privileges and the configured tables, and throws ONE
 * PermanentError listing every blocking problem with its fix. Creates
 * nothing.
 */
export async function ensureSourceReady(client: SqlClient, source: SourceSetupConfig): Promise<SourceReadiness> {
  const settings = await checkSourceSettings(client, source);
  const plan = await planPublication(client, source);
  const publicationExists = (await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [source.publication])).rows.length > 0;
  const schemaExists = (await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [LIFEBOAT_SCHEMA])).rows.length > 0;
  const privileges = await checkPrivileges(client, plan.tables, {
    schema: !schemaExists,
    ...(publicationExists ? {} : { publication: { name: source.publication, allTables: plan.mode === 'all-tables' } }),
  });

  const errors: string[] = [];
  for (const p of settings.filter((s) => s.severity === 'error')) errors.push(formatSettingsProblems([p]));
  for (const p of privileges) errors.push(`- ${p.message}\n  Run as a superuser: ${p.sql.join(' ')}`);
  for (const m of plan.missing) errors.push(`- source.tables names ${m.table}, which does not exist: ${m.hint}`);
  const warnings = settings.filter((s) => s.severity === 'warning').map((p) => formatSettingsProblems([p]));
  if (errors.length > 0) {
    throw new PermanentError(`the source database is not ready for Lifeboat (${errors.length} problem${errors.length === 1 ? '' : 's'}):\n${errors.join('\n')}`, {
      remedy: 'Fix every problem listed, then start the agent again.',
      details: { settings, privileges, missingTables: plan.missing },
    });
  }
  return { warnings, plan };
}

// ---------------------------------------------------------------------------
// Replica identity

export interface ReplicaIdentityProblem extends TableName {
  readonly identity: 'default' | 'nothing' | 'index';
  /** Why UPDATE/DELETE cannot be published, as a sentence. */
  readonly reason: string;
  /** The three ways out, as statements or config changes. */
  readonly fixes: readonly string[];
}

/**
 * Published tables whose UPDATE and DELETE PostgreSQL refuses (no primary
 * key under the default identity, REPLICA IDENTITY NOTHING, or an identity
 * index that is gone). Their inserts still replicate.
 */
export async function findTablesWithoutReplicaIdentity(client: SqlClient, publication: string): Promise<ReplicaIdentityProblem[]> {
  const res = await client.query<{ schema: string; name: string; ident: 'd' | 'n' | 'i' | 'f'; has_pk: boolean; has_ident_index: boolean }>(
    `SELECT n.nspname AS schema, c.relname AS name, c.relreplident AS ident,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident AND i.indisvalid) AS has_ident_index
       FROM pg_publication_tables pt
       JOIN pg_namespace n ON n.nspname = pt.schemaname
       JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
      WHERE pt.pubname = $1
      ORDER BY 1, 2`,
    [publication],
  );
  const problems: ReplicaIdentityProblem[] = [];
  for (const r of res.rows) {
    let identity: ReplicaIdentityProblem['identity'];
    let reason: string;
    if (r.ident === 'd' && !r.has_pk) {
      identity = 'default';
      reason = 'it has no primary key and the default replica identity';
    } else if (r.ident === 'n') {
      identity = 'nothing';
      reason = 'it has REPLICA IDENTITY NOTHING';
    } else if (r.ident === 'i' && !r.has_ident_index) {
      identity = 'index';
      reason = 'its replica identity index was dropped (or is invalid)';
    } else {
      continue;
    }
    const t = { schema: r.schema, name: r.name };
    problems.push({
      ...t,
      identity,
      reason: `${displayName(t)}: ${reason}, so PostgreSQL refuses UPDATE and DELETE on it while it is published (inserts still replicate).`,
      fixes: [
        `add a primary key: ALTER TABLE ${qualified(t)} ADD PRIMARY KEY (<columns>);`,
        `or log whole old rows: ALTER TABLE ${qualified(t)} REPLICA IDENTITY FULL;`,
        `or stop replicating it: add ${displayName(t)} to source.excludeTables.`,
      ],
    });
  }
  return problems;
}

/** The report for the log and `/status`: each table, why, and what to do. */
export function describeReplicaIdentityProblems(problems: readonly ReplicaIdentityProblem[]): string {
  if (problems.length === 0) return 'every published table has a usable replica identity.';
  return [
    `${problems.length} published table${problems.length === 1 ? ' has' : 's have'} no usable replica identity:`,
    ...problems.map((p) => `- ${p.reason}\n  Fix: ${p.fixes.join('\n       ')}`),
  ].join('\n');
}

// ---------------------------------------------------------------------------
// The slot

export type WalStatus = 'reserved' | 'extended' | 'unreserved' | 'lost';

export interface SlotInfo {
  readonly name: string;
  /** Output plugin; null for a physical slot. */
  readonly plugin: string | null;
  readonly slotType: 'logical' | 'physical';
  /** Database of a logical slot. */
  readonly database: string | null;
  /** The database this client is connected to (a logical slot serves one database). */
  readonly currentDatabase: string;
  readonly temporary: boolean;
  readonly active: boolean;
  readonly activePid: number | null;
  /** Where streaming resumes; undefined when lost. */
  readonly confirmedFlushLsn: Lsn | undefined;
  /** Oldest WAL the slot needs; undefined when lost. */
  readonly restartLsn: Lsn | undefined;
  /** null only when PostgreSQL does not report it. */
  readonly walStatus: WalStatus | null;
  /** Bytes that can still be written before the slot is in danger of being lost; null without max_slot_wal_keep_size. */
  readonly safeWalSizeBytes: number | null;
  /** pg_current_wal_lsn() − restart_lsn: WAL kept on disk for this slot. */
  readonly retainedWalBytes: number | null;
  readonly currentWalLsn: Lsn;
}

/** The slot's state, or undefined when it does not exist. */
export async function inspectSlot(client: SqlClient, slot: string): Promise<SlotInfo | undefined> {
  const res = await client.query<{
    slot_name: string;
    plugin: string | null;
    slot_type: 'logical' | 'physical';
    database: string | null;
    current_database: string;
    temporary: boolean;
    active: boolean;
    active_pid: number | null;
    confirmed_flush_lsn: string | null;
    restart_lsn: string | null;
    wal_status: WalStatus | null;
    safe_wal_size: string | null;
    retained: string | null;
    current_lsn: string;
  }>(
    `SELECT s.slot_name, s.plugin, s.slot_type, s.database, current_database() AS current_database, s.temporary, s.active, s.active_pid,
            s.confirmed_flush_lsn::text, s.restart_lsn::text, s.wal_status, s.safe_wal_size::text,
            (pg_current_wal_lsn() - s.restart_lsn)::text AS retained, pg_current_wal_lsn()::text AS current_lsn
       FROM pg_replication_slots s WHERE s.slot_name = $1`,
    [slot],
  );
  const r = res.rows[0];
  if (!r) return undefined;
  const lsn = (t: string | null) => (t === null ? undefined : parseLsn(t));
  const num = (t: string | null) => (t === null ? null : Number(t));
  return {
    name: r.slot_name,
    plugin: r.plugin,
    slotType: r.slot_type,
    database: r.database,
    currentDatabase: r.current_database,
    temporary: r.temporary,
    active: r.active,
    activePid: r.active_pid,
    confirmedFlushLsn: lsn(r.confirmed_flush_lsn),
    restartLsn: lsn(r.restart_lsn),
    walStatus: r.wal_status,
    safeWalSizeBytes: num(r.safe_wal_size),
    retainedWalBytes: num(r.retained),
    currentWalLsn: parseLsn(r.current_lsn),
  };
}

/** The command that drops the slot and copies everything again. */
export const RESNAPSHOT_COMMAND = 'lifeboat agent --resnapshot';

/** The error for an invalidated slot (wal_status = lost). */
export function slotLostError(slot: string): PermanentError {
  return new PermanentError(
    `replication slot "${slot}" was invalidated (wal_status = lost): PostgreSQL removed WAL it still needed because it exceeded max_slot_wal_keep_size, so changes were lost from the stream.`,
    {
      remedy: `Run \`${RESNAPSHOT_COMMAND}\`: it drops the slot and copies every table again, then streams from the new slot.`,
      details: { slot },
    },
  );
}

/**
 * Why an existing slot cannot be this stream's slot, or undefined when it can:
 * lost, not a pgoutput logical slot, or in another database.
 */
export function slotProblem(info: SlotInfo): PermanentError | undefined {
  if (info.slotType !== 'logical' || info.plugin !== 'pgoutput') {
    return new PermanentError(`replication slot "${info.name}" exists but is a ${info.slotType} slot${info.plugin ? ` of plugin ${info.plugin}` : ''}, not a pgoutput logical slot`, {
      remedy: 'Another tool owns it. Set source.slot to another name (Lifeboat never drops a slot it did not make).',
      details: { slot: info.name, plugin: info.plugin, slotType: info.slotType },
    });
  }
  if (info.database !== info.currentDatabase) {
    return new PermanentError(`replication slot "${info.name}" belongs to database ${info.database}, not ${info.currentDatabase}`, {
      remedy: 'Slot names are cluster-wide: set source.slot to a name unique to this database, or point source.databaseUrl at the right database.',
      details: { slot: info.name, database: info.database },
    });
  }
  if (info.walStatus === 'lost') return slotLostError(info.name);
  return undefined;
}

/** A warning when the slot keeps more WAL than walRetentionWarnBytes (or is about to be lost). */
export function walRetentionWarning(info: SlotInfo, warnBytes: number): string | undefined {
  if (info.walStatus === 'unreserved') {
    return `replication slot "${info.name}" is past max_slot_wal_keep_size (wal_status = unreserved): PostgreSQL invalidates it at the next checkpoint unless the agent catches up.`;
  }
  if (info.retainedWalBytes !== null && info.retainedWalBytes > warnBytes) {
    const safe = info.safeWalSizeBytes === null ? '' : `; ${formatBytes(Math.max(0, info.safeWalSizeBytes))} more and PostgreSQL invalidates it`;
    return `replication slot "${info.name}" retains ${formatBytes(info.retainedWalBytes)} of WAL, above source.walRetentionWarnBytes (${formatBytes(warnBytes)})${safe}.`;
  }
  return undefined;
}

/** Drops the slot (for a restarted snapshot). RetryableError while a walsender still uses it. */
export async function dropSlot(client: SqlClient, slot: string): Promise<boolean> {
  try {
    const r = await client.query<{ dropped: boolean }>(
      'SELECT pg_drop_replication_slot(slot_name) IS NULL AS dropped FROM pg_replication_slots WHERE slot_name = $1',
      [slot],
    );
    return r.rows.length > 0;
  } catch (err) {
    if (sqlState(err) === '55006') {
      throw new RetryableError(`replication slot "${slot}" is in use and cannot be dropped yet`, {
        remedy: 'Another agent (or a lingering walsender of a killed one) still reads it; it ends within wal_sender_timeout.',
        cause: err,
      });
    }
    throw setupError(err, `drop replication slot ${slot}`);
  }
}

// ---------------------------------------------------------------------------
// Heartbeats and sequences

export interface EmittedHeartbeat {
  /** WAL position of the message: what the heartbeat batch stands for once it comes back through the slot. */
  readonly lsn: Lsn;
  /** now() on the source, UTC with microseconds. */
  readonly sourceTime: string;
  /** The message content as written. */
  readonly content: string;
}

/**
 * Writes `{"sourceTime": …, "sequences": […]}` as a non-transactional
 * logical message with prefix `lifeboat-heartbeat`. The time is the server's
 * now(), formatted by the server in the same statement.
 */
export async function emitHeartbeat(client: SqlClient, sequences: readonly SequenceState[]): Promise<EmittedHeartbeat> {
  const seqJson = JSON.stringify(sequences.map((s) => ({ schema: s.schema, name: s.name, lastValue: s.lastValue, isCalled: s.isCalled })));
  const res = await client.query<{ lsn: string; content: string; source_time: string }>(
    `WITH h AS (
       SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS source_time
     ), c AS (
       SELECT source_time, json_build_object('sourceTime', source_time, 'sequences', $2::json)::text AS content FROM h
     )
     SELECT pg_logical_emit_message(false, $1, content)::text AS lsn, content, source_time FROM c`,
    [HEARTBEAT_MESSAGE_PREFIX, seqJson],
  );
  const r = res.rows[0]!;
  return { lsn: parseLsn(r.lsn), sourceTime: r.source_time, content: r.content };
}

// Sequences owned by the tables (serial: deptype 'a'; identity: 'i') or used
// in their column defaults (nextval('…') in pg_attrdef: deptype 'n').
const SEQUENCES_OF_TABLES_SQL = `
  WITH tbl AS (
    SELECT c.oid FROM unnest($1::text[], $2::text[]) AS t(schema, name)
      JOIN pg_namespace n ON n.nspname = t.schema
      JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name
  ), seqs AS (
    SELECT s.oid FROM pg_class s WHERE s.relkind = 'S' AND s.oid IN (
      SELECT d.objid FROM pg_depend d JOIN tbl ON d.refobjid = tbl.oid
       WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
      UNION
      SELECT d.refobjid FROM pg_attrdef ad JOIN tbl ON ad.adrelid = tbl.oid
        JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass)
  )`;

/**
 * Current values of the sequences the published tables own or use as
 * defaults, sorted by name. Read from each sequence itself rather than
 * pg_sequences: pg_sequences shows NULL after setval(s, n, false), where the
 * next value is n, and reporting the start value there would make the
 * standby hand out numbers the source already used.
 * @throws PermanentError naming sequences the role may not read (with the GRANT).
 */
export async function readSequences(client: SqlClient, publishedTables: readonly TableName[]): Promise<SequenceState[]> {
  if (publishedTables.length === 0) return [];
  const found = await client.query<{ schema: string; name: string; can_select: boolean }>(
    `${SEQUENCES_OF_TABLES_SQL}
     SELECT n.nspname AS schema, s.relname AS name, has_sequence_privilege(s.oid, 'SELECT') AS can_select
       FROM seqs JOIN pg_class s ON s.oid = seqs.oid JOIN pg_namespace n ON n.oid = s.relnamespace
      ORDER BY 1, 2`,
    [publishedTables.map((t) => t.schema), publishedTables.map((t) => t.name)],
  );
  if (found.rows.length === 0) return [];
  const hidden = found.rows.filter((r) => !r.can_select);
  if (hidden.length > 0) {
    const role = (await client.query<{ r: string }>('SELECT current_user AS r')).rows[0]!.r;
    throw new PermanentError(`the agent's role may not read ${hidden.length === 1 ? 'sequence' : 'sequences'} ${listNames(hidden)}`, {
      remedy: `Run as the owner or a superuser: ${grantStatements(hidden, ident(role), 'SEQUENCE').join(' ')}`,
      details: { sequences: hidden.map(displayName) },
    });
  }
  // One round trip for all of them.
  const sql = found.rows
    .map((s, i) => `SELECT ${i} AS i, last_value::text AS last_value, is_called FROM ${qualified(s)}`)
    .join(' UNION ALL ');
  const values = await client.query<{ i: number; last_value: string; is_called: boolean }>(sql);
  const byIndex = new Map(values.rows.map((v) => [v.i, v]));
  return found.rows.map((s, i) => {
    const v = byIndex.get(i)!;
    return { schema: s.schema, name: s.name, lastValue: v.last_value, isCalled: v.is_called };
  });
}

// ---------------------------------------------------------------------------
// Errors

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

// Connection exception, operator intervention, insufficient resources, system error.
const RETRYABLE_CLASSES = new Set(['08', '53', '57', '58', '40']);

/** Retryable for connection trouble; permanent (with what to run) for the rest. */
function setupError(err: unknown, doing: string, sqlForSuperuser?: string): Error {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const code = sqlState(err);
  const message = err instanceof Error ? err.message : String(err);
  if (code === undefined || RETRYABLE_CLASSES.has(code.slice(0, 2))) {
    return new RetryableError(`could not ${doing}: ${message}`, { cause: err, details: { sqlstate: code } });
  }
  if (code === '42501') {
    return new PermanentError(`not allowed to ${doing}: ${message}`, {
      remedy: sqlForSuperuser ? `Ask a superuser (or the owner) to run: ${sqlForSuperuser} Then start the agent again.` : 'Grant the agent role the privilege named, then start it again.',
      cause: err,
      details: { sqlstate: code },
    });
  }
  if (code === '55P03') {
    return new RetryableError(`could not ${doing}: a lock was not granted in time (${message})`, {
      remedy: 'A long transaction holds the table; the agent tries again later.',
      cause: err,
      details: { sqlstate: code },
    });
  }
  return new PermanentError(`could not ${doing}: ${message}`, { cause: err, details: { sqlstate: code } });
}

async function inTransaction(client: pg.ClientBase, doing: string, body: () => Promise<void>): Promise<void> {
  try {
    await client.query('BEGIN');
    await body();
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw setupError(err, doing);
  }
}

