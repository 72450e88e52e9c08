// `lifeboat agent` as a user runs it: a process with a config file, the
// emulators from the environment, endpoints on a local port, SIGTERM to stop.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PubSub, type Message } from '@google-cloud/pubsub';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureTopic } from '../../adapters/pubsub-publisher.ts';
import { decodeMessage } from '../../core/batch-codec.ts';
import type { ChangeBatch } from '../../core/change-batch.ts';
import { createDatabase, getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const dir = mkdtempSync(join(tmpdir(), 'lifeboat-agent-cli-'));
const SECRET = 'pw-s3cret-never-logged';
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('lifeboat agent (the command)', () => {
  it('streams, serves /healthz /status /metrics without secrets, holds the lease, and exits 0 on SIGTERM', async () => {
    const url = new URL(await createDatabase('local', 'agentcli'));
    url.password = SECRET; // trust auth ignores it; it must still never show up
    const project = uniqueProjectId('agentcli');
    writeFileSync(
      join(dir, 'lifeboat.yaml'),
      [
        `project: ${project}`,
        'source:',
        `  databaseUrl: ${url.toString()}`,
        'agent:',
        '  httpPort: 0',
        '  heartbeatIntervalSeconds: 1',
        'batching:',
        '  maxDelayMs: 50',
        '',
      ].join('\n'),
    );
    const db = new pg.Client({ connectionString: url.toString() });
    await db.connect();
    await db.query('CREATE TABLE notes (id int PRIMARY KEY, body text)');
    await ensureTopic({ projectId: project, topic: 'lifeboat-changes', emulatorHost: stack.pubsubEmulatorHost });
    const pubsub = new PubSub({ projectId: project, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
    const [sub] = await pubsub.topic('lifeboat-changes').createSubscription('inspect');
    const received: ChangeBatch[] = [];
    sub.on('message', (m: Message) => {
      m.ack();
      void decodeMessage(m).then((b) => received.push(b));
    });

    const child = spawn(process.execPath, [join(import.meta.dirname, '../../bin/lifeboat.js'), 'agent', '--config', join(dir, 'lifeboat.yaml')], {
      cwd: dir,
      env: { ...process.env, PUBSUB_EMULATOR_HOST: stack.pubsubEmulatorHost, FIRESTORE_EMULATOR_HOST: stack.firestoreEmulatorHost, LIFEBOAT_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const endpoint = await waitFor(() => /agent endpoints on (http:\/\/[\d.:]+)/.exec(output)?.[1], () => `no endpoint line; output:\n${output}`);
      await waitFor(async () => (await fetch(`${endpoint}/healthz`)).ok && ((await (await fetch(`${endpoint}/status`)).json()) as { phase: string }).phase === 'streaming', () => output);
      await db.query(`INSERT INTO notes VALUES (1, 'hello')`);
      await waitFor(() => received.some((b) => b.kind === 'changes'), () => output);

      const status = await (await fetch(`${endpoint}/status`)).text();
      const parsed = JSON.parse(status);
      expect(parsed.lease).toMatchObject({ holder: 'local', epoch: 1 });
      expect(parsed.epoch).toBe(1);
      expect(received.find((b) => b.kind === 'changes')?.epoch).toBe(1);
      const metrics = await (await fetch(`${endpoint}/metrics`)).text();
      expect(metrics).toMatch(/lifeboat_agent_rows_published_total\{stream="main"\} \d+/);
      expect(status).not.toContain(SECRET);
      expect(metrics).not.toContain(SECRET);
    } finally {
      child.kill('SIGTERM');
      const code = await exited;
      if (code !== 0) console.error(output);
      expect(code).toBe(0);
      await sub.close();
      await pubsub.close();
      await db.end();
    }
    expect(output).not.toContain(SECRET);
    expect(output).toMatch(/"severity":"NOTICE"/);
  }, 120_000);

  it('says what is missing when the emulators are not set in local mode', async () => {
    writeFileSync(join(dir, 'bare.yaml'), 'source:\n  databaseUrl: postgres://127.0.0.1:1/x\n');
    const env = { ...process.env };
    delete env.PUBSUB_EMULATOR_HOST;
    delete env.FIRESTORE_EMULATOR_HOST;
    const child = spawn(process.execPath, [join(import.meta.dirname, '../../bin/lifeboat.js'), 'agent', '--config', join(dir, 'bare.yaml')], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    expect(code).toBe(1);
    expect(err).toMatch(/local mode needs the emulators, but pubsub\.emulatorHost \(or PUBSUB_EMULATOR_HOST\) and FIRESTORE_EMULATOR_HOST are not set.*lifeboat local/s);
  }, 60_000);
});

async function waitFor<T>(probe: () => T | undefined | false | Promise<T | undefined | false>, explain: () => string, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`timed out: ${explain()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
