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

/** The two sides that can serve the app. */
export type ServingSide = 'local' | 'cloud';

/**
 * Where client traffic goes: the Cloud DNS record in cloud mode, the
 * localhost traffic router in local mode.
 */
export interface TrafficSwitch {
  /**
   * Points traffic at `side`. Idempotent: pointing at the side already served
   * changes nothing (`changed: false`). Resolves once the change is accepted.
   */
  pointAt(side: ServingSide): Promise<{ changed: boolean; detail: string }>;
  /** Where traffic goes now; 'unknown' when it points at neither configured target. */
  current(): Promise<ServingSide | 'unknown'>;
}

/** The app's cloud copy (Cloud Run service; a supervised process in local mode). */
export interface AppScaler {
  /** Sets the minimum number of warm instances. Idempotent. */
  setMinInstances(count: 0 | 1): Promise<{ changed: boolean; detail: string }>;
  minInstances(): Promise<number>;
}

/** A lifecycle event (failover, failback, lease change), for the events topic. */
export interface LifecycleEvent {
  readonly type: string;
  readonly stream: string;
  readonly epoch: number;
  /** The decision's sentence. */
  readonly reason: string;
  /** ISO time. */
  readonly at: string;
  readonly details?: Readonly<Record<string, unknown>>;
}

/** Publishes lifecycle events (the events topic). */
export interface EventSink {
  publish(event: LifecycleEvent): Promise<void>;
}
