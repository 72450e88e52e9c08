// kill -9 the agent process several times in the middle of a write load.
// Every committed transaction must be published at least once, and the first
// delivery of each transaction must come in commit order.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PubSub, type Message } from '@google-cloud/pubsub';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureTopic } from '../../adapters/pubsub-publisher.ts';
import { createFsObjectStore } from '../../adapters/object-store-fs.ts';
import { decodeMessage } from '../../core/batch-codec.ts';
import type { ChangeBatch } from '../../core/change-batch.ts';
import { createDatabase, getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const KILLS = 4;
const dir = mkdtempSync(join(tmpdir(), 'lifeboat-agent-kill-'));
const children = new Set<ChildProcess>();

afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function startAgentProcess(config: unknown): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'fixtures', 'run-agent.ts')], {
    env: {
      ...process.env,
      LIFEBOAT_LOG_LEVEL: 'error',
      LIFEBOAT_TEST_AGENT_CONFIG: JSON.stringify({ config, dir, emulatorHost: stack.pubsubEmulatorHost, epoch: 2 }),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('agent-started')) resolve(child);
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('agent under kill -9', () => {
  it(`loses nothing across ${KILLS} kills in the middle of a stream under load`, async () => {
    const url = await createDatabase('local', 'agentkill');
    const project = uniqueProjectId('agentkill');
    const config = {
      project,
      source: { databaseUrl: url, publication: 'lifeboat_kill', slot: 'lifeboat_kill', maxSlotWalKeepSize: '1GB' },
      batching: { maxDelayMs: 50, maxRows: 200 },
      agent: { heartbeatIntervalSeconds: 1 },
      storage: { localDir: join(dir, 'objects') },
    };
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    await db.query('CREATE TABLE events (id bigint PRIMARY KEY, tx int NOT NULL)');
    await ensureTopic({ projectId: project, topic: 'lifeboat-changes', emulatorHost: stack.pubsubEmulatorHost });
    const pubsub = new PubSub({ projectId: project, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
    const [sub] = await pubsub.topic('lifeboat-changes').createSubscription('inspect', { enableMessageOrdering: true });
    const received: ChangeBatch[] = [];
    let decoded = Promise.resolve();
    sub.on('message', (m: Message) => {
      m.ack();
      decoded = decoded.then(async () => {
        received.push(await decodeMessage(m, (uri) => createFsObjectStore(join(dir, 'objects')).get(uri)));
      });
    });

    let agent = await startAgentProcess(config);
    const deadline = Date.now() + 60_000;
    while (!received.some((b) => b.kind === 'marker') && Date.now() < deadline) await sleep(50);
    expect(received.some((b) => b.kind === 'marker')).toBe(true);

    // Write load: small transactions, each with 3 rows, as fast as one client goes.
    let stopLoad = false;
    let committedTx = 0;
    const load = (async () => {
      let id = 0;
      while (!stopLoad) {
        const tx = ++committedTx;
        await db.query(`INSERT INTO events VALUES (${++id}, ${tx}), (${++id}, ${tx}), (${++id}, ${tx})`);
      }
    })();

    for (let i = 0; i < KILLS; i++) {
      await sleep(700 + Math.floor(Math.random() * 900));
      agent.kill('SIGKILL');
      await new Promise((r) => agent.once('exit', r));
      await sleep(Math.floor(Math.random() * 300));
      agent = await startAgentProcess(config);
    }
    await sleep(1000);
    stopLoad = true;
    await load;
    const rows = Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM events')).rows[0]!.n);

    // Everything committed arrives: the highest tx and every row id.
    const seenIds = () => new Set(received.flatMap((b) => b.transactions.flatMap((t) => t.changes.map((c) => (c.op === 'insert' ? c.new[0] : null)))));
    const until = Date.now() + 90_000;
    while (seenIds().size < rows && Date.now() < until) await sleep(200);
    agent.kill('SIGTERM');
    await new Promise((r) => agent.once('exit', r));
    await sub.close();
    await pubsub.close();
    await db.end();

    const ids = seenIds();
    expect(ids.size).toBe(rows);
    for (let id = 1; id <= rows; id++) expect(ids.has(String(id))).toBe(true);

    // First deliveries of transactions come in commit order.
    const firstSeen = new Set<bigint>();
    let lastFirst = 0n;
    for (const b of received) {
      for (const t of b.transactions) {
        if (firstSeen.has(t.commitLsn)) continue;
        firstSeen.add(t.commitLsn);
        expect(t.commitLsn > lastFirst).toBe(true);
        lastFirst = t.commitLsn;
      }
    }
    expect(firstSeen.size).toBe(committedTx);
    // For the closing note: how much load the kills cut through.
    console.log(`agent kill test: ${KILLS} kills, ${committedTx} transactions, ${rows} rows, ${received.length} batches received`);
  }, 240_000);
});
