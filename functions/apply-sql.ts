// Pure SQL building for the apply engine: turns the changes of a ChangeBatch
// into a few set-based statements. No I/O here; apply-engine.ts runs them.
//
// Decisions:
// - Values stay PostgreSQL text end to end: every column travels as a text[]
//   parameter, is unnested into text columns and cast on the server with the
//   descriptor's type name (`u.v3::numeric(40,10)`), so values come out exact.
//   Casting the unnested text (not `$1::integer[]`) also works for array
//   columns ('{1,2}'::integer[]).
// - A type name is spliced into SQL, so it must match format_type()'s grammar
//   (identifiers plain or double-quoted, optionally schema-qualified, words,
//   one modifier list, `with[out] time zone`, `[]` suffixes). Anything else is
//   a ValidationError: nothing in a message can inject SQL.
// - Grouping: only CONSECUTIVE changes of the same table and op (and, for
//   updates, the same SET list and identity) share a statement, so commit
//   order is kept trivially. A group is also cut when a row it would touch is
//   already touched by the group (the same row updated twice, a PK change
//   followed by an update of the new key, identical FULL-identity rows):
//   one UPDATE … FROM touches a row at most once and sees the table as it was
//   before the statement, so such rows need separate statements.
// - Inserts are plain INSERTs, not upserts: the LSN chain already makes every
//   transaction apply once, so a conflict means the target diverged, and that
//   must halt the stream rather than be papered over.
// - Updates and deletes report their row count; the engine checks it equals
//   the group size (a missing row = divergence = halt, never a silent skip).
// - REPLICA IDENTITY FULL: rows are found by every old column with IS NOT
//   DISTINCT FROM (compared as text for types without an equality operator,
//   e.g. json, point), one ctid per old tuple (DISTINCT ON), so of several
//   identical rows exactly one is updated or deleted per change.

import pg from 'pg';
import {
  type Change,
  type ColumnDescriptor,
  type RelationDescriptor,
  type Tuple,
  type TupleValue,
  UNCHANGED_TOAST,
  qualifiedName,
} from '../core/change-batch.ts';
import { ValidationError } from '../core/errors.ts';

/** A statement with its parameters: each is one column as a text[] literal (see textArrayLiteral). */
export interface SqlStatement {
  readonly text: string;
  readonly values: string[];
}

const NEEDS_ESCAPE = /["\\]/;

/**
 * `{"a","b\\"c",NULL}`: a text[] literal. Built here rather than by pg's
 * array serializer, which was most of the client-side cost of a batch.
 */
export function textArrayLiteral(values: readonly (string | null)[]): string {
  const parts = new Array<string>(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) parts[i] = 'NULL';
    else parts[i] = NEEDS_ESCAPE.test(v) ? `"${v.replace(/[\\"]/g, '\\$&')}"` : `"${v}"`;
  }
  return `{${parts.join(',')}}`;
}

export const LIFEBOAT_SCHEMA = 'lifeboat';
export const DDL_LOG_TABLE = 'ddl_log';

export const quoteIdent = (name: string): string => pg.escapeIdentifier(name);

/** `"schema"."name"`. */
export function quoteTable(relation: Pick<RelationDescriptor, 'schema' | 'name'>): string {
  return `${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}`;
}

const IDENT = String.raw`(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*|"(?:[^"\u0000]|"")+")`;
const TYPE_NAME = new RegExp(
  String.raw`^${IDENT}(?:\.${IDENT})?(?: [a-z]+)*(?:\(\d+(?:,\d+)?\))?(?: with(?:out)? time zone)?(?:\[\])*$`,
);

/** True when `type` has format_type()'s shape and so is safe to splice into SQL. */
export function isSafeTypeName(type: string): boolean {
  return type.length <= 512 && TYPE_NAME.test(type);
}

/** The type name, checked (see header). */
export function sqlTypeName(column: Pick<ColumnDescriptor, 'name' | 'type'>, table = ''): string {
  if (!isSafeTypeName(column.type)) {
    throw new ValidationError(
      `column "${column.name}"${table ? ` of ${table}` : ''} has type name ${JSON.stringify(column.type)}, which is not a format_type() type name`,
      { remedy: 'The agent must send type names exactly as format_type(oid, typmod) prints them.', details: { column: column.name, type: column.type } },
    );
  }
  return column.type;
}

// Types without a btree equality operator: FULL identity compares them as text.
const NO_EQUALITY = /^(?:pg_catalog\.)?(?:json|xml|point|line|lseg|box|path|polygon|circle)(?:\[\])*$/;

// ---------------------------------------------------------------------------
// Grouping

export type ChangeGroup =
  | { readonly kind: 'insert'; readonly rel: number; readonly rows: Tuple[] }
  | {
      readonly kind: 'update';
      readonly rel: number;
      /** 'key': located by key columns; 'full': by every old column. */
      readonly identity: 'key' | 'full';
      /** Column indices in the SET list (unchanged TOAST left out). */
      readonly setColumns: readonly number[];
      readonly rows: { readonly locator: Tuple; readonly new: Tuple }[];
    }
  | { readonly kind: 'delete'; readonly rel: number; readonly identity: 'key' | 'full'; readonly locators: Tuple[] }
  | { readonly kind: 'truncate'; readonly rels: readonly number[]; readonly cascade: boolean; readonly restartIdentity: boolean }
  /** An insert into lifeboat.ddl_log: a DDL statement to run at this position. */
  | { readonly kind: 'ddl'; readonly rel: number; readonly row: Tuple };

export function isDdlLogRelation(relation: Pick<RelationDescriptor, 'schema' | 'name'>): boolean {
  return relation.schema === LIFEBOAT_SCHEMA && relation.name === DDL_LOG_TABLE;
}

function keyIndices(relation: RelationDescriptor): number[] {
  const out: number[] = [];
  relation.columns.forEach((c, i) => {
    if (c.key) out.push(i);
  });
  return out;
}

/** A row's identity as a string, for the "already touched in this group" check. */
function signature(values: readonly TupleValue[]): string {
  let out = '';
  for (const v of values) out += v === null ? '\u0001N' : v === UNCHANGED_TOAST ? '\u0001U' : `\u0002${v}`;
  return out;
}

function pick(values: Tuple, indices: readonly number[]): Tuple {
  return indices.map((i) => values[i] ?? null);
}

interface RelationFacts {
  readonly relation: RelationDescriptor;
  readonly full: boolean;
  readonly keys: number[];
  readonly ddlLog: boolean;
}

/**
 * Splits changes (already in commit order) into statement groups; see the
 * header for the rules. Every change lands in exactly one group, in order.
 * Hot path (every row of a batch passes here): no closures per change.
 */
export function groupChanges(changes: readonly Change[], relations: readonly RelationDescriptor[]): ChangeGroup[] {
  const facts: (RelationFacts | undefined)[] = [];
  const factsOf = (index: number): RelationFacts => {
    let f = facts[index];
    if (f === undefined) {
      const relation = relations[index];
      if (relation === undefined) throw new ValidationError(`relation index ${index} is out of range`);
      const keys: number[] = [];
      relation.columns.forEach((c, i) => {
        if (c.key) keys.push(i);
      });
      f = { relation, full: relation.replicaIdentity === 'full', keys, ddlLog: isDdlLogRelation(relation) };
      facts[index] = f;
    }
    return f;
  };

  const groups: ChangeGroup[] = [];
  let open: ChangeGroup | undefined;
  let openShape = '';
  let touched = new Set<string>();
  const startGroup = (group: ChangeGroup, shape: string): void => {
    if (open !== undefined) groups.push(open);
    open = group;
    openShape = shape;
    touched = new Set();
  };
  const closeGroup = (): void => {
    if (open !== undefined) groups.push(open);
    open = undefined;
    openShape = '';
  };

  for (const change of changes) {
    if (change.op === 'truncate') {
      closeGroup();
      groups.push({ kind: 'truncate', rels: [...change.rels], cascade: change.cascade, restartIdentity: change.restartIdentity });
      continue;
    }
    const f = factsOf(change.rel);
    if (change.op === 'insert') {
      if (f.ddlLog) {
        closeGroup();
        groups.push({ kind: 'ddl', rel: change.rel, row: change.new });
        continue;
      }
      // No touch check: two inserts of one key without a delete between
      // cannot come from a consistent source, and the INSERT refuses them.
      const shape = `i:${change.rel}`;
      if (open === undefined || openShape !== shape) startGroup({ kind: 'insert', rel: change.rel, rows: [] }, shape);
      (open as unknown as Extract<ChangeGroup, { kind: 'insert' }>).rows.push(change.new);
      continue;
    }
    if (change.op === 'update') {
      const hasKeyTuple = change.key !== undefined;
      const setColumns: number[] = [];
      const row = change.new;
      for (let i = 0; i < row.length; i++) {
        if (row[i] === UNCHANGED_TOAST) continue;
        // Without a key tuple the key did not change: no need to set it.
        if (!f.full && !hasKeyTuple && f.relation.columns[i]?.key) continue;
        setColumns.push(i);
      }
      let locator: Tuple;
      let touchOld: string;
      let touchNew: string;
      if (f.full) {
        locator = change.old ?? [];
        touchOld = signature(locator);
        touchNew = signature(row.map((v, i) => (v === UNCHANGED_TOAST ? (locator[i] ?? null) : v)));
      } else {
        locator = pick(change.key ?? row, f.keys);
        touchOld = signature(locator);
        touchNew = hasKeyTuple ? signature(pick(row, f.keys)) : touchOld;
      }
      const shape = `u:${change.rel}:${f.full ? 'f' : 'k'}:${setColumns.join(',')}`;
      if (open === undefined || openShape !== shape || touched.has(touchOld) || touched.has(touchNew)) {
        startGroup({ kind: 'update', rel: change.rel, identity: f.full ? 'full' : 'key', setColumns, rows: [] }, shape);
      }
      (open as unknown as Extract<ChangeGroup, { kind: 'update' }>).rows.push({ locator, new: row });
      touched.add(touchOld);
      touched.add(touchNew);
      continue;
    }
    const locator = f.full ? (change.old ?? []) : pick(change.key ?? [], f.keys);
    const touch = signature(locator);
    const shape = `d:${change.rel}:${f.full ? 'f' : 'k'}`;
    if (open === undefined || openShape !== shape || touched.has(touch)) {
      startGroup({ kind: 'delete', rel: change.rel, identity: f.full ? 'full' : 'key', locators: [] }, shape);
    }
    (open as unknown as Extract<ChangeGroup, { kind: 'delete' }>).locators.push(locator);
    touched.add(touch);
  }
  closeGroup();
  return groups;
}

/** Rows a group changes (a truncate or DDL counts 0), as batchRowCount counts. */
export function groupRowCount(group: ChangeGroup): number {
  switch (group.kind) {
    case 'insert':
      return group.rows.length;
    case 'update':
      return group.rows.length;
    case 'delete':
      return group.locators.length;
    default:
      return 0;
  }
}

// ---------------------------------------------------------------------------
// Statements

function textColumn(rows: readonly Tuple[], index: number): string {
  return textArrayLiteral(rows.map((row) => valueText(row[index])));
}

/** `unnest($1::text[], $2::text[]) AS u(a0, a1)` for the given alias names. */
function unnestFrom(aliases: readonly string[], firstParam: number, ordinality = false): string {
  const params = aliases.map((_, i) => `$${firstParam + i}::text[]`).join(', ');
  return `unnest(${params})${ordinality ? ' WITH ORDINALITY' : ''} AS u(${[...aliases, ...(ordinality ? ['ord'] : [])].join(', ')})`;
}

/** `INSERT INTO t (cols) SELECT u.v0::type, … FROM unnest(…)`. */
export function buildInsert(relation: RelationDescriptor, rows: readonly Tuple[]): SqlStatement {
  const table = quoteTable(relation);
  const cols = relation.columns;
  if (cols.length === 0) {
    // A table with no columns: one DEFAULT VALUES row per insert.
    return { text: `INSERT INTO ${table} SELECT FROM generate_series(1, ${rows.length})`, values: [] };
  }
  const aliases = cols.map((_, i) => `v${i}`);
  const casts = cols.map((c, i) => `u.v${i}::${sqlTypeName(c, qualifiedName(relation))}`).join(', ');
  return {
    text: `INSERT INTO ${table} (${cols.map((c) => quoteIdent(c.name)).join(', ')}) SELECT ${casts} FROM ${unnestFrom(aliases, 1)}`,
    values: cols.map((_, i) => textColumn(rows, i)),
  };
}

function fullMatch(relation: RelationDescriptor, tableAlias: string, oldAlias: (i: number) => string): string {
  const table = qualifiedName(relation);
  return relation.columns
    .map((c, i) => {
      const type = sqlTypeName(c, table);
      const col = `${tableAlias}.${quoteIdent(c.name)}`;
      return NO_EQUALITY.test(type)
        ? `${col}::text IS NOT DISTINCT FROM (${oldAlias(i)}::${type})::text`
        : `${col} IS NOT DISTINCT FROM ${oldAlias(i)}::${type}`;
    })
    .join(' AND ');
}

/** An UPDATE for one update group; its row count must equal the group size. */
export function buildUpdate(relation: RelationDescriptor, group: Extract<ChangeGroup, { kind: 'update' }>): SqlStatement {
  const table = quoteTable(relation);
  const name = qualifiedName(relation);
  const cols = relation.columns;
  const set = group.setColumns.map((i) => {
    const c = cols[i]!;
    return `${quoteIdent(c.name)} = u.n${i}::${sqlTypeName(c, name)}`;
  });
  const newValues = group.setColumns.map((i) => textArrayLiteral(group.rows.map((r) => valueText(r.new[i]))));
  const newAliases = group.setColumns.map((i) => `n${i}`);
  if (group.identity === 'key') {
    const keys = keyIndices(relation);
    const where = keys.map((k, j) => `t.${quoteIdent(cols[k]!.name)} = u.k${j}::${sqlTypeName(cols[k]!, name)}`).join(' AND ');
    const aliases = [...keys.map((_, j) => `k${j}`), ...newAliases];
    return {
      text: `UPDATE ${table} AS t SET ${set.join(', ')} FROM ${unnestFrom(aliases, 1)} WHERE ${where}`,
      values: [...keys.map((_, j) => textArrayLiteral(group.rows.map((r) => valueText(r.locator[j])))), ...newValues],
    };
  }
  const oldAliases = cols.map((_, i) => `o${i}`);
  return {
    text:
      `WITH u AS (SELECT * FROM ${unnestFrom([...oldAliases, ...newAliases], 1, true)}), ` +
      `m AS (SELECT DISTINCT ON (u.ord) u.ord, s.ctid AS tid FROM u JOIN ${table} AS s ON ${fullMatch(relation, 's', (i) => `u.o${i}`)} ORDER BY u.ord) ` +
      `UPDATE ${table} AS t SET ${set.join(', ')} FROM m JOIN u ON u.ord = m.ord WHERE t.ctid = m.tid`,
    values: [...cols.map((_, i) => textArrayLiteral(group.rows.map((r) => valueText(r.locator[i])))), ...newValues],
  };
}

/** A DELETE for one delete group; its row count must equal the group size. */
export function buildDelete(relation: RelationDescriptor, group: Extract<ChangeGroup, { kind: 'delete' }>): SqlStatement {
  const table = quoteTable(relation);
  const name = qualifiedName(relation);
  const cols = relation.columns;
  if (group.identity === 'key') {
    const keys = keyIndices(relation);
    const where = keys.map((k, j) => `t.${quoteIdent(cols[k]!.name)} = u.k${j}::${sqlTypeName(cols[k]!, name)}`).join(' AND ');
    return {
      text: `DELETE FROM ${table} AS t USING ${unnestFrom(keys.map((_, j) => `k${j}`), 1)} WHERE ${where}`,
      values: keys.map((_, j) => textColumn(group.locators, j)),
    };
  }
  const oldAliases = cols.map((_, i) => `o${i}`);
  return {
    text:
      `DELETE FROM ${table} AS t USING (SELECT DISTINCT ON (u.ord) s.ctid AS tid FROM ${unnestFrom(oldAliases, 1, true)} ` +
      `JOIN ${table} AS s ON ${fullMatch(relation, 's', (i) => `u.o${i}`)} ORDER BY u.ord) AS m WHERE t.ctid = m.tid`,
    values: cols.map((_, i) => textColumn(group.locators, i)),
  };
}

/** `TRUNCATE ONLY a, b [RESTART IDENTITY] [CASCADE]`, as the source ran it. */
export function buildTruncate(relations: readonly RelationDescriptor[], opts: { cascade: boolean; restartIdentity: boolean }): string {
  return (
    `TRUNCATE ONLY ${relations.map(quoteTable).join(', ')}` +
    `${opts.restartIdentity ? ' RESTART IDENTITY' : ''}${opts.cascade ? ' CASCADE' : ''}`
  );
}

/**
 * CREATE TABLE for a table missing on the target, from its descriptor: the
 * columns with their types, and the key columns as primary key under
 * default/index identity (an index identity is unique over NOT NULL columns,
 * so a primary key is equivalent). FULL/NOTHING tables get no key.
 */
export function buildCreateTable(relation: RelationDescriptor): string[] {
  const name = qualifiedName(relation);
  const cols = relation.columns.map((c) => `${quoteIdent(c.name)} ${sqlTypeName(c, name)}`);
  const keys = relation.columns.filter((c) => c.key).map((c) => quoteIdent(c.name));
  if (keys.length > 0 && (relation.replicaIdentity === 'default' || relation.replicaIdentity === 'index')) {
    cols.push(`PRIMARY KEY (${keys.join(', ')})`);
  }
  return [`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(relation.schema)}`, `CREATE TABLE IF NOT EXISTS ${quoteTable(relation)} (${cols.join(', ')})`];
}

function valueText(v: TupleValue | undefined): string | null {
  return typeof v === 'string' ? v : null;
}

// ---------------------------------------------------------------------------
// Replaying captured DDL

/**
 * Splits a query string into top-level statements at `;`, skipping quoted
 * strings ('…', E'…'), quoted identifiers, comments and dollar-quoted bodies,
 * so a CREATE FUNCTION body stays whole. Empty statements are dropped.
 * Limitation: a SQL-standard body (`BEGIN ATOMIC … END`) contains top-level
 * semicolons and is split wrongly; replaying it then fails and halts.
 */
export function splitStatements(sql: string): string[] {
  const out: string[] = [];
  let start = 0;
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const ch = sql[i]!;
    const next = sql[i + 1];
    if (ch === '-' && next === '-') {
      const end = sql.indexOf('\n', i);
      i = end === -1 ? n : end + 1;
    } else if (ch === '/' && next === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') (depth++, (i += 2));
        else if (sql[i] === '*' && sql[i + 1] === '/') (depth--, (i += 2));
        else i++;
      }
    } else if (ch === "'" || ch === '"') {
      const escapes = ch === "'" && i > 0 && /[eE]/.test(sql[i - 1]!) && !/[A-Za-z0-9_]/.test(sql[i - 2] ?? ' ');
      i++;
      while (i < n) {
        if (escapes && sql[i] === '\\') i += 2;
        else if (sql[i] === ch && sql[i + 1] === ch) i += 2;
        else if (sql[i] === ch) break;
        else i++;
      }
      i++;
    } else if (ch === '$' && !/[A-Za-z0-9_]/.test(sql[i - 1] ?? ' ')) {
      const tag = /^\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i, i + 64));
      if (tag) {
        const end = sql.indexOf(tag[0], i + tag[0].length);
        i = end === -1 ? n : end + tag[0].length;
      } else i++;
    } else if (ch === ';') {
      out.push(sql.slice(start, i));
      i++;
      start = i;
    } else i++;
  }
  out.push(sql.slice(start));
  return out.map((s) => s.trim()).filter((s) => s.length > 0 && !/^(?:--[^\n]*\n?|\/\*[\s\S]*?\*\/|\s)*$/.test(s));
}

/** The first keyword of a statement, upper-cased, leading comments skipped. */
function firstKeyword(statement: string): string {
  const stripped = statement.replace(/^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*/, '');
  return (/^[A-Za-z]+/.exec(stripped)?.[0] ?? '').toUpperCase();
}

/** Transaction control: the apply transaction is the only one. */
const TRANSACTION_CONTROL = new Set(['BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT', 'SAVEPOINT', 'RELEASE', 'PREPARE']);
/** Data changes: their effects arrive through replication as row changes. */
const DATA_CHANGES = new Set(['INSERT', 'UPDATE', 'DELETE', 'MERGE', 'TRUNCATE', 'COPY']);

export interface DdlReplayPlan {
  /** Statements to run, in order. */
  readonly run: string[];
  /** Statements left out, with why (logged, never silent). */
  readonly skipped: { readonly statement: string; readonly why: string }[];
  /** Statements changed before running, with why (logged). */
  readonly rewritten: { readonly statement: string; readonly why: string }[];
}

// CONCURRENTLY cannot run inside a transaction block; the apply transaction
// holds the target's lock briefly instead, which is what a standby can afford.
const CONCURRENTLY = /^(\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX))\s+CONCURRENTLY\b/i;

/**
 * What to run on the target for one captured query string (current_query()
 * on the source). The source logs a multi-statement string once; its data
 * changes (INSERT/UPDATE/DELETE/…) and transaction control are left out here,
 * because the rows they changed are replicated anyway and the apply
 * transaction must stay one transaction. Known gap: a data change hidden in
 * a WITH … or a SELECT of a function that writes would run twice.
 */
export function planDdlReplay(ddl: string): DdlReplayPlan {
  const run: string[] = [];
  const skipped: { statement: string; why: string }[] = [];
  const rewritten: { statement: string; why: string }[] = [];
  for (const statement of splitStatements(ddl)) {
    const keyword = firstKeyword(statement);
    if (TRANSACTION_CONTROL.has(keyword)) skipped.push({ statement, why: 'transaction control (the apply transaction is the only one)' });
    else if (DATA_CHANGES.has(keyword)) skipped.push({ statement, why: 'a data change: its rows arrive through replication' });
    else if (CONCURRENTLY.test(statement)) {
      run.push(statement.replace(CONCURRENTLY, '$1'));
      rewritten.push({ statement, why: 'CONCURRENTLY left out: the apply transaction is a transaction block' });
    } else run.push(statement);
  }
  return { run, skipped, rewritten };
}
