// One real round trip through each service of the shared local stack.
import { Firestore } from '@google-cloud/firestore';
import { PubSub, type Message } from '@google-cloud/pubsub';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createDatabase, getStack, uniqueProjectId } from './stack-env.ts';

// Read before getStack(), which sets them: this checks what the worker inherited from globalSetup.
const inherited = {
  pubsub: process.env.PUBSUB_EMULATOR_HOST,
  firestore: process.env.FIRESTORE_EMULATOR_HOST,
};
const stack = getStack();

describe('local stack', () => {
  it.each(['local', 'cloud'] as const)('%s postgres: logical WAL, DDL and DML on a fresh database', async (which) => {
    const url = await createDatabase(which, 'roundtrip');
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const wal = await client.query<{ wal_level: string }>('SHOW wal_level');
      expect(wal.rows[0]?.wal_level).toBe('logical');
      const version = await client.query<{ server_version_num: string }>('SHOW server_version_num');
      expect(Number(version.rows[0]?.server_version_num)).toBeGreaterThanOrEqual(150000);
      await client.query('CREATE TABLE item (id bigint PRIMARY KEY, name text NOT NULL)');
      await client.query('INSERT INTO item VALUES ($1, $2), ($3, $4)', [1, 'one', 2, 'two']);
      const rows = await client.query<{ id: string; name: string }>('SELECT id, name FROM item ORDER BY id');
      expect(rows.rows).toEqual([
        { id: '1', name: 'one' },
        { id: '2', name: 'two' },
      ]);
    } finally {
      await client.end();
    }
  });

  it('the two clusters are separate servers', async () => {
    expect(stack.localUrl).not.toBe(stack.cloudUrl);
    const ids = await Promise.all(
      [stack.localUrl, stack.cloudUrl].map(async (url) => {
        const client = new pg.Client({ connectionString: url });
        await client.connect();
        try {
          return (await client.query<{ id: string }>('SELECT system_identifier::text AS id FROM pg_control_system()'))
            .rows[0]?.id;
        } finally {
          await client.end();
        }
      }),
    );
    expect(ids[0]).not.toBe(ids[1]);
  });

  it('workers inherit the emulator variables from globalSetup', () => {
    expect(inherited).toEqual({ pubsub: stack.pubsubEmulatorHost, firestore: stack.firestoreEmulatorHost });
  });

  it('pubsub emulator: publish with an ordering key, then pull and ack', async () => {
    const pubsub = new PubSub({
      projectId: uniqueProjectId('roundtrip'),
      apiEndpoint: stack.pubsubEmulatorHost,
      emulatorMode: true,
    });
    try {
      const [topic] = await pubsub.createTopic('changes');
      const [subscription] = await topic.createSubscription('apply', { enableMessageOrdering: true });
      const ordered = pubsub.topic('changes', { messageOrdering: true });
      const sent = ['first', 'second', 'third'];
      for (const text of sent) {
        await ordered.publishMessage({ data: Buffer.from(text), orderingKey: 'slot-1', attributes: { n: text } });
      }
      const received = await new Promise<Message[]>((resolve, reject) => {
        const got: Message[] = [];
        const timer = setTimeout(() => reject(new Error(`pulled only ${got.length} of 3 messages in 20s`)), 20_000);
        subscription.on('error', reject);
        subscription.on('message', (m: Message) => {
          m.ack();
          got.push(m);
          if (got.length === sent.length) {
            clearTimeout(timer);
            resolve(got);
          }
        });
      });
      await subscription.close();
      expect(received.map((m) => m.data.toString())).toEqual(sent);
      expect(received.every((m) => m.orderingKey === 'slot-1')).toBe(true);
    } finally {
      await pubsub.close();
    }
  });

  it('firestore emulator: a transaction reads and writes, and the write is visible after', async () => {
    const db = new Firestore({
      projectId: uniqueProjectId('roundtrip'),
      host: stack.firestoreEmulatorHost,
      ssl: false,
    });
    try {
      const lease = db.collection('leases').doc('standby');
      await lease.set({ holder: 'agent-a', epoch: 1 });
      const epoch = await db.runTransaction(async (tx) => {
        const snap = await tx.get(lease);
        const next = (snap.get('epoch') as number) + 1;
        tx.update(lease, { holder: 'function-b', epoch: next });
        return next;
      });
      expect(epoch).toBe(2);
      expect((await lease.get()).data()).toEqual({ holder: 'function-b', epoch: 2 });
    } finally {
      await db.terminate();
    }
  });
});
