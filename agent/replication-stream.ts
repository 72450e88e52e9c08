// A logical replication connection (pgoutput, protocol version 1) read with
// `pg` directly, exposed zero-cache style:
//
//   const stream = await startReplicationStream({ connectionString, slot, publication });
//   for await (const { lsn, message } of stream) { …; stream.confirm(commitEndLsn) }
//   await stream.close();
//
// - An async iterator of typed messages, each tagged with its WAL position (the
//   XLogData walStart). For a Commit that is its end LSN; for a
//   non-transactional logical message, the message's LSN.
// - An ack sink, confirm(lsn): the only way an LSN reaches PostgreSQL. Every
//   Standby Status Update carries write = flush = apply = the confirmed LSN, so
//   the slot's confirmed_flush_lsn never passes what the caller confirmed, not
//   even when answering keepalives (pg-logical-replication's trap: it acks the
//   last *received* LSN). Unconfirmed transactions are re-sent after a restart.
// - Bounded memory: when the consumer does not pull, the socket is paused once
//   the queue exceeds its byte or message limit, and resumed at half of it. The
//   walsender then blocks on a full TCP buffer; our status updates still flow
//   (writing is independent of reading), so wal_sender_timeout never fires.
//
// How pg carries CopyBoth (checked in pg 8.23.1 / pg-protocol): the server's
// CopyBothResponse ('W') is emitted on client.connection as 'replicationStart';
// every CopyData as 'copyData' with {chunk}; connection.sendCopyFromChunk()
// and connection.endCopyFrom() write CopyData and CopyDone. client.query()
// of START_REPLICATION resolves only when the COPY ends (CommandComplete +
// ReadyForQuery after both sides sent CopyDone) and rejects on an
// ErrorResponse or a lost connection. The `chunk` is a slice of pg's parser
// buffer, which pg may overwrite when it reads more, so every chunk is
// decoded (or copied) before the handler returns.

import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import pg from 'pg';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import { formatLsn, isLsn, parseLsn, type Lsn } from '../core/lsn.ts';
import {
  PgoutputProtocolError,
  encodeStandbyStatusUpdate,
  nowPgMicros,
  parsePgoutputMessage,
  parseReplicationFrame,
  type PgoutputMessage,
} from './pgoutput-reader.ts';

/** One decoded pgoutput message and the WAL position it stands for. */
export interface StreamedMessage {
  /** XLogData walStart. For Commit: its end LSN; for a logical message: its LSN. */
  readonly lsn: Lsn;
  readonly message: PgoutputMessage;
}

export interface ReplicationStreamOptions {
  readonly connectionString: string;
  readonly slot: string;
  readonly publication: string;
  /**
   * Where to start. 0n (default) means "from the slot's confirmed_flush_lsn";
   * PostgreSQL also never starts before it, whatever is passed. Transactions
   * that end at or before a larger startLsn are skipped without being confirmed.
   */
  readonly startLsn?: Lsn;
  /** Pause the socket when queued CopyData bytes exceed this (default 8 MiB). */
  readonly maxQueueBytes?: number;
  /** … or when queued messages exceed this (default 50,000). */
  readonly maxQueueMessages?: number;
  /**
   * Unprompted status update period. Default: min(10 s, wal_sender_timeout / 3),
   * read from the server, so the walsender never times us out.
   */
  readonly statusIntervalMs?: number;
  /** At most one status update per this many ms for confirm() (default 100). */
  readonly confirmThrottleMs?: number;
  /** How long close() waits for the server to end the COPY (default 5 s). */
  readonly closeTimeoutMs?: number;
  /** application_name of the walsender (pg_stat_replication). Default 'lifeboat-agent'. */
  readonly applicationName?: string;
  readonly logger?: Logger;
}

export interface ReplicationStreamStats {
  readonly queuedMessages: number;
  readonly queuedBytes: number;
  /** The most bytes ever queued at once (backpressure check). */
  readonly maxQueuedBytesSeen: number;
  readonly maxQueuedMessagesSeen: number;
  readonly paused: boolean;
  readonly pauseCount: number;
  /** Highest XLogData walStart received. */
  readonly receivedLsn: Lsn;
  /** The server's end of WAL from the latest XLogData or keepalive (for lag metrics only). */
  readonly serverWalEnd: Lsn;
  readonly confirmedLsn: Lsn;
  /** The LSN sent in the latest status update. */
  readonly reportedLsn: Lsn;
  readonly statusUpdatesSent: number;
  readonly keepalivesReceived: number;
  /** Keepalives that requested a reply (each answered with the confirmed LSN). */
  readonly keepaliveRepliesRequested: number;
  readonly statusIntervalMs: number;
}

const DEFAULT_MAX_QUEUE_BYTES = 8 * 1024 * 1024;
const DEFAULT_MAX_QUEUE_MESSAGES = 50_000;
const DEFAULT_STATUS_INTERVAL_MS = 10_000;
const DEFAULT_CONFIRM_THROTTLE_MS = 100;
const DEFAULT_CLOSE_TIMEOUT_MS = 5_000;
/** Reply-requested keepalives within the window that mean "server shutting down" (see serverIsStopping). */
const SHUTDOWN_BURST_REPLY_REQUESTS = 50;
const SHUTDOWN_BURST_WINDOW_MS = 1_000;

/** The parts of pg's Connection used for CopyBoth (not in @types/pg). */
interface CopyBothConnection extends EventEmitter {
  readonly stream: Duplex;
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
}

interface Queued {
  readonly item: StreamedMessage;
  readonly size: number;
}

/**
 * Opens a replication connection and starts streaming. Resolves once the
 * server answered START_REPLICATION with CopyBothResponse.
 * @throws PermanentError when the slot or publication does not exist, the slot
 *   was invalidated, or the role may not replicate; RetryableError when the
 *   server is unreachable or the slot is in use by another connection.
 */
export async function startReplicationStream(opts: ReplicationStreamOptions): Promise<ReplicationStream> {
  validateSlotName(opts.slot);
  if (opts.publication.length === 0 || opts.publication.includes('\0')) {
    throw new ValidationError(`invalid publication name ${JSON.stringify(opts.publication)}`);
  }
  const startLsn = opts.startLsn ?? 0n;
  if (!isLsn(startLsn)) throw new ValidationError(`invalid start LSN ${String(startLsn)}`);

  const client = createReplicationClient(opts.connectionString, opts.applicationName ?? 'lifeboat-agent');
  // Until the stream owns the client, record (and so swallow) its 'error' events.
  let earlyError: unknown;
  const onEarlyError = (err: unknown) => (earlyError ??= err);
  client.on('error', onEarlyError);
  try {
    await client.connect();
    const statusIntervalMs = opts.statusIntervalMs ?? (await defaultStatusInterval(client));
    const stream = new ReplicationStream(client, opts, startLsn, statusIntervalMs);
    client.off('error', onEarlyError);
    await stream.begin();
    return stream;
  } catch (err) {
    client.off('error', onEarlyError);
    client.on('error', () => {}); // a late socket error must not crash the process
    await client.end().catch(() => {});
    throw classifyReplicationError(earlyError ?? err, opts.slot, opts.publication);
  }
}

export class ReplicationStream implements AsyncIterable<StreamedMessage> {
  private readonly conn: CopyBothConnection;
  private readonly log: Logger;
  private readonly maxQueueBytes: number;
  private readonly maxQueueMessages: number;
  private readonly confirmThrottleMs: number;
  private readonly closeTimeoutMs: number;

  // FIFO as array + head index: shift() on a large array is O(n).
  private queue: Queued[] = [];
  private head = 0;
  private queuedBytes = 0;
  private paused = false;
  private waiter: { resolve: (r: IteratorResult<StreamedMessage>) => void; reject: (e: unknown) => void } | undefined;

  private copyActive = false;
  private copyDoneSent = false;
  private closing = false;
  private ended = false;
  private failure: Error | undefined;
  private queryDone: Promise<void> | undefined;
  private closePromise: Promise<void> | undefined;

  private confirmed: Lsn = 0n;
  private reported: Lsn = 0n;
  private lastStatusAt = 0;
  private confirmTimer: NodeJS.Timeout | undefined;
  private replyBurstStart = 0;
  private replyBurstCount = 0;
  private intervalTimer: NodeJS.Timeout | undefined;

  private readonly counters = {
    maxQueuedBytesSeen: 0,
    maxQueuedMessagesSeen: 0,
    pauseCount: 0,
    receivedLsn: 0n,
    serverWalEnd: 0n,
    statusUpdatesSent: 0,
    keepalivesReceived: 0,
    keepaliveRepliesRequested: 0,
  };

  /** Use {@link startReplicationStream}. */
  constructor(
    private readonly client: pg.Client,
    private readonly opts: ReplicationStreamOptions,
    private readonly startLsn: Lsn,
    readonly statusIntervalMs: number,
  ) {
    this.conn = client.connection as unknown as CopyBothConnection;
    this.log = opts.logger ?? createLogger({ component: 'replication-stream', fields: { slot: opts.slot } });
    this.maxQueueBytes = opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES;
    this.maxQueueMessages = opts.maxQueueMessages ?? DEFAULT_MAX_QUEUE_MESSAGES;
    this.confirmThrottleMs = opts.confirmThrottleMs ?? DEFAULT_CONFIRM_THROTTLE_MS;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
  }

  /** @internal Called once by startReplicationStream: START_REPLICATION, then wait for CopyBothResponse (or the error). */
  async begin(): Promise<void> {
    const { slot, publication } = this.opts;
    const sql =
      `START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(this.startLsn)} ` +
      `(proto_version '1', publication_names ${quoteReplLiteral(quoteIdent(publication))}, messages 'true')`;

    this.conn.on('copyData', this.onCopyData);
    // The server sends CopyDone first only when it ends the stream (e.g. shutdown); answer it.
    this.conn.on('copyDone', this.onServerCopyDone);
    this.client.on('error', this.onClientError);

    const started = new Promise<'started'>((resolve) => this.conn.once('replicationStart', () => resolve('started')));
    const query = this.client.query(sql);
    // Settled before 'replicationStart', the query fails begin(); after it, the iterator.
    this.queryDone = query.then(this.onQueryEnd, this.onQueryError);
    const first = await Promise.race([started, query]);
    if (first !== 'started') throw new RetryableError(`START_REPLICATION ended before streaming began`, { details: { slot } });
    this.copyActive = true;
    this.lastStatusAt = Date.now();
    this.intervalTimer = setInterval(() => this.sendStatus(), this.statusIntervalMs);
    this.intervalTimer.unref();
    this.log.info('replication started', {
      startLsn: formatLsn(this.startLsn),
      publication,
      statusIntervalMs: this.statusIntervalMs,
    });
  }

  /**
   * Records that everything up to `lsn` is safe (published and acknowledged),
   * so PostgreSQL may advance the slot to it. Only ever moves forward; a
   * status update follows within confirmThrottleMs. Pass a Commit's end LSN or
   * a non-transactional message's LSN, never a keepalive's walEnd.
   * @throws ValidationError for an LSN beyond anything this stream received:
   *   confirming an unseen position would let PostgreSQL drop unsent changes.
   */
  confirm(lsn: Lsn): void {
    if (!isLsn(lsn)) throw new ValidationError(`confirm(): invalid LSN ${String(lsn)}`);
    if (lsn <= this.confirmed) return;
    const limit = this.counters.receivedLsn > this.startLsn ? this.counters.receivedLsn : this.startLsn;
    if (lsn > limit) {
      throw new ValidationError(
        `confirm(${formatLsn(lsn)}) is beyond the last position this stream received (${formatLsn(limit)})`,
        { details: { lsn: formatLsn(lsn), received: formatLsn(limit) } },
      );
    }
    this.confirmed = lsn;
    if (this.confirmTimer !== undefined || !this.copyActive) return;
    const delay = Math.max(0, this.lastStatusAt + this.confirmThrottleMs - Date.now());
    this.confirmTimer = setTimeout(() => {
      this.confirmTimer = undefined;
      if (this.confirmed > this.reported) this.sendStatus();
    }, delay);
    this.confirmTimer.unref();
  }

  /** The latest confirmed LSN (0n until the first confirm()). */
  get confirmedLsn(): Lsn {
    return this.confirmed;
  }

  stats(): ReplicationStreamStats {
    return {
      ...this.counters,
      queuedMessages: this.queue.length - this.head,
      queuedBytes: this.queuedBytes,
      paused: this.paused,
      confirmedLsn: this.confirmed,
      reportedLsn: this.reported,
      statusIntervalMs: this.statusIntervalMs,
    };
  }

  [Symbol.asyncIterator](): AsyncIterator<StreamedMessage> {
    return {
      next: () => this.next(),
      // `break` out of for-await closes the stream (after a final status update).
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }

  /** The next message; waits when none is queued. Rejects with the stream's error once the queue is drained. */
  next(): Promise<IteratorResult<StreamedMessage>> {
    if (this.head < this.queue.length) return Promise.resolve({ value: this.dequeue(), done: false });
    if (this.failure) return Promise.reject(this.failure);
    if (this.ended || this.closing) return Promise.resolve({ value: undefined, done: true });
    if (this.waiter) return Promise.reject(new Error('ReplicationStream supports one pending next() at a time'));
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /**
   * Ends the stream cleanly: a final status update with the confirmed LSN,
   * CopyDone, wait for the server to finish the COPY, then disconnect.
   * Queued messages are dropped (they were not confirmed, so they come again).
   */
  close(): Promise<void> {
    this.closePromise ??= this.doClose();
    return this.closePromise;
  }

  // -------------------------------------------------------------------------

  private async doClose(): Promise<void> {
    this.closing = true;
    this.stopTimers();
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    this.settleWaiter({ value: undefined, done: true });
    if (this.copyActive && !this.failure) {
      this.sendStatus();
      this.sendCopyDone();
      this.resume(); // the server's CopyDone/CommandComplete must be read
      const timedOut = await withTimeout(this.queryDone ?? Promise.resolve(), this.closeTimeoutMs);
      if (timedOut) this.log.warn('server did not end the replication COPY in time; disconnecting', { timeoutMs: this.closeTimeoutMs });
    }
    this.copyActive = false;
    this.ended = true;
    await this.endClient();
    this.log.info('replication stopped', { confirmedLsn: formatLsn(this.confirmed) });
  }

  private readonly onCopyData = (msg: { chunk: Buffer }): void => {
    if (this.closing || this.failure) return;
    const chunk = msg.chunk;
    let item: StreamedMessage;
    try {
      const frame = parseReplicationFrame(chunk);
      if (frame.kind === 'keepalive') {
        this.counters.keepalivesReceived++;
        if (frame.walEnd > this.counters.serverWalEnd) this.counters.serverWalEnd = frame.walEnd;
        // Answer with the confirmed LSN, never with walEnd.
        if (frame.replyRequested) {
          this.counters.keepaliveRepliesRequested++;
          if (this.serverIsStopping()) {
            this.fail(
              new RetryableError('PostgreSQL is shutting down; disconnected so that it can stop', {
                remedy: 'Reconnect once the server is back; unconfirmed transactions are sent again.',
                details: { slot: this.opts.slot, confirmedLsn: formatLsn(this.confirmed), serverWalEnd: formatLsn(frame.walEnd) },
              }),
            );
            return;
          }
          this.sendStatus();
        }
        return;
      }
      item = { lsn: frame.walStart, message: parsePgoutputMessage(chunk, frame.dataOffset) };
      if (frame.walStart > this.counters.receivedLsn) this.counters.receivedLsn = frame.walStart;
      if (frame.walEnd > this.counters.serverWalEnd) this.counters.serverWalEnd = frame.walEnd;
    } catch (err) {
      this.fail(
        new PermanentError(`cannot decode the replication stream: ${(err as Error).message}`, {
          remedy:
            err instanceof PgoutputProtocolError
              ? 'This is a Lifeboat bug or an unsupported server; report it with the message above.'
              : undefined,
          details: { slot: this.opts.slot, receivedLsn: formatLsn(this.counters.receivedLsn) },
          cause: err,
        }),
      );
      return;
    }
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: item, done: false });
      return;
    }
    this.queue.push({ item, size: chunk.length });
    this.queuedBytes += chunk.length;
    const count = this.queue.length - this.head;
    if (this.queuedBytes > this.counters.maxQueuedBytesSeen) this.counters.maxQueuedBytesSeen = this.queuedBytes;
    if (count > this.counters.maxQueuedMessagesSeen) this.counters.maxQueuedMessagesSeen = count;
    if (!this.paused && (this.queuedBytes > this.maxQueueBytes || count > this.maxQueueMessages)) {
      // Messages already parsed from the current socket read still arrive;
      // no further read happens until the consumer drains to half.
      this.paused = true;
      this.counters.pauseCount++;
      this.conn.stream.pause();
    }
  };

  /**
   * At shutdown a logical walsender waits until the client's flush position
   * equals everything it sent (WalSndDone), asking for a reply after each
   * reply. We never confirm past what is published, and the last WAL it sent
   * is often not a commit at all (running-xacts, checkpoint records), so it
   * would wait forever and `pg_ctl stop -m fast` would hang, with a tight
   * keepalive ping-pong (measured: ~10k reply requests/s). Normally replies
   * are requested at most twice per wal_sender_timeout, so a burst means the
   * server is stopping: disconnect instead of confirming anything.
   */
  private serverIsStopping(): boolean {
    const now = Date.now();
    if (now - this.replyBurstStart > SHUTDOWN_BURST_WINDOW_MS) {
      this.replyBurstStart = now;
      this.replyBurstCount = 0;
    }
    return ++this.replyBurstCount >= SHUTDOWN_BURST_REPLY_REQUESTS;
  }

  private dequeue(): StreamedMessage {
    const q = this.queue[this.head]!;
    this.queue[this.head] = undefined as unknown as Queued; // release for GC
    this.head++;
    this.queuedBytes -= q.size;
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head >= 4096 && this.head * 2 >= this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    if (this.paused && this.queuedBytes <= this.maxQueueBytes / 2 && this.queue.length - this.head <= this.maxQueueMessages / 2) {
      this.resume();
    }
    return q.item;
  }

  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.conn.stream.resume();
  }

  /** A Standby Status Update with the confirmed LSN (write = flush = apply). */
  private sendStatus(): void {
    if (!this.copyActive || this.copyDoneSent || this.failure) return;
    try {
      this.conn.sendCopyFromChunk(encodeStandbyStatusUpdate(this.confirmed, nowPgMicros()));
    } catch (err) {
      // A broken socket also surfaces through 'error'/'end'; this is just in case.
      this.fail(new RetryableError('cannot send a replication status update', { cause: err }));
      return;
    }
    this.reported = this.confirmed;
    this.lastStatusAt = Date.now();
    this.counters.statusUpdatesSent++;
  }

  private sendCopyDone(): void {
    if (this.copyDoneSent) return;
    this.copyDoneSent = true;
    try {
      this.conn.endCopyFrom();
    } catch {
      // The connection is going away anyway.
    }
  }

  private readonly onServerCopyDone = (): void => {
    if (!this.closing) this.log.warn('server ended the replication stream');
    this.sendStatus();
    this.sendCopyDone();
  };

  private readonly onQueryEnd = (): void => {
    // The COPY ended normally: we sent CopyDone (close), or the server ended it.
    if (!this.copyActive && !this.copyDoneSent) return; // begin() reports it
    this.copyActive = false;
    if (!this.closing) {
      this.fail(
        new RetryableError('the server ended the replication stream', {
          remedy: 'Reconnect; unconfirmed transactions are sent again.',
          details: { slot: this.opts.slot },
        }),
      );
    }
  };

  private readonly onQueryError = (err: unknown): void => {
    if (!this.copyActive && !this.copyDoneSent) return; // before streaming: begin() throws it
    this.copyActive = false;
    if (this.closing) return;
    this.fail(classifyReplicationError(err, this.opts.slot, this.opts.publication));
  };

  private readonly onClientError = (err: unknown): void => {
    if (this.closing || !this.copyActive) return; // before streaming, the query rejects with it too
    // An ErrorResponse rejects the query first (a microtask); prefer that
    // classified error over the 'Connection terminated' that follows it.
    setImmediate(() => this.fail(classifyReplicationError(err, this.opts.slot, this.opts.publication)));
  };

  private fail(err: Error): void {
    if (this.failure || this.closing) return;
    this.failure = err;
    this.copyActive = false;
    this.stopTimers();
    this.log.warn('replication stream failed', err);
    this.settleWaiter(undefined, err);
    void this.endClient();
  }

  private settleWaiter(result: IteratorResult<StreamedMessage> | undefined, err?: unknown): void {
    const w = this.waiter;
    if (!w) return;
    this.waiter = undefined;
    if (err !== undefined) w.reject(err);
    else w.resolve(result!);
  }

  private stopTimers(): void {
    if (this.confirmTimer !== undefined) clearTimeout(this.confirmTimer);
    if (this.intervalTimer !== undefined) clearInterval(this.intervalTimer);
    this.confirmTimer = undefined;
    this.intervalTimer = undefined;
  }

  private clientEnded: Promise<void> | undefined;
  private endClient(): Promise<void> {
    this.clientEnded ??= (async () => {
      this.resume();
      const timedOut = await withTimeout(
        this.client.end().catch(() => {}),
        this.closeTimeoutMs,
      );
      if (timedOut) this.conn.stream.destroy();
    })();
    return this.clientEnded;
  }
}

// ---------------------------------------------------------------------------
// Setup helpers

/**
 * A pg.Client in replication mode (`replication=database`): it accepts
 * replication commands (CREATE_REPLICATION_SLOT, START_REPLICATION, SHOW)
 * and simple SQL queries. Not yet connected.
 */
export function createReplicationClient(connectionString: string, applicationName = 'lifeboat-agent'): pg.Client {
  const config: pg.ClientConfig & { replication: string } = {
    connectionString,
    replication: 'database',
    application_name: applicationName,
  };
  return new pg.Client(config);
}

export interface CreatedSlot {
  readonly slotName: string;
  /** The slot's first position: everything committed after it is streamed. */
  readonly consistentPoint: Lsn;
  /** An exported snapshot showing the database exactly at consistentPoint. */
  readonly snapshotName: string;
}

/**
 * Creates a pgoutput logical slot through the replication protocol,
 * exporting a snapshot consistent with the slot's start:
 * `CREATE_REPLICATION_SLOT "slot" LOGICAL pgoutput (SNAPSHOT 'export')`.
 *
 * `client` must be a connected replication client ({@link createReplicationClient}).
 *
 * The exported snapshot lives only while `client` stays open AND idle: the
 * next command on it (or closing it) destroys the snapshot. So do the initial
 * copy on other, ordinary connections (`BEGIN ISOLATION LEVEL REPEATABLE READ;
 * SET TRANSACTION SNAPSHOT '<snapshotName>'; COPY …`) while keeping this one
 * open and untouched; close it only after every copy transaction has imported
 * the snapshot. Rows in the snapshot are exactly those committed before
 * consistentPoint; the stream then starts after it, so nothing is missed or
 * applied twice.
 */
export async function createLogicalSlot(client: pg.Client, slot: string): Promise<CreatedSlot> {
  validateSlotName(slot);
  try {
    const res = await client.query<{ slot_name: string; consistent_point: string; snapshot_name: string | null }>(
      `CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput (SNAPSHOT 'export')`,
    );
    const row = res.rows[0];
    if (!row || !row.snapshot_name) {
      throw new PermanentError(`CREATE_REPLICATION_SLOT ${slot} returned no exported snapshot`, {
        remedy: 'Use a replication connection (replication=database) on PostgreSQL 15 or newer.',
      });
    }
    return { slotName: row.slot_name, consistentPoint: parseLsn(row.consistent_point), snapshotName: row.snapshot_name };
  } catch (err) {
    if (err instanceof PermanentError) throw err;
    const code = (err as { code?: string }).code;
    if (code === '42710') {
      throw new PermanentError(`replication slot "${slot}" already exists`, {
        remedy: `A slot can be created once. To start over, drop it first: SELECT pg_drop_replication_slot('${slot}');`,
        cause: err,
      });
    }
    throw classifyReplicationError(err, slot, undefined);
  }
}

// ---------------------------------------------------------------------------
// Quoting, validation, classification

/** A double-quoted identifier ("" doubles a quote). */
export function quoteIdent(name: string): string {
  if (name.includes('\0')) throw new ValidationError('identifier contains a NUL character');
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * A single-quoted literal for the replication command grammar. Unlike SQL's
 * E'…', repl_scanner.l knows only '' doubling, so backslashes stay as they are
 * (pg.escapeLiteral would emit E'…', which START_REPLICATION rejects).
 */
export function quoteReplLiteral(value: string): string {
  if (value.includes('\0')) throw new ValidationError('literal contains a NUL character');
  return `'${value.replace(/'/g, "''")}'`;
}

/** PostgreSQL's own rule (ReplicationSlotValidateName): [a-z0-9_], 1–63 characters. */
export function validateSlotName(slot: string): void {
  if (!/^[a-z0-9_]{1,63}$/.test(slot)) {
    throw new ValidationError(`invalid replication slot name ${JSON.stringify(slot)}`, {
      remedy: 'Slot names may contain only lower case letters, digits and underscores, at most 63 characters.',
    });
  }
}

// SQLSTATE classes that may succeed later: connection exception, transaction
// rollback, insufficient resources, operator intervention (shutdown), system error.
const RETRYABLE_SQLSTATE_CLASSES = new Set(['08', '40', '53', '57', '58']);

/** Maps a replication error to RetryableError or PermanentError with a remedy. */
export function classifyReplicationError(err: unknown, slot: string, publication: string | undefined): Error {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const e = err as { code?: unknown; message?: unknown; detail?: unknown };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.message === 'string' ? e.message : String(err);
  const detail = typeof e.detail === 'string' ? e.detail : undefined;
  const details = { slot, publication, sqlstate: code, serverDetail: detail };

  if (code === undefined || !/^[0-9A-Z]{5}$/.test(code)) {
    // No SQLSTATE: the socket failed (refused, reset, terminated unexpectedly).
    return new RetryableError(`replication connection failed: ${message}`, { details, cause: err });
  }
  if (code === '42704' && /replication slot/i.test(message)) {
    return new PermanentError(`replication slot "${slot}" does not exist`, {
      remedy:
        'The slot was dropped or never created. Recreate it and re-seed the standby with a fresh snapshot; ' +
        'changes made while no slot existed cannot be streamed.',
      details,
      cause: err,
    });
  }
  if (code === '42704' && /publication/i.test(message)) {
    return new PermanentError(`publication ${publication === undefined ? '' : `"${publication}" `}does not exist: ${message}`, {
      remedy: 'Create the publication again (CREATE PUBLICATION … FOR ALL TABLES, or for the configured tables), then restart.',
      details,
      cause: err,
    });
  }
  if (code === '55000' && (/invalidated/i.test(`${message} ${detail ?? ''}`) || /cannot read from logical replication slot/i.test(message))) {
    return new PermanentError(`replication slot "${slot}" was invalidated: ${message}${detail ? ` (${detail})` : ''}`, {
      remedy:
        'PostgreSQL removed WAL the slot still needed (it exceeded max_slot_wal_keep_size). Drop the slot, ' +
        'create it again and re-seed the standby from a fresh snapshot.',
      details,
      cause: err,
    });
  }
  if (code === '55006') {
    return new RetryableError(`replication slot "${slot}" is in use: ${message}`, {
      remedy: 'Another agent or pg_recvlogical is reading this slot; stop it, or wait for its connection to end.',
      details,
      cause: err,
    });
  }
  if (code === '42501' || code === '28000' || code === '28P01') {
    return new PermanentError(`not allowed to replicate: ${message}`, {
      remedy: 'Use a role with the REPLICATION attribute (ALTER ROLE … REPLICATION) and allow it in pg_hba.conf for replication.',
      details,
      cause: err,
    });
  }
  if (RETRYABLE_SQLSTATE_CLASSES.has(code.slice(0, 2))) {
    return new RetryableError(`replication stream error: ${message}`, { details, cause: err });
  }
  return new PermanentError(`replication stream error: ${message}`, { details, cause: err });
}

// ---------------------------------------------------------------------------

/** min(10 s, wal_sender_timeout / 3); 10 s when the timeout is off or unreadable. */
async function defaultStatusInterval(client: pg.Client): Promise<number> {
  try {
    const res = await client.query<{ wal_sender_timeout: string }>('SHOW wal_sender_timeout');
    const ms = parseDurationMs(res.rows[0]?.wal_sender_timeout ?? '');
    if (ms !== undefined && ms > 0) return Math.max(100, Math.min(DEFAULT_STATUS_INTERVAL_MS, Math.floor(ms / 3)));
  } catch {
    // Older servers or poolers may not allow SHOW here; the default is safe for 60 s.
  }
  return DEFAULT_STATUS_INTERVAL_MS;
}

/** PostgreSQL duration text (`60s`, `500ms`, `1min`, `0`) in ms. */
export function parseDurationMs(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$/.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2] ?? 'ms'; // wal_sender_timeout's base unit is ms
  const factor = { us: 0.001, ms: 1, s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 }[unit]!;
  return n * factor;
}

/** Resolves true when `ms` passed first. */
async function withTimeout(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), ms);
    timer.unref();
  });
  try {
    return await Promise.race([p.then(() => false, () => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
