// DDL capture on the SOURCE: an event trigger writes every schema change into
// lifeboat.ddl_log. That table is published like any other, so each DDL
// statement travels in the change stream in commit order, and the apply side
// (functions/apply-engine.ts) runs it at its position, before later changes.
//
//   ddl_command_end   CREATE/ALTER/COMMENT/GRANT … (not DROP: see sql_drop)
//   sql_drop          DROP …, with pg_event_trigger_dropped_objects() so
//                     drops of lifeboat's own objects can be recognized
//
// What is logged: current_query(), the TOP-LEVEL query string the client
// sent, with the session's search_path and role. Not logged: commands whose
// objects are all in the lifeboat schema (or the schema itself), and
// publication/subscription commands (they belong to the replication setup,
// not to the application's schema).
//
// Multi-statement strings (limitation, handled): a client may send several
// statements in one query string ("CREATE TABLE a …; CREATE INDEX …;
// INSERT …"). Each DDL command in it fires the trigger, but all see the same
// current_query(). The string is logged ONCE per transaction (the first DDL
// command in it), and the apply side splits it and leaves out its data
// changes and transaction control (apply-sql.ts planDdlReplay), whose rows
// arrive through replication anyway. A data change hidden in a function
// called by the string would run twice on the target; psql and most
// migration tools send one statement per query, which has no such issue.
// Also, a DDL command run inside a function is replayed by re-running the
// top-level statement that called the function (e.g. `SELECT migrate()`),
// so the function must exist on the target (its CREATE FUNCTION was replayed).
//
// Needs a superuser on the source: only superusers create event triggers.

import pg from 'pg';
import { PermanentError } from '../core/errors.ts';
import { CREATE_DDL_LOG_TABLE } from '../core/ddl-log.ts';

export type SqlClient = Pick<pg.ClientBase, 'query'>;

export const DDL_LOG_TABLE = 'lifeboat.ddl_log';
const TRIGGER_FUNCTION = 'lifeboat.capture_ddl';
export const DDL_END_TRIGGER = 'lifeboat_ddl_command_end';
export const SQL_DROP_TRIGGER = 'lifeboat_sql_drop';

// Shared by both triggers: skip lifeboat-only and replication-setup commands,
// log the top-level query once per transaction.
const FUNCTION_SQL = `
CREATE OR REPLACE FUNCTION lifeboat.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  objects text[];
  schemas text[];
  query text := current_query();
BEGIN
  IF tg_tag LIKE '% PUBLICATION' OR tg_tag LIKE '% SUBSCRIPTION' THEN
    RETURN;
  END IF;
  IF tg_event = 'sql_drop' THEN
    SELECT array_agg(object_identity ORDER BY object_identity), array_agg(DISTINCT coalesce(schema_name, CASE WHEN object_type = 'schema' THEN object_identity END))
      INTO objects, schemas
      FROM pg_event_trigger_dropped_objects() WHERE original;
  ELSE
    IF tg_tag LIKE 'DROP %' THEN
      RETURN; -- logged by the sql_drop trigger
    END IF;
    SELECT array_agg(object_identity ORDER BY object_identity), array_agg(DISTINCT coalesce(schema_name, CASE WHEN object_type = 'schema' THEN object_identity END))
      INTO objects, schemas
      FROM pg_event_trigger_ddl_commands();
  END IF;
  IF schemas IS NOT NULL AND schemas <@ ARRAY['lifeboat']::text[] THEN
    RETURN;
  END IF;
  IF query IS NULL THEN
    RETURN;
  END IF;
  IF EXISTS (SELECT 1 FROM lifeboat.ddl_log WHERE xid = txid_current() AND ddl = query) THEN
    RETURN; -- the same multi-statement string, already logged in this transaction
  END IF;
  INSERT INTO lifeboat.ddl_log (xid, command_tag, object_identity, ddl, search_path, role)
  VALUES (txid_current(), tg_tag, array_to_string(objects, ', '), query, current_setting('search_path'), current_user);
END
$fn$`;

// The triggers are dropped first and created last, so the setup itself (whose
// IF NOT EXISTS no-ops report no objects) is never logged.
const STATEMENTS = [
  `DROP EVENT TRIGGER IF EXISTS ${DDL_END_TRIGGER}`,
  `DROP EVENT TRIGGER IF EXISTS ${SQL_DROP_TRIGGER}`,
  'CREATE SCHEMA IF NOT EXISTS lifeboat',
  CREATE_DDL_LOG_TABLE,
  'CREATE INDEX IF NOT EXISTS ddl_log_xid ON lifeboat.ddl_log (xid)',
  FUNCTION_SQL,
  `CREATE EVENT TRIGGER ${DDL_END_TRIGGER} ON ddl_command_end EXECUTE FUNCTION ${TRIGGER_FUNCTION}()`,
  `CREATE EVENT TRIGGER ${SQL_DROP_TRIGGER} ON sql_drop EXECUTE FUNCTION ${TRIGGER_FUNCTION}()`,
];

/**
 * Creates lifeboat.ddl_log and the event triggers on the source, in one
 * transaction (idempotent: re-running replaces the function and triggers;
 * the setup itself is never logged).
 * @throws PermanentError when the role may not create event triggers.
 */
export async function ensureDdlCapture(client: SqlClient): Promise<void> {
  await client.query('BEGIN');
  try {
    for (const statement of STATEMENTS) await client.query(statement);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    const code = (err as { code?: unknown }).code;
    if (code === '42501') {
      throw new PermanentError(`cannot set up DDL capture on the source: ${err instanceof Error ? err.message : String(err)}`, {
        remedy:
          'Creating an event trigger needs a superuser. Run `lifeboat agent` once with a superuser connection (or ask an administrator to run ALTER ROLE <agent role> SUPERUSER temporarily); without it schema changes do not reach the standby.',
        details: { sqlstate: code },
        cause: err,
      });
    }
    throw err;
  }
}

/** Whether both event triggers exist and are enabled. */
export async function isDdlCaptureEnabled(client: SqlClient): Promise<boolean> {
  const res = await client.query<{ n: string }>(
    "SELECT count(*) AS n FROM pg_event_trigger WHERE evtname = ANY($1) AND evtenabled <> 'D'",
    [[DDL_END_TRIGGER, SQL_DROP_TRIGGER]],
  );
  return Number(res.rows[0]?.n ?? 0) === 2;
}
