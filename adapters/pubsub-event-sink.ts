// EventSink over @google-cloud/pubsub 6.3: lifecycle events (failover,
// failback, lease changes) on the events topic (pubsub.eventsTopic).
//
// Each event is one message: the body is the event as JSON, the attributes
// `type`, `stream` and `epoch` let subscriptions filter without parsing it.
// The event is validated first (a malformed event is a ValidationError, never
// sent half-right), and its `details` go through the log redactor, so they are
// plain JSON and carry no secrets. No ordering key: events are rare, carry
// their own time and epoch, and an ordering key would pause all later events
// after one failed publish.
//
// The sink creates nothing: the topic belongs to the cdktf stack (or to local
// mode's setup), and a sink that created its own would hide a broken
// deployment. The emulator is used only when `emulatorHost` is given, as in
// adapters/pubsub-publisher.ts.

import { PubSub, type ClientConfig, type Topic } from '@google-cloud/pubsub';
import { z } from 'zod';
import { PermanentError, ValidationError } from '../core/errors.ts';
import { redact, type Logger } from '../core/log.ts';
import type { EventSink, LifecycleEvent } from '../core/ports.ts';
import { GrpcStatus } from './grpc-status.ts';
import { classifyPubsubError, publishRetrySettings } from './pubsub-publisher.ts';

export const DEFAULT_EVENT_PUBLISH_TIMEOUT_MS = 10_000;
/** Far above any real event; keeps a runaway `details` from reaching Pub/Sub's 10 MB limit. */
const MAX_EVENT_BYTES = 512 * 1024;

const lifecycleEventSchema = z.object({
  type: z.string().min(1).max(256),
  stream: z.string().min(1).max(256),
  epoch: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  reason: z.string(),
  at: z.iso.datetime({ offset: true }),
  details: z.record(z.string(), z.unknown()).optional(),
});

export interface PubsubEventSinkOptions {
  projectId: string;
  /** Topic id (not the full projects/…/topics/… name). */
  topic: string;
  /** Pub/Sub emulator 'host:port'; absent means the real service with Application Default Credentials. */
  emulatorHost?: string;
  logger: Logger;
  /** Deadline of one publish, the client's retries included. Default 10 s. */
  publishTimeoutMs?: number;
}

export interface PubsubEventSink extends EventSink {
  /** projects/PROJECT/topics/TOPIC */
  readonly topicName: string;
  close(): Promise<void>;
}

/** The JSON body and attributes of an event's message; ValidationError when the event is malformed. */
export function encodeLifecycleEvent(event: LifecycleEvent): { data: Buffer; attributes: Record<string, string> } {
  const parsed = lifecycleEventSchema.safeParse(event);
  if (!parsed.success) {
    throw new ValidationError(`invalid lifecycle event: ${z.prettifyError(parsed.error).replace(/\n/g, ' ')}`, {
      details: { type: (event as { type?: unknown } | null)?.type },
    });
  }
  const e = parsed.data;
  const body = { type: e.type, stream: e.stream, epoch: e.epoch, reason: e.reason, at: e.at, ...(e.details !== undefined && { details: redact(e.details) }) };
  const data = Buffer.from(JSON.stringify(body), 'utf8');
  if (data.length > MAX_EVENT_BYTES) {
    throw new ValidationError(`lifecycle event ${e.type} is ${data.length} bytes as JSON, more than ${MAX_EVENT_BYTES}`, {
      remedy: 'Put large material (reports, row lists) in the object store and reference it from details.',
    });
  }
  return { data, attributes: { type: e.type, stream: e.stream, epoch: String(e.epoch) } };
}

function clientConfig(projectId: string, emulatorHost: string | undefined): ClientConfig {
  if (emulatorHost === undefined) return { projectId };
  // The emulator needs no credentials; naming the universe keeps the client from probing for them.
  return { projectId, apiEndpoint: emulatorHost, emulatorMode: true, universeDomain: 'googleapis.com' };
}

export function createPubsubEventSink(opts: PubsubEventSinkOptions): PubsubEventSink {
  const timeoutMs = opts.publishTimeoutMs ?? DEFAULT_EVENT_PUBLISH_TIMEOUT_MS;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw new ValidationError(`publishTimeoutMs must be a positive integer, got ${timeoutMs}`);
  const log = opts.logger.child({ topic: opts.topic });
  const pubsub = new PubSub(clientConfig(opts.projectId, opts.emulatorHost));
  // The client's default publish retries last up to 600 s; one deadline bounds them (see pubsub-publisher.ts).
  const topic: Topic = pubsub.topic(opts.topic, {
    batching: { maxMessages: 1, maxMilliseconds: 0 },
    gaxOpts: publishRetrySettings(timeoutMs),
  });
  const ctx = { topic: opts.topic, projectId: opts.projectId, action: 'publish an event to' };
  let closed = false;

  return {
    topicName: topic.name,

    async publish(event: LifecycleEvent): Promise<void> {
      if (closed) throw new PermanentError('Pub/Sub event sink is closed', { details: { topic: opts.topic } });
      const message = encodeLifecycleEvent(event);
      try {
        const id = await topic.publishMessage(message);
        log.info('lifecycle event published', { type: event.type, stream: event.stream, epoch: event.epoch, messageId: id });
      } catch (err) {
        const classified = classifyPubsubError(err, ctx);
        const code = (err as { code?: unknown } | null)?.code;
        if (code === GrpcStatus.NOT_FOUND) {
          // The publisher's remedy names the changes topic; this is the events topic.
          throw new PermanentError(classified.message, {
            cause: err,
            details: classified.details,
            remedy: `projects/${opts.projectId}/topics/${opts.topic} does not exist: create it (the cdktf stack does) or fix pubsub.eventsTopic / project in lifeboat.yaml.`,
          });
        }
        if (code === GrpcStatus.PERMISSION_DENIED) {
          throw new PermanentError(classified.message, {
            cause: err,
            details: classified.details,
            remedy: `The service account needs roles/pubsub.publisher on projects/${opts.projectId}/topics/${opts.topic}.`,
          });
        }
        throw classified;
      }
    },

    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      try {
        await topic.flush();
      } finally {
        await pubsub.close();
      }
    },
  };
}
