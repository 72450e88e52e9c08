import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../core/errors.ts';
import { CLOUD_SQL_SHARED_CORE_HOURLY, GCP_PRICES, PRICES_TAKEN_ON, defaultFunctionVcpu } from '../../core/gcp-prices.ts';
import {
  DAYS_PER_MONTH,
  DEFAULT_ASSUMPTIONS,
  HOURS_PER_MONTH,
  IDLE_GOAL_USD_PER_MONTH,
  SECONDS_PER_MONTH,
  cloudSqlTierHourly,
  cronForIntervalSeconds,
  cronIntervalMinutes,
  estimateIdleCost,
  idleCostSensitivity,
  parseFunctionMemoryMb,
  readStackFacts,
  type StackFacts,
} from '../../core/idle-cost.ts';

/** What the stack synthesizes at the default settings. */
const DEFAULT_FACTS: StackFacts = {
  region: 'europe-west1',
  sql: { tier: 'db-f1-micro', diskGb: 10, diskType: 'PD_SSD', backups: true, publicIp: true },
  functions: [
    { name: 'lifeboat-apply', memoryMb: 512, entryPoint: 'lifeboatApply', secretEnvCount: 1 },
    { name: 'lifeboat-probe', memoryMb: 256, entryPoint: 'lifeboatProbe', secretEnvCount: 1 },
    { name: 'lifeboat-status', memoryMb: 256, entryPoint: 'lifeboatStatus', secretEnvCount: 1 },
  ],
  schedulerJobMinutes: [1],
  dnsZonesCreated: 1,
  secretVersions: 2,
  alertConditions: 1,
  logMetrics: 8,
  bucketLocations: ['europe-west1'],
  runServicesMinInstances: [0],
  settings: {
    heartbeatIntervalSeconds: 5,
    leaseRenewIntervalSeconds: 5,
    probeScheduleIntervalSeconds: 60,
    probeRecheckIntervalSeconds: 5,
    probeContinuous: false,
    dnsTtlSeconds: 30,
  },
};

const withSettings = (s: Partial<StackFacts['settings']>): StackFacts => ({ ...DEFAULT_FACTS, settings: { ...DEFAULT_FACTS.settings, ...s } });
const row = (facts: StackFacts, name: string) => {
  const r = estimateIdleCost(facts).rows.find((x) => x.resource.startsWith(name));
  if (!r) throw new Error(`no row ${name}`);
  return r;
};

describe('prices', () => {
  it('are dated and sourced', () => {
    expect(PRICES_TAKEN_ON).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    for (const p of [GCP_PRICES.cloudRun.vcpuSecond, GCP_PRICES.firestore.hundredThousandWrites, GCP_PRICES.dns.zoneHour, CLOUD_SQL_SHARED_CORE_HOURLY['db-f1-micro']]) {
      expect(p?.source.url).toMatch(/^https:\/\//);
      expect(['page', 'secondary', 'recalled']).toContain(p?.source.certainty);
    }
  });

  it('Cloud SQL tiers: shared-core table and db-custom-CPU-MB; unknown tiers are refused', () => {
    expect(cloudSqlTierHourly('db-f1-micro').usd).toBe(0.0105);
    expect(cloudSqlTierHourly('db-custom-2-7680').usd).toBeCloseTo(2 * 0.0413 + 7.5 * 0.007, 10);
    expect(() => cloudSqlTierHourly('db-n1-standard-1')).toThrow(ValidationError);
  });

  it('function vCPU follows memory', () => {
    expect([128, 256, 512, 1024, 2048, 4096].map(defaultFunctionVcpu)).toEqual([0.083, 0.167, 0.333, 0.583, 1, 2]);
  });
});

describe('estimateIdleCost at the default settings', () => {
  const report = estimateIdleCost(DEFAULT_FACTS);

  it('meets the goal of at most $2 a month beyond Cloud SQL', () => {
    expect(report.goalUsdPerMonth).toBe(IDLE_GOAL_USD_PER_MONTH);
    expect(report.totals.idleBeyondCloudSqlUsdPerMonth).toBeLessThanOrEqual(2);
    expect(report.meetsGoal).toBe(true);
  });

  it('Cloud SQL: the tier for 730 hours plus storage and backups', () => {
    expect(row(DEFAULT_FACTS, 'Cloud SQL instance').listUsdPerMonth).toBeCloseTo(0.0105 * HOURS_PER_MONTH, 4);
    expect(row(DEFAULT_FACTS, 'Cloud SQL storage').listUsdPerMonth).toBeCloseTo(10 * 0.17, 4);
    expect(report.totals.cloudSqlUsdPerMonth).toBeCloseTo(0.0105 * 730 + 1.7 + 0.08, 3);
  });

  it('apply: one invocation per heartbeat, billed in 100 ms steps, within the free tier', () => {
    const apply = row(DEFAULT_FACTS, 'Cloud Function lifeboat-apply');
    const heartbeats = SECONDS_PER_MONTH / 5;
    const list = heartbeats * 0.1 * 0.333 * 0.000024 + heartbeats * 0.1 * 0.5 * 0.0000025 + (heartbeats / 1e6) * 0.4;
    expect(apply.listUsdPerMonth).toBeCloseTo(list, 3);
    expect(apply.usdPerMonth).toBe(0);
    expect(apply.usage).toContain('525,600 heartbeat batches');
  });

  it('Firestore: lease renewals and probe checks stay inside the daily free quota', () => {
    const fs = row(DEFAULT_FACTS, 'Firestore');
    // 17,280 renewals + 1,440 probe runs a day: one read and one write each.
    expect(fs.usage).toContain('18,720 reads and 18,720 writes a day');
    expect(fs.usdPerMonth).toBe(0);
  });

  it('every row: free tier ≤ list, and the net is list minus free; totals add up', () => {
    for (const r of report.rows) {
      expect(r.freeTierUsdPerMonth).toBeGreaterThanOrEqual(0);
      expect(r.freeTierUsdPerMonth).toBeLessThanOrEqual(r.listUsdPerMonth);
      expect(r.usdPerMonth).toBeCloseTo(r.listUsdPerMonth - r.freeTierUsdPerMonth, 3);
      expect(r.prices.length).toBeGreaterThan(0);
    }
    const sum = report.rows.reduce((n, r) => n + r.usdPerMonth, 0);
    expect(report.totals.usdPerMonth).toBeCloseTo(sum, 3);
    expect(report.totals.usdPerMonth).toBeCloseTo(report.totals.cloudSqlUsdPerMonth + report.totals.idleBeyondCloudSqlUsdPerMonth, 3);
  });

  it('the Cloud Run app costs nothing at 0 instances, and nothing is left out silently', () => {
    expect(row(DEFAULT_FACTS, 'Cloud Run (app copy)').listUsdPerMonth).toBe(0);
    const names = report.rows.map((r) => r.resource);
    for (const want of ['Cloud Scheduler', 'Pub/Sub', 'Firestore', 'Cloud DNS', 'Cloud Storage', 'Secret Manager', 'Cloud Monitoring alerting', 'Cloud Logging', 'Artifact Registry']) {
      expect(names.some((n) => n.startsWith(want))).toBe(true);
    }
    expect(report.notes.some((n) => n.includes('public IPv4'))).toBe(true);
  });
});

describe('settings move the cost', () => {
  it('a continuous probe keeps the probe busy for the whole minute', () => {
    const once = row(DEFAULT_FACTS, 'Cloud Function lifeboat-probe').listUsdPerMonth;
    const continuous = row(withSettings({ probeContinuous: true }), 'Cloud Function lifeboat-probe').listUsdPerMonth;
    expect(continuous / once).toBeGreaterThan(40);
    expect(estimateIdleCost(withSettings({ probeContinuous: true })).meetsGoal).toBe(false);
  });

  it('renewing the lease every 2 s leaves the Firestore free quota', () => {
    const fs = row(withSettings({ leaseRenewIntervalSeconds: 2 }), 'Firestore');
    const writesPerDay = 43_200 + 1_440;
    expect(fs.usdPerMonth).toBeCloseTo((((writesPerDay - 20_000) * DAYS_PER_MONTH) / 1e5) * 0.18, 3);
  });

  it('sensitivity: one row per value, the current one marked, cost never falls as intervals shrink', () => {
    const points = idleCostSensitivity(DEFAULT_FACTS);
    const renew = points.filter((p) => p.setting === 'lease.renewIntervalSeconds');
    expect(renew.map((p) => p.value)).toEqual(['2', '5', '10', '15']);
    expect(renew.filter((p) => p.current).map((p) => p.value)).toEqual(['5']);
    for (let i = 1; i < renew.length; i++) {
      expect(renew[i - 1]!.idleBeyondCloudSqlListUsdPerMonth).toBeGreaterThanOrEqual(renew[i]!.idleBeyondCloudSqlListUsdPerMonth);
    }
    const heartbeats = points.filter((p) => p.setting === 'agent.heartbeatIntervalSeconds');
    expect(heartbeats[0]!.idleBeyondCloudSqlListUsdPerMonth).toBeGreaterThan(heartbeats[heartbeats.length - 1]!.idleBeyondCloudSqlListUsdPerMonth);
    const odd = idleCostSensitivity(withSettings({ leaseRenewIntervalSeconds: 7 })).filter((p) => p.setting === 'lease.renewIntervalSeconds');
    expect(odd.map((p) => `${p.value}${p.current ? '*' : ''}`)).toEqual(['2', '5', '7*', '10', '15']);
  });

  it('the assumptions are part of the report', () => {
    expect(estimateIdleCost(DEFAULT_FACTS).assumptions).toEqual(DEFAULT_ASSUMPTIONS);
    const slowApply = estimateIdleCost(DEFAULT_FACTS, { ...DEFAULT_ASSUMPTIONS, applySecondsPerHeartbeat: 0.25 });
    expect(slowApply.rows.find((r) => r.resource === 'Cloud Function lifeboat-apply')?.usage).toContain('× 0.3 s');
  });
});

describe('readStackFacts', () => {
  const env = {
    LIFEBOAT_AGENT_HEARTBEAT_INTERVAL_SECONDS: '5',
    LIFEBOAT_LEASE_RENEW_INTERVAL_SECONDS: '5',
    LIFEBOAT_PROBE_SCHEDULE_INTERVAL_SECONDS: '60',
    LIFEBOAT_PROBE_RECHECK_INTERVAL_SECONDS: '5',
    LIFEBOAT_PROBE_CONTINUOUS: 'false',
    LIFEBOAT_DNS_TTL_SECONDS: '30',
  };
  const fn = (name: string, entry: string, memory: string) => ({
    name,
    location: 'europe-west1',
    build_config: { entry_point: entry },
    service_config: { available_memory: memory, environment_variables: env, secret_environment_variables: [{ key: 'PGPASSWORD' }] },
  });
  const tf = {
    resource: {
      google_cloudfunctions2_function: { a: fn('lifeboat-apply', 'lifeboatApply', '512M'), p: fn('lifeboat-probe', 'lifeboatProbe', '256Mi') },
      google_sql_database_instance: { db: { settings: { tier: 'db-f1-micro', disk_size: 10, disk_type: 'PD_SSD', backup_configuration: { enabled: true }, ip_configuration: { ipv4_enabled: true } } } },
      google_cloud_scheduler_job: { s: { schedule: '*/5 * * * *' } },
      google_dns_managed_zone: { z: {} },
      google_secret_manager_secret_version: { v1: {}, v2: {} },
      google_monitoring_alert_policy: { p: { conditions: [{}, {}] } },
      google_logging_metric: { m1: {}, m2: {} },
      google_storage_bucket: { b: { location: 'EUROPE-WEST1' } },
      google_cloud_run_v2_service: { r: { template: { scaling: { min_instance_count: 0 } } } },
    },
  };

  it('reads what drives cost from the Terraform JSON', () => {
    const facts = readStackFacts(tf);
    expect(facts).toEqual({
      region: 'europe-west1',
      sql: { tier: 'db-f1-micro', diskGb: 10, diskType: 'PD_SSD', backups: true, publicIp: true },
      functions: [
        { name: 'lifeboat-apply', memoryMb: 512, entryPoint: 'lifeboatApply', secretEnvCount: 1 },
        { name: 'lifeboat-probe', memoryMb: 256, entryPoint: 'lifeboatProbe', secretEnvCount: 1 },
      ],
      schedulerJobMinutes: [5],
      dnsZonesCreated: 1,
      secretVersions: 2,
      alertConditions: 2,
      logMetrics: 2,
      bucketLocations: ['europe-west1'],
      runServicesMinInstances: [0],
      settings: DEFAULT_FACTS.settings,
    });
  });

  it('refuses a stack that is not Lifeboat’s, or lacks a setting, saying what to do', () => {
    expect(() => readStackFacts({ resource: {} })).toThrow(/not a Lifeboat stack/);
    const noEnv = structuredClone(tf);
    delete (noEnv.resource.google_cloudfunctions2_function.a.service_config.environment_variables as Record<string, string>).LIFEBOAT_LEASE_RENEW_INTERVAL_SECONDS;
    noEnv.resource.google_cloudfunctions2_function.p.service_config.environment_variables = noEnv.resource.google_cloudfunctions2_function.a.service_config.environment_variables;
    expect(() => readStackFacts(noEnv)).toThrow(/LIFEBOAT_LEASE_RENEW_INTERVAL_SECONDS/);
    const badShape = structuredClone(tf) as { resource: Record<string, Record<string, unknown>> };
    badShape.resource.google_cloudfunctions2_function!.a = { name: 'x' };
    expect(() => readStackFacts(badShape)).toThrow(ValidationError);
  });

  it('sizes and schedules', () => {
    expect(parseFunctionMemoryMb('512M')).toBe(512);
    expect(parseFunctionMemoryMb('1Gi')).toBe(1024);
    expect(() => parseFunctionMemoryMb('lots')).toThrow(ValidationError);
    expect(cronIntervalMinutes('* * * * *')).toBe(1);
    expect(cronIntervalMinutes('*/5 * * * *')).toBe(5);
    expect(() => cronIntervalMinutes('0 3 * * *')).toThrow(ValidationError);
    expect(cronForIntervalSeconds(60)).toBe('* * * * *');
    expect(cronForIntervalSeconds(300)).toBe('*/5 * * * *');
    expect(cronIntervalMinutes(cronForIntervalSeconds(120))).toBe(2);
  });
});
