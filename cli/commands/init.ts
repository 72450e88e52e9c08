// `lifeboat init`: writes a commented lifeboat.yaml (every setting, with its
// default and description: the bundled example) and prints what the local
// PostgreSQL needs for the agent: the server settings and the role's grants.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { REQUIRED_FREE_WAL_SENDERS, SPARE_REPLICATION_SLOTS } from '../../agent/source-setup.ts';
import { DEFAULT_CONFIG } from '../../core/config.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';

const EXAMPLE = new URL('../../lifeboat.example.yaml', import.meta.url);

const HELP = `Usage: lifeboat init [--force] [--file FILE] [--role NAME] [--database NAME] [--json]

Writes a commented lifeboat.yaml (every setting with its default and what it
does; the ones Google Cloud needs are marked) and prints the PostgreSQL
settings and grants the agent needs on the local database. It connects to
nothing and changes no database: run the printed SQL yourself.

Options:
  --file FILE      where to write (default ./lifeboat.yaml)
  --force          overwrite an existing file
  --role NAME      the agent's PostgreSQL role in the printed grants (default lifeboat_agent)
  --database NAME  the replicated database in the printed grants (default app)
  --json           print the file written and the SQL as JSON
  -h, --help       show this help
`;

const IDENT = /^[a-z_][a-z0-9_$]{0,62}$/;

/** The server settings and grants for the agent, as SQL to run as a superuser. */
export function agentSetupSql(role: string, database: string): { settings: string[]; grants: string[] } {
  const r = pg.escapeIdentifier(role);
  const d = pg.escapeIdentifier(database);
  return {
    settings: [
      'ALTER SYSTEM SET wal_level = logical;  -- needs a restart',
      `ALTER SYSTEM SET max_replication_slots = 10;  -- at least ${SPARE_REPLICATION_SLOTS} free for Lifeboat`,
      `ALTER SYSTEM SET max_wal_senders = 10;  -- at least ${REQUIRED_FREE_WAL_SENDERS} free for Lifeboat`,
      `ALTER SYSTEM SET max_slot_wal_keep_size = ${pg.escapeLiteral(DEFAULT_CONFIG.source.maxSlotWalKeepSize)};  -- protects the disk from a stalled slot`,
    ],
    grants: [
      `CREATE ROLE ${r} LOGIN REPLICATION PASSWORD '<choose one>';  -- logical replication`,
      `ALTER DATABASE ${d} OWNER TO ${r};  -- or run the agent as a superuser: it creates the publication, its lifeboat schema, and fences the database (ALTER DATABASE)`,
      `GRANT pg_signal_backend TO ${r};  -- fencing terminates the app's sessions`,
      `GRANT pg_read_all_data TO ${r};  -- the initial copy reads every table`,
    ],
  };
}

export const initCommand: CliCommand = {
  path: ['init'],
  summary: 'write a commented lifeboat.yaml and print the PostgreSQL settings and grants the agent needs',
  help: HELP,
  async run(argv, _env, io) {
    let values: { force?: boolean; file?: string; role?: string; database?: string; json?: boolean };
    try {
      values = parseArgs({ args: [...argv], options: { force: { type: 'boolean' }, file: { type: 'string' }, role: { type: 'string' }, database: { type: 'string' }, json: { type: 'boolean' } }, strict: true }).values;
    } catch (err) {
      io.stderr(`lifeboat init: ${(err as Error).message}. Run \`lifeboat init --help\`.\n`);
      return EXIT_USAGE;
    }
    for (const [flag, v] of [['--role', values.role], ['--database', values.database]] as const) {
      if (v !== undefined && !IDENT.test(v)) {
        io.stderr(`lifeboat init: ${flag} ${v} is not a plain lower-case PostgreSQL name (letters, digits, _ and $).\n`);
        return EXIT_USAGE;
      }
    }
    const file = resolve(io.cwd, values.file ?? 'lifeboat.yaml');
    if (existsSync(file) && !values.force) {
      io.stderr(`lifeboat init: ${file} exists; nothing was written. Use --force to overwrite it, or --file to write elsewhere.\n`);
      return EXIT_FAILURE;
    }
    writeFileSync(file, readFileSync(EXAMPLE, 'utf8'));
    const sql = agentSetupSql(values.role ?? 'lifeboat_agent', values.database ?? 'app');
    if (values.json) {
      io.stdout(`${JSON.stringify({ file, ...sql }, null, 2)}\n`);
      return EXIT_OK;
    }
    io.stdout(
      [
        `wrote ${file}: every setting with its default; check it with \`lifeboat config check\`.`,
        '',
        'On the local PostgreSQL, as a superuser (then restart it for wal_level):',
        ...sql.settings.map((l) => `  ${l}`),
        '',
        "The agent's role:",
        ...sql.grants.map((l) => `  ${l}`),
        '',
        'Keep passwords out of the file: set LIFEBOAT_SOURCE_DATABASE_URL (or PGPASSWORD) in the environment.',
        '',
      ].join('\n'),
    );
    return EXIT_OK;
  },
};
