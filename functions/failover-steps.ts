// The failover steps that act on the cloud side, as StepHandlers for the
// failover runner: the target database (epoch, sequences, app role), the
// app's cloud copy, traffic, the events topic and the policy hook. Each is
// idempotent, because the runner retries a step whose answer was lost.
import type pg from 'pg';
import { PermanentError } from '../core/errors.ts';
import type { Action } from '../core/failover-controller.ts';
import type { Logger } from '../core/log.ts';
import type { AppScaler, EventSink, TrafficSwitch } from '../core/ports.ts';
import { readStreamState, setFencingEpoch } from './apply-engine.ts';
import type { StepHandlers, StepResult } from './failover-runner.ts';
import { askPolicyHook } from './policy-hook.ts';
import { advanceSequences, fenceCloudTarget, setAppWriteAccess, type ControlClient } from './target-control.ts';

export interface CloudStepDeps {
  readonly stream: string;
  readonly appRole: string;
  readonly applyRole?: string;
  readonly sequenceSafetyGap: number;
  readonly hook?: { readonly url: string; readonly timeoutMs: number };
  /** Runs `fn` on a dedicated target connection. */
  readonly withTarget: <T>(fn: (client: ControlClient) => Promise<T>) => Promise<T>;
  readonly traffic: TrafficSwitch;
  readonly scaler: AppScaler;
  readonly events: EventSink;
  readonly logger: Logger;
  readonly clock?: () => number;
}

function expect<K extends Action['kind']>(action: Action, kind: K): Extract<Action, { kind: K }> {
  if (action.kind !== kind) throw new PermanentError(`the ${kind} step was handed a ${action.kind} action`);
  return action as Extract<Action, { kind: K }>;
}

export function withPool(pool: pg.Pool): CloudStepDeps['withTarget'] {
  return async (fn) => {
    const client = await pool.connect();
    try {
      return await fn(client);
    } finally {
      client.release();
    }
  };
}

export function cloudFailoverSteps(deps: CloudStepDeps): StepHandlers {
  const { stream, logger } = deps;
  const clock = deps.clock ?? Date.now;
  return {
    'write-epoch-to-target': async (action): Promise<StepResult> => {
      const { epoch } = expect(action, 'write-epoch-to-target');
      const now = await deps.withTarget((c) => setFencingEpoch(c, stream, epoch, 'failover'));
      return { detail: `the target's fencing epoch is ${now}` };
    },
    'set-sequences': async (action): Promise<StepResult> => {
      const { epoch } = expect(action, 'set-sequences');
      const moved = await deps.withTarget((c) => advanceSequences(c, { stream, epoch, gap: deps.sequenceSafetyGap, logger }));
      return { detail: `${moved.length} sequence(s) advanced by ${deps.sequenceSafetyGap} beyond the last shipped values` };
    },
    'make-cloud-writable': async (action): Promise<StepResult> => {
      const { epoch } = expect(action, 'make-cloud-writable');
      // Checked again here (setAppWriteAccess also checks it in its transaction): never writable under another epoch.
      const state = await deps.withTarget((c) => readStreamState(c, stream));
      if (state?.epoch !== epoch) {
        throw new PermanentError(`refusing to make the cloud writable at epoch ${epoch}: the target's fencing epoch is ${state?.epoch ?? 'not set'}`);
      }
      const r = await deps.withTarget((c) =>
        setAppWriteAccess(c, { stream, appRole: deps.appRole, ...(deps.applyRole !== undefined && { applyRole: deps.applyRole }), writable: true, epoch, logger }),
      );
      return { detail: `the app role ${r.appRole} may write ${r.tables} table(s) in ${r.schemas.join(', ') || 'no schema'}` };
    },
    'scale-cloud-run': async (action): Promise<StepResult> => {
      const { minInstances } = expect(action, 'scale-cloud-run');
      return { detail: (await deps.scaler.setMinInstances(minInstances)).detail };
    },
    'switch-traffic-to-cloud': async (action): Promise<StepResult> => {
      expect(action, 'switch-traffic-to-cloud');
      return { detail: (await deps.traffic.pointAt('cloud')).detail };
    },
    'switch-traffic-to-local': async (action): Promise<StepResult> => {
      expect(action, 'switch-traffic-to-local');
      return { detail: (await deps.traffic.pointAt('local')).detail };
    },
    'record-event': async (action, ctx): Promise<StepResult> => {
      const { event, epoch } = expect(action, 'record-event');
      await deps.events.publish({ type: event, stream, epoch, reason: ctx.decision.reason, at: new Date(clock()).toISOString() });
      return { detail: `published on the events topic` };
    },
    'fence-cloud': async (action): Promise<StepResult> => {
      const { epoch } = expect(action, 'fence-cloud');
      const r = await deps.withTarget((c) => fenceCloudTarget(c, { stream, epoch, appRole: deps.appRole, ...(deps.applyRole !== undefined && { applyRole: deps.applyRole }), logger }));
      return { detail: `fencing epoch ${r.epoch}; ${r.access.terminatedSessions} app session(s) ended` };
    },
    'call-hook': async (action, ctx): Promise<StepResult> => {
      const { phase } = expect(action, 'call-hook');
      if (!deps.hook) throw new PermanentError('the decision asks the policy hook, but failover.hookUrl is not set here');
      const lease = ctx.lease?.lease;
      const hook = await askPolicyHook(deps.hook.url, deps.hook.timeoutMs, { phase, stream, epoch: lease?.epoch ?? 0, reason: ctx.decision.reason });
      return { hook, detail: `policy hook ${hook.allowed ? 'allowed' : 'vetoed'}: ${hook.detail}` };
    },
  };
}
