import { describe, expect, it } from 'vitest';
import type { Action } from '../../core/failover-controller.ts';
import type { CycleReport } from '../../functions/failover-runner.ts';
import { runProbeSession } from '../../functions/probe-session.ts';

function report(kind: Action['kind'], nextPhase: string, extra: Partial<CycleReport> & { recheckInMs?: number } = {}): CycleReport {
  const { recheckInMs, ...rest } = extra;
  return {
    outcome: 'ok',
    sentence: `${kind} → ${nextPhase}`,
    phase: 'x',
    nextPhase,
    decision: { action: { kind } as Action, reason: kind, next: { phase: 'normal', knownEpoch: 1 }, ...(recheckInMs !== undefined && { recheckInMs }) },
    ...rest,
  };
}

/** Plays scripted cycles with a fake clock; records the waits. */
async function play(script: CycleReport[], opts: { continuous?: boolean; budgetMs?: number } = {}) {
  let now = 0;
  const waits: number[] = [];
  let i = 0;
  const result = await runProbeSession(
    { cycle: async () => script[Math.min(i++, script.length - 1)]! },
    {
      recheckIntervalMs: 5000,
      continuous: opts.continuous ?? false,
      budgetMs: opts.budgetMs ?? 55_000,
      clock: () => now,
      sleep: async (ms) => {
        waits.push(ms);
        now += ms;
      },
    },
  );
  return { ...result, waits, played: i };
}

describe('runProbeSession', () => {
  it('probes once per run while all is well', async () => {
    const r = await play([report('record-probe', 'normal')]);
    expect(r.played).toBe(1);
    expect(r.stopped).toBe('nothing more to do this run; normal');
  });

  it('rechecks within the run after a failure and runs failover steps back to back', async () => {
    const r = await play([
      report('record-probe', 'suspect', { recheckInMs: 5000 }),
      report('record-probe', 'suspect', { recheckInMs: 5000 }),
      report('promote-cloud', 'failing-over'),
      report('write-epoch-to-target', 'failing-over'),
      report('switch-traffic-to-cloud', 'failing-over'),
      report('record-event', 'failed-over'),
      report('none', 'failed-over'),
    ]);
    expect(r.waits).toEqual([5000, 5000]); // the steps after promotion follow without a pause
    expect(r.played).toBe(6);
    expect(r.phase).toBe('failed-over');
  });

  it('keeps probing through the run when continuous, within the budget', async () => {
    const r = await play([report('record-probe', 'normal')], { continuous: true, budgetMs: 55_000 });
    expect(r.played).toBe(11);
    expect(r.stopped).toMatch(/time budget of 55 s is used up/);
  });

  it('waits between cycles while waiting for the lease, and stops when another run decides or a step is deferred', async () => {
    expect((await play([report('none', 'failing-over'), { outcome: 'skipped', sentence: 's', phase: 'x', nextPhase: 'failing-over' }])).stopped).toBe('another run is deciding');
    const d = await play([{ ...report('save-stranded-tail', 'failed-over'), outcome: 'deferred' }]);
    expect(d.stopped).toBe('the next step runs elsewhere');
  });

  it('retries a failed step after the recheck interval and stops on halt', async () => {
    const r = await play([{ ...report('make-cloud-writable', 'failing-over'), outcome: 'failed' }, report('halt', 'halted')]);
    expect(r.waits).toEqual([5000]);
    expect(r.stopped).toBe('the controller halted');
  });
});
