// `lifeboat resume`: clears a halted stream on the target, optionally skipping
// the batch it halted on. Every use leaves an audit record with who and why.
import { userInfo } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { readStreamState, resumeStream } from '../../functions/apply-engine.ts';
import { ConfigError, defaultConfigFile, formatIssue, loadConfig } from '../../core/config-load.ts';
import { describeError } from '../../core/errors.ts';
import { formatLsn, parseLsn } from '../../core/lsn.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';

const HELP = `Usage: lifeboat resume --reason TEXT [--skip-batch FIRST..LAST] [--actor NAME] [--config FILE] [--json]

Clears a halted stream so the apply function takes batches again. A stream
halts when a change cannot be applied (for example a constraint the target
enforces and the source did not); it never skips on its own.

Without --skip-batch the halted batch is tried again: fix the cause on the
target first. With --skip-batch the batch the stream halted on is passed over:
its changes are NOT applied on the target, and the audit record says so. The
range must be the halted batch's lsn-first..lsn-last, as the halt status and
the refused deliveries' log lines show it; any other range is refused.

Options:
  --reason TEXT             why (required; audited)
  --skip-batch FIRST..LAST  pass over the halted batch, e.g. 0/1CF7460..0/1CF7600
  --actor NAME              who (default: this OS user)
  --config FILE             the config (default: $LIFEBOAT_CONFIG, else ./lifeboat.yaml)
  --json                    print the result as JSON
  -h, --help                show this help
`;

export const resumeCommand: CliCommand = {
  path: ['resume'],
  summary: 'resolve a halted stream, with an audit record',
  help: HELP,
  async run(argv, env, io) {
    let values: { reason?: string; 'skip-batch'?: string; actor?: string; config?: string; json?: boolean };
    try {
      values = parseArgs({
        args: [...argv],
        options: { reason: { type: 'string' }, 'skip-batch': { type: 'string' }, actor: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' } },
        strict: true,
      }).values;
    } catch (err) {
      io.stderr(`lifeboat resume: ${(err as Error).message}. Run \`lifeboat resume --help\`.\n`);
      return EXIT_USAGE;
    }
    if (!values.reason?.trim()) {
      io.stderr('lifeboat resume: --reason is required: say why the stream may go on (it is kept in the audit trail).\n');
      return EXIT_USAGE;
    }
    let skip: { lsnFirst: bigint; lsnLast: bigint } | undefined;
    if (values['skip-batch'] !== undefined) {
      const m = /^([^.]+)\.\.([^.]+)$/.exec(values['skip-batch']);
      try {
        if (!m) throw new Error('expected FIRST..LAST');
        skip = { lsnFirst: parseLsn(m[1]!), lsnLast: parseLsn(m[2]!) };
      } catch (err) {
        io.stderr(`lifeboat resume: --skip-batch ${values['skip-batch']} is not an LSN range like 0/1CF7460..0/1CF7600 (${describeError(err)}).\n`);
        return EXIT_USAGE;
      }
    }
    let cfg;
    try {
      cfg = loadConfig({ file: values.config ? resolve(io.cwd, values.config) : defaultConfigFile(env, io.cwd), env, allowMissingFile: true }).config;
    } catch (err) {
      io.stderr(err instanceof ConfigError ? `lifeboat resume: the config is not valid:\n${err.issues.map((i) => `  ${formatIssue(i)}`).join('\n')}\n` : `lifeboat resume: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    }
    if (!cfg.target.databaseUrl) {
      io.stderr('lifeboat resume: target.databaseUrl is not set, so the target database is unknown. Set it in lifeboat.yaml or LIFEBOAT_TARGET_DATABASE_URL.\n');
      return EXIT_FAILURE;
    }
    const client = new pg.Client({ connectionString: cfg.target.databaseUrl, application_name: 'lifeboat-resume' });
    try {
      await client.connect();
      const before = await readStreamState(client, cfg.stream);
      const result = await resumeStream(client, cfg.stream, {
        ...(skip ? { skipBatch: skip } : {}),
        actor: values.actor ?? env.USER ?? userInfo().username,
        reason: values.reason,
      });
      const summary = {
        stream: cfg.stream,
        wasHalted: result.wasHalted,
        haltReason: before?.halt?.reason ?? null,
        skipped: result.skipped,
        watermark: result.watermark === null ? null : formatLsn(result.watermark),
      };
      if (values.json) io.stdout(`${JSON.stringify(summary, null, 2)}\n`);
      else if (!result.wasHalted) io.stdout(`stream ${cfg.stream} was not halted; nothing changed except an audit record.\n`);
      else {
        io.stdout(
          `stream ${cfg.stream} resumed${result.skipped ? `, skipping batch ${result.skipped.lsnFirst}..${result.skipped.lsnLast} (its changes are NOT on the target)` : ''}; ` +
            `watermark ${summary.watermark ?? 'unset'}. It had halted because: ${summary.haltReason ?? 'unknown'}\n`,
        );
      }
      return EXIT_OK;
    } catch (err) {
      io.stderr(`lifeboat resume: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    } finally {
      await client.end().catch(() => undefined);
    }
  },
};
