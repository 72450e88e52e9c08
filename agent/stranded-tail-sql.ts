// Pure SQL rendering of a stranded tail (agent/stranded-tail.ts): one script an
// operator can read, review and, only if they decide to, run against the side
// that serves now. No I/O here; applyStrandedTail runs the same statements.
//
// Decisions:
// - Plain statements by replica identity, values cast from their exact text
//   with the column's format_type() name ('12.50'::numeric(10,2)), every
//   identifier quoted, every literal escaped. No upserts: the serving side
//   has taken writes of its own since the failover, so a conflict is a
//   question for a human, never something to paper over.
// - An UPDATE or DELETE sits in a small DO block that raises unless it
//   changed exactly one row: a missing row means the serving side changed it
//   since the failover, and a plain statement would let that pass silently
//   (psql only prints "UPDATE 0"). `#variable_conflict use_column` keeps a
//   column named like a PL/pgSQL variable (found, changed) a column.
// - Updates SET only what changed: columns with a new value, minus unchanged
//   TOAST, minus the key when it did not change (keeps GENERATED ALWAYS
//   identity keys out of SET). REPLICA IDENTITY FULL rows are found by every
//   old column; exactly one of several identical rows is taken, by ctid.
// - Inserts use OVERRIDING SYSTEM VALUE so GENERATED ALWAYS identity columns
//   get the local values (a no-op for other tables).
// - TRUNCATE and captured schema changes (rows of lifeboat.ddl_log) are
//   written COMMENTED OUT with a warning: a TRUNCATE replayed on the serving
//   side would also delete every row written there since the failover, and
//   the serving side may already have the schema change. A human decides;
//   applyStrandedTail refuses them unless told to run them.
// - Triggers and foreign keys fire (no session_replication_role = replica):
//   the serving side has diverged, and its constraints are the check that
//   these changes still fit.
// - Every comment that shows data (names, DDL) has its line breaks escaped:
//   a table name with a newline must not turn the rest of a comment into SQL.

import pg from 'pg';
import { UNCHANGED_TOAST, qualifiedName, type Change, type ColumnDescriptor, type RelationDescriptor, type Tuple, type TupleValue } from '../core/change-batch.ts';
import { PermanentError } from '../core/errors.ts';
import { formatLsn, type Lsn } from '../core/lsn.ts';
import { isDdlLogRelation, planDdlReplay, quoteTable, sqlTypeName } from '../functions/apply-sql.ts';
import type { StrandedSource, StrandedTail, StrandedTransaction } from './stranded-tail.ts';

/**
 * What one rendered statement is:
 *   row       INSERT, or an UPDATE/DELETE in its checking DO block
 *   truncate  written commented out; run only on request
 *   ddl       a captured schema change, commented out; run only on request
 *   note      nothing to run (an update that changes no value), only a comment
 */
export type StrandedStatementKind = 'row' | 'truncate' | 'ddl' | 'note';

export interface StrandedStatement {
  readonly kind: StrandedStatementKind;
  /** Comment lines shown above it (without "-- ", already safe for a comment). */
  readonly comment: readonly string[];
  /** One SQL statement, without the trailing ';' ('' for a note). */
  readonly sql: string;
  /** ddl: the search_path the source session had (set while it runs). */
  readonly searchPath?: string | null;
}

export interface StrandedTransactionSql {
  readonly xid: number;
  readonly commitLsn: Lsn;
  readonly endLsn: Lsn;
  readonly commitTime: string;
  readonly foundIn: readonly StrandedSource[];
  readonly statements: readonly StrandedStatement[];
}

// Types without a btree equality operator: FULL identity compares them as
// text (the same list as functions/apply-sql.ts uses).
const NO_EQUALITY = /^(?:pg_catalog\.)?(?:json|xml|point|line|lseg|box|path|polygon|circle)(?:\[\])*$/;

/** Safe inside a `--` comment: PostgreSQL ends a comment at \n or \r, so control characters are shown escaped. */
export function commentSafe(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** `"schema"."name"` as shown in comments and messages. */
function shownTable(relation: RelationDescriptor): string {
  return commentSafe(quoteTable(relation));
}

const SOURCE_NAMES: Record<StrandedSource, string> = {
  'local-slot': 'the local slot',
  'stale-batches': 'lifeboat.stale_batches',
};

export function describeFoundIn(foundIn: readonly StrandedSource[]): string {
  return foundIn.map((s) => SOURCE_NAMES[s]).join(' and ');
}

/** `'text'::type`, or NULL. */
function literal(value: TupleValue | undefined, column: ColumnDescriptor, table: string): string {
  if (value === null || value === undefined) return 'NULL';
  if (value === UNCHANGED_TOAST) throw new PermanentError(`bug: unchanged TOAST value of ${column.name} reached a literal`);
  return `${pg.escapeLiteral(value)}::${sqlTypeName(column, table)}`;
}

function quoteColumn(column: ColumnDescriptor): string {
  return pg.escapeIdentifier(column.name);
}

/** `"c" = 'v'::t` for a key column, `"c" IS NOT DISTINCT FROM …` for a FULL-identity column. */
function matchColumn(column: ColumnDescriptor, value: TupleValue | undefined, table: string, full: boolean): string {
  const col = quoteColumn(column);
  if (value === null || value === undefined) return `${col} IS NULL`;
  const lit = literal(value, column, table);
  if (!full) return `${col} = ${lit}`;
  return NO_EQUALITY.test(column.type) ? `${col}::text IS NOT DISTINCT FROM (${lit})::text` : `${col} IS NOT DISTINCT FROM ${lit}`;
}

/** A dollar-quote tag that does not occur in `body`. */
function dollarTag(body: string): string {
  let tag = '$lifeboat$';
  for (let i = 1; body.includes(tag); i++) tag = `$lifeboat_${i}$`;
  return tag;
}

/**
 * Runs `statement` and raises unless it changed exactly one row. The message
 * names the transaction and the table, and why this happens.
 */
function checkedOneRow(statement: string, verb: 'UPDATE' | 'DELETE', relation: RelationDescriptor, tx: StrandedTransaction): string {
  const where = `stranded tail: transaction xid ${tx.xid} (commit LSN ${formatLsn(tx.commitLsn)}): the ${verb} of ${qualifiedName(relation)} changed `;
  const why = ' rows instead of 1: the serving side changed or removed this row since the failover';
  const body =
    ` #variable_conflict use_column\nDECLARE changed bigint;\nBEGIN\n  ${statement};\n  GET DIAGNOSTICS changed = ROW_COUNT;\n` +
    `  IF changed <> 1 THEN RAISE EXCEPTION USING MESSAGE = ${pg.escapeLiteral(where)} || changed || ${pg.escapeLiteral(why)}; END IF;\nEND `;
  const tag = dollarTag(body);
  return `DO ${tag}${body}${tag}`;
}

/** WHERE clause locating one row: by key columns, or by the whole old row (FULL). */
function locate(relation: RelationDescriptor, locator: Tuple, full: boolean): string {
  const table = qualifiedName(relation);
  const parts: string[] = [];
  relation.columns.forEach((column, i) => {
    if (full || column.key) parts.push(matchColumn(column, locator[i], table, full));
  });
  if (!full) return parts.join(' AND ');
  // Of several identical rows, exactly one (tableoid too: ctids repeat across partitions).
  const t = quoteTable(relation);
  return `(tableoid, ctid) = (SELECT tableoid, ctid FROM ${t} WHERE ${parts.length > 0 ? parts.join(' AND ') : 'true'} LIMIT 1)`;
}

function insertStatement(relation: RelationDescriptor, row: Tuple): string {
  const t = quoteTable(relation);
  if (relation.columns.length === 0) return `INSERT INTO ${t} DEFAULT VALUES`;
  const table = qualifiedName(relation);
  const cols = relation.columns.map(quoteColumn).join(', ');
  const values = relation.columns.map((c, i) => literal(row[i], c, table)).join(', ');
  return `INSERT INTO ${t} (${cols}) OVERRIDING SYSTEM VALUE VALUES (${values})`;
}

function rowStatement(change: Exclude<Change, { op: 'truncate' }>, relation: RelationDescriptor, tx: StrandedTransaction): StrandedStatement {
  const t = quoteTable(relation);
  const table = qualifiedName(relation);
  const full = relation.replicaIdentity === 'full';
  if (change.op === 'insert') return { kind: 'row', comment: [], sql: insertStatement(relation, change.new) };

  if (change.op === 'delete') {
    const locator = full ? change.old : change.key;
    if (locator === undefined) throw new PermanentError(`bug: a delete on ${table} without ${full ? 'old' : 'key'} passed validation`);
    return { kind: 'row', comment: [], sql: checkedOneRow(`DELETE FROM ${t} WHERE ${locate(relation, locator, full)}`, 'DELETE', relation, tx) };
  }

  // update
  const keyChanged = change.key !== undefined;
  const locator = full ? change.old : (change.key ?? change.new);
  if (locator === undefined) throw new PermanentError(`bug: an update on ${table} without its old row passed validation`);
  const set: string[] = [];
  relation.columns.forEach((column, i) => {
    const value = change.new[i];
    if (value === UNCHANGED_TOAST || value === undefined) return; // unchanged TOAST: left as it is
    if (full) {
      if (change.old !== undefined && change.old[i] === value) return; // this column did not change
    } else if (column.key && !keyChanged) {
      return; // the key did not change; it only locates the row
    }
    set.push(`${quoteColumn(column)} = ${literal(value, column, table)}`);
  });
  if (set.length === 0) {
    return {
      kind: 'note',
      comment: [`UPDATE of ${shownTable(relation)} that changes no value (every column is unchanged or unchanged TOAST): nothing to run.`],
      sql: '',
    };
  }
  return { kind: 'row', comment: [], sql: checkedOneRow(`UPDATE ${t} SET ${set.join(', ')} WHERE ${locate(relation, locator, full)}`, 'UPDATE', relation, tx) };
}

function truncateStatement(change: Extract<Change, { op: 'truncate' }>, relations: readonly RelationDescriptor[]): StrandedStatement {
  const rels = change.rels.map((i) => relationAt(relations, i));
  const sql = `TRUNCATE ONLY ${rels.map(quoteTable).join(', ')}${change.restartIdentity ? ' RESTART IDENTITY' : ''}${change.cascade ? ' CASCADE' : ''}`;
  return {
    kind: 'truncate',
    comment: [
      `WARNING: the local side ran this TRUNCATE of ${rels.map(shownTable).join(', ')}. It is commented out: replayed here it would also`,
      'delete every row the serving side wrote since the failover. Uncomment it only if that is what you want.',
    ],
    sql,
  };
}

/** A row inserted into lifeboat.ddl_log: the schema change it records, as commented-out statements. */
function ddlStatements(relation: RelationDescriptor, row: Tuple): StrandedStatement[] {
  const value = (name: string): string | null => {
    const i = relation.columns.findIndex((c) => c.name === name);
    const v = i < 0 ? null : row[i];
    return typeof v === 'string' ? v : null;
  };
  const ddl = value('ddl');
  const id = value('id') ?? '?';
  const what = [value('command_tag'), value('object_identity')].filter((v) => v !== null).join(' ');
  const header = [
    `WARNING: schema change captured on the local side (lifeboat.ddl_log id ${commentSafe(id)}${what ? `, ${commentSafe(what)}` : ''}). It is commented out:`,
    'the serving side may already have it. If it lacks it, run it (with the search_path shown) before the statements below.',
  ];
  if (ddl === null) {
    return [{ kind: 'note', comment: [...header, 'The captured row has no ddl text; compare the schemas by hand.'], sql: '' }];
  }
  const plan = planDdlReplay(ddl);
  const searchPath = value('search_path');
  const notes = [
    ...(searchPath !== null ? [`search_path was ${commentSafe(searchPath)}`] : []),
    ...plan.skipped.map((s) => `left out (${s.why}): ${commentSafe(s.statement.slice(0, 200))}`),
    ...plan.rewritten.map((s) => `changed (${s.why}): ${commentSafe(s.statement.slice(0, 200))}`),
  ];
  if (plan.run.length === 0) return [{ kind: 'note', comment: [...header, ...notes, 'Nothing of it is a schema change to replay.'], sql: '' }];
  return plan.run.map((sql, i) => ({ kind: 'ddl' as const, comment: i === 0 ? [...header, ...notes] : [], sql, searchPath }));
}

function relationAt(relations: readonly RelationDescriptor[], index: number): RelationDescriptor {
  const relation = relations[index];
  if (relation === undefined) throw new PermanentError(`bug: relation index ${index} out of range (${relations.length} relations)`);
  return relation;
}

/** The statements of every transaction, in commit order. */
export function planStrandedTailSql(tail: Pick<StrandedTail, 'relations' | 'transactions'>): StrandedTransactionSql[] {
  return tail.transactions.map((tx) => {
    const statements: StrandedStatement[] = [];
    for (const change of tx.changes) {
      if (change.op === 'truncate') {
        statements.push(truncateStatement(change, tail.relations));
        continue;
      }
      const relation = relationAt(tail.relations, change.rel);
      if (isDdlLogRelation(relation) && change.op === 'insert') statements.push(...ddlStatements(relation, change.new));
      else statements.push(rowStatement(change, relation, tx));
    }
    return { xid: tx.xid, commitLsn: tx.commitLsn, endLsn: tx.endLsn, commitTime: tx.commitTime, foundIn: tx.foundIn, statements };
  });
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function header(tail: StrandedTail): string[] {
  const w = formatLsn(tail.watermark);
  const c = tail.coverage;
  const lines = [
    `Lifeboat stranded-tail report, stream ${tail.stream}`,
    '',
    'NOT APPLIED: nothing in this file has been run anywhere.',
    '',
    `These transactions committed on the LOCAL database after the cloud's applied watermark ${w}`,
    'and never reached the cloud before the failover. Nothing was discarded: they are all here.',
    `Collected at ${tail.collectedAt} from replication slot ${commentSafe(pg.escapeIdentifier(tail.slot))} (confirmed_flush_lsn ${formatLsn(tail.slotConfirmedFlushLsn)},`,
    `publication ${commentSafe(pg.escapeIdentifier(tail.publication))}) and the target's lifeboat.stale_batches; target fencing epoch ${tail.targetFencingEpoch}.`,
    '',
  ];
  if (tail.transactions.length === 0) {
    lines.push(`No stranded transactions: every local transaction up to the watermark ${w} reached the cloud, and none came after it.`);
  } else {
    lines.push(`${plural(tail.transactions.length, 'transaction')}, ${plural(tail.rows, 'row')}:`);
    for (const t of tail.totals) {
      lines.push(
        `  ${commentSafe(`${pg.escapeIdentifier(t.schema)}.${pg.escapeIdentifier(t.name)}`)}: ${plural(t.inserts, 'insert')}, ${plural(t.updates, 'update')}, ` +
          `${plural(t.deletes, 'delete')}, ${plural(t.truncates, 'truncate')}`,
      );
    }
    lines.push(`Found only in lifeboat.stale_batches: ${c.onlyInStaleBatches}; only in the local slot: ${c.onlyInSlot}; in both: ${c.inBoth}.`);
  }
  lines.push(tail.complete ? 'Complete: every position after the watermark is covered by the slot or by lifeboat.stale_batches.' : 'MAY BE INCOMPLETE: see the warnings.');
  for (const warning of tail.warnings) lines.push(`WARNING: ${commentSafe(warning)}`);
  if (tail.transactions.length > 0) {
    lines.push(
      '',
      'To apply (only if you decide to): review every transaction, then run this file against the database that',
      'serves now, for example:  psql -v ON_ERROR_STOP=1 -f <this file> "<serving database URL>"',
      'Each source transaction runs in its own BEGIN/COMMIT, in commit order. An UPDATE or DELETE that does not',
      'change exactly one row raises an error, as does an INSERT whose key exists: the serving side changed that',
      'data since the failover. psql then stops; the transactions above the failing one stay committed. Resolve',
      'the conflict, delete the committed transactions from a copy of this file, and run the rest.',
      'TRUNCATE and schema changes are commented out (see their warnings). Triggers and foreign keys fire: rows',
      'written by local triggers are already in this file, so check that the same triggers do not add them twice.',
    );
  }
  return lines;
}

/** The whole report as one SQL script (see the header of this file). */
export function renderStrandedTailSql(tail: StrandedTail): string {
  const out: string[] = header(tail).map((line) => (line === '' ? '--' : `-- ${line}`));
  out.push('', "SET client_encoding = 'UTF8';");
  const plans = planStrandedTailSql(tail);
  plans.forEach((tx, n) => {
    out.push(
      '',
      `-- Transaction ${n + 1} of ${plans.length}: xid ${tx.xid}, commit LSN ${formatLsn(tx.commitLsn)} (end ${formatLsn(tx.endLsn)}), ` +
        `committed ${tx.commitTime}, found in ${describeFoundIn(tx.foundIn)}`,
      'BEGIN;',
    );
    for (const statement of tx.statements) {
      for (const line of statement.comment) out.push(`-- ${line}`);
      if (statement.kind === 'row') {
        out.push(`${statement.sql};`);
      } else if (statement.kind === 'truncate') {
        out.push(`-- ${commentSafe(statement.sql)};`);
      } else if (statement.kind === 'ddl') {
        if (statement.searchPath != null) out.push(`-- SELECT set_config('search_path', ${commentSafe(pg.escapeLiteral(statement.searchPath))}, true);`);
        // Each line commented on its own; \r or \n inside a line would end the comment.
        for (const line of `${statement.sql};`.split(/\r\n|\r|\n/)) out.push(`-- ${commentSafe(line)}`);
      }
    }
    out.push('COMMIT;');
  });
  out.push('', `-- End of the stranded-tail report (${plural(plans.length, 'transaction')}).`, '');
  return out.join('\n');
}
