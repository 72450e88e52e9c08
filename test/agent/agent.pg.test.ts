// The whole agent, in process, on the real local PostgreSQL and the real
// Pub/Sub emulator: snapshot, then streaming; a clean stop confirms what Pub/Sub
// acknowledged; a restart streams on from the slot without a second snapshot.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatLsn, parseLsn } from '../../core/lsn.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { startAgentHarness, waitFor, type AgentHarness } from './agent-harness.ts';

let db: pg.Client;
let h: AgentHarness;

async function slotConfirmedLsn(): Promise<bigint> {
  const r = await db.query<{ lsn: string }>(`SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = 'lifeboat_agenttest'`);
  return parseLsn(r.rows[0]!.lsn);
}

beforeAll(async () => {
  const url = await createDatabase('local', 'agent');
  db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query(`CREATE TABLE items (id bigint PRIMARY KEY, note text, amount numeric(40,10))`);
  await db.query(`CREATE TABLE "Empty Table" (id serial PRIMARY KEY)`);
  await db.query(`INSERT INTO items SELECT g, 'row ' || g, g * 1.5 FROM generate_series(1, 2500) g`);
  h = await startAgentHarness(url, 'agenttest');
});

afterAll(async () => {
  await h?.close();
  await db?.end();
});

describe('LifeboatAgent', () => {
  it('copies the tables, then streams changes and heartbeats, and confirms on a clean stop', async () => {
    const run = h.startAgent();
    try {
      const marker = await waitFor('the snapshot-complete marker', () => h.received.find((b) => b.kind === 'marker'));
      expect(marker.marker?.reason).toBe('snapshot-complete');
      const snapshotRows = h.received.filter((b) => b.kind === 'snapshot').reduce((n, b) => n + (b.snapshot?.rows.length ?? 0), 0);
      expect(snapshotRows).toBe(2500);
      const tables = marker.marker?.snapshot?.tables.map((t) => `${t.schema}.${t.name}:${t.rows}`).sort();
      expect(tables).toEqual(['lifeboat.ddl_log:0', 'public.Empty Table:0', 'public.items:2500']);

      await db.query(`INSERT INTO items VALUES (5000, 'new', 123456789012345678901234567890.0123456789)`);
      await db.query(`BEGIN; UPDATE items SET note = 'changed' WHERE id = 1; DELETE FROM items WHERE id = 2; COMMIT`);
      await waitFor('the streamed delete', () => h.changes('delete').length === 1);
      expect(h.changes('insert').map((c) => (c.op === 'insert' ? c.new : []))).toEqual([
        ['5000', 'new', '123456789012345678901234567890.0123456789'],
      ]);
      await waitFor('a heartbeat', () => h.received.some((b) => b.kind === 'heartbeat'));
      expect(run.agent.status().phase).toBe('streaming');
      expect(run.agent.health().ok).toBe(true);
    } finally {
      await run.stop();
    }
    // Everything Pub/Sub acknowledged is confirmed to PostgreSQL.
    const lastBatch = h.received.filter((b) => b.kind !== 'snapshot' && b.kind !== 'marker').at(-1)!;
    expect((await slotConfirmedLsn()) >= lastBatch.lsnLast).toBe(true);
    expect(run.agent.status().phase).toBe('stopped');
  });

  it('restarts from the slot: no second snapshot, an unbroken chain, nothing missed', async () => {
    const before = h.received.length;
    const confirmedBefore = await slotConfirmedLsn();
    await db.query(`INSERT INTO items VALUES (6000, 'while stopped', 1)`);
    const run = h.startAgent();
    try {
      await db.query(`INSERT INTO items VALUES (6001, 'after restart', 2)`);
      await waitFor('both new rows', () => h.changes('insert').filter((c) => c.op === 'insert' && ['6000', '6001'].includes(c.new[0] as string)).length >= 2);
    } finally {
      await run.stop();
    }
    const second = h.received.slice(before);
    expect(second.some((b) => b.kind === 'snapshot' || b.kind === 'marker')).toBe(false);
    // The first batch of the new session continues from what the slot confirmed.
    expect(formatLsn(second[0]!.lsnPrev)).toBe(formatLsn(confirmedBefore));
    // First deliveries form an unbroken chain across both sessions.
    let tip = 0n;
    for (const b of h.received.filter((x) => x.kind !== 'snapshot' && x.kind !== 'marker')) {
      expect(b.lsnPrev <= (tip || b.lsnPrev)).toBe(true);
      if (b.lsnLast > tip) tip = b.lsnLast;
    }
  });
});
