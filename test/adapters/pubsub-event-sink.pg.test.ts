// The Pub/Sub event sink against the real emulator: publish lifecycle events,
// pull them from a subscription, check body and attributes.
import { PubSub, type Message } from '@google-cloud/pubsub';
import { afterEach, describe, expect, it } from 'vitest';
import { createPubsubEventSink, encodeLifecycleEvent, type PubsubEventSink } from '../../adapters/pubsub-event-sink.ts';
import { PermanentError, ValidationError } from '../../core/errors.ts';
import { clearRegisteredSecrets, createLogger, registerSecret } from '../../core/log.ts';
import type { LifecycleEvent } from '../../core/ports.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const logger = createLogger({ component: 'event-sink-test', level: 'critical' });

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

function sinkFor(projectId: string, topic: string): PubsubEventSink {
  const sink = createPubsubEventSink({ projectId, topic, emulatorHost: stack.pubsubEmulatorHost, logger });
  cleanups.push(() => sink.close());
  return sink;
}

/** Creates the topic and a subscription (the sink itself creates nothing). */
async function topicWithSubscription(projectId: string, topic: string) {
  const pubsub = new PubSub({ projectId, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
  cleanups.push(() => pubsub.close());
  const [created] = await pubsub.createTopic(topic);
  const [subscription] = await created.createSubscription('events-audit');
  return subscription;
}

function pull(subscription: Awaited<ReturnType<typeof topicWithSubscription>>, count: number): Promise<Message[]> {
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

const failover: LifecycleEvent = {
  type: 'failover',
  stream: 'main',
  epoch: 8,
  reason: 'home unhealthy for 3 probes (90 s) and the lease expired; the cloud side takes over at epoch 8',
  at: '2026-11-23T10:00:00.000Z',
  details: { appliedLsn: '0/1CF7460', probeFailures: 3, lastError: new Error('connect ECONNREFUSED 192.0.2.10:443') },
};

describe('createPubsubEventSink', () => {
  it('publishes each event as JSON with type, stream and epoch attributes', async () => {
    const projectId = uniqueProjectId('events');
    const subscription = await topicWithSubscription(projectId, 'lifeboat-events');
    const sink = sinkFor(projectId, 'lifeboat-events');
    expect(sink.topicName).toBe(`projects/${projectId}/topics/lifeboat-events`);

    const failback: LifecycleEvent = { type: 'failback', stream: 'main', epoch: 9, reason: 'home is healthy and caught up', at: '2026-11-23T12:30:00.000+01:00' };
    await sink.publish(failover);
    await sink.publish(failback);

    const received = await pull(subscription, 2);
    const byType = new Map(received.map((m) => [m.attributes.type, m]));
    expect(byType.get('failover')!.attributes).toEqual({ type: 'failover', stream: 'main', epoch: '8' });
    expect(JSON.parse(byType.get('failover')!.data.toString('utf8'))).toEqual({
      type: 'failover',
      stream: 'main',
      epoch: 8,
      reason: failover.reason,
      at: failover.at,
      details: { appliedLsn: '0/1CF7460', probeFailures: 3, lastError: expect.objectContaining({ error: 'connect ECONNREFUSED 192.0.2.10:443', errorName: 'Error' }) },
    });
    expect(byType.get('failback')!.attributes).toEqual({ type: 'failback', stream: 'main', epoch: '9' });
    expect(JSON.parse(byType.get('failback')!.data.toString('utf8'))).toEqual({ ...failback });
    expect(received.every((m) => m.orderingKey === '')).toBe(true);
  });

  it('a missing topic is a PermanentError naming pubsub.eventsTopic; the sink creates nothing', async () => {
    const projectId = uniqueProjectId('events-nf');
    const sink = sinkFor(projectId, 'not-created');
    const err = (await sink.publish(failover).catch((e: unknown) => e)) as PermanentError;
    expect(err).toBeInstanceOf(PermanentError);
    expect(err.message).toContain(`projects/${projectId}/topics/not-created`);
    expect(err.remedy).toMatch(/pubsub\.eventsTopic/);
    const pubsub = new PubSub({ projectId, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
    cleanups.push(() => pubsub.close());
    const [topics] = await pubsub.getTopics();
    expect(topics).toEqual([]);
  });

  it('refuses malformed events before publishing, and masks secrets in details', () => {
    expect(() => encodeLifecycleEvent({ ...failover, epoch: -1 })).toThrow(ValidationError);
    expect(() => encodeLifecycleEvent({ ...failover, at: 'yesterday' })).toThrow(/at/);
    expect(() => encodeLifecycleEvent({ ...failover, type: '' })).toThrow(ValidationError);
    expect(() => encodeLifecycleEvent({ ...failover, details: { blob: 'x'.repeat(600 * 1024) } })).toThrow(/more than/);

    registerSecret('hunter2-very-secret');
    try {
      const { data } = encodeLifecycleEvent({ ...failover, details: { databaseUrl: 'postgres://app:hunter2-very-secret@db/app', password: 'p4ssw0rd!' } });
      const text = data.toString('utf8');
      expect(text).not.toContain('hunter2-very-secret');
      expect(text).not.toContain('p4ssw0rd!');
      expect(JSON.parse(text).details).toEqual({ databaseUrl: 'postgres://app:***@db/app', password: '***' });
    } finally {
      clearRegisteredSecrets();
    }
  });
});
