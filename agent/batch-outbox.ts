// The agent's publishing path: ChangeBatches in stream order in, Pub/Sub
// messages out, and an exact confirm frontier back to the replication slot.
//
//   const outbox = new BatchOutbox({ stream, startLsn, publisher, objectStore,
//     batching: config.batching, claimCheckPrefix: config.storage.claimCheckPrefix,
//     onConfirmable: (lsn) => replication.confirm(lsn) });
//   for (const batch of batches) await outbox.enqueue(batch); // waits when flow control is full
//   …on SIGTERM: stop reading, then await outbox.drain(AbortSignal.timeout(30_000))
//
// Rules:
// - Several batches are in flight at once (ordering key = stream), bounded by
//   batching.maxInflightBatches and maxBufferedBytes: enqueue() waits for room,
//   and that is how the agent stops reading the slot. One batch larger than
//   maxBufferedBytes still goes through alone.
// - Large batches go to object storage first under a deterministic key
//   (claimCheckPrefix + stream/<lsnFirst>-<lsnLast>-<sha256 prefix>.json[.gz]),
//   so an upload repeated after a crash or a retry is idempotent; then the
//   pointer is published in the batch's place in the order.
// - onConfirmable(lsn) is called whenever the contiguous acknowledged frontier
//   (agent/publish-frontier.ts) moves: never past a batch that Pub/Sub has not
//   acknowledged, and every value larger than the one before.
// - A retryable publish failure pauses the ordering key in the client and
//   fails every later publish on it. The outbox waits until every publish in
//   flight has settled, backs off, resumes the key and publishes again, in
//   order, every batch not yet acknowledged. Duplicates of batches that were
//   stored after all are harmless: the applier drops them by LSN.
// - A permanent error (publish, upload, or a batch that breaks the chain)
//   stops the outbox: enqueue() and drain() reject with it and onFatal hears
//   it. Nothing is dropped silently; the unconfirmed tail is read again from
//   the slot after a restart.
// - The chain is checked at the door: the first batch's lsnPrev must be the
//   start LSN and every later one's the lsnLast before it. A hole would stall
//   the applier forever (it waits for the gap), so it is refused here.
// - Encoded messages are kept until acknowledged (bounded by flow control).

import { AbortedError, DEFAULT_BACKOFF, backoffDelayMs, retry, sleep, type BackoffPolicy } from '../core/backoff.ts';
import { encodeBatch, type EncodedBatch, type PubSubMessage } from '../core/batch-codec.ts';
import { batchRowCount, type ChangeBatch } from '../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError, describeError, isRetryable } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import { formatLsn, type Lsn } from '../core/lsn.ts';
import type { MessagePublisher, ObjectStore } from '../core/ports.ts';
import { PublishFrontier } from './publish-frontier.ts';

export interface OutboxBatchingOptions {
  /** Tracked, unacknowledged batches at most (config batching.maxInflightBatches). */
  maxInflightBatches: number;
  /** Unacknowledged encoded bytes at most (config batching.maxBufferedBytes). */
  maxBufferedBytes: number;
  compressAboveBytes: number;
  claimCheckAboveBytes: number;
}

export interface BatchOutboxOptions {
  /** The stream id: every batch's `stream` and the ordering key. */
  stream: string;
  /** The slot's confirmed position: the first batch's lsnPrev, and where the frontier starts. */
  startLsn: Lsn;
  publisher: MessagePublisher;
  /** Where claim-check payloads go (FS in local mode, GCS in the cloud). */
  objectStore: ObjectStore;
  /** Config `batching` (extra fields are ignored). */
  batching: OutboxBatchingOptions;
  /** Config storage.claimCheckPrefix: '' or ending in '/'. */
  claimCheckPrefix: string;
  /** Called with each new confirmable LSN, strictly increasing; the agent passes it to ReplicationStream.confirm. */
  onConfirmable: (lsn: Lsn) => void;
  /** Called once when the outbox stops on a permanent error. */
  onFatal?: (err: Error) => void;
  /** Backoff between publish recoveries and upload retries. Default core/backoff DEFAULT_BACKOFF. */
  backoff?: BackoffPolicy;
  gzipLevel?: number;
  logger?: Logger;
}

export type OutboxState = 'running' | 'recovering' | 'failed' | 'stopped';

export interface OutboxStats {
  state: OutboxState;
  /** Batches accepted by enqueue(). */
  enqueuedBatches: number;
  /** Batches acknowledged by Pub/Sub (each counted once). */
  publishedBatches: number;
  publishedRows: number;
  /** Message bytes as sent (data, attribute keys and values, ordering key) of acknowledged batches. */
  publishedBytes: number;
  /** Batches that went by claim check, and the payload bytes uploaded for them. */
  claimCheckBatches: number;
  claimCheckBytes: number;
  /** Publish recoveries (backoff + resume + re-publish) and upload retries. */
  retries: number;
  /** Publishes of a batch beyond its first. */
  republishedBatches: number;
  inflightBatches: number;
  inflightBytes: number;
  confirmableLsn: Lsn;
  /** Age of the oldest unacknowledged batch, ms since it was enqueued. */
  oldestUnackedAgeMs: number | undefined;
  lastError: { message: string; retryable: boolean; at: string } | undefined;
}

interface Entry {
  /** Outbox sequence number (consecutive; the frontier's seq). */
  seq: number;
  /** The batch's own seq, for logs. */
  batchSeq: number;
  lsnLast: Lsn;
  rows: number;
  message: PubSubMessage;
  bytes: number;
  enqueuedAt: number;
  sends: number;
}

/** 16 hex digits: sorts like the LSN, and has no '/' to clash with key segments. */
function lsnKeyPart(lsn: Lsn): string {
  return lsn.toString(16).toUpperCase().padStart(16, '0');
}

/** The deterministic object key of a claim-check payload. */
export function claimCheckKey(prefix: string, batch: Pick<ChangeBatch, 'stream' | 'lsnFirst' | 'lsnLast'>, encoded: { sha256: string; encoding: string }): string {
  const extension = encoded.encoding === 'json+gzip' ? 'json.gz' : 'json';
  return `${prefix}${batch.stream}/${lsnKeyPart(batch.lsnFirst)}-${lsnKeyPart(batch.lsnLast)}-${encoded.sha256.slice(0, 16)}.${extension}`;
}

function messageBytes(message: PubSubMessage): number {
  let bytes = message.data.length + Buffer.byteLength(message.orderingKey);
  for (const [k, v] of Object.entries(message.attributes)) bytes += Buffer.byteLength(k) + Buffer.byteLength(v);
  return bytes;
}

function positiveInt(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new ValidationError(`${name} must be a positive integer, got ${value}`);
  return value;
}

export class BatchOutbox {
  private readonly opts: BatchOutboxOptions;
  private readonly log: Logger;
  private readonly frontier: PublishFrontier;
  private readonly maxInflight: number;
  private readonly maxBytes: number;
  private readonly backoff: BackoffPolicy;
  /** Aborts backoff sleeps and upload retries when the outbox stops. */
  private readonly life = new AbortController();

  /** Unacknowledged entries by outbox seq, in seq order (Map keeps insertion order). */
  private readonly entries = new Map<number, Entry>();
  private nextSeq = 0;
  private lastLsn: Lsn;
  private lastConfirmed: Lsn;
  /** The intake chain: enqueue() calls run one after the other, in call order. */
  private intake: Promise<void> = Promise.resolve();
  private intakeBusy = 0;

  /** Publish calls not settled yet. */
  private outstanding = 0;
  /** A retryable failure was seen; new entries wait for the re-publish. */
  private recovering = false;
  private recoveryScheduled = false;
  private recoveryAttempt = 0;
  private generation = 0;

  private fatal: Error | undefined;
  private stopped = false;
  private readonly waiters = new Set<() => void>();

  private readonly counters = {
    enqueuedBatches: 0,
    publishedBatches: 0,
    publishedRows: 0,
    publishedBytes: 0,
    claimCheckBatches: 0,
    claimCheckBytes: 0,
    retries: 0,
    republishedBatches: 0,
  };
  private lastError: OutboxStats['lastError'];

  constructor(opts: BatchOutboxOptions) {
    this.opts = opts;
    this.maxInflight = positiveInt('batching.maxInflightBatches', opts.batching.maxInflightBatches);
    this.maxBytes = positiveInt('batching.maxBufferedBytes', opts.batching.maxBufferedBytes);
    if (opts.claimCheckPrefix !== '' && !opts.claimCheckPrefix.endsWith('/')) {
      throw new ValidationError(`claimCheckPrefix must be empty or end in '/', got ${JSON.stringify(opts.claimCheckPrefix)}`);
    }
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF;
    this.frontier = new PublishFrontier(opts.startLsn);
    this.lastLsn = opts.startLsn;
    this.lastConfirmed = opts.startLsn;
    this.log = (opts.logger ?? createLogger({ component: 'batch-outbox' })).child({ stream: opts.stream });
  }

  /**
   * Accepts the next batch of the stream. Resolves once the batch is tracked
   * and handed to the publisher (not once it is acknowledged); waits while
   * flow control is full. Calls are processed in call order.
   * @throws the outbox's permanent error once it has stopped; ValidationError
   *   (which also stops it) for a batch that does not continue the chain.
   */
  enqueue(batch: ChangeBatch): Promise<void> {
    this.intakeBusy += 1;
    const run = this.intake.then(() => this.admit(batch));
    const done = run.finally(() => {
      this.intakeBusy -= 1;
      this.notify();
    });
    // The chain itself never rejects: each call reports its own outcome.
    this.intake = done.then(
      () => undefined,
      () => undefined,
    );
    return done;
  }

  /**
   * Resolves when every batch enqueued so far (and any enqueued meanwhile) is
   * acknowledged and confirmed. For shutdown: stop reading first.
   * @throws the permanent error if the outbox fails, AbortedError if `signal` aborts first.
   */
  async drain(signal?: AbortSignal): Promise<void> {
    await this.waitUntil(() => this.entries.size === 0 && this.intakeBusy === 0, signal);
  }

  /** Stops retrying and waiting; later enqueue() calls reject. Does not close the publisher. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.life.abort(new AbortedError('outbox stopped'));
    this.notify();
  }

  /** The permanent error that stopped the outbox, if any. */
  failure(): Error | undefined {
    return this.fatal;
  }

  stats(): OutboxStats {
    const oldest = this.entries.values().next();
    return {
      // Recovering until a re-published batch is acknowledged, not merely re-sent.
      state: this.fatal ? 'failed' : this.stopped ? 'stopped' : this.recovering || this.recoveryScheduled || this.recoveryAttempt > 0 ? 'recovering' : 'running',
      ...this.counters,
      inflightBatches: this.frontier.inflightCount(),
      inflightBytes: this.frontier.inflightBytes(),
      confirmableLsn: this.frontier.confirmableLsn(),
      oldestUnackedAgeMs: oldest.done ? undefined : Date.now() - oldest.value.enqueuedAt,
      lastError: this.lastError,
    };
  }

  // -------------------------------------------------------------------------
  // Intake

  private async admit(batch: ChangeBatch): Promise<void> {
    this.throwIfClosed();
    try {
      this.checkChain(batch);
    } catch (err) {
      throw this.fail(err);
    }

    let encoded: EncodedBatch;
    try {
      encoded = encodeBatch(batch, {
        compressAboveBytes: this.opts.batching.compressAboveBytes,
        claimCheckAboveBytes: this.opts.batching.claimCheckAboveBytes,
        ...(this.opts.gzipLevel !== undefined && { gzipLevel: this.opts.gzipLevel }),
      });
    } catch (err) {
      throw this.fail(err);
    }
    // Flow control counts what this batch holds in memory until it is acknowledged.
    const heldBytes = encoded.kind === 'inline' ? messageBytes(encoded.message) : encoded.payload.length;
    await this.waitUntil(
      () => this.frontier.inflightCount() === 0 || (this.frontier.inflightCount() < this.maxInflight && this.frontier.inflightBytes() + heldBytes <= this.maxBytes),
    );

    let message: PubSubMessage;
    if (encoded.kind === 'inline') {
      message = encoded.message;
    } else {
      message = await this.uploadClaimCheck(batch, encoded);
    }
    this.throwIfClosed();

    const bytes = messageBytes(message);
    const seq = this.nextSeq;
    try {
      this.frontier.track(seq, batch.lsnLast, bytes);
    } catch (err) {
      throw this.fail(err);
    }
    this.nextSeq += 1;
    this.lastLsn = batch.lsnLast;
    this.counters.enqueuedBatches += 1;
    const entry: Entry = {
      seq,
      batchSeq: batch.seq,
      lsnLast: batch.lsnLast,
      rows: batchRowCount(batch),
      message,
      bytes,
      enqueuedAt: Date.now(),
      sends: 0,
    };
    this.entries.set(seq, entry);
    // During a recovery the re-publish picks it up, in order.
    if (!this.recovering && !this.recoveryScheduled) this.send(entry);
  }

  private checkChain(batch: ChangeBatch): void {
    if (batch.stream !== this.opts.stream) {
      throw new ValidationError(`batch seq ${batch.seq} is for stream ${JSON.stringify(batch.stream)}, but this outbox publishes stream ${JSON.stringify(this.opts.stream)}`);
    }
    if (batch.lsnPrev !== this.lastLsn) {
      throw new ValidationError(
        `batch seq ${batch.seq} does not continue the chain: its lsnPrev is ${formatLsn(batch.lsnPrev)} but the previous batch ended at ${formatLsn(this.lastLsn)}`,
        {
          details: { batchSeq: batch.seq, lsnPrev: formatLsn(batch.lsnPrev), expected: formatLsn(this.lastLsn) },
          remedy: 'This is a bug in the agent (a batch was lost or reordered before publishing); nothing after it was published. Restart the agent: it resumes from the confirmed position.',
        },
      );
    }
  }

  private async uploadClaimCheck(batch: ChangeBatch, encoded: Extract<EncodedBatch, { kind: 'claim-check' }>): Promise<PubSubMessage> {
    const key = claimCheckKey(this.opts.claimCheckPrefix, batch, encoded);
    let uri: string;
    try {
      const stored = await retry(() => this.opts.objectStore.putIfAbsent(key, encoded.payload), {
        policy: this.backoff,
        signal: this.life.signal,
        onRetry: (err, attempt, delayMs) => {
          this.counters.retries += 1;
          this.recordError(err);
          this.log.warn('claim-check upload failed; retrying', { key, attempt, delayMs, err });
        },
      });
      uri = stored.uri;
      this.counters.claimCheckBatches += 1;
      this.counters.claimCheckBytes += encoded.payload.length;
      this.log.debug('claim check stored', { key, uri, bytes: encoded.payload.length, created: stored.created, batchSeq: batch.seq });
    } catch (err) {
      if (err instanceof AbortedError) throw this.fatal ?? new PermanentError('outbox stopped while uploading a claim check', { cause: err });
      throw this.fail(err);
    }
    try {
      return encoded.finish(uri);
    } catch (err) {
      throw this.fail(err);
    }
  }

  // -------------------------------------------------------------------------
  // Publishing

  private send(entry: Entry): void {
    const generation = this.generation;
    entry.sends += 1;
    if (entry.sends > 1) this.counters.republishedBatches += 1;
    this.outstanding += 1;
    // Through a promise: a publisher that throws synchronously is handled like one that rejects.
    Promise.resolve()
      .then(() => this.opts.publisher.publish(entry.message))
      .then(
        () => {
          this.outstanding -= 1;
          this.onAck(entry, generation);
        },
        (err: unknown) => {
          this.outstanding -= 1;
          this.onPublishError(entry, err);
        },
      )
      .catch((err: unknown) => {
        // A bug in the handlers above (or onConfirmable throwing): stop, loudly.
        this.fail(err);
      })
      .finally(() => this.maybeRecover());
  }

  private onAck(entry: Entry, generation: number): void {
    // After a stop the replication stream may be closed: confirm nothing more.
    if (this.fatal || this.stopped) return;
    if (!this.frontier.published(entry.seq)) return; // a duplicate ack
    this.entries.delete(entry.seq);
    this.counters.publishedBatches += 1;
    this.counters.publishedRows += entry.rows;
    this.counters.publishedBytes += entry.bytes;
    if (generation === this.generation) this.recoveryAttempt = 0;
    const lsn = this.frontier.confirmableLsn();
    if (lsn > this.lastConfirmed) {
      this.lastConfirmed = lsn;
      this.opts.onConfirmable(lsn);
    }
    this.notify();
  }

  private onPublishError(entry: Entry, err: unknown): void {
    if (this.fatal || this.stopped) return;
    this.recordError(err);
    if (!isRetryable(err)) {
      this.fail(err);
      return;
    }
    if (!this.recovering) {
      this.recovering = true;
      this.log.warn('publish failed; will resume the ordering key and publish again from the oldest unacknowledged batch', {
        batchSeq: entry.batchSeq,
        lsnLast: formatLsn(entry.lsnLast),
        oldestUnacked: this.oldestBatchSeq(),
        err,
      });
    }
  }

  /** Once every publish in flight has settled after a failure: back off, resume, re-publish in order. */
  private maybeRecover(): void {
    if (!this.recovering || this.recoveryScheduled || this.outstanding > 0 || this.fatal || this.stopped) return;
    this.recoveryScheduled = true;
    this.recoveryAttempt += 1;
    this.counters.retries += 1;
    const delayMs = backoffDelayMs(this.recoveryAttempt, this.backoff);
    void sleep(delayMs, this.life.signal).then(
      () => {
        this.recoveryScheduled = false;
        if (this.fatal || this.stopped) return;
        this.recovering = false;
        this.generation += 1;
        this.opts.publisher.resumeOrderingKey(this.opts.stream);
        const pending = [...this.entries.values()];
        this.log.info('re-publishing unacknowledged batches', {
          attempt: this.recoveryAttempt,
          delayMs,
          batches: pending.length,
          fromBatchSeq: pending[0]?.batchSeq,
        });
        for (const entry of pending) this.send(entry);
        this.notify();
      },
      () => {
        this.recoveryScheduled = false; // stopped meanwhile
      },
    );
    this.notify();
  }

  private oldestBatchSeq(): number | undefined {
    const first = this.entries.values().next();
    return first.done ? undefined : first.value.batchSeq;
  }

  // -------------------------------------------------------------------------
  // Failure, waiting

  private recordError(err: unknown): void {
    this.lastError = { message: describeError(err), retryable: isRetryable(err), at: new Date().toISOString() };
  }

  /** Stops the outbox for good on a permanent error; returns the error to throw. */
  private fail(err: unknown): Error {
    if (this.fatal) return this.fatal;
    const error =
      err instanceof PermanentError
        ? err
        : err instanceof RetryableError
          ? new PermanentError(`outbox stopped: ${err.message}`, { cause: err })
          : new PermanentError(`outbox stopped on an unexpected error: ${describeError(err)}`, { cause: err });
    this.fatal = error;
    this.recordError(error);
    this.log.error('outbox stopped on a permanent error; nothing more is published and nothing past the last acknowledged batch is confirmed', {
      err: error,
      confirmableLsn: formatLsn(this.frontier.confirmableLsn()),
      unacknowledged: this.entries.size,
    });
    this.life.abort(error);
    this.notify();
    try {
      this.opts.onFatal?.(error);
    } catch (hookErr) {
      this.log.error('onFatal hook threw', { err: hookErr });
    }
    return error;
  }

  private throwIfClosed(): void {
    if (this.fatal) throw this.fatal;
    if (this.stopped) throw new PermanentError('the outbox was stopped', { remedy: 'Create a new outbox (restart the agent).' });
  }

  private notify(): void {
    for (const wake of [...this.waiters]) wake();
  }

  /** Waits until `ready()` holds; rejects when the outbox stops or `signal` aborts. */
  private async waitUntil(ready: () => boolean, signal?: AbortSignal): Promise<void> {
    for (;;) {
      this.throwIfClosed();
      if (ready()) return;
      if (signal?.aborted) throw new AbortedError(signal.reason);
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.waiters.delete(wake);
          signal?.removeEventListener('abort', wake);
          resolve();
        };
        this.waiters.add(wake);
        signal?.addEventListener('abort', wake, { once: true });
      });
    }
  }
}
