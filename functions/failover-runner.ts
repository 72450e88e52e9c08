// The failover runner: one cycle of the HA loop around the pure decide().
//
//   claim the cycle (compare-and-set on the control record)
//     → observe (probe, lease, target watermark, local health, operator)
//     → decide(state, observations, now)
//     → execute at most one step
//     → store the next state only if the step succeeded (else lastStepError)
//     → release the claim, append the decision to the audit trail, log it
//
// Two runs at the same moment: the compare-and-set on the control record lets
// one claim the cycle; the other returns `skipped` and touches nothing. The
// lease steps compare-and-set against the epoch decided on (expectedEpoch),
// and the target refuses stale epochs, so even a run that lost its claim to
// an expiry cannot make two writers.
//
// Steps this runner cannot execute (failback's local steps in the cloud probe
// function) are `deferred`: nothing is stored and the reason says where the
// step runs. No SDK here: everything comes in through ports.
import { randomUUID } from 'node:crypto';
import {
  decide,
  PASSIVE_ACTIONS,
  type Action,
  type ActionKind,
  type ControllerSettings,
  type Decision,
  type Observations,
  type ProbeResult,
} from '../core/failover-controller.ts';
import { controlRecordSchema, initialControlRecord, type ControlRecord, type ControlStore } from '../core/control-record.ts';
import { describeError, PermanentError, RetryableError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import type { LeaseClient, LeaseSnapshot } from '../core/writer-lease.ts';

/** What the target database tells the controller. */
export interface TargetObservation {
  readonly appliedLsn: bigint | null;
  /** When the last batch (heartbeats included) was applied, ms since the Unix epoch. */
  readonly lastAppliedAt: number | null;
}

export interface LocalHealth {
  readonly healthy: boolean;
  readonly caughtUp: boolean;
  readonly detail: string;
}

export interface StepContext {
  readonly decision: Decision;
  /** The lease as read in this cycle. */
  readonly lease: LeaseSnapshot | undefined;
  readonly now: number;
  readonly logger: Logger;
}

/** What a step found out, for the next cycle's observations. */
export interface StepResult {
  readonly detail?: string;
  readonly hook?: { readonly phase: 'promote' | 'demote'; readonly allowed: boolean; readonly detail: string };
  readonly verify?: { readonly equal: boolean; readonly detail: string };
}

export type StepHandler = (action: Action, ctx: StepContext) => Promise<StepResult | void>;
export type StepHandlers = Partial<Record<ActionKind, StepHandler>>;

export interface FailoverRunnerOptions {
  readonly stream: string;
  /** Who runs the cycles, for the audit trail: 'probe-function', 'lifeboat failback on host'. */
  readonly runner: string;
  readonly settings: ControllerSettings;
  readonly store: ControlStore;
  readonly lease: LeaseClient;
  /** Checks the app's health URL; absent: no probe in this runner. */
  readonly probe?: () => Promise<ProbeResult>;
  readonly target?: { observe(): Promise<TargetObservation> };
  readonly localHealth?: () => Promise<LocalHealth>;
  /** Steps this runner can execute besides the lease steps, which are built in. */
  readonly steps: StepHandlers;
  /** Where the deferred steps run, for the sentence ("run `lifeboat failback` on the local side"). */
  readonly deferredHint?: string;
  readonly logger?: Logger;
  readonly clock?: () => number;
  /** How long a claim protects a cycle (a run that died mid-cycle frees it after this). Default 120 s. */
  readonly claimTtlMs?: number;
}

export type CycleOutcome = 'ok' | 'failed' | 'deferred' | 'skipped';

export interface CycleReport {
  readonly outcome: CycleOutcome;
  /** Present unless skipped. */
  readonly decision?: Decision;
  /** The sentence logged and stored: the decision's reason, plus what happened to the step. */
  readonly sentence: string;
  readonly phase: string;
  readonly nextPhase: string;
  readonly probe?: ProbeResult;
  readonly error?: string;
}


export class FailoverRunner {
  readonly #o: FailoverRunnerOptions;
  readonly #log: Logger;
  readonly #clock: () => number;
  readonly #claimTtlMs: number;
  readonly #steps: StepHandlers;

  constructor(opts: FailoverRunnerOptions) {
    this.#o = opts;
    this.#log = opts.logger ?? createLogger({ component: 'failover', fields: { stream: opts.stream } });
    this.#clock = opts.clock ?? Date.now;
    this.#claimTtlMs = opts.claimTtlMs ?? 120_000;
    this.#steps = { ...this.#leaseSteps(), ...opts.steps };
  }

  /** Stores an operator command for the next cycle (failover, failback, resume). */
  async requestOperator(command: 'failover' | 'failback' | 'resume', requestedBy: string): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const now = this.#clock();
      const snap = await this.#o.store.read();
      const record = snap?.record ?? initialControlRecord(now);
      const next: ControlRecord = { ...record, pendingOperator: { command, requestedAt: now, requestedBy }, updatedAt: now };
      const r = await this.#o.store.compareAndSet(snap?.version ?? null, next);
      if (r.ok) {
        this.#log.notice(`${requestedBy} requested ${command}; the next cycle acts on it`, { command });
        return;
      }
    }
    throw new RetryableError(`could not store the operator's ${command} request: the control record kept changing under five attempts`, {
      remedy: 'Another run is busy deciding; try again in a few seconds.',
    });
  }

  /** The stored record (status, dry runs). */
  async record(): Promise<ControlRecord> {
    return (await this.#o.store.read())?.record ?? initialControlRecord(this.#clock());
  }

  /** Observes and decides without acting or storing anything (`lifeboat failover --dry-run`). */
  async dryRun(operator?: 'failover' | 'failback' | 'resume'): Promise<Decision> {
    const now = this.#clock();
    const record = await this.record();
    const { observations } = await this.#observe(record, now, operator);
    return decide(record.state, observations, now, this.#o.settings);
  }

  /** One cycle. Never throws for a step's failure; throws only when the control record cannot be read or claimed at all. */
  async cycle(): Promise<CycleReport> {
    const now = this.#clock();
    const store = this.#o.store;
    const snap = await store.read();
    const record = snap?.record ?? initialControlRecord(now);
    const phase = record.state.phase;
    if (record.cycle !== null && record.cycle.expiresAt > now) {
      return this.#skipped(record, `did nothing: the run ${record.cycle.runner} has been deciding since ${new Date(record.cycle.startedAt).toISOString()}`);
    }
    const claim = { id: randomUUID(), runner: this.#o.runner, startedAt: now, expiresAt: now + this.#claimTtlMs };
    const claimed = await store.compareAndSet(snap?.version ?? null, { ...record, cycle: claim, updatedAt: now });
    if (!claimed.ok) return this.#skipped(record, 'did nothing: another run claimed this cycle first');

    const { observations, probe, lease } = await this.#observe(record, now);
    const decision = decide(record.state, observations, now, this.#o.settings);
    const action = decision.action;
    let outcome: CycleOutcome = 'ok';
    let error: { message: string; permanent: boolean } | undefined;
    let result: StepResult | void = undefined;
    const handler = this.#steps[action.kind];
    if (!PASSIVE_ACTIONS.has(action.kind) && action.kind !== 'record-probe') {
      if (handler === undefined) {
        outcome = 'deferred';
      } else {
        try {
          result = await handler(action, { decision, lease, now, logger: this.#log });
        } catch (err) {
          outcome = 'failed';
          error = { message: describeError(err), permanent: err instanceof PermanentError };
        }
      }
    }

    const done = this.#clock();
    const sentence =
      outcome === 'failed'
        ? `${decision.reason} — the step failed: ${error!.message}`
        : outcome === 'deferred'
          ? `${decision.reason} — not done here: this step runs ${this.#o.deferredHint ?? 'in another runner'}`
          : result?.detail
            ? `${decision.reason} (${result.detail})`
            : decision.reason;
    const next: ControlRecord = {
      ...record,
      state: outcome === 'ok' ? decision.next : record.state,
      updatedAt: done,
      cycle: null,
      // An operator command is consumed by a decision that took effect; otherwise it waits.
      pendingOperator: outcome === 'ok' && observations.operator !== undefined ? null : record.pendingOperator,
      lastStepError: error ? { action: action.kind, message: error.message, permanent: error.permanent, at: done } : outcome === 'ok' ? null : record.lastStepError,
      hook: result?.hook ? { ...result.hook, at: done } : record.hook,
      verify: result?.verify ? { ...result.verify, at: done } : record.verify,
      lastDecision: { action: action.kind, reason: sentence, at: done, phase: record.state.phase },
    };
    const nextPhase = outcome === 'ok' ? decision.next.phase : phase;
    const reportFor = (): CycleReport => ({
      outcome,
      decision,
      sentence,
      phase,
      nextPhase,
      ...(probe !== undefined && { probe }),
      ...(error !== undefined && { error: error.message }),
    });
    // The audit trail is written alongside the record (not after it): it keeps step-to-step latency down.
    const [stored] = await Promise.all([store.compareAndSet(claimed.version, controlRecordSchema.parse(next)), this.#audit(reportFor(), decision.next.knownEpoch, done)]);
    if (!stored.ok) {
      // The claim expired and another run took over; its view wins. Say so loudly.
      this.#log.critical(`the cycle's result was not stored: another run claimed the cycle after this one's claim expired (${sentence})`);
    }
    const report = reportFor();
    const level = outcome === 'failed' || action.kind === 'halt' ? 'error' : PASSIVE_ACTIONS.has(action.kind) || action.kind === 'record-probe' ? 'info' : 'notice';
    this.#log[level](sentence, { phase, nextPhase, action: action.kind, outcome, epoch: decision.next.knownEpoch });
    return report;
  }

  async #skipped(record: ControlRecord, sentence: string): Promise<CycleReport> {
    const report: CycleReport = { outcome: 'skipped', sentence, phase: record.state.phase, nextPhase: record.state.phase };
    await this.#audit(report, record.state.knownEpoch, this.#clock());
    this.#log.info(sentence);
    return report;
  }

  async #audit(report: CycleReport, epoch: number, at: number): Promise<void> {
    const runner = this.#o.runner;
    try {
      await Promise.all([
        report.probe
          ? this.#o.store.append({ kind: 'probe', at, runner, outcome: report.probe.outcome, latencyMs: report.probe.latencyMs, ...(report.probe.detail !== undefined && { detail: report.probe.detail }) })
          : undefined,
        this.#o.store.append({
          kind: 'decision',
          at,
          runner,
          phase: report.phase,
          nextPhase: report.nextPhase,
          action: report.decision?.action.kind ?? 'none',
          reason: report.sentence,
          outcome: report.outcome,
          ...(report.error !== undefined && { error: report.error }),
          epoch,
        }),
      ]);
    } catch (err) {
      // The decision already took effect; losing its log line must not undo it, but it must be seen.
      this.#log.error('could not append the decision to the audit trail', { error: err, reason: report.sentence });
    }
  }

  async #observe(
    record: ControlRecord,
    now: number,
    operatorOverride?: 'failover' | 'failback' | 'resume',
  ): Promise<{ observations: Observations; probe: ProbeResult | undefined; lease: LeaseSnapshot | undefined }> {
    const o = this.#o;
    // Probing matters until the cloud is promoted (a recovery cancels a hard failover); after that it only slows the steps.
    const st = record.state;
    const wantProbe = o.probe !== undefined && (st.phase === 'normal' || st.phase === 'suspect' || (st.phase === 'failing-over' && st.epoch === null));
    const [probe, leaseObs, target, local] = await Promise.all([
      wantProbe ? o.probe!().catch((err: unknown): ProbeResult => ({ outcome: 'failed', latencyMs: 0, detail: `the probe itself failed: ${describeError(err)}` })) : undefined,
      o.lease.read().then(
        (snapshot) => ({ reachable: true as const, snapshot: snapshot ?? null }),
        (err: unknown) => ({ reachable: false as const, error: describeError(err) }),
      ),
      o.target?.observe().catch((err: unknown) => {
        this.#log.warn('could not read the target watermark', { error: err });
        return undefined;
      }),
      o.localHealth?.().catch((err: unknown): LocalHealth => ({ healthy: false, caughtUp: false, detail: `local health check failed: ${describeError(err)}` })),
    ]);
    const operator = operatorOverride ?? record.pendingOperator?.command;
    const observations: Observations = {
      lease: leaseObs,
      ...(probe !== undefined && { probe }),
      ...(target !== undefined && { agentHeartbeatAt: target.lastAppliedAt === null ? null : Math.min(target.lastAppliedAt, now) }),
      ...(target?.appliedLsn != null && { appliedLsn: target.appliedLsn }),
      ...(operator !== undefined && { operator }),
      ...(record.hook !== null && { hook: { phase: record.hook.phase, allowed: record.hook.allowed, detail: record.hook.detail } }),
      ...(local !== undefined && { localHealth: local }),
      ...(record.verify !== null && { verify: { equal: record.verify.equal, detail: record.verify.detail } }),
      ...(record.lastStepError !== null && {
        lastStepError: { action: record.lastStepError.action, message: record.lastStepError.message, permanent: record.lastStepError.permanent },
      }),
    };
    return { observations, probe, lease: leaseObs.reachable ? (leaseObs.snapshot ?? undefined) : undefined };
  }

  /** The steps that only need the lease: built in, so every runner can take them. */
  #leaseSteps(): StepHandlers {
    const lease = this.#o.lease;
    const must = (outcome: { ok: boolean; sentence: string }): StepResult => {
      if (!outcome.ok) throw new RetryableError(outcome.sentence);
      return { detail: outcome.sentence };
    };
    return {
      'request-graceful-takeover': async (action, ctx) => {
        if (action.kind !== 'request-graceful-takeover') throw new PermanentError(`wrong handler for ${action.kind}`);
        return must(await lease.requestTakeover('cloud', ctx.decision.reason));
      },
      'promote-cloud': async (action, ctx) => {
        if (action.kind !== 'promote-cloud') throw new PermanentError(`wrong handler for ${action.kind}`);
        const outcome = await lease.tryTakeOver('cloud', ctx.decision.reason, { expectedEpoch: action.fromEpoch });
        if (outcome.ok && outcome.lease.epoch !== action.epoch) {
          throw new PermanentError(`the cloud took the lease at epoch ${outcome.lease.epoch}, but epoch ${action.epoch} was decided`);
        }
        return must(outcome);
      },
      'hand-lease-to-local': async (action, ctx) => {
        if (action.kind !== 'hand-lease-to-local') throw new PermanentError(`wrong handler for ${action.kind}`);
        return must(await lease.handOver('cloud', 'local', ctx.decision.reason, { expectedEpoch: action.fromEpoch }));
      },
    };
  }
}
