// `lifeboat local` (= `npm start`): the whole system on this machine, on
// embedded defaults (local/local-system.ts). Prints progress while it starts,
// then the URLs; Ctrl-C stops everything and leaves no process behind. A
// second start reuses the clusters and their data in the data directory.
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { describeError } from '../../core/errors.ts';
import { startLocalSystem } from '../../local/local-system.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';

const HELP = `Usage: lifeboat local [--data-dir DIR] [--local-url URL] [--cloud-url URL] [--database NAME] [--router-port N] [--json]

Runs the whole system on this machine, with nothing to configure: a local and
a cloud PostgreSQL (made with initdb in the data directory, or existing ones
given by URL), the Pub/Sub and Firestore emulators, the apply, probe and
status functions on localhost, a scheduler loop calling the probe, the agent,
a demo to-do app (a local copy, and a cloud copy started on failover) and a
traffic router that stands in for DNS.

When ready it prints the URLs and writes DIR/local.json, which the other
commands (status, verify, failover, failback) read. Components that die are
restarted. Ctrl-C stops everything.

Options:
  --data-dir DIR    where clusters, logs and state live (default .lifeboat)
  --local-url URL   use this running PostgreSQL as the local side (a superuser URL)
  --cloud-url URL   use this running PostgreSQL as the cloud side (a superuser URL)
  --database NAME   the replicated database, created on both sides if missing (default app)
  --router-port N   port of the traffic router (default 8080; 0 = any free port)
  --json            print local.json when ready instead of the summary
  -h, --help        show this help
`;

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export const localCommand: CliCommand = {
  path: ['local'],
  summary: 'run the whole system on this machine (what `npm start` runs)',
  help: HELP,
  async run(argv, env, io) {
    let values: { 'data-dir'?: string; 'local-url'?: string; 'cloud-url'?: string; database?: string; 'router-port'?: string; json?: boolean };
    try {
      values = parseArgs({
        args: [...argv],
        options: { 'data-dir': { type: 'string' }, 'local-url': { type: 'string' }, 'cloud-url': { type: 'string' }, database: { type: 'string' }, 'router-port': { type: 'string' }, json: { type: 'boolean' } },
        strict: true,
      }).values;
    } catch (err) {
      io.stderr(`lifeboat local: ${(err as Error).message}. Run \`lifeboat local --help\`.\n`);
      return EXIT_USAGE;
    }
    const routerPort = values['router-port'] === undefined ? undefined : Number(values['router-port']);
    if (routerPort !== undefined && (!Number.isInteger(routerPort) || routerPort < 0 || routerPort > 65535)) {
      io.stderr(`lifeboat local: --router-port ${values['router-port']} is not a port (0 to 65535).\n`);
      return EXIT_USAGE;
    }
    if (values.database !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(values.database)) {
      io.stderr(`lifeboat local: --database ${values.database} is not a plain lower-case PostgreSQL name (letters, digits, _).\n`);
      return EXIT_USAGE;
    }
    const dir = resolve(io.cwd, values['data-dir'] ?? env.LIFEBOAT_STATE_DIR ?? '.lifeboat');
    const infoFile = resolve(dir, 'local.json');
    if (existsSync(infoFile)) {
      try {
        const pid = (JSON.parse(readFileSync(infoFile, 'utf8')) as { pid?: unknown }).pid;
        if (typeof pid === 'number' && pid !== process.pid && running(pid)) {
          io.stderr(`lifeboat local: a local system already runs from ${dir} (pid ${pid}). Stop it with Ctrl-C in its terminal, or use another --data-dir.\n`);
          return EXIT_FAILURE;
        }
      } catch {
        // An unreadable local.json is rewritten at start.
      }
    }
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    // on(), not once(): local-stack's own signal handler ends the process by re-raising the signal
    // when no other listener is left, which would cut the orderly stop short.
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      io.stderr(`lifeboat local: starting in ${dir}\n`);
      const sys = await startLocalSystem({
        dir,
        log: (line) => io.stderr(`${line}\n`),
        existing: {
          ...(values['local-url'] && { localAdminUrl: values['local-url'] }),
          ...(values['cloud-url'] && { cloudAdminUrl: values['cloud-url'] }),
          ...(values.database && { database: values.database }),
        },
        ...(routerPort !== undefined && { config: { dns: { routerPort } } }),
      });
      if (values.json) io.stdout(`${JSON.stringify(sys.info, null, 2)}\n`);
      else {
        io.stdout(
          [
            '',
            `  app (through the router)  ${sys.info.appUrl}`,
            `  status function           ${sys.info.statusUrl}`,
            `  agent status              ${sys.info.agentStatusUrl}`,
            `  local database            ${sys.info.localDatabaseUrl}`,
            `  cloud database            ${sys.info.cloudDatabaseUrl}`,
            `  logs                      ${resolve(dir, 'logs')}`,
            '',
            '  Try: lifeboat status, lifeboat failover --dry-run, lifeboat verify. Ctrl-C stops everything.',
            '',
          ].join('\n'),
        );
      }
      if (!stop.signal.aborted) await new Promise<void>((r) => stop.signal.addEventListener('abort', () => r(), { once: true }));
      io.stderr('lifeboat local: stopping\n');
      await sys.stop();
      io.stderr('lifeboat local: stopped; the data stays in the data directory for the next start\n');
      return EXIT_OK;
    } catch (err) {
      io.stderr(`lifeboat local: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};
