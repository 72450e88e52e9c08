// `lifeboat cost [--json] [--stack FILE]`: the monthly idle cost of the cloud
// side, per resource, from the synthesized stack and the prices in
// core/gcp-prices.ts, and how the settings that matter move it.

import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { defaultConfigFile, loadConfig } from '../../core/config-load.ts';
import { describeError, ValidationError } from '../../core/errors.ts';
import {
  estimateIdleCost,
  idleCostSensitivity,
  readStackFacts,
  type CostRow,
  type IdleCostReport,
  type SensitivityPoint,
} from '../../core/idle-cost.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand, type CliIo } from '../command.ts';

const HELP = `Usage: lifeboat cost [--json] [--stack FILE]

Estimates what Lifeboat's cloud side costs per month while idle (home is
healthy; only heartbeats, lease renewals and probes flow), per resource, with
the list prices in core/gcp-prices.ts (each with its source and date).

It reads the synthesized stack (cdktf.out/stacks/*/cdk.tf.json). When there is
none, it synthesizes the stack in memory from lifeboat.yaml (LIFEBOAT_CONFIG)
and cdktf.json; nothing is written.

Also shown: how probe.continuous, probe.scheduleIntervalSeconds,
lease.renewIntervalSeconds and agent.heartbeatIntervalSeconds move the cost
beyond Cloud SQL (the goal is at most $2 a month at the default settings).

Options:
  --json        rows, totals (idleBeyondCloudSqlUsdPerMonth…), sensitivity, assumptions
  --stack FILE  the synthesized Terraform JSON to read
  -h, --help    show this help

Exit status: 0 estimated, 1 no stack could be read or synthesized, 2 usage error.
`;

/** The synthesized stack under cwd: cdktf.out/stacks/<stack>/cdk.tf.json (the lifeboat one first). */
export function findSynthesizedStack(cwd: string): string | undefined {
  const stacks = join(cwd, 'cdktf.out', 'stacks');
  if (!existsSync(stacks)) return undefined;
  const names = readdirSync(stacks).sort((a, b) => (a === 'lifeboat' ? -1 : b === 'lifeboat' ? 1 : a.localeCompare(b)));
  for (const name of names) {
    const file = join(stacks, name, 'cdk.tf.json');
    if (existsSync(file)) return file;
  }
  return undefined;
}

/** Synthesizes the stack in memory (no functions build needed: the source does not change the cost). */
async function synthesizeInMemory(cwd: string, env: Readonly<Record<string, string | undefined>>): Promise<unknown> {
  // Loaded only here: cdktf and the provider take seconds to import.
  const infra = await import('../../infra/main.ts');
  const cdktfJson = join(cwd, 'cdktf.json');
  const context = infra.readInfraContext(existsSync(cdktfJson) ? readFileSync(cdktfJson, 'utf8') : undefined, env.CDKTF_CONTEXT_JSON);
  const { config } = loadConfig({ file: defaultConfigFile(env, cwd), env, allowEnv: [infra.FUNCTIONS_DIR_ENV] });
  const outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cost-'));
  try {
    const { stack } = infra.createLifeboatApp({
      config,
      context,
      // Any source gives the same cost; this one needs no build.
      functionsSource: { kind: 'uploaded-object', object: 'functions-source/lifeboat-functions.zip' },
      outdir,
      stateDir: cwd,
    });
    return JSON.parse(JSON.stringify(stack.toTerraform())) as unknown;
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

const usd = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(2));

function table(rows: readonly string[][], rightAligned: ReadonlySet<number>): string[] {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) =>
    r
      .map((cell, i) => (rightAligned.has(i) ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
}

/** The human report. */
export function renderCostReport(report: IdleCostReport, sensitivity: readonly SensitivityPoint[], stackLabel: string): string {
  const t = report.totals;
  const line = (r: CostRow) => [r.resource, r.usage, usd(r.listUsdPerMonth), usd(r.freeTierUsdPerMonth), usd(r.usdPerMonth)];
  const body = table(
    [
      ['resource', 'what drives it', 'list $', 'free tier $', '$/month'],
      ...report.rows.filter((r) => r.group === 'cloud-sql').map(line),
      ['Cloud SQL', '', '', '', usd(t.cloudSqlUsdPerMonth)],
      ...report.rows.filter((r) => r.group === 'beyond-cloud-sql').map(line),
      ['Everything beyond Cloud SQL', '', usd(t.idleBeyondCloudSqlListUsdPerMonth), '', usd(t.idleBeyondCloudSqlUsdPerMonth)],
      ['Total', '', usd(t.listUsdPerMonth), '', usd(t.usdPerMonth)],
    ],
    new Set([2, 3, 4]),
  );
  const verdict = report.meetsGoal
    ? `meets the goal of at most $${report.goalUsdPerMonth.toFixed(2)} a month beyond Cloud SQL`
    : `MISSES the goal of at most $${report.goalUsdPerMonth.toFixed(2)} a month beyond Cloud SQL`;
  const bySetting = new Map<string, SensitivityPoint[]>();
  for (const p of sensitivity) bySetting.set(p.setting, [...(bySetting.get(p.setting) ?? []), p]);
  const sens = table(
    [...bySetting].map(([setting, points]) => [
      setting,
      points.map((p) => `${p.value}${p.current ? '*' : ''}: $${usd(p.idleBeyondCloudSqlUsdPerMonth)} ($${usd(p.idleBeyondCloudSqlListUsdPerMonth)})`).join('   '),
    ]),
    new Set(),
  );
  return [
    `Lifeboat idle cost per month, region ${report.region}, list prices taken ${report.pricesTakenOn}`,
    `stack: ${stackLabel}`,
    '',
    ...body.map((l) => `  ${l}`),
    '',
    `Beyond Cloud SQL: $${usd(t.idleBeyondCloudSqlUsdPerMonth)} a month after free tiers ($${usd(t.idleBeyondCloudSqlListUsdPerMonth)} at list price): ${verdict}.`,
    '',
    'How settings move the cost beyond Cloud SQL (after free tiers; list price in brackets; * = current):',
    ...sens.map((l) => `  ${l}`),
    '',
    'Notes:',
    ...report.notes.map((n) => `  - ${n}`),
    `  - Assumptions (core/idle-cost.ts DEFAULT_ASSUMPTIONS): apply ${report.assumptions.applySecondsPerHeartbeat} s per heartbeat, probe check ${report.assumptions.probeSecondsPerCheck} s, ${report.assumptions.dnsResolvers} DNS resolvers, ${report.assumptions.imageGbPerFunction} GB per function image.`,
    '  - Prices and their sources: core/gcp-prices.ts; `lifeboat cost --json` lists them per row.',
    '',
  ].join('\n');
}

export const costCommand: CliCommand = {
  path: ['cost'],
  summary: 'monthly idle cost of the cloud side, per resource',
  help: HELP,
  async run(argv, env, io: CliIo): Promise<number> {
    let values: { json?: boolean; stack?: string; help?: boolean };
    try {
      ({ values } = parseArgs({
        args: [...argv],
        options: { json: { type: 'boolean' }, stack: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
        strict: true,
        allowPositionals: false,
      }));
    } catch (e) {
      io.stderr(`lifeboat cost: ${(e as Error).message}\n\n${HELP}`);
      return EXIT_USAGE;
    }
    if (values.help) {
      io.stdout(HELP);
      return EXIT_OK;
    }
    let tfJson: unknown;
    let stackLabel: string;
    try {
      const file = values.stack ? resolve(io.cwd, values.stack) : findSynthesizedStack(io.cwd);
      if (file) {
        if (!existsSync(file)) throw new ValidationError(`${file} does not exist.`, { remedy: 'Run `npx cdktf synth` first, or leave out --stack.' });
        tfJson = JSON.parse(readFileSync(file, 'utf8')) as unknown;
        const rel = relative(io.cwd, file);
        stackLabel = rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : file;
      } else {
        tfJson = await synthesizeInMemory(io.cwd, env);
        stackLabel = 'synthesized in memory from lifeboat.yaml (no cdktf.out found)';
      }
      const facts = readStackFacts(tfJson);
      const report = estimateIdleCost(facts);
      const sensitivity = idleCostSensitivity(facts);
      if (values.json) {
        io.stdout(JSON.stringify({ stack: stackLabel, ...report, sensitivity }, null, 2) + '\n');
      } else {
        io.stdout(renderCostReport(report, sensitivity, stackLabel));
      }
      return EXIT_OK;
    } catch (e) {
      io.stderr(`lifeboat cost: ${describeError(e)}\n`);
      return EXIT_FAILURE;
    }
  },
};
