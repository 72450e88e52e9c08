import { describe, expect, it } from 'vitest';
import {
  decide,
  INITIAL_STATE,
  PASSIVE_ACTIONS,
  type ControllerSettings,
  type ControllerState,
  type Decision,
  type Observations,
} from '../../core/failover-controller.ts';
import { parseLsn } from '../../core/lsn.ts';
import { createLease, release, requestTakeover, type Lease } from '../../core/writer-lease.ts';

const T0 = Date.parse('2026-11-23T10:00:00.000Z');
const s = (n: number) => n * 1000;

const settings: ControllerSettings = {
  lease: { ttlSeconds: 30, clockSkewMarginSeconds: 5 },
  probe: { failureThreshold: 3, recheckIntervalSeconds: 5, heartbeatStaleSeconds: 30 },
  failover: { auto: true, failback: 'manual', drainTimeoutSeconds: 60 },
};
const withHook: ControllerSettings = { ...settings, failover: { ...settings.failover, hookUrl: 'https://hooks.example/lifeboat' } };

/** A lease local renewed at `renewedAt`. */
const local = (epoch: number, renewedAt = T0): Lease => ({ ...createLease('local', renewedAt, settings, 'test'), epoch });
/** A local lease the agent renewed (at `at`) after a handover at `at` − 1 s. */
const renewedLocal = (epoch: number, at = T0): Lease => ({ ...local(epoch, at - 1000), renewedAt: at, leaseExpiresAt: at + s(30) });
const cloud = (epoch: number, at = T0): Lease => ({ ...createLease('cloud', at, settings, 'test'), epoch });

const seen = (lease: Lease | undefined): Observations['lease'] => ({ reachable: true, snapshot: lease ? { lease, version: 'v1' } : null });
const failedProbe = { outcome: 'failed' as const, latencyMs: 120, detail: 'HTTP 503' };
const okProbe = { outcome: 'ok' as const, latencyMs: 35 };

function obs(o: Partial<Observations> & { lease?: Observations['lease'] }): Observations {
  return { lease: seen(local(6)), ...o };
}

/** Runs decide and returns the decision; the next state is what a successful step stores. */
const run = (state: ControllerState, o: Observations, now: number, cfg = settings): Decision => decide(state, o, now, cfg);

const suspect = (failures: number, extra: Partial<Extract<ControllerState, { phase: 'suspect' }>> = {}): ControllerState => ({
  phase: 'suspect',
  knownEpoch: 6,
  failures,
  firstFailureAt: T0,
  lastProblem: 'the app failed after 120 ms (HTTP 503)',
  trigger: 'probes',
  hookAskedAt: null,
  ...extra,
});

const failingOver = (extra: Partial<Extract<ControllerState, { phase: 'failing-over' }>> = {}): ControllerState => ({
  phase: 'failing-over',
  knownEpoch: 6,
  mode: 'hard',
  because: '3 probes failed',
  startedAt: T0,
  step: 'awaiting-expiry',
  epoch: null,
  trigger: 'probes',
  requested: false,
  ...extra,
});

const failedOver = (extra: Partial<Extract<ControllerState, { phase: 'failed-over' }>> = {}): ControllerState => ({
  phase: 'failed-over',
  knownEpoch: 7,
  epoch: 7,
  since: T0,
  failbackRequested: false,
  failbackBlocked: null,
  ...extra,
});

describe('normal and suspect', () => {
  it('a healthy probe is recorded and nothing else happens', () => {
    const d = run(INITIAL_STATE, obs({ probe: okProbe }), T0);
    expect(d.action).toEqual({ kind: 'record-probe' });
    expect(d.reason).toBe('the app answered in 35 ms; local serves at epoch 6');
    expect(d.next).toEqual({ phase: 'normal', knownEpoch: 6 });
  });

  it('a failed probe makes the controller suspect and asks for a quick recheck', () => {
    const d = run({ phase: 'normal', knownEpoch: 6 }, obs({ probe: failedProbe }), T0);
    expect(d.action).toEqual({ kind: 'record-probe' });
    expect(d.reason).toBe('1 of 3 probes failed in a row: the app failed after 120 ms (HTTP 503); checking again in 5 s');
    expect(d.recheckInMs).toBe(5000);
    expect(d.next).toEqual(suspect(1));
  });

  it('a timeout counts as a failure', () => {
    const d = run(suspect(1), obs({ probe: { outcome: 'timeout', latencyMs: 2000 } }), T0 + s(5));
    expect(d.reason).toBe('2 of 3 probes failed in a row: the app timed out after 2000 ms; checking again in 5 s');
  });

  it('a healthy probe while suspect goes back to normal', () => {
    const d = run(suspect(2), obs({ probe: okProbe }), T0 + s(10));
    expect(d.reason).toBe('the app answered in 35 ms after 2 failed probes; back to normal');
    expect(d.next).toEqual({ phase: 'normal', knownEpoch: 6 });
  });

  it('a cycle without a probe changes nothing', () => {
    expect(run(suspect(1), obs({}), T0).reason).toBe('no probe result this cycle; 1 probe of 3 failed so far');
    expect(run({ phase: 'normal', knownEpoch: 6 }, obs({}), T0)).toMatchObject({ action: { kind: 'none' }, reason: 'no probe result this cycle; local serves at epoch 6' });
  });
});

describe('failover: hard (agent silent)', () => {
  it('the confirming probe with a valid lease waits for expiry plus the margin', () => {
    const d = run(suspect(2), obs({ probe: failedProbe, lease: seen(local(6, T0)), agentHeartbeatAt: T0 - s(60) }), T0 + s(10));
    expect(d.action).toEqual({ kind: 'none' });
    expect(d.reason).toBe(
      "3 probes failed in a row (last: the app failed after 120 ms (HTTP 503)) and the agent is silent (the agent's last heartbeat is 70 s old); waiting for the lease held by local at epoch 6 to expire at 2026-11-23T10:00:30.000Z plus the 5 s margin (25 s from now)",
    );
    expect(d.next).toMatchObject({ phase: 'failing-over', mode: 'hard', step: 'awaiting-expiry', because: '3 probes failed', epoch: null });
  });

  it('does not promote while the lease is valid, nor within the margin after it expired', () => {
    for (const at of [T0 + s(20), T0 + s(30), T0 + s(35)]) {
      const d = run(failingOver(), obs({ lease: seen(local(6)) }), at);
      expect(d.action.kind).toBe('none');
      expect(d.reason).toMatch(/^waiting for the lease held by local at epoch 6 to expire at 2026-11-23T10:00:30.000Z plus the 5 s margin/);
    }
  });

  it('promotes cloud with the next epoch once the lease expired and the margin passed', () => {
    const d = run(failingOver(), obs({ lease: seen(local(6)) }), T0 + s(35) + 1);
    expect(d.action).toEqual({ kind: 'promote-cloud', epoch: 7, fromEpoch: 6 });
    expect(d.reason).toBe('promoted cloud at epoch 7 because 3 probes failed and the lease expired at 2026-11-23T10:00:30.000Z');
    expect(d.next).toMatchObject({ phase: 'failing-over', epoch: 7, step: 'write-epoch-to-target', knownEpoch: 7 });
  });

  it('promotes at once when the lease had already lapsed when the outage was confirmed', () => {
    const d = run(suspect(2), obs({ probe: failedProbe, lease: seen(local(6, T0 - s(100))) }), T0);
    expect(d.action).toEqual({ kind: 'promote-cloud', epoch: 7, fromEpoch: 6 });
    expect(d.reason).toBe('promoted cloud at epoch 7 because 3 probes failed and the lease expired at 2026-11-23T09:58:50.000Z');
  });

  it('cancels when the app answers again before the lease expired, having changed nothing', () => {
    const d = run(failingOver(), obs({ probe: okProbe }), T0 + s(20));
    expect(d.reason).toBe('the app answered in 35 ms before the lease expired; failover cancelled, nothing was changed');
    expect(d.next).toEqual({ phase: 'normal', knownEpoch: 6 });
  });

  it('after promotion, runs the steps in order, each on a lease that still shows the cloud at its epoch', () => {
    let state: ControllerState = failingOver({ epoch: 7, step: 'write-epoch-to-target', knownEpoch: 7 });
    const o = obs({ lease: seen(cloud(7, T0 + s(36))) });
    const steps: [string, string][] = [];
    for (let i = 0; i < 6; i++) {
      const d = run(state, o, T0 + s(40 + i));
      steps.push([d.action.kind, d.reason]);
      state = d.next;
    }
    expect(steps).toEqual([
      ['write-epoch-to-target', 'wrote epoch 7 into the target before making it writable, so it refuses batches of older epochs'],
      ['set-sequences', "set the target's sequences to the last shipped values plus the safety gap (epoch 7)"],
      ['make-cloud-writable', 'made the cloud database writable for the app role at epoch 7'],
      ['scale-cloud-run', "set Cloud Run min instances to 1 so the app's cloud copy is warm (epoch 7)"],
      ['switch-traffic-to-cloud', 'pointed traffic at the cloud (epoch 7)'],
      ['record-event', 'recorded the failover to cloud at epoch 7 (because 3 probes failed) in the audit trail and on the events topic; the cloud serves'],
    ]);
    expect(state).toEqual({ phase: 'failed-over', knownEpoch: 7, epoch: 7, since: T0 + s(45), failbackRequested: false, failbackBlocked: null });
  });

  it('halts a promotion step when the lease moved away from its epoch', () => {
    const d = run(failingOver({ epoch: 7, step: 'make-cloud-writable', knownEpoch: 7 }), obs({ lease: seen(local(8)) }), T0 + s(40));
    expect(d.action).toEqual({ kind: 'halt' });
    expect(d.reason).toBe(
      'halted: while failing over at epoch 7 the lease moved to local at epoch 8; stopped before make-cloud-writable; run `lifeboat status` to inspect, then `lifeboat resume`',
    );
    expect(d.next).toMatchObject({ phase: 'halted', previous: { phase: 'failing-over', step: 'make-cloud-writable' } });
  });
});

describe('failover: graceful (agent alive, app unhealthy)', () => {
  const alive = { agentHeartbeatAt: T0 + s(8) };

  it('requests a graceful takeover when the agent is alive', () => {
    const d = run(suspect(2), obs({ probe: failedProbe, lease: seen(local(6, T0 + s(5))), ...alive }), T0 + s(10));
    expect(d.action).toEqual({ kind: 'request-graceful-takeover', epoch: 6 });
    expect(d.reason).toBe(
      "requested a graceful takeover from local at epoch 6 because 3 probes failed in a row (last: the app failed after 120 ms (HTTP 503)) while the agent is alive (the agent's last heartbeat is 2 s old)",
    );
    expect(d.next).toMatchObject({ phase: 'failing-over', mode: 'graceful', step: 'awaiting-handover', requested: true, startedAt: T0 + s(10) });
  });

  const requested = failingOver({ mode: 'graceful', step: 'awaiting-handover', requested: true, startedAt: T0 + s(10) });
  const asked = requestTakeover(local(6, T0 + s(5)), 'cloud', T0 + s(10), '3 probes failed');

  it('waits for the agent to hand over', () => {
    const d = run(requested, obs({ lease: seen(asked) }), T0 + s(12));
    expect(d.action).toEqual({ kind: 'wait-for-marker', markerLsn: null });
    expect(d.reason).toBe('waiting for local to fence itself, publish its marker and hand over the lease at epoch 6 (requested 2 s ago)');
  });

  it('waits until the applied watermark reaches the marker, then promotes with RPO 0', () => {
    const released = release(asked, 'local', T0 + s(13), '0/1B00');
    const waiting = run(requested, obs({ lease: seen(released), appliedLsn: parseLsn('0/1A00') }), T0 + s(14));
    expect(waiting.action).toEqual({ kind: 'wait-for-marker', markerLsn: '0/1B00' });
    expect(waiting.reason).toBe("waiting for the applied watermark 0/1A00 to reach local's marker 0/1B00 (handed over 1 s ago, drain timeout 60 s)");
    const d = run(requested, obs({ lease: seen(released), appliedLsn: parseLsn('0/1B00') }), T0 + s(15));
    expect(d.action).toEqual({ kind: 'promote-cloud', epoch: 7, fromEpoch: 6 });
    expect(d.reason).toBe('promoted cloud at epoch 7 because 3 probes failed and local handed over at marker 0/1B00, which the cloud has applied (no acknowledged change is lost)');
  });

  it('does not promote on a handover while the applied watermark cannot be read', () => {
    const released = release(asked, 'local', T0 + s(13), '0/1B00');
    const d = run(requested, obs({ lease: seen(released) }), T0 + s(500));
    expect(d.action.kind).toBe('wait-for-marker');
    expect(d.reason).toBe("waiting for local's marker 0/1B00 to be applied, but the applied watermark cannot be read; the cloud is not promoted before it knows what it has");
  });

  it('after the drain timeout promotes anyway and says where the missing batches go', () => {
    const released = release(asked, 'local', T0 + s(13), '0/1B00');
    const d = run(requested, obs({ lease: seen(released), appliedLsn: parseLsn('0/1A00') }), T0 + s(74));
    expect(d.action.kind).toBe('promote-cloud');
    expect(d.reason).toBe(
      'promoted cloud at epoch 7 because 3 probes failed and local handed over at marker 0/1B00, but the applied watermark 0/1A00 did not reach it within the 60 s drain timeout; batches after 0/1A00 carry the old epoch and go to the stranded-tail report',
    );
  });

  it('falls back to waiting for expiry when the agent does not answer within the drain timeout', () => {
    const d = run(requested, obs({ lease: seen(requestTakeover(local(6, T0 + s(50)), 'cloud', T0 + s(10), 'x')) }), T0 + s(71));
    expect(d.action.kind).toBe('none');
    expect(d.reason).toBe(
      'local did not hand over within the 60 s drain timeout after the takeover request; waiting for the lease held by local at epoch 6 to expire at 2026-11-23T10:01:20.000Z plus the 5 s margin (14 s from now)',
    );
    expect(d.next).toMatchObject({ mode: 'hard', step: 'awaiting-expiry', requested: true });
    // Once requested, a healthy probe no longer cancels: the agent may already be fencing.
    const stillAsked = requestTakeover(local(6, T0 + s(50)), 'cloud', T0 + s(10), 'x');
    expect(run(d.next, obs({ probe: okProbe, lease: seen(stillAsked) }), T0 + s(72)).reason).toMatch(/^waiting for the lease held by local/);
  });

  it('asks again when the request is no longer on the lease', () => {
    const d = run(requested, obs({ lease: seen(local(7, T0 + s(11))) }), T0 + s(12));
    expect(d.action).toEqual({ kind: 'request-graceful-takeover', epoch: 7 });
    expect(d.reason).toBe('requested a graceful takeover from local at epoch 7 again: the request is no longer on the lease');
  });

  it('a lease the agent released on its own (clean shutdown) goes straight to waiting for its marker', () => {
    const d = run(suspect(2), obs({ probe: failedProbe, lease: seen(release(local(6), 'local', T0 + s(1), '0/2000')), appliedLsn: parseLsn('0/2000') }), T0 + s(2));
    expect(d.action).toEqual({ kind: 'promote-cloud', epoch: 7, fromEpoch: 6 });
  });
});

describe('policy and hooks', () => {
  it('with failover.auto off, a confirmed outage is reported and waits for the operator', () => {
    const off = { ...settings, failover: { ...settings.failover, auto: false } };
    const d = run(suspect(2), obs({ probe: failedProbe }), T0, off);
    expect(d.action.kind).toBe('none');
    expect(d.reason).toBe('3 probes failed in a row (last: the app failed after 120 ms (HTTP 503)), but failover.auto is off: run `lifeboat failover` to fail over');
    const manual = run(d.next, obs({ operator: 'failover', lease: seen(local(6, T0 - s(100))) }), T0, off);
    expect(manual.action).toEqual({ kind: 'promote-cloud', epoch: 7, fromEpoch: 6 });
    expect(manual.reason).toBe('promoted cloud at epoch 7 because the operator requested a failover and the lease expired at 2026-11-23T09:58:50.000Z');
  });

  it('the failure count stays at the threshold through a long outage', () => {
    const off = { ...settings, failover: { ...settings.failover, auto: false } };
    expect(run(suspect(3), obs({ probe: failedProbe }), T0, off).next).toMatchObject({ failures: 3 });
  });

  it('asks the promote hook first, and a veto sends the controller back to normal', () => {
    const asked = run(suspect(2), obs({ probe: failedProbe }), T0, withHook);
    expect(asked.action).toEqual({ kind: 'call-hook', phase: 'promote' });
    expect(asked.reason).toBe('3 probes failed in a row (last: the app failed after 120 ms (HTTP 503)); asking the policy hook before failing over');
    const vetoed = run(asked.next, obs({ hook: { phase: 'promote', allowed: false, detail: 'HTTP 409: maintenance window' } }), T0 + 1, withHook);
    expect(vetoed.action.kind).toBe('none');
    expect(vetoed.reason).toBe('the policy hook vetoed the failover (HTTP 409: maintenance window); local serves at epoch 6, and probes are counted again');
    expect(vetoed.next).toEqual({ phase: 'normal', knownEpoch: 6 });
  });

  it('an allowing hook lets the failover start', () => {
    const asked = run(suspect(2), obs({ probe: failedProbe }), T0, withHook);
    const d = run(asked.next, obs({ hook: { phase: 'promote', allowed: true, detail: 'HTTP 200' }, lease: seen(local(6, T0 - s(100))) }), T0 + 1, withHook);
    expect(d.action.kind).toBe('promote-cloud');
  });
});

describe('fails closed', () => {
  it('an unreachable lease store never leads to a promotion, and the reason says so', () => {
    const d = run(suspect(2), obs({ probe: failedProbe, lease: { reachable: false, error: 'UNAVAILABLE: connect ECONNREFUSED' } }), T0);
    expect(d.action.kind).toBe('none');
    expect(d.reason).toBe(
      '3 probes failed in a row (last: the app failed after 120 ms (HTTP 503)), but the lease store is unreachable (UNAVAILABLE: connect ECONNREFUSED), so nothing is promoted: failover never acts without reading the lease',
    );
  });

  it('an unreachable lease store stops every step that changes the cloud role or traffic', () => {
    const blind = { lease: { reachable: false as const, error: 'DEADLINE_EXCEEDED' } };
    const states: ControllerState[] = [
      failingOver(),
      failingOver({ epoch: 7, step: 'switch-traffic-to-cloud' }),
      failedOver({ failbackRequested: true }),
      { phase: 'recovering', knownEpoch: 7, epoch: 7, step: 'awaiting-verify', since: T0, because: 'x' },
      { phase: 'failing-back', knownEpoch: 7, epoch: 7, step: 'drain', startedAt: T0 },
      { phase: 'failing-back', knownEpoch: 8, epoch: 7, step: 'switch-traffic-to-local', startedAt: T0 },
    ];
    for (const st of states) {
      const d = run(st, obs({ ...blind, probe: failedProbe, verify: { equal: true, detail: '3 tables' }, localHealth: { healthy: true, caughtUp: true, detail: 'lag 0' } }), T0 + s(500));
      expect(d.action.kind).toBe('none');
      expect(d.reason).toMatch(/the lease store is unreachable \(DEADLINE_EXCEEDED\); nothing (more )?is (done|changed) until the lease can be read$/);
    }
  });

  it('refuses to take the lease when the local clock is further ahead than the margin', () => {
    const d = run(suspect(2), obs({ probe: failedProbe, lease: seen(local(6, T0 + s(60))) }), T0);
    expect(d.action.kind).toBe('none');
    expect(d.reason).toMatch(/the lease was renewed at 2026-11-23T10:01:00.000Z, 60 s ahead of this clock: clock skew exceeds the 5 s margin, so taking the lease is refused until the clocks agree$/);
  });

  it('halts when the lease epoch goes backwards or the lease disappears', () => {
    expect(run({ phase: 'normal', knownEpoch: 9 }, obs({ lease: seen(local(6)) }), T0).reason).toBe(
      'halted: the lease epoch went backwards from 9 to 6 (held by local); epochs must only grow, so nothing more is done; run `lifeboat status` to inspect, then `lifeboat resume`',
    );
    expect(run({ phase: 'normal', knownEpoch: 9 }, obs({ lease: seen(undefined) }), T0).action).toEqual({ kind: 'halt' });
  });

  it('halts when the cloud holds the lease but this controller never promoted it', () => {
    const d = run({ phase: 'normal', knownEpoch: 6 }, obs({ lease: seen(cloud(7)), probe: okProbe }), T0);
    expect(d.reason).toMatch(/^halted: the lease is held by cloud at epoch 7, but this controller never promoted the cloud \(it is normal\)/);
  });

  it('a malformed observation or state gives none/halt with the reason, never a throw', () => {
    const bad = run(suspect(2), { lease: { reachable: true, snapshot: { lease: { holder: 'martian' }, version: 'v' } } } as unknown as Observations, T0);
    expect(bad.action.kind).toBe('none');
    expect(bad.reason).toMatch(/^did nothing, failing closed: the observations are malformed \(lease.snapshot.lease.holder: .*\); no promotion and no traffic change$/);
    const badState = run({ phase: 'flying' } as unknown as ControllerState, obs({}), T0);
    expect(badState.action.kind).toBe('halt');
    expect(badState.reason).toMatch(/^halted, failing closed: the stored controller state is malformed/);
    expect(run(suspect(2), obs({}), Number.NaN).reason).toBe('did nothing, failing closed: the clock reading NaN is not a time; no promotion and no traffic change');
  });

  it('an unexpected error inside the decision fails closed', () => {
    const exploding = {
      ...settings,
      lease: {
        ttlSeconds: 30,
        get clockSkewMarginSeconds(): number {
          throw new Error('boom');
        },
      },
    };
    const d = run(suspect(2), obs({ probe: failedProbe }), T0, exploding);
    expect(d.action.kind).toBe('none');
    expect(d.reason).toBe('did nothing, failing closed: an unexpected error occurred while deciding (boom); no promotion and no traffic change');
    expect(d.next).toEqual(suspect(2));
  });

  it('a permanent step error halts; a retryable one repeats the step and says why', () => {
    const st = failingOver({ epoch: 7, step: 'switch-traffic-to-cloud', knownEpoch: 7 });
    const o = obs({ lease: seen(cloud(7)) });
    const permanent = run(st, { ...o, lastStepError: { action: 'switch-traffic-to-cloud', message: 'DNS zone not found', permanent: true } }, T0);
    expect(permanent.reason).toBe('halted: step switch-traffic-to-cloud failed permanently: DNS zone not found; run `lifeboat status` to inspect, then `lifeboat resume`');
    const retry = run(st, { ...o, lastStepError: { action: 'switch-traffic-to-cloud', message: 'HTTP 503', permanent: false } }, T0);
    expect(retry.action.kind).toBe('switch-traffic-to-cloud');
    expect(retry.reason).toBe('pointed traffic at the cloud (epoch 7) (retrying: the last attempt failed: HTTP 503)');
  });

  it('halted stays halted until the operator resumes, with timers restarted', () => {
    const halted = run(failingOver({ epoch: 7, step: 'make-cloud-writable', knownEpoch: 7 }), obs({ lease: seen(local(8)) }), T0).next;
    expect(run(halted, obs({ lease: seen(cloud(7)) }), T0 + s(1)).reason).toBe(
      'halted since 2026-11-23T10:00:00.000Z: while failing over at epoch 7 the lease moved to local at epoch 8; stopped before make-cloud-writable; waiting for the operator (`lifeboat resume`)',
    );
    const resumed = run(halted, obs({ operator: 'resume', lease: seen(cloud(7)) }), T0 + s(2));
    expect(resumed.reason).toMatch(/^resumed by the operator after a halt \(.*\); back to failing-over$/);
    expect(resumed.next).toMatchObject({ phase: 'failing-over', step: 'make-cloud-writable', startedAt: T0 + s(2) });
  });
});

describe('failed over and failback', () => {
  const cloudLease = seen(cloud(7));
  const healthy = { healthy: true, caughtUp: false, detail: 'local is reachable; reverse sync lag 2 MB' };

  it('with manual failback, the cloud keeps serving until the operator asks', () => {
    const d = run(failedOver(), obs({ lease: cloudLease, localHealth: healthy }), T0 + s(60));
    expect(d.reason).toBe('cloud serves at epoch 7 since 2026-11-23T10:00:00.000Z; failback is manual: run `lifeboat failback` when local is ready');
  });

  it('a failback request waits for local to be healthy, and is remembered', () => {
    const d = run(failedOver(), obs({ lease: cloudLease, operator: 'failback', localHealth: { healthy: false, caughtUp: false, detail: 'connection refused' } }), T0);
    expect(d.reason).toBe('cloud serves at epoch 7 since 2026-11-23T10:00:00.000Z; failback was requested, but it waits for local to be healthy (connection refused)');
    expect(d.next).toMatchObject({ failbackRequested: true });
  });

  it('walks the whole failback, one step per cycle, with its sentences', () => {
    const auto = { ...settings, failover: { ...settings.failover, failback: 'auto' as const } };
    let state: ControllerState = failedOver();
    const script: [Observations, string, string][] = [
      [obs({ lease: cloudLease, localHealth: healthy }), 'save-stranded-tail',
        "saved the stranded tail (local transactions after the cloud's applied watermark) to object storage and a report before reverse sync, because failback is automatic and local is healthy"],
      [obs({ lease: cloudLease }), 'start-reverse-sync', "started reverse sync: the cloud's changes since epoch 7 flow back to local"],
      [obs({ lease: cloudLease, localHealth: healthy }), 'none', 'reverse sync is catching up: local is reachable; reverse sync lag 2 MB'],
      [obs({ lease: cloudLease, localHealth: { ...healthy, caughtUp: true, detail: 'lag 0 B' } }), 'verify', 'local has caught up with the cloud (lag 0 B); verifying row counts and checksums'],
      [obs({ lease: cloudLease, verify: { equal: true, detail: '12 tables, 48,210 rows' } }), 'fence-cloud',
        'fenced the cloud: epoch 8 written into the target and the app role made read-only there, because row counts and checksums match (12 tables, 48,210 rows)'],
      [obs({ lease: cloudLease, localHealth: { ...healthy, detail: 'lag 12 kB' } }), 'wait-for-drain', 'waiting for reverse sync to drain after fencing the cloud: lag 12 kB (1 s of 60 s)'],
      [obs({ lease: cloudLease, localHealth: { ...healthy, caughtUp: true, detail: 'lag 0 B' } }), 'resume-forward-streaming',
        "prepared forward streaming at epoch 8 (a new replication slot on local, the target's watermark moved to its start) once reverse sync had drained (lag 0 B)"],
      [obs({ lease: cloudLease }), 'hand-lease-to-local',
        'handed the lease to local at epoch 8: the cloud is fenced, reverse sync has drained and forward streaming is prepared'],
      [obs({ lease: seen(local(8, T0 + s(8))) }), 'none',
        'waiting for the agent to take the lease at epoch 8 and lift the local fence before traffic goes home (handed over 100 s ago; is the agent running?)'],
      [obs({ lease: seen(renewedLocal(8, T0 + s(8))) }), 'switch-traffic-to-local', 'pointed traffic back at local (epoch 8)'],
      [obs({ lease: seen(renewedLocal(8, T0 + s(9))) }), 'scale-cloud-run', 'set Cloud Run min instances to 0: the cloud copy scales to zero again'],
      [obs({ lease: seen(renewedLocal(8, T0 + s(11))) }), 'record-event', 'recorded the failback to local at epoch 8 in the audit trail and on the events topic; local serves'],
    ];
    let now = T0 + s(100);
    for (const [o, kind, reason] of script) {
      const d = run(state, o, now, auto);
      expect([d.action.kind, d.reason]).toEqual([kind, reason]);
      state = d.next;
      now += s(1);
    }
    expect(state).toEqual({ phase: 'normal', knownEpoch: 8 });
  });

  it('a verify mismatch stops failback before the cloud is fenced and blocks automatic retries', () => {
    const auto = { ...settings, failover: { ...settings.failover, failback: 'auto' as const } };
    const st: ControllerState = { phase: 'recovering', knownEpoch: 7, epoch: 7, step: 'awaiting-verify', since: T0, because: 'x' };
    const d = run(st, obs({ lease: seen(cloud(7)), verify: { equal: false, detail: 'public.orders: 10 rows here, 9 there' } }), T0 + s(1), auto);
    expect(d.action.kind).toBe('none');
    expect(d.reason).toBe('verification found differences (public.orders: 10 rows here, 9 there); failback stopped before fencing the cloud, which keeps serving at epoch 7');
    const after = run(d.next, obs({ lease: seen(cloud(7)), localHealth: { healthy: true, caughtUp: true, detail: 'ok' } }), T0 + s(2), auto);
    expect(after.reason).toBe(
      'cloud serves at epoch 7 since 2026-11-23T10:00:00.000Z; automatic failback stopped because verification found differences (public.orders: 10 rows here, 9 there); run `lifeboat failback` to try again',
    );
    expect(run(after.next, obs({ lease: seen(cloud(7)), operator: 'failback', localHealth: { healthy: true, caughtUp: true, detail: 'ok' } }), T0 + s(3), auto).action.kind).toBe(
      'save-stranded-tail',
    );
  });

  it('the demote hook can veto the failback', () => {
    const st: ControllerState = { phase: 'recovering', knownEpoch: 7, epoch: 7, step: 'awaiting-verify', since: T0, because: 'x' };
    const asked = run(st, obs({ lease: seen(cloud(7)), verify: { equal: true, detail: '3 tables' } }), T0, withHook);
    expect(asked.action).toEqual({ kind: 'call-hook', phase: 'demote' });
    const vetoed = run(asked.next, obs({ lease: seen(cloud(7)), hook: { phase: 'demote', allowed: false, detail: 'HTTP 403' } }), T0 + 1, withHook);
    expect(vetoed.reason).toBe('the policy hook vetoed the failback (HTTP 403); the cloud keeps serving at epoch 7');
    expect(vetoed.next).toMatchObject({ phase: 'failed-over', failbackBlocked: 'the policy hook vetoed the failback (HTTP 403)' });
  });

  it('halts when the drain does not finish in time after the cloud was fenced', () => {
    const st: ControllerState = { phase: 'failing-back', knownEpoch: 7, epoch: 7, step: 'drain', startedAt: T0 };
    const d = run(st, obs({ lease: seen(cloud(7)), localHealth: { healthy: true, caughtUp: false, detail: 'lag 4 MB' } }), T0 + s(61));
    expect(d.reason).toBe(
      'halted: reverse sync did not drain within the 60 s drain timeout after the cloud was fenced (lag 4 MB); the cloud stays read-only at epoch 8 in the target, traffic still goes to it, and local does not get the lease; run `lifeboat status` to inspect, then `lifeboat resume`',
    );
  });

  it('halts when failed over but the lease is no longer the cloud at its epoch', () => {
    const d = run(failedOver(), obs({ lease: seen(cloud(8)) }), T0);
    expect(d.reason).toMatch(/^halted: the lease is held by cloud at epoch 8, but the cloud should hold it at epoch 7/);
  });
});

describe('operator commands', () => {
  it('a command that does not apply to the phase is named in the reason, not dropped silently', () => {
    const d = run({ phase: 'normal', knownEpoch: 6 }, obs({ probe: okProbe, operator: 'failback' }), T0);
    expect(d.reason).toBe("the app answered in 35 ms; local serves at epoch 6; the operator's failback request was ignored: it does not apply while normal");
    const r = run(failedOver(), obs({ lease: seen(cloud(7)), operator: 'resume' }), T0);
    expect(r.reason).toMatch(/; the operator's resume request was ignored: it does not apply while failed-over$/);
  });

  it('an operator failover while healthy and with the agent alive asks for a graceful takeover', () => {
    const d = run({ phase: 'normal', knownEpoch: 6 }, obs({ probe: okProbe, operator: 'failover', lease: seen(local(6, T0)), agentHeartbeatAt: T0 }), T0 + s(1));
    expect(d.action).toEqual({ kind: 'request-graceful-takeover', epoch: 6 });
    expect(d.reason).toBe(
      "requested a graceful takeover from local at epoch 6 because the operator requested a failover while the agent is alive (the agent's last heartbeat is 1 s old)",
    );
  });
});

describe('lost answers', () => {
  it('a promotion whose answer was lost is picked up from the lease at exactly the next epoch', () => {
    const d = run(failingOver(), obs({ lease: seen(cloud(7)) }), T0 + s(40));
    expect(d.action).toEqual({ kind: 'write-epoch-to-target', epoch: 7 });
    expect(d.reason).toBe(
      'the lease already shows cloud at epoch 7, the epoch this failover was taking; continuing: wrote epoch 7 into the target before making it writable, so it refuses batches of older epochs',
    );
    expect(d.next).toMatchObject({ phase: 'failing-over', epoch: 7, step: 'set-sequences' });
  });

  it('a cloud lease at any other epoch halts instead', () => {
    expect(run(failingOver(), obs({ lease: seen(cloud(9)) }), T0 + s(40)).reason).toMatch(
      /^halted: the lease was taken by cloud at epoch 9 by someone else while this controller was about to fail over/,
    );
  });

  it('a handover whose answer was lost is picked up from the lease', () => {
    const st: ControllerState = { phase: 'failing-back', knownEpoch: 7, epoch: 7, step: 'hand-lease', startedAt: T0 };
    const d = run(st, obs({ lease: seen(renewedLocal(8)) }), T0 + s(1));
    expect(d.action).toEqual({ kind: 'switch-traffic-to-local', epoch: 8 });
    expect(d.reason).toBe('the lease already shows local at epoch 8, as this failback was handing it over; continuing: pointed traffic back at local (epoch 8)');
  });
});

describe('what a blind controller may do', () => {
  it('the passive actions are exactly the ones that change nothing outside the controller', () => {
    expect([...PASSIVE_ACTIONS].sort()).toEqual(['halt', 'none', 'record-probe', 'wait-for-drain', 'wait-for-marker']);
  });
});
