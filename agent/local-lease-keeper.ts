// Keeps the writer lease for the local side: renews it every
// lease.renewIntervalSeconds and answers "which epoch do new batches carry?".
// The epoch is the fencing token: the apply side refuses batches whose epoch
// is below the one failover wrote into the target.
//
// When the local side loses the lease (renewals fail past ttl − margin, the
// cloud took over, or a takeover was requested) the keeper reports it through
// `onMustFence` with the lease rules' own sentence. Fencing the database
// itself belongs to the failover issue (#5); the agent stops on it.
import { sleep } from '../core/backoff.ts';
import { describeError, PermanentError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { mustSelfFence, type Lease, type LeaseClient, type LeaseTiming } from '../core/writer-lease.ts';

export interface LocalLeaseKeeperOptions {
  readonly client: LeaseClient;
  readonly timing: LeaseTiming & { readonly lease: { readonly renewIntervalSeconds: number } };
  readonly logger: Logger;
  readonly onMustFence: (reason: string) => void;
  readonly clock?: () => number;
}

export class LocalLeaseKeeper {
  #held: Lease | undefined;
  #lastSentence = 'the lease has not been acquired yet';
  readonly #clock: () => number;

  constructor(private readonly opts: LocalLeaseKeeperOptions) {
    this.#clock = opts.clock ?? Date.now;
  }

  /** Acquires (or renews) the lease once; throws a PermanentError when another side holds it. */
  async acquire(): Promise<Lease> {
    const outcome = await this.opts.client.acquireOrRenew('local');
    this.#lastSentence = outcome.sentence;
    if (!outcome.ok) {
      throw new PermanentError(`the local side cannot take the writer lease: ${outcome.sentence}`, {
        remedy:
          outcome.current?.lease.holder === 'cloud'
            ? 'The cloud serves writes after a failover: bring the writer back with `lifeboat failback` before starting the agent as the writer.'
            : 'Try again once the other holder released the lease.',
      });
    }
    this.#held = outcome.lease;
    this.opts.logger.info(outcome.sentence, { epoch: outcome.lease.epoch });
    return outcome.lease;
  }

  /** The epoch of the lease this side holds; new batches carry it. */
  epoch(): number {
    if (!this.#held) throw new PermanentError('the agent holds no writer lease yet, so it has no epoch to put on batches');
    return this.#held.epoch;
  }

  status(): { holder: string | null; epoch: number | null; expiresAt: string | null; sentence: string } {
    return {
      holder: this.#held?.holder ?? null,
      epoch: this.#held?.epoch ?? null,
      expiresAt: this.#held ? new Date(this.#held.leaseExpiresAt).toISOString() : null,
      sentence: this.#lastSentence,
    };
  }

  /** Renews until `signal` aborts or the lease is lost (then calls onMustFence once and returns). */
  async keep(signal: AbortSignal): Promise<void> {
    const intervalMs = this.opts.timing.lease.renewIntervalSeconds * 1000;
    while (!signal.aborted) {
      try {
        await sleep(intervalMs, signal);
      } catch {
        return;
      }
      try {
        const outcome = await this.opts.client.acquireOrRenew('local');
        this.#lastSentence = outcome.sentence;
        if (outcome.ok) {
          this.#held = outcome.lease;
        } else {
          this.opts.logger.error(`lease renewal refused: ${outcome.sentence}`);
        }
      } catch (err) {
        this.#lastSentence = `renewal failed: ${describeError(err)}`;
        this.opts.logger.warn('could not renew the writer lease', { error: err });
      }
      const verdict = mustSelfFence(this.#held, 'local', this.#clock(), this.opts.timing);
      if (verdict.fence) {
        this.opts.logger.critical(verdict.reason);
        this.opts.onMustFence(verdict.reason);
        return;
      }
    }
  }
}
