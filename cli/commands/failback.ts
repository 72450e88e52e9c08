// `lifeboat failback`: brings the app home, run on the local side (it needs
// the local database). It drives the controller's cycles with the local steps
// (stranded tail, reverse sync, verify, forward streaming) and the cloud steps
// (fence, traffic, scaler, events) until local serves again.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { resolveStateDir } from '../../agent/agent-state.ts';
import { createFailbackSide } from '../../agent/failback-steps.ts';
import { createFsObjectStore } from '../../adapters/object-store-fs.ts';
import { createGcsObjectStore } from '../../adapters/object-store-gcs.ts';
import { describeError, PermanentError } from '../../core/errors.ts';
import type { Lease } from '../../core/writer-lease.ts';
import { createLogger } from '../../core/log.ts';
import { buildControlPlane } from '../../functions/control-plane.ts';
import { FailoverRunner, type CycleReport } from '../../functions/failover-runner.ts';
import { createHttpHealthProbe } from '../../functions/health-probe.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';
import { operatorContext, type OperatorContext } from '../operator-context.ts';
import { driveCycles, printCycle } from './failover.ts';

const HELP = `Usage: lifeboat failback [--timeout SECONDS] [--config FILE] [--json]

Brings the app back to the local side after a failover. Run it where the
agent runs: it needs the local database. In order:

  1. saves the stranded tail: local transactions the cloud never applied,
     as a JSON and a SQL report in object storage (never applied for you);
  2. reverse sync: rebuilds the local database from the cloud, then streams
     the cloud's new changes to it;
  3. verifies per-table row counts and checksums on both sides;
  4. fences the cloud (epoch + 1, app role read-only), drains, prepares
     forward streaming on a new slot, hands the lease to local, points
     traffic home and scales the cloud copy to zero.

Each step is printed with its reason and kept in the audit trail. If it stops
(a difference found, the policy hook's veto, a timeout), run it again.

Options:
  --timeout SECONDS  give up after this long (default 900)
  --config FILE      the config (default: $LIFEBOAT_CONFIG, the running local
                     system's, else ./lifeboat.yaml)
  --json             print the result as JSON
  -h, --help         show this help
`;

export const failbackCommand: CliCommand = {
  path: ['failback'],
  summary: 'bring the app back to the local side (run where the agent runs)',
  help: HELP,
  async run(argv, env, io) {
    let values: { timeout?: string; config?: string; json?: boolean };
    try {
      values = parseArgs({ args: [...argv], options: { timeout: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' } }, strict: true }).values;
    } catch (err) {
      io.stderr(`lifeboat failback: ${(err as Error).message}. Run \`lifeboat failback --help\`.\n`);
      return EXIT_USAGE;
    }
    const timeoutS = values.timeout === undefined ? 900 : Number(values.timeout);
    if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
      io.stderr(`lifeboat failback: --timeout ${values.timeout} is not a positive number of seconds.\n`);
      return EXIT_USAGE;
    }
    try {
      const ctx = operatorContext(values.config, env, io.cwd);
      const result = await runFailback(ctx, { timeoutMs: timeoutS * 1000, print: printCycle(io, values.json ?? false), note: (t) => io.stdout(`${t}\n`) });
      if (result.ended === 'nothing-to-do') {
        io.stderr(`lifeboat failback: nothing to do: the controller is ${result.phase}, not failed over. \`lifeboat status\` shows why.\n`);
        return EXIT_FAILURE;
      }
      if (values.json) {
        io.stdout(`${JSON.stringify({ ended: result.ended, phase: result.phase, lease: result.lease, steps: result.reports.map((r) => ({ outcome: r.outcome, action: r.decision?.action.kind ?? 'none', sentence: r.sentence })) }, null, 2)}\n`);
      } else if (result.ended === 'done') {
        io.stdout(`local serves again at epoch ${result.lease?.epoch ?? '?'}; forward replication resumes when the agent holds the lease.\n`);
      } else {
        io.stderr(`lifeboat failback: stopped (${result.ended}) while ${result.phase}. Run it again to continue; \`lifeboat status\` shows why.\n`);
      }
      return result.ended === 'done' ? EXIT_OK : EXIT_FAILURE;
    } catch (err) {
      io.stderr(`lifeboat failback: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    }
  },
};

export interface FailbackRun {
  readonly ended: 'done' | 'halted' | 'deferred' | 'timeout' | 'cancelled' | 'nothing-to-do';
  readonly phase: string;
  readonly lease: Lease | null;
  readonly reports: readonly CycleReport[];
}

/**
 * The failback, from wherever the controller stands: asks for it when failed
 * over, picks up one left in the middle (starting reverse sync again), then
 * drives the cycles until local serves (or, with untilHandedOver, until local
 * holds the lease). Used by `lifeboat failback` and, with failover.failback =
 * auto, by the agent when it finds the cloud serving.
 */
export async function runFailback(
  ctx: OperatorContext,
  o: { readonly timeoutMs: number; readonly print: (r: CycleReport) => void; readonly note: (line: string) => void; readonly signal?: AbortSignal; readonly requestedBy?: string; readonly untilHandedOver?: boolean },
): Promise<FailbackRun> {
  const { config } = ctx;
  if (!config.source.databaseUrl || !config.target.databaseUrl) {
    throw new PermanentError('source.databaseUrl and target.databaseUrl must both be set: failback reads and writes both databases.', {
      remedy: 'Set both in lifeboat.yaml or LIFEBOAT_SOURCE_DATABASE_URL / LIFEBOAT_TARGET_DATABASE_URL.',
    });
  }
  const logger = createLogger({ component: 'failback', fields: { stream: config.stream }, sink: () => {} });
  const plane = buildControlPlane({ config, baseDir: ctx.baseDir, env: ctx.env, logger });
  const objectStore =
    config.mode === 'cloud' && config.storage.bucket
      ? createGcsObjectStore({ bucket: config.storage.bucket, projectId: config.project })
      : createFsObjectStore(resolve(ctx.baseDir, config.storage.localDir));
  const side = createFailbackSide({
    config,
    localUrl: config.source.databaseUrl,
    cloudUrl: config.target.databaseUrl,
    stateDir: resolveStateDir({ config, baseDir: ctx.baseDir, env: ctx.env }),
    objectStore,
    ...(config.probe.healthUrl !== undefined && { appHealth: createHttpHealthProbe({ url: config.probe.healthUrl, timeoutMs: config.probe.timeoutMs }) }),
    logger,
  });
  try {
    const runner = new FailoverRunner({
      stream: config.stream,
      runner: `lifeboat failback (${o.requestedBy ?? ctx.who})`,
      settings: config,
      store: plane.store,
      lease: plane.lease,
      target: plane.target,
      localHealth: () => side.localHealth(),
      steps: { ...plane.cloudSteps, ...side.steps },
      logger,
    });
    const state = (await runner.record()).state;
    if (state.phase === 'failed-over') {
      await runner.requestOperator('failback', o.requestedBy ?? ctx.who);
    } else if ((state.phase === 'recovering' && state.step !== 'start-reverse-sync') || (state.phase === 'failing-back' && state.step === 'drain')) {
      // A failback that an earlier run left in the middle: its reverse sync died with it.
      o.note(`resuming a failback left ${state.phase} (${state.step}): starting reverse sync again`);
      await side.restartReverseSync(state.epoch);
    } else if (state.phase !== 'recovering' && state.phase !== 'failing-back') {
      return { ended: 'nothing-to-do', phase: state.phase, lease: (await plane.lease.read())?.lease ?? null, reports: [] };
    }
    // The agent stops once the lease is home: it must take it (and lift the fence) before traffic can follow,
    // and the probe function finishes the remaining steps.
    const done = async (r: CycleReport) => r.nextPhase === 'normal' || (o.untilHandedOver === true && (await plane.lease.read())?.lease.holder === 'local');
    const result = await driveCycles(runner, { done, timeoutMs: o.timeoutMs, recheckMs: 1000, print: o.print, ...(o.signal && { signal: o.signal }) });
    return { ...result, lease: (await plane.lease.read())?.lease ?? null };
  } finally {
    await side.close().catch(() => undefined);
    await plane.close();
  }
}
