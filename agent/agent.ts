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
//
// With a writer lease (the `lease` option; `lifeboat agent` always gives one)
// the agent also guards the local side (docs/design.md, "Local self-fencing
// and graceful takeover"):
//
//   start ──▶ acquire the lease ──▶ refused? fence local, stop with the reason
//                 │
//                 └──▶ lift the local fence (only with the valid lease in hand)
//
//   lease lost (deadline, refusal) ──▶ fence local ──▶ stop streaming   (stays fenced)
//
//   takeover requested by cloud ──▶ fence local ──▶ marker in the WAL ──▶ marker
//       batch acknowledged by Pub/Sub (so is everything before it) ──▶ release
//       the lease at the marker's lsnLast ──▶ stop (stays fenced). All within
//       failover.drainTimeoutSeconds, else stop fenced and let the lease expire.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { backoffDelayMs, sleep, AbortedError, retry } from '../core/backoff.ts';
import type { ChangeBatch } from '../core/change-batch.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { describeError, isRetryable, PermanentError, RetryableError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import { formatLsn, lsnDiffBytes, parseLsn, type Lsn } from '../core/lsn.ts';
import type { MessagePublisher, ObjectStore } from '../core/ports.ts';
import { iso, mustSelfFence, type Lease, type LeaseClient } from '../core/writer-lease.ts';
import { agentStateFile, planStart, readAgentState, resolveStateDir, writeAgentState, type AgentState } from './agent-state.ts';
import { BatchOutbox, type OutboxStats } from './batch-outbox.ts';
import { ChangeBatcher, MARKER_PREFIX, UnknownTypeError, markerContentSchema, type ChangeBatcherStats, type MarkerContent, type TypeRef } from './change-batcher.ts';
import { checkFencePrivileges, fenceLocalDatabase, liftLocalFence, type FenceResult } from './local-fence.ts';
import { LocalLeaseKeeper, type LeaseKeeperStatus } from './local-lease-keeper.ts';
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

export type AgentPhase =
  | 'starting'
  | 'snapshot'
  | 'streaming'
  | 'backing-off'
  | 'draining'
  | 'handing-over'
  | 'fencing'
  | 'stopped'
  | 'fenced'
  | 'handed-over'
  | 'failed';

/** How a run ended (a permanent error rejects instead). */
export interface AgentRunOutcome {
  /**
   * stopped: on request; fenced: the lease was lost or a handover could not
   * finish, and the local database was fenced; handed-over: a graceful
   * takeover released the lease after the marker (the database stays fenced).
   */
  readonly ending: 'stopped' | 'fenced' | 'handed-over';
  readonly reason: string;
}

/** The writer lease of the local side, kept by the agent. */
export interface AgentLeaseOptions {
  /** Over the lease store (Firestore); its clock must be `clock`. */
  readonly client: LeaseClient;
  /** The holder's clock (default: the agent's clock). */
  readonly clock?: () => number;
  /** Bound of one renewal request (default: the renew interval, at least 2 s). */
  readonly renewTimeoutMs?: number;
  /** Fencing starts this long before the self-fence deadline (default: local-lease-keeper defaultFenceLeadMs). */
  readonly fenceLeadMs?: number;
}

export interface AgentFenceStatus {
  /** not-managed: the agent runs without a lease and does not fence. */
  readonly state: 'not-managed' | 'unknown' | 'unfenced' | 'fencing' | 'fenced' | 'failed';
  readonly sentence: string;
  /** When the last fence was complete (agent clock). */
  readonly fencedAt: string | null;
  readonly sessionsTerminated: number;
  readonly problems: readonly string[];
}

export interface HandoverStatus {
  readonly step: 'fencing' | 'writing-marker' | 'waiting-for-marker' | 'waiting-for-ack' | 'releasing' | 'done' | 'failed';
  readonly startedAt: string;
  readonly markerId: string;
  /** lsnLast of the marker batch, once the batcher made it. */
  readonly markerLsn: string | null;
  readonly sentence: string;
}

export interface AgentOptions {
  readonly config: LifeboatConfig;
  /** Directory the config's relative paths are resolved against. */
  readonly baseDir: string;
  readonly publisher: MessagePublisher;
  readonly objectStore: ObjectStore;
  /**
   * A fixed writer epoch for every batch, without a lease (tests, benchmarks).
   * Exactly one of `epoch` and `lease` is given.
   */
  readonly epoch?: () => number;
  /** The local side's writer lease: kept, fenced on loss, handed over on request. */
  readonly lease?: AgentLeaseOptions;
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

// The agent's own sessions write while the database is fenced (DDL-capture
// setup, publication changes): they start read-write whatever the database
// default says. Heartbeats and markers would work without it.
const READ_WRITE_SESSION = '-c default_transaction_read_only=off';

const FENCE_RETRY = { initialMs: 100, maxMs: 2_000, multiplier: 2 } as const;

/** Writes a transactional marker in a transaction of its own; returns the message's LSN. */
async function emitMarker(client: pg.Client, content: MarkerContent): Promise<Lsn> {
  const json = JSON.stringify(markerContentSchema.parse(content));
  const res = await client.query<{ lsn: string }>('SELECT pg_logical_emit_message(true, $1, $2)::text AS lsn', [MARKER_PREFIX, json]);
  return parseLsn(res.rows[0]!.lsn);
}

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

  // The writer lease and the local fence (undefined keeper: a fixed epoch, no fencing).
  private readonly keeper: LocalLeaseKeeper | undefined;
  private fenceStatus: AgentFenceStatus;
  private handoverState: HandoverStatus | undefined;
  private handoverRun: Promise<void> | undefined;
  /** The lift is due once per run, in the first session that can do it. */
  private liftPending = false;
  private fencePrivilegesChecked = false;
  /** The agent's main source session, spared by the fence. */
  private sessionPid: number | undefined;
  /** Per run: aborting it ends the run (request, lease loss, finished handover). */
  private life = new AbortController();
  private outerSignal: AbortSignal | undefined;
  private ending: AgentRunOutcome | undefined;
  private endError: Error | undefined;
  /** Highest LSN up to which Pub/Sub acknowledged every batch, across sessions. */
  private ackedLsn: Lsn = 0n;
  /** lsnLast of the takeover marker batches the batcher made, by markerId. */
  private readonly markerBatches = new Map<string, Lsn>();
  private readonly wakers = new Set<() => void>();

  constructor(private readonly opts: AgentOptions) {
    this.cfg = opts.config;
    this.clock = opts.clock ?? Date.now;
    this.log = opts.logger ?? createLogger({ component: 'agent', fields: { stream: opts.config.stream } });
    if ((opts.epoch === undefined) === (opts.lease === undefined)) {
      throw new PermanentError('the agent needs exactly one of `epoch` (a fixed epoch, without a lease) and `lease` (the writer lease it keeps)');
    }
    this.keeper =
      opts.lease &&
      new LocalLeaseKeeper({
        client: opts.lease.client,
        timing: this.cfg,
        logger: this.log,
        clock: opts.lease.clock ?? this.clock,
        ...(opts.lease.renewTimeoutMs !== undefined && { renewTimeoutMs: opts.lease.renewTimeoutMs }),
        ...(opts.lease.fenceLeadMs !== undefined && { fenceLeadMs: opts.lease.fenceLeadMs }),
        onMustFence: (reason) => this.onLeaseLost(reason),
        onTakeoverRequested: (lease, reason) => this.startHandover(lease, reason),
      });
    this.fenceStatus = {
      state: this.keeper ? 'unknown' : 'not-managed',
      sentence: this.keeper ? 'the local fence has not been checked yet' : 'the agent runs without a writer lease and does not fence the local database',
      fencedAt: null,
      sessionsTerminated: 0,
      problems: [],
    };
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

  /** The epoch new batches carry: the lease's, or the fixed one. */
  private currentEpoch(): number {
    return this.keeper ? this.keeper.epoch() : this.opts.epoch!();
  }

  /** Ends the run (the first ending wins); the session drains and stops. */
  private finish(ending: AgentRunOutcome['ending'], reason: string): void {
    this.ending ??= { ending, reason };
    this.life.abort();
  }

  private failRun(err: Error): void {
    this.endError ??= err;
    this.life.abort();
  }

  private notifyWaiters(): void {
    for (const wake of [...this.wakers]) wake();
  }

  /** Waits until `ready()` holds (re-checked whenever a batch is made or acknowledged). */
  private async waitUntil(ready: () => boolean, signal: AbortSignal): Promise<void> {
    for (;;) {
      if (ready()) return;
      if (signal.aborted) throw new AbortedError(signal.reason);
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.wakers.delete(wake);
          signal.removeEventListener('abort', wake);
          resolve();
        };
        this.wakers.add(wake);
        signal.addEventListener('abort', wake, { once: true });
      });
    }
  }

  /** A short-lived connection to the source of its own (not the main session, which timers share). */
  private async withSourceConnection<T>(applicationName: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
    const client = new pg.Client({ connectionString: this.databaseUrl, application_name: applicationName, options: READ_WRITE_SESSION, connectionTimeoutMillis: 10_000 });
    client.on('error', (err) => this.log.warn(`${applicationName} connection error`, { error: err }));
    try {
      await client.connect();
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      // Authentication and a missing database do not fix themselves.
      if (typeof code === 'string' && (code.startsWith('28') || code === '3D000')) {
        throw new PermanentError(`could not connect to the source database: ${describeError(err)}`, { cause: err });
      }
      throw new RetryableError(`could not connect to the source database: ${describeError(err)}`, { cause: err });
    }
    try {
      return await fn(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /**
   * Fences the local database (agent/local-fence.ts), retrying while
   * PostgreSQL is unreachable, until `signal` aborts. The agent's main
   * session is spared; its walsender is never touched.
   */
  private async fenceLocal(reason: string, signal: AbortSignal): Promise<FenceResult> {
    this.fenceStatus = { ...this.fenceStatus, state: 'fencing', sentence: `fencing the local database because ${reason}` };
    try {
      const result = await retry(
        () =>
          this.withSourceConnection('lifeboat-agent-fence', async (client) => {
            const db = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
            return fenceLocalDatabase(client, {
              database: db,
              ...(this.cfg.source.appRole !== undefined && { appRole: this.cfg.source.appRole, revokeConnect: true }),
              reason,
              epoch: this.keeper?.status().epoch ?? null,
              sparePids: this.sessionPid === undefined ? [] : [this.sessionPid],
              logger: this.log,
            });
          }),
        {
          policy: FENCE_RETRY,
          signal,
          onRetry: (err, attempt, delayMs) => this.log.error(`could not fence the local database yet (attempt ${attempt}); trying again in ${delayMs} ms`, { error: err }),
        },
      );
      this.fenceStatus = {
        state: 'fenced',
        sentence: result.sentence,
        fencedAt: iso(this.clock()),
        sessionsTerminated: this.fenceStatus.sessionsTerminated + result.terminated.length,
        problems: result.problems,
      };
      return result;
    } catch (err) {
      this.fenceStatus = { ...this.fenceStatus, state: 'failed', sentence: `the local database could NOT be fenced: ${describeError(err)}` };
      throw err;
    }
  }

  /** The keeper's onMustFence: fence first, then stop streaming. */
  private async onLeaseLost(reason: string): Promise<void> {
    this.setPhase('fencing', reason);
    try {
      await this.fenceLocal(reason, this.outerSignal ?? this.life.signal);
    } catch (err) {
      const error = new PermanentError(`the writer lease was lost (${reason}) and the local database could not be fenced: ${describeError(err)}`, {
        cause: err,
        remedy: 'Make the local database read-only by hand (ALTER DATABASE … SET default_transaction_read_only = on, and end the app\'s sessions) until the writer is clear; see `lifeboat status`.',
      });
      this.log.critical(error.message);
      this.failRun(error);
      return;
    }
    this.finish('fenced', `${reason}; the local database is fenced and the agent stopped streaming`);
  }

  /** Acquires the lease at the start of a run; a refusal fences the local database. Returns the keeping loop. */
  private async startLease(keeper: LocalLeaseKeeper, keeperSignal: AbortSignal): Promise<{ keeping: Promise<void> }> {
    let lease: Lease;
    try {
      lease = await keeper.acquire();
    } catch (err) {
      if (!isRetryable(err)) {
        // Another side holds the lease, or this side released it: local must be fenced, whatever it is now.
        const bound = AbortSignal.any([this.life.signal, AbortSignal.timeout(this.cfg.lease.ttlSeconds * 1000)]);
        await this.fenceLocal(`local must stay fenced: ${describeError(err)}`, bound).catch((fenceErr) =>
          this.log.critical('the local side may not write, and fencing the local database failed', { error: fenceErr }),
        );
      }
      throw err;
    }
    const request = lease.takeoverRequestedBy;
    if (request !== null && request !== 'local') {
      // Not lifted: a pending takeover is answered at once.
      this.startHandover(lease, `${request} requested a takeover at ${iso(lease.takeoverRequestedAt ?? 0)} (${lease.takeoverReason ?? 'no reason given'})`);
    } else {
      this.liftPending = true;
    }
    return { keeping: keeper.keep(keeperSignal) };
  }

  /**
   * Lifts the local fence with the lease last confirmed, once per run. Skipped
   * when the rules no longer let local write (the keeper or the handover acts
   * on that).
   */
  private async liftIfDue(): Promise<void> {
    const keeper = this.keeper;
    if (!keeper || !this.liftPending || this.handoverRun || this.life.signal.aborted) return;
    const lease = keeper.lease();
    const verdict = mustSelfFence(lease, 'local', (this.opts.lease?.clock ?? this.clock)(), this.cfg);
    if (verdict.fence) {
      this.log.warn(`not lifting the local fence: ${verdict.reason}`);
      this.liftPending = false;
      return;
    }
    const result = await this.withSourceConnection('lifeboat-agent-fence', async (client) => {
      const db = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
      return liftLocalFence(client, {
        database: db,
        ...(this.cfg.source.appRole !== undefined && { appRole: this.cfg.source.appRole }),
        lease: lease!,
        timing: this.cfg,
        now: (this.opts.lease?.clock ?? this.clock)(),
        sparePids: this.sessionPid === undefined ? [] : [this.sessionPid],
        logger: this.log,
      });
    });
    this.liftPending = false;
    this.fenceStatus = { state: 'unfenced', sentence: result.sentence, fencedAt: null, sessionsTerminated: this.fenceStatus.sessionsTerminated, problems: result.problems };
  }

  private async checkFencePrivilegesOnce(client: pg.Client): Promise<void> {
    if (!this.keeper || this.fencePrivilegesChecked) return;
    const db = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
    const problems = await checkFencePrivileges(client, { database: db, ...(this.cfg.source.appRole !== undefined && { appRole: this.cfg.source.appRole }) });
    if (problems.length > 0) {
      throw new PermanentError(`the agent could not fence the local database if it lost the writer lease, so a failover could leave two writers:\n- ${problems.join('\n- ')}`, {
        remedy: 'Fix every problem listed (as a superuser), then start the agent again.',
      });
    }
    this.fencePrivilegesChecked = true;
  }

  /** Starts the graceful handover once (the keeper may report the request again). */
  private startHandover(lease: Lease, reason: string): void {
    if (this.handoverRun || this.life.signal.aborted) return;
    this.liftPending = false;
    this.handoverRun = this.handover(lease, reason).catch((err) => this.log.critical('the handover stopped on an unexpected error', { error: err }));
  }

  /**
   * Graceful takeover, agent side: fence local, write the marker, wait until
   * Pub/Sub acknowledged the marker batch (and with it every batch before it),
   * release the lease at the marker's lsnLast, stop. Bounded by
   * failover.drainTimeoutSeconds; on timeout the database stays fenced and the
   * lease is left to expire, so the cloud falls back to a hard failover.
   */
  private async handover(lease: Lease, reason: string): Promise<void> {
    const keeper = this.keeper!;
    const budgetS = this.cfg.failover.drainTimeoutSeconds;
    const timeout = AbortSignal.timeout(budgetS * 1000);
    const signal = AbortSignal.any([timeout, this.life.signal]);
    const markerId = randomUUID();
    let state: HandoverStatus = { step: 'fencing', startedAt: iso(this.clock()), markerId, markerLsn: null, sentence: '' };
    const say = (step: HandoverStatus['step'], sentence: string, markerLsn?: Lsn) => {
      state = { ...state, step, sentence, ...(markerLsn !== undefined && { markerLsn: formatLsn(markerLsn) }) };
      this.handoverState = state;
      this.log.notice(sentence, { markerId, epoch: lease.epoch, step });
    };
    const requestedBy = lease.takeoverRequestedBy ?? 'cloud';
    this.setPhase('handing-over', `handing the lease over to ${requestedBy}`);
    say('fencing', `${reason}: handing over at epoch ${lease.epoch}; first fencing the local database (the whole handover has ${budgetS} s, failover.drainTimeoutSeconds)`);
    let fenced = false;
    try {
      const fence = await this.fenceLocal(`${requestedBy} requested a takeover (${lease.takeoverReason ?? 'no reason given'})`, signal);
      fenced = true;
      say('writing-marker', `the local database is fenced (${fence.terminated.length} session(s) terminated); writing takeover marker ${markerId}`);
      const content: MarkerContent = { markerId, reason: 'takeover', requestedBy };
      const at = await retry(() => this.withSourceConnection('lifeboat-agent-marker', (client) => emitMarker(client, content)), { policy: FENCE_RETRY, signal });
      say('waiting-for-marker', `wrote takeover marker ${markerId} at ${formatLsn(at)}; waiting for it to come back through the replication slot`);
      await this.waitUntil(() => this.markerBatches.has(markerId), signal);
      const markerLsn = this.markerBatches.get(markerId)!;
      say('waiting-for-ack', `the takeover marker is the batch ending at ${formatLsn(markerLsn)}; waiting for Pub/Sub to acknowledge it and every batch before it`, markerLsn);
      await this.waitUntil(() => this.ackedLsn >= markerLsn, signal);
      say('releasing', `Pub/Sub acknowledged every batch up to the takeover marker at ${formatLsn(markerLsn)}; releasing the lease`);
      const outcome = await Promise.race([
        keeper.release(formatLsn(markerLsn)),
        new Promise<never>((_, reject) => {
          if (signal.aborted) reject(new AbortedError(signal.reason));
          signal.addEventListener('abort', () => reject(new AbortedError(signal.reason)), { once: true });
        }),
      ]);
      if (!outcome.ok) throw new PermanentError(`the lease could not be released: ${outcome.sentence}`);
      const done = `released the lease at epoch ${lease.epoch} with marker ${formatLsn(markerLsn)}: ${requestedBy} takes over once it has applied everything up to the marker; the agent stops and the local database stays fenced`;
      say('done', done);
      this.finish('handed-over', done);
    } catch (err) {
      if (!timeout.aborted && this.life.signal.aborted) {
        const why = this.ending?.reason ?? 'the agent is stopping';
        say('failed', `the handover stopped while ${state.step}: ${why}; the local database ${fenced ? 'stays fenced' : 'may not be fenced'}`);
        return;
      }
      const where = `while ${state.step.replace(/-/g, ' ')}`;
      const cause = timeout.aborted ? `it did not finish within failover.drainTimeoutSeconds (${budgetS} s) ${where}` : `it failed ${where}: ${describeError(err)}`;
      if (!fenced) {
        const error = new PermanentError(`the handover failed and the local database could NOT be fenced: ${cause}`, { cause: err });
        say('failed', error.message);
        this.log.critical(error.message);
        this.failRun(error);
        return;
      }
      const sentence = `the handover did not complete: ${cause}; the local database stays fenced and the lease is left to expire, so ${requestedBy} falls back to a hard failover`;
      say('failed', sentence);
      this.log.critical(sentence);
      this.finish('fenced', sentence);
    }
  }

  private recordError(err: unknown): void {
    this.errors = [
      ...this.errors.slice(-19),
      { at: new Date(this.clock()).toISOString(), message: describeError(err), retryable: isRetryable(err) },
    ];
  }

  /**
   * Runs until `signal` aborts (then drains what is in flight and confirms
   * it), the lease is lost (then fences the local database first), a graceful
   * handover finished, or a permanent error stops it (then rejects with that
   * error).
   */
  async run(signal: AbortSignal): Promise<AgentRunOutcome> {
    this.life = new AbortController();
    this.outerSignal = signal;
    this.ending = undefined;
    this.endError = undefined;
    this.handoverRun = undefined;
    this.handoverState = undefined;
    this.liftPending = false;
    const onOuterAbort = () => this.life.abort();
    if (signal.aborted) this.life.abort();
    else signal.addEventListener('abort', onOuterAbort, { once: true });
    const keeperStop = new AbortController();
    let keeping: Promise<void> | undefined;
    try {
      if (this.keeper) keeping = (await this.startLease(this.keeper, keeperStop.signal)).keeping;
      await this.sessionLoop(this.life.signal);
    } catch (err) {
      this.recordError(err);
      this.fatal = err as Error;
      this.setPhase('failed', `the agent stopped: ${describeError(err)}`);
      this.log.critical('agent stopped on a permanent error', { error: err });
      throw err;
    } finally {
      signal.removeEventListener('abort', onOuterAbort);
      // The lease stays renewed while the last batches drain under its epoch.
      keeperStop.abort();
      await keeping;
      await this.handoverRun;
    }
    if (this.endError) {
      this.recordError(this.endError);
      this.fatal = this.endError;
      this.setPhase('failed', `the agent stopped: ${describeError(this.endError)}`);
      this.log.critical('agent stopped on a permanent error', { error: this.endError });
      throw this.endError;
    }
    const outcome: AgentRunOutcome = this.ending ?? { ending: 'stopped', reason: 'the agent stopped on request after confirming everything Pub/Sub acknowledged' };
    this.setPhase(outcome.ending, outcome.reason);
    if (outcome.ending === 'stopped') this.log.notice('agent stopped');
    else this.log.notice(`agent stopped: ${outcome.reason}`, { ending: outcome.ending });
    return outcome;
  }

  private async sessionLoop(signal: AbortSignal): Promise<void> {
    let attempt = 0;
    while (!signal.aborted) {
      this.sessions += 1;
      const started = this.clock();
      try {
        await this.session(signal);
        if (signal.aborted) break;
      } catch (err) {
        if (signal.aborted && err instanceof AbortedError) break;
        if (!isRetryable(err)) throw err;
        this.recordError(err);
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
  }

  private async session(signal: AbortSignal): Promise<void> {
    this.setPhase('starting', 'checking the source database');
    const client = new pg.Client({ connectionString: this.databaseUrl, application_name: 'lifeboat-agent', options: READ_WRITE_SESSION });
    client.on('error', (err) => this.log.warn('source connection error', { error: err }));
    await client.connect();
    try {
      this.sessionPid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      await this.checkFencePrivilegesOnce(client);
      await this.liftIfDue();
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
      this.sessionPid = undefined;
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
        if (lsn > this.ackedLsn) this.ackedLsn = lsn;
        onConfirmable(lsn);
        this.notifyWaiters();
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
        epoch: this.currentEpoch(),
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
    // The slot confirmed startLsn only after Pub/Sub acknowledged it.
    if (startLsn > this.ackedLsn) this.ackedLsn = startLsn;
    const batcher = new ChangeBatcher({
      stream: this.cfg.stream,
      epoch: () => this.currentEpoch(),
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
      const queued = Promise.all(batches.map((b) => outbox.enqueue(b)));
      for (const b of batches) {
        if (b.kind === 'marker' && b.marker?.reason === 'takeover') {
          this.markerBatches.set(b.marker.markerId, b.lsnLast);
          this.log.info(`takeover marker ${b.marker.markerId} is batch seq ${b.seq}, ending at ${formatLsn(b.lsnLast)}`);
          this.notifyWaiters();
        }
      }
      return queued;
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
    if (this.phase === 'fencing' || this.phase === 'fenced' || this.phase === 'handed-over') return { ok: false, reason: this.phaseReason };
    if (this.fenceStatus.state === 'failed') return { ok: false, reason: this.fenceStatus.sentence };
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
      epoch: this.keeper ? this.keeper.status().epoch : this.opts.epoch!(),
      lease: this.keeper?.status() ?? null,
      fence: this.fenceStatus,
      handover: this.handoverState ?? null,
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
      gauge('lifeboat_agent_epoch', 'Writer epoch carried by new batches', s.epoch ?? NaN),
      gauge('lifeboat_agent_local_fenced', '1 while the agent knows the local database is fenced (read-only for new sessions)', s.fence.state === 'fenced' ? 1 : 0),
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
  /** null until the lease is acquired. */
  epoch: number | null;
  lease: LeaseKeeperStatus | null;
  fence: AgentFenceStatus;
  handover: HandoverStatus | null;
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
