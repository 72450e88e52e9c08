// The apply engine: applies ONE decoded ChangeBatch to the target database in
// ONE transaction that also moves the stream's watermark (docs/design.md).
// The Cloud Function entry point (decoding, claim checks, HTTP answers) calls
// applyBatch(); everything about exactly-once lives here.
//
// Order inside the transaction:
//   1. Lock lifeboat.stream_state for the stream (created if missing). A
//      halted stream refuses the batch: StreamHaltedError.
//   2. Fencing: a batch is stale iff batch.epoch < the FENCING epoch, which
//      only failover writes (setFencingEpoch, never lowered). The agent's own
//      lease epoch may be above it (every change of lease holder increments
//      it); the highest epoch seen on applied batches is kept as
//      writer_epoch, for information only. A stale batch is stored in
//      lifeboat.stale_batches with its payload, committed, acknowledged.
//   3. Snapshot chunks (by snapshotId), the snapshot-complete marker: see
//      applySnapshotChunk / completeSnapshot. Until a snapshot is complete the
//      watermark is NULL and every chain batch is a gap.
//   4. Chain: lsnLast ≤ W → duplicate; lsnPrev > W → gap (ApplyGapError,
//      retryable); else apply transactions with endLsn > W, set W = lsnLast.
//   5. Heartbeats set sequences (never backwards); markers are audited.
//   6. Changes are applied set-based (apply-sql.ts), tables missing on the
//      target are created from the descriptor just before first use, and
//      inserts into lifeboat.ddl_log are replayed as DDL at their position.
//      One exception to "one transaction": after a source transaction that
//      ran ALTER TYPE … ADD VALUE, the engine commits with W at that
//      transaction's end and continues in a new transaction (PostgreSQL
//      refuses to use a new enum value in the transaction that added it).
//
// Snapshots: a chunk or snapshot-complete marker whose snapshotId is the
// current one continues it; an id seen before, or one whose consistentLsn is
// below the current copy's or below W, is superseded (skipped); any other id
// starts a new copy (W = NULL until it completes). The first applied chunk of
// each table in a copy TRUNCATEs it (creating it if missing); each
// (snapshotId, table, chunk) applies once. The marker checks that every
// listed table has chunks 0 … chunks-1 (else a gap: chunks still to come) and
// that row counts add up (else a permanent error), then sets W =
// consistentLsn.
//
// Errors: the engine rolls back and throws
//   - ApplyGapError (RetryableError): a gap or an incomplete snapshot.
//   - RetryableError: connection loss, serialization failure, deadlock,
//     shutdown, resource exhaustion… (SQLSTATE classes mapped explicitly below).
//   - StreamHaltedError (PermanentError): a change cannot be applied. The
//     stream is marked halted in a NEW transaction (reason, batch identity,
//     remedy, audit row). Every later delivery is refused with the same error
//     type (causedHalt = false) until resumeStream().
// DECISION for the entry point: StreamHaltedError must be answered non-2xx,
// exactly like a retryable error, so Pub/Sub keeps redelivering: the batch is
// NOT consumed and must apply once an operator resumes. It is a
// PermanentError only in that retrying cannot help until someone acts: log it
// at ERROR, publish the halt status, and never dead-letter it (only
// ValidationError from decoding goes to the dead-letter path).
//
// The client must be a dedicated connection (a pg.Client or a checked-out
// pool client), not a Pool: the engine runs BEGIN … COMMIT on it.

import { createHash } from 'node:crypto';
import pg from 'pg';
import {
  type ChangeBatch,
  type Marker,
  type RelationDescriptor,
  type SequenceState,
  type Transaction,
  type Tuple,
  batchRowCount,
  qualifiedName,
  toWireJson,
} from '../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import { type Logger, createLogger } from '../core/log.ts';
import { type Lsn, formatLsn, parseLsn } from '../core/lsn.ts';
import {
  type ChangeGroup,
  type SqlStatement,
  LIFEBOAT_SCHEMA,
  buildCreateTable,
  buildDelete,
  buildInsert,
  buildTruncate,
  buildUpdate,
  groupChanges,
  groupRowCount,
  isDdlLogRelation,
  planDdlReplay,
  quoteIdent,
  quoteTable,
} from './apply-sql.ts';

export type ApplyClient = Pick<pg.ClientBase, 'query'>;

export type ApplyOutcome =
  | 'applied'
  | 'duplicate'
  | 'stale-epoch'
  | 'snapshot-chunk'
  | 'snapshot-complete'
  | 'superseded-snapshot'
  | 'heartbeat'
  | 'marker';

export interface ApplyResult {
  readonly outcome: ApplyOutcome;
  readonly stream: string;
  /** The watermark after this call (null while no snapshot is complete). */
  readonly watermark: Lsn | null;
  readonly appliedTransactions: number;
  readonly appliedRows: number;
  /** Transactions of the batch at or below the watermark (already applied). */
  readonly skippedTransactions: number;
  /** One sentence for logs and status. */
  readonly reason: string;
  /** The marker of a 'marker' batch, for failover to act on. */
  readonly marker?: Marker;
}

export interface ApplyOptions {
  readonly logger?: Logger;
  /** Pub/Sub message attributes, kept with a halt or a stale batch. */
  readonly attributes?: Readonly<Record<string, string>>;
}

/** Identity of a batch, as stored with a halt. */
export interface BatchIdentity {
  readonly kind: string;
  readonly seq: number;
  readonly epoch: number;
  readonly lsnPrev: string;
  readonly lsnFirst: string;
  readonly lsnLast: string;
  readonly createdAt: string;
  readonly attributes?: Readonly<Record<string, string>>;
}

export interface HaltStatus {
  readonly reason: string;
  readonly remedy: string | null;
  readonly batch: BatchIdentity | null;
  readonly haltedAt: Date | null;
}

/** A gap: something before this batch is not applied yet. Pub/Sub redelivers later. */
export class ApplyGapError extends RetryableError {
  readonly outcome = 'gap';
}

/** The stream is halted: the batch is refused, not consumed (answer non-2xx). */
export class StreamHaltedError extends PermanentError {
  readonly halt: HaltStatus;
  /** True when THIS delivery failed and halted the stream. */
  readonly causedHalt: boolean;
  constructor(stream: string, halt: HaltStatus, causedHalt: boolean, cause?: unknown) {
    super(
      causedHalt
        ? `stream ${stream} halted: ${halt.reason}`
        : `stream ${stream} is halted (${halt.reason}); the batch is refused until an operator resumes it`,
      {
        remedy: halt.remedy ?? RESUME_REMEDY,
        details: { stream, halt: { ...halt, haltedAt: halt.haltedAt?.toISOString() ?? null }, causedHalt },
        ...(cause !== undefined && { cause }),
      },
    );
    this.halt = halt;
    this.causedHalt = causedHalt;
  }
}

const RESUME_REMEDY =
  'Fix the cause on the target, then run `lifeboat resume` (the batch applies again); or `lifeboat resume --skip-batch` to give up this batch, which loses its changes on the target.';

export interface StreamState {
  readonly stream: string;
  readonly watermark: Lsn | null;
  readonly appliedAt: Date | null;
  readonly epoch: number;
  readonly writerEpoch: number;
  readonly snapshotId: string | null;
  readonly snapshotConsistentLsn: Lsn | null;
  readonly snapshotComplete: boolean;
  readonly halted: boolean;
  readonly halt: HaltStatus | null;
}

interface StateRow {
  stream: string;
  watermark: string | null;
  applied_at: Date | null;
  epoch: string;
  writer_epoch: string;
  snapshot_id: string | null;
  snapshot_consistent_lsn: string | null;
  snapshot_complete: boolean;
  halted: boolean;
  halt_reason: string | null;
  halt_remedy: string | null;
  halt_batch: BatchIdentity | null;
  halted_at: Date | null;
}

const STATE_COLUMNS =
  'stream, watermark::text, applied_at, epoch, writer_epoch, snapshot_id, snapshot_consistent_lsn::text, snapshot_complete, halted, halt_reason, halt_remedy, halt_batch, halted_at';

function toState(row: StateRow): StreamState {
  return {
    stream: row.stream,
    watermark: row.watermark === null ? null : parseLsn(row.watermark),
    appliedAt: row.applied_at,
    epoch: Number(row.epoch),
    writerEpoch: Number(row.writer_epoch),
    snapshotId: row.snapshot_id,
    snapshotConsistentLsn: row.snapshot_consistent_lsn === null ? null : parseLsn(row.snapshot_consistent_lsn),
    snapshotComplete: row.snapshot_complete,
    halted: row.halted,
    halt: row.halted
      ? { reason: row.halt_reason ?? 'unknown', remedy: row.halt_remedy, batch: row.halt_batch, haltedAt: row.halted_at }
      : null,
  };
}

/** Creates the row if missing and locks it FOR UPDATE (call inside a transaction). */
async function lockStream(client: ApplyClient, stream: string): Promise<StreamState> {
  await client.query('INSERT INTO lifeboat.stream_state (stream) VALUES ($1) ON CONFLICT (stream) DO NOTHING', [stream]);
  const res = await client.query<StateRow>(`SELECT ${STATE_COLUMNS} FROM lifeboat.stream_state WHERE stream = $1 FOR UPDATE`, [stream]);
  const row = res.rows[0];
  if (row === undefined) throw new RetryableError(`stream_state row for ${stream} vanished while locking it`);
  return toState(row);
}

/** The stream's state, without locking; undefined when the stream never applied anything. */
export async function readStreamState(client: ApplyClient, stream: string): Promise<StreamState | undefined> {
  const res = await client.query<StateRow>(`SELECT ${STATE_COLUMNS} FROM lifeboat.stream_state WHERE stream = $1`, [stream]);
  const row = res.rows[0];
  return row === undefined ? undefined : toState(row);
}

function batchIdentity(batch: ChangeBatch, attributes?: Readonly<Record<string, string>>): BatchIdentity {
  return {
    kind: batch.kind,
    seq: batch.seq,
    epoch: batch.epoch,
    lsnPrev: formatLsn(batch.lsnPrev),
    lsnFirst: formatLsn(batch.lsnFirst),
    lsnLast: formatLsn(batch.lsnLast),
    createdAt: batch.createdAt,
    ...(attributes !== undefined && { attributes: { ...attributes } }),
  };
}

// Whether this connection may SET session_replication_role (superuser, or
// GRANT SET ON PARAMETER). With 'replica', target triggers and FK triggers do
// not fire during apply, as in PostgreSQL's own apply worker: their effects
// already arrive as replicated rows.
const replicaRoleAllowed = new WeakMap<object, boolean>();

async function begin(client: ApplyClient, log: Logger): Promise<void> {
  let allowed = replicaRoleAllowed.get(client);
  if (allowed === undefined) {
    // has_parameter_privilege is PostgreSQL 15+; before that only superusers may set it.
    const res = await client
      .query<{ ok: boolean }>("SELECT has_parameter_privilege('session_replication_role', 'SET') AS ok")
      .catch(async (err: unknown) => {
        if ((err as { code?: unknown }).code !== '42883') throw err;
        return client.query<{ ok: boolean }>("SELECT current_setting('is_superuser') = 'on' AS ok");
      });
    allowed = res.rows[0]?.ok === true;
    replicaRoleAllowed.set(client, allowed);
    if (!allowed) {
      log.warn('the target role may not SET session_replication_role: triggers and foreign keys on the target fire while applying', {
        remedy: 'GRANT SET ON PARAMETER session_replication_role TO the apply role (PostgreSQL 15+), or use a superuser role.',
      });
    }
  }
  await client.query(allowed ? 'BEGIN; SET LOCAL session_replication_role = replica' : 'BEGIN');
}

/**
 * Applies one batch in one transaction. See the header for the rules.
 * @throws ApplyGapError | RetryableError | StreamHaltedError
 */
export async function applyBatch(client: ApplyClient, batch: ChangeBatch, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const log = (opts.logger ?? createLogger({ component: 'apply' })).child({
    stream: batch.stream,
    kind: batch.kind,
    seq: batch.seq,
    lsnFirst: formatLsn(batch.lsnFirst),
    lsnLast: formatLsn(batch.lsnLast),
  });
  let state: StreamState | undefined;
  try {
    await begin(client, log);
    state = await lockStream(client, batch.stream);
    if (state.halted) {
      throw new StreamHaltedError(batch.stream, state.halt!, false);
    }
    if (batch.epoch < state.epoch) {
      const result = await recordStaleBatch(client, batch, state, opts.attributes);
      await client.query('COMMIT');
      log.warn(result.reason, { epoch: batch.epoch, fencingEpoch: state.epoch });
      return result;
    }
    const result = await applyInTransaction(client, batch, state, log);
    await client.query('COMMIT');
    log.debug(result.reason, { outcome: result.outcome, rows: result.appliedRows });
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    if (err instanceof ApplyGapError || err instanceof StreamHaltedError) throw err;
    const classified = classifyApplyError(err);
    if (classified instanceof RetryableError) {
      log.warn('apply failed; it will be retried', { error: classified });
      throw classified;
    }
    const halt = await haltStream(client, batch, classified, opts.attributes);
    const haltedError = new StreamHaltedError(batch.stream, halt, true, classified);
    log.error(haltedError.message, { error: haltedError });
    throw haltedError;
  }
}

async function recordStaleBatch(
  client: ApplyClient,
  batch: ChangeBatch,
  state: StreamState,
  attributes: Readonly<Record<string, string>> | undefined,
): Promise<ApplyResult> {
  const payload = JSON.stringify(toWireJson(batch));
  await client.query(
    `INSERT INTO lifeboat.stale_batches (stream, epoch, fencing_epoch, kind, seq, lsn_prev, lsn_first, lsn_last, attributes, payload, payload_sha256)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (stream, payload_sha256) DO NOTHING`,
    [
      batch.stream,
      batch.epoch,
      state.epoch,
      batch.kind,
      batch.seq,
      formatLsn(batch.lsnPrev),
      formatLsn(batch.lsnFirst),
      formatLsn(batch.lsnLast),
      attributes === undefined ? null : JSON.stringify(attributes),
      payload,
      createHash('sha256').update(payload).digest('hex'),
    ],
  );
  return {
    outcome: 'stale-epoch',
    stream: batch.stream,
    watermark: state.watermark,
    appliedTransactions: 0,
    appliedRows: 0,
    skippedTransactions: batch.transactions.length,
    reason: `refused: the batch's epoch ${batch.epoch} is below the fencing epoch ${state.epoch}; kept in lifeboat.stale_batches for the stranded-tail report`,
  };
}

async function applyInTransaction(client: ApplyClient, batch: ChangeBatch, state: StreamState, log: Logger): Promise<ApplyResult> {
  if (batch.kind === 'snapshot') return applySnapshotChunk(client, batch, state, log);
  if (batch.kind === 'marker' && batch.marker?.reason === 'snapshot-complete') return completeSnapshot(client, batch, state);

  const w = state.watermark;
  const base = { stream: batch.stream, appliedTransactions: 0, appliedRows: 0 };
  if (w === null || !state.snapshotComplete) {
    throw new ApplyGapError(
      state.snapshotId === null
        ? `stream ${batch.stream} has no initial copy on the target yet; ${batch.kind} batch ${formatLsn(batch.lsnFirst)}..${formatLsn(batch.lsnLast)} waits for the snapshot`
        : `the initial copy ${state.snapshotId} is not complete on the target yet; ${batch.kind} batch ${formatLsn(batch.lsnFirst)}..${formatLsn(batch.lsnLast)} waits for it`,
      { details: { stream: batch.stream, snapshotId: state.snapshotId, lsnPrev: formatLsn(batch.lsnPrev) } },
    );
  }
  if (batch.lsnLast <= w) {
    return {
      ...base,
      outcome: 'duplicate',
      watermark: w,
      skippedTransactions: batch.transactions.length,
      reason: `duplicate: lsnLast ${formatLsn(batch.lsnLast)} ≤ watermark ${formatLsn(w)}, nothing to apply`,
    };
  }
  if (batch.lsnPrev > w) {
    throw new ApplyGapError(
      `gap: the watermark W is ${formatLsn(w)} but this batch follows ${formatLsn(batch.lsnPrev)} (lsnPrev); an earlier batch is not applied yet`,
      { details: { stream: batch.stream, watermark: formatLsn(w), lsnPrev: formatLsn(batch.lsnPrev), lsnLast: formatLsn(batch.lsnLast) } },
    );
  }

  let outcome: ApplyOutcome = 'applied';
  let appliedTransactions = 0;
  let appliedRows = 0;
  let skippedTransactions = 0;
  let marker: Marker | undefined;
  if (batch.kind === 'changes') {
    const pending = batch.transactions.filter((tx) => tx.endLsn > w);
    skippedTransactions = batch.transactions.length - pending.length;
    appliedTransactions = pending.length;
    // A new enum value cannot be used in the transaction that added it, so
    // the batch commits right after a transaction that ran ALTER TYPE … ADD
    // VALUE, with W at that transaction's end (a valid chain position: a
    // redelivery applies only what follows it), and goes on in a new one.
    let segment: Transaction[] = [];
    for (const [i, tx] of pending.entries()) {
      segment.push(tx);
      if (i === pending.length - 1 || !addsEnumValue(tx, batch.relations)) continue;
      appliedRows += await applyChanges(client, segment.flatMap((t) => t.changes), batch.relations, log);
      await client.query('UPDATE lifeboat.stream_state SET watermark = $2::pg_lsn, applied_at = now() WHERE stream = $1', [batch.stream, formatLsn(tx.endLsn)]);
      await client.query('COMMIT');
      await begin(client, log);
      const again = await lockStream(client, batch.stream);
      if (again.halted || again.epoch !== state.epoch || again.watermark !== tx.endLsn) {
        throw new RetryableError(`stream ${batch.stream} changed while batch ${formatLsn(batch.lsnFirst)}..${formatLsn(batch.lsnLast)} was applied in parts; a redelivery applies the rest`);
      }
      log.info('committed part of a batch after ALTER TYPE … ADD VALUE', { watermark: formatLsn(tx.endLsn) });
      segment = [];
    }
    appliedRows += await applyChanges(client, segment.flatMap((t) => t.changes), batch.relations, log);
  } else if (batch.kind === 'heartbeat') {
    outcome = 'heartbeat';
    await applySequences(client, batch.heartbeat?.sequences ?? []);
  } else {
    outcome = 'marker';
    marker = batch.marker;
    await audit(client, batch.stream, marker?.requestedBy ?? 'agent', `marker-${marker?.reason ?? 'unknown'}`, {
      markerId: marker?.markerId,
      lsn: formatLsn(batch.lsnLast),
      epoch: batch.epoch,
    });
  }
  await client.query(
    `UPDATE lifeboat.stream_state SET watermark = $2::pg_lsn, applied_at = now(), writer_epoch = GREATEST(writer_epoch, $3),
       applied_batches = applied_batches + 1, applied_rows = applied_rows + $4 WHERE stream = $1`,
    [batch.stream, formatLsn(batch.lsnLast), batch.epoch, appliedRows],
  );
  const what =
    outcome === 'applied'
      ? `applied ${appliedTransactions} transaction${appliedTransactions === 1 ? '' : 's'} (${appliedRows} rows)${skippedTransactions > 0 ? `, skipped ${skippedTransactions} already applied` : ''}`
      : outcome === 'heartbeat'
        ? `heartbeat applied (${batch.heartbeat?.sequences.length ?? 0} sequences)`
        : `marker ${marker?.reason} ${marker?.markerId} recorded`;
  return {
    outcome,
    stream: batch.stream,
    watermark: batch.lsnLast,
    appliedTransactions,
    appliedRows,
    skippedTransactions,
    reason: `${what}; watermark ${formatLsn(w)} → ${formatLsn(batch.lsnLast)}`,
    ...(marker !== undefined && { marker }),
  };
}

const ADD_ENUM_VALUE = /\bALTER\s+TYPE\b[\s\S]*\bADD\s+VALUE\b/i;

/** Whether the transaction replays DDL that adds an enum value. */
function addsEnumValue(tx: Transaction, relations: readonly RelationDescriptor[]): boolean {
  return tx.changes.some((change) => {
    if (change.op !== 'insert') return false;
    const relation = relations[change.rel];
    if (relation === undefined || !isDdlLogRelation(relation)) return false;
    const ddl = change.new[relation.columns.findIndex((c) => c.name === 'ddl')];
    return typeof ddl === 'string' && ADD_ENUM_VALUE.test(ddl);
  });
}

// ---------------------------------------------------------------------------
// Snapshots

type SnapshotStanding = 'current' | 'superseded' | 'new';

/**
 * Where a snapshotId stands: the current one; superseded (seen before, or
 * older than what the target already holds); or new (starts a fresh copy).
 */
async function snapshotStanding(client: ApplyClient, state: StreamState, snapshotId: string, consistentLsn: Lsn): Promise<SnapshotStanding> {
  if (state.snapshotId === snapshotId) return 'current';
  const known = await client.query('SELECT 1 FROM lifeboat.snapshots WHERE stream = $1 AND snapshot_id = $2', [state.stream, snapshotId]);
  if ((known.rowCount ?? 0) > 0) return 'superseded';
  const newest = [state.snapshotConsistentLsn, state.watermark].reduce<Lsn | null>((a, b) => (b !== null && (a === null || b > a) ? b : a), null);
  if (newest !== null && consistentLsn < newest) return 'superseded';
  return 'new';
}

async function startSnapshot(client: ApplyClient, stream: string, snapshotId: string, consistentLsn: Lsn, previous: string | null): Promise<void> {
  await client.query('INSERT INTO lifeboat.snapshots (stream, snapshot_id, consistent_lsn) VALUES ($1, $2, $3)', [stream, snapshotId, formatLsn(consistentLsn)]);
  // The change stream restarts at the new consistent point: W is unknown until the copy completes.
  await client.query(
    `UPDATE lifeboat.stream_state SET snapshot_id = $2, snapshot_consistent_lsn = $3, snapshot_complete = false, snapshot_completed_at = NULL,
       watermark = NULL WHERE stream = $1`,
    [stream, snapshotId, formatLsn(consistentLsn)],
  );
  await audit(client, stream, 'agent', 'snapshot-start', { snapshotId, consistentLsn: formatLsn(consistentLsn), replaces: previous });
}

function superseded(batch: ChangeBatch, state: StreamState, snapshotId: string): ApplyResult {
  return {
    outcome: 'superseded-snapshot',
    stream: batch.stream,
    watermark: state.watermark,
    appliedTransactions: 0,
    appliedRows: 0,
    skippedTransactions: 0,
    reason: `snapshot ${snapshotId} was superseded by ${state.snapshotId ?? 'a newer copy'}; nothing applied`,
  };
}

async function applySnapshotChunk(client: ApplyClient, batch: ChangeBatch, state: StreamState, log: Logger): Promise<ApplyResult> {
  const snap = batch.snapshot!;
  const relation = batch.relations[snap.relation]!;
  const standing = await snapshotStanding(client, state, snap.snapshotId, snap.consistentLsn);
  if (standing === 'superseded') return superseded(batch, state, snap.snapshotId);
  if (standing === 'new') await startSnapshot(client, batch.stream, snap.snapshotId, snap.consistentLsn, state.snapshotId);
  const where = `${qualifiedName(relation)} chunk ${snap.chunk} of snapshot ${snap.snapshotId}`;
  const result = (outcome: ApplyOutcome, rows: number, reason: string): ApplyResult => ({
    outcome,
    stream: batch.stream,
    watermark: standing === 'new' ? null : state.watermark,
    appliedTransactions: 0,
    appliedRows: rows,
    skippedTransactions: 0,
    reason,
  });
  if (standing === 'current' && state.snapshotComplete) return result('duplicate', 0, `duplicate: ${where} (the copy is complete)`);

  const seen = await client.query<{ chunk: number }>(
    'SELECT chunk FROM lifeboat.snapshot_chunks WHERE stream = $1 AND snapshot_id = $2 AND schema = $3 AND name = $4',
    [batch.stream, snap.snapshotId, relation.schema, relation.name],
  );
  if (seen.rows.some((r) => r.chunk === snap.chunk)) return result('duplicate', 0, `duplicate: ${where} was applied before`);
  const tables = new TableEnsurer(client, batch.relations, log);
  await tables.ensure(snap.relation);
  // The first chunk of a table in this copy empties it: a restarted copy starts from scratch.
  if (seen.rows.length === 0) await client.query(`TRUNCATE ONLY ${quoteTable(relation)}`);
  if (snap.rows.length > 0) await runStatement(client, buildInsert(relation, snap.rows));
  await client.query(
    'INSERT INTO lifeboat.snapshot_chunks (stream, snapshot_id, schema, name, chunk, rows, last_chunk) VALUES ($1, $2, $3, $4, $5, $6, $7)',
    [batch.stream, snap.snapshotId, relation.schema, relation.name, snap.chunk, snap.rows.length, snap.lastChunk],
  );
  return result('snapshot-chunk', snap.rows.length, `applied ${where} (${snap.rows.length} rows)`);
}

async function completeSnapshot(client: ApplyClient, batch: ChangeBatch, state: StreamState): Promise<ApplyResult> {
  const summary = batch.marker!.snapshot!;
  const standing = await snapshotStanding(client, state, summary.snapshotId, summary.consistentLsn);
  if (standing === 'superseded') return superseded(batch, state, summary.snapshotId);
  if (standing === 'current' && state.snapshotComplete) {
    return {
      outcome: 'duplicate',
      stream: batch.stream,
      watermark: state.watermark,
      appliedTransactions: 0,
      appliedRows: 0,
      skippedTransactions: 0,
      reason: `duplicate: snapshot ${summary.snapshotId} is already complete`,
    };
  }
  if (standing === 'new') await startSnapshot(client, batch.stream, summary.snapshotId, summary.consistentLsn, state.snapshotId);

  const res = await client.query<{ schema: string; name: string; chunk: number; rows: number }>(
    'SELECT schema, name, chunk, rows FROM lifeboat.snapshot_chunks WHERE stream = $1 AND snapshot_id = $2',
    [batch.stream, summary.snapshotId],
  );
  const applied = new Map<string, { chunks: Set<number>; rows: number }>();
  for (const r of res.rows) {
    const key = qualifiedName(r);
    const entry = applied.get(key) ?? { chunks: new Set<number>(), rows: 0 };
    entry.chunks.add(r.chunk);
    entry.rows += r.rows;
    applied.set(key, entry);
  }
  const missing: string[] = [];
  const mismatched: string[] = [];
  for (const table of summary.tables) {
    const key = qualifiedName(table);
    const entry = applied.get(key);
    applied.delete(key);
    const have = entry === undefined ? 0 : [...entry.chunks].filter((c) => c < table.chunks).length;
    if (have < table.chunks) missing.push(`${key} has ${have} of ${table.chunks} chunks`);
    else if (entry!.chunks.size !== table.chunks || entry!.rows !== table.rows) {
      mismatched.push(`${key}: applied ${entry!.chunks.size} chunks with ${entry!.rows} rows, the agent sent ${table.chunks} chunks with ${table.rows} rows`);
    }
  }
  for (const key of applied.keys()) mismatched.push(`${key} has chunks on the target but is not listed as copied`);
  if (missing.length > 0) {
    throw new ApplyGapError(`snapshot ${summary.snapshotId} is not complete on the target yet: ${missing.slice(0, 5).join('; ')}${missing.length > 5 ? `; and ${missing.length - 5} more` : ''}`, {
      details: { stream: batch.stream, snapshotId: summary.snapshotId, missing: missing.slice(0, 50) },
    });
  }
  if (mismatched.length > 0) {
    throw new PermanentError(`snapshot ${summary.snapshotId} does not add up on the target: ${mismatched.slice(0, 5).join('; ')}`, {
      remedy: 'Start a new initial copy: `lifeboat agent --resnapshot`, then `lifeboat resume`.',
      details: { snapshotId: summary.snapshotId, mismatched: mismatched.slice(0, 50) },
    });
  }
  await client.query(
    `UPDATE lifeboat.stream_state SET watermark = $2::pg_lsn, applied_at = now(), snapshot_complete = true, snapshot_completed_at = now(),
       writer_epoch = GREATEST(writer_epoch, $3) WHERE stream = $1`,
    [batch.stream, formatLsn(summary.consistentLsn), batch.epoch],
  );
  const rows = summary.tables.reduce((n, t) => n + t.rows, 0);
  await audit(client, batch.stream, 'agent', 'snapshot-complete', { snapshotId: summary.snapshotId, tables: summary.tables.length, rows });
  return {
    outcome: 'snapshot-complete',
    stream: batch.stream,
    watermark: summary.consistentLsn,
    appliedTransactions: 0,
    appliedRows: 0,
    skippedTransactions: 0,
    reason: `snapshot ${summary.snapshotId} complete (${summary.tables.length} tables, ${rows} rows); watermark set to ${formatLsn(summary.consistentLsn)}`,
  };
}

// ---------------------------------------------------------------------------
// Changes

/** Creates tables missing on the target from their descriptors, once per batch (again after DDL). */
class TableEnsurer {
  private readonly known = new Set<number>();
  constructor(
    private readonly client: ApplyClient,
    private readonly relations: readonly RelationDescriptor[],
    private readonly log: Logger,
  ) {}

  async ensure(index: number): Promise<void> {
    if (this.known.has(index)) return;
    const relation = this.relations[index]!;
    const res = await this.client.query<{ oid: string | null }>('SELECT to_regclass($1)::oid AS oid', [quoteTable(relation)]);
    if (res.rows[0]?.oid == null) {
      for (const statement of buildCreateTable(relation)) await this.client.query(statement);
      this.log.info('created a table missing on the target from its relation descriptor', { table: qualifiedName(relation) });
    }
    this.known.add(index);
  }

  /** DDL may have created or dropped anything. */
  forget(): void {
    this.known.clear();
  }
}

async function runStatement(client: ApplyClient, statement: SqlStatement): Promise<number> {
  const res = await client.query(statement.text, statement.values);
  return res.rowCount ?? 0;
}

async function applyChanges(client: ApplyClient, changes: Parameters<typeof groupChanges>[0], relations: readonly RelationDescriptor[], log: Logger): Promise<number> {
  const tables = new TableEnsurer(client, relations, log);
  let rows = 0;
  for (const group of groupChanges(changes, relations)) {
    await applyGroup(client, group, relations, tables, log);
    rows += groupRowCount(group);
  }
  return rows;
}

async function applyGroup(client: ApplyClient, group: ChangeGroup, relations: readonly RelationDescriptor[], tables: TableEnsurer, log: Logger): Promise<void> {
  if (group.kind === 'truncate') {
    for (const index of group.rels) await tables.ensure(index);
    await client.query(buildTruncate(group.rels.map((i) => relations[i]!), group));
    return;
  }
  const relation = relations[group.rel]!;
  if (group.kind === 'ddl') {
    await replayDdl(client, relation, group.row, log);
    tables.forget();
    return;
  }
  await tables.ensure(group.rel);
  if (group.kind === 'insert') {
    await runStatement(client, buildInsert(relation, group.rows));
    return;
  }
  if (group.kind === 'update' && group.setColumns.length === 0) return; // every column unchanged TOAST: a no-op
  const expected = groupRowCount(group);
  const statement = group.kind === 'update' ? buildUpdate(relation, group) : buildDelete(relation, group);
  const found = await runStatement(client, statement);
  if (found !== expected) {
    throw new PermanentError(
      `the target diverged from the source: ${expected - found} of ${expected} row${expected === 1 ? '' : 's'} to ${group.kind} in ${qualifiedName(relation)} ${expected - found === 1 ? 'was' : 'were'} not found`,
      {
        remedy: `Compare ${qualifiedName(relation)} on both sides and repair the target (or start a new initial copy with \`lifeboat agent --resnapshot\`), then \`lifeboat resume\`.`,
        details: { table: qualifiedName(relation), op: group.kind, expected, found },
      },
    );
  }
}

/** Runs one captured DDL statement (an insert into lifeboat.ddl_log) at its position, and keeps the row. */
async function replayDdl(client: ApplyClient, relation: RelationDescriptor, row: Tuple, log: Logger): Promise<void> {
  const value = (name: string): string | null => {
    const i = relation.columns.findIndex((c) => c.name === name);
    const v = i === -1 ? null : row[i];
    return typeof v === 'string' ? v : null;
  };
  await runStatement(client, buildInsert(relation, [row]));
  const ddl = value('ddl');
  if (ddl === null) throw new ValidationError('a lifeboat.ddl_log row has no ddl text', { details: { id: value('id') } });
  const objectIdentity = value('object_identity') ?? '';
  if (objectIdentity.startsWith(`${LIFEBOAT_SCHEMA}.`) || objectIdentity === LIFEBOAT_SCHEMA) {
    log.info('not replaying DDL on the lifeboat schema', { id: value('id'), objectIdentity });
    return;
  }
  const plan = planDdlReplay(ddl);
  for (const s of plan.skipped) log.info('left out of DDL replay', { id: value('id'), statement: s.statement.slice(0, 200), why: s.why });
  for (const s of plan.rewritten) log.info('changed for DDL replay', { id: value('id'), statement: s.statement.slice(0, 200), why: s.why });
  const saved = await client.query<{ path: string }>("SELECT current_setting('search_path') AS path");
  const searchPath = value('search_path');
  if (searchPath !== null) await client.query("SELECT set_config('search_path', $1, true)", [searchPath]);
  for (const statement of plan.run) {
    // The extended protocol runs exactly one statement: a splitting mistake fails loudly.
    await client.query({ text: statement, queryMode: 'extended' } as pg.QueryConfig);
  }
  await client.query("SELECT set_config('search_path', $1, true)", [saved.rows[0]?.path ?? '"$user", public']);
  log.info('replayed DDL', { id: value('id'), commandTag: value('command_tag'), objectIdentity, statements: plan.run.length });
}

/**
 * Sets each shipped sequence value, never moving a sequence backwards. A
 * sequence missing on the target is created (a table created from its
 * descriptor has none) so failover hands out values past the source's.
 */
async function applySequences(client: ApplyClient, sequences: readonly SequenceState[]): Promise<void> {
  for (const seq of sequences) {
    const name = `${quoteIdent(seq.schema)}.${quoteIdent(seq.name)}`;
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(seq.schema)}`);
    await client.query(`CREATE SEQUENCE IF NOT EXISTS ${name}`);
    const res = await client.query<{ last_value: string; is_called: boolean; increment_by: string }>(
      `SELECT s.last_value::text, s.is_called, p.increment_by::text FROM ${name} AS s, pg_sequences AS p WHERE p.schemaname = $1 AND p.sequencename = $2`,
      [seq.schema, seq.name],
    );
    const cur = res.rows[0];
    if (cur === undefined) continue;
    const inc = BigInt(cur.increment_by);
    // Position of the last value handed out (or "before start" when not called).
    const position = (value: bigint, called: boolean): bigint => (called ? value : value - inc);
    const current = position(BigInt(cur.last_value), cur.is_called);
    const shipped = position(BigInt(seq.lastValue), seq.isCalled);
    const ahead = inc > 0n ? shipped > current : shipped < current;
    if (ahead) await client.query('SELECT setval($1::regclass, $2::bigint, $3)', [name, seq.lastValue, seq.isCalled]);
  }
}

async function audit(client: ApplyClient, stream: string, actor: string, action: string, detail: Record<string, unknown>): Promise<void> {
  await client.query('INSERT INTO lifeboat.audit (stream, actor, action, detail) VALUES ($1, $2, $3, $4)', [stream, actor, action, JSON.stringify(detail)]);
}

// ---------------------------------------------------------------------------
// Halting, resuming, fencing

async function haltStream(
  client: ApplyClient,
  batch: ChangeBatch,
  err: PermanentError,
  attributes: Readonly<Record<string, string>> | undefined,
): Promise<HaltStatus> {
  const identity = batchIdentity(batch, attributes);
  const remedy = err.remedy ?? RESUME_REMEDY;
  try {
    await client.query('BEGIN');
    const state = await lockStream(client, batch.stream);
    if (state.halted) {
      await client.query('COMMIT');
      return state.halt!;
    }
    const res = await client.query<{ halted_at: Date }>(
      `UPDATE lifeboat.stream_state SET halted = true, halt_reason = $2, halt_remedy = $3, halt_batch = $4, halted_at = now()
       WHERE stream = $1 RETURNING halted_at`,
      [batch.stream, err.message, remedy, JSON.stringify(identity)],
    );
    await audit(client, batch.stream, 'apply', 'halt', { reason: err.message, remedy, batch: identity, rows: batchRowCount(batch), details: err.details });
    await client.query('COMMIT');
    return { reason: err.message, remedy, batch: identity, haltedAt: res.rows[0]?.halted_at ?? null };
  } catch (haltErr) {
    await client.query('ROLLBACK').catch(() => undefined);
    // Not recorded: the batch must come back and fail (and halt) again.
    throw new RetryableError(`could not record the halt of stream ${batch.stream} (${describe(haltErr)}) after: ${err.message}`, { cause: haltErr });
  }
}

export interface ResumeOptions {
  /** The halted batch to give up: the watermark moves to its lsnLast. Must match the recorded halt. */
  readonly skipBatch?: { readonly lsnFirst: Lsn; readonly lsnLast: Lsn };
  readonly actor: string;
  readonly reason: string;
}

export interface ResumeResult {
  readonly wasHalted: boolean;
  readonly watermark: Lsn | null;
  readonly skipped: BatchIdentity | null;
}

/**
 * Clears a halt (audited). With skipBatch, also moves the watermark past that
 * batch, which must be the batch the stream halted on: its changes are lost
 * on the target, which the audit row records.
 */
export async function resumeStream(client: ApplyClient, stream: string, opts: ResumeOptions): Promise<ResumeResult> {
  if (opts.actor.trim() === '' || opts.reason.trim() === '') throw new ValidationError('resume needs an actor and a reason (both are audited)');
  await client.query('BEGIN');
  try {
    const state = await readLocked(client, stream);
    let watermark = state.watermark;
    let skipped: BatchIdentity | null = null;
    if (opts.skipBatch !== undefined) {
      const halted = state.halt?.batch;
      const want = `${formatLsn(opts.skipBatch.lsnFirst)}..${formatLsn(opts.skipBatch.lsnLast)}`;
      if (!state.halted || halted == null) {
        throw new ValidationError(`stream ${stream} is not halted on a batch, so there is nothing to skip (asked to skip ${want})`);
      }
      if (halted.lsnFirst !== formatLsn(opts.skipBatch.lsnFirst) || halted.lsnLast !== formatLsn(opts.skipBatch.lsnLast)) {
        throw new ValidationError(`stream ${stream} halted on batch ${halted.lsnFirst}..${halted.lsnLast}, not ${want}`, {
          remedy: `Pass --skip-batch ${halted.lsnFirst}..${halted.lsnLast}.`,
        });
      }
      if (halted.kind === 'snapshot' || halted.kind === 'marker') {
        throw new ValidationError(`a ${halted.kind} batch cannot be skipped`, { remedy: 'Start a new initial copy with `lifeboat agent --resnapshot`.' });
      }
      if (watermark === null || parseLsn(halted.lsnPrev) > watermark) {
        throw new ValidationError(`the halted batch follows ${halted.lsnPrev} but the watermark is ${watermark === null ? 'unset' : formatLsn(watermark)}: skipping it would leave a gap`);
      }
      if (opts.skipBatch.lsnLast > watermark) watermark = opts.skipBatch.lsnLast;
      skipped = halted;
    }
    await client.query(
      `UPDATE lifeboat.stream_state SET halted = false, halt_reason = NULL, halt_remedy = NULL, halt_batch = NULL, halted_at = NULL,
         watermark = $2::pg_lsn WHERE stream = $1`,
      [stream, watermark === null ? null : formatLsn(watermark)],
    );
    await audit(client, stream, opts.actor, skipped ? 'resume-skip-batch' : 'resume', {
      reason: opts.reason,
      wasHalted: state.halted,
      previousHalt: state.halt === null ? null : { reason: state.halt.reason, batch: state.halt.batch },
      skipped,
      watermarkBefore: state.watermark === null ? null : formatLsn(state.watermark),
      watermarkAfter: watermark === null ? null : formatLsn(watermark),
    });
    await client.query('COMMIT');
    return { wasHalted: state.halted, watermark, skipped };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err instanceof PermanentError || err instanceof RetryableError ? err : classifyApplyError(err);
  }
}

async function readLocked(client: ApplyClient, stream: string): Promise<StreamState> {
  const res = await client.query<StateRow>(`SELECT ${STATE_COLUMNS} FROM lifeboat.stream_state WHERE stream = $1 FOR UPDATE`, [stream]);
  const row = res.rows[0];
  if (row === undefined) throw new ValidationError(`stream ${JSON.stringify(stream)} is unknown on the target`);
  return toState(row);
}

/**
 * Raises the fencing epoch (failover, issue 5). Never lowers it: returns the
 * epoch in force afterwards. Batches with a lower epoch are refused from the
 * moment this commits (the apply transaction reads it under the row lock).
 */
export async function setFencingEpoch(client: ApplyClient, stream: string, epoch: number, actor = 'failover'): Promise<number> {
  if (!Number.isSafeInteger(epoch) || epoch < 0) throw new ValidationError(`epoch must be an integer ≥ 0, got ${epoch}`);
  await client.query('BEGIN');
  try {
    const before = await lockStream(client, stream);
    if (epoch > before.epoch) {
      await client.query('UPDATE lifeboat.stream_state SET epoch = $2, epoch_set_at = now() WHERE stream = $1', [stream, epoch]);
      await audit(client, stream, actor, 'fencing-epoch', { from: before.epoch, to: epoch });
    }
    await client.query('COMMIT');
    return Math.max(epoch, before.epoch);
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err instanceof PermanentError || err instanceof RetryableError ? err : classifyApplyError(err);
  }
}

// ---------------------------------------------------------------------------
// Error classes

/** SQLSTATEs (exact or class prefix) after which the same batch may succeed later. */
const RETRYABLE_SQLSTATES: readonly string[] = [
  '08', // connection exception
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '40003', // statement_completion_unknown
  '53', // insufficient resources (disk full, out of memory, too many connections)
  '55P03', // lock_not_available
  '55006', // object_in_use
  '57014', // query_canceled (statement timeout)
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '57P05', // idle_session_timeout
  '25P03', // idle_in_transaction_session_timeout
  '58', // system error (I/O)
];
const NETWORK_ERROR_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function remedyFor(sqlstate: string): string {
  if (sqlstate === '42703' || sqlstate === '42P01' || sqlstate === '42704') {
    return `The target's schema lacks an object the change needs (SQLSTATE ${sqlstate}). Replay the schema change by hand on the target, then run \`lifeboat resume\`.`;
  }
  if (sqlstate.startsWith('23')) {
    return `A constraint on the target refused the change (SQLSTATE ${sqlstate}): the target diverged from the source. Repair the row on the target (or \`lifeboat agent --resnapshot\`), then \`lifeboat resume\`.`;
  }
  if (sqlstate.startsWith('22')) {
    return `A value could not be stored on the target (SQLSTATE ${sqlstate}): compare the column types on both sides, fix the target, then \`lifeboat resume\`.`;
  }
  return RESUME_REMEDY;
}

/** Maps any error from applying to RetryableError or PermanentError (see RETRYABLE_SQLSTATES). */
export function classifyApplyError(err: unknown): RetryableError | PermanentError {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const e = err as { code?: unknown; message?: unknown; detail?: unknown; where?: unknown; table?: unknown; column?: unknown };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = describe(err);
  if (code !== undefined && /^[0-9A-Z]{5}$/.test(code)) {
    const retry = RETRYABLE_SQLSTATES.some((p) => code.startsWith(p));
    const details = {
      sqlstate: code,
      ...(typeof e.detail === 'string' && { detail: e.detail }),
      ...(typeof e.where === 'string' && { where: e.where }),
      ...(typeof e.table === 'string' && { table: e.table }),
      ...(typeof e.column === 'string' && { column: e.column }),
    };
    const text = `${message}${typeof e.detail === 'string' ? ` (${e.detail})` : ''} [SQLSTATE ${code}]`;
    return retry ? new RetryableError(text, { details, cause: err }) : new PermanentError(text, { remedy: remedyFor(code), details, cause: err });
  }
  if ((code !== undefined && NETWORK_ERROR_CODES.has(code)) || /Connection terminated|connection error|Client was closed|not queryable/i.test(message)) {
    return new RetryableError(`lost the connection to the target: ${message}`, { cause: err });
  }
  return new PermanentError(`applying failed: ${message}`, { remedy: RESUME_REMEDY, cause: err });
}
