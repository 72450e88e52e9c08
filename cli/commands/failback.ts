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
import { describeError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { buildControlPlane } from '../../functions/control-plane.ts';
import { FailoverRunner } from '../../functions/failover-runner.ts';
import { createHttpHealthProbe } from '../../functions/health-probe.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';
import { operatorContext } from '../operator-context.ts';
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
    let plane: ReturnType<typeof buildControlPlane> | undefined;
    let side: ReturnType<typeof createFailbackSide> | undefined;
    try {
      const ctx = operatorContext(values.config, env, io.cwd);
      const { config } = ctx;
      if (!config.source.databaseUrl || !config.target.databaseUrl) {
        io.stderr('lifeboat failback: source.databaseUrl and target.databaseUrl must both be set: failback reads and writes both databases.\n');
        return EXIT_FAILURE;
      }
      const logger = createLogger({ component: 'failback', fields: { stream: config.stream }, sink: () => {} });
      plane = buildControlPlane({ config, baseDir: ctx.baseDir, env: ctx.env, logger });
      const objectStore =
        config.mode === 'cloud' && config.storage.bucket
          ? createGcsObjectStore({ bucket: config.storage.bucket, projectId: config.project })
          : createFsObjectStore(resolve(ctx.baseDir, config.storage.localDir));
      side = createFailbackSide({
        config,
        localUrl: config.source.databaseUrl,
        cloudUrl: config.target.databaseUrl,
        stateDir: resolveStateDir({ config, baseDir: ctx.baseDir, env: ctx.env }),
        objectStore,
        ...(config.probe.healthUrl !== undefined && { appHealth: createHttpHealthProbe({ url: config.probe.healthUrl, timeoutMs: config.probe.timeoutMs }) }),
        logger,
      });
      const runner = new FailoverRunner({
        stream: config.stream,
        runner: `lifeboat failback (${ctx.who})`,
        settings: config,
        store: plane.store,
        lease: plane.lease,
        target: plane.target,
        localHealth: () => side!.localHealth(),
        steps: { ...plane.cloudSteps, ...side.steps },
        logger,
      });
      const state = (await runner.record()).state;
      if (state.phase === 'failed-over') {
        await runner.requestOperator('failback', ctx.who);
      } else if ((state.phase === 'recovering' && state.step !== 'start-reverse-sync') || (state.phase === 'failing-back' && state.step === 'drain')) {
        // A failback that an earlier command left in the middle: its reverse sync died with it.
        io.stdout(`resuming a failback left ${state.phase} (${state.step}): starting reverse sync again\n`);
        await side.restartReverseSync(state.epoch);
      } else if (state.phase !== 'recovering' && state.phase !== 'failing-back') {
        io.stderr(`lifeboat failback: nothing to do: the controller is ${state.phase}, not failed over. \`lifeboat status\` shows why.\n`);
        return EXIT_FAILURE;
      }
      const result = await driveCycles(runner, {
        done: (p) => p === 'normal',
        timeoutMs: timeoutS * 1000,
        recheckMs: 1000,
        print: printCycle(io, values.json ?? false),
      });
      const lease = await plane.lease.read();
      if (values.json) {
        io.stdout(`${JSON.stringify({ ended: result.ended, phase: result.phase, lease: lease?.lease ?? null, steps: result.reports.map((r) => ({ outcome: r.outcome, action: r.decision?.action.kind ?? 'none', sentence: r.sentence })) }, null, 2)}\n`);
      } else if (result.ended === 'done') {
        io.stdout(`local serves again at epoch ${lease?.lease.epoch ?? '?'}; forward replication resumes when the agent holds the lease.\n`);
      } else {
        io.stderr(`lifeboat failback: stopped (${result.ended}) while ${result.phase}. Run it again to continue; \`lifeboat status\` shows why.\n`);
      }
      return result.ended === 'done' ? EXIT_OK : EXIT_FAILURE;
    } catch (err) {
      io.stderr(`lifeboat failback: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    } finally {
      await side?.close().catch(() => undefined);
      await plane?.close();
    }
  },
};
