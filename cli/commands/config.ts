// `lifeboat config check [FILE] [--json]` and `lifeboat config defaults [--json]`.
// Pure: options come from the injected argv, output goes to the injected io.

import { isAbsolute, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  checkConfigSource,
  describeConfigFields,
  formatIssue,
  type ConfigCheckResult,
  type ConfigIssue,
} from '../../core/config-load.ts';
import { probeConfirmSeconds, selfFenceAfterSeconds, type LifeboatConfig } from '../../core/config.ts';
import { redact, redactString } from '../../core/log.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand, type CliIo } from '../command.ts';

const CHECK_HELP = `Usage: lifeboat config check [FILE] [--json]

Validates a Lifeboat configuration: the YAML, every field, the environment
overrides (LIFEBOAT_*), the timing rules between fields and, in cloud mode,
the fields cloud mode needs. Prints a short summary when it is valid, and every
problem with its place (file:line:column or the environment variable) and the
fix when it is not.

Arguments:
  FILE        the config file (default: $LIFEBOAT_CONFIG, else ./lifeboat.yaml)

Options:
  --json      print {valid, file, errors, warnings, config} (secrets masked)
  -h, --help  show this help

Exit status: 0 valid, 1 invalid or missing, 2 usage error.
`;

const DEFAULTS_HELP = `Usage: lifeboat config defaults [--json]

Lists every configuration field with its type, default, environment variable
and description (the same table as docs/configuration.md).

Options:
  --json      print the rows as JSON
  -h, --help  show this help
`;

type Parsed = { ok: true; json: boolean; help: boolean; positionals: string[] } | { ok: false; error: string };

function parse(argv: readonly string[]): Parsed {
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      options: { json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
      allowPositionals: true,
      strict: true,
    });
    return { ok: true, json: values.json === true, help: values.help === true, positionals };
  } catch (e) {
    return { ok: false, error: (e as Error).message };
  }
}

function displayName(abs: string, cwd: string): string {
  const rel = relative(cwd, abs);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : abs;
}

function issueJson(i: ConfigIssue) {
  return {
    severity: i.severity,
    path: i.path,
    line: i.line ?? null,
    column: i.column ?? null,
    env: i.env ?? null,
    rule: i.rule,
    message: i.message,
    remedy: i.remedy ?? null,
    text: formatIssue(i),
  };
}

function sourceDbText(url: string | undefined, mode: LifeboatConfig['mode']): string {
  if (!url) {
    return mode === 'local'
      ? 'not set (local mode uses the cluster that `lifeboat local` starts)'
      : 'not set (set LIFEBOAT_SOURCE_DATABASE_URL where the agent runs)';
  }
  const masked = redactString(url);
  try {
    const u = new URL(url);
    const host = u.host || u.searchParams.get('host') || 'local socket';
    const db = u.pathname.replace(/^\//, '') || '(default database)';
    return `${masked}  (host ${host}, database ${db})`;
  } catch {
    return masked;
  }
}

const s = (n: number) => `${+n.toFixed(3)} s`;

/** The short summary printed for a valid config. */
export function summarize(cfg: LifeboatConfig, result: ConfigCheckResult): string[] {
  const rows: [string, string][] = [
    ['mode', cfg.mode],
    ['stream', `${cfg.stream} (slot ${cfg.source.slot}, publication ${cfg.source.publication})`],
    ['project', `${cfg.project}, region ${cfg.region}`],
    ['source', sourceDbText(cfg.source.databaseUrl, cfg.mode)],
    [
      'lease',
      `ttl ${s(cfg.lease.ttlSeconds)}, renewed every ${s(cfg.lease.renewIntervalSeconds)}; the holder fences itself ${s(selfFenceAfterSeconds(cfg))} after its last renewal`,
    ],
    [
      'probe',
      `every ${s(cfg.probe.scheduleIntervalSeconds)}${cfg.probe.continuous ? ' (continuous)' : ''}; ${cfg.probe.failureThreshold} failed checks ${s(cfg.probe.recheckIntervalSeconds)} apart confirm an outage (within ${s(probeConfirmSeconds(cfg))})`,
    ],
    ['failover', `${cfg.failover.auto ? 'automatic' : 'manual'}; failback ${cfg.failover.failback}`],
  ];
  if (cfg.mode === 'cloud') {
    rows.push(['target', `${cfg.target.instanceConnectionName ?? '(unset)'} database ${cfg.target.database}, tier ${cfg.target.tier}`]);
    rows.push(['dns', `${cfg.dns.recordName ?? '(unset)'} in zone ${cfg.dns.managedZone ?? '(unset)'}, ttl ${s(cfg.dns.ttlSeconds)}`]);
  } else {
    rows.push(['router', `localhost:${cfg.dns.routerPort} stands in for DNS`]);
  }
  const fromEnv = Object.values(result.sources).flatMap((src) => (src.kind === 'env' ? [src.name] : []));
  if (fromEnv.length > 0) rows.push(['from env', fromEnv.join(', ')]);
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`);
}

export const configCheckCommand: CliCommand = {
  path: ['config', 'check'],
  summary: 'validate lifeboat.yaml and LIFEBOAT_* overrides, with the fix for each problem',
  help: CHECK_HELP,
  async run(argv, env, io: CliIo): Promise<number> {
    const opts = parse(argv);
    if (!opts.ok) {
      io.stderr(`lifeboat config check: ${opts.error}\n\n${CHECK_HELP}`);
      return EXIT_USAGE;
    }
    if (opts.help) {
      io.stdout(CHECK_HELP);
      return EXIT_OK;
    }
    if (opts.positionals.length > 1) {
      io.stderr(`lifeboat config check: expected at most one FILE, got ${opts.positionals.length}\n\n${CHECK_HELP}`);
      return EXIT_USAGE;
    }
    const given = opts.positionals[0] ?? (env.LIFEBOAT_CONFIG || 'lifeboat.yaml');
    const abs = resolve(io.cwd, given);
    const name = displayName(abs, io.cwd);

    // Read through the absolute path, report with the name the user knows.
    const raw = checkConfigSource({ file: abs, env });
    const relabel = (i: ConfigIssue): ConfigIssue => {
      if (i.file !== abs) return i;
      return { ...i, file: name, message: i.message.split(abs).join(name) };
    };
    const result: ConfigCheckResult = { ...raw, file: name, errors: raw.errors.map(relabel), warnings: raw.warnings.map(relabel) };

    if (opts.json) {
      io.stdout(
        JSON.stringify(
          {
            valid: result.ok,
            file: name,
            errors: result.errors.map(issueJson),
            warnings: result.warnings.map(issueJson),
            config: result.config ? redact(result.config) : null,
          },
          null,
          2,
        ) + '\n',
      );
      return result.ok ? EXIT_OK : EXIT_FAILURE;
    }

    if (result.missingFile) {
      io.stderr(
        `${name} not found (looked for ${abs}).\n` +
          'Run `lifeboat init` to write one, or pass the file: lifeboat config check path/to/lifeboat.yaml\n' +
          '(LIFEBOAT_CONFIG also names the file.)\n',
      );
      return EXIT_FAILURE;
    }

    const warningLines = result.warnings.map((w) => `  warning: ${formatIssue(w)}`);
    if (!result.ok || !result.config) {
      const n = result.errors.length;
      io.stderr(
        [`${name} is invalid (${n} problem${n === 1 ? '' : 's'}):`, ...result.errors.map((e) => `  ${formatIssue(e)}`), ...warningLines].join('\n') +
          '\n',
      );
      return EXIT_FAILURE;
    }
    io.stdout([`${name} is valid`, ...summarize(result.config, result)].join('\n') + '\n');
    if (warningLines.length > 0) io.stderr(`${warningLines.join('\n')}\n`);
    return EXIT_OK;
  },
};

/** The human table of `lifeboat config defaults`. */
export function renderDefaultsText(): string {
  const rows = describeConfigFields();
  const lines: string[] = ['Lifeboat configuration fields (lifeboat.yaml), defaults and environment variables:', ''];
  let section = '';
  for (const r of rows) {
    const sec = r.path.includes('.') ? (r.path.split('.')[0] ?? '') : '';
    if (sec !== section) {
      section = sec;
      lines.push(`[${sec}]`);
    }
    const def = r.defaultText === '' ? (r.requiredInCloud ? '(none; required in cloud mode)' : '(none)') : r.defaultText;
    lines.push(`  ${r.path} = ${def}    ${r.type} · $${r.env}${r.secret ? ' · secret' : ''}`);
    lines.push(`      ${r.description}`);
  }
  return lines.join('\n') + '\n';
}

export const configDefaultsCommand: CliCommand = {
  path: ['config', 'defaults'],
  summary: 'list every config field with its default, type and environment variable',
  help: DEFAULTS_HELP,
  async run(argv, _env, io: CliIo): Promise<number> {
    const opts = parse(argv);
    if (!opts.ok) {
      io.stderr(`lifeboat config defaults: ${opts.error}\n\n${DEFAULTS_HELP}`);
      return EXIT_USAGE;
    }
    if (opts.help) {
      io.stdout(DEFAULTS_HELP);
      return EXIT_OK;
    }
    if (opts.positionals.length > 0) {
      io.stderr(`lifeboat config defaults: unexpected argument ${JSON.stringify(opts.positionals[0])}\n\n${DEFAULTS_HELP}`);
      return EXIT_USAGE;
    }
    if (opts.json) io.stdout(JSON.stringify(describeConfigFields(), null, 2) + '\n');
    else io.stdout(renderDefaultsText());
    return EXIT_OK;
  },
};
