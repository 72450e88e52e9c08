// The `lifeboat` schema on the TARGET database (Cloud SQL): the apply
// engine's bookkeeping, moved in the same transaction as the data it guards.
//
//   stream_state     one row per stream, locked FOR UPDATE by every apply
//                    transaction (serializes concurrent deliveries, and makes
//                    the epoch check happen inside the transaction):
//                      watermark W (NULL until the initial copy completes),
//                      fencing epoch (written only by failover, never lowered),
//                      writer_epoch (highest epoch seen on an applied batch,
//                      informational), the current snapshot, and the halt.
//   snapshots        every snapshotId seen per stream (a chunk of an older one
//                    is superseded).
//   snapshot_chunks  (stream, snapshot_id, schema, name, chunk): each snapshot
//                    chunk applies once (tables without a PK cannot be upserted).
//   stale_batches    batches refused for a stale epoch, payload kept for the
//                    stranded-tail report of failover.
//   audit            halts, resumes, skips, markers.
//   ddl_log          the replicated copy of the source's DDL log (same shape
//                    as agent/ddl-capture.ts creates on the source).
//
// Migrations are versioned: `lifeboat.schema_version` holds the applied
// version; each step runs once, in order, in one transaction, under an
// advisory lock so concurrent cold starts of the function do not race.

import pg from 'pg';
import { PermanentError } from '../core/errors.ts';
import { CREATE_DDL_LOG_TABLE } from '../core/ddl-log.ts';

export type SqlClient = Pick<pg.ClientBase, 'query'>;

/** Key for pg_advisory_xact_lock while migrating (arbitrary, fixed). */
const MIGRATION_LOCK_KEY = 0x6c6966656230n;

const MIGRATIONS: readonly (readonly string[])[] = [
  // 1: initial schema
  [
    `CREATE TABLE IF NOT EXISTS lifeboat.stream_state (
       stream text PRIMARY KEY,
       watermark pg_lsn,
       applied_at timestamptz,
       epoch bigint NOT NULL DEFAULT 0,
       writer_epoch bigint NOT NULL DEFAULT 0,
       epoch_set_at timestamptz,
       snapshot_id text,
       snapshot_consistent_lsn pg_lsn,
       snapshot_complete boolean NOT NULL DEFAULT false,
       snapshot_completed_at timestamptz,
       halted boolean NOT NULL DEFAULT false,
       halt_reason text,
       halt_remedy text,
       halt_batch jsonb,
       halted_at timestamptz,
       applied_batches bigint NOT NULL DEFAULT 0,
       applied_rows bigint NOT NULL DEFAULT 0,
       created_at timestamptz NOT NULL DEFAULT now()
     )`,
    `CREATE TABLE IF NOT EXISTS lifeboat.snapshots (
       stream text NOT NULL,
       snapshot_id text NOT NULL,
       consistent_lsn pg_lsn NOT NULL,
       started_at timestamptz NOT NULL DEFAULT now(),
       PRIMARY KEY (stream, snapshot_id)
     )`,
    `CREATE TABLE IF NOT EXISTS lifeboat.snapshot_chunks (
       stream text NOT NULL,
       snapshot_id text NOT NULL,
       schema text NOT NULL,
       name text NOT NULL,
       chunk integer NOT NULL,
       rows integer NOT NULL,
       last_chunk boolean NOT NULL,
       applied_at timestamptz NOT NULL DEFAULT now(),
       PRIMARY KEY (stream, snapshot_id, schema, name, chunk)
     )`,
    `CREATE TABLE IF NOT EXISTS lifeboat.stale_batches (
       id bigserial PRIMARY KEY,
       stream text NOT NULL,
       epoch bigint NOT NULL,
       fencing_epoch bigint NOT NULL,
       kind text NOT NULL,
       seq bigint NOT NULL,
       lsn_prev pg_lsn NOT NULL,
       lsn_first pg_lsn NOT NULL,
       lsn_last pg_lsn NOT NULL,
       received_at timestamptz NOT NULL DEFAULT now(),
       attributes jsonb,
       payload jsonb NOT NULL,
       -- sha256 of the payload: a redelivered stale batch is kept once
       payload_sha256 text NOT NULL,
       UNIQUE (stream, payload_sha256)
     )`,
    `CREATE INDEX IF NOT EXISTS stale_batches_stream_lsn ON lifeboat.stale_batches (stream, lsn_first)`,
    `CREATE TABLE IF NOT EXISTS lifeboat.audit (
       id bigserial PRIMARY KEY,
       at timestamptz NOT NULL DEFAULT now(),
       stream text NOT NULL,
       actor text NOT NULL,
       action text NOT NULL,
       detail jsonb NOT NULL DEFAULT '{}'
     )`,
    CREATE_DDL_LOG_TABLE,
  ],
  // 2: messages that failed validation, kept whole (never silently dropped).
  [
    `CREATE TABLE IF NOT EXISTS lifeboat.rejected_messages (
       id bigserial PRIMARY KEY,
       received_at timestamptz NOT NULL DEFAULT now(),
       message_id text,
       ordering_key text,
       attributes jsonb NOT NULL,
       data bytea NOT NULL,
       error text NOT NULL
     )`,
  ],
];

/** The schema version this code expects. */
export const TARGET_SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Creates or upgrades the `lifeboat` schema on the target. Idempotent; safe
 * to call at every cold start. Runs in its own transaction: call it on a
 * client that is not inside one.
 * @returns the version before and after.
 * @throws PermanentError when the target was migrated by newer code.
 */
export async function ensureTargetSchema(client: SqlClient): Promise<{ from: number; to: number }> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [MIGRATION_LOCK_KEY.toString()]);
    await client.query('CREATE SCHEMA IF NOT EXISTS lifeboat');
    await client.query('CREATE TABLE IF NOT EXISTS lifeboat.schema_version (version integer NOT NULL, migrated_at timestamptz NOT NULL DEFAULT now())');
    const res = await client.query<{ version: number | null }>('SELECT max(version) AS version FROM lifeboat.schema_version');
    const from = res.rows[0]?.version ?? 0;
    if (from > TARGET_SCHEMA_VERSION) {
      throw new PermanentError(`the target's lifeboat schema is at version ${from}, newer than this code's ${TARGET_SCHEMA_VERSION}`, {
        remedy: 'Deploy the apply function from the same Lifeboat release that migrated the target (or newer).',
        details: { from, supported: TARGET_SCHEMA_VERSION },
      });
    }
    for (let version = from + 1; version <= TARGET_SCHEMA_VERSION; version++) {
      for (const statement of MIGRATIONS[version - 1]!) await client.query(statement);
      await client.query('INSERT INTO lifeboat.schema_version (version) VALUES ($1)', [version]);
    }
    await client.query('COMMIT');
    return { from, to: TARGET_SCHEMA_VERSION };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
