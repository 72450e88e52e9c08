// The apply Cloud Function, as a thin entry point: decode the push delivery,
// call the engine, map errors.
//
// Delivery: our own ordered push subscription (infra), not an Eventarc
// trigger: Eventarc-managed subscriptions cannot enable message ordering. The
// push endpoint path is /projects/P/topics/T, so functions-framework turns the
// push envelope into a CloudEvent with the right source. Order is still never
// trusted: the engine's LSN chain turns any out-of-order batch into a gap.
//
// Outcomes:
// - applied, duplicate, stale epoch, snapshot chunk …: return (2xx, acked);
// - a gap, a retryable error, a halted stream: throw (500): Pub/Sub redelivers
//   later, so nothing valid is ever dropped or dead-lettered;
// - a message that fails validation: recorded whole in
//   lifeboat.rejected_messages, logged as an error, then acked.
import type pg from 'pg';
import { decodeMessage, messageFromPushData } from '../core/batch-codec.ts';
import { describeError, isRetryable, ValidationError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { ObjectStore } from '../core/ports.ts';
import { sleep } from '../core/backoff.ts';
import { ApplyGapError, applyBatch, type ApplyResult } from './apply-engine.ts';

/** How long a delivery that arrived before its predecessor waits for it before answering 500. */
export const GAP_WAIT_MS = 3_000;
import { ensureTargetSchema } from './target-schema.ts';

/** The part of a Pub/Sub CloudEvent (messagePublished) the function reads. */
export interface PubsubCloudEvent {
  readonly id?: string;
  readonly data?: {
    readonly message?: {
      readonly data?: unknown;
      readonly attributes?: Readonly<Record<string, unknown>> | null;
      readonly messageId?: string;
      readonly orderingKey?: string;
    };
  } | null;
}

export interface ApplyHandlerDeps {
  readonly pool: pg.Pool;
  readonly objectStore: ObjectStore;
  readonly logger: Logger;
}

export type ApplyHandler = (event: PubsubCloudEvent) => Promise<ApplyResult | { outcome: 'rejected'; reason: string }>;

export function createApplyHandler(deps: ApplyHandlerDeps): ApplyHandler {
  let schemaReady: Promise<unknown> | undefined;
  const ensureSchema = async () => {
    schemaReady ??= (async () => {
      const client = await deps.pool.connect();
      try {
        return await ensureTargetSchema(client);
      } finally {
        client.release();
      }
    })().catch((err) => {
      schemaReady = undefined; // try again on the next delivery
      throw err;
    });
    await schemaReady;
  };

  return async (event) => {
    await ensureSchema();
    const message = event.data?.message;
    const messageId = message?.messageId ?? event.id;
    let batch;
    try {
      if (!message) throw new ValidationError('the delivery has no Pub/Sub message (data.message is missing)');
      if (typeof message.data !== 'string') throw new ValidationError(`message data must be a base64 string, got ${typeof message.data}`);
      const received = messageFromPushData(message.data, message.attributes ?? {}, message.orderingKey ? { orderingKey: message.orderingKey } : {});
      batch = await decodeMessage(received, (uri) => deps.objectStore.get(uri));
    } catch (err) {
      if (isRetryable(err)) throw err; // e.g. object storage unreachable for a claim check
      const reason = describeError(err);
      await recordRejectedMessage(deps.pool, { messageId, orderingKey: message?.orderingKey, attributes: message?.attributes ?? {}, data: message?.data, error: reason });
      deps.logger.error(`rejected message ${messageId ?? '(no id)'}: ${reason}`, { event: 'message-rejected', messageId });
      return { outcome: 'rejected', reason };
    }
    const attributes = Object.fromEntries(Object.entries(message.attributes ?? {}).map(([k, v]) => [k, String(v)]));
    // Push deliveries arrive concurrently and out of order. A gap usually
    // closes within moments, when the delivery of its predecessor commits:
    // waiting a little here (without holding a connection) saves a
    // redelivery round trip of seconds of Pub/Sub backoff. Past the wait the
    // gap is answered 500, and Pub/Sub brings the batch back later.
    const gapDeadline = Date.now() + GAP_WAIT_MS;
    for (let wait = 10; ; wait = Math.min(wait * 2, 200)) {
      const client = await deps.pool.connect();
      let result: ApplyResult;
      try {
        result = await applyBatch(client, batch, { logger: deps.logger, attributes });
      } catch (err) {
        if (err instanceof ApplyGapError && Date.now() + wait <= gapDeadline) {
          client.release();
          await sleep(wait);
          continue;
        }
        client.release();
        deps.logger.warn(`batch ${batch.stream}#${batch.seq} not applied: ${describeError(err)}`, { event: 'batch-refused', retryable: isRetryable(err), stream: batch.stream });
        throw err;
      }
      client.release();
      deps.logger.info(result.reason, {
        event: 'batch-applied',
        outcome: result.outcome,
        stream: batch.stream,
        epoch: batch.epoch,
        rows: result.appliedRows,
        transactions: result.appliedTransactions,
        lagSeconds: batch.transactions.length ? (Date.now() - Date.parse(batch.transactions.at(-1)!.commitTime)) / 1000 : undefined,
      });
      return result;
    }
  };
}

/** Keeps an invalid message whole, with the reason, on the target. */
export async function recordRejectedMessage(
  pool: pg.Pool,
  m: { messageId: string | undefined; orderingKey: string | undefined; attributes: unknown; data: unknown; error: string },
): Promise<void> {
  const data = typeof m.data === 'string' ? Buffer.from(m.data, 'utf8') : Buffer.from(JSON.stringify(m.data ?? null), 'utf8');
  await pool.query(
    'INSERT INTO lifeboat.rejected_messages (message_id, ordering_key, attributes, data, error) VALUES ($1, $2, $3, $4, $5)',
    [m.messageId ?? null, m.orderingKey ?? null, JSON.stringify(m.attributes ?? {}), data, m.error],
  );
}
