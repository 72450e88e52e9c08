// The Pub/Sub publisher adapter against the real emulator.
import net from 'node:net';
import { PubSub, type Message } from '@google-cloud/pubsub';
import { afterEach, describe, expect, it } from 'vitest';
import { createPubsubPublisher, ensureTopic, type PubsubPublisher } from '../../adapters/pubsub-publisher.ts';
import type { PubSubMessage } from '../../core/batch-codec.ts';
import { PermanentError, RetryableError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const logger = createLogger({ component: 'pubsub-publisher-test', level: 'critical' });

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

function publisherFor(projectId: string, topic: string, extra: Partial<Parameters<typeof createPubsubPublisher>[0]> = {}): PubsubPublisher {
  const publisher = createPubsubPublisher({ projectId, topic, emulatorHost: stack.pubsubEmulatorHost, logger, ...extra });
  cleanups.push(() => publisher.close());
  return publisher;
}

async function orderedSubscription(projectId: string, topic: string) {
  const pubsub = new PubSub({ projectId, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
  cleanups.push(() => pubsub.close());
  const [subscription] = await pubsub.topic(topic).createSubscription('apply', { enableMessageOrdering: true });
  return subscription;
}

function pull(subscription: Awaited<ReturnType<typeof orderedSubscription>>, count: number): Promise<Message[]> {
  return new Promise((resolve, reject) => {
    const got: Message[] = [];
    const timer = setTimeout(() => reject(new Error(`pulled ${got.length} of ${count} in 30 s`)), 30_000);
    subscription.on('error', reject);
    subscription.on('message', (m: Message) => {
      m.ack();
      got.push(m);
      if (got.length === count) {
        clearTimeout(timer);
        void subscription.close().then(() => resolve(got));
      }
    });
  });
}

function message(i: number, orderingKey = 'main', size = 16): PubSubMessage {
  return { data: Buffer.alloc(size, i % 256), attributes: { i: String(i) }, orderingKey };
}

describe('createPubsubPublisher', () => {
  it('publishes with the ordering key and resolves with the message id Pub/Sub assigned; a subscriber sees them in order', async () => {
    const projectId = uniqueProjectId('pub');
    expect(await ensureTopic({ projectId, topic: 'lifeboat-changes', emulatorHost: stack.pubsubEmulatorHost })).toEqual({
      topicName: `projects/${projectId}/topics/lifeboat-changes`,
      created: true,
    });
    expect((await ensureTopic({ projectId, topic: 'lifeboat-changes', emulatorHost: stack.pubsubEmulatorHost })).created).toBe(false);
    const subscription = await orderedSubscription(projectId, 'lifeboat-changes');
    // A tiny pending-bytes cap forces the one-message-at-a-time path of the gate too.
    const publisher = publisherFor(projectId, 'lifeboat-changes', { maxPendingBytes: 1 });
    expect(publisher.topicName).toBe(`projects/${projectId}/topics/lifeboat-changes`);

    const sent = Array.from({ length: 30 }, (_, i) => message(i));
    const ids = await Promise.all(sent.map((m) => publisher.publish(m)));
    expect(new Set(ids).size).toBe(sent.length);

    const received = await pull(subscription, sent.length);
    expect(received.map((m) => m.attributes.i)).toEqual(sent.map((m) => m.attributes.i));
    expect(received.map((m) => m.orderingKey)).toEqual(sent.map(() => 'main'));
    expect(received.map((m) => m.id)).toEqual(ids);
    expect(Buffer.compare(received[7]!.data, sent[7]!.data)).toBe(0);
  });

  it('a missing topic is a PermanentError naming the config field; the key stays paused until resumed', async () => {
    const projectId = uniqueProjectId('pub-nf');
    const publisher = publisherFor(projectId, 'not-created-yet');
    const err = await publisher.publish(message(1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).message).toMatch(/NOT_FOUND/);
    expect((err as PermanentError).remedy).toMatch(/pubsub\.changesTopic/);
    expect((err as PermanentError).details).toMatchObject({ code: 'NOT_FOUND', topic: 'not-created-yet', projectId });

    // Once the topic exists the key is still paused: nothing may overtake the failed message.
    await ensureTopic({ projectId, topic: 'not-created-yet', emulatorHost: stack.pubsubEmulatorHost });
    const paused = await publisher.publish(message(2)).catch((e: unknown) => e);
    expect(paused).toBeInstanceOf(PermanentError);
    expect((paused as Error).message).toMatch(/paused after an earlier failed publish/);
    // Another key is not affected.
    await expect(publisher.publish(message(3, 'other'))).resolves.toMatch(/\S/);

    publisher.resumeOrderingKey('main');
    await expect(publisher.publish(message(4))).resolves.toMatch(/\S/);
  });

  it('an unreachable endpoint gives a RetryableError once publishTimeoutMs is over, not after the client default of 600 s', async () => {
    // A port with nothing listening: bind, note, close.
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const publisher = createPubsubPublisher({ projectId: uniqueProjectId('pub-down'), topic: 'lifeboat-changes', emulatorHost: `127.0.0.1:${port}`, publishTimeoutMs: 1500, logger });
    cleanups.push(() => publisher.close());
    const err = await publisher.publish(message(1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetryableError);
    expect((err as RetryableError).details).toMatchObject({ code: expect.stringMatching(/^(UNAVAILABLE|DEADLINE_EXCEEDED)$/) });
    // Paused: later publishes on the key fail fast with a RetryableError too.
    await expect(publisher.publish(message(2))).rejects.toBeInstanceOf(RetryableError);
  }, 60_000);

  it('refuses to publish after close()', async () => {
    const projectId = uniqueProjectId('pub-closed');
    await ensureTopic({ projectId, topic: 'lifeboat-changes', emulatorHost: stack.pubsubEmulatorHost });
    const publisher = createPubsubPublisher({ projectId, topic: 'lifeboat-changes', emulatorHost: stack.pubsubEmulatorHost, logger });
    await publisher.publish(message(1));
    await publisher.close();
    await expect(publisher.publish(message(2))).rejects.toBeInstanceOf(PermanentError);
  });
});
