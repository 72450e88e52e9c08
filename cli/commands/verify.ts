// `lifeboat verify [--json]`: per table, the row count and checksum on each
// side and whether they match (agent/table-verify.ts). Progress per table on
// stderr, so big databases show where it is.
import { parseArgs } from 'node:util';
import pg from 'pg';
import { verifyTables } from '../../agent/table-verify.ts';
import { describeError } from '../../core/errors.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';
import { operatorContext } from '../operator-context.ts';

const HELP = `Usage: lifeboat verify [--config FILE] [--json]

Compares every user table of the local database and the standby: row count
and an order-independent checksum of every row (columns by name), one
sequential scan per table and side. Exits 0 when all match, 1 when any table
differs or exists on one side only.

While replication runs, rows still in flight make a busy table differ for a
moment: run it again, or stop writes first for an exact answer.

Options:
  --config FILE  the config (default: $LIFEBOAT_CONFIG, the running local
                 system's, else ./lifeboat.yaml)
  --json         print the result as JSON
  -h, --help     show this help
`;

export const verifyCommand: CliCommand = {
  path: ['verify'],
  summary: 'compare row counts and checksums per table on both sides',
  help: HELP,
  async run(argv, env, io) {
    let values: { config?: string; json?: boolean };
    try {
      values = parseArgs({ args: [...argv], options: { config: { type: 'string' }, json: { type: 'boolean' } }, strict: true }).values;
    } catch (err) {
      io.stderr(`lifeboat verify: ${(err as Error).message}. Run \`lifeboat verify --help\`.\n`);
      return EXIT_USAGE;
    }
    const clients: pg.Client[] = [];
    try {
      const { config } = operatorContext(values.config, env, io.cwd);
      if (!config.source.databaseUrl || !config.target.databaseUrl) {
        io.stderr('lifeboat verify: source.databaseUrl and target.databaseUrl must both be set: verify reads both databases.\n');
        return EXIT_FAILURE;
      }
      for (const url of [config.source.databaseUrl, config.target.databaseUrl]) {
        const c = new pg.Client({ connectionString: url, application_name: 'lifeboat-verify' });
        clients.push(c);
        await c.connect();
      }
      const started = Date.now();
      const result = await verifyTables(clients[0]!, clients[1]!, {
        onTable: (t, done, total) => {
          if (!values.json) io.stderr(`verify: ${done}/${total} ${t.table} ${t.match ? 'ok' : 'DIFFERS'} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
        },
      });
      if (values.json) {
        io.stdout(`${JSON.stringify({ equal: result.equal, detail: result.detail, tables: result.tables }, null, 2)}\n`);
      } else {
        const width = Math.max(5, ...result.tables.map((t) => t.table.length));
        io.stdout(`${'table'.padEnd(width)}  ${'local rows'.padStart(12)}  ${'cloud rows'.padStart(12)}  match\n`);
        for (const t of result.tables) {
          io.stdout(`${t.table.padEnd(width)}  ${String(t.local?.rows ?? '-').padStart(12)}  ${String(t.cloud?.rows ?? '-').padStart(12)}  ${t.match ? 'yes' : 'NO'}\n`);
        }
        io.stdout(`${result.detail}\n`);
      }
      return result.equal ? EXIT_OK : EXIT_FAILURE;
    } catch (err) {
      io.stderr(`lifeboat verify: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    } finally {
      for (const c of clients) await c.end().catch(() => undefined);
    }
  },
};
