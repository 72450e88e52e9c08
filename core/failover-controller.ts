// The failover decision core: a pure function from (state, observations, now)
// to one step, the sentence that explains it, and the state to keep if the
// step succeeds. The runner (probe function, `lifeboat failover`) gathers the
// observations, executes exactly one step per cycle, records the decision in
// the audit trail, and stores `next` only when the step succeeded; a failed
// step comes back as `lastStepError` in the next cycle's observations.
//
//                  probe failed                    failures >= threshold, or
//   +--------+ ------------------> +---------+     operator failover; hook allows;
//   | normal |                     | suspect | --- lease readable and held by local
//   +--------+ <------------------ +---------+          |
//     ^    ^    probe ok / hook veto                     |  agent alive: request-graceful-takeover
//     |    |                                             |  agent silent: wait for lease expiry + margin
//     |    |  app answers before expiry                  v
//     |    +---------------------------------- +--------------+
//     |       (hard, nothing changed yet)       | failing-over |  promote-cloud (lease: cloud, epoch + 1)
//     |                                         +--------------+  write-epoch-to-target, set-sequences,
//     |                                                |          make-cloud-writable, scale-cloud-run 1,
//     |                                                |          switch-traffic-to-cloud, record-event
//     |                                                v
//     |                                         +-------------+
//     |             verify differs / hook veto  | failed-over |  cloud serves at epoch E
//     |          +----------------------------> +-------------+
//     |          |                                     |  operator failback, or failback=auto,
//     |          |                                     |  and local healthy: save-stranded-tail
//     |          |                                     v
//     |          |                              +------------+   start-reverse-sync, wait until
//     |          +----------------------------- | recovering |   caught up, verify, hook (demote),
//     |                                         +------------+   fence-cloud (target epoch E + 1)
//     |                                                |
//     |  record-event                                  v
//     |  (local serves at E + 1)                +--------------+  wait-for-drain, resume-forward-streaming
//     +---------------------------------------- | failing-back |  (new slot), hand-lease-to-local (lease:
//                                               +--------------+  local, E + 1), switch-traffic-to-local,
//                                                                 scale-cloud-run 0
//
//   Any state --(lease epoch went backwards, lease moved under a step,
//   permanent step error)--> halted --(operator resume)--> the state it left.
//
// Fails closed: an unexpected error, malformed or contradictory observations,
// an unreachable lease store or clocks further apart than the margin give
// `none` (or `halt`), never a promotion, a fence or a traffic change. Every
// step that changes the cloud's role is decided only on a lease read in the
// same cycle that shows the expected holder and epoch, and the runner's
// lease steps compare-and-set against that epoch (LeaseClient's
// expectedEpoch), so a decision never acts on a lease it did not see.
//
// This module is pure: no I/O, no cloud SDK.

import { z } from 'zod';
import { describeError } from './errors.ts';
import { formatLsn, parseLsn } from './lsn.ts';
import { hasLapsed, iso, leaseSchema, takeoverAllowedAfter, type Lease, type LeaseTiming } from './writer-lease.ts';

// ---------------------------------------------------------------------------
// Settings: the typed subset of LifeboatConfig the decisions need

export interface ControllerSettings extends LeaseTiming {
  readonly probe: {
    readonly failureThreshold: number;
    readonly recheckIntervalSeconds: number;
    readonly heartbeatStaleSeconds: number;
  };
  readonly failover: {
    readonly auto: boolean;
    readonly failback: 'manual' | 'auto';
    readonly drainTimeoutSeconds: number;
    /** Only whether it is set matters here. */
    readonly hookUrl?: string | undefined;
  };
}

// ---------------------------------------------------------------------------
// State

const ms = z.number().int().nonnegative();
const epochNumber = z.number().int().min(1);
const knownEpoch = z.number().int().nonnegative();

export const FAILOVER_STEPS = [
  'awaiting-handover',
  'awaiting-expiry',
  'write-epoch-to-target',
  'set-sequences',
  'make-cloud-writable',
  'scale-cloud-run',
  'switch-traffic-to-cloud',
  'record-event',
] as const;
export const RECOVERY_STEPS = ['start-reverse-sync', 'catching-up', 'awaiting-verify', 'awaiting-hook'] as const;
// Forward streaming is prepared (new slot, watermark rebased) BEFORE local gets the lease: once it holds
// the lease the agent lifts the fence and local takes writes, which must all be captured.
export const FAILBACK_STEPS = ['drain', 'hand-lease', 'switch-traffic-to-local', 'scale-cloud-run', 'record-event'] as const;

const normalState = z.strictObject({ phase: z.literal('normal'), knownEpoch });
const suspectState = z.strictObject({
  phase: z.literal('suspect'),
  knownEpoch,
  /** Consecutive failed probes (0 when the operator asked for the failover). */
  failures: z.number().int().nonnegative(),
  firstFailureAt: ms,
  lastProblem: z.string(),
  trigger: z.enum(['probes', 'operator']),
  hookAskedAt: ms.nullable(),
});
const failingOverState = z.strictObject({
  phase: z.literal('failing-over'),
  knownEpoch,
  mode: z.enum(['graceful', 'hard']),
  /** Why, as the end of "promoted cloud at epoch 7 because …": "3 probes failed". */
  because: z.string(),
  startedAt: ms,
  step: z.enum(FAILOVER_STEPS),
  /** The epoch the cloud took, once promoted. */
  epoch: epochNumber.nullable(),
  trigger: z.enum(['probes', 'operator']),
  /** A graceful takeover was requested (the agent may be fencing): no cancelling any more. */
  requested: z.boolean(),
});
const failedOverState = z.strictObject({
  phase: z.literal('failed-over'),
  knownEpoch,
  epoch: epochNumber,
  since: ms,
  failbackRequested: z.boolean(),
  /** Why automatic failback stopped (verify mismatch, hook veto); cleared by `lifeboat failback`. */
  failbackBlocked: z.string().nullable(),
});
const recoveringState = z.strictObject({
  phase: z.literal('recovering'),
  knownEpoch,
  epoch: epochNumber,
  step: z.enum(RECOVERY_STEPS),
  /** Since when the cloud serves (kept for failed-over if failback stops). */
  since: ms,
  because: z.string(),
});
const failingBackState = z.strictObject({
  phase: z.literal('failing-back'),
  knownEpoch,
  /** The cloud's epoch; local gets epoch + 1. */
  epoch: epochNumber,
  step: z.enum(FAILBACK_STEPS),
  startedAt: ms,
});

const activeState = z.discriminatedUnion('phase', [normalState, suspectState, failingOverState, failedOverState, recoveringState, failingBackState]);
const haltedState = z.strictObject({
  phase: z.literal('halted'),
  knownEpoch,
  reason: z.string(),
  since: ms,
  previous: activeState,
});

export const controllerStateSchema = z.discriminatedUnion('phase', [
  normalState,
  suspectState,
  failingOverState,
  failedOverState,
  recoveringState,
  failingBackState,
  haltedState,
]);

export type ControllerState = z.output<typeof controllerStateSchema>;
export type ActiveState = z.output<typeof activeState>;
export type Phase = ControllerState['phase'];

/** Where a controller starts: local serves; no epoch seen yet. */
export const INITIAL_STATE: ActiveState = { phase: 'normal', knownEpoch: 0 };

// ---------------------------------------------------------------------------
// Observations

const probeResult = z.strictObject({
  outcome: z.enum(['ok', 'failed', 'timeout']),
  latencyMs: z.number().nonnegative(),
  /** e.g. 'HTTP 503', 'connection refused'. */
  detail: z.string().optional(),
});

const leaseObservation = z.discriminatedUnion('reachable', [
  z.strictObject({
    reachable: z.literal(true),
    snapshot: z.strictObject({ lease: leaseSchema, version: z.string() }).nullable(),
  }),
  z.strictObject({ reachable: z.literal(false), error: z.string() }),
]);

export const OPERATOR_COMMANDS = ['failover', 'failback', 'resume'] as const;

export const observationsSchema = z.strictObject({
  /** This cycle's check of the app's health URL; absent when none was made. */
  probe: probeResult.optional(),
  /** When the last heartbeat batch of the agent was applied (controller clock), or null if never. */
  agentHeartbeatAt: ms.nullable().optional(),
  /** The lease, read in this cycle. */
  lease: leaseObservation,
  /** The applied watermark on the cloud target, when it could be read. */
  appliedLsn: z.bigint().min(0n).optional(),
  operator: z.enum(OPERATOR_COMMANDS).optional(),
  /** The policy webhook's answer, when one was asked for. */
  hook: z.strictObject({ phase: z.enum(['promote', 'demote']), allowed: z.boolean(), detail: z.string() }).optional(),
  /** The local side, for failback: reachable and healthy, and whether reverse sync has caught up. */
  localHealth: z.strictObject({ healthy: z.boolean(), caughtUp: z.boolean(), detail: z.string() }).optional(),
  /** Per-table row counts and checksums, when a verify ran. */
  verify: z.strictObject({ equal: z.boolean(), detail: z.string() }).optional(),
  /** The previous cycle's step failed (its `next` was not stored). */
  lastStepError: z.strictObject({ action: z.string(), message: z.string(), permanent: z.boolean() }).optional(),
});

export type Observations = z.input<typeof observationsSchema>;
export type ProbeResult = z.output<typeof probeResult>;

// ---------------------------------------------------------------------------
// Decisions

export type Action =
  | { readonly kind: 'none' }
  | { readonly kind: 'record-probe' }
  | { readonly kind: 'call-hook'; readonly phase: 'promote' | 'demote' }
  | { readonly kind: 'request-graceful-takeover'; readonly epoch: number }
  | { readonly kind: 'wait-for-marker'; readonly markerLsn: string | null }
  | { readonly kind: 'promote-cloud'; readonly epoch: number; readonly fromEpoch: number }
  | { readonly kind: 'write-epoch-to-target'; readonly epoch: number }
  | { readonly kind: 'set-sequences'; readonly epoch: number }
  | { readonly kind: 'make-cloud-writable'; readonly epoch: number }
  | { readonly kind: 'scale-cloud-run'; readonly minInstances: 0 | 1 }
  | { readonly kind: 'switch-traffic-to-cloud'; readonly epoch: number }
  | { readonly kind: 'record-event'; readonly event: 'failover' | 'failback'; readonly epoch: number }
  | { readonly kind: 'save-stranded-tail'; readonly epoch: number }
  | { readonly kind: 'start-reverse-sync'; readonly epoch: number }
  | { readonly kind: 'verify' }
  | { readonly kind: 'fence-cloud'; readonly epoch: number }
  | { readonly kind: 'wait-for-drain' }
  | { readonly kind: 'hand-lease-to-local'; readonly epoch: number; readonly fromEpoch: number }
  | { readonly kind: 'switch-traffic-to-local'; readonly epoch: number }
  | { readonly kind: 'resume-forward-streaming'; readonly epoch: number }
  | { readonly kind: 'halt' };

export type ActionKind = Action['kind'];

/** Steps that change nothing outside the controller's own records: the only ones taken without a readable lease. */
export const PASSIVE_ACTIONS: ReadonlySet<ActionKind> = new Set(['none', 'record-probe', 'wait-for-marker', 'wait-for-drain', 'halt']);

export interface Decision {
  readonly action: Action;
  /** A full sentence, logged every cycle and stored in the audit trail. */
  readonly reason: string;
  /** The state to store if the action succeeds. */
  readonly next: ControllerState;
  /** Probe again this soon (ms) rather than at the next scheduled run. */
  readonly recheckInMs?: number;
}

// ---------------------------------------------------------------------------
// decide

/**
 * One cycle's decision. Total: it never throws; whatever goes wrong inside
 * becomes `none` with the reason, and the state is kept.
 */
export function decide(state: ControllerState, observations: Observations, now: number, settings: ControllerSettings): Decision {
  const parsedState = controllerStateSchema.safeParse(state);
  if (!parsedState.success) {
    const problems = parsedState.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    return {
      action: { kind: 'halt' },
      reason: `halted, failing closed: the stored controller state is malformed (${problems}); no promotion and no traffic change until an operator resets it`,
      next: { phase: 'halted', knownEpoch: 0, reason: 'malformed controller state', since: safeNow(now), previous: INITIAL_STATE },
    };
  }
  const st = parsedState.data;
  const parsedObs = observationsSchema.safeParse(observations);
  if (!parsedObs.success) {
    const problems = parsedObs.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    return { action: { kind: 'none' }, reason: `did nothing, failing closed: the observations are malformed (${problems}); no promotion and no traffic change`, next: st };
  }
  if (!Number.isSafeInteger(now) || now < 0) {
    return { action: { kind: 'none' }, reason: `did nothing, failing closed: the clock reading ${String(now)} is not a time; no promotion and no traffic change`, next: st };
  }
  try {
    return new Cycle(st, parsedObs.data, now, settings).decide();
  } catch (err) {
    return {
      action: { kind: 'none' },
      reason: `did nothing, failing closed: an unexpected error occurred while deciding (${describeError(err)}); no promotion and no traffic change`,
      next: st,
    };
  }
}

function safeNow(now: number): number {
  return Number.isSafeInteger(now) && now >= 0 ? now : 0;
}

type Obs = z.output<typeof observationsSchema>;

const secs = (msValue: number) => `${+(msValue / 1000).toFixed(3)} s`;

function describeProbe(p: ProbeResult): string {
  const detail = p.detail ? ` (${p.detail})` : '';
  switch (p.outcome) {
    case 'ok':
      return `answered in ${Math.round(p.latencyMs)} ms`;
    case 'failed':
      return `failed after ${Math.round(p.latencyMs)} ms${detail}`;
    case 'timeout':
      return `timed out after ${Math.round(p.latencyMs)} ms${detail}`;
  }
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

class Cycle {
  readonly #marginMs: number;
  readonly #drainMs: number;
  readonly #lease: Lease | undefined;
  readonly #known: number;

  constructor(
    readonly st: ControllerState,
    readonly obs: Obs,
    readonly now: number,
    readonly settings: ControllerSettings,
  ) {
    this.#marginMs = settings.lease.clockSkewMarginSeconds * 1000;
    this.#drainMs = settings.failover.drainTimeoutSeconds * 1000;
    this.#lease = obs.lease.reachable ? (obs.lease.snapshot?.lease ?? undefined) : undefined;
    this.#known = Math.max(st.knownEpoch, this.#lease?.epoch ?? 0);
  }

  decide(): Decision {
    const { st, obs } = this;
    if (obs.lastStepError?.permanent) {
      return this.halt(`step ${obs.lastStepError.action} failed permanently: ${obs.lastStepError.message}`);
    }
    if (st.phase === 'halted') return this.halted(st);

    // Guards that hold in every phase: epochs never go backwards and the lease never vanishes.
    if (obs.lease.reachable) {
      const lease = this.#lease;
      if (lease === undefined && st.knownEpoch > 0) {
        return this.halt(`the lease document disappeared after epoch ${st.knownEpoch} had been seen; epochs must never restart, so nothing more is done`);
      }
      if (lease !== undefined && lease.epoch < st.knownEpoch) {
        return this.halt(`the lease epoch went backwards from ${st.knownEpoch} to ${lease.epoch} (held by ${lease.holder}); epochs must only grow, so nothing more is done`);
      }
    }

    let decision = this.byPhase(st);
    const failed = obs.lastStepError;
    if (failed && failed.action === decision.action.kind) {
      decision = { ...decision, reason: `${decision.reason} (retrying: the last attempt failed: ${failed.message})` };
    }
    const cmd = obs.operator;
    const applies = cmd === 'failover' ? st.phase === 'normal' || st.phase === 'suspect' : cmd === 'failback' ? st.phase === 'failed-over' : false;
    if (cmd !== undefined && !applies) {
      // Nothing is dropped silently: a command that does not fit the phase is named in the reason.
      decision = { ...decision, reason: `${decision.reason}; the operator's ${cmd} request was ignored: it does not apply while ${st.phase}` };
    }
    return decision;
  }

  byPhase(st: ActiveState): Decision {
    switch (st.phase) {
      case 'normal':
      case 'suspect':
        return this.watching(st);
      case 'failing-over':
        return this.failingOver(st);
      case 'failed-over':
        return this.failedOver(st);
      case 'recovering':
        return this.recovering(st);
      case 'failing-back':
        return this.failingBack(st);
    }
  }

  // -- helpers ---------------------------------------------------------------

  get knownEpoch(): number {
    return this.#known;
  }

  decision(action: Action, reason: string, next: ControllerState, recheckInMs?: number): Decision {
    const withEpoch = { ...next, knownEpoch: Math.max(next.knownEpoch, this.#known) } as ControllerState;
    return recheckInMs === undefined ? { action, reason, next: withEpoch } : { action, reason, next: withEpoch, recheckInMs };
  }

  none(reason: string, next: ControllerState = this.st): Decision {
    return this.decision({ kind: 'none' }, reason, next);
  }

  halt(why: string): Decision {
    const st = this.st;
    const previous: ActiveState = st.phase === 'halted' ? st.previous : st;
    return this.decision(
      { kind: 'halt' },
      `halted: ${why}; run \`lifeboat status\` to inspect, then \`lifeboat resume\``,
      { phase: 'halted', knownEpoch: st.knownEpoch, reason: why, since: this.now, previous },
    );
  }

  halted(st: Extract<ControllerState, { phase: 'halted' }>): Decision {
    if (this.obs.operator === 'resume') {
      // Timers restart: a wait that timed out into the halt gets its full time again.
      const prev = st.previous;
      const restarted: ActiveState =
        prev.phase === 'failing-over' ? { ...prev, startedAt: this.now } : prev.phase === 'failing-back' ? { ...prev, startedAt: this.now } : prev;
      return this.none(`resumed by the operator after a halt (${st.reason}); back to ${prev.phase}`, { ...restarted, knownEpoch: st.knownEpoch });
    }
    return this.none(`halted since ${iso(st.since)}: ${st.reason}; waiting for the operator (\`lifeboat resume\`)`);
  }

  unreachable(): string | undefined {
    return this.obs.lease.reachable ? undefined : this.obs.lease.error;
  }

  /** A local lease renewed further ahead of our clock than the margin: the skew assumption is broken. */
  skewProblem(lease: Lease): string | undefined {
    if (lease.holder !== 'local' || lease.releasedAt !== null) return undefined;
    const ahead = lease.renewedAt - this.now;
    if (ahead <= this.#marginMs) return undefined;
    return `the lease was renewed at ${iso(lease.renewedAt)}, ${secs(ahead)} ahead of this clock: clock skew exceeds the ${secs(this.#marginMs)} margin, so taking the lease is refused until the clocks agree`;
  }

  heartbeatAge(): number | undefined {
    const at = this.obs.agentHeartbeatAt;
    return at === undefined || at === null ? undefined : Math.max(0, this.now - at);
  }

  agentAlive(lease: Lease): boolean {
    const age = this.heartbeatAge();
    return age !== undefined && age <= this.settings.probe.heartbeatStaleSeconds * 1000 && !hasLapsed(lease, this.now, this.settings) && lease.releasedAt === null;
  }

  describeHeartbeat(): string {
    const age = this.heartbeatAge();
    return age === undefined ? 'no heartbeat of the agent was ever applied' : `the agent's last heartbeat is ${secs(age)} old`;
  }

  // -- normal and suspect ----------------------------------------------------

  watching(st: Extract<ActiveState, { phase: 'normal' | 'suspect' }>): Decision {
    const { obs, now, settings } = this;
    const lease = this.#lease;
    if (lease?.holder === 'cloud') {
      return this.halt(`the lease is held by cloud at epoch ${lease.epoch}, but this controller never promoted the cloud (it is ${st.phase})`);
    }
    const threshold = settings.probe.failureThreshold;
    const recheck = settings.probe.recheckIntervalSeconds * 1000;
    const operatorFailover = obs.operator === 'failover' || (st.phase === 'suspect' && st.trigger === 'operator');
    let failures = st.phase === 'suspect' ? st.failures : 0;
    let lastProblem = st.phase === 'suspect' ? st.lastProblem : '';
    const probe = obs.probe;
    const serving = lease ? `local serves at epoch ${lease.epoch}` : 'local serves';

    if (!operatorFailover) {
      if (probe === undefined) {
        if (st.phase === 'normal') return this.none(`no probe result this cycle; ${serving}`);
        if (st.failures < threshold) return this.none(`no probe result this cycle; ${plural(st.failures, 'probe')} of ${threshold} failed so far`, st);
      } else if (probe.outcome === 'ok') {
        if (st.phase === 'normal') return this.decision({ kind: 'record-probe' }, `the app ${describeProbe(probe)}; ${serving}`, { phase: 'normal', knownEpoch: st.knownEpoch });
        return this.decision(
          { kind: 'record-probe' },
          `the app ${describeProbe(probe)} after ${plural(st.failures, 'failed probe')}; back to normal`,
          { phase: 'normal', knownEpoch: st.knownEpoch },
        );
      } else {
        // Capped: with failover.auto off a long outage must not grow the count (or the sentence) forever.
        failures = Math.min(failures + 1, threshold);
        lastProblem = `the app ${describeProbe(probe)}`;
      }
    }
    const firstFailureAt = st.phase === 'suspect' ? st.firstFailureAt : now;
    const suspect = {
      phase: 'suspect' as const,
      knownEpoch: st.knownEpoch,
      failures,
      firstFailureAt,
      lastProblem,
      trigger: operatorFailover ? ('operator' as const) : ('probes' as const),
      hookAskedAt: st.phase === 'suspect' ? st.hookAskedAt : null,
    };
    if (!operatorFailover && failures < threshold) {
      return this.decision(
        { kind: 'record-probe' },
        `${failures} of ${threshold} probes failed in a row: ${lastProblem}; checking again in ${secs(recheck)}`,
        suspect,
        recheck,
      );
    }

    // Outage confirmed, or the operator asked.
    const because = operatorFailover ? 'the operator requested a failover' : `${failures} probes failed`;
    const why = operatorFailover ? 'the operator requested a failover' : `${failures} probes failed in a row (last: ${lastProblem})`;
    if (!operatorFailover && !settings.failover.auto) {
      return this.none(`${why}, but failover.auto is off: run \`lifeboat failover\` to fail over`, suspect);
    }
    const unreachable = this.unreachable();
    if (unreachable !== undefined) {
      return this.none(`${why}, but the lease store is unreachable (${unreachable}), so nothing is promoted: failover never acts without reading the lease`, suspect);
    }
    if (lease === undefined) {
      return this.none(`${why}, but no lease exists: the agent has never held it, so there is nothing to fail over from`, suspect);
    }
    const skew = this.skewProblem(lease);
    if (skew !== undefined) return this.none(`${why}, but ${skew}`, suspect);

    if (settings.failover.hookUrl) {
      const hook = obs.hook?.phase === 'promote' ? obs.hook : undefined;
      if (suspect.hookAskedAt === null || hook === undefined) {
        return this.decision({ kind: 'call-hook', phase: 'promote' }, `${why}; asking the policy hook before failing over`, { ...suspect, hookAskedAt: now });
      }
      if (!hook.allowed) {
        return this.none(`the policy hook vetoed the failover (${hook.detail}); ${serving}, and probes are counted again`, {
          phase: 'normal',
          knownEpoch: st.knownEpoch,
        });
      }
    }
    return this.startFailover(lease, because, why, suspect.trigger);
  }

  startFailover(lease: Lease, because: string, why: string, trigger: 'probes' | 'operator'): Decision {
    const now = this.now;
    const base = {
      phase: 'failing-over' as const,
      knownEpoch: this.#known,
      because,
      startedAt: now,
      epoch: null,
      trigger,
    };
    if (lease.releasedAt !== null) {
      // The agent already handed over (e.g. it shut down cleanly): wait for its marker.
      return this.failingOver({ ...base, mode: 'graceful', step: 'awaiting-handover', requested: false });
    }
    if (hasLapsed(lease, now, this.settings)) {
      return this.promote(lease, { ...base, mode: 'hard', step: 'awaiting-expiry', requested: false }, `${because} and the lease expired at ${iso(lease.leaseExpiresAt)}`);
    }
    if (this.agentAlive(lease)) {
      return this.decision(
        { kind: 'request-graceful-takeover', epoch: lease.epoch },
        `requested a graceful takeover from local at epoch ${lease.epoch} because ${why} while the agent is alive (${this.describeHeartbeat()})`,
        { ...base, mode: 'graceful', step: 'awaiting-handover', requested: true },
      );
    }
    return this.none(
      `${why} and the agent is silent (${this.describeHeartbeat()}); waiting for the lease held by local at epoch ${lease.epoch} to expire at ${iso(lease.leaseExpiresAt)} plus the ${secs(this.#marginMs)} margin (${secs(takeoverAllowedAfter(lease, this.settings) - now)} from now)`,
      { ...base, mode: 'hard', step: 'awaiting-expiry', requested: false },
    );
  }

  promote(lease: Lease, st: Extract<ActiveState, { phase: 'failing-over' }>, becauseAnd: string): Decision {
    const epoch = lease.epoch + 1;
    return this.decision(
      { kind: 'promote-cloud', epoch, fromEpoch: lease.epoch },
      `promoted cloud at epoch ${epoch} because ${becauseAnd}`,
      { ...st, epoch, step: 'write-epoch-to-target', knownEpoch: Math.max(this.#known, epoch) },
    );
  }

  // -- failing over ----------------------------------------------------------

  failingOver(st: Extract<ActiveState, { phase: 'failing-over' }>): Decision {
    const { now, obs } = this;
    const unreachable = this.unreachable();
    if (unreachable !== undefined) {
      return this.none(`failing over (${st.step}): the lease store is unreachable (${unreachable}); nothing more is done until the lease can be read`, st);
    }
    const lease = this.#lease;
    if (lease === undefined) return this.halt('the lease document disappeared while failing over');

    if (st.epoch !== null) return this.promotionStep(st, st.epoch, lease);

    if (lease.holder === 'cloud') {
      // Exactly the epoch this failover was about to take: our compare-and-set went through but
      // its answer was lost, or a twin controller won; either way the cloud is the one writer, and
      // the remaining steps are idempotent.
      if (lease.epoch === st.knownEpoch + 1) {
        const adopted = { ...st, epoch: lease.epoch, step: 'write-epoch-to-target' as const };
        const d = this.promotionStep(adopted, lease.epoch, lease);
        return { ...d, reason: `the lease already shows cloud at epoch ${lease.epoch}, the epoch this failover was taking; continuing: ${d.reason}` };
      }
      return this.halt(`the lease was taken by cloud at epoch ${lease.epoch} by someone else while this controller was about to fail over`);
    }
    const skew = this.skewProblem(lease);
    if (skew !== undefined) return this.none(`failing over, but ${skew}`, st);

    if (lease.releasedAt !== null && lease.markerLsn !== null) {
      const marker = parseLsn(lease.markerLsn);
      const applied = obs.appliedLsn;
      const graceful = { ...st, mode: 'graceful' as const };
      if (applied !== undefined && applied >= marker) {
        return this.promote(lease, graceful, `${st.because} and local handed over at marker ${lease.markerLsn}, which the cloud has applied (no acknowledged change is lost)`);
      }
      // Counted from the handover (the local clock's releasedAt, never later than our now).
      const waited = now - Math.max(st.startedAt, Math.min(lease.releasedAt, now));
      if (applied === undefined) {
        return this.decision(
          { kind: 'wait-for-marker', markerLsn: lease.markerLsn },
          `waiting for local's marker ${lease.markerLsn} to be applied, but the applied watermark cannot be read; the cloud is not promoted before it knows what it has`,
          graceful,
        );
      }
      if (waited > this.#drainMs) {
        return this.promote(
          lease,
          graceful,
          `${st.because} and local handed over at marker ${lease.markerLsn}, but the applied watermark ${formatLsn(applied)} did not reach it within the ${secs(this.#drainMs)} drain timeout; batches after ${formatLsn(applied)} carry the old epoch and go to the stranded-tail report`,
        );
      }
      return this.decision(
        { kind: 'wait-for-marker', markerLsn: lease.markerLsn },
        `waiting for the applied watermark ${formatLsn(applied)} to reach local's marker ${lease.markerLsn} (handed over ${secs(waited)} ago, drain timeout ${secs(this.#drainMs)})`,
        graceful,
      );
    }

    if (hasLapsed(lease, now, this.settings)) {
      const silent = st.mode === 'graceful' || st.requested ? '; the agent never handed over' : '';
      return this.promote(lease, st, `${st.because} and the lease expired at ${iso(lease.leaseExpiresAt)}${silent}`);
    }

    const waitExpiry = `the lease held by local at epoch ${lease.epoch} to expire at ${iso(lease.leaseExpiresAt)} plus the ${secs(this.#marginMs)} margin (${secs(takeoverAllowedAfter(lease, this.settings) - now)} from now)`;
    if (st.mode === 'graceful') {
      const waited = now - st.startedAt;
      if (waited > this.#drainMs) {
        return this.none(`local did not hand over within the ${secs(this.#drainMs)} drain timeout after the takeover request; waiting for ${waitExpiry}`, {
          ...st,
          mode: 'hard',
          step: 'awaiting-expiry',
        });
      }
      if (lease.takeoverRequestedBy !== 'cloud') {
        return this.decision(
          { kind: 'request-graceful-takeover', epoch: lease.epoch },
          `requested a graceful takeover from local at epoch ${lease.epoch} again: the request is no longer on the lease`,
          { ...st, requested: true },
        );
      }
      return this.decision(
        { kind: 'wait-for-marker', markerLsn: null },
        `waiting for local to fence itself, publish its marker and hand over the lease at epoch ${lease.epoch} (requested ${secs(waited)} ago)`,
        st,
      );
    }
    const probe = obs.probe;
    if (probe?.outcome === 'ok' && !st.requested && st.trigger === 'probes') {
      return this.none(`the app ${describeProbe(probe)} before the lease expired; failover cancelled, nothing was changed`, {
        phase: 'normal',
        knownEpoch: this.#known,
      });
    }
    return this.none(`waiting for ${waitExpiry}`, st);
  }

  promotionStep(st: Extract<ActiveState, { phase: 'failing-over' }>, epoch: number, lease: Lease): Decision {
    if (lease.holder !== 'cloud' || lease.epoch !== epoch) {
      return this.halt(
        `while failing over at epoch ${epoch} the lease moved to ${lease.holder} at epoch ${lease.epoch}; stopped before ${st.step}`,
      );
    }
    const at = (step: (typeof FAILOVER_STEPS)[number]) => ({ ...st, step });
    switch (st.step) {
      case 'awaiting-handover':
      case 'awaiting-expiry':
      case 'write-epoch-to-target':
        return this.decision(
          { kind: 'write-epoch-to-target', epoch },
          `wrote epoch ${epoch} into the target before making it writable, so it refuses batches of older epochs`,
          at('set-sequences'),
        );
      case 'set-sequences':
        return this.decision({ kind: 'set-sequences', epoch }, `set the target's sequences to the last shipped values plus the safety gap (epoch ${epoch})`, at('make-cloud-writable'));
      case 'make-cloud-writable':
        return this.decision({ kind: 'make-cloud-writable', epoch }, `made the cloud database writable for the app role at epoch ${epoch}`, at('scale-cloud-run'));
      case 'scale-cloud-run':
        return this.decision({ kind: 'scale-cloud-run', minInstances: 1 }, `set Cloud Run min instances to 1 so the app's cloud copy is warm (epoch ${epoch})`, at('switch-traffic-to-cloud'));
      case 'switch-traffic-to-cloud':
        return this.decision({ kind: 'switch-traffic-to-cloud', epoch }, `pointed traffic at the cloud (epoch ${epoch})`, at('record-event'));
      case 'record-event':
        return this.decision(
          { kind: 'record-event', event: 'failover', epoch },
          `recorded the failover to cloud at epoch ${epoch} (because ${st.because}) in the audit trail and on the events topic; the cloud serves`,
          { phase: 'failed-over', knownEpoch: this.#known, epoch, since: this.now, failbackRequested: false, failbackBlocked: null },
        );
    }
  }

  /** The lease must show the cloud holding `epoch`; otherwise the reason to stop. */
  cloudHolds(epoch: number, doing: string): Decision | undefined {
    const unreachable = this.unreachable();
    if (unreachable !== undefined) return this.none(`${doing}: the lease store is unreachable (${unreachable}); nothing is changed until the lease can be read`);
    const lease = this.#lease;
    if (lease === undefined) return this.halt(`the lease document disappeared while ${doing}`);
    if (lease.holder !== 'cloud' || lease.epoch !== epoch) {
      return this.halt(`the lease is held by ${lease.holder} at epoch ${lease.epoch}, but the cloud should hold it at epoch ${epoch} (${doing})`);
    }
    return undefined;
  }

  // -- failed over -----------------------------------------------------------

  failedOver(st: Extract<ActiveState, { phase: 'failed-over' }>): Decision {
    const { obs, settings } = this;
    const serving = `cloud serves at epoch ${st.epoch} since ${iso(st.since)}`;
    const stop = this.cloudHolds(st.epoch, serving);
    if (stop) return stop;
    const requested = st.failbackRequested || obs.operator === 'failback';
    const next = { ...st, failbackRequested: requested, failbackBlocked: obs.operator === 'failback' ? null : st.failbackBlocked };
    const auto = settings.failover.failback === 'auto' && next.failbackBlocked === null;
    if (!requested && !auto) {
      if (next.failbackBlocked !== null) return this.none(`${serving}; automatic failback stopped because ${next.failbackBlocked}; run \`lifeboat failback\` to try again`, next);
      return this.none(`${serving}; failback is manual: run \`lifeboat failback\` when local is ready`, next);
    }
    const health = obs.localHealth;
    if (!health?.healthy) {
      const detail = health ? health.detail : 'no report from the local side';
      return this.none(`${serving}; ${requested ? 'failback was requested, but it' : 'automatic failback'} waits for local to be healthy (${detail})`, next);
    }
    const because = requested ? 'the operator requested a failback' : 'failback is automatic and local is healthy';
    return this.decision(
      { kind: 'save-stranded-tail', epoch: st.epoch },
      `saved the stranded tail (local transactions after the cloud's applied watermark) to object storage and a report before reverse sync, because ${because}`,
      { phase: 'recovering', knownEpoch: this.#known, epoch: st.epoch, step: 'start-reverse-sync', since: st.since, because },
    );
  }

  // -- recovering ------------------------------------------------------------

  recovering(st: Extract<ActiveState, { phase: 'recovering' }>): Decision {
    const { obs, settings } = this;
    const stop = this.cloudHolds(st.epoch, `recovering (${st.step})`);
    if (stop) return stop;
    const at = (step: (typeof RECOVERY_STEPS)[number]) => ({ ...st, step });
    const blocked = (why: string) => ({
      phase: 'failed-over' as const,
      knownEpoch: this.#known,
      epoch: st.epoch,
      since: st.since,
      failbackRequested: false,
      failbackBlocked: why,
    });
    const fence = (why: string) =>
      this.decision(
        { kind: 'fence-cloud', epoch: st.epoch + 1 },
        `fenced the cloud: epoch ${st.epoch + 1} written into the target and the app role made read-only there, because ${why}`,
        { phase: 'failing-back', knownEpoch: this.#known, epoch: st.epoch, step: 'drain', startedAt: this.now },
      );
    switch (st.step) {
      case 'start-reverse-sync':
        return this.decision({ kind: 'start-reverse-sync', epoch: st.epoch }, `started reverse sync: the cloud's changes since epoch ${st.epoch} flow back to local`, at('catching-up'));
      case 'catching-up': {
        const h = obs.localHealth;
        if (h?.healthy && h.caughtUp) {
          return this.decision({ kind: 'verify' }, `local has caught up with the cloud (${h.detail}); verifying row counts and checksums`, at('awaiting-verify'));
        }
        return this.none(`reverse sync is catching up: ${h ? h.detail : 'no report from the local side'}`, st);
      }
      case 'awaiting-verify': {
        const v = obs.verify;
        if (v === undefined) return this.decision({ kind: 'verify' }, 'no verification result yet; verifying row counts and checksums again', st);
        if (!v.equal) {
          const why = `verification found differences (${v.detail})`;
          return this.none(`${why}; failback stopped before fencing the cloud, which keeps serving at epoch ${st.epoch}`, blocked(why));
        }
        if (settings.failover.hookUrl) {
          return this.decision({ kind: 'call-hook', phase: 'demote' }, `row counts and checksums match (${v.detail}); asking the policy hook before fencing the cloud`, at('awaiting-hook'));
        }
        return fence(`row counts and checksums match (${v.detail})`);
      }
      case 'awaiting-hook': {
        const hook = obs.hook?.phase === 'demote' ? obs.hook : undefined;
        if (hook === undefined) return this.decision({ kind: 'call-hook', phase: 'demote' }, 'no answer from the policy hook yet; asking it again before fencing the cloud', st);
        if (!hook.allowed) {
          const why = `the policy hook vetoed the failback (${hook.detail})`;
          return this.none(`${why}; the cloud keeps serving at epoch ${st.epoch}`, blocked(why));
        }
        return fence(`row counts and checksums match and the policy hook allowed the failback (${hook.detail})`);
      }
    }
  }

  // -- failing back ----------------------------------------------------------

  failingBack(st: Extract<ActiveState, { phase: 'failing-back' }>): Decision {
    const { obs, now } = this;
    const localEpoch = st.epoch + 1;
    const at = (step: (typeof FAILBACK_STEPS)[number]) => ({ ...st, step });
    if (st.step === 'drain' || st.step === 'hand-lease') {
      if (this.#lease?.holder === 'local' && this.#lease.epoch === localEpoch) {
        // The handover went through but its answer was lost (or a twin controller did it).
        const d = this.failingBack({ ...st, step: 'switch-traffic-to-local' });
        return { ...d, reason: `the lease already shows local at epoch ${localEpoch}, as this failback was handing it over; continuing: ${d.reason}` };
      }
      const stop = this.cloudHolds(st.epoch, `failing back (${st.step})`);
      if (stop) return stop;
      if (st.step === 'hand-lease') {
        return this.decision(
          { kind: 'hand-lease-to-local', epoch: localEpoch, fromEpoch: st.epoch },
          `handed the lease to local at epoch ${localEpoch}: the cloud is fenced, reverse sync has drained and forward streaming is prepared`,
          at('switch-traffic-to-local'),
        );
      }
      const h = obs.localHealth;
      if (h?.healthy && h.caughtUp) {
        return this.decision(
          { kind: 'resume-forward-streaming', epoch: localEpoch },
          `prepared forward streaming at epoch ${localEpoch} (a new replication slot on local, the target's watermark moved to its start) once reverse sync had drained (${h.detail})`,
          at('hand-lease'),
        );
      }
      const waited = now - st.startedAt;
      const detail = h ? h.detail : 'no report from the local side';
      if (waited > this.#drainMs) {
        return this.halt(
          `reverse sync did not drain within the ${secs(this.#drainMs)} drain timeout after the cloud was fenced (${detail}); the cloud stays read-only at epoch ${localEpoch} in the target, traffic still goes to it, and local does not get the lease`,
        );
      }
      return this.decision({ kind: 'wait-for-drain' }, `waiting for reverse sync to drain after fencing the cloud: ${detail} (${secs(waited)} of ${secs(this.#drainMs)})`, st);
    }

    const unreachable = this.unreachable();
    if (unreachable !== undefined) return this.none(`failing back (${st.step}): the lease store is unreachable (${unreachable}); nothing is changed until the lease can be read`);
    const lease = this.#lease;
    if (lease === undefined) return this.halt('the lease document disappeared while failing back');
    // The agent may have re-acquired with a newer epoch meanwhile; local holding it is what matters.
    if (lease.holder !== 'local' || lease.epoch < localEpoch) {
      return this.halt(`while failing back the lease is held by ${lease.holder} at epoch ${lease.epoch}, but local should hold it at epoch ${localEpoch} or later; stopped before ${st.step}`);
    }
    switch (st.step) {
      case 'switch-traffic-to-local':
        // The handover wrote renewedAt = acquiredAt; the agent's first renewal changes it, and the agent lifts
        // the local fence right after it. Until then local refuses writes, so traffic waits.
        if (lease.epoch === localEpoch && lease.renewedAt === lease.acquiredAt) {
          return this.none(
            `waiting for the agent to take the lease at epoch ${lease.epoch} and lift the local fence before traffic goes home (handed over ${secs(Math.max(0, this.now - lease.acquiredAt))} ago; is the agent running?)`,
            st,
          );
        }
        return this.decision({ kind: 'switch-traffic-to-local', epoch: lease.epoch }, `pointed traffic back at local (epoch ${lease.epoch})`, at('scale-cloud-run'));
      case 'scale-cloud-run':
        return this.decision({ kind: 'scale-cloud-run', minInstances: 0 }, 'set Cloud Run min instances to 0: the cloud copy scales to zero again', at('record-event'));
      case 'record-event':
        return this.decision(
          { kind: 'record-event', event: 'failback', epoch: lease.epoch },
          `recorded the failback to local at epoch ${lease.epoch} in the audit trail and on the events topic; local serves`,
          { phase: 'normal', knownEpoch: this.#known },
        );
    }
  }
}
