// The agent: the only thing a user runs beside their PostgreSQL. It wires
// the pieces together and owns the run loop:
//
//   start ──▶ check source, publication ──▶ planStart ─┬─▶ snapshot ─┐
//     ▲                                                 └────────────┴─▶ stream
//     └──────── retryable error: back off with jitter, start a new session ◀──┘
//
// A session streams from the slot's confirmed position. Batches go to the
// outbox, and only the outbox's contiguous acknowledged frontier is confirmed
// to PostgreSQL (docs/design.md). A retryable failure throws the whole session
// away: the next one re-reads from the slot, and the apply side drops what it
// already has by LSN. So the agent is safe to kill at any moment.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { backoffDelayMs, sleep, AbortedError } from '../core/backoff.ts';
import type { ChangeBatch } from '../core/change-batch.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { describeError, isRetryable, PermanentError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import { formatLsn, lsnDiffBytes, type Lsn } from '../core/lsn.ts';
import type { MessagePublisher, ObjectStore } from '../core/ports.ts';
import { agentStateFile, planStart, readAgentState, resolveStateDir, writeAgentState, type AgentState } from './agent-state.ts';
import { BatchOutbox, type OutboxStats } from './batch-outbox.ts';
import { ChangeBatcher, UnknownTypeError, type ChangeBatcherStats, type TypeRef } from './change-batcher.ts';
import type { Metric } from './prometheus-text.ts';
import { createLogicalSlot, createReplicationClient, startReplicationStream, type ReplicationStream } from './replication-stream.ts';
import { SnapshotCopier, type SnapshotProgress } from './snapshot-copier.ts';
import {
  describeReplicaIdentityProblems,
  dropSlot,
  emitHeartbeat,
  ensureLifeboatSchema,
  ensurePublication,
  ensureSourceReady,
  findTablesWithoutReplicaIdentity,
  inspectSlot,
  listPublishedTables,
  readSequences,
  reconcilePublicationTables,
  slotLostError,
  slotProblem,
  walRetentionWarning,
  type SlotInfo,
  type SourceSetupConfig,
  type TableName,
} from './source-setup.ts';
import type { Health } from './status-server.ts';
import { ensureDdlCapture } from './ddl-capture.ts';

export type AgentPhase = 'starting' | 'snapshot' | 'streaming' | 'backing-off' | 'draining' | 'stopped' | 'failed';

export interface AgentOptions {
  readonly config: LifeboatConfig;
  /** Directory the config's relative paths are resolved against. */
  readonly baseDir: string;
  readonly publisher: MessagePublisher;
  readonly objectStore: ObjectStore;
  /** The writer epoch this side holds (the lease's fencing token); read for every batch. */
  readonly epoch: () => number;
  readonly logger?: Logger;
  /** Drop the slot and copy every table again (`lifeboat agent --resnapshot`). */
  readonly resnapshot?: boolean;
  /** Let the agent alter a publication whose definition differs from the config. */
  readonly alterPublication?: boolean;
  readonly stateDir?: string;
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly clock?: () => number;
}

/** How often the slot, the publication and replica identities are re-checked. */
const HOUSEKEEPING_INTERVAL_MS = 30_000;

interface RecordedError {
  readonly at: string;
  readonly message: string;
  readonly retryable: boolean;
}

export class LifeboatAgent {
  private readonly cfg: LifeboatConfig;
  private readonly log: Logger;
  private readonly clock: () => number;
  private readonly sourceCfg: SourceSetupConfig;
  private readonly typeNames = new Map<string, string>();
  private phase: AgentPhase = 'starting';
  private phaseReason = 'the agent is starting';
  private fatal: Error | undefined;
  private errors: RecordedError[] = [];
  private sessions = 0;
  private resnapshotPending: boolean;
  // Live parts of the current session, for /status and /metrics.
  private outbox: BatchOutbox | undefined;
  private batcher: ChangeBatcher | undefined;
  private stream: ReplicationStream | undefined;
  private snapshot: SnapshotCopier | undefined;
  private lastSlot: SlotInfo | undefined;
  private lastHeartbeatAt: number | undefined;
  private replicaIdentityProblems: string[] = [];
  private ddlCaptureProblem: string | undefined;
  private lastAckAt: number | undefined;
  private seq = 0;
  // Totals across sessions.
  private readonly totals = { publishedBatches: 0, publishedRows: 0, publishedBytes: 0, retries: 0 };

  constructor(private readonly opts: AgentOptions) {
    this.cfg = opts.config;
    this.clock = opts.clock ?? Date.now;
    this.log = opts.logger ?? createLogger({ component: 'agent', fields: { stream: opts.config.stream } });
    this.sourceCfg = {
      publication: this.cfg.source.publication,
      tables: this.cfg.source.tables,
      excludeTables: this.cfg.source.excludeTables,
      maxSlotWalKeepSize: this.cfg.source.maxSlotWalKeepSize,
      slot: this.cfg.source.slot,
    };
    this.resnapshotPending = opts.resnapshot ?? false;
    if (!this.cfg.source.databaseUrl) {
      throw new PermanentError('source.databaseUrl is not set: the agent does not know which PostgreSQL to read.', {
        remedy: 'Set source.databaseUrl in lifeboat.yaml or LIFEBOAT_SOURCE_DATABASE_URL.',
      });
    }
  }

  private get databaseUrl(): string {
    return this.cfg.source.databaseUrl as string;
  }

  private setPhase(phase: AgentPhase, reason: string): void {
    this.phase = phase;
    this.phaseReason = reason;
  }

  private recordError(err: unknown): void {
    this.errors = [
      ...this.errors.slice(-19),
      { at: new Date(this.clock()).toISOString(), message: describeError(err), retryable: isRetryable(err) },
    ];
  }

  /**
   * Runs until `signal` aborts (then drains what is in flight and confirms it)
   * or a permanent error stops it (then rejects with that error).
   */
  async run(signal: AbortSignal): Promise<void> {
    let attempt = 0;
    while (!signal.aborted) {
      this.sessions += 1;
      const started = this.clock();
      try {
        await this.session(signal);
        if (signal.aborted) break;
      } catch (err) {
        if (signal.aborted && err instanceof AbortedError) break;
        this.recordError(err);
        if (!isRetryable(err)) {
          this.fatal = err as Error;
          this.setPhase('failed', `the agent stopped: ${describeError(err)}`);
          this.log.critical('agent stopped on a permanent error', { error: err });
          throw err;
        }
        // A session that ran a while was healthy: start the backoff over.
        if (this.clock() - started > 60_000) attempt = 0;
        attempt += 1;
        const delay = backoffDelayMs(attempt, { initialMs: 250, maxMs: 30_000, multiplier: 2 });
        this.totals.retries += 1;
        this.setPhase('backing-off', `retrying in ${(delay / 1000).toFixed(1)} s because ${describeError(err)}`);
        this.log.warn('agent session failed; retrying', { error: err, attempt, delayMs: delay });
        try {
          await sleep(delay, signal);
        } catch {
          break;
        }
      }
    }
    this.setPhase('stopped', 'the agent stopped on request after confirming everything Pub/Sub acknowledged');
    this.log.notice('agent stopped');
  }

  private async session(signal: AbortSignal): Promise<void> {
    this.setPhase('starting', 'checking the source database');
    const client = new pg.Client({ connectionString: this.databaseUrl, application_name: 'lifeboat-agent' });
    client.on('error', (err) => this.log.warn('source connection error', { error: err }));
    await client.connect();
    try {
      const ready = await ensureSourceReady(client, this.sourceCfg);
      for (const w of ready.warnings) this.log.warn(w);
      await ensureLifeboatSchema(client);
      await this.ensureDdlCapture(client);
      const pub = await ensurePublication(client, this.sourceCfg, { alterExisting: this.opts.alterPublication ?? false, logger: this.log });
      this.log.info(`publication ${pub.publication} ${pub.action}`, { mode: pub.mode });
      await this.checkReplicaIdentity(client);

      const stateFile = agentStateFile(
        resolveStateDir({ config: this.cfg, baseDir: this.opts.baseDir, stateDir: this.opts.stateDir, env: this.opts.env }),
        this.cfg.stream,
      );
      const state = await readAgentState(stateFile, this.cfg.stream);
      let slot = await inspectSlot(client, this.cfg.source.slot);
      const plan = planStart({ state, slot, resnapshot: this.resnapshotPending, slotName: this.cfg.source.slot });
      this.log.notice(plan.reason, { action: plan.action });
      if (plan.action === 'fail') throw new PermanentError(plan.reason, plan.remedy === undefined ? {} : { remedy: plan.remedy });
      if (plan.action === 'restart-snapshot' && slot) await dropSlot(client, this.cfg.source.slot);
      if (plan.action !== 'stream-from-slot') {
        await this.runSnapshot(client, stateFile, signal);
        this.resnapshotPending = false;
        slot = await inspectSlot(client, this.cfg.source.slot);
      }
      if (!slot) throw new PermanentError(`replication slot ${this.cfg.source.slot} vanished after the snapshot`, { remedy: 'Start the agent again; it copies the tables anew.' });
      const problem = slotProblem(slot);
      if (problem) throw problem;
      if (slot.confirmedFlushLsn === undefined) throw slotLostError(this.cfg.source.slot);
      await this.runStream(client, slot.confirmedFlushLsn, signal);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  private newOutbox(startLsn: Lsn, onConfirmable: (lsn: Lsn) => void): BatchOutbox {
    const outbox = new BatchOutbox({
      stream: this.cfg.stream,
      startLsn,
      publisher: this.opts.publisher,
      objectStore: this.opts.objectStore,
      batching: this.cfg.batching,
      claimCheckPrefix: this.cfg.storage.claimCheckPrefix,
      onConfirmable: (lsn) => {
        this.lastAckAt = this.clock();
        onConfirmable(lsn);
      },
      logger: this.log,
    });
    this.outbox = outbox;
    return outbox;
  }

  private foldOutboxTotals(outbox: BatchOutbox): void {
    const s = outbox.stats();
    this.totals.publishedBatches += s.publishedBatches;
    this.totals.publishedRows += s.publishedRows;
    this.totals.publishedBytes += s.publishedBytes;
    this.totals.retries += s.retries;
    if (this.outbox === outbox) this.outbox = undefined;
  }

  /** Creates the slot, copies every published table at its consistent point, and records completion. */
  private async runSnapshot(client: pg.Client, stateFile: string, signal: AbortSignal): Promise<void> {
    this.setPhase('snapshot', 'creating the replication slot and copying every table at its consistent point');
    // The exported snapshot lives only while this connection stays open and idle.
    const repl = createReplicationClient(this.databaseUrl, 'lifeboat-agent-snapshot');
    repl.on('error', (err) => this.log.warn('snapshot replication connection error', { error: err }));
    await repl.connect();
    let outbox: BatchOutbox | undefined;
    try {
      const created = await createLogicalSlot(repl, this.cfg.source.slot);
      const snapshotId = randomUUID();
      const state: AgentState = {
        stream: this.cfg.stream,
        slot: this.cfg.source.slot,
        snapshotId,
        consistentLsn: created.consistentPoint,
        snapshotCompletedAt: null,
      };
      await writeAgentState(stateFile, state);
      this.log.notice(`slot ${created.slotName} created at ${formatLsn(created.consistentPoint)}; copying tables (snapshot ${snapshotId})`);
      const tables = await listPublishedTables(client, this.cfg.source.publication);
      outbox = this.newOutbox(created.consistentPoint, () => undefined);
      const copier = new SnapshotCopier({
        connectionString: this.databaseUrl,
        snapshotName: created.snapshotName,
        consistentLsn: created.consistentPoint,
        tables,
        chunkRows: this.cfg.agent.snapshotChunkRows,
        stream: this.cfg.stream,
        epoch: this.opts.epoch(),
        snapshotId,
        firstSeq: this.seq,
        signal,
        logger: this.log,
      });
      this.snapshot = copier;
      for await (const batch of copier.batches()) {
        await outbox.enqueue(batch);
        this.seq = batch.seq + 1;
      }
      await outbox.drain(signal);
      await writeAgentState(stateFile, { ...state, snapshotCompletedAt: new Date(this.clock()).toISOString() });
      this.log.notice(`snapshot ${snapshotId} complete: every chunk and the snapshot-complete marker were acknowledged by Pub/Sub`);
    } finally {
      if (outbox) {
        outbox.stop();
        this.foldOutboxTotals(outbox);
      }
      await repl.end().catch(() => undefined);
    }
  }

  private async loadTypes(client: pg.Client, types: readonly TypeRef[]): Promise<void> {
    // Under search_path = pg_catalog, format_type qualifies every user type
    // (public.mood), so the apply side never depends on its own search_path.
    await client.query('BEGIN READ ONLY');
    try {
      await client.query('SET LOCAL search_path = pg_catalog');
      for (const t of types) {
        const res = await client.query<{ name: string }>('SELECT format_type($1::oid, $2::int) AS name', [t.oid, t.typmod]);
        const name = res.rows[0]?.name;
        if (!name) throw new PermanentError(`PostgreSQL does not know type oid ${t.oid} (typmod ${t.typmod})`);
        this.typeNames.set(`${t.oid}:${t.typmod}`, name);
      }
    } finally {
      await client.query('COMMIT');
    }
  }

  /**
   * Schema changes travel as rows of lifeboat.ddl_log, written by an event
   * trigger. Creating it needs a superuser; without one the agent still
   * streams, and says loudly (log and /status) that DDL will not replicate.
   */
  private async ensureDdlCapture(client: pg.Client): Promise<void> {
    try {
      await ensureDdlCapture(client);
      this.ddlCaptureProblem = undefined;
    } catch (err) {
      if (isRetryable(err)) throw err;
      this.ddlCaptureProblem = describeError(err);
      this.log.error(`schema changes will NOT replicate: ${this.ddlCaptureProblem}`);
    }
  }

  private async checkReplicaIdentity(client: pg.Client): Promise<void> {
    const problems = await findTablesWithoutReplicaIdentity(client, this.cfg.source.publication);
    const described = problems.map((p) => `${p.schema}.${p.name}`);
    const fresh = described.filter((t) => !this.replicaIdentityProblems.includes(t));
    this.replicaIdentityProblems = described;
    if (fresh.length > 0) this.log.error(describeReplicaIdentityProblems(problems), { tables: described });
  }

  /** Streams from the slot until stopped or failed. */
  private async runStream(client: pg.Client, startLsn: Lsn, signal: AbortSignal): Promise<void> {
    this.setPhase('streaming', `streaming changes from ${formatLsn(startLsn)}`);
    let stream: ReplicationStream | undefined;
    const outbox = this.newOutbox(startLsn, (lsn) => stream?.confirm(lsn));
    const batcher = new ChangeBatcher({
      stream: this.cfg.stream,
      epoch: this.opts.epoch,
      startLsn,
      maxRows: this.cfg.batching.maxRows,
      maxBytes: this.cfg.batching.maxBytes,
      maxDelayMs: this.cfg.batching.maxDelayMs,
      clock: this.clock,
      typeName: (oid, typmod) => this.typeNames.get(`${oid}:${typmod}`),
      firstSeq: this.seq,
      logger: this.log,
    });
    this.batcher = batcher;
    // Every batch goes to the outbox in the order the batcher made it: enqueue
    // is called synchronously for a whole group, and the outbox keeps call order.
    const enqueueAll = (batches: ChangeBatch[]): Promise<unknown> => {
      if (batches.length === 0) return Promise.resolve();
      this.seq = batches[batches.length - 1]!.seq + 1;
      return Promise.all(batches.map((b) => outbox.enqueue(b)));
    };
    let timerError: unknown;
    const fail = (err: unknown) => {
      timerError ??= err;
      void stream?.close();
    };
    const tickTimer = setInterval(() => {
      enqueueAll(batcher.tick(this.clock())).catch(fail);
    }, Math.max(10, Math.min(100, Math.floor(this.cfg.batching.maxDelayMs / 4))));
    let tables: TableName[] = await listPublishedTables(client, this.cfg.source.publication);
    let heartbeatBusy = false;
    const heartbeatTimer = setInterval(() => {
      if (heartbeatBusy) return;
      heartbeatBusy = true;
      readSequences(client, tables)
        .then((seqs) => emitHeartbeat(client, seqs))
        .then(() => {
          this.lastHeartbeatAt = this.clock();
        })
        .catch((err) => this.log.warn('could not write a heartbeat', { error: err }))
        .finally(() => {
          heartbeatBusy = false;
        });
    }, this.cfg.agent.heartbeatIntervalSeconds * 1000);
    let housekeepingBusy = false;
    const housekeepingTimer = setInterval(() => {
      if (housekeepingBusy) return;
      housekeepingBusy = true;
      this.housekeeping(client)
        .then(async () => {
          tables = await listPublishedTables(client, this.cfg.source.publication);
        })
        .catch((err) => (isRetryable(err) ? this.log.warn('housekeeping failed', { error: err }) : fail(err)))
        .finally(() => {
          housekeepingBusy = false;
        });
    }, HOUSEKEEPING_INTERVAL_MS);
    const onAbort = () => void stream?.close();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      stream = await startReplicationStream({
        connectionString: this.databaseUrl,
        slot: this.cfg.source.slot,
        publication: this.cfg.source.publication,
        startLsn,
        logger: this.log,
      });
      this.stream = stream;
      if (signal.aborted) await stream.close();
      for await (const item of stream) {
        let batches: ChangeBatch[];
        try {
          batches = batcher.push(item);
        } catch (err) {
          if (!(err instanceof UnknownTypeError)) throw err;
          await this.loadTypes(client, err.types);
          batches = batcher.push(item);
        }
        // Awaiting here is the backpressure: while the outbox is full, the
        // stream's queue fills and it stops reading the socket.
        await enqueueAll(batches);
        const outboxFailure = outbox.failure();
        if (outboxFailure) throw outboxFailure;
      }
      if (timerError) throw timerError;
      const outboxFailure = outbox.failure();
      if (outboxFailure) throw outboxFailure;
      if (!signal.aborted) throw new PermanentError('the replication stream ended without being asked to');
      // Stopping: ship what is complete, wait for Pub/Sub, confirm, then leave.
      this.setPhase('draining', 'stopping: publishing what is in flight and confirming it');
      await enqueueAll(batcher.flush());
      const budget = AbortSignal.timeout(Math.max(1_000, this.cfg.agent.shutdownTimeoutSeconds * 1000 - 3_000));
      await outbox.drain(budget).catch((err) => this.log.warn('could not drain every batch before the shutdown deadline', { error: err }));
      // The stream closed when intake stopped, so what the drain acknowledged is
      // confirmed through the slot itself.
      await this.confirmThroughSlot(client, outbox.stats().confirmableLsn, stream?.confirmedLsn ?? startLsn);
    } finally {
      clearInterval(tickTimer);
      clearInterval(heartbeatTimer);
      clearInterval(housekeepingTimer);
      signal.removeEventListener('abort', onAbort);
      outbox.stop();
      this.foldOutboxTotals(outbox);
      this.batcher = undefined;
      this.stream = undefined;
      await stream?.close().catch(() => undefined);
    }
  }

  /**
   * Moves the slot's confirmed_flush_lsn to `lsn` with
   * pg_replication_slot_advance, once the walsender has let go of the slot.
   * Only ever called with the outbox's acknowledged frontier.
   */
  private async confirmThroughSlot(client: pg.Client, lsn: Lsn, alreadyConfirmed: Lsn): Promise<void> {
    if (lsn <= alreadyConfirmed) {
      this.log.notice(`stopped at confirmed ${formatLsn(alreadyConfirmed)}`);
      return;
    }
    const deadline = this.clock() + 5_000;
    for (;;) {
      try {
        await client.query('SELECT pg_replication_slot_advance($1, $2::pg_lsn)', [this.cfg.source.slot, formatLsn(lsn)]);
        this.log.notice(`stopped at confirmed ${formatLsn(lsn)}`);
        return;
      } catch (err) {
        // 55006 object_in_use: the walsender still holds the slot for a moment.
        if ((err as { code?: string }).code !== '55006' || this.clock() > deadline) {
          this.log.warn(`could not confirm ${formatLsn(lsn)} before exiting; the next start re-sends from ${formatLsn(alreadyConfirmed)}`, { error: err });
          return;
        }
        await sleep(100);
      }
    }
  }

  private async housekeeping(client: pg.Client): Promise<void> {
    const slot = await inspectSlot(client, this.cfg.source.slot);
    if (slot === undefined) throw new PermanentError(`replication slot ${this.cfg.source.slot} was dropped while the agent was streaming`, { remedy: 'Run `lifeboat agent --resnapshot` to copy everything again.' });
    this.lastSlot = slot;
    const problem = slotProblem(slot);
    if (problem) throw problem;
    const warning = walRetentionWarning(slot, this.cfg.source.walRetentionWarnBytes);
    if (warning) this.log.warn(warning, { retainedWalBytes: slot.retainedWalBytes });
    const reconciled = await reconcilePublicationTables(client, this.sourceCfg, this.log);
    if (reconciled.added.length > 0) this.log.notice(`publication now includes ${reconciled.added.length} new table(s)`);
    await this.checkReplicaIdentity(client);
  }

  health(): Health {
    if (this.fatal) return { ok: false, reason: `the agent stopped: ${describeError(this.fatal)}` };
    if (this.phase === 'backing-off') return { ok: false, reason: this.phaseReason };
    const out = this.outbox?.stats();
    if (out && out.oldestUnackedAgeMs !== undefined && out.oldestUnackedAgeMs > 60_000) {
      return { ok: false, reason: `Pub/Sub has not acknowledged a batch for ${Math.round(out.oldestUnackedAgeMs / 1000)} s` };
    }
    return { ok: true, reason: this.phaseReason };
  }

  status(): AgentStatusReport {
    const out = this.outbox?.stats();
    const streamStats = this.stream?.stats();
    const confirmed = streamStats?.confirmedLsn;
    const walEnd = streamStats?.serverWalEnd;
    return {
      stream: this.cfg.stream,
      phase: this.phase,
      reason: this.phaseReason,
      sessions: this.sessions,
      epoch: this.opts.epoch(),
      positions: {
        receivedLsn: streamStats ? formatLsn(streamStats.receivedLsn) : null,
        publishedLsn: out ? formatLsn(out.confirmableLsn) : null,
        confirmedLsn: confirmed !== undefined ? formatLsn(confirmed) : null,
        serverWalEnd: walEnd !== undefined ? formatLsn(walEnd) : null,
      },
      lag: {
        bytes: walEnd !== undefined && confirmed !== undefined && walEnd > confirmed ? Number(lsnDiffBytes(walEnd, confirmed)) : 0,
        secondsSinceLastAck: this.lastAckAt === undefined ? null : (this.clock() - this.lastAckAt) / 1000,
        secondsSinceHeartbeat: this.lastHeartbeatAt === undefined ? null : (this.clock() - this.lastHeartbeatAt) / 1000,
      },
      batches: {
        published: this.totals.publishedBatches + (out?.publishedBatches ?? 0),
        rows: this.totals.publishedRows + (out?.publishedRows ?? 0),
        bytes: this.totals.publishedBytes + (out?.publishedBytes ?? 0),
        retries: this.totals.retries + (out?.retries ?? 0),
        inflight: out?.inflightBatches ?? 0,
      },
      outbox: out ?? null,
      batcher: this.batcher?.stats() ?? null,
      snapshot: this.snapshot?.progress() ?? null,
      slot: this.lastSlot
        ? { name: this.lastSlot.name, walStatus: this.lastSlot.walStatus, retainedWalBytes: this.lastSlot.retainedWalBytes, safeWalSizeBytes: this.lastSlot.safeWalSizeBytes }
        : null,
      tablesWithoutReplicaIdentity: this.replicaIdentityProblems,
      ddlCapture: this.ddlCaptureProblem === undefined ? 'on' : `off: ${this.ddlCaptureProblem}`,
      errors: this.errors,
    };
  }

  metrics(): Metric[] {
    const s = this.status();
    const labels = { stream: this.cfg.stream };
    const gauge = (name: string, help: string, value: number) => ({ name, help, type: 'gauge' as const, samples: [{ labels, value }] });
    const counter = (name: string, help: string, value: number) => ({ name, help, type: 'counter' as const, samples: [{ labels, value }] });
    return [
      gauge('lifeboat_agent_up', '1 while the agent is healthy', this.health().ok ? 1 : 0),
      gauge('lifeboat_agent_epoch', 'Writer epoch carried by new batches', s.epoch),
      counter('lifeboat_agent_batches_published_total', 'Batches acknowledged by Pub/Sub', s.batches.published),
      counter('lifeboat_agent_rows_published_total', 'Changed rows in acknowledged batches', s.batches.rows),
      counter('lifeboat_agent_wire_bytes_published_total', 'Message bytes of acknowledged batches', s.batches.bytes),
      counter('lifeboat_agent_publish_retries_total', 'Publish recoveries and session restarts', s.batches.retries),
      counter('lifeboat_agent_errors_total', 'Errors recorded by the agent', this.errors.length),
      gauge('lifeboat_agent_inflight_batches', 'Batches handed to Pub/Sub and not yet acknowledged', s.batches.inflight),
      gauge('lifeboat_agent_lag_bytes', 'Server WAL end minus the confirmed LSN', s.lag.bytes),
      gauge('lifeboat_agent_seconds_since_last_ack', 'Seconds since Pub/Sub last moved the confirmed frontier', s.lag.secondsSinceLastAck ?? NaN),
      gauge('lifeboat_agent_slot_retained_wal_bytes', 'WAL kept on disk for the slot', s.slot?.retainedWalBytes ?? NaN),
      gauge('lifeboat_agent_snapshot_rows_copied', 'Rows copied by the current or last snapshot', s.snapshot?.rowsCopied ?? 0),
      gauge('lifeboat_agent_tables_without_replica_identity', 'Published tables whose UPDATE/DELETE fail on the source', s.tablesWithoutReplicaIdentity.length),
    ];
  }
}

export interface AgentStatusReport {
  stream: string;
  phase: AgentPhase;
  reason: string;
  sessions: number;
  epoch: number;
  positions: { receivedLsn: string | null; publishedLsn: string | null; confirmedLsn: string | null; serverWalEnd: string | null };
  lag: { bytes: number; secondsSinceLastAck: number | null; secondsSinceHeartbeat: number | null };
  batches: { published: number; rows: number; bytes: number; retries: number; inflight: number };
  outbox: OutboxStats | null;
  batcher: ChangeBatcherStats | null;
  snapshot: SnapshotProgress | null;
  slot: { name: string; walStatus: string | null; retainedWalBytes: number | null; safeWalSizeBytes: number | null } | null;
  tablesWithoutReplicaIdentity: string[];
  ddlCapture: string;
  errors: RecordedError[];
}
