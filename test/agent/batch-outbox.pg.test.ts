// The publishing path end to end on the real Pub/Sub emulator: ordering,
// flow control, claim checks through the filesystem store, a permanent error,
// and an emulator that is stopped and started while batches are in flight.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PubSub, type Message, type Subscription } from '@google-cloud/pubsub';
import { afterEach, describe, expect, it } from 'vitest';
import { FsObjectStore } from '../../adapters/object-store-fs.ts';
import { createPubsubPublisher, ensureTopic } from '../../adapters/pubsub-publisher.ts';
import { BatchOutbox, claimCheckKey, type BatchOutboxOptions } from '../../agent/batch-outbox.ts';
import { decodeMessage, encodeBatch, type PubSubMessage } from '../../core/batch-codec.ts';
import type { ChangeBatch, RelationDescriptor } from '../../core/change-batch.ts';
import { PermanentError, ValidationError, isRetryable } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { parseLsn, type Lsn } from '../../core/lsn.ts';
import type { MessagePublisher } from '../../core/ports.ts';
import { recordInStack, startPubsubEmulator, type Emulator } from '../../local/local-stack.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const logger = createLogger({ component: 'batch-outbox-test', level: 'critical' });
const TOPIC = 'lifeboat-changes';
const FAST_BACKOFF = { initialMs: 100, maxMs: 1_000, multiplier: 2 };

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

// ---------------------------------------------------------------------------
// Batches

const items: RelationDescriptor = {
  oid: 16384,
  schema: 'public',
  name: 'items',
  replicaIdentity: 'default',
  columns: [
    { name: 'id', type: 'bigint', typeOid: 20, typmod: -1, key: true },
    { name: 'note', type: 'text', typeOid: 25, typmod: -1, key: false },
  ],
};

const START_LSN = 0x1_0000_0000n;

/** `count` chained one-transaction batches of `rows` inserts each, starting at START_LSN. */
function chain(count: number, rows = 3, noteLength = 20): ChangeBatch[] {
  const out: ChangeBatch[] = [];
  let prev = START_LSN;
  for (let seq = 0; seq < count; seq++) {
    const commitLsn = prev + 0x28n;
    const endLsn = commitLsn + 0x58n;
    out.push({
      v: 1,
      kind: 'changes',
      stream: 'main',
      epoch: 1,
      seq,
      lsnPrev: prev,
      lsnFirst: commitLsn,
      lsnLast: endLsn,
      createdAt: '2026-11-23T13:31:02.123Z',
      relations: [items],
      transactions: [
        {
          xid: 1000 + seq,
          commitLsn,
          endLsn,
          commitTime: '2026-11-23T13:31:02.100001Z',
          changes: Array.from({ length: rows }, (_, r) => ({
            op: 'insert' as const,
            rel: 0,
            new: [String(seq * rows + r), `${seq}:${r}:`.padEnd(noteLength, 'x')],
          })),
        },
      ],
    });
    prev = endLsn;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Recording what happened, in one timeline

type Event =
  | { type: 'publish'; seq: number }
  | { type: 'ack'; seq: number; lsnLast: Lsn }
  | { type: 'fail'; seq: number; retryable: boolean }
  | { type: 'confirm'; lsn: Lsn }
  | { type: 'resumed' };

/** Decorates the real publisher: every call and outcome lands in `events` before the outbox sees it. */
function recording(inner: MessagePublisher, events: Event[]): MessagePublisher {
  return {
    publish(message: PubSubMessage) {
      const seq = Number(message.attributes.seq);
      const lsnLast = parseLsn(message.attributes['lsn-last']!);
      events.push({ type: 'publish', seq });
      return inner.publish(message).then(
        (id) => {
          events.push({ type: 'ack', seq, lsnLast });
          return id;
        },
        (err: unknown) => {
          events.push({ type: 'fail', seq, retryable: isRetryable(err) });
          throw err;
        },
      );
    },
    resumeOrderingKey: (key) => inner.resumeOrderingKey(key),
    close: () => inner.close(),
  };
}

/** Every confirm is larger than the one before and never passes a batch that was not acknowledged before it. */
function expectConfirmsSafe(events: Event[], batches: ChangeBatch[]): void {
  const acked = new Set<Lsn>();
  let last = -1n;
  let confirms = 0;
  for (const e of events) {
    if (e.type === 'ack') acked.add(e.lsnLast);
    if (e.type !== 'confirm') continue;
    confirms += 1;
    expect(e.lsn).toBeGreaterThan(last);
    last = e.lsn;
    for (const b of batches) {
      if (b.lsnLast > e.lsn) break;
      if (!acked.has(b.lsnLast)) throw new Error(`confirmed ${e.lsn.toString(16)} before batch seq ${b.seq} (lsnLast ${b.lsnLast.toString(16)}) was acknowledged`);
    }
  }
  expect(confirms).toBeGreaterThan(0);
}

// ---------------------------------------------------------------------------
// Pub/Sub plumbing

async function topicWithSubscription(projectId: string, emulatorHost = stack.pubsubEmulatorHost): Promise<Subscription> {
  await ensureTopic({ projectId, topic: TOPIC, emulatorHost });
  const pubsub = new PubSub({ projectId, apiEndpoint: emulatorHost, emulatorMode: true });
  cleanups.push(() => pubsub.close());
  const [subscription] = await pubsub.topic(TOPIC).createSubscription('apply', { enableMessageOrdering: true });
  return subscription;
}

/** Collects messages (acking them) until `done(received)` holds. */
function collect(subscription: Subscription, done: (got: Message[]) => boolean, timeoutMs = 60_000): Promise<Message[]> {
  return new Promise((resolve, reject) => {
    const got: Message[] = [];
    const timer = setTimeout(() => {
      void subscription.close();
      reject(new Error(`subscriber: condition not met after ${got.length} messages in ${timeoutMs} ms`));
    }, timeoutMs);
    subscription.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    subscription.on('message', (m: Message) => {
      m.ack();
      got.push(m);
      if (done(got)) {
        clearTimeout(timer);
        void subscription.close().then(() => resolve(got));
      }
    });
  });
}

const seqOf = (m: Message) => Number(m.attributes.seq);

function outboxFor(publisher: MessagePublisher, events: Event[], extra: Partial<BatchOutboxOptions> = {}): BatchOutbox {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-outbox-'));
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const outbox = new BatchOutbox({
    stream: 'main',
    startLsn: START_LSN,
    publisher,
    objectStore: new FsObjectStore(tmp),
    batching: { maxInflightBatches: 8, maxBufferedBytes: 64 * 1024 * 1024, compressAboveBytes: 1024, claimCheckAboveBytes: 4 * 1024 * 1024 },
    claimCheckPrefix: 'claim-check/',
    onConfirmable: (lsn) => events.push({ type: 'confirm', lsn }),
    backoff: FAST_BACKOFF,
    logger,
    ...extra,
  });
  cleanups.push(() => outbox.stop());
  return outbox;
}

/**
 * A TCP pass-through in front of an emulator. `setDown(true)` cuts every
 * connection and refuses new ones: the client sees exactly what it sees when
 * the emulator dies, and the test decides when it may reach it again.
 */
async function startTcpProxy(targetPort: number) {
  let down = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    setDown(value: boolean) {
      down = value;
      if (value) for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// ---------------------------------------------------------------------------

describe('BatchOutbox on the Pub/Sub emulator', () => {
  it('publishes 200 batches 8 at a time: in order on first delivery, confirms only acknowledged prefixes, ends at the last lsnLast', async () => {
    const projectId = uniqueProjectId('outbox');
    const subscription = await topicWithSubscription(projectId);
    const events: Event[] = [];
    const publisher = createPubsubPublisher({ projectId, topic: TOPIC, emulatorHost: stack.pubsubEmulatorHost, logger });
    cleanups.push(() => publisher.close());
    const outbox = outboxFor(recording(publisher, events), events);

    const batches = chain(200);
    let maxInflight = 0;
    for (const b of batches) {
      await outbox.enqueue(b);
      maxInflight = Math.max(maxInflight, outbox.stats().inflightBatches);
    }
    await outbox.drain(AbortSignal.timeout(60_000));

    expect(maxInflight).toBeLessThanOrEqual(8);
    expect(maxInflight).toBeGreaterThan(1); // it did pipeline
    const confirms = events.flatMap((e) => (e.type === 'confirm' ? [e.lsn] : []));
    expect(confirms.at(-1)).toBe(batches.at(-1)!.lsnLast);
    expectConfirmsSafe(events, batches);
    const stats = outbox.stats();
    expect(stats).toMatchObject({ state: 'running', enqueuedBatches: 200, publishedBatches: 200, publishedRows: 600, inflightBatches: 0, inflightBytes: 0, retries: 0 });
    expect(stats.confirmableLsn).toBe(batches.at(-1)!.lsnLast);
    expect(stats.publishedBytes).toBeGreaterThan(200 * 300);

    const seen = new Set<number>();
    const received = await collect(subscription, (got) => {
      for (const m of got.slice(seen.size)) seen.add(seqOf(m));
      return seen.size === batches.length;
    });
    const firstDeliveries = received.map(seqOf).filter((s, i, all) => all.indexOf(s) === i);
    expect(firstDeliveries).toEqual(batches.map((b) => b.seq));
    for (const m of received.slice(0, 5)) expect(await decodeMessage(m)).toStrictEqual(batches[seqOf(m)]);
  });

  it('sends large batches by claim check through the filesystem store, under deterministic keys, decodable with a fetcher', async () => {
    const projectId = uniqueProjectId('outbox-cc');
    const subscription = await topicWithSubscription(projectId);
    const events: Event[] = [];
    const publisher = createPubsubPublisher({ projectId, topic: TOPIC, emulatorHost: stack.pubsubEmulatorHost, logger });
    cleanups.push(() => publisher.close());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-cc-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const store = new FsObjectStore(dir);
    const batching = { maxInflightBatches: 4, maxBufferedBytes: 1024 * 1024, compressAboveBytes: 1_000_000, claimCheckAboveBytes: 600 };
    const outbox = outboxFor(recording(publisher, events), events, { objectStore: store, batching });

    // Small, large (plain JSON), small, large (gzip is off by compressAboveBytes, so also plain).
    const [a, b, c, d] = chain(4, 1);
    const big = (x: ChangeBatch, rows: number): ChangeBatch => ({
      ...x,
      transactions: [{ ...x.transactions[0]!, changes: Array.from({ length: rows }, (_, r) => ({ op: 'insert' as const, rel: 0, new: [String(r), 'y'.repeat(40)] })) }],
    });
    const batches = [a!, big(b!, 40), c!, big(d!, 60)];
    for (const x of batches) await outbox.enqueue(x);
    await outbox.drain(AbortSignal.timeout(30_000));
    expect(outbox.stats()).toMatchObject({ claimCheckBatches: 2, publishedBatches: 4 });

    const stored = await store.list('claim-check/');
    const expectedKeys = [batches[1]!, batches[3]!].map((x) => {
      const encoded = encodeBatch(x, batching);
      if (encoded.kind !== 'claim-check') throw new Error('expected a claim check');
      return claimCheckKey('claim-check/', x, encoded);
    });
    expect(stored.map((o) => o.key)).toEqual(expectedKeys);
    for (const key of expectedKeys) expect(key).toMatch(/^claim-check\/main\/[0-9A-F]{16}-[0-9A-F]{16}-[0-9a-f]{16}\.json$/);

    const received = await collect(subscription, (got) => got.length === 4);
    expect(received.map((m) => m.attributes.payload)).toEqual(['inline', 'gcs', 'inline', 'gcs']);
    const fetcher = (uri: string) => store.get(uri);
    for (const m of received) expect(await decodeMessage(m, fetcher)).toStrictEqual(batches[seqOf(m)]);

    // The same batch from a restarted agent lands on the same key: nothing new is stored.
    const again = outboxFor(recording(publisher, []), [], { objectStore: store, batching, startLsn: batches[0]!.lsnLast });
    await again.enqueue(batches[1]!);
    await again.drain(AbortSignal.timeout(30_000));
    expect((await store.list('claim-check/')).map((o) => o.key)).toEqual(stored.map((o) => o.key));
    expect(claimCheckKey('p/', { stream: 's', lsnFirst: 0x1cf7460n, lsnLast: 0x1_0000_0000n }, { sha256: 'ab'.repeat(32), encoding: 'json+gzip' })).toBe(
      'p/s/0000000001CF7460-0000000100000000-abababababababab.json.gz',
    );
  });

  it('holds intake at maxInflightBatches and at maxBufferedBytes while Pub/Sub is unreachable, and catches up when it is back', async () => {
    const projectId = uniqueProjectId('outbox-fc');
    const subscription = await topicWithSubscription(projectId);
    const proxy = await startTcpProxy(Number(stack.pubsubEmulatorHost.split(':')[1]));
    cleanups.push(() => proxy.close());
    const publisher = createPubsubPublisher({ projectId, topic: TOPIC, emulatorHost: proxy.host, publishTimeoutMs: 1_000, logger });
    cleanups.push(() => publisher.close());
    const batches = chain(40);

    for (const [limit, expected] of [
      [{ maxInflightBatches: 5, maxBufferedBytes: 64 * 1024 * 1024 }, 5],
      [{ maxInflightBatches: 100, maxBufferedBytes: 1 }, 1], // bytes: one batch at a time (alone, a batch always fits)
    ] as const) {
      const outboxEvents: Event[] = [];
      const outbox = outboxFor(recording(publisher, outboxEvents), outboxEvents, {
        batching: { ...limit, compressAboveBytes: 1024, claimCheckAboveBytes: 4 * 1024 * 1024 },
      });
      proxy.setDown(true);
      let accepted = 0;
      const producer = (async () => {
        for (const b of batches) {
          await outbox.enqueue(b);
          accepted += 1;
        }
      })();
      producer.catch(() => {}); // awaited below; this only keeps a failed run from adding an unhandled rejection
      await waitFor('a failed publish', () => outboxEvents.some((e) => e.type === 'fail'));
      await waitFor('a recovery round', () => outbox.stats().retries >= 2);
      expect(accepted).toBe(expected);
      expect(outbox.stats()).toMatchObject({ state: 'recovering', inflightBatches: expected, publishedBatches: 0 });
      expect(outboxEvents.some((e) => e.type === 'confirm')).toBe(false);

      proxy.setDown(false);
      await producer;
      await outbox.drain(AbortSignal.timeout(60_000));
      expect(outbox.stats()).toMatchObject({ state: 'running', publishedBatches: 40, inflightBatches: 0 });
      expect(outbox.stats().lastError?.retryable).toBe(true);
      expectConfirmsSafe(outboxEvents, batches);
    }
    const received = await collect(subscription, (got) => new Set(got.map(seqOf)).size === 40);
    expect([...new Set(received.map(seqOf))].sort((x, y) => x - y)).toEqual(batches.map((b) => b.seq));
  });

  it('stops on a permanent error (missing topic): drain and enqueue reject with it, onFatal hears it, nothing is confirmed', async () => {
    const projectId = uniqueProjectId('outbox-nf');
    const events: Event[] = [];
    const publisher = createPubsubPublisher({ projectId, topic: 'never-created', emulatorHost: stack.pubsubEmulatorHost, logger });
    cleanups.push(() => publisher.close());
    const fatal: Error[] = [];
    const outbox = outboxFor(recording(publisher, events), events, { onFatal: (err) => fatal.push(err) });
    const batches = chain(3);
    await outbox.enqueue(batches[0]!);
    const err = await outbox.drain(AbortSignal.timeout(30_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).remedy).toMatch(/pubsub\.changesTopic/);
    expect(fatal).toEqual([err]);
    expect(outbox.failure()).toBe(err);
    await expect(outbox.enqueue(batches[1]!)).rejects.toBe(err);
    expect(outbox.stats()).toMatchObject({ state: 'failed', publishedBatches: 0, inflightBatches: 1 });
    expect(events.filter((e) => e.type === 'confirm')).toEqual([]);
  });

  it('refuses a batch that does not continue the chain, and one of another stream', async () => {
    const projectId = uniqueProjectId('outbox-chain');
    await ensureTopic({ projectId, topic: TOPIC, emulatorHost: stack.pubsubEmulatorHost });
    const publisher = createPubsubPublisher({ projectId, topic: TOPIC, emulatorHost: stack.pubsubEmulatorHost, logger });
    cleanups.push(() => publisher.close());
    const batches = chain(3);

    const gap = outboxFor(publisher, []);
    await gap.enqueue(batches[0]!);
    const err = await gap.enqueue(batches[2]!).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as Error).message).toMatch(/does not continue the chain/);
    expect(gap.stats().state).toBe('failed');

    const other = outboxFor(publisher, []);
    await expect(other.enqueue({ ...batches[0]!, stream: 'other' })).rejects.toThrow(/for stream "other"/);
  });

  it('survives its own emulator being stopped and started while publishing: no confirm past an unacknowledged batch, nothing acknowledged after the restart is lost', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-pubsub-restart-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const quiet = () => {};
    const onSpawn = (p: { name: string; pid: number; stopSignal: NodeJS.Signals }) => recordInStack(stack.tempDir, p);
    let emulator: Emulator = await startPubsubEmulator({ dir, log: quiet, onSpawn });
    cleanups.push(() => emulator.stop());
    const port = emulator.port;
    const projectId = uniqueProjectId('outbox-restart');
    // The first emulator's messages die with it: only the second one's deliveries are checked.
    await ensureTopic({ projectId, topic: TOPIC, emulatorHost: emulator.host });
    const proxy = await startTcpProxy(port);
    cleanups.push(() => proxy.close());

    const events: Event[] = [];
    const publisher = createPubsubPublisher({ projectId, topic: TOPIC, emulatorHost: proxy.host, publishTimeoutMs: 2_000, logger });
    cleanups.push(() => publisher.close());
    const outbox = outboxFor(recording(publisher, events), events, { backoff: { initialMs: 200, maxMs: 1_500, multiplier: 2 } });

    const batches = chain(300);
    let stopped = false;
    const producer = (async () => {
      for (const b of batches) {
        await outbox.enqueue(b);
        // Keep publishing, but make sure the outage starts mid-stream.
        if (b.seq === 100) await waitFor('the emulator to stop', () => stopped);
      }
    })();
    producer.catch(() => {}); // awaited below; this only keeps a failed run from adding an unhandled rejection

    await waitFor('100 acknowledged batches', () => outbox.stats().publishedBatches >= 100);
    await emulator.stop();
    proxy.setDown(true);
    stopped = true;
    await waitFor('failed publishes during the outage', () => events.some((e) => e.type === 'fail'));
    await new Promise((r) => setTimeout(r, 3_000));
    expect(outbox.stats().inflightBatches).toBe(8); // flow control holds the reader back meanwhile

    // Same port; the emulator keeps nothing, so topic and subscription come back before the agent may reach it.
    emulator = await startPubsubEmulator({ dir, port, log: quiet, onSpawn });
    expect(emulator.port).toBe(port);
    const afterRestart = collectAfterRestart(await topicWithSubscription(projectId, emulator.host));
    events.push({ type: 'resumed' });
    proxy.setDown(false);

    await producer;
    await outbox.drain(AbortSignal.timeout(90_000));

    expectConfirmsSafe(events, batches);
    const confirms = events.flatMap((e) => (e.type === 'confirm' ? [e.lsn] : []));
    expect(confirms.at(-1)).toBe(batches.at(-1)!.lsnLast);
    const stats = outbox.stats();
    expect(stats).toMatchObject({ state: 'running', publishedBatches: 300, inflightBatches: 0 });
    expect(stats.retries).toBeGreaterThan(0);
    expect(stats.republishedBatches).toBeGreaterThan(0);
    expect(events.filter((e) => e.type === 'fail').every((e) => e.type === 'fail' && e.retryable)).toBe(true);

    // Every batch Pub/Sub acknowledged after the restart reaches the new subscription, first deliveries in order.
    const resumedAt = events.findIndex((e) => e.type === 'resumed');
    const ackedAfter = new Set(events.slice(resumedAt).flatMap((e) => (e.type === 'ack' ? [e.seq] : [])));
    expect(ackedAfter.size).toBeGreaterThanOrEqual(300 - 100 - 8);
    const received = await afterRestart.until(ackedAfter);
    const firstDeliveries = received.map(seqOf).filter((s, i, all) => all.indexOf(s) === i);
    for (const seq of ackedAfter) expect(firstDeliveries).toContain(seq);
    expect(firstDeliveries).toEqual([...firstDeliveries].sort((x, y) => x - y));
  }, 180_000);
});

/** Starts collecting at once (messages may arrive before the set to wait for is known). */
function collectAfterRestart(subscription: Subscription) {
  const got: Message[] = [];
  let check: (() => void) | undefined;
  subscription.on('message', (m: Message) => {
    m.ack();
    got.push(m);
    check?.();
  });
  return {
    until(seqs: Set<number>): Promise<Message[]> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          void subscription.close();
          reject(new Error(`after the restart: ${new Set(got.map(seqOf)).size} of ${seqs.size} acknowledged batches delivered in 60 s`));
        }, 60_000);
        check = () => {
          const have = new Set(got.map(seqOf));
          if ([...seqs].every((s) => have.has(s))) {
            clearTimeout(timer);
            void subscription.close().then(() => resolve(got));
          }
        };
        check();
      });
    },
  };
}
