// The cloud target's side of failover and failback (issue #5): the SQL that
// the runner executes for the controller's steps that act on the target
// database (core/failover-controller.ts):
//
//   set-sequences        advanceSequences       sequences past every value in use, plus a gap
//   make-cloud-writable  setAppWriteAccess      the app role may write (data-layer gate)
//   (setup, local mode)  prepareTargetRoles     the app role is read-only: the state before any failover
//   fence-cloud          fenceCloudTarget       epoch E + 1 into the target, then the app role read-only
//   resume-forward-…     rebaseStreamWatermark  the watermark moves onto the new slot's chain
//   (observations)       readControlObservations
//
// The gate is privileges, not the session default: `default_transaction_read_only`
// is set for the app role too (a clear "read-only transaction" error for a
// well-behaved app), but anyone can SET it off, so INSERT, UPDATE, DELETE and
// TRUNCATE on every table of the replicated schemas, and USAGE/UPDATE (nextval)
// on their sequences, are revoked from the app role while the cloud must not
// write. After revoking, the role's effective privileges are checked with
// has_table_privilege: a grant to PUBLIC or through another role would leave
// a second writer, so that is a PermanentError naming the tables.
//
// Concurrency: every writing function here takes one advisory transaction lock
// (CONTROL_LOCK_KEY), so two runners (or a retry racing the first attempt)
// never interleave GRANTs; and it locks the stream_state rows FOR UPDATE, the
// same lock every apply transaction and setFencingEpoch take, so a grant and a
// new fencing epoch are never decided on a stale read.
//
// Every function takes a dedicated client (not a Pool): it runs BEGIN … COMMIT.

import pg from 'pg';
import { z } from 'zod';
import { STREAM_ID_PATTERN } from '../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import { type Logger, createLogger } from '../core/log.ts';
import { type Lsn, MAX_LSN, formatLsn, parseLsn } from '../core/lsn.ts';
import { classifyApplyError, readStreamState } from './apply-engine.ts';
import { LIFEBOAT_SCHEMA, quoteIdent } from './apply-sql.ts';

export type ControlClient = Pick<pg.ClientBase, 'query'>;

/** Key for pg_advisory_xact_lock around control actions (arbitrary, fixed; the migration lock is …30). */
const CONTROL_LOCK_KEY = 0x6c6966656231n;

/** How long pg_terminate_backend waits for each app session to exit. */
const TERMINATE_WAIT_MS = 5000;

const TABLE_WRITES = 'INSERT, UPDATE, DELETE, TRUNCATE';
/** nextval needs USAGE or UPDATE; setval needs UPDATE; SELECT (currval, reading last_value) stays. */
const SEQUENCE_WRITES = 'USAGE, UPDATE';

// ---------------------------------------------------------------------------
// Options (validated at the edge)

const identifier = (what: string) =>
  z
    .string()
    .min(1, `${what} must not be empty`)
    .refine((s) => !s.includes('\0') && Buffer.byteLength(s, 'utf8') <= 63, `${what} must be a PostgreSQL name: at most 63 bytes, no NUL`);
const streamId = z.string().regex(STREAM_ID_PATTERN, 'stream id must match [a-z0-9][a-z0-9_-]{0,62}');
const epochNumber = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const actor = z.string().trim().min(1).default('failover');
const logger = z.custom<Logger>((v) => typeof v === 'object' && v !== null && typeof (v as Logger).child === 'function').optional();

const accessOptions = z.strictObject({
  stream: streamId,
  appRole: identifier('appRole'),
  applyRole: identifier('applyRole').optional(),
  writable: z.boolean(),
  epoch: epochNumber,
  schemas: z.array(identifier('schema')).min(1).optional(),
  actor,
  logger,
});
const prepareOptions = accessOptions.omit({ writable: true, epoch: true }).extend({ actor: z.string().trim().min(1).default('setup') });
const fenceOptions = accessOptions.omit({ writable: true }).extend({ epoch: epochNumber.min(1), actor: z.string().trim().min(1).default('failback') });
const sequenceOptions = z.strictObject({
  stream: streamId,
  epoch: epochNumber.min(1),
  gap: z.union([z.bigint().min(0n), z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)]).transform((g) => BigInt(g)),
  excludeSchemas: z.array(identifier('schema')).default([LIFEBOAT_SCHEMA]),
  actor,
  logger,
});
const rebaseOptions = z.strictObject({
  stream: streamId,
  lsn: z.bigint().min(1n).max(MAX_LSN),
  epoch: epochNumber.min(1),
  reason: z.string().trim().min(1, 'reason must not be empty (it is audited)'),
  actor: z.string().trim().min(1).default('failback'),
  logger,
});

function parseOptions<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`).join('; ');
  throw new ValidationError(`${what}: invalid options (${problems})`, { details: { issues: parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) } });
}

// ---------------------------------------------------------------------------
// Results

export interface AppWriteAccessOptions {
  /** The stream whose fencing epoch guards this target (the audit rows carry it). */
  readonly stream: string;
  readonly appRole: string;
  /** The role that creates replicated tables (default: the connected role); its future tables get the same grants. */
  readonly applyRole?: string;
  readonly writable: boolean;
  /** The epoch this change is made at. Writable requires every stream's fencing epoch on the target to be exactly this. */
  readonly epoch: number;
  /** Default: every non-system schema except `lifeboat`. */
  readonly schemas?: readonly string[];
  readonly actor?: string;
  readonly logger?: Logger;
}

export interface AppWriteAccessResult {
  readonly appRole: string;
  readonly applyRole: string;
  readonly database: string;
  readonly writable: boolean;
  readonly epoch: number;
  readonly schemas: readonly string[];
  /** Tables, views and foreign tables in those schemas. */
  readonly tables: number;
  readonly sequences: number;
  /** The app role's sessions in this database that were ended (after the commit). */
  readonly terminatedSessions: number;
  /** Writable only: tables the app role still cannot INSERT into (not owned by the apply role); logged as a warning. */
  readonly notWritable: readonly string[];
}

export interface FenceResult {
  /** The fencing epoch in force afterwards (never lowered). */
  readonly epoch: number;
  readonly previousEpoch: number;
  readonly access: AppWriteAccessResult;
}

export interface SequenceAdvance {
  readonly schema: string;
  readonly name: string;
  /** The last value the sequence had handed out (start − increment when it never handed one out). */
  readonly from: bigint;
  /** The highest (lowest, for a descending sequence) value in a column that takes its values from it; null when none has rows. */
  readonly ownedMax: bigint | null;
  /** The new last value (is_called = true): the next nextval returns to + increment. */
  readonly to: bigint;
}

export interface ControlObservations {
  /** The stream's applied watermark W on the target; null until the initial copy completes. */
  readonly appliedLsn: bigint | null;
  /**
   * When the last batch that moved the watermark committed, by the TARGET's
   * clock: stream_state.applied_at is set by every applied changes,
   * heartbeat and marker batch and by snapshot completion, not by duplicates,
   * stale batches or single snapshot chunks. An idle agent sends a heartbeat
   * every few seconds, so this is the agent's latest proof of life, but a
   * backlog applied late also refreshes it.
   */
  readonly lastAppliedAt: Date | null;
  readonly fencingEpoch: number;
  readonly halted: boolean;
  readonly haltReason: string | null;
}

export interface RebaseResult {
  readonly changed: boolean;
  readonly watermarkBefore: Lsn | null;
  readonly watermark: Lsn;
}

// ---------------------------------------------------------------------------
// Shared pieces

interface RoleInfo {
  readonly oid: string;
  readonly name: string;
  readonly superuser: boolean;
}

interface StreamEpochRow {
  stream: string;
  epoch: string;
}

function controlRemedy(sqlstate: string | undefined): string {
  if (sqlstate === '42501') {
    return (
      'The role Lifeboat connects as lacks a privilege for this step: it needs CREATEROLE (ALTER ROLE … IN DATABASE), ' +
      'ownership of the replicated tables or membership in the apply role (GRANT, ALTER DEFAULT PRIVILEGES), and pg_signal_backend ' +
      '(ending the app role\'s sessions). On Cloud SQL use the apply role, a member of cloudsqlsuperuser. Then run the step again.'
    );
  }
  return 'Fix the cause on the target database, then run the step again (repeating it is safe).';
}

/** Retryable stays retryable (connection loss, serialization failure…); anything else becomes a PermanentError with a control remedy. */
function classifyControlError(err: unknown, what: string): RetryableError | PermanentError {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const classified = classifyApplyError(err);
  if (classified instanceof RetryableError) return new RetryableError(`${what}: ${classified.message}`, { details: classified.details, cause: err });
  const sqlstate = typeof classified.details.sqlstate === 'string' ? classified.details.sqlstate : undefined;
  const message = err instanceof Error ? err.message : String(err);
  return new PermanentError(`${what} failed: ${message}${sqlstate ? ` [SQLSTATE ${sqlstate}]` : ''}`, {
    remedy: controlRemedy(sqlstate),
    details: classified.details,
    cause: err,
  });
}

/** BEGIN, the control lock, `fn`, COMMIT; ROLLBACK and a classified error otherwise. */
async function inControlTransaction<T>(client: ControlClient, what: string, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN').catch((err: unknown) => {
    throw classifyControlError(err, what);
  });
  try {
    await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [CONTROL_LOCK_KEY.toString()]);
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw classifyControlError(err, what);
  }
}

async function audit(client: ControlClient, stream: string, who: string, action: string, detail: Record<string, unknown>): Promise<void> {
  await client.query('INSERT INTO lifeboat.audit (stream, actor, action, detail) VALUES ($1, $2, $3, $4)', [stream, who, action, JSON.stringify(detail)]);
}

/** Locks every stream's row (the lock apply transactions take), in a fixed order. */
async function lockStreams(client: ControlClient): Promise<{ stream: string; epoch: number }[]> {
  const res = await client.query<StreamEpochRow>('SELECT stream, epoch::text AS epoch FROM lifeboat.stream_state ORDER BY stream FOR UPDATE');
  return res.rows.map((r) => ({ stream: r.stream, epoch: Number(r.epoch) }));
}

/**
 * The cloud may act at `epoch` only when `stream` exists on the target and
 * every stream's fencing epoch is exactly `epoch`: lower means the epoch was
 * not written yet (an old agent's batches could still apply), higher means a
 * newer failover or a fence came after the decision.
 */
function requireFencedAt(rows: readonly { stream: string; epoch: number }[], stream: string, epoch: number, what: string): void {
  if (!rows.some((r) => r.stream === stream)) {
    throw new PermanentError(`${what} at epoch ${epoch} refused: stream ${stream} has no state on the target, so no fencing epoch was written`, {
      remedy: 'Write the epoch into the target first (the write-epoch-to-target step), then run this step again.',
      details: { stream, epoch },
    });
  }
  const lower = rows.filter((r) => r.epoch < epoch);
  const higher = rows.filter((r) => r.epoch > epoch);
  if (lower.length > 0) {
    throw new PermanentError(
      `${what} at epoch ${epoch} refused: the target's fencing epoch is ${lower.map((r) => `${r.epoch} for stream ${r.stream}`).join(', ')}, below ${epoch}, so batches of the old writer would still apply`,
      { remedy: 'Write the epoch into the target first (the write-epoch-to-target step), then run this step again.', details: { epoch, streams: rows } },
    );
  }
  if (higher.length > 0) {
    throw new PermanentError(
      `${what} at epoch ${epoch} refused: the target is already fenced at ${higher.map((r) => `epoch ${r.epoch} for stream ${r.stream}`).join(', ')}; this step is stale`,
      { remedy: 'Read the lease and the controller state again; a newer failover or failback has taken over.', details: { epoch, streams: rows } },
    );
  }
}

async function readRole(client: ControlClient, name: string, what: 'app' | 'apply'): Promise<RoleInfo> {
  const res = await client.query<{ oid: string; rolsuper: boolean }>('SELECT oid::text AS oid, rolsuper FROM pg_roles WHERE rolname = $1', [name]);
  const row = res.rows[0];
  if (row === undefined) {
    const quoted = quoteIdent(name);
    throw new PermanentError(`the ${what} role ${quoted} does not exist on the target database server`, {
      remedy:
        what === 'app'
          ? `Create it, then run the step again: \`CREATE ROLE ${quoted} LOGIN PASSWORD '…'\` (on Cloud SQL: \`gcloud sql users create ${name} --instance=INSTANCE --password=…\`), or set target.appRole to the role your app's cloud copy logs in as.`
          : `Create it (\`CREATE ROLE ${quoted} LOGIN\`) or set target.applyRole to the role the apply function connects as.`,
      details: { role: name, kind: what },
    });
  }
  return { oid: row.oid, name, superuser: row.rolsuper };
}

async function resolveSchemas(client: ControlClient, requested: readonly string[] | undefined): Promise<string[]> {
  if (requested !== undefined) {
    if (requested.includes(LIFEBOAT_SCHEMA)) {
      throw new ValidationError(`the ${LIFEBOAT_SCHEMA} schema holds Lifeboat's bookkeeping, not replicated data; leave it out of schemas`);
    }
    const res = await client.query<{ nspname: string }>('SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])', [requested]);
    const found = new Set(res.rows.map((r) => r.nspname));
    const missing = requested.filter((s) => !found.has(s));
    if (missing.length > 0) {
      throw new PermanentError(`schema${missing.length === 1 ? '' : 's'} ${missing.map(quoteIdent).join(', ')} not found on the target`, {
        remedy: 'Pass only schemas that exist on the target (leave schemas out to cover every replicated schema).',
        details: { missing },
      });
    }
    return [...new Set(requested)].sort();
  }
  const res = await client.query<{ nspname: string }>(
    `SELECT nspname FROM pg_namespace
     WHERE nspname <> $1 AND nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%'
     ORDER BY nspname`,
    [LIFEBOAT_SCHEMA],
  );
  return res.rows.map((r) => r.nspname);
}

/** The statements that put the app role in one state, for every schema (also for tables the apply role creates later). */
function gateStatements(schemas: readonly string[], app: string, apply: string, database: string, writable: boolean): string[] {
  const a = quoteIdent(app);
  const p = quoteIdent(apply);
  const tableWrites = writable ? `GRANT ${TABLE_WRITES}` : `REVOKE ${TABLE_WRITES}`;
  const seqWrites = writable ? `GRANT ${SEQUENCE_WRITES}` : `REVOKE ${SEQUENCE_WRITES}`;
  const toFrom = writable ? 'TO' : 'FROM';
  const out: string[] = [];
  for (const schema of schemas) {
    const s = quoteIdent(schema);
    out.push(
      `GRANT USAGE ON SCHEMA ${s} TO ${a}`,
      `GRANT SELECT ON ALL TABLES IN SCHEMA ${s} TO ${a}`,
      `${tableWrites} ON ALL TABLES IN SCHEMA ${s} ${toFrom} ${a}`,
      `GRANT SELECT ON ALL SEQUENCES IN SCHEMA ${s} TO ${a}`,
      `${seqWrites} ON ALL SEQUENCES IN SCHEMA ${s} ${toFrom} ${a}`,
      `ALTER DEFAULT PRIVILEGES FOR ROLE ${p} IN SCHEMA ${s} GRANT SELECT ON TABLES TO ${a}`,
      `ALTER DEFAULT PRIVILEGES FOR ROLE ${p} IN SCHEMA ${s} ${tableWrites} ON TABLES ${toFrom} ${a}`,
      `ALTER DEFAULT PRIVILEGES FOR ROLE ${p} IN SCHEMA ${s} GRANT SELECT ON SEQUENCES TO ${a}`,
      `ALTER DEFAULT PRIVILEGES FOR ROLE ${p} IN SCHEMA ${s} ${seqWrites} ON SEQUENCES ${toFrom} ${a}`,
    );
  }
  out.push(`ALTER ROLE ${a} IN DATABASE ${quoteIdent(database)} SET default_transaction_read_only = ${writable ? 'off' : 'on'}`);
  return out;
}

interface GateOutcome {
  readonly applyRole: string;
  readonly database: string;
  readonly schemas: string[];
  readonly tables: number;
  readonly sequences: number;
  readonly notWritable: string[];
}

/**
 * Runs inside a control transaction: puts the app role in the read-only or
 * writable state, checks its effective privileges, and audits the change.
 */
async function applyGate(
  client: ControlClient,
  opts: { stream: string; appRole: string; applyRole?: string | undefined; writable: boolean; epoch: number; schemas?: readonly string[] | undefined; actor: string },
  log: Logger,
): Promise<GateOutcome> {
  const app = await readRole(client, opts.appRole, 'app');
  if (app.superuser) {
    throw new PermanentError(`the app role ${quoteIdent(app.name)} is a superuser: privileges cannot keep it from writing`, {
      remedy: `Let the app log in as an ordinary role: \`ALTER ROLE ${quoteIdent(app.name)} NOSUPERUSER\`, then run the step again.`,
      details: { role: app.name },
    });
  }
  const who = await client.query<{ current_user: string; database: string }>('SELECT current_user, current_database() AS database');
  const database = who.rows[0]!.database;
  const applyRole = opts.applyRole ?? who.rows[0]!.current_user;
  if (applyRole === app.name) {
    throw new ValidationError(`the app role and the apply role are both ${quoteIdent(applyRole)}; the app needs a role of its own so that its writes can be turned off`);
  }
  if (opts.applyRole !== undefined) await readRole(client, opts.applyRole, 'apply');
  const schemas = await resolveSchemas(client, opts.schemas);
  for (const statement of gateStatements(schemas, app.name, applyRole, database, opts.writable)) await client.query(statement);

  const counts = await client.query<{ tables: string; sequences: string }>(
    `SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p', 'v', 'f'))::text AS tables, count(*) FILTER (WHERE c.relkind = 'S')::text AS sequences
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1::text[])`,
    [schemas],
  );
  let notWritable: string[] = [];
  if (opts.writable) {
    const res = await client.query<{ schema: string; name: string }>(
      `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = ANY($2::text[]) AND c.relkind IN ('r', 'p', 'f') AND NOT has_table_privilege($1::oid, c.oid, 'INSERT')
       ORDER BY 1, 2`,
      [app.oid, schemas],
    );
    notWritable = res.rows.map((r) => `${quoteIdent(r.schema)}.${quoteIdent(r.name)}`);
    if (notWritable.length > 0) {
      log.warn('the app role may not write some tables: the apply role does not own them, so it could not grant writes', {
        appRole: app.name,
        applyRole,
        tables: notWritable.slice(0, 50),
        remedy: `ALTER TABLE … OWNER TO ${quoteIdent(applyRole)} for these tables, then run make-cloud-writable again.`,
      });
    }
  } else {
    // Whatever route a write privilege takes (PUBLIC, a role the app is a member of, a grant the apply role could not revoke), it is found here.
    const res = await client.query<{ schema: string; name: string; kind: string }>(
      `SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = ANY($2::text[]) AND (
         (c.relkind IN ('r', 'p', 'v', 'f') AND (has_table_privilege($1::oid, c.oid, 'INSERT') OR has_table_privilege($1::oid, c.oid, 'UPDATE')
            OR has_table_privilege($1::oid, c.oid, 'DELETE') OR has_table_privilege($1::oid, c.oid, 'TRUNCATE')))
         OR (c.relkind = 'S' AND (has_sequence_privilege($1::oid, c.oid, 'USAGE') OR has_sequence_privilege($1::oid, c.oid, 'UPDATE'))))
       ORDER BY 1, 2`,
      [app.oid, schemas],
    );
    if (res.rows.length > 0) {
      const names = res.rows.map((r) => `${quoteIdent(r.schema)}.${quoteIdent(r.name)}`);
      throw new PermanentError(
        `the app role ${quoteIdent(app.name)} can still write ${names.length} object${names.length === 1 ? '' : 's'} after its writes were revoked: ${names.slice(0, 10).join(', ')}${names.length > 10 ? ', …' : ''}`,
        {
          remedy: `The privilege comes from PUBLIC, from a role ${quoteIdent(app.name)} is a member of, or from a grant the connected role may not revoke (another owner). Revoke it (for example \`REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON … FROM PUBLIC\`) or remove the membership, then run the step again.`,
          details: { role: app.name, objects: names.slice(0, 100) },
        },
      );
    }
    const owned = await client.query<{ schema: string; name: string }>(
      `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = ANY($2::text[]) AND c.relowner = $1::oid AND c.relkind IN ('r', 'p', 'v', 'f', 'S') ORDER BY 1, 2`,
      [app.oid, schemas],
    );
    if (owned.rows.length > 0) {
      log.warn('the app role owns some tables: their writes are revoked now, but an owner could grant them to itself again', {
        appRole: app.name,
        tables: owned.rows.slice(0, 50).map((r) => `${quoteIdent(r.schema)}.${quoteIdent(r.name)}`),
        remedy: `ALTER TABLE … OWNER TO ${quoteIdent(applyRole)} makes the gate hold for them too.`,
      });
    }
  }
  const tables = Number(counts.rows[0]?.tables ?? 0);
  const sequences = Number(counts.rows[0]?.sequences ?? 0);
  await audit(client, opts.stream, opts.actor, opts.writable ? 'app-writable' : 'app-read-only', {
    epoch: opts.epoch,
    appRole: app.name,
    applyRole,
    database,
    schemas,
    tables,
    sequences,
    notWritable: notWritable.slice(0, 100),
  });
  return { applyRole, database, schemas, tables, sequences, notWritable };
}

/**
 * Ends the app role's sessions in this database, waiting for each to exit.
 * Runs after the commit: pg_terminate_backend is not transactional, and a
 * session that reconnects must already see the new state.
 */
async function terminateAppSessions(client: ControlClient, appRole: string, log: Logger): Promise<number> {
  let res: pg.QueryResult<{ pid: number; terminated: boolean }>;
  try {
    res = await client.query<{ pid: number; terminated: boolean }>(
      `SELECT pid, pg_terminate_backend(pid, $2::bigint) AS terminated FROM pg_stat_activity
       WHERE usename = $1 AND datname = current_database() AND pid <> pg_backend_pid()`,
      [appRole, TERMINATE_WAIT_MS],
    );
  } catch (err) {
    const classified = classifyControlError(err, `ending the sessions of the app role ${quoteIdent(appRole)}`);
    const suffix = ' (the new privileges are committed; sessions that started earlier are still open)';
    throw classified instanceof RetryableError
      ? new RetryableError(classified.message + suffix, { details: classified.details, cause: err })
      : new PermanentError(classified.message + suffix, { remedy: classified.remedy ?? controlRemedy(undefined), details: classified.details, cause: err });
  }
  const unconfirmed = res.rows.filter((r) => !r.terminated).map((r) => r.pid);
  if (unconfirmed.length > 0) {
    // false also means the session was already gone; only those still listed are a problem.
    const left = await client.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])', [unconfirmed]);
    if (left.rows.length > 0) {
      throw new RetryableError(
        `${left.rows.length} session${left.rows.length === 1 ? '' : 's'} of the app role ${quoteIdent(appRole)} did not exit within ${TERMINATE_WAIT_MS} ms of pg_terminate_backend`,
        { details: { pids: left.rows.map((r) => r.pid) } },
      );
    }
  }
  const terminated = res.rows.length;
  if (terminated > 0) log.info('ended the app role\'s sessions', { appRole, sessions: terminated });
  return terminated;
}

function controlLogger(given: Logger | undefined, fields: Record<string, unknown>): Logger {
  return (given ?? createLogger({ component: 'target-control' })).child(fields);
}

async function currentEpoch(client: ControlClient, stream: string): Promise<number> {
  const res = await client.query<{ epoch: string }>('SELECT epoch::text AS epoch FROM lifeboat.stream_state WHERE stream = $1', [stream]);
  return res.rows[0] === undefined ? 0 : Number(res.rows[0].epoch);
}

// ---------------------------------------------------------------------------
// The app role's write access

/**
 * The data-layer gate for the app's writes on the target. Read-only: INSERT,
 * UPDATE, DELETE, TRUNCATE revoked on every table of the replicated schemas
 * (SELECT and USAGE kept), nextval revoked on their sequences, the role's
 * default_transaction_read_only on in this database, and its sessions ended.
 * Writable: those granted, the default off, and the sessions ended too (their
 * read-only default was fixed at connect). Both states also set the default
 * privileges of tables and sequences the apply role creates later.
 * Writable is refused unless every stream's fencing epoch on the target is
 * exactly `epoch`. Idempotent: repeating it sets the same state.
 * @throws PermanentError (missing role, superuser app role, a write privilege
 *   that survives revoking, wrong epoch) | RetryableError | ValidationError
 */
export async function setAppWriteAccess(client: ControlClient, options: AppWriteAccessOptions): Promise<AppWriteAccessResult> {
  const opts = parseOptions(accessOptions, options, 'setAppWriteAccess');
  const state = opts.writable ? 'writable' : 'read-only';
  const log = controlLogger(opts.logger, { stream: opts.stream, appRole: opts.appRole, epoch: opts.epoch });
  const gate = await inControlTransaction(client, `making the app role ${quoteIdent(opts.appRole)} ${state}`, async () => {
    const rows = await lockStreams(client);
    if (opts.writable) requireFencedAt(rows, opts.stream, opts.epoch, `making the app role ${quoteIdent(opts.appRole)} writable`);
    return applyGate(client, opts, log);
  });
  log.info(`the app role is ${state} on the target`, { schemas: gate.schemas, tables: gate.tables });
  const terminatedSessions = await terminateAppSessions(client, opts.appRole, log);
  return { appRole: opts.appRole, writable: opts.writable, epoch: opts.epoch, terminatedSessions, ...gate };
}

/**
 * Setup (and local mode): the app role read-only on the target, the state
 * before any failover. Audited at the stream's current fencing epoch.
 */
export async function prepareTargetRoles(
  client: ControlClient,
  options: { readonly stream: string; readonly appRole: string; readonly applyRole?: string; readonly schemas?: readonly string[]; readonly actor?: string; readonly logger?: Logger },
): Promise<AppWriteAccessResult> {
  const opts = parseOptions(prepareOptions, options, 'prepareTargetRoles');
  const log = controlLogger(opts.logger, { stream: opts.stream, appRole: opts.appRole });
  const result = await inControlTransaction(client, `preparing the app role ${quoteIdent(opts.appRole)} (read-only)`, async () => {
    await lockStreams(client);
    const epoch = await currentEpoch(client, opts.stream);
    const gate = await applyGate(client, { ...opts, writable: false, epoch, actor: opts.actor }, log);
    return { ...gate, epoch };
  });
  log.info('the app role is read-only on the target (setup)', { schemas: result.schemas, tables: result.tables });
  const terminatedSessions = await terminateAppSessions(client, opts.appRole, log);
  return { appRole: opts.appRole, writable: false, terminatedSessions, ...result };
}

/**
 * Failback's "fence the cloud": in ONE transaction, raises the stream's
 * fencing epoch to `epoch` first (never lowers it; batches of an older epoch
 * are refused from the commit on), then makes the app role read-only. After
 * the commit (pg_terminate_backend is not transactional, and a reconnecting
 * session must see the read-only state) the app role's sessions are ended,
 * which also rolls back any transaction of theirs still open. If ending them
 * fails, the epoch and the gate are committed and a retry ends them.
 */
export async function fenceCloudTarget(
  client: ControlClient,
  options: { readonly stream: string; readonly epoch: number; readonly appRole: string; readonly applyRole?: string; readonly schemas?: readonly string[]; readonly actor?: string; readonly logger?: Logger },
): Promise<FenceResult> {
  const opts = parseOptions(fenceOptions, options, 'fenceCloudTarget');
  const log = controlLogger(opts.logger, { stream: opts.stream, appRole: opts.appRole, epoch: opts.epoch });
  const fenced = await inControlTransaction(client, `fencing the cloud target at epoch ${opts.epoch}`, async () => {
    await client.query('INSERT INTO lifeboat.stream_state (stream) VALUES ($1) ON CONFLICT (stream) DO NOTHING', [opts.stream]);
    const rows = await lockStreams(client);
    const previousEpoch = rows.find((r) => r.stream === opts.stream)?.epoch ?? 0;
    // Same write and audit as apply-engine's setFencingEpoch, here inside this transaction.
    if (opts.epoch > previousEpoch) {
      await client.query('UPDATE lifeboat.stream_state SET epoch = $2, epoch_set_at = now() WHERE stream = $1', [opts.stream, opts.epoch]);
      await audit(client, opts.stream, opts.actor, 'fencing-epoch', { from: previousEpoch, to: opts.epoch });
    } else if (opts.epoch < previousEpoch) {
      log.warn('the target is already fenced at a higher epoch; making the app role read-only anyway', { fencingEpoch: previousEpoch });
    }
    const epoch = Math.max(opts.epoch, previousEpoch);
    const gate = await applyGate(client, { ...opts, writable: false, epoch }, log);
    return { epoch, previousEpoch, gate };
  });
  log.info('fenced the cloud target: epoch written, app role read-only', { fencingEpoch: fenced.epoch, previousEpoch: fenced.previousEpoch });
  const terminatedSessions = await terminateAppSessions(client, opts.appRole, log);
  return {
    epoch: fenced.epoch,
    previousEpoch: fenced.previousEpoch,
    access: { appRole: opts.appRole, writable: false, epoch: fenced.epoch, terminatedSessions, ...fenced.gate },
  };
}

// ---------------------------------------------------------------------------
// Sequences

const recordedAdvance = z.object({
  epoch: z.number(),
  gap: z.string(),
  sequences: z.array(
    z.object({
      schema: z.string(),
      name: z.string(),
      from: z.string().regex(/^-?\d+$/),
      ownedMax: z.string().regex(/^-?\d+$/).nullable(),
      to: z.string().regex(/^-?\d+$/),
    }),
  ),
});

interface SequenceRow {
  oid: string;
  schema: string;
  name: string;
  last_value: string;
  is_called: boolean;
  increment: string;
  min: string;
  max: string;
}

interface UserColumn {
  schema: string;
  table: string;
  column: string;
}

/**
 * On promotion: every sequence on the target (outside `excludeSchemas`) is
 * set to the greatest of its own position (heartbeats already shipped the
 * source's) and the highest value in any column that takes values from it
 * (serial and identity columns it is OWNED BY, and columns whose DEFAULT
 * calls it), plus `gap`; for a descending sequence the least, minus `gap`.
 * So it never hands out a value already present.
 *
 * Idempotent per epoch: the result is recorded in lifeboat.audit, and a retry
 * at the same epoch returns the recorded result without burning another gap.
 * Requires every stream's fencing epoch to be exactly `epoch` (the epoch is
 * written first, so no batch of the old writer can add rows afterwards).
 * Values are bigint throughout.
 * @throws PermanentError (wrong epoch; a sequence would pass its MAXVALUE/MINVALUE) | RetryableError | ValidationError
 */
export async function advanceSequences(
  client: ControlClient,
  options: { readonly stream: string; readonly epoch: number; readonly gap: bigint | number; readonly excludeSchemas?: readonly string[]; readonly actor?: string; readonly logger?: Logger },
): Promise<SequenceAdvance[]> {
  const opts = parseOptions(sequenceOptions, options, 'advanceSequences');
  const log = controlLogger(opts.logger, { stream: opts.stream, epoch: opts.epoch });
  return inControlTransaction(client, `advancing the target's sequences at epoch ${opts.epoch}`, async () => {
    const rows = await lockStreams(client);
    requireFencedAt(rows, opts.stream, opts.epoch, 'advancing sequences');
    const done = await client.query<{ detail: unknown }>(
      `SELECT detail FROM lifeboat.audit WHERE stream = $1 AND action = 'advance-sequences' AND detail->>'epoch' = $2 ORDER BY id DESC LIMIT 1`,
      [opts.stream, String(opts.epoch)],
    );
    if (done.rows[0] !== undefined) {
      const recorded = recordedAdvance.parse(done.rows[0].detail);
      log.info('sequences were already advanced at this epoch; returning that result, nothing changed', { sequences: recorded.sequences.length, gap: recorded.gap });
      return recorded.sequences.map((s) => ({ schema: s.schema, name: s.name, from: BigInt(s.from), ownedMax: s.ownedMax === null ? null : BigInt(s.ownedMax), to: BigInt(s.to) }));
    }

    const sequences = await client.query<SequenceRow>(
      `SELECT c.oid::text AS oid, n.nspname AS schema, c.relname AS name, s.seqincrement::text AS increment, s.seqmin::text AS min, s.seqmax::text AS max
       FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname <> ALL($1::text[]) AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
       ORDER BY n.nspname, c.relname`,
      [opts.excludeSchemas],
    );
    const planned: SequenceAdvance[] = [];
    const overflow: string[] = [];
    for (const seq of sequences.rows) {
      const qualified = `${quoteIdent(seq.schema)}.${quoteIdent(seq.name)}`;
      const state = await client.query<{ last_value: string; is_called: boolean }>(`SELECT last_value::text AS last_value, is_called FROM ${qualified}`);
      const increment = BigInt(seq.increment);
      const ascending = increment > 0n;
      const lastValue = BigInt(state.rows[0]!.last_value);
      const from = state.rows[0]!.is_called ? lastValue : lastValue - increment;
      const ownedMax = await extremeInColumns(client, await columnsUsing(client, seq.oid), ascending);
      const base = ownedMax === null ? from : ascending ? (ownedMax > from ? ownedMax : from) : ownedMax < from ? ownedMax : from;
      const to = ascending ? base + opts.gap : base - opts.gap;
      if (ascending ? to > BigInt(seq.max) : to < BigInt(seq.min)) {
        overflow.push(`${qualified} would need ${to}, beyond its ${ascending ? `MAXVALUE ${seq.max}` : `MINVALUE ${seq.min}`}`);
        continue;
      }
      planned.push({ schema: seq.schema, name: seq.name, from, ownedMax, to });
    }
    if (overflow.length > 0) {
      throw new PermanentError(`cannot advance ${overflow.length} sequence${overflow.length === 1 ? '' : 's'} by the safety gap: ${overflow.slice(0, 5).join('; ')}`, {
        remedy: 'Widen the sequence (ALTER SEQUENCE … AS bigint MAXVALUE …, and the column type) or lower failover.sequenceSafetyGap, then run the step again. Nothing was changed.',
        details: { overflow: overflow.slice(0, 50) },
      });
    }
    for (const s of planned) {
      // to == from only with a zero gap and no higher value in use: setval would be a no-op (and may be out of range before the first nextval).
      if (s.to !== s.from) await client.query('SELECT setval($1::regclass, $2::bigint, true)', [`${quoteIdent(s.schema)}.${quoteIdent(s.name)}`, s.to.toString()]);
    }
    await audit(client, opts.stream, opts.actor, 'advance-sequences', {
      epoch: opts.epoch,
      gap: opts.gap.toString(),
      sequences: planned.map((s) => ({ schema: s.schema, name: s.name, from: s.from.toString(), ownedMax: s.ownedMax?.toString() ?? null, to: s.to.toString() })),
    });
    log.info('advanced the target\'s sequences past every value in use', { sequences: planned.length, gap: opts.gap.toString() });
    return planned;
  });
}

/** Integer columns fed by a sequence: OWNED BY (serial 'a', identity 'i') and DEFAULTs that call it. */
async function columnsUsing(client: ControlClient, sequenceOid: string): Promise<UserColumn[]> {
  const res = await client.query<UserColumn>(
    `WITH used AS (
       SELECT d.refobjid AS relid, d.refobjsubid AS attnum FROM pg_depend d
       WHERE d.classid = 'pg_class'::regclass AND d.objid = $1::oid AND d.refclassid = 'pg_class'::regclass
         AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
       UNION
       SELECT ad.adrelid, ad.adnum FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
       WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1::oid
     )
     SELECT n.nspname AS schema, c.relname AS table, a.attname AS column
     FROM used u JOIN pg_class c ON c.oid = u.relid JOIN pg_namespace n ON n.oid = c.relnamespace
     JOIN pg_attribute a ON a.attrelid = u.relid AND a.attnum = u.attnum
     WHERE NOT a.attisdropped AND c.relkind IN ('r', 'p') AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype)
     ORDER BY 1, 2, 3`,
    [sequenceOid],
  );
  return res.rows;
}

/** The highest (ascending) or lowest value across the columns, rounded outwards; null when they have no rows. */
async function extremeInColumns(client: ControlClient, columns: readonly UserColumn[], ascending: boolean): Promise<bigint | null> {
  let extreme: bigint | null = null;
  for (const c of columns) {
    const col = quoteIdent(c.column);
    const sql = ascending ? `SELECT ceil(max(${col})::numeric)::text AS v` : `SELECT floor(min(${col})::numeric)::text AS v`;
    const res = await client.query<{ v: string | null }>(`${sql} FROM ${quoteIdent(c.schema)}.${quoteIdent(c.table)}`);
    const v = res.rows[0]?.v;
    if (v == null) continue;
    const value = BigInt(v);
    if (extreme === null || (ascending ? value > extreme : value < extreme)) extreme = value;
  }
  return extreme;
}

// ---------------------------------------------------------------------------
// Observations and the watermark

/** What the controller observes on the target for one stream (no transaction; reads only). */
export async function readControlObservations(client: ControlClient, stream: string): Promise<ControlObservations> {
  parseOptions(streamId, stream, 'readControlObservations');
  let state;
  try {
    state = await readStreamState(client, stream);
  } catch (err) {
    throw classifyControlError(err, `reading the state of stream ${stream} on the target`);
  }
  if (state === undefined) return { appliedLsn: null, lastAppliedAt: null, fencingEpoch: 0, halted: false, haltReason: null };
  return {
    appliedLsn: state.watermark,
    lastAppliedAt: state.appliedAt,
    fencingEpoch: state.epoch,
    halted: state.halted,
    haltReason: state.halt?.reason ?? null,
  };
}

const recordedRebase = z.object({ epoch: z.number(), lsn: z.string() });

/**
 * After failback, forward streaming restarts from a NEW slot on local whose
 * LSNs are unrelated to the old chain (they may even be lower, on a rebuilt
 * server). This moves the watermark W to the new slot's consistent point
 * `lsn`, so the first batch of the new chain (lsnPrev = lsn) is neither a gap
 * nor taken for a duplicate. It also moves snapshot_consistent_lsn to `lsn`:
 * the apply engine treats a snapshot whose consistent point is below the
 * current copy's as superseded, so a later `--resnapshot` on the new chain
 * would otherwise be skipped. Nothing else changes (a halt stays).
 *
 * Allowed only when the target's fencing epoch ≤ `epoch`, and only on a
 * stream whose initial copy is complete. Audited; a retry with the same
 * epoch and lsn changes nothing (it would otherwise move W back under
 * batches already applied on the new chain).
 * @throws PermanentError | ValidationError | RetryableError
 */
export async function rebaseStreamWatermark(
  client: ControlClient,
  options: { readonly stream: string; readonly lsn: Lsn; readonly epoch: number; readonly reason: string; readonly actor?: string; readonly logger?: Logger },
): Promise<RebaseResult> {
  const opts = parseOptions(rebaseOptions, options, 'rebaseStreamWatermark');
  const lsnText = formatLsn(opts.lsn);
  const log = controlLogger(opts.logger, { stream: opts.stream, epoch: opts.epoch, lsn: lsnText });
  const result = await inControlTransaction(client, `rebasing the watermark of stream ${opts.stream} to ${lsnText}`, async () => {
    const res = await client.query<{ watermark: string | null; epoch: string; snapshot_complete: boolean; snapshot_consistent_lsn: string | null }>(
      'SELECT watermark::text AS watermark, epoch::text AS epoch, snapshot_complete, snapshot_consistent_lsn::text AS snapshot_consistent_lsn FROM lifeboat.stream_state WHERE stream = $1 FOR UPDATE',
      [opts.stream],
    );
    const row = res.rows[0];
    if (row === undefined) throw new PermanentError(`stream ${opts.stream} has no state on the target: there is no watermark to rebase`, { remedy: 'Check the stream id; a new stream starts with an initial copy instead.' });
    const before = row.watermark === null ? null : parseLsn(row.watermark);
    const fencingEpoch = Number(row.epoch);
    if (fencingEpoch > opts.epoch) {
      throw new PermanentError(`rebasing the watermark of stream ${opts.stream} at epoch ${opts.epoch} refused: the target is fenced at epoch ${fencingEpoch}`, {
        remedy: 'A newer failover or failback has taken over: read the lease and the controller state again.',
        details: { stream: opts.stream, epoch: opts.epoch, fencingEpoch },
      });
    }
    if (!row.snapshot_complete || before === null) {
      throw new PermanentError(`stream ${opts.stream} has no complete initial copy on the target, so there is no watermark to rebase`, {
        remedy: 'Start forward streaming with a new initial copy (`lifeboat agent --resnapshot`) instead.',
        details: { stream: opts.stream },
      });
    }
    const done = await client.query<{ detail: unknown }>(
      `SELECT detail FROM lifeboat.audit WHERE stream = $1 AND action = 'rebase-watermark' ORDER BY id DESC LIMIT 1`,
      [opts.stream],
    );
    const last = done.rows[0] === undefined ? undefined : recordedRebase.parse(done.rows[0].detail);
    if (last !== undefined && last.epoch === opts.epoch && last.lsn === lsnText) {
      return { changed: false, watermarkBefore: before, watermark: before };
    }
    await client.query('UPDATE lifeboat.stream_state SET watermark = $2::pg_lsn, snapshot_consistent_lsn = $2::pg_lsn WHERE stream = $1', [opts.stream, lsnText]);
    await audit(client, opts.stream, opts.actor, 'rebase-watermark', {
      epoch: opts.epoch,
      lsn: lsnText,
      reason: opts.reason,
      fencingEpoch,
      watermarkBefore: row.watermark,
      snapshotConsistentLsnBefore: row.snapshot_consistent_lsn,
    });
    return { changed: true, watermarkBefore: before, watermark: opts.lsn };
  });
  if (result.changed) log.info('rebased the stream watermark onto the new slot', { watermarkBefore: result.watermarkBefore === null ? null : formatLsn(result.watermarkBefore) });
  else log.info('the watermark was already rebased to this position at this epoch; nothing changed', { watermark: formatLsn(result.watermark) });
  return result;
}
