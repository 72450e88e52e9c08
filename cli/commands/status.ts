// `lifeboat status [--json]`: where the system stands: mode, the controller's
// phase, the lease {holder, epoch, expiresAt}, lag {seconds, bytes}, stream
// {lastPublishedLsn, lastAppliedLsn, halted}, and the last events with their
// reason sentences. Each part that cannot be read says why instead of
// failing the whole report.
import { parseArgs } from 'node:util';
import { describeError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { lsnDiffBytes, parseLsn } from '../../core/lsn.ts';
import { readStreamState } from '../../functions/apply-engine.ts';
import { connectControlStores } from '../../functions/control-plane.ts';
import { readStatus } from '../../functions/status-function.ts';
import pg from 'pg';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';
import { operatorContext } from '../operator-context.ts';

const HELP = `Usage: lifeboat status [--events N] [--config FILE] [--json]

Shows the mode, the failover controller's phase, the writer lease (holder,
epoch, expiry), replication lag in seconds and bytes, the stream positions
(last published by the agent, last applied on the standby, halted or not)
and the last events with the sentence that explains each decision.

In local mode (npm start) no flag is needed.

Options:
  --events N     how many recent events to show (default 10)
  --config FILE  the config (default: $LIFEBOAT_CONFIG, the running local
                 system's, else ./lifeboat.yaml)
  --json         print everything as JSON
  -h, --help     show this help
`;

interface AgentView {
  readonly positions?: { readonly publishedLsn?: string | null; readonly confirmedLsn?: string | null };
  readonly phase?: string;
  readonly reason?: string;
}

async function agentStatus(host: string, port: number): Promise<AgentView | { error: string }> {
  try {
    const res = await fetch(`http://${host}:${port}/status`, { signal: AbortSignal.timeout(2_000) });
    if (!res.ok) return { error: `the agent's /status answered HTTP ${res.status}` };
    return (await res.json()) as AgentView;
  } catch (err) {
    return { error: `the agent's /status on ${host}:${port} does not answer (${describeError(err)})` };
  }
}

export const statusCommand: CliCommand = {
  path: ['status'],
  summary: 'mode, lease, lag, stream positions and the last events',
  help: HELP,
  async run(argv, env, io) {
    let values: { events?: string; config?: string; json?: boolean };
    try {
      values = parseArgs({ args: [...argv], options: { events: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' } }, strict: true }).values;
    } catch (err) {
      io.stderr(`lifeboat status: ${(err as Error).message}. Run \`lifeboat status --help\`.\n`);
      return EXIT_USAGE;
    }
    const events = values.events === undefined ? 10 : Number(values.events);
    if (!Number.isInteger(events) || events < 1 || events > 500) {
      io.stderr(`lifeboat status: --events ${values.events} must be a whole number from 1 to 500.\n`);
      return EXIT_USAGE;
    }
    let close: (() => Promise<unknown>)[] = [];
    try {
      const ctx = operatorContext(values.config, env, io.cwd);
      const { config } = ctx;
      const { firestore, lease, store } = connectControlStores({ config, baseDir: ctx.baseDir, env: ctx.env, logger: createLogger({ component: 'status', sink: () => {} }) });
      close.push(() => Promise.race([firestore.terminate(), new Promise((r) => setTimeout(r, 2_000))]));
      const pool = config.target.databaseUrl ? new pg.Pool({ connectionString: config.target.databaseUrl, max: 1, connectionTimeoutMillis: 5_000 }) : undefined;
      if (pool) close.push(() => pool.end());
      const streamState = async () => {
        if (!pool) throw new Error('target.databaseUrl is not set here');
        const c = await pool.connect();
        try {
          return await readStreamState(c, config.stream);
        } finally {
          c.release();
        }
      };
      const [doc, agent] = await Promise.all([
        readStatus({ stream: config.stream, mode: config.mode, store, lease, streamState }, events),
        agentStatus(config.agent.httpHost, config.agent.httpPort),
      ]);
      const applied = doc.target && !('error' in doc.target) ? doc.target.appliedLsn : null;
      const published = 'error' in agent ? null : (agent.positions?.publishedLsn ?? null);
      const lagBytes = applied && published ? Math.max(0, Number(lsnDiffBytes(parseLsn(published), parseLsn(applied)))) : null;
      const lagSeconds = doc.target && !('error' in doc.target) ? doc.target.lagSeconds : null;
      const report = {
        ...doc,
        lag: { seconds: lagSeconds, bytes: lagBytes },
        stream: {
          lastPublishedLsn: published,
          lastAppliedLsn: applied,
          halted: doc.target && !('error' in doc.target) ? doc.target.halted : null,
        },
        agent,
      };
      if (values.json) {
        io.stdout(`${JSON.stringify(report, null, 2)}\n`);
        return EXIT_OK;
      }
      const lines: string[] = [];
      lines.push(`mode ${doc.mode}, stream ${doc.stream}: ${doc.phase}`);
      if (doc.lease === null) lines.push('lease: none yet (the agent has never held it)');
      else if ('error' in doc.lease) lines.push(`lease: unreadable: ${doc.lease.error}`);
      else lines.push(`lease: ${doc.lease.holder} at epoch ${doc.lease.epoch}, expires ${doc.lease.expiresAt}${doc.lease.releasedAt ? `, released at ${doc.lease.releasedAt} (marker ${doc.lease.markerLsn})` : ''}`);
      if (doc.target === null) lines.push('standby: nothing applied yet');
      else if ('error' in doc.target) lines.push(`standby: unreadable: ${doc.target.error}`);
      else {
        lines.push(
          `standby: applied up to ${doc.target.appliedLsn ?? '-'} at ${doc.target.appliedAt ?? '-'}; fencing epoch ${doc.target.fencingEpoch}${doc.target.halted ? `; HALTED: ${doc.target.halt?.reason}` : ''}`,
        );
      }
      lines.push(`lag: ${lagSeconds === null ? '?' : `${lagSeconds.toFixed(1)} s`}, ${lagBytes === null ? '? bytes' : `${lagBytes} bytes`}`);
      lines.push('error' in agent ? `agent: ${agent.error}` : `agent: ${agent.phase ?? '?'}: ${agent.reason ?? ''}; published up to ${published ?? '-'}`);
      lines.push('last events:');
      if ('error' in doc.decisions) lines.push(`  unreadable: ${doc.decisions.error}`);
      else for (const d of doc.decisions) if (d.kind === 'decision') lines.push(`  ${d.at} [${d.phase} → ${d.nextPhase}] ${d.reason}`);
      io.stdout(`${lines.join('\n')}\n`);
      return EXIT_OK;
    } catch (err) {
      io.stderr(`lifeboat status: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    } finally {
      for (const c of close.reverse()) await c().catch(() => undefined);
      close = [];
    }
  },
};
