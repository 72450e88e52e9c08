// The stranded tail (issue 5, failback step 1): after a HARD failover, the
// local transactions that never reached the cloud. They are found, kept as a
// report in object storage (JSON plus a SQL script), never discarded, and
// applied only when an operator asks.
//
// Where they are. The target's applied watermark W (lifeboat.stream_state)
// splits the local history: a transaction with endLsn ≤ W is on the cloud;
// every later one is stranded (commitLsn > W and endLsn > W say the same
// thing: W is always the end of a commit record or a heartbeat position).
// Two places hold them:
//   - the local slot, after its confirmed_flush_lsn C: read with
//     pg_logical_slot_peek_binary_changes, which does NOT consume it;
//   - lifeboat.stale_batches on the target: batches the agent published
//     before the failover that arrived after it, refused for their epoch.
// C can be ahead of W (Pub/Sub acknowledged, the cloud did not apply yet).
// The range (W, C] is then only in the stale batches, or still in the
// Pub/Sub backlog. Every stale batch stands for its chain range
// (lsnPrev, lsnLast], heartbeats included, so coverage is computed, not
// guessed: a part of (W, C] that no stale batch covers is reported, and the
// report says it may be incomplete and must be collected again later.
// A transaction found in both places is kept once (by commitLsn), the slot's
// copy; copies that differ are named in a warning.
//
// Decoding reuses the agent's own pieces: pgoutput-reader for the messages,
// ChangeBatcher for transactions, relation descriptors and replica-identity
// checks, and type names from format_type under search_path = pg_catalog, as
// the agent resolves them. Values are formatted by the server with the same
// settings the agent's walsender uses (SET LOCAL … TO DEFAULT), so both
// copies of a transaction compare equal.
//
// The tail's model is the ChangeBatch contract's: relations plus
// transactions whose changes index them; the JSON report is validated on the
// way back with the contract's own parser.

import pg from 'pg';
import { z } from 'zod';
import {
  CHANGE_BATCH_VERSION,
  STREAM_ID_PATTERN,
  UNCHANGED_TOAST,
  parseChangeBatch,
  relationDescriptorSchema,
  toWireJson,
  type Change,
  type ChangeBatch,
  type ChangeBatchWire,
  type RelationDescriptor,
  type Transaction,
  type Tuple,
} from '../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError, describeError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import { formatLsn, lsnText, parseLsn, type Lsn } from '../core/lsn.ts';
import type { ObjectStore } from '../core/ports.ts';
import { classifyApplyError, readStreamState } from '../functions/apply-engine.ts';
import { ChangeBatcher, UnknownTypeError, type TypeRef } from './change-batcher.ts';
import { PgoutputProtocolError, parsePgoutputMessage } from './pgoutput-reader.ts';
import { classifyReplicationError, validateSlotName, type StreamedMessage } from './replication-stream.ts';
import { inspectSlot, slotLostError, slotProblem } from './source-setup.ts';
import { planStrandedTailSql, renderStrandedTailSql, type StrandedStatement } from './stranded-tail-sql.ts';

// ---------------------------------------------------------------------------
// The model

export const STRANDED_SOURCES = ['local-slot', 'stale-batches'] as const;
/** Where a stranded transaction was found. */
export type StrandedSource = (typeof STRANDED_SOURCES)[number];

/** A source transaction after the watermark; its changes index StrandedTail.relations. */
export interface StrandedTransaction extends Transaction {
  /** One or both sources, in STRANDED_SOURCES order. */
  readonly foundIn: readonly StrandedSource[];
}

export interface StrandedTableTotals {
  readonly schema: string;
  readonly name: string;
  readonly inserts: number;
  readonly updates: number;
  readonly deletes: number;
  readonly truncates: number;
}

/** WAL positions (after, upTo]. */
export interface LsnRange {
  readonly after: Lsn;
  readonly upTo: Lsn;
}

export interface UnreadableStaleBatch {
  /** lifeboat.stale_batches.id */
  readonly id: string;
  readonly lsnPrev: Lsn;
  readonly lsnLast: Lsn;
  readonly problem: string;
}

export interface StrandedTailCoverage {
  readonly onlyInStaleBatches: number;
  readonly onlyInSlot: number;
  readonly inBoth: number;
  /** Stale batches read: those of this stream ending after the watermark. */
  readonly staleBatches: number;
  /** Of those, batches without transactions (heartbeats, markers, snapshot chunks): positions only. */
  readonly staleBatchesWithoutTransactions: number;
  /** Stale batches whose payload failed validation: not used, their range counts as uncovered. */
  readonly unreadableStaleBatches: readonly UnreadableStaleBatch[];
  /** Transactions seen in either source at or below the watermark: already on the target, not stranded. */
  readonly alreadyApplied: number;
  /** Positions after the watermark covered neither by the slot nor by stale batches. */
  readonly uncovered: readonly LsnRange[];
  /** Commit LSNs whose copies differ between the sources (the slot's copy is kept). */
  readonly differingCopies: readonly Lsn[];
}

export interface StrandedTail {
  readonly stream: string;
  readonly slot: string;
  readonly publication: string;
  /** ISO time of the collection. */
  readonly collectedAt: string;
  /** The target's applied watermark W. */
  readonly watermark: Lsn;
  /** The local slot's confirmed_flush_lsn C, unchanged by collecting. */
  readonly slotConfirmedFlushLsn: Lsn;
  /** The fencing epoch in force on the target. */
  readonly targetFencingEpoch: number;
  /** True when every position after W is covered (see coverage.uncovered). */
  readonly complete: boolean;
  readonly relations: readonly RelationDescriptor[];
  /** In commit order, each once. */
  readonly transactions: readonly StrandedTransaction[];
  /** Per table, ordered by schema and name. */
  readonly totals: readonly StrandedTableTotals[];
  /** Inserts + updates + deletes (truncates count 0, as batchRowCount). */
  readonly rows: number;
  readonly coverage: StrandedTailCoverage;
  /** Sentences for the operator. */
  readonly warnings: readonly string[];
}

/** A connection (pg.Client or a checked-out pool client, not a Pool: transactions run on it). */
export type StrandedTailClient = Pick<pg.ClientBase, 'query'>;

// ---------------------------------------------------------------------------
// Collecting

export interface CollectStrandedTailOptions {
  /** The local database, as a role with REPLICATION (or superuser); a normal connection. */
  readonly source: StrandedTailClient;
  /** The cloud target (the database with the lifeboat schema). */
  readonly target: StrandedTailClient;
  readonly stream: string;
  readonly slot: string;
  readonly publication: string;
  readonly logger?: Logger;
  /** Clock for collectedAt. */
  readonly now?: () => Date;
  /** Slot messages fetched per round trip (default 1000). */
  readonly fetchSize?: number;
}

const clientSchema = z.custom<StrandedTailClient>((v) => typeof (v as { query?: unknown } | null)?.query === 'function', 'must be a connected pg client');

const collectOptionsSchema = z.object({
  source: clientSchema,
  target: clientSchema,
  stream: z.string().regex(STREAM_ID_PATTERN, 'stream id must match [a-z0-9][a-z0-9_-]{0,62}'),
  slot: z.string(),
  publication: z.string().min(1, 'must not be empty').refine((p) => !p.includes('\u0000'), 'must not contain NUL'),
  fetchSize: z.int().min(1).max(100_000).optional(),
});

/** Settings that shape the text output of values: reset to what the agent's walsender uses. */
const OUTPUT_SETTINGS = ['DateStyle', 'IntervalStyle', 'TimeZone', 'extra_float_digits', 'bytea_output', 'lc_monetary', 'search_path'];

const CURSOR = 'lifeboat_stranded_tail';
const MAX_LIMIT = Number.MAX_SAFE_INTEGER;

/** One transaction as one source holds it, with that source's relation descriptors. */
interface Candidate {
  readonly tx: Transaction;
  readonly relations: readonly RelationDescriptor[];
}

/** One row of lifeboat.stale_batches: its chain range, and its batch unless the payload failed validation. */
export interface StaleBatchRow {
  readonly id: string;
  readonly lsnPrev: Lsn;
  readonly lsnLast: Lsn;
  readonly batch: ChangeBatch | undefined;
  readonly problem: string | undefined;
}

/**
 * Finds the stranded tail of `stream`. Reads the target (watermark, fencing
 * epoch, stale batches) in one read-only snapshot, then peeks the local slot
 * without consuming it. Changes nothing on either side.
 * @throws PermanentError (no such stream or slot, slot lost, no watermark);
 *   RetryableError (slot in use, connection lost, the slot moved meanwhile).
 */
export async function collectStrandedTail(opts: CollectStrandedTailOptions): Promise<StrandedTail> {
  const parsed = collectOptionsSchema.safeParse(opts);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ValidationError(`invalid stranded-tail options: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'unknown problem'}`);
  }
  validateSlotName(opts.slot);
  const now = opts.now ?? (() => new Date());
  const log = (opts.logger ?? createLogger({ component: 'stranded-tail' })).child({ stream: opts.stream, slot: opts.slot });

  const target = await readTargetSide(opts.target, opts.stream);
  const slot = await readSlot(opts.source, opts, opts.fetchSize ?? 1000, log);
  const tail = assembleTail({
    stream: opts.stream,
    slot: opts.slot,
    publication: opts.publication,
    collectedAt: now().toISOString(),
    watermark: target.watermark,
    targetFencingEpoch: target.epoch,
    slotConfirmedFlushLsn: slot.confirmed,
    slotBatches: slot.batches,
    stale: target.stale,
  });
  log.notice(
    `stranded tail: ${tail.transactions.length} transaction(s), ${tail.rows} row(s) after watermark ${formatLsn(tail.watermark)}` +
      (tail.complete ? '' : ' (MAY BE INCOMPLETE)'),
    { ...tail.coverage, uncovered: tail.coverage.uncovered.map(formatRange), differingCopies: tail.coverage.differingCopies.map(formatLsn) },
  );
  for (const warning of tail.warnings) log.warn(warning);
  return tail;
}

/** An SQL error as RetryableError or PermanentError, with what we were doing. */
function sqlError(err: unknown, doing: string, remedy?: string): RetryableError | PermanentError {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const classified = classifyApplyError(err);
  const message = `${doing}: ${describeError(err)}`;
  return classified instanceof RetryableError
    ? new RetryableError(message, { cause: err, details: classified.details })
    : new PermanentError(message, { cause: err, details: classified.details, remedy });
}

async function readTargetSide(target: StrandedTailClient, stream: string): Promise<{ watermark: Lsn; epoch: number; stale: StaleBatchRow[] }> {
  let rows: { id: string; lsn_prev: string; lsn_last: string; payload: string }[];
  let watermark: Lsn;
  let epoch: number;
  // One snapshot: the watermark and the stale batches must describe the same moment.
  await target.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    const state = await readStreamState(target, stream);
    if (state === undefined) {
      throw new PermanentError(`stream ${stream} is unknown on the target: lifeboat.stream_state has no row for it`, {
        remedy: 'Check the stream name and the target database URL: the stranded tail is measured against that stream\'s applied watermark.',
      });
    }
    if (state.watermark === null) {
      throw new PermanentError(`the target has no applied watermark for stream ${stream}: its initial copy never completed`, {
        remedy: 'The cloud never held a complete copy, so there is no position to compare the local side with. Do not fail back from it; keep the local database as it is.',
      });
    }
    watermark = state.watermark;
    epoch = state.epoch;
    const res = await target.query<{ id: string; lsn_prev: string; lsn_last: string; payload: string }>(
      `SELECT id::text AS id, lsn_prev::text AS lsn_prev, lsn_last::text AS lsn_last, payload::text AS payload
         FROM lifeboat.stale_batches WHERE stream = $1 AND lsn_last > $2::pg_lsn ORDER BY lsn_first, id`,
      [stream, formatLsn(watermark)],
    );
    rows = res.rows;
    await target.query('COMMIT');
  } catch (err) {
    await target.query('ROLLBACK').catch(() => undefined);
    throw sqlError(err, 'reading the watermark and stale batches on the target', 'Check that the target database has the lifeboat schema (the apply function creates it).');
  }
  const stale = rows.map((row): StaleBatchRow => {
    const base = { id: row.id, lsnPrev: parseLsn(row.lsn_prev), lsnLast: parseLsn(row.lsn_last) };
    try {
      const batch = parseChangeBatch(JSON.parse(row.payload));
      if (batch.stream !== stream) throw new ValidationError(`the payload is of stream ${batch.stream}, not ${stream}`);
      return { ...base, batch, problem: undefined };
    } catch (err) {
      return { ...base, batch: undefined, problem: describeError(err) };
    }
  });
  return { watermark, epoch, stale };
}

/** format_type under search_path = pg_catalog, as the agent does: user types come out schema-qualified. */
async function loadTypeNames(client: StrandedTailClient, types: readonly TypeRef[], names: Map<string, string>): Promise<void> {
  // Inside the peek's transaction: set it locally and put the caller's back.
  const saved = await client.query<{ path: string }>("SELECT current_setting('search_path') AS path");
  await client.query("SELECT set_config('search_path', 'pg_catalog', true)");
  try {
    for (const t of types) {
      const res = await client.query<{ name: string | null }>('SELECT format_type($1::oid, $2::int) AS name', [t.oid, t.typmod]);
      const name = res.rows[0]?.name;
      if (!name || name === '???') throw new PermanentError(`the local database does not know type oid ${t.oid} (typmod ${t.typmod})`);
      names.set(`${t.oid}:${t.typmod}`, name);
    }
  } finally {
    await client.query("SELECT set_config('search_path', $1, true)", [saved.rows[0]?.path ?? '']).catch(() => undefined);
  }
}

async function slotConfirmed(source: StrandedTailClient, slot: string): Promise<Lsn> {
  const info = await inspectSlot(source, slot);
  if (info === undefined) {
    throw new PermanentError(`replication slot "${slot}" does not exist on the local database`, {
      remedy:
        'Check source.slot and source.databaseUrl. Without the slot, the transactions that never left the local side cannot be read from it; ' +
        'only a comparison of the tables on both sides can find them.',
      details: { slot },
    });
  }
  const problem = slotProblem(info);
  if (problem !== undefined) throw problem;
  if (info.confirmedFlushLsn === undefined) throw slotLostError(slot);
  if (info.active) {
    throw new RetryableError(`replication slot "${slot}" is in use (walsender pid ${info.activePid ?? 'unknown'})`, {
      remedy: 'Stop the Lifeboat agent (or whatever reads the slot) and collect the stranded tail again: the tail is read while the slot stands still.',
      details: { slot, activePid: info.activePid },
    });
  }
  return info.confirmedFlushLsn;
}

/** Peeks every message after the slot's confirmed position and batches it as the agent would. */
async function readSlot(
  source: StrandedTailClient,
  opts: Pick<CollectStrandedTailOptions, 'stream' | 'slot' | 'publication'>,
  fetchSize: number,
  log: Logger,
): Promise<{ confirmed: Lsn; batches: ChangeBatch[] }> {
  const confirmed = await slotConfirmed(source, opts.slot);
  const typeNames = new Map<string, string>();
  const batches: ChangeBatch[] = [];
  const batcher = new ChangeBatcher({
    stream: opts.stream,
    epoch: () => 0,
    startLsn: confirmed,
    // Never cut for size or time: the tail is collected, not published.
    maxRows: MAX_LIMIT,
    maxBytes: MAX_LIMIT,
    maxDelayMs: MAX_LIMIT,
    clock: Date.now,
    typeName: (oid, typmod) => typeNames.get(`${oid}:${typmod}`),
    logger: log,
  });
  const keep = (out: ChangeBatch[]): void => {
    for (const batch of out) if (batch.kind === 'changes') batches.push(batch);
  };

  await source.query('BEGIN READ ONLY');
  try {
    for (const setting of OUTPUT_SETTINGS) await source.query(`SET LOCAL ${setting} TO DEFAULT`);
    // publication_names is an identifier list: quoted, so case and commas survive.
    await source.query(
      `DECLARE ${CURSOR} NO SCROLL CURSOR FOR SELECT lsn::text AS lsn, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, ` +
        `'proto_version', '1', 'publication_names', $2, 'messages', 'true')`,
      [opts.slot, pg.escapeIdentifier(opts.publication)],
    );
    for (;;) {
      const res = await source.query<{ lsn: string; data: Buffer }>(`FETCH ${fetchSize} FROM ${CURSOR}`);
      for (const row of res.rows) {
        let item: StreamedMessage;
        try {
          item = { lsn: parseLsn(row.lsn), message: parsePgoutputMessage(row.data) };
        } catch (err) {
          if (!(err instanceof PgoutputProtocolError)) throw err;
          throw new PermanentError(`cannot decode the slot's message at ${row.lsn}: ${err.message}`, { cause: err, details: { slot: opts.slot, lsn: row.lsn } });
        }
        try {
          keep(batcher.push(item));
        } catch (err) {
          if (!(err instanceof UnknownTypeError)) throw err;
          await loadTypeNames(source, err.types, typeNames);
          keep(batcher.push(item));
        }
      }
      if (res.rows.length < fetchSize) break;
    }
    if (batcher.inTransaction()) {
      throw new PermanentError(`the slot returned a transaction without its commit`, { details: { slot: opts.slot } });
    }
    keep(batcher.flush());
    await source.query(`CLOSE ${CURSOR}`);
    // A reader that confirmed meanwhile would make the positions disagree.
    const after = await slotConfirmed(source, opts.slot);
    if (after !== confirmed) {
      throw new RetryableError(`replication slot "${opts.slot}" moved from ${formatLsn(confirmed)} to ${formatLsn(after)} while the stranded tail was read`, {
        remedy: 'Something else reads the slot (a running agent?). Stop it and collect again.',
      });
    }
    await source.query('COMMIT');
  } catch (err) {
    await source.query('ROLLBACK').catch(() => undefined);
    if (err instanceof RetryableError || err instanceof PermanentError) throw err;
    throw classifyReplicationError(err, opts.slot, opts.publication);
  }
  return { confirmed, batches };
}

// ---------------------------------------------------------------------------
// Assembling (pure)

export interface StrandedTailInputs {
  readonly stream: string;
  readonly slot: string;
  readonly publication: string;
  readonly collectedAt: string;
  readonly watermark: Lsn;
  readonly targetFencingEpoch: number;
  readonly slotConfirmedFlushLsn: Lsn;
  /** 'changes' batches decoded from the slot. */
  readonly slotBatches: readonly ChangeBatch[];
  readonly stale: readonly StaleBatchRow[];
}

function relationKey(relation: RelationDescriptor): string {
  return JSON.stringify([
    relation.oid,
    relation.schema,
    relation.name,
    relation.replicaIdentity,
    relation.columns.map((c) => [c.name, c.type, c.typeOid, c.typmod, c.key]),
  ]);
}

function wireTuple(values: Tuple | undefined): (string | null | 0)[] | null {
  return values === undefined ? null : values.map((v) => (v === UNCHANGED_TOAST ? 0 : v));
}

/** A transaction with relation indices replaced by descriptors, for comparing copies. */
function canonical(c: Candidate): string {
  const rel = (i: number): string => relationKey(c.relations[i]!);
  return JSON.stringify([
    c.tx.xid,
    formatLsn(c.tx.endLsn),
    c.tx.commitTime,
    c.tx.changes.map((ch) =>
      ch.op === 'truncate'
        ? [ch.op, ch.rels.map(rel), ch.cascade, ch.restartIdentity]
        : [ch.op, rel(ch.rel), wireTuple('new' in ch ? ch.new : undefined), wireTuple('key' in ch ? ch.key : undefined), wireTuple('old' in ch ? ch.old : undefined)],
    ),
  ]);
}

function formatRange(range: LsnRange): string {
  return `(${formatLsn(range.after)}, ${formatLsn(range.upTo)}]`;
}

/** Parts of (from, to] that no interval (after, upTo] covers. */
export function uncoveredRanges(from: Lsn, to: Lsn, covered: readonly LsnRange[]): LsnRange[] {
  const gaps: LsnRange[] = [];
  let pos = from;
  for (const iv of [...covered].sort((a, b) => (a.after < b.after ? -1 : a.after > b.after ? 1 : 0))) {
    if (pos >= to) break;
    if (iv.upTo <= pos) continue;
    if (iv.after > pos) gaps.push({ after: pos, upTo: iv.after < to ? iv.after : to });
    pos = iv.upTo;
  }
  if (pos < to) gaps.push({ after: pos, upTo: to });
  return gaps;
}

/** Per-table counts, ordered by schema and name, and the row total. */
export function strandedTailTotals(
  relations: readonly RelationDescriptor[],
  transactions: readonly Pick<Transaction, 'changes'>[],
): { totals: StrandedTableTotals[]; rows: number } {
  const byTable = new Map<string, { schema: string; name: string; inserts: number; updates: number; deletes: number; truncates: number }>();
  const entry = (index: number) => {
    const relation = relations[index];
    if (relation === undefined) throw new ValidationError(`relation index ${index} is out of range (${relations.length} relations)`);
    const key = JSON.stringify([relation.schema, relation.name]);
    let e = byTable.get(key);
    if (e === undefined) byTable.set(key, (e = { schema: relation.schema, name: relation.name, inserts: 0, updates: 0, deletes: 0, truncates: 0 }));
    return e;
  };
  let rows = 0;
  for (const tx of transactions) {
    for (const change of tx.changes) {
      if (change.op === 'truncate') {
        for (const i of change.rels) entry(i).truncates++;
        continue;
      }
      rows++;
      const e = entry(change.rel);
      if (change.op === 'insert') e.inserts++;
      else if (change.op === 'update') e.updates++;
      else e.deletes++;
    }
  }
  const totals = [...byTable.values()].sort((a, b) => (a.schema < b.schema ? -1 : a.schema > b.schema ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { totals, rows };
}

/** Merges both sources into a tail: dedupe by commitLsn, coverage, warnings. Pure. */
export function assembleTail(input: StrandedTailInputs): StrandedTail {
  const w = input.watermark;
  const c = input.slotConfirmedFlushLsn;
  const applied = new Set<Lsn>();
  const found = new Map<Lsn, { slot?: Candidate; stale: Candidate[] }>();
  const add = (candidate: Candidate, source: StrandedSource): void => {
    if (candidate.tx.endLsn <= w) {
      applied.add(candidate.tx.commitLsn);
      return;
    }
    let entry = found.get(candidate.tx.commitLsn);
    if (entry === undefined) found.set(candidate.tx.commitLsn, (entry = { stale: [] }));
    if (source === 'local-slot') entry.slot = candidate;
    else entry.stale.push(candidate);
  };
  for (const batch of input.slotBatches) for (const tx of batch.transactions) add({ tx, relations: batch.relations }, 'local-slot');
  let withoutTransactions = 0;
  const unreadable: UnreadableStaleBatch[] = [];
  const covered: LsnRange[] = [];
  for (const row of input.stale) {
    if (row.batch === undefined) {
      unreadable.push({ id: row.id, lsnPrev: row.lsnPrev, lsnLast: row.lsnLast, problem: row.problem ?? 'unreadable' });
      continue;
    }
    covered.push({ after: row.batch.lsnPrev, upTo: row.batch.lsnLast });
    if (row.batch.transactions.length === 0) withoutTransactions++;
    for (const tx of row.batch.transactions) add({ tx, relations: row.batch.relations }, 'stale-batches');
  }

  // One copy per commit LSN, in commit order, over one relation list.
  const relations: RelationDescriptor[] = [];
  const relationIndex = new Map<string, number>();
  const remap = (candidate: Candidate) => (i: number): number => {
    const relation = candidate.relations[i]!;
    const key = relationKey(relation);
    let index = relationIndex.get(key);
    if (index === undefined) {
      index = relations.length;
      relations.push(relation);
      relationIndex.set(key, index);
    }
    return index;
  };
  const transactions: StrandedTransaction[] = [];
  const differing: Lsn[] = [];
  let onlyInSlot = 0;
  let onlyInStale = 0;
  let inBoth = 0;
  for (const commitLsn of [...found.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
    const entry = found.get(commitLsn)!;
    const kept = entry.slot ?? entry.stale[0]!;
    const reference = canonical(kept);
    if (entry.stale.some((copy) => canonical(copy) !== reference)) differing.push(commitLsn);
    const foundIn: StrandedSource[] = [];
    if (entry.slot !== undefined) foundIn.push('local-slot');
    if (entry.stale.length > 0) foundIn.push('stale-batches');
    if (foundIn.length === 2) inBoth++;
    else if (entry.slot !== undefined) onlyInSlot++;
    else onlyInStale++;
    const map = remap(kept);
    const changes: Change[] = kept.tx.changes.map((ch) => (ch.op === 'truncate' ? { ...ch, rels: ch.rels.map(map) } : { ...ch, rel: map(ch.rel) }));
    transactions.push({ xid: kept.tx.xid, commitLsn, endLsn: kept.tx.endLsn, commitTime: kept.tx.commitTime, foundIn, changes });
  }

  const uncovered = c > w ? uncoveredRanges(w, c, covered) : [];
  const warnings: string[] = [];
  for (const gap of uncovered) {
    warnings.push(
      `Positions ${formatRange(gap)} after the watermark are covered neither by the local slot (it starts at ${formatLsn(c)}) nor by lifeboat.stale_batches: ` +
        'batches the agent published for them may still be in the Pub/Sub backlog and reach the target later. This report may be incomplete: ' +
        'collect it again once the apply subscription has no undelivered messages.',
    );
  }
  for (const u of unreadable) {
    warnings.push(`lifeboat.stale_batches row ${u.id} (${formatRange({ after: u.lsnPrev, upTo: u.lsnLast })}) failed validation and was not used: ${u.problem}`);
  }
  if (differing.length > 0) {
    warnings.push(
      `${differing.length} transaction(s) differ between their copies (commit LSN ${differing.map(formatLsn).join(', ')}); ` +
        'the copy decoded from the local slot now is in this report. Compare with the payloads in lifeboat.stale_batches.',
    );
  }
  const { totals, rows } = strandedTailTotals(relations, transactions);
  const truncating = transactions.filter((tx) => tx.changes.some((ch) => ch.op === 'truncate')).length;
  if (truncating > 0) warnings.push(`${truncating} transaction(s) ran a TRUNCATE: it is commented out in the SQL; review it before applying.`);
  const ddlRelations = new Set(relations.flatMap((r, i) => (r.schema === 'lifeboat' && r.name === 'ddl_log' ? [i] : [])));
  const withDdl = transactions.filter((tx) => tx.changes.some((ch) => ch.op !== 'truncate' && ddlRelations.has(ch.rel))).length;
  if (withDdl > 0) warnings.push(`${withDdl} transaction(s) changed the schema: the DDL is commented out in the SQL; review it before applying.`);

  const tail: StrandedTail = {
    stream: input.stream,
    slot: input.slot,
    publication: input.publication,
    collectedAt: input.collectedAt,
    watermark: w,
    slotConfirmedFlushLsn: c,
    targetFencingEpoch: input.targetFencingEpoch,
    complete: uncovered.length === 0,
    relations,
    transactions,
    totals,
    rows,
    coverage: {
      onlyInStaleBatches: onlyInStale,
      onlyInSlot,
      inBoth,
      staleBatches: input.stale.length,
      staleBatchesWithoutTransactions: withoutTransactions,
      unreadableStaleBatches: unreadable,
      alreadyApplied: applied.size,
      uncovered,
      differingCopies: differing,
    },
    warnings,
  };
  checkContract(tail.stream, tail.relations, tail.transactions, input.collectedAt);
  return tail;
}

/** The contract's wire form of the tail's relations and transactions (one pseudo 'changes' batch). */
function pseudoBatch(stream: string, relations: readonly RelationDescriptor[], transactions: readonly Transaction[], createdAt: string): ChangeBatch {
  const first = transactions[0]!;
  const last = transactions[transactions.length - 1]!;
  return {
    v: CHANGE_BATCH_VERSION,
    kind: 'changes',
    stream,
    epoch: 0,
    seq: 0,
    lsnPrev: first.commitLsn,
    lsnFirst: first.commitLsn,
    lsnLast: last.endLsn,
    createdAt,
    relations: [...relations],
    transactions: [...transactions],
  };
}

/** Checks the tail against every rule of the ChangeBatch contract (so its JSON parses back). */
function checkContract(stream: string, relations: readonly RelationDescriptor[], transactions: readonly Transaction[], createdAt: string): void {
  if (transactions.length === 0) return;
  try {
    parseChangeBatch(toWireJson(pseudoBatch(stream, relations, transactions, createdAt)));
  } catch (err) {
    throw new PermanentError(`the stranded tail breaks the ChangeBatch rules: ${describeError(err)}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------
// The JSON report

export const STRANDED_TAIL_REPORT_FORMAT = 'lifeboat-stranded-tail';
export const STRANDED_TAIL_REPORT_VERSION = 1;

export interface StrandedTailReport {
  readonly tail: StrandedTail;
  /** The epoch of the failover the report belongs to. */
  readonly epoch: number;
  readonly savedAt: string;
}

function summary(tail: StrandedTail): string {
  const head =
    tail.transactions.length === 0
      ? `No stranded transactions after the cloud's watermark ${formatLsn(tail.watermark)}.`
      : `${tail.transactions.length} local transaction(s), ${tail.rows} row(s), committed after the cloud's watermark ${formatLsn(tail.watermark)} never reached the cloud. NOT applied anywhere.`;
  return `${head}${tail.complete ? '' : ' MAY BE INCOMPLETE: see warnings.'}`;
}

/**
 * The report as JSON text: the summary fields pretty-printed, then one
 * relation and one transaction per line (tuples are arrays aligned with their
 * relation's columns; 0 marks an unchanged TOAST value, as on the wire).
 */
export function encodeStrandedTailReport(tail: StrandedTail, meta: { epoch: number; savedAt: string }): string {
  const cov = tail.coverage;
  const head = {
    format: STRANDED_TAIL_REPORT_FORMAT,
    version: STRANDED_TAIL_REPORT_VERSION,
    summary: summary(tail),
    stream: tail.stream,
    epoch: meta.epoch,
    savedAt: meta.savedAt,
    collectedAt: tail.collectedAt,
    slot: tail.slot,
    publication: tail.publication,
    watermark: formatLsn(tail.watermark),
    slotConfirmedFlushLsn: formatLsn(tail.slotConfirmedFlushLsn),
    targetFencingEpoch: tail.targetFencingEpoch,
    complete: tail.complete,
    warnings: tail.warnings,
    coverage: {
      onlyInStaleBatches: cov.onlyInStaleBatches,
      onlyInSlot: cov.onlyInSlot,
      inBoth: cov.inBoth,
      staleBatches: cov.staleBatches,
      staleBatchesWithoutTransactions: cov.staleBatchesWithoutTransactions,
      unreadableStaleBatches: cov.unreadableStaleBatches.map((u) => ({ id: u.id, lsnPrev: formatLsn(u.lsnPrev), lsnLast: formatLsn(u.lsnLast), problem: u.problem })),
      alreadyApplied: cov.alreadyApplied,
      uncovered: cov.uncovered.map((r) => ({ after: formatLsn(r.after), upTo: formatLsn(r.upTo) })),
      differingCopies: cov.differingCopies.map(formatLsn),
    },
    rows: tail.rows,
    totals: tail.totals,
  };
  let relations: ChangeBatchWire['relations'] = [];
  let transactions: string[] = [];
  if (tail.transactions.length > 0) {
    const wire = toWireJson(pseudoBatch(tail.stream, tail.relations, tail.transactions, tail.collectedAt));
    relations = wire.relations;
    transactions = wire.transactions.map((tx, i) => {
      const { changes, ...rest } = tx;
      return JSON.stringify({ ...rest, foundIn: tail.transactions[i]!.foundIn, changes });
    });
  } else if (tail.relations.length > 0) {
    throw new ValidationError('a stranded tail without transactions must have no relations');
  }
  const list = (items: string[]): string => (items.length === 0 ? '[]' : `[\n    ${items.join(',\n    ')}\n  ]`);
  const headText = JSON.stringify(head, null, 2);
  return `${headText.slice(0, -2)},\n  "relations": ${list(relations.map((r) => JSON.stringify(r)))},\n  "transactions": ${list(transactions)}\n}\n`;
}

const count = z.int().min(0);
const isoTime = z.iso.datetime({ offset: true });

const reportSchema = z.strictObject({
  format: z.literal(STRANDED_TAIL_REPORT_FORMAT),
  version: z.literal(STRANDED_TAIL_REPORT_VERSION),
  summary: z.string(),
  stream: z.string().regex(STREAM_ID_PATTERN),
  epoch: count,
  savedAt: isoTime,
  collectedAt: isoTime,
  slot: z.string().min(1),
  publication: z.string().min(1),
  watermark: lsnText,
  slotConfirmedFlushLsn: lsnText,
  targetFencingEpoch: count,
  complete: z.boolean(),
  warnings: z.array(z.string()),
  coverage: z.strictObject({
    onlyInStaleBatches: count,
    onlyInSlot: count,
    inBoth: count,
    staleBatches: count,
    staleBatchesWithoutTransactions: count,
    unreadableStaleBatches: z.array(z.strictObject({ id: z.string(), lsnPrev: lsnText, lsnLast: lsnText, problem: z.string() })),
    alreadyApplied: count,
    uncovered: z.array(z.strictObject({ after: lsnText, upTo: lsnText })),
    differingCopies: z.array(lsnText),
  }),
  rows: count,
  totals: z.array(z.strictObject({ schema: z.string(), name: z.string(), inserts: count, updates: count, deletes: count, truncates: count })),
  relations: z.array(z.unknown()),
  transactions: z.array(
    z.strictObject({
      xid: z.unknown(),
      commitLsn: z.unknown(),
      endLsn: z.unknown(),
      commitTime: z.unknown(),
      foundIn: z.array(z.enum(STRANDED_SOURCES)).min(1),
      changes: z.unknown(),
    }),
  ),
});

/**
 * Reads a saved JSON report back (the value of JSON.parse), checking every
 * transaction with the ChangeBatch contract and the totals and coverage
 * counts against the transactions.
 * @throws ValidationError naming the first problems.
 */
export function parseStrandedTailReport(json: unknown): StrandedTailReport {
  const parsed = reportSchema.safeParse(json);
  if (!parsed.success) {
    const listed = parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(top level)'}: ${i.message}`);
    throw new ValidationError(`invalid stranded-tail report: ${listed.join('; ')}`);
  }
  const r = parsed.data;
  let relations: RelationDescriptor[];
  let transactions: StrandedTransaction[] = [];
  if (r.transactions.length === 0) {
    const rel = z.array(relationDescriptorSchema).safeParse(r.relations);
    if (!rel.success) throw new ValidationError(`invalid stranded-tail report: relations: ${rel.error.issues[0]?.message ?? 'invalid'}`);
    relations = rel.data;
  } else {
    const first = r.transactions[0]!;
    const last = r.transactions[r.transactions.length - 1]!;
    let batch: ChangeBatch;
    try {
      batch = parseChangeBatch({
        v: CHANGE_BATCH_VERSION,
        kind: 'changes',
        stream: r.stream,
        epoch: 0,
        seq: 0,
        lsnPrev: first.commitLsn,
        lsnFirst: first.commitLsn,
        lsnLast: last.endLsn,
        createdAt: r.collectedAt,
        relations: r.relations,
        transactions: r.transactions.map(({ foundIn: _foundIn, ...tx }) => tx),
      });
    } catch (err) {
      throw new ValidationError(`invalid stranded-tail report: ${describeError(err).replace(/^invalid ChangeBatch/, 'relations or transactions')}`, { cause: err });
    }
    relations = batch.relations;
    transactions = batch.transactions.map((tx, i) => ({ ...tx, foundIn: r.transactions[i]!.foundIn }));
  }
  const problems: string[] = [];
  const { totals, rows } = strandedTailTotals(relations, transactions);
  if (rows !== r.rows) problems.push(`rows is ${r.rows} but the transactions change ${rows}`);
  if (JSON.stringify(totals) !== JSON.stringify(r.totals)) problems.push('totals do not match the transactions');
  const n = (pred: (t: StrandedTransaction) => boolean) => transactions.filter(pred).length;
  if (n((t) => t.foundIn.length === 2) !== r.coverage.inBoth) problems.push('coverage.inBoth does not match foundIn');
  if (n((t) => t.foundIn.length === 1 && t.foundIn[0] === 'local-slot') !== r.coverage.onlyInSlot) problems.push('coverage.onlyInSlot does not match foundIn');
  if (n((t) => t.foundIn.length === 1 && t.foundIn[0] === 'stale-batches') !== r.coverage.onlyInStaleBatches) problems.push('coverage.onlyInStaleBatches does not match foundIn');
  if (transactions.some((t) => new Set(t.foundIn).size !== t.foundIn.length)) problems.push('a foundIn lists a source twice');
  if (transactions.some((t) => t.endLsn <= r.watermark)) problems.push('a transaction ends at or before the watermark');
  if (r.complete !== (r.coverage.uncovered.length === 0)) problems.push('complete does not match coverage.uncovered');
  if (problems.length > 0) throw new ValidationError(`inconsistent stranded-tail report: ${problems.join('; ')}`);
  const tail: StrandedTail = {
    stream: r.stream,
    slot: r.slot,
    publication: r.publication,
    collectedAt: r.collectedAt,
    watermark: r.watermark,
    slotConfirmedFlushLsn: r.slotConfirmedFlushLsn,
    targetFencingEpoch: r.targetFencingEpoch,
    complete: r.complete,
    relations,
    transactions,
    totals,
    rows,
    coverage: r.coverage,
    warnings: r.warnings,
  };
  return { tail, epoch: r.epoch, savedAt: r.savedAt };
}

// ---------------------------------------------------------------------------
// Saving

export interface SaveStrandedTailOptions {
  readonly objectStore: ObjectStore;
  /** storage.reportsPrefix: '' or a relative prefix ending in '/'. */
  readonly prefix: string;
  readonly stream: string;
  /** The epoch of the failover this tail belongs to. */
  readonly epoch: number;
  readonly now: Date;
  readonly logger?: Logger;
}

export interface SavedStrandedTail {
  readonly jsonUri: string;
  readonly sqlUri: string;
  readonly transactions: number;
  readonly rows: number;
}

/** `<prefix><stream>/stranded-tail-epoch-<epoch>-<time>` (time like 20261123T133102.123Z: object keys allow no ':'). */
export function strandedTailKey(prefix: string, stream: string, epoch: number, now: Date): string {
  return `${prefix}${stream}/stranded-tail-epoch-${epoch}-${now.toISOString().replace(/[-:]/g, '')}`;
}

/**
 * Stores the report as `<key>.json` and `<key>.sql` (create-only). A tail
 * without transactions is stored too: it is the evidence that nothing was
 * stranded. Saving the same tail at the same time again is a no-op.
 */
export async function saveStrandedTail(tail: StrandedTail, opts: SaveStrandedTailOptions): Promise<SavedStrandedTail> {
  if (!/^(?:[^/].*\/)?$/.test(opts.prefix)) {
    throw new ValidationError(`report prefix ${JSON.stringify(opts.prefix)} must be empty or a relative prefix ending in '/', e.g. 'reports/'`);
  }
  if (opts.stream !== tail.stream) throw new ValidationError(`the tail is of stream ${tail.stream}, not ${opts.stream}`);
  if (!Number.isSafeInteger(opts.epoch) || opts.epoch < 0) throw new ValidationError(`epoch must be an integer ≥ 0, got ${String(opts.epoch)}`);
  if (!(opts.now instanceof Date) || Number.isNaN(opts.now.getTime())) throw new ValidationError('now must be a valid Date');
  const log = (opts.logger ?? createLogger({ component: 'stranded-tail' })).child({ stream: tail.stream });
  const key = strandedTailKey(opts.prefix, opts.stream, opts.epoch, opts.now);
  const json = encodeStrandedTailReport(tail, { epoch: opts.epoch, savedAt: opts.now.toISOString() });
  const sql = renderStrandedTailSql(tail);
  const jsonPut = await opts.objectStore.putIfAbsent(`${key}.json`, Buffer.from(json, 'utf8'));
  const sqlPut = await opts.objectStore.putIfAbsent(`${key}.sql`, Buffer.from(sql, 'utf8'));
  log.notice(`saved the stranded-tail report: ${tail.transactions.length} transaction(s), ${tail.rows} row(s), NOT applied`, {
    jsonUri: jsonPut.uri,
    sqlUri: sqlPut.uri,
    complete: tail.complete,
  });
  return { jsonUri: jsonPut.uri, sqlUri: sqlPut.uri, transactions: tail.transactions.length, rows: tail.rows };
}

// ---------------------------------------------------------------------------
// Applying, on request

export interface ApplyStrandedTailOptions {
  /** Replay TRUNCATEs (they also delete what the serving side wrote since the failover). Default false: refused. */
  readonly runTruncates?: boolean;
  /** Replay captured schema changes. Default false: refused. */
  readonly runSchemaChanges?: boolean;
  /** Start at the transaction with this commit LSN (the ones before were applied by an earlier run). */
  readonly fromCommitLsn?: Lsn;
  readonly logger?: Logger;
}

export interface AppliedStrandedTail {
  readonly appliedTransactions: number;
  readonly appliedRows: number;
  /** Transactions before fromCommitLsn, not run now. */
  readonly skippedBefore: number;
}

function describeTx(tx: { xid: number; commitLsn: Lsn }, n: number, total: number): string {
  return `transaction ${n} of ${total} (xid ${tx.xid}, commit LSN ${formatLsn(tx.commitLsn)})`;
}

/**
 * Applies the tail to `client` (the side that serves now), one database
 * transaction per source transaction, in commit order; stops at the first
 * error, naming the transaction. TRUNCATE and schema changes are refused
 * before anything runs unless the options allow them.
 * @throws ValidationError (refused before running); PermanentError or
 *   RetryableError naming the failing transaction (those before it stay committed).
 */
export async function applyStrandedTail(client: StrandedTailClient, tail: StrandedTail, opts: ApplyStrandedTailOptions = {}): Promise<AppliedStrandedTail> {
  const log = (opts.logger ?? createLogger({ component: 'stranded-tail' })).child({ stream: tail.stream });
  const plans = planStrandedTailSql(tail);
  let start = 0;
  if (opts.fromCommitLsn !== undefined) {
    start = plans.findIndex((p) => p.commitLsn === opts.fromCommitLsn);
    if (start < 0) throw new ValidationError(`the stranded tail has no transaction with commit LSN ${formatLsn(opts.fromCommitLsn)}`);
  }
  const refused = (kind: StrandedStatement['kind']) =>
    plans.slice(start).flatMap((p, i) => (p.statements.some((s) => s.kind === kind) ? [describeTx(p, start + i + 1, plans.length)] : []));
  const truncates = opts.runTruncates ? [] : refused('truncate');
  const ddl = opts.runSchemaChanges ? [] : refused('ddl');
  if (truncates.length > 0 || ddl.length > 0) {
    throw new ValidationError(
      `the stranded tail has ${truncates.length > 0 ? `a TRUNCATE in ${truncates.join(', ')}` : ''}${truncates.length > 0 && ddl.length > 0 ? ' and ' : ''}` +
        `${ddl.length > 0 ? `a schema change in ${ddl.join(', ')}` : ''}; nothing was applied`,
      {
        remedy:
          'Review them in the SQL report. Allow them explicitly (runTruncates / runSchemaChanges), knowing a TRUNCATE also deletes what the serving side wrote since the failover, ' +
          'or edit the SQL report and run it by hand.',
      },
    );
  }
  if (!tail.complete) log.warn('applying a stranded tail that may be incomplete', { uncovered: tail.coverage.uncovered.map(formatRange) });

  let appliedRows = 0;
  for (let i = start; i < plans.length; i++) {
    const plan = plans[i]!;
    const which = describeTx(plan, i + 1, plans.length);
    try {
      await client.query('BEGIN');
      let rows = 0;
      for (const statement of plan.statements) {
        if (statement.kind === 'note') {
          log.info(`${which}: ${statement.comment.join(' ')}`);
          continue;
        }
        // The source session's search_path for a schema change, then back to this session's.
        const setPath = statement.kind === 'ddl' && statement.searchPath != null;
        const saved = setPath ? (await client.query<{ path: string }>("SELECT current_setting('search_path') AS path")).rows[0]?.path : undefined;
        if (setPath) await client.query("SELECT set_config('search_path', $1, true)", [statement.searchPath]);
        // Extended protocol: exactly one statement per call.
        await client.query({ text: statement.sql, queryMode: 'extended' } as pg.QueryConfig);
        if (setPath) await client.query("SELECT set_config('search_path', $1, true)", [saved ?? '']);
        if (statement.kind === 'row') rows++;
      }
      await client.query('COMMIT');
      appliedRows += rows;
      log.debug(`applied ${which}`, { rows });
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      const applied = i - start;
      const classified = sqlError(err, `applying the stranded tail stopped at ${which}`);
      const details = { ...classified.details, failedCommitLsn: formatLsn(plan.commitLsn), xid: plan.xid, appliedTransactions: applied };
      const remedy =
        `${applied} transaction(s) before it were applied and committed; ${which} was rolled back and nothing after it ran. ` +
        `Resolve the conflict on this database (or edit the SQL report), then apply again from commit LSN ${formatLsn(plan.commitLsn)}.`;
      throw classified instanceof RetryableError
        ? new RetryableError(classified.message, { cause: err, details, remedy })
        : new PermanentError(classified.message, { cause: err, details, remedy });
    }
  }
  const applied = plans.length - start;
  log.notice(`applied ${applied} stranded transaction(s), ${appliedRows} row statement(s)`, { skippedBefore: start });
  return { appliedTransactions: applied, appliedRows, skippedBefore: start };
}

