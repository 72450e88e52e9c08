// Graceful takeover, agent side, on the real stack: a running agent with its
// lease in the Firestore emulator answers the cloud's takeover request by
// fencing the local database, publishing a marker batch after every row that
// committed, releasing the lease at the marker, and stopping fenced.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLocalFence } from '../../agent/local-fence.ts';
import type { ChangeBatch } from '../../core/change-batch.ts';
import { PermanentError } from '../../core/errors.ts';
import type { LifeboatAgent } from '../../agent/agent.ts';
import { formatLsn, parseLsn } from '../../core/lsn.ts';
import { LeaseClient, type LeaseStore } from '../../core/writer-lease.ts';
import { defer, dropSlotEventually } from '../helpers/pg-test-resources.ts';
import { createDatabase } from '../stack/stack-env.ts';
import { startAgentHarness, waitFor, type AgentHarness } from './agent-harness.ts';

const READ_WRITE = '-c default_transaction_read_only=off';

let url: string;
let appRole: string;
let h: AgentHarness | undefined;

/** A read-write session for setup and cleanup (the database ends fenced). */
async function withAdmin(fn: (c: pg.Client) => Promise<unknown>): Promise<void> {
  const c = new pg.Client({ connectionString: url, options: READ_WRITE });
  await c.connect();
  try {
    await fn(c);
  } finally {
    await c.end();
  }
}

async function session(opts: { user?: string; readWrite?: boolean } = {}): Promise<pg.Client> {
  const u = new URL(url);
  if (opts.user) u.username = opts.user;
  const c = new pg.Client({ connectionString: u.toString(), ...(opts.readWrite && { options: READ_WRITE }) });
  c.on('error', () => {});
  await c.connect();
  defer(() => c.end().catch(() => {}));
  return c;
}

async function sqlState(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  }
}

const insertedIds = (batches: readonly ChangeBatch[]): string[] =>
  batches.flatMap((b) => (b.kind === 'changes' ? b.transactions.flatMap((t) => t.changes.flatMap((c) => (c.op === 'insert' ? [c.new[0] as string] : []))) : []));

beforeAll(async () => {
  url = await createDatabase('local', 'takeover');
  const database = decodeURIComponent(new URL(url).pathname.slice(1));
  appRole = `app_${database.slice(-12)}`;
  await withAdmin(async (c) => {
    await c.query('CREATE TABLE items (id bigint PRIMARY KEY, note text)');
    await c.query(`CREATE ROLE ${pg.escapeIdentifier(appRole)} LOGIN`);
    await c.query(`GRANT ALL ON items TO ${pg.escapeIdentifier(appRole)}`);
  });
  h = await startAgentHarness(url, 'takeover', {
    source: { appRole },
    lease: { ttlSeconds: 10, renewIntervalSeconds: 1, clockSkewMarginSeconds: 2 },
    failover: { drainTimeoutSeconds: 30 },
  });
});

afterAll(async () => {
  if (!h) return;
  await h.close();
  await dropSlotEventually(url, 'lifeboat_takeover').catch(() => {});
  await withAdmin(async (c) => {
    await c.query(`DROP OWNED BY ${pg.escapeIdentifier(appRole)}`);
    await c.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(appRole)}`);
  });
});

const harnessOf = (): AgentHarness => {
  if (!h) throw new Error('the harness did not start');
  return h;
};

describe('graceful takeover (agent side)', () => {
  it('fences local, publishes a marker after every committed row, releases the lease at the marker, and stops fenced', async () => {
    const h = harnessOf();
    const cfg = h.config();
    // What the agent had done at the moment it wrote the release.
    const atRelease: { markerLsn: string | null; acknowledgedLsn: string | null; fence: string }[] = [];
    const inner = h.leaseStore();
    let agent: LifeboatAgent | undefined;
    const recording: LeaseStore = {
      read: () => inner.read(),
      compareAndSet: (expected, next) => {
        if (next.releasedAt !== null && agent) {
          const s = agent.status();
          atRelease.push({ markerLsn: next.markerLsn, acknowledgedLsn: s.positions.publishedLsn, fence: s.fence.state });
        }
        return inner.compareAndSet(expected, next);
      },
    };
    const agentLease = new LeaseClient({ store: recording, timing: cfg });
    const cloud = new LeaseClient({ store: h.leaseStore(), timing: cfg });
    // Pub/Sub acknowledges the takeover marker only after a while, so a release that did not wait shows.
    let slowMarkers = false;
    const run = h.startAgent({
      lease: { client: agentLease },
      wrapPublisher: (p) => ({
        publish: async (message) => {
          const id = await p.publish(message);
          if (slowMarkers && message.attributes.kind === 'marker') await new Promise((r) => setTimeout(r, 1_500));
          return id;
        },
        resumeOrderingKey: (key) => p.resumeOrderingKey(key),
        close: () => p.close(),
      }),
    });
    agent = run.agent;
    await waitFor('streaming', () => run.agent.status().phase === 'streaming');
    expect(run.agent.status().fence.state).toBe('unfenced');

    // The app writes one row per transaction until the fence stops it.
    const app = await session({ user: appRole });
    const acknowledged: string[] = [];
    let appError: unknown;
    const writing = (async () => {
      for (let i = 1; ; i++) {
        try {
          await app.query('INSERT INTO items VALUES ($1, $2)', [i, `row ${i}`]);
          acknowledged.push(String(i));
        } catch (err) {
          appError = err;
          return;
        }
      }
    })();
    const idle = await session();
    await waitFor('rows streaming', () => acknowledged.length >= 20 && insertedIds(h.received).length >= 5);

    slowMarkers = true;
    const asked = await cloud.requestTakeover('cloud', 'the app health check failed 3 times');
    expect(asked).toMatchObject({ ok: true, change: 'takeover-requested' });
    const outcome = await run.done;
    await writing;

    expect(outcome.ending).toBe('handed-over');
    expect(appError).toBeDefined();
    const status = run.agent.status();
    expect(status.phase).toBe('handed-over');
    expect(status.fence.state).toBe('fenced');
    expect(status.handover).toMatchObject({ step: 'done' });

    // The lease is released at the marker batch's lsnLast, at the same epoch.
    const lease = (await cloud.read())!.lease;
    expect(lease).toMatchObject({ holder: 'local', epoch: 1, takeoverRequestedBy: 'cloud' });
    expect(lease.releasedAt).not.toBeNull();
    const marker = await waitFor('the takeover marker', () => h.received.find((b) => b.kind === 'marker' && b.marker?.reason === 'takeover'));
    expect(lease.markerLsn).toBe(formatLsn(marker.lsnLast));
    expect(status.handover?.markerLsn).toBe(formatLsn(marker.lsnLast));
    expect(marker.marker).toMatchObject({ reason: 'takeover', requestedBy: 'cloud' });
    expect(marker.epoch).toBe(1);
    // Released only after fencing, and after Pub/Sub acknowledged everything up to the marker.
    expect(atRelease).toHaveLength(1);
    expect(atRelease[0]!.markerLsn).toBe(formatLsn(marker.lsnLast));
    expect(atRelease[0]!.fence).toBe('fenced');
    expect(parseLsn(atRelease[0]!.acknowledgedLsn!) >= marker.lsnLast).toBe(true);

    // Every row that committed is in a batch before the marker, and no row after it.
    const reader = await session();
    const committed = (await reader.query<{ id: string }>('SELECT id::text AS id FROM items ORDER BY id')).rows.map((r) => r.id);
    expect(committed.length).toBeGreaterThanOrEqual(acknowledged.length);
    expect(committed).toEqual(expect.arrayContaining(acknowledged));
    const before = h.received.filter((b) => b.lsnLast <= marker.lsnLast);
    const after = h.received.filter((b) => b.lsnLast > marker.lsnLast);
    expect(new Set(insertedIds(before))).toEqual(new Set(committed));
    expect(after.filter((b) => b.kind === 'changes')).toEqual([]);
    // The chain leads into the marker without a hole.
    const chain = h.received.filter((b) => b.kind !== 'snapshot' && b.lsnLast <= marker.lsnLast).sort((a, b) => (a.lsnLast < b.lsnLast ? -1 : 1));
    const unique = chain.filter((b, i) => i === 0 || b.lsnLast !== chain[i - 1]!.lsnLast);
    for (let i = 1; i < unique.length; i++) expect(unique[i]!.lsnPrev).toBe(unique[i - 1]!.lsnLast);

    // Local refuses writes: existing sessions are gone, new ones are read-only, the app role is locked out.
    expect(await sqlState(idle.query('SELECT 1'))).toBeDefined();
    expect(await sqlState(reader.query(`INSERT INTO items VALUES (-1, 'after the fence')`))).toBe('25006');
    expect(await sqlState(session({ user: appRole }))).toBe('42501');
    const fence = await readLocalFence(reader);
    expect(fence.fenced).toBe(true);
    expect(fence.record?.reason).toMatch(/cloud requested a takeover \(the app health check failed 3 times\)/);

    // A new start cannot take the released lease back, and leaves the database fenced.
    const again = h.startAgent({ lease: { client: agentLease } });
    await expect(again.done).rejects.toThrow(PermanentError);
    await expect(again.done).rejects.toThrow(/cannot take the writer lease/);
    expect((await readLocalFence(await session())).fenced).toBe(true);
  }, 120_000);
});
