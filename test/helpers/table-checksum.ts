// Per-table checksum for comparing source and target: md5 over every row's
// text, rows ordered by primary key (or by the whole row when there is none),
// columns taken by name in name order, so the two sides compare equal even
// when their column order differs (a table created from a descriptor lists
// columns in descriptor order).
import pg from 'pg';

export interface TableChecksum {
  readonly rows: number;
  readonly md5: string;
}

/** `table` is 'schema.name' or 'name' (public). Generated columns are left out unless `columns` names them. */
export async function tableChecksum(client: Pick<pg.ClientBase, 'query'>, table: string, opts: { columns?: readonly string[] } = {}): Promise<TableChecksum> {
  const [schema, name] = table.includes('.') ? (table.split('.', 2) as [string, string]) : ['public', table];
  const qualified = `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(name)}`;
  const cols =
    opts.columns ??
    (
      await client.query<{ attname: string }>(
        `SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attname`,
        [qualified],
      )
    ).rows.map((r) => r.attname);
  const pk = (
    await client.query<{ attname: string }>(
      `SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)`,
      [qualified],
    )
  ).rows.map((r) => r.attname);
  const rowText = cols.length === 0 ? "''" : `ROW(${cols.map((c) => pg.escapeIdentifier(c)).join(', ')})::text`;
  const order = pk.length > 0 ? pk.map((c) => pg.escapeIdentifier(c)).join(', ') : 'r';
  const res = await client.query<{ rows: string; md5: string | null }>(
    `SELECT count(*) AS rows, md5(string_agg(r, E'\\n' ORDER BY ${order})) AS md5 FROM (SELECT ${rowText} AS r${pk.length > 0 ? `, ${pk.map((c) => pg.escapeIdentifier(c)).join(', ')}` : ''} FROM ${qualified}) AS s`,
  );
  return { rows: Number(res.rows[0]!.rows), md5: res.rows[0]!.md5 ?? md5Empty };
}

const md5Empty = 'd41d8cd98f00b204e9800998ecf8427e';

/** The user tables of a database (not pg_catalog, information_schema or lifeboat), as 'schema.name'. */
export async function userTables(client: Pick<pg.ClientBase, 'query'>): Promise<string[]> {
  const res = await client.query<{ t: string }>(
    `SELECT n.nspname || '.' || c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'lifeboat') AND n.nspname NOT LIKE 'pg_toast%'
      ORDER BY 1`,
  );
  return res.rows.map((r) => r.t);
}
