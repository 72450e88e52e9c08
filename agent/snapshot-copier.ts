// The initial copy, consistent with the slot: every published table read in
// ONE transaction that imported the snapshot exported when the slot was
// created (BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT),
// so it shows exactly what committed before the slot's consistent point, and
// the stream carries exactly what committed after it.
//
//   const copier = new SnapshotCopier({ connectionString, snapshotName, consistentLsn, tables, … });
//   for await (const batch of copier.batches()) await outbox.enqueue(batch);
//   copier.progress()  // for /status
//
// Batches: per table, 'snapshot' batches of up to chunkRows rows (chunk 0, 1,
// …; the last has lastChunk: true; an empty table sends one empty last chunk),
// then one 'marker' batch, reason 'snapshot-complete', listing every table's
// chunk and row counts. All stand for the consistent point: lsnPrev = lsnFirst
// = lsnLast = consistentLsn.
//
// Decisions:
//   - Values are the type's output function text, exactly what pgoutput
//     sends: columns are selected as they are and read in text format with
//     identity type parsers. NOT "col"::text: a cast to text differs from the
//     output function for some types (boolean → 'true' not 't', character(n)
//     loses its padding, inet gains '/32'). Same connection settings as the
//     replication connection (same connection string), so DateStyle,
//     IntervalStyle, TimeZone, bytea_output and extra_float_digits match.
//   - Columns and key flags come from the catalog as the snapshot sees it, the
//     way pgoutput builds its Relation message: generated columns are left
//     out (pgoutput in PostgreSQL 15 does not send them), dropped ones too;
//     `key` marks the primary key's columns under REPLICA IDENTITY DEFAULT,
//     the identity index's columns under INDEX, every column under FULL.
//   - Every table is locked ACCESS SHARE right after the snapshot is imported
//     (like pg_dump), so no ALTER or DROP changes a table while it waits to be
//     read. A table that did not exist at the consistent point (created just
//     after) is skipped: all its rows come through the stream.
//   - Backpressure: the consumer pulls. While it handles chunk N, chunk N+1
//     is being fetched (never more), so at most two chunks are in memory. A
//     table whose row count is a multiple of chunkRows therefore ends with an
//     empty last chunk, which tells "done" without reading further ahead.
//   - Interrupted: the exported snapshot dies with the connection that made
//     it, so a copy cannot resume. Connection loss or a vanished snapshot is a
//     RetryableError: the agent restarts the snapshot (planStart in
//     agent-state.ts) with a new slot and a new snapshotId.

import pg from 'pg';
import type { ChangeBatch, ColumnDescriptor, RelationDescriptor, ReplicaIdentity, SnapshotTableSummary, Tuple } from '../core/change-batch.ts';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import { type Logger, createLogger } from '../core/log.ts';
import { type Lsn, formatLsn } from '../core/lsn.ts';
import type { TableName } from './source-setup.ts';

export interface SnapshotCopierOptions {
  /** An ordinary (not replication) connection string to the source. */
  readonly connectionString: string;
  /** From createLogicalSlot; valid while the replication connection that made it stays open and idle. */
  readonly snapshotName: string;
  readonly consistentLsn: Lsn;
  /** Tables to copy, in this order (listPublishedTables). */
  readonly tables: readonly TableName[];
  /** Rows per snapshot batch (agent.snapshotChunkRows). */
  readonly chunkRows: number;
  readonly stream: string;
  readonly epoch: number;
  /** A fresh uuid per copy. */
  readonly snapshotId: string;
  /** seq of the first batch (default 0); each batch takes the next. */
  readonly firstSeq?: number;
  /** Called after every chunk and at each table's start and end. */
  readonly onProgress?: (progress: SnapshotProgress) => void;
  /** Called once the transaction imported the snapshot: the replication connection may close from then on. */
  readonly onSnapshotImported?: () => void;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
  /** Clock (ms), for rates and createdAt. */
  readonly now?: () => number;
  /** Progress log line at most this often (default 10 s), besides each finished table. */
  readonly logIntervalMs?: number;
  /** Tables up to this size (bytes on disk) get an exact count(*) for the ETA (default 32 MiB). */
  readonly exactCountMaxBytes?: number;
}

export type TableCopyState = 'pending' | 'copying' | 'done' | 'skipped';

export interface TableProgress {
  readonly schema: string;
  readonly name: string;
  readonly state: TableCopyState;
  readonly rowsCopied: number;
  readonly chunks: number;
  /** Rows expected: exact count(*) for small tables, else pg_class.reltuples; null when unknown. */
  readonly estimatedRows: number | null;
  readonly estimateIsExact: boolean;
  readonly rowsPerSecond: number | null;
  readonly etaSeconds: number | null;
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
}

export interface SnapshotProgress {
  readonly snapshotId: string;
  readonly consistentLsn: string;
  readonly state: 'starting' | 'copying' | 'done' | 'failed';
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
  readonly tablesTotal: number;
  readonly tablesDone: number;
  readonly rowsCopied: number;
  readonly estimatedRows: number | null;
  readonly rowsPerSecond: number | null;
  readonly etaSeconds: number | null;
  readonly tables: readonly TableProgress[];
}

interface MutableTableProgress {
  schema: string;
  name: string;
  state: TableCopyState;
  rowsCopied: number;
  chunks: number;
  estimatedRows: number | null;
  estimateIsExact: boolean;
  startedMs: number | null;
  finishedMs: number | null;
}

/** What the copy reads for one table. */
interface PlannedTable {
  readonly table: TableName;
  readonly relation: RelationDescriptor;
  /** 'p': read with its partitions; 'r': ONLY the table itself. */
  readonly kind: 'r' | 'p';
  readonly bytes: number;
  readonly reltuples: number | null;
}

// Every value stays the server's text: no JS Date, no JSON.parse, no numbers.
const identityParser = (value: string): string => value;
const TEXT_TYPES = { getTypeParser: () => identityParser } as unknown as pg.CustomTypesConfig;

const CURSOR = pg.escapeIdentifier('lifeboat_snapshot');
const DEFAULT_LOG_INTERVAL_MS = 10_000;
const DEFAULT_EXACT_COUNT_MAX_BYTES = 32 * 1024 * 1024;
const LOCK_TIMEOUT = '60s';

const ident = (name: string): string => pg.escapeIdentifier(name);
const qualified = (t: TableName): string => `${ident(t.schema)}.${ident(t.name)}`;
const display = (t: TableName): string => `${t.schema}.${t.name}`;

const IDENTITY: Record<string, ReplicaIdentity> = { d: 'default', n: 'nothing', f: 'full', i: 'index' };

export class SnapshotCopier {
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly tableProgress: MutableTableProgress[];
  private state: SnapshotProgress['state'] = 'starting';
  private startedMs: number | null = null;
  private finishedMs: number | null = null;
  private lastLogMs = 0;
  private seq: number;
  private started = false;

  constructor(private readonly opts: SnapshotCopierOptions) {
    if (!Number.isInteger(opts.chunkRows) || opts.chunkRows < 1) throw new ValidationError(`chunkRows must be a positive integer, got ${opts.chunkRows}`);
    if (opts.snapshotName.length === 0) throw new ValidationError('snapshotName must not be empty');
    const seen = new Set<string>();
    for (const t of opts.tables) {
      if (seen.has(display(t))) throw new ValidationError(`table ${display(t)} is listed twice`);
      seen.add(display(t));
    }
    this.log = opts.logger ?? createLogger({ component: 'snapshot-copier', fields: { snapshotId: opts.snapshotId } });
    this.now = opts.now ?? Date.now;
    this.seq = opts.firstSeq ?? 0;
    this.tableProgress = opts.tables.map((t) => ({
      schema: t.schema,
      name: t.name,
      state: 'pending',
      rowsCopied: 0,
      chunks: 0,
      estimatedRows: null,
      estimateIsExact: false,
      startedMs: null,
      finishedMs: null,
    }));
  }

  /** The seq the next batch after the copy should take. */
  get nextSeq(): number {
    return this.seq;
  }

  /** A JSON-able snapshot of the progress (for /status). */
  progress(): SnapshotProgress {
    const now = this.finishedMs ?? this.now();
    const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
    const tables: TableProgress[] = this.tableProgress.map((t) => {
      const elapsed = t.startedMs === null ? 0 : ((t.finishedMs ?? now) - t.startedMs) / 1000;
      const rate = elapsed > 0 ? t.rowsCopied / elapsed : null;
      const remaining = t.estimatedRows === null ? null : Math.max(0, t.estimatedRows - t.rowsCopied);
      const eta = t.state === 'done' || t.state === 'skipped' ? 0 : remaining !== null && rate !== null && rate > 0 ? remaining / rate : null;
      return {
        schema: t.schema,
        name: t.name,
        state: t.state,
        rowsCopied: t.rowsCopied,
        chunks: t.chunks,
        estimatedRows: t.estimatedRows,
        estimateIsExact: t.estimateIsExact,
        rowsPerSecond: rate === null ? null : Math.round(rate),
        etaSeconds: eta === null ? null : Math.ceil(eta),
        startedAt: iso(t.startedMs),
        finishedAt: iso(t.finishedMs),
      };
    });
    const rowsCopied = tables.reduce((n, t) => n + t.rowsCopied, 0);
    const known = this.tableProgress.every((t) => t.estimatedRows !== null || t.state === 'skipped');
    const estimatedRows = known ? this.tableProgress.reduce((n, t) => n + (t.state === 'skipped' ? 0 : Math.max(t.estimatedRows ?? 0, t.rowsCopied)), 0) : null;
    const elapsed = this.startedMs === null ? 0 : (now - this.startedMs) / 1000;
    const rate = elapsed > 0 ? rowsCopied / elapsed : null;
    const eta = this.state === 'done' ? 0 : estimatedRows !== null && rate !== null && rate > 0 ? Math.max(0, estimatedRows - rowsCopied) / rate : null;
    return {
      snapshotId: this.opts.snapshotId,
      consistentLsn: formatLsn(this.opts.consistentLsn),
      state: this.state,
      startedAt: iso(this.startedMs),
      finishedAt: iso(this.finishedMs),
      tablesTotal: tables.length,
      tablesDone: tables.filter((t) => t.state === 'done' || t.state === 'skipped').length,
      rowsCopied,
      estimatedRows,
      rowsPerSecond: rate === null ? null : Math.round(rate),
      etaSeconds: eta === null ? null : Math.ceil(eta),
      tables,
    };
  }

  /**
   * The copy as batches; pull them one at a time. May be iterated once.
   * Stopping early (break/return) rolls the transaction back and closes the
   * connection.
   * @throws RetryableError when the connection or the exported snapshot is
   *   lost (restart the snapshot); PermanentError for what a retry cannot fix
   *   (permission denied, with the GRANT).
   */
  async *batches(): AsyncGenerator<ChangeBatch, void, undefined> {
    if (this.started) throw new ValidationError('a SnapshotCopier can be iterated only once');
    this.started = true;
    this.startedMs = this.now();
    const client = new pg.Client({ connectionString: this.opts.connectionString, application_name: 'lifeboat-snapshot' });
    // A socket error also rejects the running query; this only keeps it from crashing the process.
    client.on('error', (err) => this.log.warn('snapshot connection error', err));
    let pendingFetch: Promise<unknown> | undefined;
    let current = 'connect to the source';
    try {
      await client.connect();
      current = 'import the exported snapshot';
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      await client.query(`SET TRANSACTION SNAPSHOT ${pg.escapeLiteral(this.opts.snapshotName)}`);
      this.opts.onSnapshotImported?.();
      this.state = 'copying';
      this.log.info('snapshot copy started', {
        consistentLsn: formatLsn(this.opts.consistentLsn),
        tables: this.opts.tables.length,
        chunkRows: this.opts.chunkRows,
      });

      current = 'lock the tables';
      const planned = await this.planTables(client);
      this.emitProgress();

      for (let i = 0; i < this.opts.tables.length; i++) {
        const table = this.opts.tables[i]!;
        const progress = this.tableProgress[i]!;
        const plan = planned.get(display(table));
        if (plan === undefined) {
          progress.state = 'skipped';
          this.log.info('table created after the consistent point: its rows come through the stream', { table: display(table) });
          this.emitProgress();
          continue;
        }
        current = `copy table ${display(table)}`;
        this.throwIfAborted();
        if (plan.bytes <= (this.opts.exactCountMaxBytes ?? DEFAULT_EXACT_COUNT_MAX_BYTES)) {
          const c = await client.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${plan.kind === 'r' ? 'ONLY ' : ''}${qualified(table)}`);
          progress.estimatedRows = Number(c.rows[0]!.n);
          progress.estimateIsExact = true;
        }
        progress.state = 'copying';
        progress.startedMs = this.now();
        this.emitProgress();

        const columns = plan.relation.columns.map((c) => ident(c.name)).join(', ');
        await client.query(`DECLARE ${CURSOR} NO SCROLL CURSOR FOR SELECT ${columns} FROM ${plan.kind === 'r' ? 'ONLY ' : ''}${qualified(table)}`);
        const fetch = () => client.query<Tuple>({ text: `FETCH FORWARD ${this.opts.chunkRows} FROM ${CURSOR}`, rowMode: 'array', types: TEXT_TYPES });
        let next = fetch();
        pendingFetch = next.catch(() => {});
        for (let chunk = 0; ; chunk++) {
          const rows = (await next).rows;
          const lastChunk = rows.length < this.opts.chunkRows;
          if (!lastChunk) {
            this.throwIfAborted();
            next = fetch(); // the one chunk read ahead, while the consumer handles this one
            pendingFetch = next.catch(() => {});
          } else {
            pendingFetch = undefined;
          }
          progress.rowsCopied += rows.length;
          progress.chunks += 1;
          if (lastChunk) {
            progress.state = 'done';
            progress.finishedMs = this.now();
            if (progress.estimatedRows !== null && progress.estimatedRows < progress.rowsCopied) progress.estimatedRows = progress.rowsCopied;
          }
          this.emitProgress();
          yield this.chunkBatch(plan.relation, chunk, rows, lastChunk);
          if (lastChunk) break;
        }
        await client.query(`CLOSE ${CURSOR}`);
        const p = this.progress().tables[i]!;
        this.log.info('table copied', { table: display(table), rows: p.rowsCopied, chunks: p.chunks, rowsPerSecond: p.rowsPerSecond });
      }

      current = 'finish the snapshot transaction';
      await client.query('COMMIT');
      this.state = 'done';
      this.finishedMs = this.now();
      const summary = this.progress();
      this.log.info('snapshot copy finished', { rows: summary.rowsCopied, tables: summary.tablesTotal, rowsPerSecond: summary.rowsPerSecond });
      this.emitProgress();
      yield this.completeMarker();
    } catch (err) {
      this.state = 'failed';
      this.emitProgress();
      throw classifySnapshotError(err, current, this.opts.snapshotName);
    } finally {
      if (pendingFetch !== undefined) await pendingFetch;
      // Ending the connection rolls back an unfinished (read-only) transaction.
      await client.end().catch(() => {});
    }
  }

  // -------------------------------------------------------------------------

  /** Locks every table, then reads its descriptor as the snapshot sees it. */
  private async planTables(client: pg.Client): Promise<Map<string, PlannedTable>> {
    const planned = new Map<string, PlannedTable>();
    const { tables } = this.opts;
    if (tables.length === 0) return planned;
    await client.query(`SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
    await client.query(`LOCK TABLE ${tables.map(qualified).join(', ')} IN ACCESS SHARE MODE`);

    // Catalog reads use the imported snapshot: the shape at the consistent point.
    const rels = await client.query<{
      oid: number;
      schema: string;
      name: string;
      kind: string;
      ident: string;
      bytes: string;
      reltuples: string | null;
    }>(
      `SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind, c.relreplident::text AS ident,
              CASE WHEN c.relkind = 'p'
                   THEN (SELECT coalesce(sum(pg_relation_size(pt.relid)), 0) FROM pg_partition_tree(c.oid) pt WHERE pt.isleaf)
                   ELSE pg_relation_size(c.oid) END::text AS bytes,
              CASE WHEN c.relkind = 'p'
                   THEN (SELECT CASE WHEN bool_or(l.reltuples < 0) THEN NULL ELSE sum(l.reltuples) END
                           FROM pg_partition_tree(c.oid) pt JOIN pg_class l ON l.oid = pt.relid WHERE pt.isleaf)
                   WHEN c.reltuples < 0 THEN NULL
                   ELSE c.reltuples END::float8::text AS reltuples
         FROM unnest($1::text[], $2::text[]) AS t(schema, name)
         JOIN pg_namespace n ON n.nspname = t.schema
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name`,
      [tables.map((t) => t.schema), tables.map((t) => t.name)],
    );
    const oids = rels.rows.map((r) => r.oid);
    const cols = await client.query<{ relid: number; name: string; type: string; type_oid: number; typmod: number; key: boolean }>(
      `SELECT a.attrelid::int AS relid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
              a.atttypid::int AS type_oid, a.atttypmod AS typmod,
              c.relreplident = 'f' OR EXISTS (
                SELECT 1 FROM pg_index i
                 WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey::int2[])
                   AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))) AS key
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE a.attrelid = ANY ($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY a.attrelid, a.attnum`,
      [oids],
    );
    const columnsOf = new Map<number, ColumnDescriptor[]>();
    for (const c of cols.rows) {
      const list = columnsOf.get(c.relid) ?? [];
      list.push({ name: c.name, type: c.type, typeOid: c.type_oid, typmod: c.typmod, key: c.key });
      columnsOf.set(c.relid, list);
    }
    for (const r of rels.rows) {
      if (r.kind !== 'r' && r.kind !== 'p') {
        throw new ValidationError(`${r.schema}.${r.name} is not a table (relkind ${r.kind}) and cannot be copied`);
      }
      const identity = IDENTITY[r.ident];
      if (identity === undefined) throw new PermanentError(`unknown replica identity ${JSON.stringify(r.ident)} on ${r.schema}.${r.name}`);
      const table = { schema: r.schema, name: r.name };
      const reltuples = r.reltuples === null ? null : Math.round(Number(r.reltuples));
      planned.set(display(table), {
        table,
        kind: r.kind,
        bytes: Number(r.bytes),
        reltuples,
        relation: { oid: r.oid, schema: r.schema, name: r.name, replicaIdentity: identity, columns: columnsOf.get(r.oid) ?? [] },
      });
      const progress = this.tableProgress.find((t) => t.schema === r.schema && t.name === r.name);
      if (progress) progress.estimatedRows = reltuples;
    }
    return planned;
  }

  private chunkBatch(relation: RelationDescriptor, chunk: number, rows: Tuple[], lastChunk: boolean): ChangeBatch {
    const lsn = this.opts.consistentLsn;
    return {
      v: 1,
      kind: 'snapshot',
      stream: this.opts.stream,
      epoch: this.opts.epoch,
      seq: this.seq++,
      lsnPrev: lsn,
      lsnFirst: lsn,
      lsnLast: lsn,
      createdAt: new Date(this.now()).toISOString(),
      relations: [relation],
      transactions: [],
      snapshot: { snapshotId: this.opts.snapshotId, relation: 0, chunk, rows, lastChunk, consistentLsn: lsn },
    };
  }

  private completeMarker(): ChangeBatch {
    const lsn = this.opts.consistentLsn;
    const tables: SnapshotTableSummary[] = this.tableProgress
      .filter((t) => t.state === 'done')
      .map((t) => ({ schema: t.schema, name: t.name, chunks: t.chunks, rows: t.rowsCopied }));
    return {
      v: 1,
      kind: 'marker',
      stream: this.opts.stream,
      epoch: this.opts.epoch,
      seq: this.seq++,
      lsnPrev: lsn,
      lsnFirst: lsn,
      lsnLast: lsn,
      createdAt: new Date(this.now()).toISOString(),
      relations: [],
      transactions: [],
      marker: {
        markerId: this.opts.snapshotId,
        reason: 'snapshot-complete',
        snapshot: { snapshotId: this.opts.snapshotId, consistentLsn: lsn, tables },
      },
    };
  }

  private emitProgress(): void {
    const now = this.now();
    const due = now - this.lastLogMs >= (this.opts.logIntervalMs ?? DEFAULT_LOG_INTERVAL_MS);
    if (!this.opts.onProgress && !due) return;
    const p = this.progress();
    this.opts.onProgress?.(p);
    if (due && this.state === 'copying') {
      this.lastLogMs = now;
      const table = p.tables.find((t) => t.state === 'copying');
      this.log.info('snapshot progress', {
        tablesDone: p.tablesDone,
        tablesTotal: p.tablesTotal,
        rowsCopied: p.rowsCopied,
        estimatedRows: p.estimatedRows,
        rowsPerSecond: p.rowsPerSecond,
        etaSeconds: p.etaSeconds,
        ...(table && { table: `${table.schema}.${table.name}`, tableRows: table.rowsCopied, tableEtaSeconds: table.etaSeconds }),
      });
    }
  }

  private throwIfAborted(): void {
    if (this.opts.signal?.aborted) {
      throw new RetryableError('snapshot copy aborted', { remedy: 'The copy restarts from the beginning with a new snapshot.', details: { snapshotId: this.opts.snapshotId } });
    }
  }
}

// SQLSTATE classes a new attempt (with a new snapshot) can get past.
const RETRYABLE_CLASSES = new Set(['08', '40', '53', '57', '58']);

/** Maps a copy failure: retryable means "restart the snapshot"; permanent needs an operator. */
export function classifySnapshotError(err: unknown, doing: string, snapshotName: string): Error {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.message === 'string' ? e.message : String(err);
  const details = { sqlstate: code, snapshotName };
  const restart = 'The agent restarts the snapshot: it drops the slot, creates it again and copies every table under a new snapshotId.';
  if (code === undefined || RETRYABLE_CLASSES.has(code.slice(0, 2))) {
    return new RetryableError(`snapshot copy failed to ${doing}: ${message}`, { remedy: restart, details, cause: err });
  }
  if (code === '22023' && /snapshot/i.test(message)) {
    return new RetryableError(`the exported snapshot ${snapshotName} is gone (${message})`, {
      remedy: `The replication connection that created the slot closed or ran a command before the copy imported it. ${restart}`,
      details,
      cause: err,
    });
  }
  if (code === '42P01' || code === '42703') {
    // The table (or a column) was dropped after the slot was created, before the copy locked it.
    return new RetryableError(`snapshot copy failed to ${doing}: ${message} (changed after the slot was created)`, { remedy: restart, details, cause: err });
  }
  if (code === '55P03') {
    return new RetryableError(`snapshot copy failed to ${doing}: a lock was not granted within ${LOCK_TIMEOUT} (${message})`, {
      remedy: `A long transaction holds a table exclusively (ALTER, VACUUM FULL…). ${restart}`,
      details,
      cause: err,
    });
  }
  if (code === '42501') {
    return new PermanentError(`snapshot copy is not allowed to ${doing}: ${message}`, {
      remedy: 'Grant the agent role SELECT on every published table (GRANT SELECT ON ALL TABLES IN SCHEMA … TO …), then start the agent again.',
      details,
      cause: err,
    });
  }
  return new PermanentError(`snapshot copy failed to ${doing}: ${message}`, { details, cause: err });
}
