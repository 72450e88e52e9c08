// The one backoff helper: exponential with full jitter, a cap, and an
// AbortSignal so shutdown never waits out a long sleep. Only retryable errors
// are retried; a permanent error is returned at once (silent retries of a
// permanent failure would hide it).
import { isRetryable } from './errors.ts';

export interface BackoffPolicy {
  /** Delay before the first retry, before jitter. */
  readonly initialMs: number;
  /** No delay is ever longer than this. */
  readonly maxMs: number;
  /** Growth per attempt. */
  readonly multiplier: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 100, maxMs: 30_000, multiplier: 2 };

/**
 * Delay before retry number `attempt` (1-based), with "full jitter": uniform in
 * [0, min(cap, initial × multiplier^(attempt−1))]. Full jitter spreads
 * reconnecting agents and functions apart best (AWS architecture blog).
 */
export function backoffDelayMs(attempt: number, policy: BackoffPolicy = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  if (!Number.isInteger(attempt) || attempt < 1) throw new RangeError(`attempt must be a positive integer, got ${attempt}`);
  const ceiling = Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** (attempt - 1));
  return Math.floor(random() * ceiling);
}

export class AbortedError extends Error {
  constructor(reason?: unknown) {
    super(reason instanceof Error ? reason.message : reason === undefined ? 'aborted' : String(reason));
    this.name = 'AbortedError';
  }
}

/** Sleeps, or rejects with AbortedError as soon as the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new AbortedError(signal.reason));
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new AbortedError(signal?.reason));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export interface RetryOptions {
  readonly policy?: BackoffPolicy;
  readonly signal?: AbortSignal;
  /** Give up after this many attempts in all (default: never while retryable). */
  readonly maxAttempts?: number;
  /** Which errors are worth another try (default: RetryableError only). */
  readonly retryIf?: (err: unknown) => boolean;
  /** Called before each sleep, e.g. to log "retrying in 3.2 s because …". */
  readonly onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  readonly random?: () => number;
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

/** Runs `fn` until it succeeds, a non-retryable error occurs, attempts run out, or the signal aborts. */
export async function retry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const retryIf = opts.retryIf ?? isRetryable;
  const doSleep = opts.sleep ?? sleep;
  for (let attempt = 1; ; attempt++) {
    if (opts.signal?.aborted) throw new AbortedError(opts.signal.reason);
    try {
      return await fn(attempt);
    } catch (err) {
      if (!retryIf(err) || (opts.maxAttempts !== undefined && attempt >= opts.maxAttempts)) throw err;
      const delay = backoffDelayMs(attempt, opts.policy, opts.random);
      opts.onRetry?.(err, attempt, delay);
      await doSleep(delay, opts.signal);
    }
  }
}
