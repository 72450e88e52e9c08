// The probe function, as a thin entry point: Cloud Scheduler calls it every
// minute; it runs one probe session (functions/probe-session.ts) and answers
// with the sentences of its cycles. A control record or lease store that
// cannot be read at all is a 500: the scheduler calls again next minute, and
// nothing was promoted (fail closed).
import { describeError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { FailoverRunner } from './failover-runner.ts';
import { runProbeSession, type ProbeSessionOptions } from './probe-session.ts';

export interface ProbeHandlerDeps {
  readonly runner: () => FailoverRunner;
  readonly session: Omit<ProbeSessionOptions, 'signal'>;
  readonly logger: Logger;
}

interface Res {
  status(code: number): Res;
  set(name: string, value: string): Res;
  send(body: string): unknown;
}

export function createProbeHandler(deps: ProbeHandlerDeps) {
  return async (_req: unknown, res: Res): Promise<void> => {
    try {
      const report = await runProbeSession(deps.runner(), deps.session);
      const body = {
        phase: report.phase,
        stopped: report.stopped,
        cycles: report.cycles.map((c) => ({ outcome: c.outcome, phase: c.phase, nextPhase: c.nextPhase, action: c.decision?.action.kind ?? 'none', sentence: c.sentence })),
      };
      res.status(200).set('content-type', 'application/json').send(JSON.stringify(body, null, 2));
    } catch (err) {
      deps.logger.error('the probe run failed before deciding anything; nothing was changed', { error: err });
      res.status(500).set('content-type', 'application/json').send(JSON.stringify({ error: describeError(err) }));
    }
  };
}
