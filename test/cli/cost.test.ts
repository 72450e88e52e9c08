import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../cli/command.ts';
import { costCommand, findSynthesizedStack } from '../../cli/commands/cost.ts';
import { FIXTURE_CONFIG_FILE, synthStack } from '../infra/fixtures/synth.ts';

function capture(cwd: string): CliIo & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    cwd,
    stdout: (t: string) => {
      io.out += t;
    },
    stderr: (t: string) => {
      io.err += t;
    },
  };
  return io;
}

async function run(args: string[], cwd: string, env: Record<string, string> = {}) {
  const io = capture(cwd);
  const code = await costCommand.run(args, env, io);
  return { code, out: io.out, err: io.err };
}

let dir = '';
let stackFile = '';

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'lifeboat-cli-cost-'));
  const stackDir = join(dir, 'project', 'cdktf.out', 'stacks', 'lifeboat');
  mkdirSync(stackDir, { recursive: true });
  stackFile = join(stackDir, 'cdk.tf.json');
  writeFileSync(stackFile, synthStack().text);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('lifeboat cost', () => {
  it('has its path and help', async () => {
    expect(costCommand.path).toEqual(['cost']);
    const r = await run(['--help'], dir);
    expect(r.code).toBe(0);
    expect(r.out).toContain('Usage: lifeboat cost [--json] [--stack FILE]');
  });

  it('a bad option is a usage error', async () => {
    const r = await run(['--jsno'], dir);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--jsno');
  });

  it('finds cdktf.out and prints the table, the verdict and the sensitivity', async () => {
    const cwd = join(dir, 'project');
    expect(findSynthesizedStack(cwd)).toBe(stackFile);
    const r = await run([], cwd);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain('stack: cdktf.out/stacks/lifeboat/cdk.tf.json');
    expect(r.out).toMatch(/Cloud SQL instance \(db-f1-micro\)\s+730 h\s+7\.67/);
    expect(r.out).toContain('Cloud Function lifeboat-apply');
    expect(r.out).toMatch(/Beyond Cloud SQL: \$\d+\.\d\d a month after free tiers/);
    expect(r.out).toContain('meets the goal of at most $2.00');
    expect(r.out).toMatch(/probe\.continuous\s+false\*: \$[\d.]+ \(\$[\d.]+\)\s+true: /);
    expect(r.out).toMatch(/lease\.renewIntervalSeconds\s+2: /);
  });

  it('--json gives rows, totals with idleBeyondCloudSqlUsdPerMonth, and the sensitivity', async () => {
    const r = await run(['--json', '--stack', stackFile], dir);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as {
      rows: { resource: string; usdPerMonth: number }[];
      totals: Record<string, number>;
      meetsGoal: boolean;
      sensitivity: { setting: string }[];
      pricesTakenOn: string;
    };
    expect(j.rows.length).toBeGreaterThan(10);
    expect(j.totals.idleBeyondCloudSqlUsdPerMonth).toBeLessThanOrEqual(2);
    expect(j.totals.cloudSqlUsdPerMonth).toBeGreaterThan(7);
    expect(j.meetsGoal).toBe(true);
    expect(new Set(j.sensitivity.map((s) => s.setting))).toEqual(
      new Set(['probe.continuous', 'probe.scheduleIntervalSeconds', 'lease.renewIntervalSeconds', 'agent.heartbeatIntervalSeconds']),
    );
  });

  it('without cdktf.out it synthesizes the stack in memory from lifeboat.yaml', async () => {
    const cwd = join(dir, 'fresh');
    mkdirSync(cwd);
    copyFileSync(FIXTURE_CONFIG_FILE, join(cwd, 'lifeboat.yaml'));
    const r = await run(['--json'], cwd);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as { stack: string; totals: { idleBeyondCloudSqlUsdPerMonth: number } };
    expect(j.stack).toContain('synthesized in memory');
    expect(j.totals.idleBeyondCloudSqlUsdPerMonth).toBeGreaterThan(0);
    expect(findSynthesizedStack(cwd)).toBeUndefined();
  });

  it('a missing stack file or config says what to do', async () => {
    const missing = await run(['--stack', join(dir, 'nope.json')], dir);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('does not exist');
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    const noConfig = await run([], empty);
    expect(noConfig.code).toBe(1);
    expect(noConfig.err).toMatch(/lifeboat\.yaml.*not found/);
  });
});
