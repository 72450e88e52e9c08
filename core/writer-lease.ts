// The single-writer lease and its fencing epoch: the rules as pure functions,
// the LeaseStore port (Litestream-style: read + compare-and-set, nothing
// more), and LeaseClient, which applies the rules over the port.
//
// The lease document:
//
//   { holder: 'local' | 'cloud', epoch, leaseExpiresAt, renewedAt, acquiredAt,
//     releasedAt, markerLsn, takeoverRequestedAt, takeoverRequestedBy,
//     takeoverReason, changeReason }      (times: ms since the Unix epoch)
//
// Rules:
// - It changes only by compare-and-set on the store's version, so of two
//   concurrent writers exactly one wins.
// - Every change of holder increments the epoch; epochs never decrease. The
//   epoch is the fencing token: batches carry it and the target refuses one
//   below its stored epoch.
// - The holder renews with the same epoch. A local lease that lapsed past
//   leaseExpiresAt + margin is re-acquired with a new epoch, never renewed, so
//   the epoch records that another side could have taken it meanwhile.
// - Another side takes over only when the lease is free: released by its
//   holder (graceful handover, after the holder fenced itself and published a
//   marker), or expired with the margin passed: now > leaseExpiresAt + margin.
// - A lease held by the cloud never lapses to local: while the cloud serves,
//   local is behind, and only failback (after reverse sync) hands it back.
//
// Why the margin keeps two writers apart (pg_auto_failover / Litestream style
// reasoning). Let m be lease.clockSkewMarginSeconds, ttl lease.ttlSeconds and
// R the holder's clock when it STARTED its last successful renewal (renewedAt:
// read before the request, so a slow request only makes it stop earlier). The
// holder stops writing (fences itself) when its own clock reads R + ttl − m.
// The cloud takes over only when its clock reads more than leaseExpiresAt + m
// = R + ttl + m. ASSUMPTION: the two clocks differ by less than m. Let s be
// (cloud clock − holder clock), |s| < m; in real time the takeover then comes
// 2m − s > m after the holder's deadline, so fencing itself (read-only,
// sessions terminated) may take up to m. A renewal whose answer was lost only
// pushes leaseExpiresAt later: it can delay a takeover but never lengthen the
// holder's writing, which counts from the last renewal it saw confirmed.
// (test/core/failover-controller.model.test.ts checks this with random skews
// and fence latencies below m.)
//
// This module is pure: no I/O, no cloud SDK; `now` is always passed in.

import { z } from 'zod';
import { PermanentError, ValidationError } from './errors.ts';
import { parseLsn } from './lsn.ts';

export const SIDES = ['local', 'cloud'] as const;
export type Side = (typeof SIDES)[number];

const ms = z.number().int().nonnegative();
const markerLsnText = z.string().refine(
  (s) => {
    try {
      parseLsn(s);
      return true;
    } catch {
      return false;
    }
  },
  { error: 'must be an LSN such as 0/1CF7460' },
);

export const leaseSchema = z
  .strictObject({
    holder: z.enum(SIDES),
    /** The fencing token; 1 for the first holder, +1 on every change of holder. */
    epoch: z.number().int().min(1),
    /** renewedAt + ttl: after this plus the margin another side may take it. */
    leaseExpiresAt: ms,
    /** The holder's clock when it started its last renewal. */
    renewedAt: ms,
    /** When this holder got this epoch. */
    acquiredAt: ms,
    /** Set when the holder handed the lease over after fencing itself. */
    releasedAt: ms.nullable(),
    /** The LSN of the marker batch the releasing holder published last. */
    markerLsn: markerLsnText.nullable(),
    /** A graceful takeover asked for by the other side. */
    takeoverRequestedAt: ms.nullable(),
    takeoverRequestedBy: z.enum(SIDES).nullable(),
    takeoverReason: z.string().nullable(),
    /** The sentence that explains the last change of holder or epoch. */
    changeReason: z.string(),
  })
  .superRefine((l, ctx) => {
    if (l.leaseExpiresAt < l.renewedAt) {
      ctx.addIssue({ code: 'custom', path: ['leaseExpiresAt'], message: `must not be before renewedAt (${l.renewedAt})` });
    }
    if ((l.takeoverRequestedAt === null) !== (l.takeoverRequestedBy === null)) {
      ctx.addIssue({ code: 'custom', path: ['takeoverRequestedBy'], message: 'takeoverRequestedAt and takeoverRequestedBy are set together or not at all' });
    }
    if (l.takeoverRequestedBy !== null && l.takeoverRequestedBy === l.holder) {
      ctx.addIssue({ code: 'custom', path: ['takeoverRequestedBy'], message: `the holder (${l.holder}) cannot request a takeover from itself` });
    }
    if ((l.releasedAt === null) !== (l.markerLsn === null)) {
      ctx.addIssue({ code: 'custom', path: ['markerLsn'], message: 'a released lease names the marker LSN of its handover, and only a released one does' });
    }
  });

export type Lease = z.output<typeof leaseSchema>;

/** Validates a lease read from or written to a store. */
export function parseLease(input: unknown, where = 'lease document'): Lease {
  const r = leaseSchema.safeParse(input);
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
  throw new ValidationError(`invalid ${where}: ${lines.join('; ')}`, {
    remedy: 'The lease document was written by something other than Lifeboat, or by another version; inspect it (lifeboat status) and fix or delete it only once both sides are stopped.',
    details: { issues: r.error.issues },
  });
}

/** The lease settings the rules need (a LifeboatConfig fits). */
export interface LeaseTiming {
  readonly lease: { readonly ttlSeconds: number; readonly clockSkewMarginSeconds: number };
}

const ttlMs = (t: LeaseTiming) => Math.round(t.lease.ttlSeconds * 1000);
const marginMs = (t: LeaseTiming) => Math.round(t.lease.clockSkewMarginSeconds * 1000);

/** A yes/no with the sentence that explains it. */
export interface Verdict {
  readonly allowed: boolean;
  readonly reason: string;
}

export function iso(at: number): string {
  return Number.isFinite(at) ? new Date(at).toISOString() : String(at);
}

function seconds(msValue: number): string {
  return `${+(msValue / 1000).toFixed(3)} s`;
}

/** The moment after which, on the taker's clock, a lease is up for grabs by expiry. */
export function takeoverAllowedAfter(lease: Lease, timing: LeaseTiming): number {
  return lease.leaseExpiresAt + marginMs(timing);
}

/** True when a local-held lease has expired past the margin (the holder has fenced itself). */
export function hasLapsed(lease: Lease, now: number, timing: LeaseTiming): boolean {
  return now > takeoverAllowedAfter(lease, timing);
}

export function canRenew(lease: Lease, who: Side, now: number, timing: LeaseTiming): Verdict {
  if (lease.holder !== who) {
    return { allowed: false, reason: `${who} cannot renew the lease: ${lease.holder} holds it at epoch ${lease.epoch}` };
  }
  if (lease.releasedAt !== null) {
    return {
      allowed: false,
      reason: `${who} cannot renew the lease at epoch ${lease.epoch}: it released it at ${iso(lease.releasedAt)} (marker ${lease.markerLsn}); it must be re-acquired with a new epoch`,
    };
  }
  if (who === 'local' && hasLapsed(lease, now, timing)) {
    return {
      allowed: false,
      reason: `local cannot renew the lease at epoch ${lease.epoch}: it expired at ${iso(lease.leaseExpiresAt)} and the ${seconds(marginMs(timing))} margin has passed, so it must be re-acquired with a new epoch`,
    };
  }
  return { allowed: true, reason: `${who} holds the lease at epoch ${lease.epoch} and may renew it` };
}

/** The next lease after a renewal: same holder, same epoch, expiry moved. `now` is taken before the request. */
export function renew(lease: Lease, who: Side, now: number, timing: LeaseTiming): Lease {
  const v = canRenew(lease, who, now, timing);
  if (!v.allowed) throw new PermanentError(v.reason);
  // renewedAt is always the renewer's own clock (its fence deadline counts from it); the expiry
  // never moves earlier, which could only hasten a takeover.
  return { ...lease, renewedAt: now, leaseExpiresAt: Math.max(now + ttlMs(timing), lease.leaseExpiresAt) };
}

export function canTakeOver(lease: Lease, who: Side, now: number, timing: LeaseTiming): Verdict {
  const held = `${lease.holder} holds the lease at epoch ${lease.epoch}`;
  if (lease.releasedAt !== null) {
    const by = lease.takeoverRequestedBy;
    if (by !== null && by !== who) {
      return { allowed: false, reason: `${who} cannot take the lease: ${lease.holder} released it at epoch ${lease.epoch} for the takeover ${by} requested` };
    }
    return {
      allowed: true,
      reason: `${lease.holder} released the lease at epoch ${lease.epoch} at ${iso(lease.releasedAt)} after fencing itself (marker ${lease.markerLsn})`,
    };
  }
  if (lease.holder === 'cloud') {
    return {
      allowed: false,
      reason:
        who === 'cloud'
          ? `cloud already holds the lease at epoch ${lease.epoch}; it renews it instead`
          : `${held}; a lease held by cloud never lapses to local: only failback hands it back, after reverse sync`,
    };
  }
  // Held by local, not released.
  if (!hasLapsed(lease, now, timing)) {
    if (who === 'local') return { allowed: false, reason: `${held} and it is valid; local renews it instead` };
    const after = takeoverAllowedAfter(lease, timing);
    return {
      allowed: false,
      reason: `${held}, valid until ${iso(lease.leaseExpiresAt)}; it can be taken only after the ${seconds(marginMs(timing))} clock-skew margin, at ${iso(after)} (${seconds(after - now)} from now)`,
    };
  }
  return {
    allowed: true,
    reason: `the lease held by local at epoch ${lease.epoch} expired at ${iso(lease.leaseExpiresAt)} and the ${seconds(marginMs(timing))} margin has passed`,
  };
}

/** The next lease after a takeover: holder = who, epoch + 1. */
export function takeOver(lease: Lease, who: Side, now: number, timing: LeaseTiming, reason: string): Lease {
  const v = canTakeOver(lease, who, now, timing);
  if (!v.allowed) throw new PermanentError(v.reason);
  // A pending request from someone else stays (it was addressed to the holder, not answered yet).
  const keepRequest = lease.takeoverRequestedBy !== null && lease.takeoverRequestedBy !== who && lease.releasedAt === null;
  return {
    holder: who,
    epoch: lease.epoch + 1,
    renewedAt: now,
    leaseExpiresAt: now + ttlMs(timing),
    acquiredAt: now,
    releasedAt: null,
    markerLsn: null,
    takeoverRequestedAt: keepRequest ? lease.takeoverRequestedAt : null,
    takeoverRequestedBy: keepRequest ? lease.takeoverRequestedBy : null,
    takeoverReason: keepRequest ? lease.takeoverReason : null,
    changeReason: reason,
  };
}

/** The first lease of a stream: epoch 1. */
export function createLease(who: Side, now: number, timing: LeaseTiming, reason: string): Lease {
  return {
    holder: who,
    epoch: 1,
    renewedAt: now,
    leaseExpiresAt: now + ttlMs(timing),
    acquiredAt: now,
    releasedAt: null,
    markerLsn: null,
    takeoverRequestedAt: null,
    takeoverRequestedBy: null,
    takeoverReason: null,
    changeReason: reason,
  };
}

/** The other side asks the holder for a graceful handover (same holder, same epoch). */
export function requestTakeover(lease: Lease, who: Side, now: number, reason: string): Lease {
  if (lease.holder === who) throw new PermanentError(`${who} cannot request a takeover: it holds the lease at epoch ${lease.epoch}`);
  if (lease.releasedAt !== null) throw new PermanentError(`no takeover to request: ${lease.holder} already released the lease at epoch ${lease.epoch}`);
  if (lease.takeoverRequestedBy === who) return lease;
  return { ...lease, takeoverRequestedAt: now, takeoverRequestedBy: who, takeoverReason: reason };
}

/**
 * The holder hands the lease over after it fenced itself and published a
 * marker batch at `markerLsn`: the epoch stays; whoever takes it next gets
 * epoch + 1, without waiting for the expiry.
 */
export function release(lease: Lease, who: Side, now: number, markerLsn: string): Lease {
  if (lease.holder !== who) throw new PermanentError(`${who} cannot release the lease: ${lease.holder} holds it at epoch ${lease.epoch}`);
  if (lease.releasedAt !== null) return lease;
  parseLsn(markerLsn);
  return { ...lease, releasedAt: now, markerLsn };
}

/**
 * Failback: the holder (cloud), already fenced, gives the lease to `to` at
 * epoch + 1. The new holder still renews before it writes, so its own clock
 * starts its fence deadline.
 */
export function handOver(lease: Lease, from: Side, to: Side, now: number, timing: LeaseTiming, reason: string): Lease {
  if (lease.holder !== from) throw new PermanentError(`${from} cannot hand the lease over: ${lease.holder} holds it at epoch ${lease.epoch}`);
  if (from === to) throw new PermanentError(`${from} cannot hand the lease to itself`);
  return { ...createLease(to, now, timing, reason), epoch: lease.epoch + 1 };
}

/** On the holder's clock: when it must stop writing (renewedAt + ttl − margin). */
export function selfFenceDeadline(lease: Lease, timing: LeaseTiming): number {
  return lease.renewedAt + ttlMs(timing) - marginMs(timing);
}

/** Whether a side must be fenced, with the sentence that explains it. */
export interface FenceVerdict {
  readonly fence: boolean;
  readonly reason: string;
}

/**
 * Whether `who` must be fenced (accept no writes) at `now` on its own clock.
 * `lease` must be the lease as `who` last saw it confirmed by its own
 * successful write (its renewedAt then comes from `who`'s clock), or
 * undefined when it holds none. A pending takeover request fences at once:
 * the holder answers it by fencing, publishing a marker and releasing.
 */
export function mustSelfFence(lease: Lease | undefined, who: Side, now: number, timing: LeaseTiming): FenceVerdict {
  if (lease === undefined) return { fence: true, reason: `${who} must stay fenced: it holds no lease` };
  if (lease.holder !== who) return { fence: true, reason: `${who} must stay fenced: ${lease.holder} holds the lease at epoch ${lease.epoch}` };
  if (lease.releasedAt !== null) {
    return { fence: true, reason: `${who} must stay fenced: it released the lease at epoch ${lease.epoch} at ${iso(lease.releasedAt)}` };
  }
  if (lease.takeoverRequestedBy !== null) {
    return {
      fence: true,
      reason: `${who} must fence itself: ${lease.takeoverRequestedBy} requested a takeover at ${iso(lease.takeoverRequestedAt ?? 0)} (${lease.takeoverReason ?? 'no reason given'})`,
    };
  }
  const deadline = selfFenceDeadline(lease, timing);
  if (now >= deadline) {
    return {
      fence: true,
      reason: `${who} must fence itself: its last confirmed renewal started at ${iso(lease.renewedAt)}, and ttl − margin (${seconds(ttlMs(timing) - marginMs(timing))}) ran out at ${iso(deadline)}`,
    };
  }
  return { fence: false, reason: `${who} holds the lease at epoch ${lease.epoch} and may write until ${iso(deadline)}` };
}

// ---------------------------------------------------------------------------
// The port

export interface LeaseSnapshot {
  readonly lease: Lease;
  /** Opaque token of the stored version (Firestore: the update time). */
  readonly version: string;
}

export type CompareAndSetResult = { readonly ok: true; readonly version: string } | { readonly ok: false; readonly current: LeaseSnapshot | undefined };

/**
 * Where the lease lives. Implementations validate what they read and write
 * with leaseSchema, throw RetryableError when the store is unreachable and
 * PermanentError when it refuses for good (permissions).
 */
export interface LeaseStore {
  read(): Promise<LeaseSnapshot | undefined>;
  /**
   * Writes `next` only if the stored version is still `expectedVersion`
   * (null: only if no lease exists). A lost race is not an error: it returns
   * the current lease.
   */
  compareAndSet(expectedVersion: string | null, next: Lease): Promise<CompareAndSetResult>;
}

/** A LeaseStore in memory: for one process (local tools, tests of the runner). */
export class MemoryLeaseStore implements LeaseStore {
  #current: LeaseSnapshot | undefined;
  #counter = 0;

  async read(): Promise<LeaseSnapshot | undefined> {
    return this.#current && { lease: structuredClone(this.#current.lease), version: this.#current.version };
  }

  async compareAndSet(expectedVersion: string | null, next: Lease): Promise<CompareAndSetResult> {
    const lease = parseLease(next, 'lease to write');
    if ((this.#current?.version ?? null) !== expectedVersion) return { ok: false, current: await this.read() };
    this.#counter += 1;
    this.#current = { lease: structuredClone(lease), version: String(this.#counter) };
    return { ok: true, version: this.#current.version };
  }
}

// ---------------------------------------------------------------------------
// The client: the rules over the port

export type LeaseChange =
  | 'created'
  | 'renewed'
  | 're-acquired'
  | 'taken-over'
  | 'takeover-requested'
  | 'released'
  | 'handed-over'
  | 'unchanged';

export type LeaseOutcome =
  | { readonly ok: true; readonly change: LeaseChange; readonly lease: Lease; readonly version: string; readonly sentence: string }
  | { readonly ok: false; readonly change: 'refused' | 'lost-race'; readonly current: LeaseSnapshot | undefined; readonly sentence: string };

type Plan = { readonly next: Lease; readonly change: LeaseChange; readonly sentence: string } | { readonly refuse: string } | { readonly unchanged: string };

export interface LeaseClientOptions {
  readonly store: LeaseStore;
  readonly timing: LeaseTiming;
  /** ms since the Unix epoch; read before each write so renewedAt never claims more than was confirmed. */
  readonly clock?: () => number;
  /** Compare-and-set attempts before giving up on a busy lease (default 3). */
  readonly maxAttempts?: number;
}

export class LeaseClient {
  readonly #store: LeaseStore;
  readonly #timing: LeaseTiming;
  readonly #clock: () => number;
  readonly #maxAttempts: number;

  constructor(opts: LeaseClientOptions) {
    this.#store = opts.store;
    this.#timing = opts.timing;
    this.#clock = opts.clock ?? Date.now;
    this.#maxAttempts = opts.maxAttempts ?? 3;
  }

  read(): Promise<LeaseSnapshot | undefined> {
    return this.#store.read();
  }

  /** Creates the lease if there is none, renews it if `who` holds it, re-acquires it (epoch + 1) if it lapsed or `who` released it. */
  acquireOrRenew(who: Side): Promise<LeaseOutcome> {
    return this.#change((snap, now) => {
      if (snap === undefined) {
        const reason = `${who} created the lease at epoch 1`;
        return { next: createLease(who, now, this.#timing, reason), change: 'created', sentence: reason };
      }
      const { lease } = snap;
      const renewable = canRenew(lease, who, now, this.#timing);
      if (renewable.allowed) {
        const next = renew(lease, who, now, this.#timing);
        const request = next.takeoverRequestedBy !== null ? `; ${next.takeoverRequestedBy} requests a takeover (${next.takeoverReason ?? 'no reason given'})` : '';
        return { next, change: 'renewed', sentence: `${who} renewed the lease at epoch ${lease.epoch} until ${iso(next.leaseExpiresAt)}${request}` };
      }
      if (lease.holder === who) {
        const takeable = canTakeOver(lease, who, now, this.#timing);
        if (!takeable.allowed) return { refuse: takeable.reason };
        const reason = `${who} re-acquired the lease at epoch ${lease.epoch + 1} because ${takeable.reason}`;
        return { next: takeOver(lease, who, now, this.#timing, reason), change: 're-acquired', sentence: reason };
      }
      return { refuse: `${who} does not hold the lease: ${lease.holder} holds it at epoch ${lease.epoch}` };
    });
  }

  /**
   * Takes the lease for `who` (epoch + 1) when the rules allow it. With
   * `expectedEpoch`, refuses if the lease moved on from the epoch the caller
   * decided on, so a decision never acts on a lease it did not see.
   */
  tryTakeOver(who: Side, because: string, opts: { readonly expectedEpoch?: number } = {}): Promise<LeaseOutcome> {
    return this.#change((snap, now) => {
      if (snap === undefined) return { refuse: `${who} cannot take over: no lease exists yet (no side has ever held it)` };
      const { lease } = snap;
      if (opts.expectedEpoch !== undefined && lease.epoch !== opts.expectedEpoch) {
        return { refuse: `${who} did not take over: the lease is at epoch ${lease.epoch} (held by ${lease.holder}), not at epoch ${opts.expectedEpoch} as decided` };
      }
      const v = canTakeOver(lease, who, now, this.#timing);
      if (!v.allowed) return { refuse: v.reason };
      const reason = `${who} took over the lease at epoch ${lease.epoch + 1} because ${because}, and ${v.reason}`;
      return { next: takeOver(lease, who, now, this.#timing, reason), change: 'taken-over', sentence: reason };
    });
  }

  /** Asks the holder for a graceful handover (no change of holder or epoch). */
  requestTakeover(who: Side, because: string): Promise<LeaseOutcome> {
    return this.#change((snap, now) => {
      if (snap === undefined) return { refuse: `${who} cannot request a takeover: no lease exists yet` };
      const { lease } = snap;
      if (lease.holder === who) return { refuse: `${who} cannot request a takeover: it holds the lease at epoch ${lease.epoch}` };
      if (lease.releasedAt !== null) return { unchanged: `${lease.holder} already released the lease at epoch ${lease.epoch} (marker ${lease.markerLsn})` };
      if (lease.takeoverRequestedBy === who) return { unchanged: `${who} already requested a takeover at ${iso(lease.takeoverRequestedAt ?? 0)}` };
      return {
        next: requestTakeover(lease, who, now, because),
        change: 'takeover-requested',
        sentence: `${who} asked ${lease.holder} to hand over the lease at epoch ${lease.epoch} because ${because}`,
      };
    });
  }

  /** The holder hands over after fencing itself and publishing the marker at `markerLsn`. */
  release(who: Side, markerLsn: string): Promise<LeaseOutcome> {
    return this.#change((snap, now) => {
      if (snap === undefined) return { refuse: `${who} cannot release: no lease exists` };
      const { lease } = snap;
      if (lease.holder !== who) return { refuse: `${who} cannot release the lease: ${lease.holder} holds it at epoch ${lease.epoch}` };
      if (lease.releasedAt !== null) return { unchanged: `${who} already released the lease at epoch ${lease.epoch} (marker ${lease.markerLsn})` };
      return {
        next: release(lease, who, now, markerLsn),
        change: 'released',
        sentence: `${who} released the lease at epoch ${lease.epoch} after fencing itself; its last batch is the marker at ${markerLsn}`,
      };
    });
  }

  /** Failback: `from` (fenced) gives the lease to `to` at epoch + 1. */
  handOver(from: Side, to: Side, because: string, opts: { readonly expectedEpoch?: number } = {}): Promise<LeaseOutcome> {
    return this.#change((snap, now) => {
      if (snap === undefined) return { refuse: `${from} cannot hand over: no lease exists` };
      const { lease } = snap;
      if (lease.holder !== from) return { refuse: `${from} cannot hand the lease over: ${lease.holder} holds it at epoch ${lease.epoch}` };
      if (opts.expectedEpoch !== undefined && lease.epoch !== opts.expectedEpoch) {
        return { refuse: `${from} did not hand over: the lease is at epoch ${lease.epoch}, not at epoch ${opts.expectedEpoch} as decided` };
      }
      const reason = `${from} handed the lease to ${to} at epoch ${lease.epoch + 1} because ${because}`;
      return { next: handOver(lease, from, to, now, this.#timing, reason), change: 'handed-over', sentence: reason };
    });
  }

  async #change(plan: (snap: LeaseSnapshot | undefined, now: number) => Plan): Promise<LeaseOutcome> {
    let snap = await this.#store.read();
    for (let attempt = 1; ; attempt++) {
      const p = plan(snap, this.#clock());
      if ('refuse' in p) return { ok: false, change: 'refused', current: snap, sentence: p.refuse };
      if ('unchanged' in p) {
        // Only reached with a snapshot: every plan refuses when there is none.
        if (snap === undefined) return { ok: false, change: 'refused', current: snap, sentence: p.unchanged };
        return { ok: true, change: 'unchanged', lease: snap.lease, version: snap.version, sentence: p.unchanged };
      }
      const r = await this.#store.compareAndSet(snap?.version ?? null, p.next);
      if (r.ok) return { ok: true, change: p.change, lease: p.next, version: r.version, sentence: p.sentence };
      snap = r.current;
      if (attempt >= this.#maxAttempts) {
        const now = snap ? `; it is now held by ${snap.lease.holder} at epoch ${snap.lease.epoch}` : '; it no longer exists';
        return { ok: false, change: 'lost-race', current: snap, sentence: `gave up after losing the compare-and-set ${attempt} times in a row${now}` };
      }
    }
  }
}
