import { describe, expect, it } from 'vitest';
import { MemoryControlStore } from '../../core/control-record.ts';
import type { Action, ControllerSettings, ProbeResult } from '../../core/failover-controller.ts';
import { PermanentError, RetryableError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { LeaseClient, MemoryLeaseStore } from '../../core/writer-lease.ts';
import { FailoverRunner, type StepHandlers, type TargetObservation } from '../../functions/failover-runner.ts';

const T0 = Date.parse('2026-11-23T10:00:00.000Z');
const settings: ControllerSettings = {
  lease: { ttlSeconds: 30, clockSkewMarginSeconds: 5 },
  probe: { failureThreshold: 3, recheckIntervalSeconds: 5, heartbeatStaleSeconds: 30 },
  failover: { auto: true, failback: 'manual', drainTimeoutSeconds: 60 },
};
const silent = createLogger({ component: 'test', sink: () => {} });

/** A world with a clock, a lease store, a control store, a probe answer and recorded steps. */
function world(opts: { steps?: (calls: Action[]) => StepHandlers } = {}) {
  let now = T0;
  const clock = () => now;
  const leaseStore = new MemoryLeaseStore();
  const store = new MemoryControlStore();
  let probe: ProbeResult = { outcome: 'ok', latencyMs: 10 };
  const target: { -readonly [K in keyof TargetObservation]: TargetObservation[K] } = { appliedLsn: 0x1000n, lastAppliedAt: T0 };
  const calls: Action[] = [];
  const record = (a: Action) => {
    calls.push(a);
  };
  const cloudSteps: StepHandlers = Object.fromEntries(
    (['write-epoch-to-target', 'set-sequences', 'make-cloud-writable', 'scale-cloud-run', 'switch-traffic-to-cloud', 'record-event', 'call-hook'] as const).map((k) => [
      k,
      async (a: Action) => record(a),
    ]),
  );
  const makeRunner = (name: string) =>
    new FailoverRunner({
      stream: 'main',
      runner: name,
      settings,
      store,
      lease: new LeaseClient({ store: leaseStore, timing: settings, clock }),
      probe: async () => probe,
      target: { observe: async () => target },
      steps: opts.steps ? opts.steps(calls) : cloudSteps,
      deferredHint: 'on the local side (`lifeboat failback`)',
      logger: silent,
      clock,
    });
  return {
    runner: makeRunner('probe-function'),
    makeRunner,
    store,
    leaseStore,
    calls,
    target,
    setProbe: (p: ProbeResult) => {
      probe = p;
    },
    advance: (ms: number) => {
      now += ms;
    },
    now: () => now,
    localLease: () => new LeaseClient({ store: leaseStore, timing: settings, clock }).acquireOrRenew('local'),
  };
}

const down: ProbeResult = { outcome: 'failed', latencyMs: 40, detail: 'HTTP 503' };

describe('FailoverRunner', () => {
  it('fails over after the threshold once the lease expired, one step per cycle, and says why', async () => {
    const w = world();
    await w.localLease();
    expect((await w.runner.cycle()).sentence).toMatch(/answered in 10 ms; local serves at epoch 1/);
    w.setProbe(down);
    w.advance(1000);
    expect((await w.runner.cycle()).sentence).toMatch(/^1 of 3 probes failed in a row/);
    expect((await w.runner.cycle()).nextPhase).toBe('suspect');
    // The third failure confirms; the agent's heartbeat is old and the lease expired: promote.
    w.advance(40_000);
    w.target.lastAppliedAt = T0;
    let report = await w.runner.cycle();
    expect(report.nextPhase).toBe('failing-over');
    expect(report.decision?.action).toEqual({ kind: 'promote-cloud', epoch: 2, fromEpoch: 1 });
    expect(report.sentence).toMatch(/promoted cloud at epoch 2 because 3 probes failed and the lease expired at 2026-11-23T10:00:30.000Z/);
    expect((await w.leaseStore.read())?.lease).toMatchObject({ holder: 'cloud', epoch: 2 });
    for (let i = 0; i < 10 && report.nextPhase !== 'failed-over'; i++) report = await w.runner.cycle();
    expect(report.nextPhase).toBe('failed-over');
    expect(w.calls.map((a) => a.kind)).toEqual(['write-epoch-to-target', 'set-sequences', 'make-cloud-writable', 'scale-cloud-run', 'switch-traffic-to-cloud', 'record-event']);
    expect(w.calls[0]).toEqual({ kind: 'write-epoch-to-target', epoch: 2 });
    // The audit trail holds every cycle's sentence and every probe.
    const decisions = await w.store.recent('decision', 100);
    expect(decisions.length).toBeGreaterThanOrEqual(10);
    expect(decisions.some((d) => d.kind === 'decision' && d.reason.includes('promoted cloud at epoch 2'))).toBe(true);
    expect((await w.store.recent('probe', 100)).filter((p) => p.kind === 'probe' && p.outcome === 'failed')).toHaveLength(3);
  });

  it('two runs at the same moment: one claims the cycle, the other changes nothing', async () => {
    const w = world();
    await w.localLease();
    await w.runner.cycle();
    const other = w.makeRunner('probe-function-2');
    const [a, b] = await Promise.all([w.runner.cycle(), other.cycle()]);
    expect([a.outcome, b.outcome].sort()).toEqual(['ok', 'skipped']);
    const skipped = a.outcome === 'skipped' ? a : b;
    expect(skipped.sentence).toMatch(/another run claimed this cycle first/);
  });

  it('a live claim blocks other runs until it expires', async () => {
    const w = world();
    await w.localLease();
    const snap = await w.store.read();
    const base = snap?.record ?? (await w.runner.record());
    await w.store.compareAndSet(snap?.version ?? null, { ...base, cycle: { id: 'x', runner: 'dead-run', startedAt: w.now(), expiresAt: w.now() + 120_000 } });
    expect((await w.runner.cycle()).sentence).toMatch(/the run dead-run has been deciding since/);
    w.advance(121_000);
    expect((await w.runner.cycle()).outcome).toBe('ok');
  });

  it('a failed step keeps the state, is retried with the error named, and a permanent one halts', async () => {
    let fail: Error | undefined = new RetryableError('Cloud SQL is restarting');
    const w = world({
      steps: (calls) => ({
        'call-hook': async (a) => {
          calls.push(a);
          if (fail) throw fail;
          return { hook: { phase: 'promote', allowed: true, detail: 'HTTP 200' } };
        },
      }),
    });
    await w.localLease();
    await w.runner.requestOperator('failover', 'alice@host');
    // Operator failover without a hook URL goes straight to failing over; use the hook to get a failing step.
    const withHook = new FailoverRunner({
      stream: 'main',
      runner: 'cli',
      settings: { ...settings, failover: { ...settings.failover, hookUrl: 'https://hook.example/' } },
      store: w.store,
      lease: new LeaseClient({ store: w.leaseStore, timing: settings, clock: w.now }),
      target: { observe: async () => w.target },
      steps: {
        'call-hook': async () => {
          if (fail) throw fail;
          return { hook: { phase: 'promote', allowed: true, detail: 'HTTP 200' } };
        },
      },
      logger: silent,
      clock: w.now,
    });
    const first = await withHook.cycle();
    expect(first.outcome).toBe('failed');
    expect(first.sentence).toMatch(/asking the policy hook .* the step failed: Cloud SQL is restarting/);
    const rec = await withHook.record();
    expect(rec.state.phase).toBe('normal');
    expect(rec.pendingOperator?.command).toBe('failover');
    expect(rec.lastStepError).toMatchObject({ action: 'call-hook', permanent: false });
    fail = new PermanentError('the hook URL answers 404');
    const second = await withHook.cycle();
    expect(second.sentence).toMatch(/retrying: the last attempt failed: Cloud SQL is restarting/);
    const third = await withHook.cycle();
    expect(third.decision?.action.kind).toBe('halt');
    expect(third.sentence).toMatch(/halted: step call-hook failed permanently: the hook URL answers 404/);
  });

  it('defers steps it cannot run and names where they run', async () => {
    const w = world();
    await w.localLease();
    await w.runner.requestOperator('failover', 'alice@host');
    w.advance(40_000); // the local lease lapsed
    let r = await w.runner.cycle();
    for (let i = 0; i < 12 && r.nextPhase !== 'failed-over'; i++) r = await w.runner.cycle();
    expect(r.nextPhase).toBe('failed-over');
    expect((await w.runner.record()).pendingOperator).toBeNull();
    await w.runner.requestOperator('failback', 'alice@host');
    const withLocal = new FailoverRunner({
      stream: 'main',
      runner: 'probe-function',
      settings,
      store: w.store,
      lease: new LeaseClient({ store: w.leaseStore, timing: settings, clock: w.now }),
      localHealth: async () => ({ healthy: true, caughtUp: false, detail: 'local answers' }),
      steps: {},
      deferredHint: 'on the local side (`lifeboat failback`)',
      logger: silent,
      clock: w.now,
    });
    const d = await withLocal.cycle();
    expect(d.outcome).toBe('deferred');
    expect(d.decision?.action.kind).toBe('save-stranded-tail');
    expect(d.sentence).toMatch(/not done here: this step runs on the local side/);
    const rec = await withLocal.record();
    expect(rec.state.phase).toBe('failed-over');
    expect(rec.pendingOperator?.command).toBe('failback');
  });

  it('dry run decides without acting or storing', async () => {
    const w = world();
    await w.localLease();
    await w.runner.cycle();
    const before = await w.store.read();
    const d = await w.runner.dryRun('failover');
    expect(d.reason).toMatch(/the operator requested a failover/);
    expect(w.calls).toEqual([]);
    expect((await w.store.read())?.version).toBe(before?.version);
  });
});
