// Per-table row counts and checksums, compared between two databases
// (`lifeboat verify`, and failback's verify step).
//
// The checksum is order-independent and runs in constant memory: each row's
// text (columns by name, in name order, so two sides whose column order
// differs still compare equal) is hashed with md5, and the first 120 bits of
// those hashes are summed as two 60-bit integers. No sort, no primary key
// needed, one sequential scan. Generated columns are left out (each side
// computes its own).
import pg from 'pg';

export interface TableName {
  readonly schema: string;
  readonly name: string;
}

export interface TableChecksum {
  readonly rows: number;
  /** '<sum of high bits>:<sum of low bits>' as decimal text. */
  readonly checksum: string;
}

export interface TableComparison {
  readonly table: string;
  readonly local: TableChecksum | null;
  readonly cloud: TableChecksum | null;
  readonly match: boolean;
}

export interface VerifyResult {
  readonly equal: boolean;
  readonly tables: readonly TableComparison[];
  /** A sentence: "12 tables, 48210 rows, all equal" or which differ. */
  readonly detail: string;
}

type Sql = Pick<pg.ClientBase, 'query'>;

export const qualify = (t: TableName) => `${pg.escapeIdentifier(t.schema)}.${pg.escapeIdentifier(t.name)}`;
export const displayName = (t: TableName) => `${t.schema}.${t.name}`;

export async function tableChecksum(client: Sql, table: TableName): Promise<TableChecksum> {
  const qualified = qualify(table);
  const cols = (
    await client.query<{ attname: string }>(
      `SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attname COLLATE "C"`,
      [qualified],
    )
  ).rows.map((r) => pg.escapeIdentifier(r.attname));
  const rowText = cols.length === 0 ? "''" : `ROW(${cols.join(', ')})::text`;
  const res = await client.query<{ rows: string; hi: string | null; lo: string | null }>(
    `SELECT count(*)::text AS rows,
            sum(('x' || substr(h, 1, 15))::bit(60)::bigint)::text AS hi,
            sum(('x' || substr(h, 16, 15))::bit(60)::bigint)::text AS lo
       FROM (SELECT md5(${rowText}) AS h FROM ${qualified} AS t) AS s`,
  );
  const row = res.rows[0]!;
  return { rows: Number(row.rows), checksum: `${row.hi ?? '0'}:${row.lo ?? '0'}` };
}

/** The user tables of a database (not pg_catalog, information_schema, pg_toast or lifeboat). */
export async function userTables(client: Sql): Promise<TableName[]> {
  const res = await client.query<{ schema: string; name: string }>(
    `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'lifeboat') AND n.nspname NOT LIKE 'pg_toast%'
      ORDER BY 1, 2`,
  );
  return res.rows;
}

/**
 * Compares every user table of either side (a table on one side only is a
 * difference). `onTable` reports progress after each table.
 */
export async function verifyTables(local: Sql, cloud: Sql, opts: { readonly onTable?: (c: TableComparison, done: number, total: number) => void } = {}): Promise<VerifyResult> {
  const [l, c] = await Promise.all([userTables(local), userTables(cloud)]);
  const byName = new Map<string, TableName>();
  for (const t of [...l, ...c]) byName.set(displayName(t), t);
  const localSet = new Set(l.map(displayName));
  const cloudSet = new Set(c.map(displayName));
  const names = [...byName.keys()].sort();
  const tables: TableComparison[] = [];
  for (const [i, key] of names.entries()) {
    const t = byName.get(key)!;
    const [a, b] = await Promise.all([localSet.has(key) ? tableChecksum(local, t) : null, cloudSet.has(key) ? tableChecksum(cloud, t) : null]);
    const cmp = { table: key, local: a, cloud: b, match: a !== null && b !== null && a.rows === b.rows && a.checksum === b.checksum };
    tables.push(cmp);
    opts.onTable?.(cmp, i + 1, names.length);
  }
  const differ = tables.filter((t) => !t.match);
  const rows = tables.reduce((n, t) => n + (t.local?.rows ?? 0), 0);
  const describe = (t: TableComparison) =>
    t.local === null ? `${t.table} (only in the cloud)` : t.cloud === null ? `${t.table} (only on local)` : `${t.table} (local ${t.local.rows} rows, cloud ${t.cloud.rows})`;
  const detail =
    differ.length === 0
      ? `${tables.length} tables, ${rows} rows, all equal`
      : `${differ.length} of ${tables.length} tables differ: ${differ.slice(0, 5).map(describe).join(', ')}${differ.length > 5 ? ', …' : ''}`;
  return { equal: differ.length === 0, tables, detail };
}
