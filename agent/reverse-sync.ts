// Reverse sync for failback (issue 5): while failed over, the cloud database
// served the app's writes; this brings them back to the local database, with
// the same capture code (replication-stream, pgoutput-reader, change-batcher,
// snapshot-copier) and the same apply engine (functions/apply-engine.ts) as
// the forward direction, and then hands the stream back to the agent.
//
//   ReverseSync.start()
//     1. on the cloud: a publication of every table outside the `lifeboat`
//        schema (FOR TABLE ONLY …, created BEFORE the slot so pgoutput finds
//        it at every decoded position) and a pgoutput slot with an exported
//        snapshot, consistent point C;
//     2. on local, in ONE transaction with session_replication_role = replica
//        (no FK checks, no user triggers, no event triggers): TRUNCATE every
//        copied table that exists locally in one statement (TRUNCATE ONLY of a
//        referenced table alone is refused whatever the role), create the
//        missing ones from their descriptors, insert every row the snapshot
//        shows, and mark the reverse stream `reverse-<stream>` complete at C
//        in local `lifeboat` bookkeeping (ensureTargetSchema). Rebuild, not
//        patch: local may hold stranded transactions the cloud never got
//        (saved to a report before this starts), so only a full copy makes
//        local equal to the cloud. Either all of it commits or none.
//     3. stream from the slot at C: capture → ChangeBatch → applyBatch on
//        local, in process; confirm each batch's lsnLast to the cloud only
//        after its local commit. Heartbeats (pg_logical_emit_message on the
//        cloud, with the cloud's sequence values) come back through the slot
//        and tell exactly when everything committed before them is applied;
//        applying them also moves local sequences forward (never back).
//   ReverseSync.drain()  after the cloud is fenced: reads pg_current_wal_lsn()
//        on the cloud, emits a heartbeat after it, and waits until local has
//        applied that heartbeat.
//   resumeForwardStreaming()  drops the reverse slot and publication on the
//        cloud, the old forward slot on local, creates a new forward slot,
//        writes the agent's state file (stream from the slot, no snapshot)
//        and moves the target's watermark to the new slot's consistent point.
//
// Why reverse-applied rows never loop back to the cloud:
//   - Every local write of reverse sync (copy, applied batches, bookkeeping)
//     commits before resumeForwardStreaming creates the new forward slot, so
//     all of it lies before that slot's consistent point and is never decoded.
//   - The old forward slot did see those writes in WAL, but it is dropped
//     unread: its stranded tail was read and saved before reverse sync began,
//     and an agent still reading it would publish them with its old epoch,
//     which the cloud refuses as stale (fencing).
//   - DDL capture: every local session of reverse sync runs with
//     session_replication_role = replica, under which event triggers do not
//     fire, so creating a missing table, sequence or the bookkeeping schema
//     adds no row to local lifeboat.ddl_log (and the rows already there are
//     never re-sent: a slot streams only what commits after its start).
//   - The reverse publication leaves out the cloud's `lifeboat` schema, so
//     neither the cloud's bookkeeping nor its copy of ddl_log comes back.
//   - The local bookkeeping tables of the reverse stream are dropped before the
//     new forward slot exists: the forward publication (FOR ALL TABLES, or
//     all-except with reconcile) would otherwise ship them to the cloud on a
//     later `--resnapshot`, where they would replace the cloud's own
//     lifeboat.stream_state (watermark and fencing epoch).
//
// Crashes: a copy cannot resume (the exported snapshot dies with its
// connection), so start() always begins anew: it drops a reverse slot left by
// an earlier run, and a failed start() drops the slot it made. The local
// database must stay fenced (default_transaction_read_only = on, by
// agent/local-fence.ts) from before start() until resumeForwardStreaming()
// returned; our own writer sessions turn read-only off for themselves only.
// resumeForwardStreaming() may be run again after a failure as long as the
// fence holds: nothing writes to local in between, so the slot it drops and
// creates again holds nothing.

import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { z } from 'zod';
import { backoffDelayMs, sleep } from '../core/backoff.ts';
import { STREAM_ID_PATTERN, qualifiedName, type ChangeBatch, type RelationDescriptor } from '../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError, describeError, isRetryable } from '../core/errors.ts';
import { createLogger, registerUrlSecrets, type Logger } from '../core/log.ts';
import { formatLsn, lsnDiffBytes, parseLsn, type Lsn } from '../core/lsn.ts';
import { ApplyGapError, StreamHaltedError, applyBatch, classifyApplyError, readStreamState, type ApplyClient, type ApplyOutcome } from '../functions/apply-engine.ts';
import { buildCreateTable, buildInsert, quoteTable } from '../functions/apply-sql.ts';
import { rebaseStreamWatermark } from '../functions/target-control.ts';
import { ensureTargetSchema } from '../functions/target-schema.ts';
import { agentStateFile, readAgentState, writeAgentState, type AgentState } from './agent-state.ts';
import { ChangeBatcher, UnknownTypeError, type TypeRef } from './change-batcher.ts';
import { createLogicalSlot, createReplicationClient, startReplicationStream, validateSlotName, type ReplicationStream } from './replication-stream.ts';
import { SnapshotCopier, classifySnapshotError } from './snapshot-copier.ts';
import { dropSlot, emitHeartbeat, inspectSlot, listPublishedTables, readSequences, slotProblem, type TableName } from './source-setup.ts';

/** Stream id of the reverse direction on the local database's bookkeeping. */
export const REVERSE_STREAM_PREFIX = 'reverse-';

/** `reverse-<stream>`. */
export function reverseStreamName(stream: string): string {
  const name = `${REVERSE_STREAM_PREFIX}${stream}`;
  if (!STREAM_ID_PATTERN.test(stream) || !STREAM_ID_PATTERN.test(name)) {
    throw new ValidationError(`stream id ${JSON.stringify(stream)} cannot name a reverse stream`, {
      remedy: `Stream ids match ${STREAM_ID_PATTERN.source}; with the "${REVERSE_STREAM_PREFIX}" prefix they must still fit 63 characters.`,
    });
  }
  return name;
}

const LIFEBOAT_SCHEMA = 'lifeboat';
const APPLICATION_NAME = 'lifeboat-reverse-sync';
const LOCK_TIMEOUT = '60s';
const ident = (name: string): string => pg.escapeIdentifier(name);
const display = (t: TableName): string => `${t.schema}.${t.name}`;

/**
 * The bookkeeping tables ensureTargetSchema creates, except ddl_log, which on
 * the local database belongs to DDL capture. Dropped from local by
 * resumeForwardStreaming (see the header).
 */
const REVERSE_BOOKKEEPING_TABLES = ['stream_state', 'snapshots', 'snapshot_chunks', 'stale_batches', 'audit', 'rejected_messages', 'schema_version'] as const;

// Outcomes a streamed batch may have here; anything else (a stale epoch, a
// snapshot outcome) would mean the batch was not applied, which must stop us.
const APPLIED_OUTCOMES: ReadonlySet<ApplyOutcome> = new Set(['applied', 'heartbeat', 'duplicate']);

const publicationName = z
  .string()
  .min(1)
  .refine((s) => !s.includes('\0') && Buffer.byteLength(s, 'utf8') <= 63, 'must be a PostgreSQL identifier: 1–63 bytes, no NUL');
const slotName = z.string().regex(/^[a-z0-9_]{1,63}$/, 'must be a replication slot name: a-z, 0-9 and _, at most 63 characters');
const databaseUrl = z.string().regex(/^postgres(?:ql)?:\/\//, 'must be a postgres:// or postgresql:// URL');
const streamId = z.string().refine((s) => STREAM_ID_PATTERN.test(`${REVERSE_STREAM_PREFIX}${s}`) && STREAM_ID_PATTERN.test(s), {
  message: `must be a stream id (${STREAM_ID_PATTERN.source}) short enough to carry the "${REVERSE_STREAM_PREFIX}" prefix`,
});

const reverseSyncOptionsSchema = z.object({
  cloudUrl: databaseUrl,
  localUrl: databaseUrl,
  stream: streamId,
  slot: slotName,
  publication: publicationName,
  epoch: z.int().min(0).optional(),
  chunkRows: z.int().min(1).optional(),
  heartbeatIntervalMs: z.int().min(50).optional(),
  maxBatchRows: z.int().min(1).optional(),
  maxBatchBytes: z.int().min(1).optional(),
});

export interface ReverseSyncOptions {
  /** The cloud database, as a role with REPLICATION (Cloud SQL: cloudsql.logical_decoding = on). */
  readonly cloudUrl: string;
  /** The local database; the role may SET session_replication_role (superuser or GRANT SET ON PARAMETER). */
  readonly localUrl: string;
  /** The forward stream id; the reverse direction is `reverse-<stream>`. */
  readonly stream: string;
  /** The reverse slot on the cloud (created here; dropped by resumeForwardStreaming). */
  readonly slot: string;
  /** The reverse publication on the cloud (created here; dropped by resumeForwardStreaming). */
  readonly publication: string;
  /** Epoch carried by reverse batches (default 0); the local reverse stream refuses a lower one. */
  readonly epoch?: number;
  /** Rows per copied chunk (default 5,000). */
  readonly chunkRows?: number;
  /** How often the cloud is asked for its WAL position and a heartbeat is emitted (default 2,000 ms). */
  readonly heartbeatIntervalMs?: number;
  /** Batch limits for the in-process apply (defaults 5,000 rows, 16 MiB). */
  readonly maxBatchRows?: number;
  readonly maxBatchBytes?: number;
  readonly logger?: Logger;
  readonly signal?: AbortSignal;
}

export type ReverseSyncPhase = 'copying' | 'streaming' | 'caught-up' | 'stopped' | 'failed';

export interface ReverseSyncStatus {
  readonly phase: ReverseSyncPhase;
  /** Tables whose copy finished (in the local copy transaction). */
  readonly copiedTables: number;
  /** Rows inserted by the copy. */
  readonly rowsCopied: number;
  /** The reverse stream's watermark on local: everything the cloud committed before it is applied. */
  readonly appliedLsn: string | null;
  /** pg_current_wal_lsn() on the cloud, as last read. */
  readonly cloudWalLsn: string | null;
  readonly lagBytes: number | null;
  /** appliedLsn ≥ cloudWalLsn: local holds everything the cloud had committed when last asked. */
  readonly caughtUp: boolean;
  /** What is happening, as a sentence. */
  readonly detail: string;
}

export interface DrainResult {
  /** The local watermark of the reverse stream after the drain. */
  readonly appliedLsn: Lsn;
  /** pg_current_wal_lsn() on the cloud when drain() was called; appliedLsn is past it. */
  readonly cloudWalLsn: Lsn;
}

interface Waiter {
  readonly lsn: Lsn;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/** Cloud → local sync for failback. See the header. */
export class ReverseSync {
  private readonly opts: Required<Pick<ReverseSyncOptions, 'cloudUrl' | 'localUrl' | 'stream' | 'slot' | 'publication'>> & {
    readonly epoch: number;
    readonly chunkRows: number;
    readonly heartbeatIntervalMs: number;
    readonly maxBatchRows: number;
    readonly maxBatchBytes: number;
  };
  private readonly reverseStream: string;
  private readonly log: Logger;
  private readonly stopController = new AbortController();
  private readonly signal: AbortSignal;
  private readonly typeNames = new Map<string, string>();

  private started = false;
  private stopping = false;
  private phase: ReverseSyncPhase = 'stopped';
  private detail = 'Reverse sync has not started.';
  private failure: Error | undefined;
  private copiedTables = 0;
  private rowsCopied = 0;
  private applied: Lsn | null = null;
  private cloudWalLsn: Lsn | null = null;
  private seq = 0;
  private tables: TableName[] = [];
  private waiters: Waiter[] = [];
  private activeStream: ReplicationStream | undefined;
  /** A session streams now: caughtUp means nothing while disconnected. */
  private live = false;
  private starting: Promise<void> | undefined;
  private loop: Promise<void> | undefined;
  private settled: Promise<void> | undefined;

  constructor(options: ReverseSyncOptions) {
    const parsed = reverseSyncOptionsSchema.safeParse(options);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new ValidationError(`invalid reverse sync options: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'unknown problem'}`);
    }
    const o = parsed.data;
    this.opts = {
      cloudUrl: o.cloudUrl,
      localUrl: o.localUrl,
      stream: o.stream,
      slot: o.slot,
      publication: o.publication,
      epoch: o.epoch ?? 0,
      chunkRows: o.chunkRows ?? 5_000,
      heartbeatIntervalMs: o.heartbeatIntervalMs ?? 2_000,
      maxBatchRows: o.maxBatchRows ?? 5_000,
      maxBatchBytes: o.maxBatchBytes ?? 16 * 1024 * 1024,
    };
    registerUrlSecrets(o.cloudUrl);
    registerUrlSecrets(o.localUrl);
    this.reverseStream = reverseStreamName(o.stream);
    this.log = (options.logger ?? createLogger({ component: 'reverse-sync' })).child({ stream: this.reverseStream, slot: o.slot });
    this.signal = options.signal ? AbortSignal.any([options.signal, this.stopController.signal]) : this.stopController.signal;
    options.signal?.addEventListener('abort', () => void this.stop(), { once: true });
  }

  /**
   * Sets up the cloud side, copies every table into local (one transaction)
   * and starts streaming in the background. Resolves once streaming began.
   * @throws PermanentError for what needs an operator (privileges, schema
   *   differences, a foreign slot); RetryableError for what a new start() may
   *   get past (connections, locks). Either way nothing is left half-copied.
   */
  async start(): Promise<void> {
    if (this.started) throw new ValidationError('a ReverseSync can be started once; make a new one to start over');
    this.started = true;
    if (this.signal.aborted) this.stopping = true;
    if (this.stopping) throw new PermanentError('reverse sync was stopped before it started');
    this.setPhase('copying', 'Preparing the cloud publication and slot for reverse sync.');
    this.starting = this.prepareAndCopy();
    try {
      await this.starting;
    } catch (err) {
      await this.dropOwnSlotAfterFailedStart();
      if (this.stopping) {
        // Stopped on request while copying: the copier aborts with its own error; say what happened instead.
        const stopped = new PermanentError('reverse sync was stopped while copying; the local copy was rolled back (the reverse slot is dropped unless the cloud was unreachable: see the log)', {
          cause: err,
        });
        this.setPhase('stopped', 'Reverse sync was stopped while copying; nothing of the copy was committed.');
        throw stopped;
      }
      const error = asError(err);
      this.fail(error);
      throw error;
    }
    if (this.stopping) {
      this.setPhase('stopped', this.stoppedDetail());
      return;
    }
    this.setPhase('streaming', `Streaming cloud changes into the local database from ${formatLsn(this.applied!)}.`);
    this.loop = this.streamLoop();
    this.settled = this.loop.then(() => {
      if (this.failure) throw this.failure;
    });
    this.settled.catch(() => undefined); // observed through wait(), drain() and status()
  }

  status(): ReverseSyncStatus {
    const applied = this.applied;
    const cloud = this.cloudWalLsn;
    const lag = applied !== null && cloud !== null ? Math.max(0, lsnDiffBytes(cloud, applied)) : null;
    return {
      phase: this.phase,
      copiedTables: this.copiedTables,
      rowsCopied: this.rowsCopied,
      appliedLsn: applied === null ? null : formatLsn(applied),
      cloudWalLsn: cloud === null ? null : formatLsn(cloud),
      lagBytes: lag,
      caughtUp: this.isCaughtUp(),
      detail: this.detail,
    };
  }

  /**
   * Waits until everything the cloud committed up to now (pg_current_wal_lsn()
   * read at this call) is applied to local. Call it after the cloud is fenced.
   * @throws RetryableError when the time runs out (nothing is lost: call it
   *   again); the reverse sync's own error when it failed.
   */
  async drain(options: { readonly timeoutMs: number }): Promise<DrainResult> {
    const timeoutMs = options.timeoutMs;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new ValidationError(`drain(): timeoutMs must be a positive number, got ${String(timeoutMs)}`);
    if (this.failure) throw this.failure;
    if (this.phase !== 'streaming' && this.phase !== 'caught-up') {
      throw new ValidationError(`drain() needs a reverse sync that is streaming, but it is ${this.phase}: ${this.detail}`);
    }
    const cloud = await connect(this.opts.cloudUrl, `${APPLICATION_NAME}-drain`, this.log, ['SET search_path = pg_catalog']);
    try {
      await assertPublicationCoversCloud(cloud, this.opts.publication);
      const tables = await listPublishedTables(cloud, this.opts.publication);
      const target = await currentWalLsn(cloud);
      if (this.cloudWalLsn === null || target > this.cloudWalLsn) this.cloudWalLsn = target;
      // Positions come only from what travels through the slot: the heartbeat
      // stands after `target`, so once it is applied so is every commit before it.
      const heartbeat = await emitHeartbeat(cloud, await readSequences(cloud, tables));
      this.log.notice(`draining: waiting until local has applied everything the cloud committed up to ${formatLsn(target)}`, {
        cloudWalLsn: formatLsn(target),
        heartbeatLsn: formatLsn(heartbeat.lsn),
        timeoutMs,
      });
      await this.waitForApplied(heartbeat.lsn, timeoutMs);
      const appliedLsn = this.applied!;
      this.log.notice(`drained: local has applied the cloud's changes up to ${formatLsn(appliedLsn)}`, { cloudWalLsn: formatLsn(target) });
      return { appliedLsn, cloudWalLsn: target };
    } catch (err) {
      throw err instanceof PermanentError || err instanceof RetryableError ? err : classifyApplyError(err);
    } finally {
      await cloud.end().catch(() => undefined);
    }
  }

  /**
   * Stops streaming (what is applied stays applied). The reverse slot stays on
   * the cloud and holds WAL until resumeForwardStreaming() or
   * dropReverseReplication() drops it.
   */
  async stop(): Promise<void> {
    if (this.stopping) {
      await this.starting?.catch(() => undefined);
      await this.loop?.catch(() => undefined);
      return;
    }
    this.stopping = true;
    this.stopController.abort();
    await this.starting?.catch(() => undefined);
    await this.activeStream?.close().catch(() => undefined);
    await this.loop?.catch(() => undefined);
    if (!this.failure && this.started) {
      this.setPhase('stopped', this.stoppedDetail());
      this.log.notice(this.detail);
    }
    this.rejectWaiters(new PermanentError('reverse sync was stopped before local reached the requested position'));
  }

  /** Resolves when streaming stopped on request; rejects with the error that stopped it. */
  wait(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return this.settled ?? Promise.resolve();
  }

  // -------------------------------------------------------------------------
  // Setup and copy

  private async prepareAndCopy(): Promise<void> {
    const { cloudUrl, localUrl, slot, publication } = this.opts;
    const local = await connect(localUrl, APPLICATION_NAME, this.log, [
      // The local database is fenced read-only for every new session; this
      // session is the one that must write.
      'SET default_transaction_read_only = off',
    ]);
    let cloud: pg.Client | undefined;
    let repl: pg.Client | undefined;
    try {
      await assertMaySetReplicaRole(local);
      // For the whole session, not only inside applyBatch: ensureTargetSchema's
      // no-op CREATE SCHEMA IF NOT EXISTS would otherwise be logged by DDL capture.
      await local.query('SET session_replication_role = replica');
      await ensureTargetSchema(local);
      cloud = await connect(cloudUrl, APPLICATION_NAME, this.log, ['SET search_path = pg_catalog']);
      await assertLogicalDecoding(cloud);

      const existing = await inspectSlot(cloud, slot);
      if (existing !== undefined) {
        const problem = slotProblem(existing);
        if (problem && existing.walStatus !== 'lost') throw problem;
        if (existing.active) {
          throw new RetryableError(`reverse slot "${slot}" on the cloud is in use (walsender pid ${existing.activePid ?? 'unknown'})`, {
            remedy: 'Another reverse sync reads it: stop that one first. A walsender of a killed process ends within wal_sender_timeout.',
            details: { slot },
          });
        }
        this.log.notice(`dropping reverse slot "${slot}" left on the cloud by an earlier run: a reverse sync always starts with a fresh copy`);
        await dropSlot(cloud, slot);
      }

      const tables = await listCloudUserTables(cloud);
      await recreatePublication(cloud, publication, tables, this.log);
      this.tables = await listPublishedTables(cloud, publication);

      // The exported snapshot lives while this connection stays open and idle.
      repl = createReplicationClient(cloudUrl, APPLICATION_NAME);
      repl.on('error', (err) => this.log.warn('reverse replication connection error', { error: err }));
      await repl.connect();
      const created = await createLogicalSlot(repl, slot);
      this.log.notice(`reverse slot "${slot}" created on the cloud at ${formatLsn(created.consistentPoint)}; copying ${this.tables.length} tables into local`);
      await this.copyIntoLocal(local, created.snapshotName, created.consistentPoint);
      this.applied = created.consistentPoint;
    } finally {
      await repl?.end().catch(() => undefined);
      await cloud?.end().catch(() => undefined);
      await local.end().catch(() => undefined);
    }
  }

  /** The whole copy in one local transaction; see the header. */
  private async copyIntoLocal(local: pg.Client, snapshotName: string, consistentLsn: Lsn): Promise<void> {
    const tables = this.tables;
    const snapshotId = randomUUID();
    const present = await localTables(local, tables);
    const localOnly = await localTablesOutside(local, tables);
    if (localOnly.length > 0) {
      this.log.warn(`${localOnly.length} local table${localOnly.length === 1 ? ' is' : 's are'} not on the cloud and stay as they are`, { tables: localOnly.map(display) });
    }
    let doing = 'begin the local copy transaction';
    const copyLog = this.log.child({ step: 'copy', snapshotId });
    const inserted = new Map<string, number>();
    let marker: ChangeBatch['marker'];
    await local.query('BEGIN');
    try {
      await local.query('SET LOCAL session_replication_role = replica');
      await local.query(`SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
      if (present.size > 0) {
        doing = 'empty the local tables';
        await local.query(`TRUNCATE ONLY ${[...present.values()].map(quoteTable).join(', ')}`);
      }
      const copier = new SnapshotCopier({
        connectionString: this.opts.cloudUrl,
        snapshotName,
        consistentLsn,
        tables,
        chunkRows: this.opts.chunkRows,
        stream: this.reverseStream,
        epoch: this.opts.epoch,
        snapshotId,
        signal: this.signal,
        logger: copyLog,
      });
      let table: { name: string; rows: number; startedMs: number; lastLogMs: number } | undefined;
      doing = 'copy from the cloud';
      for await (const batch of copier.batches()) {
        if (batch.kind === 'marker') {
          marker = batch.marker;
          continue;
        }
        const snap = batch.snapshot;
        const relation = snap === undefined ? undefined : batch.relations[snap.relation];
        if (snap === undefined || relation === undefined) throw new PermanentError(`the snapshot copier yielded a ${batch.kind} batch without a table chunk`);
        const name = qualifiedName(relation);
        if (snap.chunk === 0) {
          doing = `create local table ${name}`;
          if (!present.has(name)) await this.createMissingTable(local, relation, copyLog);
          doing = 'copy from the cloud';
          const now = Date.now();
          table = { name, rows: 0, startedMs: now, lastLogMs: now };
          this.detail = `Copying table ${name} (${this.copiedTables + 1} of ${tables.length}) from the cloud snapshot at ${formatLsn(consistentLsn)} into the local database.`;
        }
        if (table === undefined || table.name !== name) throw new PermanentError(`chunk ${snap.chunk} of ${name} arrived before its chunk 0`);
        if (snap.rows.length > 0) {
          doing = `insert into local table ${name}`;
          const statement = buildInsert(relation, snap.rows);
          const res = await local.query(statement.text, statement.values);
          const count = res.rowCount ?? 0;
          if (count !== snap.rows.length) throw new PermanentError(`local table ${name} took ${count} of ${snap.rows.length} copied rows`);
          table.rows += count;
          this.rowsCopied += count;
          doing = 'copy from the cloud';
        }
        const now = Date.now();
        const seconds = (now - table.startedMs) / 1000;
        if (snap.lastChunk) {
          inserted.set(name, table.rows);
          this.copiedTables += 1;
          copyLog.info('table copied into local', { table: name, rows: table.rows, seconds: round(seconds), rowsPerSecond: rate(table.rows, seconds) });
        } else if (now - table.lastLogMs >= 10_000) {
          table.lastLogMs = now;
          copyLog.info('copying table into local', { table: name, rows: table.rows, seconds: round(seconds), rowsPerSecond: rate(table.rows, seconds) });
        }
      }
      doing = 'check the copy';
      checkCopyComplete(tables, inserted, marker);
      doing = 'record the copy in the local bookkeeping';
      await markReverseCopyComplete(local, { stream: this.reverseStream, snapshotId, consistentLsn, epoch: this.opts.epoch, tables: tables.length, rows: this.rowsCopied });
      doing = 'commit the local copy';
      await local.query('COMMIT');
    } catch (err) {
      await local.query('ROLLBACK').catch(() => undefined);
      this.copiedTables = 0;
      this.rowsCopied = 0;
      throw classifyCopyError(err, doing, snapshotName);
    }
    this.log.notice(`copied ${tables.length} tables (${this.rowsCopied} rows) from the cloud into local at ${formatLsn(consistentLsn)}`, {
      tables: tables.length,
      rows: this.rowsCopied,
    });
  }

  private async createMissingTable(local: pg.Client, relation: RelationDescriptor, log: Logger): Promise<void> {
    for (const statement of buildCreateTable(relation)) await local.query(statement);
    log.notice(`created table ${qualifiedName(relation)} on local from the cloud's descriptor: it did not exist locally`, { table: qualifiedName(relation) });
  }

  private async dropOwnSlotAfterFailedStart(): Promise<void> {
    // The copy was rolled back, so the slot holds WAL on the cloud for nothing.
    const cloud = await connect(this.opts.cloudUrl, APPLICATION_NAME, this.log, []).catch(() => undefined);
    if (cloud === undefined) {
      this.log.warn(`could not reach the cloud to drop reverse slot "${this.opts.slot}" after a failed start; it holds WAL until dropped`);
      return;
    }
    try {
      const slot = await inspectSlot(cloud, this.opts.slot);
      if (slot !== undefined && slotProblem(slot) === undefined && !slot.active) await dropSlot(cloud, this.opts.slot);
    } catch (err) {
      this.log.warn(`could not drop reverse slot "${this.opts.slot}" after a failed start; it holds WAL until dropped`, { error: err });
    } finally {
      await cloud.end().catch(() => undefined);
    }
  }

  // -------------------------------------------------------------------------
  // Streaming

  private async streamLoop(): Promise<void> {
    let attempt = 0;
    while (!this.stopping) {
      const startedAt = Date.now();
      try {
        await this.session();
        if (this.stopping) return;
        throw new RetryableError('the reverse replication stream ended without being asked to');
      } catch (caught) {
        // Raw pg errors (probe, bookkeeping reads): connection trouble retries, the rest is permanent.
        const err = caught instanceof PermanentError || caught instanceof RetryableError ? caught : classifyApplyError(caught);
        if (this.stopping && !(err instanceof PermanentError)) return;
        // In process, a gap cannot be filled by a redelivery: something else moved the local watermark.
        if (!isRetryable(err) || err instanceof ApplyGapError) {
          this.fail(withReverseRemedy(asError(err), this.opts.slot));
          return;
        }
        if (Date.now() - startedAt > 60_000) attempt = 0;
        attempt += 1;
        const delay = backoffDelayMs(attempt, { initialMs: 250, maxMs: 15_000, multiplier: 2 });
        this.setPhase('streaming', `Retrying the reverse stream in ${(delay / 1000).toFixed(1)} s because ${describeError(err)}`);
        this.log.warn('reverse stream session failed; retrying', { error: err, attempt, delayMs: delay });
        try {
          await sleep(delay, this.signal);
        } catch {
          return;
        }
      }
    }
  }

  /** One streaming session: a new local writer, cloud connection and stream from the local watermark. */
  private async session(): Promise<void> {
    const local = await connect(this.opts.localUrl, APPLICATION_NAME, this.log, [
      'SET default_transaction_read_only = off',
      // Checked by start(); keeps event triggers (DDL capture) quiet for every statement of this session.
      'SET session_replication_role = replica',
    ]);
    let cloud: pg.Client | undefined;
    let stream: ReplicationStream | undefined;
    let timer: NodeJS.Timeout | undefined;
    let probeFailure: unknown;
    try {
      const state = await readStreamState(local, this.reverseStream);
      if (state === undefined || state.watermark === null || !state.snapshotComplete) {
        throw new PermanentError(`the local bookkeeping of ${this.reverseStream} has no complete copy to stream from`, {
          remedy: 'Start the reverse sync again; it copies every table anew.',
        });
      }
      if (state.halted) throw new StreamHaltedError(this.reverseStream, state.halt!, false);
      const startLsn = state.watermark;
      this.applied = startLsn;
      cloud = await connect(this.opts.cloudUrl, APPLICATION_NAME, this.log, ['SET search_path = pg_catalog']);
      const control = cloud;
      this.tables = await listPublishedTables(control, this.opts.publication);
      const batcher = new ChangeBatcher({
        stream: this.reverseStream,
        epoch: () => this.opts.epoch,
        startLsn,
        maxRows: this.opts.maxBatchRows,
        maxBytes: this.opts.maxBatchBytes,
        // Batches are cut whenever the stream's queue runs dry (below), so this only bounds a busy stream.
        maxDelayMs: 200,
        clock: Date.now,
        typeName: (oid, typmod) => this.typeNames.get(`${oid}:${typmod}`),
        firstSeq: this.seq,
        logger: this.log,
      });
      stream = await startReplicationStream({
        connectionString: this.opts.cloudUrl,
        slot: this.opts.slot,
        publication: this.opts.publication,
        startLsn,
        applicationName: APPLICATION_NAME,
        logger: this.log,
      });
      this.activeStream = stream;
      this.live = true;
      if (this.stopping) await stream.close();
      const active = stream;
      let probing = false;
      const probe = () => {
        if (probing || probeFailure !== undefined) return;
        probing = true;
        this.probe(control)
          .catch((err) => {
            probeFailure ??= err;
            void active.close();
          })
          .finally(() => {
            probing = false;
          });
      };
      probe();
      timer = setInterval(probe, this.opts.heartbeatIntervalMs);

      for await (const item of active) {
        let batches: ChangeBatch[];
        try {
          batches = batcher.push(item);
        } catch (err) {
          if (!(err instanceof UnknownTypeError)) throw err;
          await this.loadTypeNames(control, err.types);
          batches = batcher.push(item);
        }
        for (const batch of batches) await this.applyOne(local, active, batch);
        // Nothing more queued: apply what is complete now rather than wait for a fuller batch.
        if (active.stats().queuedMessages === 0) for (const batch of batcher.flush()) await this.applyOne(local, active, batch);
        if (probeFailure !== undefined) break;
      }
      if (probeFailure !== undefined) throw probeFailure;
    } finally {
      if (timer !== undefined) clearInterval(timer);
      this.activeStream = undefined;
      this.live = false;
      await stream?.close().catch(() => undefined);
      await cloud?.end().catch(() => undefined);
      await local.end().catch(() => undefined);
    }
  }

  private async applyOne(local: pg.Client, stream: ReplicationStream, batch: ChangeBatch): Promise<void> {
    this.seq = batch.seq + 1;
    const result = await applyBatch(local, batch, { logger: this.log });
    if (!APPLIED_OUTCOMES.has(result.outcome)) {
      throw new PermanentError(`a reverse batch ${formatLsn(batch.lsnFirst)}..${formatLsn(batch.lsnLast)} was not applied to local: ${result.reason}`, {
        remedy: 'Check lifeboat.stream_state and lifeboat.stale_batches on the local database, then start the reverse sync again.',
        details: { outcome: result.outcome, lsnLast: formatLsn(batch.lsnLast) },
      });
    }
    if (result.watermark !== null && (this.applied === null || result.watermark > this.applied)) this.applied = result.watermark;
    // Only after the local commit: a crash before this re-sends the batch, and the watermark drops the duplicate.
    stream.confirm(batch.lsnLast);
    this.refreshStreamingDetail();
    this.resolveWaiters();
  }

  /** Reads the cloud's WAL position, checks the slot, and emits a heartbeat after the position. */
  private async probe(cloud: pg.Client): Promise<void> {
    const slot = await inspectSlot(cloud, this.opts.slot);
    if (slot === undefined) {
      throw new PermanentError(`reverse slot "${this.opts.slot}" was dropped on the cloud while reverse sync was streaming`, {
        remedy: 'Changes the cloud made since then cannot be streamed; start the reverse sync again (it copies every table anew).',
        details: { slot: this.opts.slot },
      });
    }
    const problem = slotProblem(slot);
    if (problem) throw problem;
    const sequences = await readSequences(cloud, this.tables);
    await emitHeartbeat(cloud, sequences);
    if (this.cloudWalLsn === null || slot.currentWalLsn > this.cloudWalLsn) this.cloudWalLsn = slot.currentWalLsn;
    this.refreshStreamingDetail();
  }

  private async loadTypeNames(cloud: pg.Client, types: readonly TypeRef[]): Promise<void> {
    // The cloud connection runs with search_path = pg_catalog, so format_type
    // qualifies every user type and local never depends on its own search_path.
    for (const t of types) {
      const res = await cloud.query<{ name: string | null }>('SELECT format_type($1::oid, $2::int) AS name', [t.oid, t.typmod]);
      const name = res.rows[0]?.name;
      if (!name) throw new PermanentError(`the cloud database does not know type oid ${t.oid} (typmod ${t.typmod})`);
      this.typeNames.set(`${t.oid}:${t.typmod}`, name);
    }
  }

  // -------------------------------------------------------------------------
  // State

  private isCaughtUp(): boolean {
    return this.live && (this.phase === 'streaming' || this.phase === 'caught-up') && this.applied !== null && this.cloudWalLsn !== null && this.applied >= this.cloudWalLsn;
  }

  private refreshStreamingDetail(): void {
    if (this.phase !== 'streaming' && this.phase !== 'caught-up') return;
    const applied = this.applied === null ? 'nothing yet' : formatLsn(this.applied);
    if (this.isCaughtUp()) {
      this.phase = 'caught-up';
      this.detail = `Caught up: local has applied every change the cloud had committed at ${formatLsn(this.cloudWalLsn!)} (applied up to ${applied}).`;
    } else {
      this.phase = 'streaming';
      const cloud = this.cloudWalLsn === null ? 'not read yet' : formatLsn(this.cloudWalLsn);
      const lag = this.status().lagBytes;
      this.detail = `Streaming cloud changes into the local database: applied up to ${applied}, the cloud was at ${cloud} when last asked${lag === null ? '' : ` (${lag} bytes behind)`}.`;
    }
  }

  private stoppedDetail(): string {
    return `Reverse sync stopped on request at ${this.applied === null ? 'no applied position' : formatLsn(this.applied)}; slot "${this.opts.slot}" on the cloud holds WAL until resumeForwardStreaming or dropReverseReplication drops it.`;
  }

  private setPhase(phase: ReverseSyncPhase, detail: string): void {
    this.phase = phase;
    this.detail = detail;
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.setPhase('failed', `Reverse sync failed: ${describeError(err)}`);
    this.log.error('reverse sync stopped on an error', { error: err });
    this.rejectWaiters(err);
  }

  private waitForApplied(lsn: Lsn, timeoutMs: number): Promise<void> {
    if (this.applied !== null && this.applied >= lsn) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(
          new RetryableError(
            `local has applied the cloud's changes up to ${this.applied === null ? 'nothing' : formatLsn(this.applied)}, not yet up to ${formatLsn(lsn)}, after ${timeoutMs} ms`,
            { remedy: 'Nothing is lost: the reverse sync goes on; call drain() again, with more time if the backlog is large.', details: { target: formatLsn(lsn) } },
          ),
        );
      }, timeoutMs);
      const waiter: Waiter = {
        lsn,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.waiters.push(waiter);
    });
  }

  private resolveWaiters(): void {
    if (this.waiters.length === 0 || this.applied === null) return;
    const applied = this.applied;
    const done = this.waiters.filter((w) => applied >= w.lsn);
    if (done.length === 0) return;
    this.waiters = this.waiters.filter((w) => applied < w.lsn);
    for (const w of done) w.resolve();
  }

  private rejectWaiters(err: unknown): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(err);
  }
}

// ---------------------------------------------------------------------------
// Dropping the reverse slot and publication

export interface ReverseReplicationNames {
  readonly cloudUrl: string;
  readonly slot: string;
  readonly publication: string;
}

/**
 * Drops the reverse slot and publication on the cloud (both idempotent). The
 * slot holds the cloud's WAL, so call this once reverse sync is over or given
 * up. A slot a reverse sync still reads is not dropped: RetryableError.
 */
export async function dropReverseReplication(names: ReverseReplicationNames, logger?: Logger): Promise<{ droppedSlot: boolean; droppedPublication: boolean }> {
  const parsed = z.object({ cloudUrl: databaseUrl, slot: slotName, publication: publicationName }).safeParse(names);
  if (!parsed.success) throw new ValidationError(`invalid reverse replication names: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  registerUrlSecrets(names.cloudUrl);
  const log = logger ?? createLogger({ component: 'reverse-sync' });
  const cloud = await connect(names.cloudUrl, APPLICATION_NAME, log, []);
  try {
    let droppedSlot = false;
    const slot = await inspectSlot(cloud, names.slot);
    if (slot !== undefined) {
      if (slot.slotType !== 'logical' || slot.plugin !== 'pgoutput' || slot.database !== slot.currentDatabase) {
        throw new PermanentError(`slot "${names.slot}" on the cloud is not a pgoutput slot of this database, so it is not the reverse slot`, {
          remedy: 'Check the reverse slot name; Lifeboat never drops a slot it did not make.',
        });
      }
      if (slot.active) {
        throw new RetryableError(`reverse slot "${names.slot}" is still read by a reverse sync (walsender pid ${slot.activePid ?? 'unknown'})`, {
          remedy: 'Stop the reverse sync first (ReverseSync.stop()), then try again.',
        });
      }
      droppedSlot = await dropSlot(cloud, names.slot);
      log.notice(`dropped reverse slot "${names.slot}" on the cloud`);
    }
    const res = await cloud.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [names.publication]);
    const droppedPublication = res.rows.length > 0;
    if (droppedPublication) {
      await cloud.query(`DROP PUBLICATION IF EXISTS ${ident(names.publication)}`);
      log.notice(`dropped reverse publication "${names.publication}" on the cloud`);
    }
    return { droppedSlot, droppedPublication };
  } catch (err) {
    throw err instanceof PermanentError || err instanceof RetryableError ? err : classifyApplyError(err);
  } finally {
    await cloud.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------
// Resuming forward streaming

export interface ResumeForwardStreamingOptions {
  /** The local database (the forward source). */
  readonly localUrl: string;
  /** The forward stream id. */
  readonly stream: string;
  /** The agent's slot (source.slot): the old one is dropped, a new one of the same name created. */
  readonly slot: string;
  /** The agent's publication (source.publication); it must exist. */
  readonly publication: string;
  /** Where the agent keeps agent-<stream>.json (resolveStateDir). */
  readonly stateDir: string;
  /** A dedicated connection to the target (Cloud SQL) with the lifeboat schema. */
  readonly targetClient: ApplyClient;
  /** The epoch the local side holds now (after the cloud was fenced); at least the target's fencing epoch. */
  readonly epoch: number;
  /** The reverse slot and publication on the cloud, dropped here. */
  readonly reverse: ReverseReplicationNames;
  readonly logger?: Logger;
}

export interface ResumeForwardStreamingResult {
  readonly slot: string;
  /** The new slot's consistent point: the agent streams from here, the target's watermark is here. */
  readonly consistentLsn: Lsn;
  readonly stateFile: string;
  readonly snapshotId: string;
  /** The old forward slot's confirmed position, when it still existed (it was dropped). */
  readonly droppedOldSlotAt: Lsn | null;
  readonly watermark: { readonly before: Lsn | null; readonly after: Lsn };
  readonly droppedReverseSlot: boolean;
  readonly droppedReversePublication: boolean;
  readonly droppedLocalBookkeeping: readonly string[];
}

/**
 * After drain() and with the cloud fenced and the local agent stopped: makes
 * the agent's next start stream local changes from a NEW slot without a new
 * snapshot. Steps, in an order that is safe to run again after a failure
 * (while local stays fenced): check the target (before anything is dropped,
 * so a stale epoch changes nothing); drop the reverse slot and publication on
 * the cloud; drop the old forward slot (its stranded tail was saved before
 * reverse sync); drop the reverse bookkeeping on local; create the new slot
 * at C; write the agent's state file; move the target's watermark to C
 * (functions/target-control.ts rebaseStreamWatermark).
 */
export async function resumeForwardStreaming(options: ResumeForwardStreamingOptions): Promise<ResumeForwardStreamingResult> {
  const parsed = z
    .object({
      localUrl: databaseUrl,
      stream: z.string().regex(STREAM_ID_PATTERN, `must be a stream id (${STREAM_ID_PATTERN.source})`),
      slot: slotName,
      publication: publicationName,
      stateDir: z.string().min(1),
      // Failback always follows a failover, which raised the epoch past 0.
      epoch: z.int().min(1),
    })
    .safeParse(options);
  if (!parsed.success) {
    throw new ValidationError(`invalid options to resume forward streaming: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  const { localUrl, stream, slot, publication, stateDir, epoch } = parsed.data;
  registerUrlSecrets(localUrl);
  const log = (options.logger ?? createLogger({ component: 'reverse-sync' })).child({ stream, slot });
  const target = options.targetClient;

  // Before anything is dropped: the last step must be able to succeed.
  const before = await readStreamState(target, stream).catch((err: unknown) => {
    throw classifyApplyError(err);
  });
  checkTargetAcceptsRebase(stream, before, epoch);
  if (before.halted) {
    log.warn(`stream ${stream} is halted on the target (${before.halt?.reason ?? 'unknown reason'}); it stays halted after the rebase until an operator resumes it`);
  }

  const reverse = await dropReverseReplication(options.reverse, log);

  const local = await connect(localUrl, APPLICATION_NAME, log, ['SET default_transaction_read_only = off']);
  let stateFile: string;
  let consistentLsn: Lsn;
  let droppedOldSlotAt: Lsn | null = null;
  let droppedLocalBookkeeping: string[];
  try {
    const pub = await local.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [publication]);
    if (pub.rows.length === 0) {
      // pgoutput reads publications as of each decoded position, so one made after the slot would not be found.
      throw new PermanentError(`publication "${publication}" does not exist on the local database`, {
        remedy: 'Start the agent once against this database so it creates its publication (or create it as source.publication says), then run the failback step again.',
      });
    }
    const old = await inspectSlot(local, slot);
    if (old !== undefined) {
      // A lost slot of ours is dropped like any other; a slot of another tool never is.
      if (old.slotType !== 'logical' || old.plugin !== 'pgoutput' || old.database !== old.currentDatabase) throw slotProblem(old)!;
      log.notice(
        `dropping the old forward slot "${slot}" (confirmed up to ${old.confirmedFlushLsn === undefined ? 'unknown' : formatLsn(old.confirmedFlushLsn)}): ` +
          'its stranded tail was saved before reverse sync, and what follows in it is reverse sync writing the cloud\'s data into local, which must not go back to the cloud',
        { confirmedFlushLsn: old.confirmedFlushLsn === undefined ? null : formatLsn(old.confirmedFlushLsn), walStatus: old.walStatus },
      );
      await dropSlot(local, slot);
      droppedOldSlotAt = old.confirmedFlushLsn ?? null;
    }
    droppedLocalBookkeeping = await dropReverseBookkeeping(local, log);

    const repl = createReplicationClient(localUrl, APPLICATION_NAME);
    repl.on('error', (err) => log.warn('replication connection error', { error: err }));
    await repl.connect();
    try {
      consistentLsn = (await createLogicalSlot(repl, slot)).consistentPoint;
    } finally {
      await repl.end().catch(() => undefined);
    }
    log.notice(`created the new forward slot "${slot}" at ${formatLsn(consistentLsn)}`);

    stateFile = agentStateFile(stateDir, stream);
    const previous = await readAgentState(stateFile, stream).catch((err: unknown) => {
      // A corrupt old file is replaced: the new one describes the new slot completely.
      log.warn('the old agent state file is unreadable; writing a new one', { error: err });
      return undefined;
    });
    const state: AgentState = {
      stream,
      slot,
      // The standby's copy is still the one the target records; nothing was re-copied.
      snapshotId: before!.snapshotId!,
      consistentLsn,
      snapshotCompletedAt: new Date().toISOString(),
    };
    await writeAgentState(stateFile, state);
    log.notice(`wrote ${stateFile}: the agent streams from slot "${slot}" at ${formatLsn(consistentLsn)} without a new snapshot`, {
      previousSlot: previous?.slot ?? null,
      previousConsistentLsn: previous === undefined ? null : formatLsn(previous.consistentLsn),
    });
  } catch (err) {
    throw err instanceof PermanentError || err instanceof RetryableError ? err : classifyApplyError(err);
  } finally {
    await local.end().catch(() => undefined);
  }

  const after = await rebaseStreamWatermark(target, {
    stream,
    lsn: consistentLsn,
    epoch,
    reason: `failback: forward streaming resumes from new slot "${slot}" at ${formatLsn(consistentLsn)} after reverse sync`,
    actor: 'failback',
    logger: log,
  });
  log.notice(
    `moved the target's watermark of ${stream} from ${after.watermarkBefore === null ? 'none' : formatLsn(after.watermarkBefore)} to ${formatLsn(after.watermark)}`,
  );
  return {
    slot,
    consistentLsn,
    stateFile,
    snapshotId: before!.snapshotId!,
    droppedOldSlotAt,
    watermark: { before: after.watermarkBefore, after: after.watermark },
    droppedReverseSlot: reverse.droppedSlot,
    droppedReversePublication: reverse.droppedPublication,
    droppedLocalBookkeeping,
  };
}

type TargetState = Awaited<ReturnType<typeof readStreamState>>;

function checkTargetAcceptsRebase(stream: string, state: TargetState, epoch: number): asserts state is NonNullable<TargetState> & { snapshotId: string } {
  if (state === undefined) {
    throw new PermanentError(`the target has no stream ${JSON.stringify(stream)}`, {
      remedy: 'Point targetClient at the database the apply function writes, and the stream at the configured one.',
    });
  }
  if (epoch < state.epoch) {
    throw new PermanentError(`epoch ${epoch} is below the target's fencing epoch ${state.epoch}: the local side does not hold the writer lease`, {
      remedy: 'Fence the cloud first (the lease moves to local with a new epoch), then resume with that epoch.',
      details: { stream, epoch, fencingEpoch: state.epoch },
    });
  }
  if (!state.snapshotComplete || state.snapshotId === null) {
    throw new PermanentError(`stream ${stream} has no complete initial copy on the target, so the new slot cannot continue it`, {
      remedy: 'Run `lifeboat agent --resnapshot` instead: it copies every table to the target.',
    });
  }
}

/**
 * Drops the reverse stream's bookkeeping from local (see the header), unless
 * it records a stream that is not a reverse one: then local is a target for
 * something else and the tables stay (logged).
 */
async function dropReverseBookkeeping(local: pg.Client, log: Logger): Promise<string[]> {
  const present = await local.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind = 'r' ORDER BY 1`,
    [LIFEBOAT_SCHEMA, REVERSE_BOOKKEEPING_TABLES],
  );
  if (present.rows.length === 0) return [];
  if (present.rows.some((r) => r.name === 'stream_state')) {
    const other = await local.query<{ stream: string }>('SELECT stream FROM lifeboat.stream_state WHERE NOT starts_with(stream, $1)', [REVERSE_STREAM_PREFIX]);
    if (other.rows.length > 0) {
      log.warn('local lifeboat bookkeeping also records streams that are not reverse streams, so it stays; the forward publication may ship it', {
        streams: other.rows.map((r) => r.stream),
      });
      return [];
    }
    const mine = await local.query<{ stream: string; watermark: string | null }>('SELECT stream, watermark::text FROM lifeboat.stream_state ORDER BY 1');
    log.notice('dropping the reverse stream bookkeeping from local: the forward stream must not carry it to the cloud', {
      streams: mine.rows.map((r) => ({ stream: r.stream, watermark: r.watermark })),
    });
  }
  const names = present.rows.map((r) => `${LIFEBOAT_SCHEMA}.${r.name}`);
  await local.query(`DROP TABLE IF EXISTS ${present.rows.map((r) => `${ident(LIFEBOAT_SCHEMA)}.${ident(r.name)}`).join(', ')}`);
  return names;
}

// ---------------------------------------------------------------------------
// SQL helpers

/** A connected client with `setup` run on it; connection failures are RetryableError. */
async function connect(url: string, applicationName: string, log: Logger, setup: readonly string[]): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: applicationName });
  // A socket error also rejects the running query; this keeps it from crashing the process.
  client.on('error', (err) => log.warn('database connection error', { error: err }));
  try {
    await client.connect();
    for (const statement of setup) await client.query(statement);
    return client;
  } catch (err) {
    await client.end().catch(() => undefined);
    throw classifyApplyError(err);
  }
}

async function currentWalLsn(client: pg.Client): Promise<Lsn> {
  const res = await client.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return parseLsn(res.rows[0]!.lsn);
}

async function assertLogicalDecoding(cloud: pg.Client): Promise<void> {
  const res = await cloud.query<{ wal_level: string }>('SHOW wal_level');
  const level = res.rows[0]?.wal_level;
  if (level !== 'logical') {
    throw new PermanentError(`the cloud database has wal_level = ${level ?? 'unknown'}, so it cannot stream its changes back`, {
      remedy: 'On Cloud SQL set the database flag cloudsql.logical_decoding = on (the instance restarts); elsewhere ALTER SYSTEM SET wal_level = logical and restart.',
    });
  }
}

async function assertMaySetReplicaRole(local: pg.Client): Promise<void> {
  const res = await local.query<{ ok: boolean; role: string }>(
    "SELECT has_parameter_privilege('session_replication_role', 'SET') AS ok, current_user AS role",
  );
  const row = res.rows[0];
  if (row?.ok !== true) {
    throw new PermanentError(`role ${row?.role ?? '(unknown)'} may not SET session_replication_role on the local database`, {
      remedy: `Run as a superuser: GRANT SET ON PARAMETER session_replication_role TO ${ident(row?.role ?? 'lifeboat')}; without it, foreign keys and triggers would fire while local is rebuilt.`,
    });
  }
}

/** Top-level permanent tables outside the system schemas and `lifeboat` (partitions come with their root). */
async function listCloudUserTables(cloud: pg.Client): Promise<TableName[]> {
  const res = await cloud.query<TableName>(
    `SELECT n.nspname AS schema, c.relname AS name
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition AND c.oid >= 16384
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%'
      ORDER BY 1, 2`,
    [LIFEBOAT_SCHEMA],
  );
  return res.rows.map((r) => ({ schema: r.schema, name: r.name }));
}

/**
 * The reverse publication, made anew: FOR TABLE ONLY every user table. Not
 * FOR ALL TABLES (it would include the `lifeboat` schema and needs a
 * superuser, which Cloud SQL does not give); tables created later are caught
 * by assertPublicationCoversCloud at drain.
 */
async function recreatePublication(cloud: pg.Client, publication: string, tables: readonly TableName[], log: Logger): Promise<void> {
  const pub = ident(publication);
  const list = tables.map((t) => `ONLY ${ident(t.schema)}.${ident(t.name)}`).join(', ');
  await cloud.query('BEGIN');
  try {
    const existing = await cloud.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [publication]);
    if (existing.rows.length > 0) {
      log.notice(`replacing reverse publication "${publication}" left on the cloud by an earlier run`);
      await cloud.query(`DROP PUBLICATION ${pub}`);
    }
    await cloud.query(
      `CREATE PUBLICATION ${pub}${list ? ` FOR TABLE ${list}` : ''} WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = false)`,
    );
    await cloud.query('COMMIT');
  } catch (err) {
    await cloud.query('ROLLBACK').catch(() => undefined);
    const e = classifyApplyError(err);
    throw e instanceof PermanentError
      ? new PermanentError(`could not create the reverse publication "${publication}" on the cloud: ${e.message}`, {
          remedy: 'The cloud role must own the tables (or be a superuser) to publish them.',
          cause: err,
        })
      : e;
  }
  log.info('reverse publication created on the cloud', { publication, tables: tables.length });
}

/** Fails when a user table on the cloud is not in the reverse publication: its changes would never come back. */
async function assertPublicationCoversCloud(cloud: pg.Client, publication: string): Promise<void> {
  const res = await cloud.query<TableName>(
    `SELECT n.nspname AS schema, c.relname AS name
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND c.oid >= 16384
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', $2) AND n.nspname NOT LIKE 'pg\\_%'
        AND NOT EXISTS (SELECT 1 FROM pg_publication_tables pt WHERE pt.pubname = $1 AND pt.schemaname = n.nspname AND pt.tablename = c.relname)
      ORDER BY 1, 2`,
    [publication, LIFEBOAT_SCHEMA],
  );
  if (res.rows.length > 0) {
    throw new PermanentError(
      `the cloud has ${res.rows.length} table${res.rows.length === 1 ? '' : 's'} created after reverse sync began, whose rows did not come back to local: ${res.rows.slice(0, 20).map(display).join(', ')}`,
      { remedy: 'Start the reverse sync again: it publishes and copies every table anew.', details: { tables: res.rows.map(display) } },
    );
  }
}

/** Which of `tables` exist on local as plain tables, by 'schema.name'. */
async function localTables(local: pg.Client, tables: readonly TableName[]): Promise<Map<string, TableName>> {
  const res = await local.query<TableName>(
    `SELECT t.schema, t.name FROM unnest($1::text[], $2::text[]) AS t(schema, name)
       JOIN pg_namespace n ON n.nspname = t.schema JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name
      WHERE c.relkind = 'r'`,
    [tables.map((t) => t.schema), tables.map((t) => t.name)],
  );
  return new Map(res.rows.map((r) => [display(r), { schema: r.schema, name: r.name }]));
}

/** Local plain tables outside the system schemas and `lifeboat` that are not in `tables`. */
async function localTablesOutside(local: pg.Client, tables: readonly TableName[]): Promise<TableName[]> {
  const res = await local.query<TableName>(
    `SELECT n.nspname AS schema, c.relname AS name
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND c.oid >= 16384
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', $3) AND n.nspname NOT LIKE 'pg\\_%'
        AND (n.nspname, c.relname) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))
      ORDER BY 1, 2`,
    [tables.map((t) => t.schema), tables.map((t) => t.name), LIFEBOAT_SCHEMA],
  );
  return res.rows;
}

/** Every listed table was copied, and the copier's own counts match what local took. */
function checkCopyComplete(tables: readonly TableName[], inserted: ReadonlyMap<string, number>, marker: ChangeBatch['marker']): void {
  const summary = marker?.snapshot;
  if (marker?.reason !== 'snapshot-complete' || summary === undefined) {
    throw new PermanentError('the copy from the cloud ended without its snapshot-complete marker');
  }
  const problems: string[] = [];
  for (const t of tables) {
    const name = display(t);
    const sent = summary.tables.find((s) => s.schema === t.schema && s.name === t.name);
    const took = inserted.get(name);
    if (sent === undefined || took === undefined) problems.push(`${name} was not copied`);
    else if (sent.rows !== took) problems.push(`${name}: the cloud sent ${sent.rows} rows, local took ${took}`);
  }
  if (problems.length > 0) {
    throw new PermanentError(`the copy from the cloud is incomplete: ${problems.slice(0, 10).join('; ')}`, {
      remedy: 'Start the reverse sync again; nothing of this copy was committed.',
      details: { problems },
    });
  }
}

/**
 * Records in local bookkeeping that the reverse stream's copy is complete at
 * `consistentLsn` (same transaction as the copy), so applyBatch continues the
 * chain from there. Like the forward snapshot-complete marker, but the copy
 * itself is ours (TRUNCATE of all tables at once; applyBatch's per-table
 * TRUNCATE ONLY fails on tables other tables reference).
 * This SQL belongs in functions/target-control.ts next to
 * rebaseStreamWatermark(), which requires a complete copy and so cannot mark one.
 */
async function markReverseCopyComplete(
  local: pg.Client,
  args: { readonly stream: string; readonly snapshotId: string; readonly consistentLsn: Lsn; readonly epoch: number; readonly tables: number; readonly rows: number },
): Promise<void> {
  await local.query('INSERT INTO lifeboat.stream_state (stream) VALUES ($1) ON CONFLICT (stream) DO NOTHING', [args.stream]);
  const res = await local.query<{ epoch: string; halted: boolean; watermark: string | null }>(
    'SELECT epoch::text, halted, watermark::text FROM lifeboat.stream_state WHERE stream = $1 FOR UPDATE',
    [args.stream],
  );
  const row = res.rows[0]!;
  if (Number(row.epoch) > args.epoch) {
    throw new PermanentError(`the local reverse stream ${args.stream} is fenced at epoch ${row.epoch}, above this reverse sync's epoch ${args.epoch}`, {
      remedy: 'Start the reverse sync with the epoch the cloud holds now.',
    });
  }
  await local.query('INSERT INTO lifeboat.snapshots (stream, snapshot_id, consistent_lsn) VALUES ($1, $2, $3::pg_lsn)', [
    args.stream,
    args.snapshotId,
    formatLsn(args.consistentLsn),
  ]);
  await local.query(
    `UPDATE lifeboat.stream_state SET watermark = $3::pg_lsn, applied_at = now(), snapshot_id = $2, snapshot_consistent_lsn = $3::pg_lsn,
       snapshot_complete = true, snapshot_completed_at = now(), writer_epoch = GREATEST(writer_epoch, $4),
       halted = false, halt_reason = NULL, halt_remedy = NULL, halt_batch = NULL, halted_at = NULL
     WHERE stream = $1`,
    [args.stream, args.snapshotId, formatLsn(args.consistentLsn), args.epoch],
  );
  await local.query('INSERT INTO lifeboat.audit (stream, actor, action, detail) VALUES ($1, $2, $3, $4)', [
    args.stream,
    'reverse-sync',
    'reverse-copy-complete',
    JSON.stringify({
      snapshotId: args.snapshotId,
      consistentLsn: formatLsn(args.consistentLsn),
      tables: args.tables,
      rows: args.rows,
      replacedWatermark: row.watermark,
      clearedHalt: row.halted,
    }),
  ]);
}

/** Cloud-side failures as the copier classifies them; local-side ones as the apply engine does, with what was being done. */
function classifyCopyError(err: unknown, doing: string, snapshotName: string): Error {
  if (err instanceof PermanentError || err instanceof RetryableError) return err;
  if (doing === 'copy from the cloud') return classifySnapshotError(err, doing, snapshotName);
  const code = (err as { code?: unknown }).code;
  if (code === '0A000' && doing === 'empty the local tables') {
    return new PermanentError(`could not empty the local tables: ${(err as Error).message}`, {
      remedy: 'A local table that the cloud does not have references a copied table. Empty or drop that local table (after saving what it holds), then start the reverse sync again.',
      details: { sqlstate: code, detail: (err as { detail?: unknown }).detail },
      cause: err,
    });
  }
  const e = classifyApplyError(err);
  if (e instanceof RetryableError) return new RetryableError(`reverse sync could not ${doing}: ${e.message}`, { details: e.details, cause: err });
  const sqlstate = typeof e.details.sqlstate === 'string' ? e.details.sqlstate : '';
  const why = sqlstate.startsWith('23')
    ? 'A constraint on the local table refused a row the cloud holds: compare the table definitions on both sides.'
    : sqlstate === '42703' || sqlstate === '42P01' || sqlstate === '42704' || sqlstate === '42804'
      ? "The local table lacks a column or type the cloud's table has (or has it with another type): bring local's schema in line with the cloud's."
      : sqlstate.startsWith('22')
        ? 'A value from the cloud could not be stored locally: compare the column types on both sides.'
        : 'Fix the cause named above.';
  return new PermanentError(`reverse sync could not ${doing}: ${e.message}`, {
    remedy: `${why} Nothing of the copy was committed; then start the reverse sync again.`,
    details: e.details,
    cause: err,
  });
}

/**
 * The same error with a remedy for the reverse direction: the forward remedies
 * (`lifeboat resume`, `--resnapshot`) do not apply to the reverse stream,
 * which a new start() rebuilds from scratch.
 */
function withReverseRemedy(err: Error, slot: string): Error {
  if (err instanceof ApplyGapError) {
    return new PermanentError(`the local reverse stream has a gap, which no redelivery can fill in process: ${err.message}`, {
      remedy: 'Something else moved the local watermark of the reverse stream; start the reverse sync again: it copies every table anew.',
      details: err.details,
      cause: err,
    });
  }
  if (!(err instanceof PermanentError)) return err;
  const remedy =
    err instanceof StreamHaltedError
      ? 'Fix the cause on the local database (or its schema), then start the reverse sync again: it copies every table anew and clears the halt.'
      : err.details.slot === slot
        ? `Changes the cloud made after the slot was lost cannot be streamed; start the reverse sync again: it creates slot "${slot}" anew and copies every table.`
        : err.remedy;
  return new PermanentError(err.message, { ...(remedy !== undefined && { remedy }), details: err.details, cause: err });
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new PermanentError(String(err));
}

function round(seconds: number): number {
  return Math.round(seconds * 1000) / 1000;
}

function rate(rows: number, seconds: number): number | null {
  return seconds > 0 ? Math.round(rows / seconds) : null;
}
