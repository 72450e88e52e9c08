// Turns the typed pgoutput stream (agent/replication-stream.ts items) into
// ChangeBatch v1 objects. Pure: no pg, no SDK, no timers, no I/O; the clock,
// the writer epoch and the type-name lookup are injected.
//
//   const batcher = new ChangeBatcher({ stream, epoch, startLsn, maxRows, maxBytes, maxDelayMs, clock, typeName });
//   for await (const item of replication) {
//     let batches: ChangeBatch[];
//     try {
//       batches = batcher.push(item);
//     } catch (err) {
//       if (!(err instanceof UnknownTypeError)) throw err;
//       await typeCache.load(err.types);  // SELECT format_type(oid, typmod) …
//       batches = batcher.push(item);     // the SAME item again
//     }
//     publish(batches);
//   }
//   // and on a timer: publish(batcher.tick(now)); at shutdown: publish(batcher.flush())
//
// Rules (docs/design.md, core/change-batch.ts):
// - Whole transactions only, in commit order; a transaction joins a batch at
//   its Commit. A batch is cut when the next complete transaction would push
//   it over maxRows or maxBytes, as soon as it is full (rows ≥ maxRows or
//   bytes ≥ maxBytes: no further transaction with a row could fit, so waiting
//   only adds latency), when maxDelayMs passed since its first transaction
//   committed (by the injected clock, checked at each Commit and on tick), on
//   flush(), and before a heartbeat. A transaction larger than the limits is a
//   batch alone, never split (the codec sends it by claim check).
// - Chain: lsnPrev of a batch is lsnLast of the one before (startLsn for the
//   first); lsnFirst = first commitLsn; lsnLast = last endLsn. seq counts every
//   batch (heartbeats too).
// - Heartbeats: a non-transactional logical message with prefix
//   lifeboat-heartbeat at LSN L (content: JSON {sourceTime, sequences}, checked
//   with zod) first cuts the open batch, then becomes a 'heartbeat' batch with
//   lsnFirst = lsnLast = walLsn = L. Malformed content, a transactional
//   heartbeat, or a lifeboat* prefix other than lifeboat-heartbeat and
//   lifeboat-marker is a PermanentError;
//   messages of other tools (prefix not starting with "lifeboat") are counted
//   and ignored; a transaction left without changes by that is dropped and
//   counted (the contract forbids empty transactions). Type and Origin
//   messages are counted and ignored.
// - Markers: a TRANSACTIONAL logical message with prefix lifeboat-marker
//   (content: JSON {markerId, reason: takeover|drain|failback, requestedBy?},
//   checked with zod), alone in its transaction, becomes a 'marker' batch
//   standing for that transaction's end LSN (lsnFirst = lsnLast = endLsn):
//   a commit position, so the slot can be confirmed there and a restart
//   neither loses nor repeats it. It first cuts the open batch, so every
//   transaction that committed before the marker is in a batch before it.
//   The agent writes it during a graceful takeover (agent/agent.ts). A
//   non-transactional marker, one in a transaction that also changed rows,
//   two in one transaction, or malformed content is a PermanentError.
// - Replica identity: updates/deletes must match what the Relation message
//   announced (FULL: whole old row; default/index: key columns, key tuple only
//   when the key changed); one on a table with identity NOTHING (or without
//   key columns) is a PermanentError naming the table.
// - Re-sends: after a restart PostgreSQL may send again what ends at or before
//   the confirmed position. A transaction with endLsn ≤ startLsn and a
//   heartbeat with LSN ≤ startLsn are dropped and counted. Anything else that
//   goes backwards is a PermanentError: dropping it could lose data.
// - Type names: descriptors need format_type(oid, typmod), which only the
//   database knows. On a Relation message whose types the lookup does not
//   know, push() throws UnknownTypeError listing them BEFORE changing any
//   state, and remembers the item: the next push() must be that same item
//   (identity), otherwise it throws. So the item can be neither lost nor
//   applied twice.
// - Any other error while handling an item is permanent and sticks: later
//   pushes throw it again, so a caller that carried on could not silently
//   skip the item.
//   tick() and flush() still work: complete transactions are consistent.
// - Byte sizes are estimates of the wire JSON from text lengths (UTF-16 code
//   units, no escaping): cheap on the hot path, exact enough for ASCII data;
//   multi-byte text is underestimated up to 3x, which the codec's claim-check
//   path absorbs.

import { z } from 'zod';
import {
  CHANGE_BATCH_VERSION,
  MARKER_REASONS,
  STREAM_ID_PATTERN,
  heartbeatSchema,
  markerSchema,
  qualifiedName,
  type Change,
  type ChangeBatch,
  type Heartbeat,
  type Marker,
  type RelationDescriptor,
  type Transaction,
  type Tuple,
} from '../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import { formatLsn, isLsn, type Lsn } from '../core/lsn.ts';
import type {
  BeginMessage,
  CommitMessage,
  DeleteMessage,
  InsertMessage,
  LogicalMessage,
  RelationMessage,
  TruncateMessage,
  UpdateMessage,
} from './pgoutput-reader.ts';
import type { StreamedMessage } from './replication-stream.ts';

/** Logical-message prefix of the agent's heartbeats (pg_logical_emit_message(false, …)). */
export const HEARTBEAT_PREFIX = 'lifeboat-heartbeat';
/** Logical-message prefix of markers (pg_logical_emit_message(true, …), alone in a transaction). */
export const MARKER_PREFIX = 'lifeboat-marker';
/** Every prefix starting with this belongs to Lifeboat; others belong to other tools and are ignored. */
export const LIFEBOAT_PREFIX = 'lifeboat';

/** A type to format: `format_type(oid, typmod)`. */
export interface TypeRef {
  readonly oid: number;
  readonly typmod: number;
}

/** format_type(oid, typmod) from the agent's cache, or undefined when not cached yet. */
export type TypeNameLookup = (oid: number, typmod: number) => string | undefined;

/**
 * A Relation message names types the lookup does not know. Nothing changed in
 * the batcher: look the types up, then push the same item again.
 */
export class UnknownTypeError extends RetryableError {
  readonly types: readonly TypeRef[];
  constructor(relation: string, types: readonly TypeRef[]) {
    super(`relation ${relation} uses ${types.length} type${types.length === 1 ? '' : 's'} not in the type cache`, {
      remedy: 'Query format_type(oid, typmod) for the listed types, add them to the cache, then push the same item again.',
      details: { relation, types: types.map((t) => ({ oid: t.oid, typmod: t.typmod })) },
    });
    this.types = types;
  }
}

export interface ChangeBatcherOptions {
  /** Stream id (Pub/Sub ordering key). */
  readonly stream: string;
  /**
   * The writer epoch held now. Read at every Commit with changes, heartbeat,
   * tick and flush that may cut a batch, before any state changes.
   */
  readonly epoch: () => number;
  /** The slot's confirmed_flush_lsn, or the snapshot's consistent point. */
  readonly startLsn: Lsn;
  readonly maxRows: number;
  /** Estimated wire JSON bytes. */
  readonly maxBytes: number;
  readonly maxDelayMs: number;
  /** Milliseconds since the Unix epoch. */
  readonly clock: () => number;
  readonly typeName: TypeNameLookup;
  /** seq of the first batch (default 0). */
  readonly firstSeq?: number;
  readonly logger?: Logger;
}

export interface ChangeBatcherStats {
  /** Batches returned, of every kind. */
  readonly batches: number;
  readonly heartbeatBatches: number;
  readonly markerBatches: number;
  /** Transactions in returned batches. */
  readonly transactions: number;
  /** Inserts, updates and deletes in returned batches (truncates count 0, as batchRowCount). */
  readonly rows: number;
  /** Estimated wire JSON bytes of returned batches. */
  readonly bytes: number;
  /** Transactions re-sent after a restart (endLsn ≤ startLsn), dropped. */
  readonly droppedResentTransactions: number;
  /** Heartbeats re-sent after a restart (LSN ≤ startLsn), dropped. */
  readonly droppedResentHeartbeats: number;
  /** Transactions left without changes (they held only other tools' logical messages). */
  readonly droppedEmptyTransactions: number;
  /** Logical messages whose prefix does not start with "lifeboat" (other tools'). */
  readonly ignoredMessages: number;
  /** Type and Origin messages: informational here (types are formatted through the lookup). */
  readonly typeAndOriginMessages: number;
}

const optionsSchema = z.object({
  stream: z.string().regex(STREAM_ID_PATTERN, 'stream id must match [a-z0-9][a-z0-9_-]{0,62}'),
  startLsn: z.bigint().refine(isLsn, 'must be an LSN (a bigint in [0, 2^64))'),
  maxRows: z.int().min(1),
  maxBytes: z.int().min(1),
  maxDelayMs: z.int().min(0),
  firstSeq: z.int().min(0).optional(),
  epoch: z.custom<() => number>((v) => typeof v === 'function', 'must be a function returning the epoch'),
  clock: z.custom<() => number>((v) => typeof v === 'function', 'must be a function returning milliseconds'),
  typeName: z.custom<TypeNameLookup>((v) => typeof v === 'function', 'must be a function (oid, typmod) => type name'),
});

/** The JSON the agent writes as heartbeat content (walLsn is the message's own LSN). */
const heartbeatContentSchema = z.strictObject({
  sourceTime: heartbeatSchema.shape.sourceTime,
  sequences: heartbeatSchema.shape.sequences,
});

/** Marker reasons a logical message may carry: 'snapshot-complete' comes only from the snapshot copier, with its table list. */
export const MESSAGE_MARKER_REASONS = ['takeover', 'drain', 'failback'] as const satisfies readonly (typeof MARKER_REASONS)[number][];

/** The JSON of a lifeboat-marker message. */
export const markerContentSchema = z.strictObject({
  markerId: markerSchema.shape.markerId,
  reason: z.enum(MESSAGE_MARKER_REASONS, {
    error: (issue) => (issue.input === undefined ? undefined : `must be takeover, drain or failback, got ${JSON.stringify(issue.input)}`),
  }),
  requestedBy: markerSchema.shape.requestedBy,
});
export type MarkerContent = z.output<typeof markerContentSchema>;

/** The largest time a Date can hold (±100,000,000 days). */
const MAX_DATE_MS = 8.64e15;

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

// Wire JSON size estimate (see the header). Overheads approximate the
// punctuation and field names of toWireJson's output.
const BATCH_OVERHEAD_BYTES = 320;
const TX_OVERHEAD_BYTES = 130;
const CHANGE_OVERHEAD_BYTES = 32;
const TUPLE_FIELD_BYTES = 8;
const TRUNCATE_BYTES = 72;
const RELATION_OVERHEAD_BYTES = 90;
const COLUMN_OVERHEAD_BYTES = 64;
const HEARTBEAT_OVERHEAD_BYTES = 120;
const MARKER_OVERHEAD_BYTES = 100;
const SEQUENCE_OVERHEAD_BYTES = 60;

/** A relation as last described by pgoutput, plus where it sits in the pending transaction and the open batch. */
interface KnownRelation {
  readonly message: RelationMessage;
  readonly descriptor: RelationDescriptor;
  readonly name: string;
  readonly columnCount: number;
  readonly hasKey: boolean;
  readonly bytes: number;
  txToken: number;
  txIndex: number;
  batchToken: number;
  batchIndex: number;
}

interface PendingTx {
  readonly token: number;
  readonly xid: number;
  readonly commitLsn: Lsn;
  /** Ends at or before startLsn: a re-send, whose changes are not kept. */
  readonly resent: boolean;
  /** A lifeboat-marker message inside it (then it must hold no changes). */
  marker: MarkerContent | undefined;
  /** Changes with `rel`/`rels` indexing `relations` (remapped when the transaction joins a batch). */
  readonly changes: Change[];
  readonly relations: KnownRelation[];
  rows: number;
  bytes: number;
}

interface OpenBatch {
  readonly token: number;
  readonly relations: RelationDescriptor[];
  readonly transactions: Transaction[];
  rows: number;
  bytes: number;
  firstCommitAtMs: number;
}

export class ChangeBatcher {
  private readonly stream: string;
  private readonly epoch: () => number;
  private readonly startLsn: Lsn;
  private readonly maxRows: number;
  private readonly maxBytes: number;
  private readonly maxDelayMs: number;
  private readonly clock: () => number;
  private readonly typeName: TypeNameLookup;
  private readonly log: Logger;

  private readonly relations = new Map<number, KnownRelation>();
  private nextToken = 1;
  private pending: PendingTx | undefined;
  private open: OpenBatch;
  private seq: number;
  /** lsnLast of the last returned batch: the next batch's lsnPrev. */
  private chainLsn: Lsn;
  /** End of the last item accepted (transaction or heartbeat), to catch a stream going backwards. */
  private position: Lsn;
  private awaitingTypes: StreamedMessage | undefined;
  private failure: Error | undefined;
  private readonly loggedPrefixes = new Set<string>();

  private readonly counters = {
    batches: 0,
    heartbeatBatches: 0,
    markerBatches: 0,
    transactions: 0,
    rows: 0,
    bytes: 0,
    droppedResentTransactions: 0,
    droppedResentHeartbeats: 0,
    droppedEmptyTransactions: 0,
    ignoredMessages: 0,
    typeAndOriginMessages: 0,
  };

  constructor(opts: ChangeBatcherOptions) {
    const parsed = optionsSchema.safeParse(opts);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new ValidationError(`invalid change batcher options: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'unknown problem'}`);
    }
    this.stream = opts.stream;
    this.epoch = opts.epoch;
    this.startLsn = opts.startLsn;
    this.maxRows = opts.maxRows;
    this.maxBytes = opts.maxBytes;
    this.maxDelayMs = opts.maxDelayMs;
    this.clock = opts.clock;
    this.typeName = opts.typeName;
    this.seq = opts.firstSeq ?? 0;
    this.chainLsn = opts.startLsn;
    this.position = opts.startLsn;
    this.log = opts.logger ?? createLogger({ component: 'change-batcher', fields: { stream: opts.stream } });
    this.open = this.newOpenBatch();
  }

  /**
   * Feeds one item of the replication stream; returns the batches it
   * completed, in chain order (often none).
   * @throws UnknownTypeError (nothing changed: fill the type cache, push the same item again);
   *   PermanentError for input that cannot be batched correctly (then every later push throws it too).
   */
  push(item: StreamedMessage): ChangeBatch[] {
    if (this.failure !== undefined) throw this.failure;
    if (this.awaitingTypes !== undefined && item !== this.awaitingTypes) {
      throw new PermanentError('push() got a different item while a Relation message was waiting for its type names', {
        remedy: 'After an UnknownTypeError, fill the type cache and push the very same item again; skipping it would lose the relation.',
        details: { waitingLsn: formatLsn(this.awaitingTypes.lsn), gotLsn: formatLsn(item.lsn) },
      });
    }
    try {
      const out = this.handle(item);
      this.awaitingTypes = undefined;
      return out;
    } catch (err) {
      if (err instanceof UnknownTypeError) {
        this.awaitingTypes = item;
      } else {
        this.failure = err instanceof Error ? err : new PermanentError(String(err));
      }
      throw err;
    }
  }

  /** Cuts the open batch if its first transaction committed maxDelayMs or more ago. */
  tick(nowMs: number = this.now()): ChangeBatch[] {
    if (!Number.isFinite(nowMs) || Math.abs(nowMs) > MAX_DATE_MS) throw new ValidationError(`tick(): ${String(nowMs)} is not a time in milliseconds`);
    if (this.open.transactions.length === 0 || nowMs - this.open.firstCommitAtMs < this.maxDelayMs) return [];
    return [this.cut(this.readEpoch(), new Date(nowMs).toISOString())];
  }

  /** Cuts the open batch now. An unfinished transaction stays pending. */
  flush(): ChangeBatch[] {
    return this.open.transactions.length > 0 ? [this.cut()] : [];
  }

  /** Milliseconds since the open batch's first transaction committed; 0 when no batch is open. */
  openBatchAgeMs(nowMs: number = this.clock()): number {
    return this.open.transactions.length > 0 ? Math.max(0, nowMs - this.open.firstCommitAtMs) : 0;
  }

  /** Milliseconds until tick() would cut the open batch; undefined when no batch is open. */
  msUntilDue(nowMs: number = this.clock()): number | undefined {
    if (this.open.transactions.length === 0) return undefined;
    return Math.max(0, this.open.firstCommitAtMs + this.maxDelayMs - nowMs);
  }

  /** Estimated bytes held: the open batch plus the unfinished transaction. */
  bufferedBytes(): number {
    return (this.open.transactions.length > 0 ? this.open.bytes : 0) + (this.pending?.bytes ?? 0);
  }

  /** lsnLast of the last returned batch (startLsn before the first). */
  lastBatchLsn(): Lsn {
    return this.chainLsn;
  }

  /** True between a Begin and its Commit. */
  inTransaction(): boolean {
    return this.pending !== undefined;
  }

  stats(): ChangeBatcherStats {
    return { ...this.counters };
  }

  // -------------------------------------------------------------------------
  // Messages

  private handle(item: StreamedMessage): ChangeBatch[] {
    const message = item.message;
    switch (message.tag) {
      case 'begin':
        this.onBegin(message);
        return [];
      case 'commit':
        return this.onCommit(message);
      case 'relation':
        this.onRelation(message);
        return [];
      case 'insert':
        this.onInsert(message);
        return [];
      case 'update':
        this.onUpdate(message);
        return [];
      case 'delete':
        this.onDelete(message);
        return [];
      case 'truncate':
        this.onTruncate(message);
        return [];
      case 'message':
        return this.onLogicalMessage(message);
      case 'type':
      case 'origin':
        this.counters.typeAndOriginMessages++;
        return [];
    }
  }

  private onBegin(message: BeginMessage): void {
    if (this.pending !== undefined) {
      throw new PermanentError(`Begin of transaction ${message.xid} while transaction ${this.pending.xid} is still open`, {
        details: { xid: message.xid, openXid: this.pending.xid, finalLsn: formatLsn(message.finalLsn) },
      });
    }
    // commitLsn < endLsn, so a re-send (endLsn ≤ startLsn) always starts before startLsn.
    this.pending = {
      token: this.nextToken++,
      xid: message.xid,
      commitLsn: message.finalLsn,
      resent: message.finalLsn < this.startLsn,
      marker: undefined,
      changes: [],
      relations: [],
      rows: 0,
      bytes: TX_OVERHEAD_BYTES,
    };
  }

  private onCommit(message: CommitMessage): ChangeBatch[] {
    const tx = this.pending;
    if (tx === undefined) {
      throw new PermanentError(`Commit at ${formatLsn(message.commitLsn)} without a Begin`, { details: { commitLsn: formatLsn(message.commitLsn) } });
    }
    const details = { xid: tx.xid, commitLsn: formatLsn(message.commitLsn), endLsn: formatLsn(message.endLsn) };
    if (message.commitLsn !== tx.commitLsn) {
      throw new PermanentError(`Commit LSN ${formatLsn(message.commitLsn)} of transaction ${tx.xid} differs from its Begin's final LSN ${formatLsn(tx.commitLsn)}`, {
        details,
      });
    }
    if (message.endLsn <= message.commitLsn) {
      throw new PermanentError(`transaction ${tx.xid} ends at ${formatLsn(message.endLsn)}, not after its commit LSN ${formatLsn(message.commitLsn)}`, { details });
    }
    if (message.endLsn <= this.startLsn) {
      this.pending = undefined;
      this.counters.droppedResentTransactions++;
      const fields = { ...details, startLsn: formatLsn(this.startLsn) };
      if (this.counters.droppedResentTransactions === 1) this.log.info('dropping transactions re-sent at or before the start position', fields);
      else this.log.debug('dropped a re-sent transaction', fields);
      return [];
    }
    if (tx.resent || message.commitLsn < this.position) {
      throw new PermanentError(
        `transaction ${tx.xid} (commit ${formatLsn(message.commitLsn)}, end ${formatLsn(message.endLsn)}) starts before position ${formatLsn(this.position)} but ends after it`,
        {
          remedy: 'The start LSN is not a transaction boundary, or the stream went backwards; restart from the slot\'s confirmed_flush_lsn.',
          details: { ...details, position: formatLsn(this.position), startLsn: formatLsn(this.startLsn) },
        },
      );
    }
    if (tx.marker !== undefined) return this.onMarkerCommit(tx, tx.marker, message, details);
    if (tx.changes.length === 0) {
      this.pending = undefined;
      this.position = message.endLsn;
      this.counters.droppedEmptyTransactions++;
      return [];
    }
    // Read before any state changes, so a failing epoch source leaves the batcher as it was.
    const epoch = this.readEpoch();
    const now = this.now();
    this.pending = undefined;
    this.position = message.endLsn;

    const out: ChangeBatch[] = [];
    const open = this.open;
    if (open.transactions.length > 0 && (open.rows + tx.rows > this.maxRows || open.bytes + tx.bytes + this.newRelationBytes(tx) > this.maxBytes)) {
      out.push(this.cut(epoch, new Date(now).toISOString()));
    }
    this.append(tx, message, now);
    if (this.open.rows >= this.maxRows || this.open.bytes >= this.maxBytes || now - this.open.firstCommitAtMs >= this.maxDelayMs) {
      out.push(this.cut(epoch, new Date(now).toISOString()));
    }
    return out;
  }

  private onRelation(message: RelationMessage): void {
    const known = this.relations.get(message.oid);
    if (known !== undefined && sameRelationMessage(known.message, message)) return; // re-sent after a cache invalidation
    const name = `${message.namespace}.${message.name}`;
    const columns: RelationDescriptor['columns'] = new Array(message.columns.length);
    let missing: TypeRef[] | undefined;
    let bytes = RELATION_OVERHEAD_BYTES + message.namespace.length + message.name.length;
    message.columns.forEach((column, i) => {
      const type = this.typeName(column.typeOid, column.typmod);
      if (type === undefined) {
        missing ??= [];
        if (!missing.some((t) => t.oid === column.typeOid && t.typmod === column.typmod)) missing.push({ oid: column.typeOid, typmod: column.typmod });
        return;
      }
      if (type.length === 0) {
        throw new PermanentError(`the type lookup returned an empty name for type ${column.typeOid} (typmod ${column.typmod}) of ${name}.${column.name}`);
      }
      columns[i] = { name: column.name, type, typeOid: column.typeOid, typmod: column.typmod, key: column.isKey };
      bytes += COLUMN_OVERHEAD_BYTES + column.name.length + type.length;
    });
    if (missing !== undefined) throw new UnknownTypeError(name, missing);
    const descriptor: RelationDescriptor = {
      oid: message.oid,
      schema: message.namespace,
      name: message.name,
      replicaIdentity: message.replicaIdentity,
      columns,
    };
    this.relations.set(message.oid, {
      message,
      descriptor,
      name: qualifiedName(descriptor),
      columnCount: columns.length,
      hasKey: message.columns.some((c) => c.isKey),
      bytes,
      txToken: 0,
      txIndex: -1,
      batchToken: 0,
      batchIndex: -1,
    });
  }

  private onInsert(message: InsertMessage): void {
    const tx = this.inTx('insert');
    if (tx.resent) return;
    const relation = this.relationOf(message.relationOid, 'insert');
    this.checkTuple(relation, message.new, 'insert', 'new');
    const rel = this.txRelIndex(tx, relation);
    tx.changes.push({ op: 'insert', rel, new: message.new });
    tx.rows++;
    tx.bytes += CHANGE_OVERHEAD_BYTES + tupleBytes(message.new);
  }

  private onUpdate(message: UpdateMessage): void {
    const tx = this.inTx('update');
    if (tx.resent) return;
    const relation = this.relationOf(message.relationOid, 'update');
    this.checkIdentity(relation, 'update', message.key, message.old);
    this.checkTuple(relation, message.new, 'update', 'new');
    const rel = this.txRelIndex(tx, relation);
    let bytes = CHANGE_OVERHEAD_BYTES + tupleBytes(message.new);
    // checkIdentity allows at most one of key/old.
    if (message.key !== undefined) {
      tx.changes.push({ op: 'update', rel, new: message.new, key: message.key });
      bytes += TUPLE_FIELD_BYTES + tupleBytes(message.key);
    } else if (message.old !== undefined) {
      tx.changes.push({ op: 'update', rel, new: message.new, old: message.old });
      bytes += TUPLE_FIELD_BYTES + tupleBytes(message.old);
    } else {
      tx.changes.push({ op: 'update', rel, new: message.new });
    }
    tx.rows++;
    tx.bytes += bytes;
  }

  private onDelete(message: DeleteMessage): void {
    const tx = this.inTx('delete');
    if (tx.resent) return;
    const relation = this.relationOf(message.relationOid, 'delete');
    this.checkIdentity(relation, 'delete', message.key, message.old);
    const rel = this.txRelIndex(tx, relation);
    if (message.key !== undefined) {
      tx.changes.push({ op: 'delete', rel, key: message.key });
      tx.bytes += CHANGE_OVERHEAD_BYTES + tupleBytes(message.key);
    } else {
      // checkIdentity made sure exactly one of key/old is present.
      tx.changes.push({ op: 'delete', rel, old: message.old! });
      tx.bytes += CHANGE_OVERHEAD_BYTES + tupleBytes(message.old!);
    }
    tx.rows++;
  }

  private onTruncate(message: TruncateMessage): void {
    const tx = this.inTx('truncate');
    if (tx.resent) return;
    const known = message.relationOids.map((oid) => this.relationOf(oid, 'truncate'));
    if (known.length === 0) throw new PermanentError('a Truncate message lists no relations');
    const rels: number[] = [];
    for (const relation of known) {
      const index = this.txRelIndex(tx, relation);
      // Listing a table twice says nothing more, and the contract forbids it.
      if (!rels.includes(index)) rels.push(index);
    }
    tx.changes.push({ op: 'truncate', rels, cascade: message.cascade, restartIdentity: message.restartIdentity });
    tx.bytes += TRUNCATE_BYTES + rels.length * 4;
  }

  private onLogicalMessage(message: LogicalMessage): ChangeBatch[] {
    if (!message.prefix.startsWith(LIFEBOAT_PREFIX)) {
      this.counters.ignoredMessages++;
      if (this.loggedPrefixes.size < 100 && !this.loggedPrefixes.has(message.prefix)) {
        this.loggedPrefixes.add(message.prefix);
        this.log.info('ignoring logical messages of another tool', { prefix: message.prefix, lsn: formatLsn(message.lsn) });
      }
      return [];
    }
    const details = { prefix: message.prefix, lsn: formatLsn(message.lsn), transactional: message.transactional };
    if (message.prefix === MARKER_PREFIX) {
      this.onMarkerMessage(message, details);
      return [];
    }
    if (message.prefix !== HEARTBEAT_PREFIX) {
      throw new PermanentError(`unknown Lifeboat logical message prefix ${JSON.stringify(message.prefix)} at ${formatLsn(message.lsn)}`, {
        remedy: `Only ${HEARTBEAT_PREFIX} and ${MARKER_PREFIX} are understood; an agent of a newer release may have written it. Run one release on both sides.`,
        details,
      });
    }
    if (message.transactional) {
      throw new PermanentError(`a transactional ${HEARTBEAT_PREFIX} message at ${formatLsn(message.lsn)}: heartbeats must be non-transactional`, {
        remedy: `Emit heartbeats with pg_logical_emit_message(false, '${HEARTBEAT_PREFIX}', …).`,
        details,
      });
    }
    if (this.pending !== undefined) {
      // pgoutput without streaming sends a transaction only whole, at its commit.
      throw new PermanentError(`a ${HEARTBEAT_PREFIX} message arrived inside transaction ${this.pending.xid}`, { details });
    }
    const content = parseHeartbeatContent(message);
    if (message.lsn <= this.startLsn) {
      this.counters.droppedResentHeartbeats++;
      return [];
    }
    if (message.lsn <= this.position) {
      throw new PermanentError(`heartbeat at ${formatLsn(message.lsn)} is not after position ${formatLsn(this.position)}: the stream went backwards`, {
        details: { ...details, position: formatLsn(this.position) },
      });
    }
    const epoch = this.readEpoch();
    const createdAt = new Date(this.now()).toISOString();
    const out: ChangeBatch[] = [];
    if (this.open.transactions.length > 0) out.push(this.cut(epoch, createdAt));
    this.position = message.lsn;
    out.push(this.heartbeatBatch(message.lsn, content, epoch, createdAt));
    return out;
  }

  /** A lifeboat-marker inside its transaction: checked and kept until the Commit. */
  private onMarkerMessage(message: LogicalMessage, details: Record<string, unknown>): void {
    if (!message.transactional) {
      throw new PermanentError(`a non-transactional ${MARKER_PREFIX} message at ${formatLsn(message.lsn)}: markers must be transactional`, {
        remedy: `Emit markers with pg_logical_emit_message(true, '${MARKER_PREFIX}', …) in a transaction of their own: the marker then stands for that transaction's commit.`,
        details,
      });
    }
    const tx = this.pending;
    if (tx === undefined) {
      throw new PermanentError(`a transactional ${MARKER_PREFIX} message at ${formatLsn(message.lsn)} arrived outside a transaction`, { details });
    }
    const content = parseMarkerContent(message);
    if (tx.marker !== undefined) {
      throw new PermanentError(`transaction ${tx.xid} holds two ${MARKER_PREFIX} messages (${tx.marker.markerId} and ${content.markerId})`, {
        remedy: 'Write one marker per transaction.',
        details: { ...details, xid: tx.xid },
      });
    }
    tx.marker = content;
  }

  /** The Commit of a marker's transaction: cut the open batch, then the marker batch at endLsn. */
  private onMarkerCommit(tx: PendingTx, marker: MarkerContent, commit: CommitMessage, details: Record<string, unknown>): ChangeBatch[] {
    if (tx.changes.length > 0) {
      throw new PermanentError(
        `transaction ${tx.xid} holds ${MARKER_PREFIX} ${marker.markerId} and ${tx.changes.length} change${tx.changes.length === 1 ? '' : 's'}: a marker must be alone in its transaction`,
        {
          remedy: `Only the Lifeboat agent writes ${MARKER_PREFIX} messages, each in a transaction of its own. A marker and changes share one end LSN, so they cannot be two batches of the chain; check which program wrote this one.`,
          details: { ...details, markerId: marker.markerId },
        },
      );
    }
    const epoch = this.readEpoch();
    const createdAt = new Date(this.now()).toISOString();
    this.pending = undefined;
    this.position = commit.endLsn;
    const out: ChangeBatch[] = [];
    if (this.open.transactions.length > 0) out.push(this.cut(epoch, createdAt));
    out.push(this.markerBatch(commit.endLsn, marker, epoch, createdAt));
    return out;
  }

  // -------------------------------------------------------------------------
  // Building

  private inTx(op: string): PendingTx {
    if (this.pending === undefined) throw new PermanentError(`${op} outside a transaction (no Begin before it)`);
    return this.pending;
  }

  private relationOf(oid: number, op: string): KnownRelation {
    const relation = this.relations.get(oid);
    if (relation === undefined) {
      throw new PermanentError(`${op} for relation oid ${oid} before any Relation message described it`, { details: { oid } });
    }
    return relation;
  }

  private checkTuple(relation: KnownRelation, values: Tuple, op: string, field: string): void {
    if (values.length !== relation.columnCount) {
      throw new PermanentError(`${op} on ${relation.name}: ${field} tuple has ${values.length} values but the relation has ${relation.columnCount} columns`, {
        details: { relation: relation.name, oid: relation.descriptor.oid },
      });
    }
  }

  /** Updates and deletes must match the replica identity the Relation message announced. */
  private checkIdentity(relation: KnownRelation, op: 'update' | 'delete', key: Tuple | undefined, old: Tuple | undefined): void {
    const identity = relation.descriptor.replicaIdentity;
    const details = { relation: relation.name, oid: relation.descriptor.oid, replicaIdentity: identity };
    const remedy = `Give ${relation.name} a primary key, or set REPLICA IDENTITY FULL or USING INDEX.`;
    if (identity === 'nothing') {
      throw new PermanentError(`${op} on ${relation.name}, which has REPLICA IDENTITY NOTHING: its rows cannot be located on the target`, { remedy, details });
    }
    if (identity === 'full') {
      if (old === undefined || key !== undefined) {
        throw new PermanentError(`${op} on ${relation.name} (REPLICA IDENTITY FULL) does not carry the whole old row`, { details });
      }
      this.checkTuple(relation, old, op, 'old');
      return;
    }
    if (!relation.hasKey) {
      throw new PermanentError(`${op} on ${relation.name}, which has no replica identity key columns: its rows cannot be located on the target`, { remedy, details });
    }
    if (old !== undefined) {
      throw new PermanentError(`${op} on ${relation.name} carries a whole old row, but its replica identity is ${identity}, not FULL`, { details });
    }
    if (op === 'delete' && key === undefined) {
      throw new PermanentError(`delete on ${relation.name} carries no key`, { details });
    }
    if (key !== undefined) this.checkTuple(relation, key, op, 'key');
  }

  private txRelIndex(tx: PendingTx, relation: KnownRelation): number {
    if (relation.txToken === tx.token) return relation.txIndex;
    relation.txToken = tx.token;
    relation.txIndex = tx.relations.length;
    tx.relations.push(relation);
    return relation.txIndex;
  }

  private newRelationBytes(tx: PendingTx): number {
    let bytes = 0;
    for (const relation of tx.relations) if (relation.batchToken !== this.open.token) bytes += relation.bytes;
    return bytes;
  }

  /** Moves a committed transaction into the open batch, remapping its relation indices. */
  private append(tx: PendingTx, commit: CommitMessage, nowMs: number): void {
    const open = this.open;
    if (open.transactions.length === 0) open.firstCommitAtMs = nowMs;
    const map: number[] = new Array(tx.relations.length);
    let identity = true;
    tx.relations.forEach((relation, i) => {
      if (relation.batchToken !== open.token) {
        relation.batchToken = open.token;
        relation.batchIndex = open.relations.length;
        open.relations.push(relation.descriptor);
        open.bytes += relation.bytes;
      }
      map[i] = relation.batchIndex;
      if (relation.batchIndex !== i) identity = false;
    });
    if (!identity) {
      for (const change of tx.changes) {
        if (change.op === 'truncate') change.rels = change.rels.map((i) => map[i]!);
        else change.rel = map[change.rel]!;
      }
    }
    open.transactions.push({ xid: tx.xid, commitLsn: tx.commitLsn, endLsn: commit.endLsn, commitTime: commit.commitTime, changes: tx.changes });
    open.rows += tx.rows;
    open.bytes += tx.bytes;
  }

  /** The injected clock, checked so that building createdAt cannot fail halfway through a cut. */
  private now(): number {
    const ms = this.clock();
    if (!Number.isFinite(ms) || Math.abs(ms) > MAX_DATE_MS) throw new PermanentError(`the clock returned ${String(ms)}, not a time in milliseconds`);
    return ms;
  }

  private readEpoch(): number {
    const epoch = this.epoch();
    if (!Number.isSafeInteger(epoch) || epoch < 0) {
      throw new PermanentError(`the epoch source returned ${String(epoch)}, not an integer ≥ 0`);
    }
    return epoch;
  }

  /** Returns the open batch (which must have a transaction) and opens a new one. */
  private cut(epoch: number = this.readEpoch(), createdAt: string = new Date(this.now()).toISOString()): ChangeBatch {
    const open = this.open;
    const first = open.transactions[0]!;
    const last = open.transactions[open.transactions.length - 1]!;
    const batch: ChangeBatch = {
      v: CHANGE_BATCH_VERSION,
      kind: 'changes',
      stream: this.stream,
      epoch,
      seq: this.seq++,
      lsnPrev: this.chainLsn,
      lsnFirst: first.commitLsn,
      lsnLast: last.endLsn,
      createdAt,
      relations: open.relations,
      transactions: open.transactions,
    };
    this.chainLsn = last.endLsn;
    this.counters.batches++;
    this.counters.transactions += open.transactions.length;
    this.counters.rows += open.rows;
    this.counters.bytes += open.bytes;
    this.open = this.newOpenBatch();
    return batch;
  }

  /** A heartbeat or marker: a batch that stands for one WAL position and carries no transactions. */
  private positionBatch(lsn: Lsn, epoch: number, createdAt: string, payload: Pick<ChangeBatch, 'kind' | 'heartbeat' | 'marker'>, bytes: number): ChangeBatch {
    const batch: ChangeBatch = {
      v: CHANGE_BATCH_VERSION,
      stream: this.stream,
      epoch,
      seq: this.seq++,
      lsnPrev: this.chainLsn,
      lsnFirst: lsn,
      lsnLast: lsn,
      createdAt,
      relations: [],
      transactions: [],
      ...payload,
    };
    this.chainLsn = lsn;
    this.counters.batches++;
    this.counters.bytes += bytes;
    return batch;
  }

  private heartbeatBatch(lsn: Lsn, content: z.output<typeof heartbeatContentSchema>, epoch: number, createdAt: string): ChangeBatch {
    const heartbeat: Heartbeat = { sourceTime: content.sourceTime, walLsn: lsn, sequences: content.sequences };
    let bytes = BATCH_OVERHEAD_BYTES + HEARTBEAT_OVERHEAD_BYTES + content.sourceTime.length;
    for (const s of content.sequences) bytes += SEQUENCE_OVERHEAD_BYTES + s.schema.length + s.name.length + s.lastValue.length;
    this.counters.heartbeatBatches++;
    return this.positionBatch(lsn, epoch, createdAt, { kind: 'heartbeat', heartbeat }, bytes);
  }

  private markerBatch(lsn: Lsn, content: MarkerContent, epoch: number, createdAt: string): ChangeBatch {
    const marker: Marker = {
      markerId: content.markerId,
      reason: content.reason,
      ...(content.requestedBy !== undefined && { requestedBy: content.requestedBy }),
    };
    this.counters.markerBatches++;
    const bytes = BATCH_OVERHEAD_BYTES + MARKER_OVERHEAD_BYTES + content.markerId.length + (content.requestedBy?.length ?? 0);
    return this.positionBatch(lsn, epoch, createdAt, { kind: 'marker', marker }, bytes);
  }

  private newOpenBatch(): OpenBatch {
    return { token: this.nextToken++, relations: [], transactions: [], rows: 0, bytes: BATCH_OVERHEAD_BYTES, firstCommitAtMs: 0 };
  }
}

/** Estimated JSON bytes of a tuple: quotes and commas around each value. */
function tupleBytes(values: Tuple): number {
  let bytes = 2 + values.length;
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    bytes += typeof value === 'string' ? value.length + 2 : value === null ? 4 : 1;
  }
  return bytes;
}

function sameRelationMessage(a: RelationMessage, b: RelationMessage): boolean {
  if (a.namespace !== b.namespace || a.name !== b.name || a.replicaIdentity !== b.replicaIdentity || a.columns.length !== b.columns.length) return false;
  for (let i = 0; i < a.columns.length; i++) {
    const x = a.columns[i]!;
    const y = b.columns[i]!;
    if (x.name !== y.name || x.typeOid !== y.typeOid || x.typmod !== y.typmod || x.isKey !== y.isKey) return false;
  }
  return true;
}

/** JSON content of one of our own logical messages, checked by `schema`; anything else is a PermanentError. */
function parseOwnMessage<T extends z.ZodType>(message: LogicalMessage, prefix: string, what: string, schema: T): z.output<T> {
  const fail = (problem: string, cause?: unknown): PermanentError =>
    new PermanentError(`malformed ${prefix} message at ${formatLsn(message.lsn)}: ${problem}`, {
      remedy: `${what} come only from the Lifeboat agent; check that no other program writes this prefix, and that agent and batcher are one release.`,
      details: { lsn: formatLsn(message.lsn), bytes: message.content.length },
      cause,
    });
  let json: unknown;
  try {
    json = JSON.parse(strictUtf8.decode(message.content));
  } catch (err) {
    throw fail(`content is not UTF-8 JSON (${(err as Error).message})`, err);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw fail(`${issue?.path.join('.') || '(top level)'}: ${issue?.message ?? 'unknown problem'}`);
  }
  return parsed.data;
}

const parseMarkerContent = (message: LogicalMessage): MarkerContent => parseOwnMessage(message, MARKER_PREFIX, 'Markers', markerContentSchema);
const parseHeartbeatContent = (message: LogicalMessage): z.output<typeof heartbeatContentSchema> =>
  parseOwnMessage(message, HEARTBEAT_PREFIX, 'Heartbeats', heartbeatContentSchema);
