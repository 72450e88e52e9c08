// One scheduler run of the probe function: cycles of the failover runner
// within the run's time budget.
//
// - All well: one probe per run (idle cost stays low), unless probe.continuous.
// - A failed probe: the decision asks for a recheck in recheckIntervalSeconds,
//   so confirmation happens within this run, not at the next minute.
// - A failover step that succeeded: the next step runs at once, so that the
//   decision → traffic switch path is not paced by the scheduler.
// - Waiting (lease expiry, marker, drain): cycles every recheck interval.
// - Another run holds the cycle, or the step belongs to another runner: stop.
import { sleep as abortableSleep } from '../core/backoff.ts';
import { PASSIVE_ACTIONS } from '../core/failover-controller.ts';
import type { CycleReport, FailoverRunner } from './failover-runner.ts';

export interface ProbeSessionOptions {
  readonly recheckIntervalMs: number;
  readonly continuous: boolean;
  /** Stop starting cycles after this long (leave room before the function's timeout). */
  readonly budgetMs: number;
  readonly clock?: () => number;
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly signal?: AbortSignal;
}

export interface ProbeSessionReport {
  readonly cycles: readonly CycleReport[];
  /** Why the run stopped. */
  readonly stopped: string;
  readonly phase: string;
}

const IN_PROGRESS = new Set(['failing-over', 'recovering', 'failing-back']);

export async function runProbeSession(runner: Pick<FailoverRunner, 'cycle'>, opts: ProbeSessionOptions): Promise<ProbeSessionReport> {
  const clock = opts.clock ?? Date.now;
  const sleep = opts.sleep ?? abortableSleep;
  const started = clock();
  const cycles: CycleReport[] = [];
  for (;;) {
    if (opts.signal?.aborted) return done('the run was cancelled');
    const r = await runner.cycle();
    cycles.push(r);
    let wait: number;
    if (r.outcome === 'skipped') return done('another run is deciding');
    if (r.outcome === 'deferred') return done('the next step runs elsewhere');
    const kind = r.decision?.action.kind ?? 'none';
    const acted = r.outcome === 'ok' && !PASSIVE_ACTIONS.has(kind) && kind !== 'record-probe';
    if (kind === 'halt' || r.nextPhase === 'halted') return done('the controller halted');
    if (acted && IN_PROGRESS.has(r.nextPhase)) wait = 0;
    else if (r.decision?.recheckInMs !== undefined) wait = r.decision.recheckInMs;
    else if (IN_PROGRESS.has(r.nextPhase) || r.nextPhase === 'suspect' || r.outcome === 'failed') wait = opts.recheckIntervalMs;
    else if (opts.continuous && r.nextPhase === 'normal') wait = opts.recheckIntervalMs;
    else return done(acted ? `the step is done; ${r.nextPhase}` : `nothing more to do this run; ${r.nextPhase}`);
    if (clock() + wait - started >= opts.budgetMs) return done(`the run's time budget of ${Math.round(opts.budgetMs / 1000)} s is used up`);
    if (wait > 0) {
      try {
        await sleep(wait, opts.signal);
      } catch {
        return done('the run was cancelled');
      }
    }
  }
  function done(stopped: string): ProbeSessionReport {
    return { cycles, stopped, phase: cycles.at(-1)?.nextPhase ?? 'unknown' };
  }
}
