// Fencing the LOCAL database (the replicated one, source.databaseUrl): while
// the local side may not hold the writer lease, the app must not write there.
//
//   fenceLocalDatabase   in ONE read-write transaction:
//                          ALTER DATABASE db SET default_transaction_read_only = on
//                          [REVOKE CONNECT ON DATABASE db FROM <app role> (and PUBLIC, below)]
//                          the record in lifeboat.fence
//                        then: terminate every other client session that started
//                        before that commit, idle ones too
//   liftLocalFence       the opposite; refuses unless the caller shows a lease
//                        that lets the local side write
//   readLocalFence       what PostgreSQL enforces, and the record
//
// What default_transaction_read_only does (measured on PostgreSQL 15):
// - Every NEW session of any role, superusers included, starts with it on, and
//   then INSERT/UPDATE/DELETE, DDL, GRANT/REVOKE, ALTER DATABASE, nextval() and
//   setval(), even CREATE TEMP TABLE, fail with SQLSTATE 25006 ("cannot execute
//   … in a read-only transaction").
// - Still works: SELECT, pg_logical_emit_message (transactional or not, so the
//   heartbeats and the takeover marker need no override), txid_current(),
//   pg_replication_slot_advance, and walsender commands (CREATE_REPLICATION_SLOT,
//   START_REPLICATION).
// - It is a default, not a lock: a session can SET default_transaction_read_only
//   = off or BEGIN READ WRITE. Apps do not do that by accident, but one that does
//   can still write; the hard barrier for the app role is revoking CONNECT
//   (source.appRole). The agent's own sessions override it on purpose: the
//   statements here run in BEGIN READ WRITE, and the agent's main session
//   connects with `-c default_transaction_read_only=off` (DDL-capture setup,
//   publication changes).
// - Sessions that exist already keep the setting they started with: hence the
//   terminations, after the commit, so a reconnecting app starts read-only.
//   pg_terminate_backend(pid, timeout) waits until the backend is gone, so a
//   commit it was in the middle of is in the WAL before anything the agent
//   writes afterwards (the takeover marker): every acknowledged write lands
//   before the marker.
//
// The record: lifeboat.fence is UNLOGGED on purpose. A logged table in the
// lifeboat schema would be published by a FOR ALL TABLES publication and sent
// to the target, which has no such table (DDL capture leaves the lifeboat
// schema out) and would halt the stream right before the takeover marker.
// Unlogged tables are never published. The price: a PostgreSQL crash empties
// it. The truth is the database setting in pg_db_role_setting, which is
// durable; readLocalFence reports a fence whose record was lost as fenced.
//
// Privileges: ALTER DATABASE … SET and REVOKE CONNECT need the database owner
// or a superuser; terminating other roles' sessions needs pg_signal_backend
// (a superuser's sessions only a superuser can end). checkFencePrivileges
// lists what is missing, with the statement that fixes it.
import pg from 'pg';
import { z } from 'zod';
import { PermanentError, RetryableError, ValidationError, describeError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { iso, mustSelfFence, type Lease, type LeaseTiming } from '../core/writer-lease.ts';

/** The client type every function here takes: a pg.Client or a pooled client. */
export type SqlClient = Pick<pg.ClientBase, 'query'>;

/** Schema-qualified name of the fence record (unlogged: see the header). */
export const FENCE_TABLE = 'lifeboat.fence';

/** Stands for PUBLIC in the list of roles whose CONNECT a fence revoked. */
export const PUBLIC_GRANTEE = 'PUBLIC';

/** Per session: how long pg_terminate_backend waits for the backend to exit. */
export const DEFAULT_TERMINATE_TIMEOUT_MS = 5_000;

// A backend that was starting while the fence committed may have read the old
// settings yet show up in pg_stat_activity only a moment later; passes repeat
// the sweep for those.
const TERMINATION_PASSES = 3;
const PASS_PAUSE_MS = 100;

const CREATE_FENCE_TABLE = `CREATE UNLOGGED TABLE IF NOT EXISTS lifeboat.fence (
   id boolean PRIMARY KEY DEFAULT true CHECK (id),
   fenced boolean NOT NULL,
   reason text NOT NULL,
   at timestamptz NOT NULL,
   epoch bigint,
   revoked_connect text[] NOT NULL DEFAULT '{}',
   lifted_at timestamptz,
   lift_reason text
 )`;

export interface FenceLocalOptions {
  /** The replicated database; the client must be connected to it (the record lives there). */
  readonly database: string;
  /** The app's login role (config source.appRole). */
  readonly appRole?: string;
  /** Revoke CONNECT from appRole (and from PUBLIC when that is where its CONNECT comes from). */
  readonly revokeConnect?: boolean;
  /** Why, as a sentence: recorded and logged. */
  readonly reason: string;
  /** The lease epoch the local side held last, recorded with the fence. */
  readonly epoch?: number | null;
  /** Client sessions of the agent itself that must keep working (its main session). */
  readonly sparePids?: readonly number[];
  readonly terminateTimeoutMs?: number;
  readonly logger: Logger;
}

export interface SessionInfo {
  readonly pid: number;
  readonly user: string | null;
  readonly applicationName: string | null;
  readonly state: string | null;
  readonly backendStart: string | null;
}

export interface UnterminatedSession extends SessionInfo {
  readonly problem: string;
}

export interface FenceRecord {
  readonly fenced: boolean;
  readonly reason: string;
  readonly at: string;
  readonly epoch: number | null;
  /** Roles whose CONNECT the fence revoked ('PUBLIC' for PUBLIC); the lift grants it back. */
  readonly revokedConnect: readonly string[];
  readonly liftedAt: string | null;
  readonly liftReason: string | null;
}

export interface FenceResult {
  readonly database: string;
  /** The database was fenced already (this call changed the setting in no way). */
  readonly alreadyFenced: boolean;
  readonly terminated: readonly SessionInfo[];
  readonly notTerminated: readonly UnterminatedSession[];
  /** Roles whose CONNECT this call revoked. */
  readonly revokedConnect: readonly string[];
  /** With revokeConnect: whether the app role can still connect (through another grant, or as superuser/owner). */
  readonly appRoleCanConnect: boolean | null;
  /** Problems that did not stop the fence (named role missing, a session that would not end). */
  readonly problems: readonly string[];
  readonly record: FenceRecord;
  readonly sentence: string;
}

export interface LocalFenceState {
  readonly database: string;
  /** What PostgreSQL enforces: new sessions start read-only (the database setting). */
  readonly fenced: boolean;
  /** The record in lifeboat.fence; undefined when there is none (never fenced, or lost in a crash). */
  readonly record: FenceRecord | undefined;
  readonly sentence: string;
}

export interface LiftLocalFenceOptions {
  readonly database: string;
  /** The app's login role: CONNECT is given back to it if the record that named the revoked roles was lost. */
  readonly appRole?: string;
  /** The lease the local side holds, as last confirmed by its own write: the proof that it may write. */
  readonly lease: Lease;
  readonly timing: LeaseTiming;
  /** The holder's clock now (ms since the Unix epoch); default Date.now(). */
  readonly now?: number;
  readonly sparePids?: readonly number[];
  readonly terminateTimeoutMs?: number;
  readonly logger: Logger;
}

export interface LiftResult {
  readonly database: string;
  /** The database was fenced and is not any more. */
  readonly lifted: boolean;
  /** Roles CONNECT was granted back to. */
  readonly regranted: readonly string[];
  /** Sessions opened while fenced (they started read-only and would stay so): terminated so they reconnect writable. */
  readonly terminated: readonly SessionInfo[];
  readonly notTerminated: readonly UnterminatedSession[];
  readonly problems: readonly string[];
  readonly sentence: string;
}

const ident = (name: string) => pg.escapeIdentifier(name);
const grantee = (role: string) => (role === PUBLIC_GRANTEE ? 'PUBLIC' : ident(role));

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

// Connection exception, operator intervention (shutdown), insufficient
// resources, system error, lock timeouts, serialization failures and lost
// sockets: the same statement may succeed later.
function isTransientSqlError(err: unknown): boolean {
  const code = sqlState(err);
  if (code !== undefined && /^[0-9A-Z]{5}$/.test(code)) {
    return /^(08|53|57P|58)/.test(code) || code === '40001' || code === '40P01' || code === '55P03';
  }
  if (code !== undefined) return code.startsWith('E'); // ECONNREFUSED, ECONNRESET, ETIMEDOUT …
  return err instanceof Error && /Connection terminated|connection timeout|not queryable/i.test(err.message);
}

function fenceError(what: string, err: unknown, database: string): Error {
  if (err instanceof PermanentError || err instanceof RetryableError) return err;
  const message = `could not ${what} on database ${database}: ${describeError(err)}`;
  if (isTransientSqlError(err)) return new RetryableError(message, { cause: err, details: { database, sqlState: sqlState(err) } });
  const remedy =
    sqlState(err) === '42501'
      ? `Make the agent's role the owner of the database (ALTER DATABASE ${ident(database)} OWNER TO <agent role>) or a superuser, and GRANT pg_signal_backend TO <agent role>.`
      : undefined;
  return new PermanentError(message, { cause: err, details: { database, sqlState: sqlState(err) }, ...(remedy && { remedy }) });
}

async function inReadWriteTransaction<T>(client: SqlClient, fn: () => Promise<T>): Promise<T> {
  // READ WRITE explicitly: the fence turns the session default off for every new session, this one's too.
  await client.query('BEGIN READ WRITE');
  try {
    const out = await fn();
    await client.query('COMMIT');
    return out;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

async function checkConnectedTo(client: SqlClient, database: string): Promise<void> {
  const res = await client.query<{ db: string }>('SELECT current_database() AS db');
  const current = res.rows[0]?.db;
  if (current !== database) {
    throw new ValidationError(`the fence client is connected to database ${JSON.stringify(current)}, not to ${JSON.stringify(database)}`, {
      remedy: 'Connect to the replicated database itself (source.databaseUrl): the fence record lives in it.',
    });
  }
}

/** Whether the database setting makes new sessions read-only (what PostgreSQL enforces). */
async function readOnlySettingOn(client: SqlClient, database: string): Promise<boolean> {
  const res = await client.query<{ on: boolean }>(
    `SELECT EXISTS (
       SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) AS c(setting)
        WHERE d.datname = $1 AND s.setrole = 0
          AND split_part(c.setting, '=', 1) = 'default_transaction_read_only'
          AND lower(split_part(c.setting, '=', 2)) IN ('on', 'true', 'yes', '1')) AS on`,
    [database],
  );
  return res.rows[0]?.on === true;
}

const fenceRowSchema = z.object({
  fenced: z.boolean(),
  reason: z.string(),
  at: z.date(),
  epoch: z.string().regex(/^\d+$/).nullable(),
  revoked_connect: z.array(z.string()),
  lifted_at: z.date().nullable(),
  lift_reason: z.string().nullable(),
});

async function readRecord(client: SqlClient): Promise<FenceRecord | undefined> {
  const exists = await client.query<{ t: string | null }>(`SELECT to_regclass('lifeboat.fence')::text AS t`);
  if (!exists.rows[0]?.t) return undefined;
  const res = await client.query('SELECT fenced, reason, at, epoch::text AS epoch, revoked_connect, lifted_at, lift_reason FROM lifeboat.fence WHERE id');
  if (res.rows.length === 0) return undefined;
  const parsed = fenceRowSchema.safeParse(res.rows[0]);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ValidationError(`${FENCE_TABLE} holds a row Lifeboat did not write: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`, {
      remedy: `Inspect ${FENCE_TABLE}; it belongs to the agent. Delete the row only after checking the database's default_transaction_read_only setting by hand.`,
    });
  }
  const r = parsed.data;
  return {
    fenced: r.fenced,
    reason: r.reason,
    at: r.at.toISOString(),
    epoch: r.epoch === null ? null : Number(r.epoch),
    revokedConnect: r.revoked_connect,
    liftedAt: r.lifted_at?.toISOString() ?? null,
    liftReason: r.lift_reason,
  };
}

/** Whether the database is fenced (the setting PostgreSQL enforces) and the record of why. */
export async function readLocalFence(client: SqlClient, database?: string): Promise<LocalFenceState> {
  const db = database ?? (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
  const fenced = await readOnlySettingOn(client, db);
  const record = await readRecord(client);
  let sentence: string;
  if (fenced && record?.fenced) sentence = `database ${db} is fenced since ${record.at}: ${record.reason}`;
  else if (fenced) sentence = `database ${db} is fenced (new sessions start read-only), but its record in ${FENCE_TABLE} is missing, so the reason is unknown (lost in a crash, or set by hand)`;
  else if (record?.fenced) sentence = `database ${db} is NOT fenced although ${FENCE_TABLE} says it was fenced at ${record.at} (${record.reason}): someone reset default_transaction_read_only by hand`;
  else sentence = `database ${db} is not fenced`;
  return { database: db, fenced, record, sentence };
}

async function roleExists(client: SqlClient, role: string): Promise<boolean> {
  const res = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
  return res.rows.length > 0;
}

/**
 * Revokes CONNECT from the app role. Revoking from the role alone does nothing
 * when its CONNECT comes from PUBLIC, which is PostgreSQL's default for every
 * database; then PUBLIC's CONNECT is revoked too. That also locks out every
 * other role without a grant of its own (superusers and the owner keep it;
 * the agent is one of them, or it could not revoke at all). The lift grants
 * back exactly what was revoked.
 */
async function revokeConnect(client: SqlClient, database: string, appRole: string): Promise<{ revoked: string[]; canConnect: boolean }> {
  const grants = await client.query<{ direct: boolean; public: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                     WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2) AND a.privilege_type = 'CONNECT') AS direct,
            EXISTS (SELECT 1 FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                     WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT') AS public
       FROM pg_database d WHERE d.datname = $1`,
    [database, appRole],
  );
  const revoked: string[] = [];
  if (grants.rows[0]?.direct) {
    await client.query(`REVOKE CONNECT ON DATABASE ${ident(database)} FROM ${ident(appRole)}`);
    revoked.push(appRole);
  }
  const canConnect = async () =>
    (await client.query<{ ok: boolean }>(`SELECT has_database_privilege($2, $1, 'CONNECT') AS ok`, [database, appRole])).rows[0]?.ok === true;
  if ((await canConnect()) && grants.rows[0]?.public) {
    await client.query(`REVOKE CONNECT ON DATABASE ${ident(database)} FROM PUBLIC`);
    revoked.push(PUBLIC_GRANTEE);
  }
  return { revoked, canConnect: await canConnect() };
}

interface ActivityRow {
  pid: number;
  usename: string | null;
  application_name: string | null;
  state: string | null;
  backend_start: Date | null;
}

const sessionOf = (r: ActivityRow): SessionInfo => ({
  pid: r.pid,
  user: r.usename,
  applicationName: r.application_name,
  state: r.state,
  backendStart: r.backend_start?.toISOString() ?? null,
});

/**
 * Terminates every client session on `database` that started before
 * `startedBefore` (server time, text), except this one and `sparePids`.
 *
 * Only backend_type 'client backend': walsenders are left alone. The agent's
 * own replication connection is one, and it must keep reading the WAL so the
 * agent can publish everything up to the takeover marker; a walsender serves
 * replication, and needs the REPLICATION attribute, which an app role has no
 * business holding. Background workers and autovacuum are not sessions.
 */
async function terminateSessions(
  client: SqlClient,
  database: string,
  startedBefore: string,
  sparePids: readonly number[],
  timeoutMs: number,
): Promise<{ terminated: SessionInfo[]; notTerminated: UnterminatedSession[] }> {
  const terminated: SessionInfo[] = [];
  const failed = new Map<number, UnterminatedSession>();
  for (let pass = 1; pass <= TERMINATION_PASSES; pass++) {
    const res = await client.query<ActivityRow>(
      `SELECT pid, usename::text AS usename, application_name, state, backend_start
         FROM pg_stat_activity
        WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()
          AND NOT (pid = ANY ($2::int[])) AND backend_start < $3::timestamptz
        ORDER BY pid`,
      [database, [...sparePids, ...failed.keys()], startedBefore],
    );
    if (res.rows.length === 0 && pass > 1) break;
    for (const row of res.rows) {
      const session = sessionOf(row);
      try {
        const r = await client.query<{ ok: boolean }>('SELECT pg_terminate_backend($1::int, $2::bigint) AS ok', [row.pid, timeoutMs]);
        if (r.rows[0]?.ok) {
          terminated.push(session);
          continue;
        }
        // false: it was gone already, or did not exit within the timeout.
        const still = await client.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [row.pid]);
        if (still.rows.length === 0) terminated.push(session);
        else failed.set(row.pid, { ...session, problem: `did not exit within ${timeoutMs} ms of pg_terminate_backend` });
      } catch (err) {
        if (isTransientSqlError(err)) throw err;
        failed.set(row.pid, { ...session, problem: describeError(err) });
      }
    }
    if (pass < TERMINATION_PASSES) await new Promise((r) => setTimeout(r, PASS_PAUSE_MS));
  }
  return { terminated, notTerminated: [...failed.values()] };
}

function describeSessions(n: number): string {
  return `${n} session${n === 1 ? '' : 's'}`;
}

/**
 * Fences the local database: new sessions of every role start read-only,
 * every other client session that existed is terminated, and optionally the
 * app role loses CONNECT. Idempotent: fencing a fenced database keeps its
 * first record (when and why writes stopped) and terminates again whatever
 * started before this call.
 * @throws RetryableError when PostgreSQL is unreachable, PermanentError when
 *   the agent's role may not do it (with the statements that fix that).
 */
export async function fenceLocalDatabase(client: SqlClient, opts: FenceLocalOptions): Promise<FenceResult> {
  const { database, logger } = opts;
  const problems: string[] = [];
  try {
    await checkConnectedTo(client, database);
    let appRole = opts.appRole;
    if (opts.revokeConnect && appRole === undefined) problems.push('revokeConnect was asked for without an app role (set source.appRole); CONNECT was not revoked');
    if (opts.revokeConnect && appRole !== undefined && !(await roleExists(client, appRole))) {
      // Fence anyway: a wrong role name must not keep the database writable.
      problems.push(`the app role ${appRole} does not exist, so CONNECT was not revoked from it; fix source.appRole`);
      appRole = undefined;
    }
    const committed = await inReadWriteTransaction(client, async () => {
      const alreadyFenced = await readOnlySettingOn(client, database);
      await client.query('CREATE SCHEMA IF NOT EXISTS lifeboat');
      await client.query(CREATE_FENCE_TABLE);
      await client.query(`ALTER DATABASE ${ident(database)} SET default_transaction_read_only = on`);
      let revoked: string[] = [];
      let appRoleCanConnect: boolean | null = null;
      if (opts.revokeConnect && appRole !== undefined) {
        const r = await revokeConnect(client, database, appRole);
        revoked = r.revoked;
        appRoleCanConnect = r.canConnect;
      }
      const row = await client.query(
        `INSERT INTO lifeboat.fence AS f (id, fenced, reason, at, epoch, revoked_connect)
         VALUES (true, true, $1, now(), $2, $3::text[])
         ON CONFLICT (id) DO UPDATE SET
           -- Already fenced: keep when and why writes stopped; remember every role to give CONNECT back to.
           reason = CASE WHEN f.fenced THEN f.reason ELSE EXCLUDED.reason END,
           at = CASE WHEN f.fenced THEN f.at ELSE EXCLUDED.at END,
           epoch = CASE WHEN f.fenced THEN f.epoch ELSE EXCLUDED.epoch END,
           revoked_connect = CASE WHEN f.fenced
                                  THEN ARRAY(SELECT r FROM unnest(f.revoked_connect || EXCLUDED.revoked_connect) WITH ORDINALITY AS u(r, i)
                                              GROUP BY r ORDER BY min(i))
                                  ELSE EXCLUDED.revoked_connect END,
           fenced = true, lifted_at = NULL, lift_reason = NULL
         RETURNING 1`,
        [opts.reason, opts.epoch ?? null, revoked],
      );
      if (row.rows.length !== 1) throw new PermanentError(`could not record the fence in ${FENCE_TABLE}`);
      return { alreadyFenced, revoked, appRoleCanConnect };
    });
    const commitAt = (await client.query<{ t: string }>('SELECT clock_timestamp()::text AS t')).rows[0]!.t;
    const { terminated, notTerminated } = await terminateSessions(client, database, commitAt, opts.sparePids ?? [], opts.terminateTimeoutMs ?? DEFAULT_TERMINATE_TIMEOUT_MS);
    for (const s of notTerminated) problems.push(`session ${s.pid} (user ${s.user ?? '?'}, application ${s.applicationName || '-'}) could not be terminated: ${s.problem}`);
    if (committed.appRoleCanConnect === true) {
      problems.push(`the app role ${appRole} can still connect after revoking CONNECT (it is a superuser or the owner, or a role it belongs to has CONNECT)`);
    }
    const record = (await readRecord(client))!;
    const parts = [
      committed.alreadyFenced ? `database ${database} was already fenced (since ${record.at})` : `fenced database ${database}: new sessions of every role start read-only`,
      `terminated ${describeSessions(terminated.length)}`,
      ...(committed.revoked.length > 0 ? [`revoked CONNECT from ${committed.revoked.join(' and ')}`] : []),
    ];
    const sentence = `${parts.join('; ')}, because ${opts.reason}`;
    logger.notice(sentence, {
      database,
      terminated: terminated.map((s) => ({ pid: s.pid, user: s.user, applicationName: s.applicationName })),
      revokedConnect: committed.revoked,
      epoch: opts.epoch ?? null,
    });
    for (const p of problems) logger.error(`fence of ${database}: ${p}`);
    return {
      database,
      alreadyFenced: committed.alreadyFenced,
      terminated,
      notTerminated,
      revokedConnect: committed.revoked,
      appRoleCanConnect: committed.appRoleCanConnect,
      problems,
      record,
      sentence,
    };
  } catch (err) {
    throw fenceError('fence the database', err, database);
  }
}

/**
 * Lifts the fence, only for a side that may write: `lease` must be held by
 * local, not released, with no takeover pending and its self-fence deadline
 * ahead (core/writer-lease.ts mustSelfFence), and not older than the epoch the
 * fence recorded. Gives CONNECT back to the roles the fence revoked it from,
 * and terminates the sessions opened while fenced (they started read-only and
 * would stay read-only). Does nothing on a database that is not fenced.
 * @throws PermanentError when the lease does not allow writing.
 */
export async function liftLocalFence(client: SqlClient, opts: LiftLocalFenceOptions): Promise<LiftResult> {
  const { database, lease, logger } = opts;
  const now = opts.now ?? Date.now();
  const verdict = mustSelfFence(lease, 'local', now, opts.timing);
  if (verdict.fence) {
    throw new PermanentError(`refusing to lift the fence of database ${database}: ${verdict.reason}`, {
      remedy: 'Only an agent that holds a valid writer lease lifts the fence; after a failover that is `lifeboat failback`.',
      details: { epoch: lease.epoch, holder: lease.holder, at: iso(now) },
    });
  }
  try {
    await checkConnectedTo(client, database);
    const problems: string[] = [];
    const done = await inReadWriteTransaction(client, async () => {
      const fenced = await readOnlySettingOn(client, database);
      const record = await readRecord(client);
      if (!fenced && !record?.fenced) return undefined;
      if (record?.epoch != null && record.epoch > lease.epoch) {
        throw new PermanentError(
          `refusing to lift the fence of database ${database}: it was fenced at epoch ${record.epoch}, after the lease's epoch ${lease.epoch}`,
          { remedy: 'A lease older than the fence cannot be the one that allows writing; acquire the lease again.' },
        );
      }
      await client.query(`ALTER DATABASE ${ident(database)} RESET default_transaction_read_only`);
      let roles: string[] = [...(record?.fenced ? record.revokedConnect : [])];
      if (record === undefined && opts.appRole !== undefined) {
        // The record was lost (crash): give CONNECT back to the app role at least, and say so.
        roles = [opts.appRole];
        problems.push(`the fence record was lost, so it is unknown whether PUBLIC's CONNECT was revoked; CONNECT was granted to ${opts.appRole} only`);
      }
      const regranted: string[] = [];
      for (const role of roles) {
        if (role !== PUBLIC_GRANTEE && !(await roleExists(client, role))) {
          problems.push(`role ${role} no longer exists, so CONNECT was not granted back to it`);
          continue;
        }
        await client.query(`GRANT CONNECT ON DATABASE ${ident(database)} TO ${grantee(role)}`);
        regranted.push(role);
      }
      await client.query(CREATE_FENCE_TABLE);
      await client.query(
        `INSERT INTO lifeboat.fence AS f (id, fenced, reason, at, epoch, revoked_connect, lifted_at, lift_reason)
         VALUES (true, false, 'fence record lost; lifted', now(), $1, '{}', now(), $2)
         ON CONFLICT (id) DO UPDATE SET fenced = false, revoked_connect = '{}', lifted_at = now(), lift_reason = EXCLUDED.lift_reason`,
        [lease.epoch, `local holds the lease at epoch ${lease.epoch}`],
      );
      return { regranted, fencedAt: record?.at };
    });
    if (done === undefined) {
      const sentence = `database ${database} is not fenced; nothing to lift`;
      logger.info(sentence);
      return { database, lifted: false, regranted: [], terminated: [], notTerminated: [], problems, sentence };
    }
    const commitAt = (await client.query<{ t: string }>('SELECT clock_timestamp()::text AS t')).rows[0]!.t;
    const { terminated, notTerminated } = await terminateSessions(client, database, commitAt, opts.sparePids ?? [], opts.terminateTimeoutMs ?? DEFAULT_TERMINATE_TIMEOUT_MS);
    for (const s of notTerminated) problems.push(`session ${s.pid} opened while fenced could not be terminated and stays read-only: ${s.problem}`);
    const sentence =
      `lifted the fence of database ${database}${done.fencedAt ? ` (fenced since ${done.fencedAt})` : ''} because local holds the lease at epoch ${lease.epoch}` +
      `${done.regranted.length > 0 ? `; granted CONNECT back to ${done.regranted.join(' and ')}` : ''}` +
      `; terminated ${describeSessions(terminated.length)} opened while fenced so they reconnect writable`;
    logger.notice(sentence, { database, epoch: lease.epoch, regranted: done.regranted, terminated: terminated.map((s) => s.pid) });
    for (const p of problems) logger.error(`lifting the fence of ${database}: ${p}`);
    return { database, lifted: true, regranted: done.regranted, terminated, notTerminated, problems, sentence };
  } catch (err) {
    throw fenceError('lift the fence', err, database);
  }
}

/**
 * What the agent's role lacks to fence the database, each with the statement
 * that fixes it; empty when it can. Checked at start: an agent that holds the
 * writer lease but cannot fence could leave two writers after a failover.
 */
export async function checkFencePrivileges(client: SqlClient, opts: { readonly database: string; readonly appRole?: string }): Promise<string[]> {
  const res = await client.query<{ role: string; superuser: boolean; owner: boolean; signal: boolean }>(
    `SELECT current_user::text AS role, r.rolsuper AS superuser,
            pg_has_role(current_user, d.datdba, 'MEMBER') AS owner,
            pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal
       FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = $1`,
    [opts.database],
  );
  const r = res.rows[0];
  if (!r) return [`database ${opts.database} does not exist`];
  const problems: string[] = [];
  if (!r.superuser && !r.owner) {
    problems.push(
      `role ${r.role} cannot make database ${opts.database} read-only (ALTER DATABASE … SET needs the owner or a superuser). Run: ALTER DATABASE ${ident(opts.database)} OWNER TO ${ident(r.role)};`,
    );
  }
  if (!r.superuser && !r.signal) {
    problems.push(`role ${r.role} cannot terminate other roles' sessions. Run: GRANT pg_signal_backend TO ${ident(r.role)};`);
  }
  if (opts.appRole !== undefined) {
    if (!(await roleExists(client, opts.appRole))) {
      problems.push(`source.appRole names role ${opts.appRole}, which does not exist on the local database; fix source.appRole`);
    } else {
      const app = await client.query<{ superuser: boolean }>('SELECT rolsuper AS superuser FROM pg_roles WHERE rolname = $1', [opts.appRole]);
      if (app.rows[0]?.superuser) problems.push(`the app role ${opts.appRole} is a superuser: revoking CONNECT cannot keep it out, and it may override read-only; give the app an ordinary role`);
    }
  }
  return problems;
}
