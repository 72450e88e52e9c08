// End to end: pgbench writes on the local cluster while the real agent
// publishes to the Pub/Sub emulator, which pushes to the apply function served
// by functions-framework on localhost, which writes the cloud cluster.
// Afterwards every table has the same checksum on both sides.
import { spawn } from 'node:child_process';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PubSub } from '@google-cloud/pubsub';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tableChecksum } from '../helpers/table-checksum.ts';
import { startAgentHarness, waitFor, type AgentHarness } from '../agent/agent-harness.ts';
import { createDatabase, getStack } from '../stack/stack-env.ts';

const PG_BIN = process.env.LIFEBOAT_PG_BIN ?? '/usr/lib/postgresql/15/bin';
const PGBENCH_SECONDS = 30;
const TABLES = ['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history'];

let sourceUrl: string;
let targetUrl: string;
let server: Server;
let h: AgentHarness;
let pubsub: PubSub;

function pgbench(args: string[]): Promise<string> {
  const url = new URL(sourceUrl);
  return new Promise((resolve, reject) => {
    const child = spawn(`${PG_BIN}/pgbench`, [...args, '-h', url.hostname, '-p', url.port, '-U', 'postgres', url.pathname.slice(1)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`pgbench ${args.join(' ')} exited ${code}:\n${out}`))));
  });
}

async function checksums(url: string) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return Object.fromEntries(await Promise.all(TABLES.map(async (t) => [t, await tableChecksum(c, t)] as const)));
  } finally {
    await c.end();
  }
}

beforeAll(async () => {
  sourceUrl = await createDatabase('local', 'e2e');
  targetUrl = await createDatabase('cloud', 'e2e');
  await pgbench(['-i', '-s', '1', '-q']);
  // The apply function, in process, behind a real HTTP server.
  process.env.LIFEBOAT_TARGET_DATABASE_URL = targetUrl;
  process.env.LIFEBOAT_CONFIG = '/nonexistent/lifeboat.yaml';
  process.env.LIFEBOAT_LOG_LEVEL = 'error';
  await import('../../functions/index.ts');
  const { getTestServer } = await import('@google-cloud/functions-framework/testing');
  server = getTestServer('lifeboatApply');
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;

  h = await startAgentHarness(sourceUrl, 'e2e', { batching: { maxDelayMs: 100 } });
  pubsub = new PubSub({ projectId: h.project, apiEndpoint: getStack().pubsubEmulatorHost, emulatorMode: true });
  const topic = h.config().pubsub.changesTopic;
  await pubsub.topic(topic).createSubscription('lifeboat-apply', {
    enableMessageOrdering: true,
    pushConfig: { pushEndpoint: `http://127.0.0.1:${port}/projects/${h.project}/topics/${topic}` },
    ackDeadlineSeconds: 60,
    retryPolicy: { minimumBackoff: { seconds: 1 }, maximumBackoff: { seconds: 5 } },
  });
}, 180_000);

afterAll(async () => {
  await pubsub?.close();
  await h?.close();
  await new Promise((r) => server?.close(r));
});

describe('agent → Pub/Sub → apply function → target', () => {
  it(`pgbench for ${PGBENCH_SECONDS} s ends with equal checksums on every table`, async () => {
    const run = h.startAgent();
    try {
      await waitFor('the initial copy to be published', () => h.received.some((b) => b.kind === 'marker'), 120_000);
      const out = await pgbench(['-T', String(PGBENCH_SECONDS), '-c', '4', '-j', '2', '-n']);
      const tps = /tps = ([\d.]+)/.exec(out)?.[1];
      const source = await checksums(sourceUrl);
      let target = await checksums(targetUrl);
      const deadline = Date.now() + 180_000;
      while (JSON.stringify(target) !== JSON.stringify(source) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 1000));
        target = await checksums(targetUrl);
      }
      expect(target).toEqual(source);
      expect(source.pgbench_history!.rows).toBeGreaterThan(0);
      console.log(`e2e: pgbench ${PGBENCH_SECONDS} s at ${tps} tps; ${source.pgbench_history!.rows} transactions replicated; checksums equal`);
    } finally {
      await run.stop();
    }
  }, 420_000);
});
