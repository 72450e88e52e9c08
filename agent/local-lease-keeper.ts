// Keeps the writer lease for the local side: renews it every
// lease.renewIntervalSeconds and answers "which epoch do new batches carry?".
// The epoch is the fencing token: the apply side refuses batches whose epoch
// is below the one failover wrote into the target.
//
// Losing the lease fences the local database (agent/local-fence.ts), through
// `onMustFence`, at the latest by the self-fence deadline: ttl − margin after
// the start of the last renewal this side saw confirmed (core/writer-lease.ts
// explains why that keeps two writers apart). Two paths lead there:
//
// - A timer on the deadline, re-armed by every confirmed renewal. It does not
//   wait for the renewal in flight: a request that hangs (Firestore
//   unreachable, a proxy that swallows packets) cannot hold the fence back.
//   It fires `fenceLeadMs` before the deadline so that the fence is in place
//   by then.
// - A renewal answer that says the lease is gone: another side holds it, it
//   was released, or the rules refuse to renew it. Then fencing starts at once.
//
// Each renewal is bounded by renewTimeoutMs. LeaseClient takes no
// AbortSignal, so a request that does not answer in time is abandoned: if it
// lands later it only moves leaseExpiresAt later, which can delay a takeover
// but never lengthens this side's writing, which counts from renewals it saw
// confirmed. A late answer is ignored.
//
// A takeover request from the other side (the lease rules' graceful
// handover) is reported once through `onTakeoverRequested`; renewals go on, so
// the epoch stays valid while the agent fences, publishes its marker and
// calls release(). After release() the keeper stops quietly.
import { sleep } from '../core/backoff.ts';
import { describeError, PermanentError, RetryableError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { iso, mustSelfFence, selfFenceDeadline, type Lease, type LeaseClient, type LeaseOutcome, type LeaseTiming } from '../core/writer-lease.ts';

export type KeeperTiming = LeaseTiming & { readonly lease: { readonly renewIntervalSeconds: number } };

export interface LocalLeaseKeeperOptions {
  readonly client: LeaseClient;
  readonly timing: KeeperTiming;
  readonly logger: Logger;
  /**
   * Fences the local database. Called at most once per keep(), with the
   * sentence that explains why; keep() returns once it settled.
   */
  readonly onMustFence: (reason: string) => Promise<void> | void;
  /** The other side asks for a graceful handover. Called once; renewals go on until release(). */
  readonly onTakeoverRequested?: (lease: Lease, reason: string) => void;
  /** The holder's clock, ms since the Unix epoch (the LeaseClient's clock must be the same). */
  readonly clock?: () => number;
  /** One renewal request is abandoned after this long. Default: the renew interval, at least 2 s. */
  readonly renewTimeoutMs?: number;
  /** Fencing starts this long before the self-fence deadline. Default: defaultFenceLeadMs(timing). */
  readonly fenceLeadMs?: number;
}

export interface LeaseKeeperStatus {
  readonly holder: string | null;
  readonly epoch: number | null;
  readonly expiresAt: string | null;
  /** Start of the last renewal this side saw confirmed. */
  readonly renewedAt: string | null;
  /** When this side must have stopped writing: renewedAt + ttl − margin. */
  readonly selfFenceAt: string | null;
  readonly takeoverRequestedBy: string | null;
  readonly released: boolean;
  readonly sentence: string;
}

/**
 * How long before its self-fence deadline the keeper starts fencing: half the
 * clock-skew margin, but no more than half the slack the config leaves after
 * two renewal intervals (ttl − margin − 2 × renew), so that one failed
 * renewal followed by a successful retry never fences. Fencing a database
 * takes well under a second; the margin covers a slower one (writer-lease.ts).
 */
export function defaultFenceLeadMs(timing: KeeperTiming): number {
  const ttl = timing.lease.ttlSeconds * 1000;
  const margin = timing.lease.clockSkewMarginSeconds * 1000;
  const renew = timing.lease.renewIntervalSeconds * 1000;
  return Math.max(0, Math.round(Math.min(margin / 2, (ttl - margin - 2 * renew) / 2)));
}

/** `promise`, or a RetryableError once `ms` passed; the promise itself is abandoned, not cancelled. */
function withinMs<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  promise.catch(() => undefined); // an abandoned request may still fail later
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RetryableError(`${what} did not answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export class LocalLeaseKeeper {
  #held: Lease | undefined;
  #lastSentence = 'the lease has not been acquired yet';
  #released = false;
  #fencing = false;
  #takeoverReported = false;
  #timer: NodeJS.Timeout | undefined;
  #onDeadline: (() => void) | undefined;
  readonly #clock: () => number;
  readonly #renewTimeoutMs: number;
  readonly #fenceLeadMs: number;

  constructor(private readonly opts: LocalLeaseKeeperOptions) {
    this.#clock = opts.clock ?? Date.now;
    this.#renewTimeoutMs = opts.renewTimeoutMs ?? Math.max(2_000, opts.timing.lease.renewIntervalSeconds * 1000);
    this.#fenceLeadMs = opts.fenceLeadMs ?? defaultFenceLeadMs(opts.timing);
  }

  /**
   * Acquires (or renews) the lease once.
   * @throws PermanentError when the rules refuse it (another side holds it, or
   *   this side released it for a takeover); RetryableError when the store
   *   does not answer within the ttl (at least 10 s: a first Firestore call
   *   sets up its channel, which took 4.5 s on a loaded test machine).
   */
  async acquire(): Promise<Lease> {
    const boundMs = Math.max(10_000, this.#renewTimeoutMs, this.opts.timing.lease.ttlSeconds * 1000);
    const outcome = await withinMs(this.opts.client.acquireOrRenew('local'), boundMs, 'the lease store');
    this.#lastSentence = outcome.sentence;
    if (!outcome.ok) {
      const current = outcome.current?.lease;
      throw new PermanentError(`the local side cannot take the writer lease: ${outcome.sentence}`, {
        remedy:
          current?.holder === 'cloud'
            ? 'The cloud serves writes after a failover: bring the writer back with `lifeboat failback` before starting the agent as the writer.'
            : current?.releasedAt != null
              ? `The local side handed the lease over (marker ${current.markerLsn}); the cloud takes it next. Bring the writer back with \`lifeboat failback\`.`
              : 'Try again once the other holder released the lease.',
        details: { holder: current?.holder, epoch: current?.epoch },
      });
    }
    this.#held = outcome.lease;
    this.#released = false;
    this.opts.logger.info(outcome.sentence, { epoch: outcome.lease.epoch });
    return outcome.lease;
  }

  /** The epoch of the lease this side holds; new batches carry it. */
  epoch(): number {
    if (!this.#held) throw new PermanentError('the agent holds no writer lease yet, so it has no epoch to put on batches');
    return this.#held.epoch;
  }

  /** The lease as this side last saw it confirmed (the proof liftLocalFence asks for). */
  lease(): Lease | undefined {
    return this.#held;
  }

  /** On the holder's clock: when fencing must be complete (renewedAt + ttl − margin). */
  selfFenceAt(): number | undefined {
    return this.#held ? selfFenceDeadline(this.#held, this.opts.timing) : undefined;
  }

  status(): LeaseKeeperStatus {
    const held = this.#held;
    return {
      holder: held?.holder ?? null,
      epoch: held?.epoch ?? null,
      expiresAt: held ? iso(held.leaseExpiresAt) : null,
      renewedAt: held ? iso(held.renewedAt) : null,
      selfFenceAt: held ? iso(selfFenceDeadline(held, this.opts.timing)) : null,
      takeoverRequestedBy: held?.takeoverRequestedBy ?? null,
      released: this.#released,
      sentence: this.#lastSentence,
    };
  }

  /**
   * Hands the lease over after the local side fenced itself and Pub/Sub
   * acknowledged the marker batch ending at `markerLsn`. Renewals stop.
   */
  async release(markerLsn: string): Promise<LeaseOutcome> {
    const outcome = await withinMs(this.opts.client.release('local', markerLsn), this.#renewTimeoutMs, 'the lease store');
    this.#lastSentence = outcome.sentence;
    if (outcome.ok) {
      this.#held = outcome.lease;
      this.#released = true;
      this.#clearTimer();
      this.#onDeadline = undefined;
    }
    return outcome;
  }

  /**
   * Renews until `signal` aborts, the lease is released, or it is lost; on
   * loss calls onMustFence once (at the latest fenceLeadMs before the
   * deadline, whatever a renewal in flight does) and returns when it settled.
   */
  async keep(signal: AbortSignal): Promise<void> {
    if (!this.#held) throw new PermanentError('keep() needs a lease: call acquire() first');
    const intervalMs = this.opts.timing.lease.renewIntervalSeconds * 1000;
    const done = new AbortController();
    const stop = AbortSignal.any([signal, done.signal]);
    let fenced: Promise<void> | undefined;
    const mustFence = (reason: string): void => {
      if (this.#fencing || this.#released || signal.aborted) return;
      this.#fencing = true;
      this.#clearTimer();
      this.#lastSentence = reason;
      this.opts.logger.critical(reason, { epoch: this.#held?.epoch });
      fenced = Promise.resolve()
        .then(() => this.opts.onMustFence(reason))
        .catch((err) => this.opts.logger.critical('fencing the local database failed', { error: err }));
      done.abort();
    };
    this.#onDeadline = () => mustFence(this.#deadlineSentence());
    this.#arm();
    try {
      let nextAt = this.#clock() + intervalMs;
      while (!stop.aborted) {
        try {
          await sleep(Math.max(0, nextAt - this.#clock()), stop);
        } catch {
          break;
        }
        if (this.#released) break;
        // Renewals keep their cadence even when one hangs until its timeout.
        nextAt = this.#clock() + intervalMs;
        const verdict = await this.#renewOnce();
        if (stop.aborted || this.#released) break;
        if (verdict.fence) {
          mustFence(verdict.reason);
          break;
        }
      }
    } finally {
      this.#clearTimer();
      this.#onDeadline = undefined;
    }
    if (fenced) await fenced;
  }

  /** One renewal, bounded in time; says whether the local side must fence now. */
  async #renewOnce(): Promise<{ fence: boolean; reason: string }> {
    let outcome: LeaseOutcome;
    try {
      outcome = await withinMs(this.opts.client.acquireOrRenew('local'), this.#renewTimeoutMs, 'the lease store');
    } catch (err) {
      if (this.#fencing || this.#released) return { fence: false, reason: 'already fencing' };
      this.#lastSentence = `renewal failed: ${describeError(err)}`;
      this.opts.logger.warn(`could not renew the writer lease; the local database is fenced at ${iso(this.selfFenceAt() ?? 0)} unless a renewal succeeds before`, {
        error: err,
      });
      return { fence: false, reason: this.#lastSentence };
    }
    // An answer that arrives after fencing started counts for nothing.
    if (this.#fencing || this.#released) return { fence: false, reason: 'already fencing' };
    this.#lastSentence = outcome.sentence;
    if (!outcome.ok) {
      const current = outcome.current?.lease;
      if (outcome.change === 'refused') {
        this.opts.logger.error(`lease renewal refused: ${outcome.sentence}`);
        const verdict = current ? mustSelfFence(current, 'local', this.#clock(), this.opts.timing) : undefined;
        return { fence: true, reason: verdict?.fence ? verdict.reason : `local must fence itself: ${outcome.sentence}` };
      }
      this.opts.logger.warn(`lease renewal did not go through: ${outcome.sentence}`);
      return { fence: false, reason: outcome.sentence };
    }
    const before = this.#held;
    if (outcome.change === 're-acquired' && before !== undefined) {
      // Only possible when this side's own deadline passed unnoticed (a stalled
      // process): it wrote under a lapsed lease, so it fences rather than carry on.
      return { fence: true, reason: `local must fence itself: ${outcome.sentence}, which means its lease at epoch ${before.epoch} lapsed while it was running` };
    }
    this.#held = outcome.lease;
    this.#arm();
    const lease = outcome.lease;
    const now = this.#clock();
    const request = lease.takeoverRequestedBy;
    if (request !== null && request !== 'local' && lease.holder === 'local' && lease.releasedAt === null && now < selfFenceDeadline(lease, this.opts.timing)) {
      if (!this.#takeoverReported) {
        this.#takeoverReported = true;
        const reason = `${request} requested a takeover at ${iso(lease.takeoverRequestedAt ?? 0)} (${lease.takeoverReason ?? 'no reason given'})`;
        this.opts.logger.notice(`${reason}; the local side answers with a graceful handover at epoch ${lease.epoch}`);
        this.opts.onTakeoverRequested?.(lease, reason);
      }
      return { fence: false, reason: outcome.sentence };
    }
    return mustSelfFence(lease, 'local', now, this.opts.timing);
  }

  #deadlineSentence(): string {
    const held = this.#held;
    if (!held) return 'local must stay fenced: it holds no lease';
    const deadline = selfFenceDeadline(held, this.opts.timing);
    const ahead = Math.max(0, deadline - this.#clock());
    return (
      `local must fence itself: no renewal was confirmed since the one that started at ${iso(held.renewedAt)}, ` +
      `and ttl − margin runs out at ${iso(deadline)}; fencing now, ${(ahead / 1000).toFixed(3)} s ahead, so it is done by then`
    );
  }

  /** (Re)arms the deadline timer from the lease last seen confirmed. */
  #arm(): void {
    this.#clearTimer();
    const held = this.#held;
    const onDeadline = this.#onDeadline;
    if (!held || !onDeadline || this.#fencing || this.#released) return;
    const fireAt = selfFenceDeadline(held, this.opts.timing) - this.#fenceLeadMs;
    this.#timer = setTimeout(onDeadline, Math.max(0, fireAt - this.#clock()));
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
