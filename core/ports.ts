// Ports: the small interfaces through which Lifeboat reaches the outside
// world. Each has a real local implementation (local mode, tests) and a GCP
// adapter tested against the official client. core/ only names them.
import type { PubSubMessage } from './batch-codec.ts';

/**
 * Object storage (Litestream-style small API): claim-check payloads,
 * stranded-tail reports, the batch archive. Writes are create-only: an object
 * is never overwritten, so a retried upload can never replace good data.
 */
export interface ObjectStore {
  /**
   * Stores `body` under `key` unless an object already exists there. Writing
   * the same bytes again is a success (`created: false`); different bytes
   * under an existing key is a PermanentError.
   */
  putIfAbsent(key: string, body: Buffer): Promise<{ uri: string; created: boolean }>;
  /** Reads a whole object by the URI putIfAbsent returned. Missing → PermanentError. */
  get(uri: string): Promise<Buffer>;
  /** Objects under a key prefix, in key order. */
  list(prefix: string): Promise<{ key: string; uri: string; bytes: number }[]>;
}

/**
 * Publishes messages to one topic. The promise resolves with the message id
 * only once Pub/Sub has acknowledged the message; a RetryableError means it
 * may or may not have been stored and must be published again.
 */
export interface MessagePublisher {
  publish(message: PubSubMessage): Promise<string>;
  /** After a failed publish on an ordering key, allow that key again. */
  resumeOrderingKey(orderingKey: string): void;
  close(): Promise<void>;
}
