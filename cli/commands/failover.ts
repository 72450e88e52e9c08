// `lifeboat failover [--dry-run]`: the manual failover. It stores the
// operator's request in the control record and drives the controller's
// cycles from here (the same decisions and steps as the probe function) until
// the cloud serves, the controller halts, or the timeout. With --dry-run it
// prints the decision and its reason and changes nothing.
import { parseArgs } from 'node:util';
import { describeError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { buildControlPlane, createCloudRunner } from '../../functions/control-plane.ts';
import type { CycleReport, FailoverRunner } from '../../functions/failover-runner.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand, type CliIo } from '../command.ts';
import { operatorContext } from '../operator-context.ts';

const HELP = `Usage: lifeboat failover [--dry-run] [--timeout SECONDS] [--config FILE] [--json]

Moves the app to the cloud standby now, through the same controller as an
automatic failover: with the agent alive it asks for a graceful takeover (the
local side fences itself and drains: no acknowledged change is lost);
otherwise it waits for the lease to expire, then promotes the cloud at a new
epoch, makes the cloud database writable for the app, warms the cloud copy
and points traffic at it. Each step is printed with the sentence that
explains it, and stored in the audit trail.

In local mode (npm start) no flag is needed: the running system is found
through .lifeboat/local.json.

Options:
  --dry-run          print the decision and its reason; change nothing
  --timeout SECONDS  give up waiting after this long (default 300); the
                     request stays stored and the probe function goes on
  --config FILE      the config (default: $LIFEBOAT_CONFIG, the running local
                     system's, else ./lifeboat.yaml)
  --json             print the result as JSON
  -h, --help         show this help
`;

export interface DriveOptions {
  /** After each cycle: stop here? */
  readonly done: (r: CycleReport) => boolean | Promise<boolean>;
  readonly timeoutMs: number;
  readonly recheckMs: number;
  readonly print: (r: CycleReport) => void;
  readonly signal?: AbortSignal;
}

/** Runs cycles until `done(report)`, a halt, a step that belongs elsewhere, or the timeout. */
export async function driveCycles(runner: Pick<FailoverRunner, 'cycle'>, o: DriveOptions): Promise<{ reports: CycleReport[]; phase: string; ended: 'done' | 'halted' | 'deferred' | 'timeout' | 'cancelled' }> {
  const deadline = Date.now() + o.timeoutMs;
  const reports: CycleReport[] = [];
  let phase = 'unknown';
  for (;;) {
    if (o.signal?.aborted) return { reports, phase, ended: 'cancelled' };
    const r = await runner.cycle();
    reports.push(r);
    phase = r.nextPhase;
    o.print(r);
    if (await o.done(r)) return { reports, phase, ended: 'done' };
    if (phase === 'halted' || r.decision?.action.kind === 'halt') return { reports, phase, ended: 'halted' };
    if (r.outcome === 'deferred') return { reports, phase, ended: 'deferred' };
    if (Date.now() > deadline) return { reports, phase, ended: 'timeout' };
    const kind = r.decision?.action.kind ?? 'none';
    const acted = r.outcome === 'ok' && !['none', 'record-probe', 'wait-for-marker', 'wait-for-drain'].includes(kind);
    const wait = acted ? 0 : r.outcome === 'skipped' ? 500 : o.recheckMs;
    if (wait > 0) await new Promise((res) => setTimeout(res, wait));
  }
}

export function printCycle(io: CliIo, json: boolean): (r: CycleReport) => void {
  return (r) => {
    if (!json) io.stdout(`[${r.phase} → ${r.nextPhase}] ${r.sentence}\n`);
  };
}

export const failoverCommand: CliCommand = {
  path: ['failover'],
  summary: 'move the app to the cloud standby now (--dry-run: show the decision only)',
  help: HELP,
  async run(argv, env, io) {
    let values: { 'dry-run'?: boolean; timeout?: string; config?: string; json?: boolean };
    try {
      values = parseArgs({ args: [...argv], options: { 'dry-run': { type: 'boolean' }, timeout: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' } }, strict: true }).values;
    } catch (err) {
      io.stderr(`lifeboat failover: ${(err as Error).message}. Run \`lifeboat failover --help\`.\n`);
      return EXIT_USAGE;
    }
    const timeoutS = values.timeout === undefined ? 300 : Number(values.timeout);
    if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
      io.stderr(`lifeboat failover: --timeout ${values.timeout} is not a positive number of seconds.\n`);
      return EXIT_USAGE;
    }
    let plane;
    try {
      const ctx = operatorContext(values.config, env, io.cwd);
      const { config } = ctx;
      const logger = createLogger({ component: 'failover', fields: { stream: config.stream }, sink: () => {} });
      plane = buildControlPlane({ config, baseDir: ctx.baseDir, env: ctx.env, logger });
      const runner = createCloudRunner(plane, config, `lifeboat failover (${ctx.who})`, logger);
      if (values['dry-run']) {
        const d = await runner.dryRun('failover');
        if (values.json) io.stdout(`${JSON.stringify({ dryRun: true, action: d.action, reason: d.reason, nextPhase: d.next.phase }, null, 2)}\n`);
        else io.stdout(`dry run, nothing changed: would ${d.action.kind === 'none' ? 'do nothing' : `run ${d.action.kind}`}: ${d.reason}\n`);
        return EXIT_OK;
      }
      const before = (await runner.record()).state.phase;
      if (before !== 'normal' && before !== 'suspect') {
        io.stderr(`lifeboat failover: nothing to do: the controller is ${before}, not normal. \`lifeboat status\` shows why.\n`);
        return EXIT_FAILURE;
      }
      await runner.requestOperator('failover', ctx.who);
      const result = await driveCycles(runner, {
        done: (r) => r.nextPhase === 'failed-over',
        timeoutMs: timeoutS * 1000,
        recheckMs: config.probe.recheckIntervalSeconds * 1000,
        print: printCycle(io, values.json ?? false),
      });
      const lease = await plane.lease.read();
      if (values.json) {
        io.stdout(`${JSON.stringify({ ended: result.ended, phase: result.phase, lease: lease?.lease ?? null, steps: result.reports.map((r) => ({ outcome: r.outcome, action: r.decision?.action.kind ?? 'none', sentence: r.sentence })) }, null, 2)}\n`);
      } else if (result.ended === 'done') {
        io.stdout(`the cloud serves at epoch ${lease?.lease.epoch ?? '?'}; run \`lifeboat failback\` on the local side when it is ready.\n`);
      } else {
        io.stderr(`lifeboat failover: stopped (${result.ended}) while ${result.phase}; the request stays stored and the probe function carries on. \`lifeboat status\` shows where it stands.\n`);
      }
      return result.ended === 'done' ? EXIT_OK : EXIT_FAILURE;
    } catch (err) {
      io.stderr(`lifeboat failover: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    } finally {
      await plane?.close();
    }
  },
};
