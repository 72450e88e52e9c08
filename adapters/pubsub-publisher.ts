// MessagePublisher over @google-cloud/pubsub 6.3: one Topic with message
// ordering, the ordering key being the stream.
//
// What the client does, and what this adapter adds (read from its sources):
//   - An ordered key has at most one publish RPC in flight; messages added
//     meanwhile pile into the next RPC, up to 1000 messages or 9 MiB *before*
//     the last one is added. With 4 MiB messages that could build a request
//     over Pub/Sub's 10 MB limit (INVALID_ARGUMENT, for valid data), so this
//     adapter hands the client at most `maxPendingBytes` of unacknowledged
//     message bytes at a time (one message alone always goes through).
//   - Its Publish retry settings retry UNAVAILABLE, DEADLINE_EXCEEDED and
//     friends for up to 600 s, so with the emulator or the network down a
//     publish would hang for ten minutes. gaxOpts cap the RPC and the
//     client's retries together (`publishTimeoutMs`, default 10 s, plus at
//     most one retry delay of 1 s), so the caller gets a RetryableError within
//     seconds and owns the longer backoff.
//   - gRPC's reconnect backoff grows to 120 s by default; capped at 5 s so a
//     restarted emulator or network is used again within seconds.
//   - After a failed RPC the client rejects the messages queued behind it,
//     but then drops its paused queue as soon as it is empty, so the next
//     publish on the key would go out ahead of the failed ones. This adapter
//     keeps the key paused itself: after a failure every publish on the key
//     fails fast (RetryableError) until resumeOrderingKey(); the caller then
//     re-publishes, in order, everything from the oldest unacknowledged one.
//
// The emulator is used only when `emulatorHost` is given: the adapter never
// follows PUBSUB_EMULATOR_HOST on its own, so a stray variable cannot send a
// cloud agent's batches to a local emulator.

import { PubSub, type ClientConfig, type Topic } from '@google-cloud/pubsub';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import type { PubSubMessage } from '../core/batch-codec.ts';
import { createLogger, type Logger } from '../core/log.ts';
import type { MessagePublisher } from '../core/ports.ts';
import { GrpcStatus, GRPC_STATUS_NAMES, RETRYABLE_GRPC_CODES } from './grpc-status.ts';

export { GrpcStatus };




const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);

export const DEFAULT_PUBLISH_TIMEOUT_MS = 10_000;
/** The client's own per-request batch cap (9 MiB), leaving room under Pub/Sub's 10 MB request limit. */
export const DEFAULT_MAX_PENDING_BYTES = 9 * 1024 * 1024;
const MAX_RECONNECT_BACKOFF_MS = 5_000;
const PUBSUB_ENDPOINT = 'pubsub.googleapis.com:443';

export interface PubsubPublisherOptions {
  projectId: string;
  /** Topic id (not the full projects/…/topics/… name). */
  topic: string;
  /** Pub/Sub emulator 'host:port'; absent means the real service with Application Default Credentials. */
  emulatorHost?: string;
  /** Deadline of one publish, the client's internal retries included. Default 10 s. */
  publishTimeoutMs?: number;
  /** Unacknowledged message bytes handed to the client at a time. Default 9 MiB. */
  maxPendingBytes?: number;
  /**
   * The client's batching. Default: send at once (maxMilliseconds 0): the
   * agent already groups transactions into batches, and while one RPC is in
   * flight the client packs later messages into the next one anyway.
   */
  batching?: { maxMessages?: number; maxMilliseconds?: number; maxBytes?: number };
  logger?: Logger;
}

export interface PubsubPublisher extends MessagePublisher {
  /** projects/PROJECT/topics/TOPIC */
  readonly topicName: string;
}

function errorCode(err: unknown): unknown {
  return (err as { code?: unknown } | null)?.code;
}

/** Maps a publish (or admin) error to RetryableError or PermanentError with what to fix. */
export function classifyPubsubError(err: unknown, ctx: { topic: string; projectId: string; action?: string }): RetryableError | PermanentError {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const code = errorCode(err);
  const action = ctx.action ?? 'publish to';
  const where = `projects/${ctx.projectId}/topics/${ctx.topic}`;
  const reason = err instanceof Error ? err.message : String(err);
  const codeName = typeof code === 'number' ? (GRPC_STATUS_NAMES.get(code) ?? String(code)) : typeof code === 'string' ? code : undefined;
  const message = `Pub/Sub: cannot ${action} ${where}${codeName ? ` (${codeName})` : ''}: ${reason}`;
  const details = { code: codeName, topic: ctx.topic, projectId: ctx.projectId };
  if (typeof code === 'number') {
    if (RETRYABLE_GRPC_CODES.has(code)) return new RetryableError(message, { cause: err, details });
    const remedy =
      code === GrpcStatus.NOT_FOUND
        ? `${where} does not exist: create it (the cdktf stack does) or fix pubsub.changesTopic / project in lifeboat.yaml.`
        : code === GrpcStatus.PERMISSION_DENIED
          ? `The agent's service account needs roles/pubsub.publisher on ${where}.`
          : code === GrpcStatus.UNAUTHENTICATED
            ? 'The credentials were rejected: check Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud auth application-default login).'
            : code === GrpcStatus.INVALID_ARGUMENT
              ? 'Pub/Sub refused the message itself (size, attributes or ordering key); this is a bug in the agent, nothing was skipped.'
              : undefined;
    return new PermanentError(message, { cause: err, details, remedy });
  }
  if (typeof code === 'string' && NETWORK_CODES.has(code)) return new RetryableError(message, { cause: err, details });
  // No status at all: a programming error (TypeError from the client) or something unknown; stop loudly.
  return new PermanentError(message, { cause: err, details });
}

function clientConfig(projectId: string, emulatorHost: string | undefined): ClientConfig {
  const config: ClientConfig = {
    projectId,
    apiEndpoint: emulatorHost ?? PUBSUB_ENDPOINT,
    emulatorMode: emulatorHost !== undefined,
    // The emulator needs no credentials; naming the universe keeps the client
    // from probing for them (and for a metadata server) on first use.
    ...(emulatorHost !== undefined && { universeDomain: 'googleapis.com' }),
  };
  // 'grpc.*' keys reach the gRPC channel through google-gax; the type does not list them.
  return Object.assign(config, { 'grpc.max_reconnect_backoff_ms': MAX_RECONNECT_BACKOFF_MS });
}

/**
 * The client's retries for one publish, bounded by `timeoutMs` in all. Its
 * defaults sleep up to 60 s between tries (and past the deadline: the
 * deadline is checked only before a try), so the delay is capped at 1 s.
 */
export function publishRetrySettings(timeoutMs: number) {
  return {
    timeout: timeoutMs,
    retry: {
      backoffSettings: {
        initialRetryDelayMillis: 100,
        retryDelayMultiplier: 2,
        maxRetryDelayMillis: 1_000,
        initialRpcTimeoutMillis: timeoutMs,
        rpcTimeoutMultiplier: 1,
        maxRpcTimeoutMillis: timeoutMs,
        totalTimeoutMillis: timeoutMs,
      },
    },
  };
}

function messageBytes(message: PubSubMessage): number {
  let bytes = message.data.length + Buffer.byteLength(message.orderingKey);
  for (const [k, v] of Object.entries(message.attributes)) bytes += Buffer.byteLength(k) + Buffer.byteLength(v);
  return bytes;
}

export function createPubsubPublisher(opts: PubsubPublisherOptions): PubsubPublisher {
  const publishTimeoutMs = opts.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS;
  const maxPendingBytes = opts.maxPendingBytes ?? DEFAULT_MAX_PENDING_BYTES;
  if (!Number.isSafeInteger(publishTimeoutMs) || publishTimeoutMs <= 0) {
    throw new ValidationError(`publishTimeoutMs must be a positive integer, got ${publishTimeoutMs}`);
  }
  if (!Number.isSafeInteger(maxPendingBytes) || maxPendingBytes <= 0) {
    throw new ValidationError(`maxPendingBytes must be a positive integer, got ${maxPendingBytes}`);
  }
  const log = (opts.logger ?? createLogger({ component: 'pubsub-publisher' })).child({ topic: opts.topic });
  const pubsub = new PubSub(clientConfig(opts.projectId, opts.emulatorHost));
  const topic: Topic = pubsub.topic(opts.topic, {
    messageOrdering: true,
    batching: { maxMessages: 100, maxMilliseconds: 0, ...opts.batching },
    gaxOpts: publishRetrySettings(publishTimeoutMs),
  });
  const ctx = { topic: opts.topic, projectId: opts.projectId };

  // FIFO gate in front of the client (see the header): keeps publish order.
  let pendingBytes = 0;
  let pendingCount = 0;
  const waiting: { bytes: number; go: () => void }[] = [];
  const admit = (bytes: number): Promise<void> => {
    if (waiting.length === 0 && (pendingCount === 0 || pendingBytes + bytes <= maxPendingBytes)) {
      pendingBytes += bytes;
      pendingCount += 1;
      return Promise.resolve();
    }
    return new Promise((resolve) => waiting.push({ bytes, go: resolve }));
  };
  const release = (bytes: number): void => {
    pendingBytes -= bytes;
    pendingCount -= 1;
    while (waiting.length > 0) {
      const next = waiting[0]!;
      if (pendingCount > 0 && pendingBytes + next.bytes > maxPendingBytes) break;
      waiting.shift();
      pendingBytes += next.bytes;
      pendingCount += 1;
      next.go();
    }
  };

  let closed = false;
  /** Keys paused by a failure, with the error that paused them. */
  const pausedKeys = new Map<string, RetryableError | PermanentError>();

  return {
    topicName: topic.name,

    async publish(message: PubSubMessage): Promise<string> {
      if (closed) throw new PermanentError('Pub/Sub publisher is closed', { details: ctx });
      const bytes = messageBytes(message);
      await admit(bytes);
      try {
        const paused = pausedKeys.get(message.orderingKey);
        if (paused !== undefined) {
          const retryable = paused instanceof RetryableError;
          const text = `Pub/Sub: ordering key ${JSON.stringify(message.orderingKey)} is paused after an earlier failed publish (${paused.message}); call resumeOrderingKey() and publish again in order`;
          throw retryable ? new RetryableError(text, { cause: paused, details: ctx }) : new PermanentError(text, { cause: paused, details: ctx });
        }
        return await topic.publishMessage({ data: message.data, attributes: message.attributes, orderingKey: message.orderingKey });
      } catch (err) {
        const classified = classifyPubsubError(err, ctx);
        if (!pausedKeys.has(message.orderingKey)) {
          pausedKeys.set(message.orderingKey, classified);
          log.warn('publish failed; the ordering key is paused until resumed', { orderingKey: message.orderingKey, err: classified });
        }
        throw classified;
      } finally {
        release(bytes);
      }
    },

    resumeOrderingKey(orderingKey: string): void {
      if (pausedKeys.delete(orderingKey)) log.info('ordering key resumed', { orderingKey });
      topic.resumePublishing(orderingKey);
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

export interface EnsureTopicOptions {
  projectId: string;
  topic: string;
  emulatorHost?: string;
}

/**
 * Creates the topic if it is missing. For local mode and tests only: in
 * cloud mode the cdktf stack owns topics, and an agent that created its own
 * would hide a broken deployment.
 */
export async function ensureTopic(opts: EnsureTopicOptions): Promise<{ topicName: string; created: boolean }> {
  const pubsub = new PubSub(clientConfig(opts.projectId, opts.emulatorHost));
  try {
    try {
      const [topic] = await pubsub.createTopic(opts.topic);
      return { topicName: topic.name, created: true };
    } catch (err) {
      if (errorCode(err) === GrpcStatus.ALREADY_EXISTS) return { topicName: pubsub.topic(opts.topic).name, created: false };
      throw classifyPubsubError(err, { ...opts, action: 'create' });
    }
  } finally {
    await pubsub.close();
  }
}
