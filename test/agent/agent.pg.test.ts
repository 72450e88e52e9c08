// The whole agent, in process, on the real local PostgreSQL and the real
// Pub/Sub emulator: snapshot, then streaming; a clean stop confirms what Pub/Sub
// acknowledged; a restart streams on from the slot without a second snapshot.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PubSub, type Message } from '@google-cloud/pubsub';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LifeboatAgent } from '../../agent/agent.ts';
import { createFsObjectStore } from '../../adapters/object-store-fs.ts';
import { createPubsubPublisher, ensureTopic } from '../../adapters/pubsub-publisher.ts';
import { decodeMessage } from '../../core/batch-codec.ts';
import type { ChangeBatch } from '../../core/change-batch.ts';
import { parseConfig } from '../../core/config.ts';
import { createLogger } from '../../core/log.ts';
import { formatLsn, parseLsn } from '../../core/lsn.ts';
import { createDatabase, getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const project = uniqueProjectId('agent');
const dir = mkdtempSync(join(tmpdir(), 'lifeboat-agent-test-'));
let url: string;
let db: pg.Client;
let pubsub: PubSub;
const received: ChangeBatch[] = [];
let unsubscribe: () => Promise<void>;

function config() {
  return parseConfig({
    project,
    stream: 'main',
    source: { databaseUrl: url, publication: 'lifeboat_test', slot: 'lifeboat_agent_test', maxSlotWalKeepSize: '1GB' },
    batching: { maxDelayMs: 50 },
    agent: { heartbeatIntervalSeconds: 1, snapshotChunkRows: 1000 },
    storage: { localDir: join(dir, 'objects') },
    logLevel: 'warning',
  });
}

function startAgent() {
  const cfg = config();
  const publisher = createPubsubPublisher({ projectId: project, topic: cfg.pubsub.changesTopic, emulatorHost: stack.pubsubEmulatorHost });
  const agent = new LifeboatAgent({
    config: cfg,
    baseDir: dir,
    publisher,
    objectStore: createFsObjectStore(join(dir, 'objects')),
    epoch: () => 4,
    stateDir: dir,
    logger: createLogger({ component: 'agent-test', level: 'warning' }),
  });
  const ac = new AbortController();
  const done = agent.run(ac.signal);
  return {
    agent,
    async stop() {
      ac.abort();
      await done;
      await publisher.close();
    },
  };
}

async function waitFor<T>(what: string, probe: () => T | undefined | false, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const changesRows = (kind: 'insert' | 'update' | 'delete') =>
  received.filter((b) => b.kind === 'changes').flatMap((b) => b.transactions.flatMap((t) => t.changes.filter((c) => c.op === kind)));

async function slotConfirmedLsn(): Promise<bigint> {
  const r = await db.query<{ lsn: string }>(`SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = 'lifeboat_agent_test'`);
  return parseLsn(r.rows[0]!.lsn);
}

beforeAll(async () => {
  url = await createDatabase('local', 'agent');
  db = new pg.Client({ connectionString: url });
  await db.connect();
  await db.query(`CREATE TABLE items (id bigint PRIMARY KEY, note text, amount numeric(40,10))`);
  await db.query(`CREATE TABLE "Empty Table" (id serial PRIMARY KEY)`);
  await db.query(`INSERT INTO items SELECT g, 'row ' || g, g * 1.5 FROM generate_series(1, 2500) g`);
  await ensureTopic({ projectId: project, topic: 'lifeboat-changes', emulatorHost: stack.pubsubEmulatorHost });
  pubsub = new PubSub({ projectId: project, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
  const [sub] = await pubsub.topic('lifeboat-changes').createSubscription('inspect', { enableMessageOrdering: true });
  // Decode in delivery order, so `received` is the order of first delivery.
  let decoded = Promise.resolve();
  sub.on('message', (m: Message) => {
    m.ack();
    decoded = decoded.then(async () => {
      received.push(await decodeMessage(m, async (uri) => createFsObjectStore(join(dir, 'objects')).get(uri)));
    });
  });
  unsubscribe = () => sub.close();
});

afterAll(async () => {
  await unsubscribe?.();
  await pubsub?.close();
  await db?.end();
  rmSync(dir, { recursive: true, force: true });
});

describe('LifeboatAgent', () => {
  it('copies the tables, then streams changes and heartbeats, and confirms on a clean stop', async () => {
    const run = startAgent();
    try {
      const marker = await waitFor('the snapshot-complete marker', () => received.find((b) => b.kind === 'marker'));
      expect(marker.marker?.reason).toBe('snapshot-complete');
      const snapshotRows = received.filter((b) => b.kind === 'snapshot').reduce((n, b) => n + (b.snapshot?.rows.length ?? 0), 0);
      expect(snapshotRows).toBe(2500);
      const tables = marker.marker?.snapshot?.tables.map((t) => `${t.schema}.${t.name}:${t.rows}`).sort();
      expect(tables).toEqual(['public.Empty Table:0', 'public.items:2500']);

      await db.query(`INSERT INTO items VALUES (5000, 'new', 123456789012345678901234567890.0123456789)`);
      await db.query(`BEGIN; UPDATE items SET note = 'changed' WHERE id = 1; DELETE FROM items WHERE id = 2; COMMIT`);
      await waitFor('the streamed delete', () => changesRows('delete').length === 1);
      expect(changesRows('insert').map((c) => (c.op === 'insert' ? c.new : []))).toEqual([
        ['5000', 'new', '123456789012345678901234567890.0123456789'],
      ]);
      await waitFor('a heartbeat', () => received.some((b) => b.kind === 'heartbeat'));
      expect(run.agent.status().phase).toBe('streaming');
      expect(run.agent.health().ok).toBe(true);
    } finally {
      await run.stop();
    }
    // Everything Pub/Sub acknowledged is confirmed to PostgreSQL, and nothing beyond.
    const lastChanges = received.filter((b) => b.kind !== 'snapshot' && b.kind !== 'marker').at(-1)!;
    const confirmed = await slotConfirmedLsn();
    expect(confirmed >= lastChanges.lsnLast).toBe(true);
    expect(run.agent.status().phase).toBe('stopped');
  });

  it('restarts from the slot: no second snapshot, an unbroken chain, nothing missed', async () => {
    const before = received.length;
    const confirmedBefore = await slotConfirmedLsn();
    await db.query(`INSERT INTO items VALUES (6000, 'while stopped', 1)`);
    const run = startAgent();
    try {
      await db.query(`INSERT INTO items VALUES (6001, 'after restart', 2)`);
      await waitFor('both new rows', () => changesRows('insert').filter((c) => c.op === 'insert' && ['6000', '6001'].includes(c.new[0] as string)).length >= 2);
    } finally {
      await run.stop();
    }
    const second = received.slice(before);
    expect(second.some((b) => b.kind === 'snapshot' || b.kind === 'marker')).toBe(false);
    // The first batch of the new session continues from what the slot confirmed.
    expect(formatLsn(second[0]!.lsnPrev)).toBe(formatLsn(confirmedBefore));
    // First deliveries form an unbroken chain across both sessions.
    let tip = 0n;
    for (const b of received.filter((x) => x.kind !== 'snapshot' && x.kind !== 'marker')) {
      expect(b.lsnPrev <= (tip || b.lsnPrev)).toBe(true);
      if (b.lsnLast > tip) tip = b.lsnLast;
    }
  });
});
