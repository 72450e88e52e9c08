// ChangeBatch v1: the wire contract between the local agent (which reads
// pgoutput) and the apply function (which writes Cloud SQL).
//
// A batch is one JSON object. It carries whole source transactions in commit
// order, plus every relation descriptor it needs, so the applier is stateless:
// it never has to remember a relation message from an earlier batch.
//
//   v            1 (this file). v1 is closed: unknown fields are rejected,
//                because an applier that skipped a field it did not understand
//                could apply a batch wrongly. Any addition is a new version.
//   kind         'changes' | 'snapshot' | 'heartbeat' | 'marker'
//   stream       stream id = Pub/Sub ordering key, /^[a-z0-9][a-z0-9_-]{0,62}$/
//   epoch        writer epoch (fencing token) the agent held, integer ≥ 0
//   seq          batch counter for humans (per agent run), integer ≥ 0
//   lsnPrev      end LSN of whatever came right before this batch in the
//                stream: the chain link the applier checks for gaps/duplicates
//   lsnFirst     commit LSN of the first transaction (= lsnLast when the batch
//                has no transactions)
//   lsnLast      end LSN of the last transaction, or the position a
//                heartbeat/marker/snapshot chunk stands for
//   createdAt    ISO-8601 with offset, agent clock, informational only
//   relations    RelationDescriptor[]; changes refer to them by index (`rel`).
//                The same table may appear twice if its shape changed inside
//                the batch (ALTER TABLE between two transactions): each change
//                points at the descriptor it was written under.
//   transactions Transaction[]: non-empty for 'changes', empty otherwise
//   snapshot | heartbeat | marker: the payload of that kind, absent otherwise
//
// The initial copy: 'snapshot' batches carry the rows of one table each, in
// chunks, all standing for the slot's consistent point (lsnPrev = lsnFirst =
// lsnLast = consistentLsn). After the last table the agent sends a 'marker'
// with reason 'snapshot-complete' whose `snapshot` field lists every table
// with its chunk and row counts, so the applier can verify that every chunk of
// that snapshotId arrived before it starts the change stream at
// consistentLsn. A newer snapshotId replaces an older, incomplete one (an
// interrupted copy is restarted from scratch; see agent/agent-state.ts).
// ('snapshot-complete' and marker.snapshot were added before v1 shipped.)
//
// Tuples are arrays aligned with the relation's columns. A value is the
// PostgreSQL text output exactly as the server printed it (a string), null for
// SQL NULL, or UNCHANGED_TOAST for an unchanged out-of-line TOAST value in an
// UPDATE (the applier must leave that column out of its SET list). On the
// wire UNCHANGED_TOAST is the JSON number 0: compact, and unambiguous because
// real values are always strings. Any other number is rejected.
//
// In memory LSNs are bigint (see lsn.ts); on the wire they are text. Use
// `toWireJson` to get the JSON-able form and `parseChangeBatch` to get back.
//
// Rules checked beyond the shape (decisions recorded here):
//   - the payload matching `kind` is present and the others absent;
//     'changes' has ≥ 1 transaction, the other kinds none.
//   - lsnPrev ≤ lsnFirst ≤ lsnLast; lsnFirst = lsnLast for non-'changes' kinds.
//   - marker.snapshot is present exactly when marker.reason is
//     'snapshot-complete'; its consistentLsn equals the batch's lsnLast, it
//     lists each table once, and every table has ≥ 1 chunk (an empty table
//     still sends one empty last chunk).
//   - transactions: each has ≥ 1 change (pgoutput skips empty transactions;
//     a position-only advance is a heartbeat); commitLsn < endLsn; the first
//     commitLsn = lsnFirst; the last endLsn = lsnLast; next.commitLsn ≥
//     prev.endLsn (the next commit record starts at or after the end of the
//     previous one).
//   - commitTime is UTC ISO-8601 with exactly six fractional digits
//     (`2026-11-23T13:31:02.123456Z`): PostgreSQL commit timestamps have
//     microsecond precision and this form is both sortable and accepted by
//     PostgreSQL as timestamptz input. See `formatIsoMicros`.
//   - `rel` and truncate `rels` indices are in range; a truncate lists each
//     relation once; column names are unique within a relation.
//   - every tuple has exactly one value per column.
//   - UNCHANGED_TOAST appears only in the `new` tuple of an update (inserts
//     carry complete rows, and PostgreSQL flattens TOAST in old/key tuples).
//   - strings never contain U+0000 (PostgreSQL text cannot hold it).
//   - updates and deletes follow the relation's replica identity, as pgoutput
//     sends them:
//       'nothing'          no updates/deletes at all (the source refuses them)
//       'full'             update: `old` required, no `key`; delete: `old`
//       'default'|'index'  the relation has ≥ 1 key column; no `old`;
//                          update: `key` only when the key changed;
//                          delete: `key`.
//     A key tuple has a string in every key column and null elsewhere. For
//     default/index identity the row locator (the key tuple, else the key
//     columns of `new`) must be strings: neither null nor UNCHANGED_TOAST,
//     otherwise the applier could not find the row. This also rules out an
//     all-unchanged `new` for those identities. Under 'full' an all-unchanged
//     `new` is allowed: PostgreSQL can produce it (UPDATE t SET a = a where
//     every column is out-of-line TOAST) and applying it is a no-op.

import { z } from 'zod';
import { ValidationError } from './errors.ts';
import { formatLsn, lsnText } from './lsn.ts';

export const CHANGE_BATCH_VERSION = 1;

/**
 * Marks an unchanged out-of-line TOAST value in an update's new tuple. A
 * registered symbol: distinct from every string and from null, the same
 * value even if this module is loaded twice, and it fails loudly when
 * stringified by accident (`${v}` throws). Never JSON.stringify a tuple
 * directly (a symbol in an array becomes null): use `toWireJson`.
 */
export const UNCHANGED_TOAST: unique symbol = Symbol.for('lifeboat.unchanged-toast');
export type UnchangedToast = typeof UNCHANGED_TOAST;

/** PostgreSQL text output, SQL NULL, or an unchanged TOAST value. */
export type TupleValue = string | null | UnchangedToast;
/** One row, aligned with its relation's columns. */
export type Tuple = TupleValue[];

/** A tuple value as JSON: UNCHANGED_TOAST is the number 0. */
export type WireTupleValue = string | null | 0;

export function isUnchangedToast(value: unknown): value is UnchangedToast {
  return value === UNCHANGED_TOAST;
}

export const BATCH_KINDS = ['changes', 'snapshot', 'heartbeat', 'marker'] as const;
export type BatchKind = (typeof BATCH_KINDS)[number];

export const STREAM_ID_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

// ---------------------------------------------------------------------------
// Field schemas

const nonEmptyText = z.string().min(1, 'must not be empty');

/**
 * A schema-level error message that leaves absent fields to parseErrorMap
 * ("required field is missing"): schema-level messages take precedence.
 */
function unlessMissing(message: (input: unknown) => string): (issue: { input?: unknown }) => string | undefined {
  return (issue) => (issue.input === undefined ? undefined : message(issue.input));
}

const streamId = z
  .string()
  .regex(STREAM_ID_PATTERN, 'stream id must match [a-z0-9][a-z0-9_-]{0,62} (lowercase letters, digits, - and _; at most 63 characters)');

const count = z.int().min(0);

/** An ISO-8601 date-time with `Z` or an offset, any precision. */
const isoDateTime = z.iso.datetime({
  offset: true,
  error: unlessMissing(() => 'must be an ISO-8601 date-time with Z or an offset, like 2026-11-23T13:31:02.123456Z'),
});

const ISO_MICROS_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

/** `YYYY-MM-DDTHH:MM:SS.ffffffZ` naming a real instant. */
const isoMicrosUtc = z.string().refine(
  (text) => {
    if (!ISO_MICROS_UTC.test(text)) return false;
    const ms = Date.parse(text);
    // Date.parse accepts 2026-02-30; a round trip catches impossible dates.
    return !Number.isNaN(ms) && new Date(ms).toISOString().slice(0, 19) === text.slice(0, 19);
  },
  { error: 'must be UTC ISO-8601 with microseconds, like 2026-11-23T13:31:02.123456Z' },
);

/** Unix epoch microseconds of PostgreSQL's epoch, 2000-01-01T00:00:00Z. */
export const PG_EPOCH_UNIX_MICROS = 946_684_800_000_000n;

/**
 * Formats microseconds since the Unix epoch as the commitTime form
 * (`2026-11-23T13:31:02.123456Z`). pgoutput sends commit times as
 * microseconds since 2000-01-01: pass `micros + PG_EPOCH_UNIX_MICROS`.
 */
export function formatIsoMicros(unixMicros: bigint): string {
  const micros = ((unixMicros % 1_000_000n) + 1_000_000n) % 1_000_000n;
  const seconds = (unixMicros - micros) / 1_000_000n;
  const wholeSeconds = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  return `${wholeSeconds}.${micros.toString().padStart(6, '0')}Z`;
}

const sequenceValue = z.string().regex(/^-?(0|[1-9][0-9]{0,18})$/, 'must be an integer as decimal text, like "42" or "-9007199254740993"');

/**
 * A tuple: an array of values. Checked in one plain loop rather than as
 * z.array(z.union(...)): tuples are most of a batch, and this keeps parsing a
 * 1000-row batch in single-digit milliseconds. The declared input type is the
 * wire form; the output replaces 0 with UNCHANGED_TOAST.
 */
const tuple = z.custom<WireTupleValue[]>().transform((values, ctx): Tuple => {
  if (!Array.isArray(values)) {
    ctx.addIssue({
      code: 'custom',
      message: values === undefined ? 'required field is missing (expected array)' : `expected an array of values, got ${describeType(values)}`,
    });
    return z.NEVER;
  }
  const out: Tuple = new Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const value: unknown = values[i];
    if (typeof value === 'string') {
      if (value.includes('\u0000')) {
        ctx.addIssue({ code: 'custom', path: [i], message: 'text contains U+0000 (NUL), which PostgreSQL text cannot hold' });
      }
      out[i] = value;
    } else if (value === null) {
      out[i] = null;
    } else if (value === 0) {
      out[i] = UNCHANGED_TOAST;
    } else {
      ctx.addIssue({
        code: 'custom',
        path: [i],
        message:
          typeof value === 'number'
            ? `number ${value} is not a value: values are PostgreSQL text (strings), null, or 0 for an unchanged TOAST value`
            : `expected a string, null, or 0 (unchanged TOAST), got ${describeType(value)}`,
      });
    }
  }
  return out;
});

function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : typeof value;
}

// ---------------------------------------------------------------------------
// Relations

export const columnSchema = z.strictObject({
  name: nonEmptyText,
  /** Formatted type name as format_type() prints it: 'numeric(40,10)', 'public.mood[]', 'timestamp with time zone'. */
  type: nonEmptyText,
  typeOid: z.uint32(),
  /** atttypmod, -1 when the type has no modifier. */
  typmod: z.int32(),
  /** Part of the replica identity, as pgoutput flags it (every column under REPLICA IDENTITY FULL). */
  key: z.boolean(),
});

export const REPLICA_IDENTITIES = ['default', 'nothing', 'full', 'index'] as const;

export const relationDescriptorSchema = z.strictObject({
  oid: z.uint32(),
  schema: nonEmptyText,
  name: nonEmptyText,
  replicaIdentity: z.enum(REPLICA_IDENTITIES, {
    error: unlessMissing((input) => `unknown replicaIdentity ${JSON.stringify(input)}: expected default, nothing, full or index`),
  }),
  columns: z.array(columnSchema),
});

// ---------------------------------------------------------------------------
// Changes and transactions

/** Index into batch.relations. */
const relIndex = z.int().min(0);

export const changeSchema = z.discriminatedUnion(
  'op',
  [
    z.strictObject({ op: z.literal('insert'), rel: relIndex, new: tuple }),
    z.strictObject({
      op: z.literal('update'),
      rel: relIndex,
      new: tuple,
      /** Old key, when identity is default/index and the key changed. */
      key: tuple.optional(),
      /** Whole old row, under REPLICA IDENTITY FULL. */
      old: tuple.optional(),
    }),
    z.strictObject({ op: z.literal('delete'), rel: relIndex, key: tuple.optional(), old: tuple.optional() }),
    z.strictObject({
      op: z.literal('truncate'),
      rels: z.array(relIndex).min(1, 'a truncate lists at least one relation'),
      cascade: z.boolean(),
      restartIdentity: z.boolean(),
    }),
  ],
  {
    error: (issue) =>
      issue.code === 'invalid_union'
        ? `unknown op ${JSON.stringify((issue.input as { op?: unknown } | undefined)?.op)}: expected insert, update, delete or truncate`
        : undefined,
  },
);

export const transactionSchema = z.strictObject({
  /** Source transaction id (32-bit, as pgoutput's BEGIN carries it). */
  xid: z.uint32(),
  /** LSN of the commit record. */
  commitLsn: lsnText,
  /** End of the commit record: where the next read would start. */
  endLsn: lsnText,
  /** Commit time, UTC with microseconds: `2026-11-23T13:31:02.123456Z`. */
  commitTime: isoMicrosUtc,
  changes: z.array(changeSchema),
});

// ---------------------------------------------------------------------------
// Kind payloads

export const snapshotSchema = z.strictObject({
  snapshotId: nonEmptyText,
  /** Index into batch.relations of the table being copied. */
  relation: relIndex,
  chunk: count,
  rows: z.array(tuple),
  lastChunk: z.boolean(),
  /** The slot's consistent point: streaming continues from here. */
  consistentLsn: lsnText,
});

export const sequenceStateSchema = z.strictObject({
  schema: nonEmptyText,
  name: nonEmptyText,
  /** Decimal text: sequences are int8 and may exceed 2^53. */
  lastValue: sequenceValue,
  isCalled: z.boolean(),
});

export const heartbeatSchema = z.strictObject({
  /** Source server clock when the heartbeat was taken. */
  sourceTime: isoDateTime,
  /** WAL position of the heartbeat message itself (pg_logical_emit_message), which is also the batch's lsnLast: every commit before it has been received. */
  walLsn: lsnText,
  /** Sequence positions (pgoutput does not carry sequences). */
  sequences: z.array(sequenceStateSchema),
});

export const MARKER_REASONS = ['takeover', 'drain', 'failback', 'snapshot-complete'] as const;

/** One table of a finished initial copy: how many chunks and rows were sent for it. */
export const snapshotTableSummarySchema = z.strictObject({
  schema: nonEmptyText,
  name: nonEmptyText,
  /** Snapshot batches sent for this table (chunk numbers 0 … chunks-1). */
  chunks: z.int().min(1, 'every copied table sends at least one chunk (an empty table sends one empty last chunk)'),
  /** Rows in all those chunks together. */
  rows: count,
});

/** What a 'snapshot-complete' marker certifies: the whole copy of one snapshotId. */
export const snapshotCompleteSchema = z.strictObject({
  snapshotId: nonEmptyText,
  /** The slot's consistent point: the change stream continues right after it. */
  consistentLsn: lsnText,
  tables: z.array(snapshotTableSummarySchema),
});

export const markerSchema = z.strictObject({
  markerId: nonEmptyText,
  reason: z.enum(MARKER_REASONS, {
    error: unlessMissing(
      (input) =>
        `unknown marker reason ${JSON.stringify(input)}: expected takeover, drain or failback (operator markers) or snapshot-complete (end of the initial copy)`,
    ),
  }),
  requestedBy: z.string().optional(),
  /** Present exactly when reason is 'snapshot-complete'. */
  snapshot: snapshotCompleteSchema.optional(),
});

// ---------------------------------------------------------------------------
// The batch

const changeBatchShape = z.strictObject({
  v: z.literal(CHANGE_BATCH_VERSION, {
    error: unlessMissing((input) => `unsupported ChangeBatch version ${JSON.stringify(input)}: this code understands v1`),
  }),
  kind: z.enum(BATCH_KINDS, {
    error: unlessMissing((input) => `unknown kind ${JSON.stringify(input)}: expected changes, snapshot, heartbeat or marker`),
  }),
  stream: streamId,
  epoch: count,
  seq: count,
  lsnPrev: lsnText,
  lsnFirst: lsnText,
  lsnLast: lsnText,
  createdAt: isoDateTime,
  relations: z.array(relationDescriptorSchema),
  transactions: z.array(transactionSchema),
  snapshot: snapshotSchema.optional(),
  heartbeat: heartbeatSchema.optional(),
  marker: markerSchema.optional(),
});

/** Wire JSON (LSN text, 0 for unchanged TOAST) → in-memory ChangeBatch, with every rule checked. */
export const changeBatchSchema = changeBatchShape.superRefine((batch, ctx) => {
  for (const { path, message } of batchRuleViolations(batch)) ctx.addIssue({ code: 'custom', path, message });
});

export type ChangeBatch = z.output<typeof changeBatchShape>;
/** The JSON-able form: LSNs as text, UNCHANGED_TOAST as 0. */
export type ChangeBatchWire = z.input<typeof changeBatchShape>;
export type RelationDescriptor = z.output<typeof relationDescriptorSchema>;
export type ColumnDescriptor = z.output<typeof columnSchema>;
export type ReplicaIdentity = RelationDescriptor['replicaIdentity'];
export type Transaction = z.output<typeof transactionSchema>;
export type Change = z.output<typeof changeSchema>;
export type SnapshotChunk = z.output<typeof snapshotSchema>;
export type Heartbeat = z.output<typeof heartbeatSchema>;
export type SequenceState = z.output<typeof sequenceStateSchema>;
export type Marker = z.output<typeof markerSchema>;
export type SnapshotComplete = z.output<typeof snapshotCompleteSchema>;
export type SnapshotTableSummary = z.output<typeof snapshotTableSummarySchema>;

// ---------------------------------------------------------------------------
// Cross-field rules (see the header). Plain code over the parsed batch, so
// each message can name the relation and the counts involved.

type IssuePath = (string | number)[];
interface RuleViolation {
  path: IssuePath;
  message: string;
}

// Past this many, more messages add nothing (parseChangeBatch shows a few).
const MAX_RULE_VIOLATIONS = 100;

export function qualifiedName(relation: Pick<RelationDescriptor, 'schema' | 'name'>): string {
  return `${relation.schema}.${relation.name}`;
}

function batchRuleViolations(batch: ChangeBatch): RuleViolation[] {
  const violations: RuleViolation[] = [];
  const report = (path: IssuePath, message: string): void => {
    if (violations.length < MAX_RULE_VIOLATIONS) violations.push({ path, message });
  };

  checkKindPayload(batch, report);
  checkLsnChain(batch, report);
  if (batch.marker !== undefined) checkMarker(batch.marker, batch.lsnLast, report);
  batch.relations.forEach((relation, index) => checkRelation(relation, ['relations', index], report));

  const relationAt = (index: number, path: IssuePath): RelationDescriptor | undefined => {
    const relation = batch.relations[index];
    if (relation === undefined) {
      report(path, `relation index ${index} is out of range: the batch has ${batch.relations.length} relation${batch.relations.length === 1 ? '' : 's'}`);
    }
    return relation;
  };

  batch.transactions.forEach((tx, txIndex) => {
    const txPath: IssuePath = ['transactions', txIndex];
    if (tx.changes.length === 0) report([...txPath, 'changes'], 'a transaction must have at least one change');
    tx.changes.forEach((change, changeIndex) => {
      const path: IssuePath = [...txPath, 'changes', changeIndex];
      if (change.op === 'truncate') {
        const seen = new Set<number>();
        change.rels.forEach((index, i) => {
          relationAt(index, [...path, 'rels', i]);
          if (seen.has(index)) report([...path, 'rels', i], `relation index ${index} is listed twice`);
          seen.add(index);
        });
        return;
      }
      const relation = relationAt(change.rel, [...path, 'rel']);
      if (relation !== undefined) checkRowChange(change, relation, path, report);
    });
  });

  if (batch.snapshot !== undefined) {
    const relation = relationAt(batch.snapshot.relation, ['snapshot', 'relation']);
    if (relation !== undefined) {
      batch.snapshot.rows.forEach((row, i) => checkTuple(row, relation, ['snapshot', 'rows', i], report, { unchangedToastAllowed: false }));
    }
  }
  return violations;
}

type Report = (path: IssuePath, message: string) => void;

function checkKindPayload(batch: ChangeBatch, report: Report): void {
  const payloads = ['snapshot', 'heartbeat', 'marker'] as const;
  for (const payload of payloads) {
    const present = batch[payload] !== undefined;
    if (payload === batch.kind && !present) report([payload], `a '${batch.kind}' batch needs a ${payload} payload`);
    if (payload !== batch.kind && present) report([payload], `a '${batch.kind}' batch must not have a ${payload} payload`);
  }
  if (batch.kind === 'changes' && batch.transactions.length === 0) {
    report(['transactions'], "a 'changes' batch needs at least one transaction");
  }
  if (batch.kind !== 'changes' && batch.transactions.length > 0) {
    report(['transactions'], `a '${batch.kind}' batch must have no transactions (it has ${batch.transactions.length})`);
  }
}

function checkMarker(marker: Marker, lsnLast: bigint, report: Report): void {
  const { snapshot } = marker;
  if (marker.reason === 'snapshot-complete' && snapshot === undefined) {
    report(['marker', 'snapshot'], "a 'snapshot-complete' marker needs a snapshot field listing the copied tables");
  }
  if (marker.reason !== 'snapshot-complete' && snapshot !== undefined) {
    report(['marker', 'snapshot'], `a '${marker.reason}' marker must not have a snapshot field (only 'snapshot-complete' has one)`);
  }
  if (snapshot === undefined) return;
  if (snapshot.consistentLsn !== lsnLast) {
    report(
      ['marker', 'snapshot', 'consistentLsn'],
      `consistentLsn ${formatLsn(snapshot.consistentLsn)} must equal the batch's lsnLast ${formatLsn(lsnLast)}: the marker stands for the snapshot's consistent point`,
    );
  }
  const seen = new Set<string>();
  snapshot.tables.forEach((table, i) => {
    const name = qualifiedName(table);
    if (seen.has(name)) report(['marker', 'snapshot', 'tables', i], `table ${name} is listed twice`);
    seen.add(name);
  });
}

function checkLsnChain(batch: ChangeBatch, report: Report): void {
  const { lsnPrev, lsnFirst, lsnLast } = batch;
  const show = formatLsn;
  if (lsnFirst > lsnLast) report(['lsnFirst'], `lsnFirst ${show(lsnFirst)} is after lsnLast ${show(lsnLast)}`);
  if (lsnPrev > lsnFirst) report(['lsnPrev'], `lsnPrev ${show(lsnPrev)} is after lsnFirst ${show(lsnFirst)}: a batch cannot start before the one it follows ends`);
  if (batch.kind !== 'changes' && lsnFirst !== lsnLast) {
    report(['lsnFirst'], `a '${batch.kind}' batch stands for one position: lsnFirst ${show(lsnFirst)} must equal lsnLast ${show(lsnLast)}`);
  }

  const txs = batch.transactions;
  txs.forEach((tx, i) => {
    if (tx.commitLsn >= tx.endLsn) {
      report(['transactions', i, 'endLsn'], `endLsn ${show(tx.endLsn)} must be after commitLsn ${show(tx.commitLsn)}`);
    }
    const prev = txs[i - 1];
    if (prev !== undefined && tx.commitLsn < prev.endLsn) {
      report(
        ['transactions', i, 'commitLsn'],
        `transactions out of order: commitLsn ${show(tx.commitLsn)} is before the previous transaction's endLsn ${show(prev.endLsn)}`,
      );
    }
  });
  const first = txs[0];
  const last = txs[txs.length - 1];
  if (first !== undefined && first.commitLsn !== lsnFirst) {
    report(['transactions', 0, 'commitLsn'], `commitLsn ${show(first.commitLsn)} of the first transaction must equal lsnFirst ${show(lsnFirst)}`);
  }
  if (last !== undefined && last.endLsn !== lsnLast) {
    report(['transactions', txs.length - 1, 'endLsn'], `endLsn ${show(last.endLsn)} of the last transaction must equal lsnLast ${show(lsnLast)}`);
  }
}

function checkRelation(relation: RelationDescriptor, path: IssuePath, report: Report): void {
  const seen = new Set<string>();
  relation.columns.forEach((column, i) => {
    if (seen.has(column.name)) report([...path, 'columns', i, 'name'], `column "${column.name}" appears twice in ${qualifiedName(relation)}`);
    seen.add(column.name);
  });
}

function checkRowChange(change: Exclude<Change, { op: 'truncate' }>, relation: RelationDescriptor, path: IssuePath, report: Report): void {
  const name = qualifiedName(relation);
  const identity = relation.replicaIdentity;

  if (change.op === 'insert') {
    checkTuple(change.new, relation, [...path, 'new'], report, { unchangedToastAllowed: false });
    return;
  }

  const verb = change.op === 'update' ? 'UPDATE' : 'DELETE';
  if (identity === 'nothing') {
    report([...path, 'op'], `relation ${name} has REPLICA IDENTITY NOTHING: PostgreSQL cannot publish its ${verb}s`);
    return;
  }
  const hasKeyColumns = relation.columns.some((column) => column.key);

  if (change.op === 'update') checkTuple(change.new, relation, [...path, 'new'], report, { unchangedToastAllowed: true });
  if (change.op === 'delete' && (change.key === undefined) === (change.old === undefined)) {
    report(path, 'a delete must have exactly one of key (default/index identity) or old (REPLICA IDENTITY FULL)');
    return;
  }

  if (identity === 'full') {
    if (change.key !== undefined) report([...path, 'key'], `relation ${name} has REPLICA IDENTITY FULL: the old row goes in old, not key`);
    if (change.old === undefined) report([...path, 'old'], `relation ${name} has REPLICA IDENTITY FULL: an ${verb} must carry the old row`);
    else checkTuple(change.old, relation, [...path, 'old'], report, { unchangedToastAllowed: false });
    return;
  }

  // default / index identity: rows are located by their key columns.
  if (change.old !== undefined) {
    report([...path, 'old'], `relation ${name} has REPLICA IDENTITY ${identity.toUpperCase()}: only REPLICA IDENTITY FULL sends the old row; use key`);
  }
  if (!hasKeyColumns) {
    report([...path, 'rel'], `relation ${name} has no key columns (REPLICA IDENTITY ${identity.toUpperCase()} without a key): its ${verb}s cannot be applied`);
    return;
  }
  if (change.key !== undefined) {
    if (checkTuple(change.key, relation, [...path, 'key'], report, { unchangedToastAllowed: false })) {
      checkKeyTuple(change.key, relation, [...path, 'key'], report);
    }
  } else if (change.op === 'update' && change.new.length === relation.columns.length) {
    // No key tuple: the key did not change, so the applier finds the row by
    // the key columns of the new tuple.
    relation.columns.forEach((column, i) => {
      const value = change.new[i];
      if (column.key && typeof value !== 'string') {
        report(
          [...path, 'new', i],
          `key column "${column.name}" of ${name} is ${value === null ? 'null' : 'an unchanged-TOAST marker'}; without a key tuple the row is located by the new key values`,
        );
      }
    });
  }
}

/** Checks length, value placement; returns whether the length matched. */
function checkTuple(values: Tuple, relation: RelationDescriptor, path: IssuePath, report: Report, opts: { unchangedToastAllowed: boolean }): boolean {
  if (values.length !== relation.columns.length) {
    report(path, `tuple has ${values.length} value${values.length === 1 ? '' : 's'} but relation ${qualifiedName(relation)} has ${relation.columns.length} column${relation.columns.length === 1 ? '' : 's'}`);
    return false;
  }
  if (!opts.unchangedToastAllowed) {
    values.forEach((value, i) => {
      if (value === UNCHANGED_TOAST) report([...path, i], 'unchanged-TOAST marker (0) is only allowed in the new tuple of an update');
    });
  }
  return true;
}

/** pgoutput's key tuple: key columns have values, every other column is null. */
function checkKeyTuple(values: Tuple, relation: RelationDescriptor, path: IssuePath, report: Report): void {
  relation.columns.forEach((column, i) => {
    const value = values[i];
    if (column.key && value === null) report([...path, i], `key column "${column.name}" of ${qualifiedName(relation)} must have a value in a key tuple`);
    if (!column.key && value !== null) {
      report([...path, i], `column "${column.name}" is not part of the replica identity of ${qualifiedName(relation)}, so the key tuple must have null there`);
    }
  });
}

// ---------------------------------------------------------------------------
// Parse, encode, summaries

const MAX_LISTED_ISSUES = 5;

/** `transactions[0].changes[3].new` from a zod path. */
export function formatIssuePath(path: readonly PropertyKey[]): string {
  let text = '';
  for (const part of path) {
    if (typeof part === 'number') text += `[${part}]`;
    else text += text === '' ? String(part) : `.${String(part)}`;
  }
  return text === '' ? '(top level)' : text;
}

/** One zod issue as `path: message`. */
function describeIssue(issue: z.core.$ZodIssue): string {
  return `${formatIssuePath(issue.path)}: ${issue.message}`;
}

// Per-parse error map: zod's default for an absent field is "expected string,
// received undefined"; say "missing" instead.
const parseErrorMap: z.core.$ZodErrorMap = (issue) => {
  if (issue.input !== undefined) return undefined;
  if (issue.code === 'invalid_type') return `required field is missing (expected ${issue.expected})`;
  if (issue.code === 'invalid_value') return `required field is missing (expected ${issue.values.map((v) => JSON.stringify(v)).join(' | ')})`;
  return undefined;
};

/**
 * Validates a ChangeBatch in wire form (e.g. JSON.parse of a message body) and
 * returns the in-memory form (bigint LSNs, UNCHANGED_TOAST).
 * @throws ValidationError listing the first few problems by path, e.g.
 *   `transactions[0].changes[3].new: tuple has 4 values but relation public.accounts has 5 columns`.
 */
export function parseChangeBatch(json: unknown): ChangeBatch {
  const result = changeBatchSchema.safeParse(json, { error: parseErrorMap });
  if (result.success) return result.data;
  const issues = result.error.issues;
  const listed = issues.slice(0, MAX_LISTED_ISSUES).map(describeIssue);
  const more = issues.length > MAX_LISTED_ISSUES ? `; and ${issues.length - MAX_LISTED_ISSUES} more` : '';
  const noun = issues.length === 1 ? 'problem' : 'problems';
  throw new ValidationError(`invalid ChangeBatch (${issues.length} ${noun}): ${listed.join('; ')}${more}`, {
    details: { issues: issues.slice(0, MAX_RULE_VIOLATIONS).map((issue) => ({ path: formatIssuePath(issue.path), message: issue.message })) },
  });
}

function wireTuple(values: Tuple): WireTupleValue[] {
  return values.map((value) => (value === UNCHANGED_TOAST ? 0 : value));
}

function wireChange(change: Change): ChangeBatchWire['transactions'][number]['changes'][number] {
  switch (change.op) {
    case 'insert':
      return { op: 'insert', rel: change.rel, new: wireTuple(change.new) };
    case 'update':
      return {
        op: 'update',
        rel: change.rel,
        new: wireTuple(change.new),
        ...(change.key !== undefined && { key: wireTuple(change.key) }),
        ...(change.old !== undefined && { old: wireTuple(change.old) }),
      };
    case 'delete':
      return {
        op: 'delete',
        rel: change.rel,
        ...(change.key !== undefined && { key: wireTuple(change.key) }),
        ...(change.old !== undefined && { old: wireTuple(change.old) }),
      };
    case 'truncate':
      return { op: 'truncate', rels: [...change.rels], cascade: change.cascade, restartIdentity: change.restartIdentity };
  }
}

/**
 * The plain JSON-able object for a batch: LSNs as canonical text,
 * UNCHANGED_TOAST as 0, absent optionals left out. Does not validate (the
 * codec validates before sending); `parseChangeBatch` accepts the result.
 */
export function toWireJson(batch: ChangeBatch): ChangeBatchWire {
  const { snapshot, heartbeat, marker } = batch;
  return {
    v: batch.v,
    kind: batch.kind,
    stream: batch.stream,
    epoch: batch.epoch,
    seq: batch.seq,
    lsnPrev: formatLsn(batch.lsnPrev),
    lsnFirst: formatLsn(batch.lsnFirst),
    lsnLast: formatLsn(batch.lsnLast),
    createdAt: batch.createdAt,
    relations: batch.relations.map((relation) => ({
      oid: relation.oid,
      schema: relation.schema,
      name: relation.name,
      replicaIdentity: relation.replicaIdentity,
      columns: relation.columns.map((column) => ({
        name: column.name,
        type: column.type,
        typeOid: column.typeOid,
        typmod: column.typmod,
        key: column.key,
      })),
    })),
    transactions: batch.transactions.map((tx) => ({
      xid: tx.xid,
      commitLsn: formatLsn(tx.commitLsn),
      endLsn: formatLsn(tx.endLsn),
      commitTime: tx.commitTime,
      changes: tx.changes.map(wireChange),
    })),
    ...(snapshot !== undefined && {
      snapshot: {
        snapshotId: snapshot.snapshotId,
        relation: snapshot.relation,
        chunk: snapshot.chunk,
        rows: snapshot.rows.map(wireTuple),
        lastChunk: snapshot.lastChunk,
        consistentLsn: formatLsn(snapshot.consistentLsn),
      },
    }),
    ...(heartbeat !== undefined && {
      heartbeat: {
        sourceTime: heartbeat.sourceTime,
        walLsn: formatLsn(heartbeat.walLsn),
        sequences: heartbeat.sequences.map((s) => ({ schema: s.schema, name: s.name, lastValue: s.lastValue, isCalled: s.isCalled })),
      },
    }),
    ...(marker !== undefined && {
      marker: {
        markerId: marker.markerId,
        reason: marker.reason,
        ...(marker.requestedBy !== undefined && { requestedBy: marker.requestedBy }),
        ...(marker.snapshot !== undefined && {
          snapshot: {
            snapshotId: marker.snapshot.snapshotId,
            consistentLsn: formatLsn(marker.snapshot.consistentLsn),
            tables: marker.snapshot.tables.map((t) => ({ schema: t.schema, name: t.name, chunks: t.chunks, rows: t.rows })),
          },
        }),
      },
    }),
  };
}

/** Rows changed: inserts + updates + deletes, plus snapshot rows. Truncates count 0. */
export function batchRowCount(batch: ChangeBatch): number {
  let rows = batch.snapshot?.rows.length ?? 0;
  for (const tx of batch.transactions) {
    for (const change of tx.changes) if (change.op !== 'truncate') rows += 1;
  }
  return rows;
}

/**
 * Qualified names (`schema.name`) of the tables the batch's changes or
 * snapshot touch, each once, in order of first reference.
 */
export function batchTables(batch: ChangeBatch): string[] {
  const names = new Set<string>();
  const add = (index: number): void => {
    const relation = batch.relations[index];
    if (relation !== undefined) names.add(qualifiedName(relation));
  };
  for (const tx of batch.transactions) {
    for (const change of tx.changes) {
      if (change.op === 'truncate') change.rels.forEach(add);
      else add(change.rel);
    }
  }
  if (batch.snapshot !== undefined) add(batch.snapshot.relation);
  return [...names];
}
