// The monthly idle cost of Lifeboat's cloud side: what it costs while home is
// healthy and nothing but heartbeats, lease renewals and probes flows.
//
// Two steps, both pure:
//   readStackFacts(tfJson)      the synthesized Terraform JSON (cdk.tf.json) →
//                               the facts that drive cost (tier, memory, cron,
//                               zones, secrets, alert conditions, settings)
//   estimateIdleCost(facts)     facts × prices (gcp-prices.ts) × assumptions →
//                               one row per resource, totals, and the goal check
//
// What drives idle cost:
//   - every agent heartbeat is a batch: one Pub/Sub publish, one push, one
//     apply invocation (agent.heartbeatIntervalSeconds);
//   - every lease renewal is one Firestore read and one write
//     (lease.renewIntervalSeconds);
//   - every scheduler run invokes the probe; a continuous probe stays busy for
//     the whole interval (probe.continuous).
// Free tiers are applied as if Lifeboat were alone on its billing account;
// the list price without them is reported too.
//
// The settings are read from the LIFEBOAT_* environment the stack gives its
// functions, so the estimate describes exactly what was synthesized.

import { z } from 'zod';
import { envVarName } from './config.ts';
import { ValidationError } from './errors.ts';
import { CLOUD_SQL_SHARED_CORE_HOURLY, GCP_PRICES, PRICES_TAKEN_ON, defaultFunctionVcpu, type Price } from './gcp-prices.ts';

export const HOURS_PER_MONTH = 730;
export const SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600;
export const DAYS_PER_MONTH = HOURS_PER_MONTH / 24;
/** The issue's goal for everything beyond the Cloud SQL instance. */
export const IDLE_GOAL_USD_PER_MONTH = 2;

// ---------------------------------------------------------------------------
// Facts from the synthesized stack

export interface FunctionFacts {
  readonly name: string;
  readonly memoryMb: number;
  readonly entryPoint: string;
  readonly secretEnvCount: number;
}

export interface IdleSettings {
  readonly heartbeatIntervalSeconds: number;
  readonly leaseRenewIntervalSeconds: number;
  readonly probeScheduleIntervalSeconds: number;
  readonly probeRecheckIntervalSeconds: number;
  readonly probeContinuous: boolean;
  readonly dnsTtlSeconds: number;
}

export interface StackFacts {
  readonly region: string;
  readonly sql: { readonly tier: string; readonly diskGb: number; readonly diskType: string; readonly backups: boolean; readonly publicIp: boolean } | undefined;
  readonly functions: readonly FunctionFacts[];
  /** Minutes between runs, per scheduler job. */
  readonly schedulerJobMinutes: readonly number[];
  readonly dnsZonesCreated: number;
  readonly secretVersions: number;
  readonly alertConditions: number;
  readonly logMetrics: number;
  readonly bucketLocations: readonly string[];
  readonly runServicesMinInstances: readonly number[];
  readonly settings: IdleSettings;
}

const block = <T extends z.ZodType>(inner: T) =>
  z.union([inner, z.array(inner).min(1).transform((a) => a[0] as z.output<T>)]);

const fnSchema = z.object({
  name: z.string(),
  build_config: block(z.object({ entry_point: z.string() }).loose()),
  service_config: block(
    z
      .object({
        available_memory: z.string(),
        environment_variables: z.record(z.string(), z.string()).optional(),
        secret_environment_variables: z.array(z.unknown()).optional(),
      })
      .loose(),
  ),
}).loose();

const sqlSchema = z.object({
  settings: block(
    z
      .object({
        tier: z.string(),
        disk_size: z.number().optional(),
        disk_type: z.string().optional(),
        backup_configuration: block(z.object({ enabled: z.boolean().optional() }).loose()).optional(),
        ip_configuration: block(z.object({ ipv4_enabled: z.boolean().optional() }).loose()).optional(),
      })
      .loose(),
  ),
}).loose();

const alertSchema = z.object({ conditions: z.array(z.unknown()) }).loose();
const schedulerSchema = z.object({ schedule: z.string() }).loose();
const bucketSchema = z.object({ location: z.string() }).loose();
const runSchema = z
  .object({
    template: block(z.object({ scaling: block(z.object({ min_instance_count: z.number().optional() }).loose()).optional() }).loose()),
  })
  .loose();

const tfJsonSchema = z
  .object({
    resource: z.record(z.string(), z.record(z.string(), z.unknown())).default({}),
  })
  .loose();

function parsed<T extends z.ZodType>(schema: T, value: unknown, where: string): z.output<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new ValidationError(`${where} in the synthesized stack has an unexpected shape: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}.`, {
    remedy: 'Synthesize the stack again with this checkout (`npx cdktf synth`), then rerun `lifeboat cost`.',
  });
}

/** '512M', '512Mi', '1G', '1Gi' → MB. */
export function parseFunctionMemoryMb(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(M|Mi|G|Gi)$/.exec(text.trim());
  if (!m) throw new ValidationError(`function memory ${JSON.stringify(text)} is not a size like '512M' or '1Gi'`);
  const n = Number(m[1]);
  return m[2]?.startsWith('G') ? n * 1024 : n;
}

/** Minutes between runs of a cron schedule; only the every-N-minutes forms Lifeboat writes. */
export function cronIntervalMinutes(schedule: string): number {
  const s = schedule.trim().split(/\s+/);
  if (s.length === 5 && s.slice(1).every((f) => f === '*')) {
    if (s[0] === '*') return 1;
    const m = /^\*\/(\d+)$/.exec(s[0] ?? '');
    if (m) return Number(m[1]);
  }
  throw new ValidationError(`scheduler schedule ${JSON.stringify(schedule)} is not '* * * * *' or '*/N * * * *'.`, {
    remedy: 'lifeboat cost only understands the schedules Lifeboat writes; compute this job by hand.',
  });
}

/** '* * * * *' for 60 s, '*\/5 * * * *' for 300 s. */
export function cronForIntervalSeconds(seconds: number): string {
  const minutes = Math.round(seconds / 60);
  return minutes <= 1 ? '* * * * *' : `*/${minutes} * * * *`;
}

function readSetting(env: Readonly<Record<string, string>>, path: string): string {
  const name = envVarName(path);
  const v = env[name];
  if (v === undefined) {
    throw new ValidationError(`the functions in the synthesized stack do not set ${name} (${path}).`, {
      remedy: 'Synthesize the stack again with this checkout (`npx cdktf synth`); Lifeboat passes every setting to its functions.',
    });
  }
  return v;
}

function numberSetting(env: Readonly<Record<string, string>>, path: string): number {
  const v = Number(readSetting(env, path));
  if (!Number.isFinite(v) || v <= 0) throw new ValidationError(`${envVarName(path)} in the synthesized stack is not a positive number`);
  return v;
}

/** The cost-relevant facts of a synthesized Lifeboat stack (cdk.tf.json). */
export function readStackFacts(tfJson: unknown): StackFacts {
  const doc = parsed(tfJsonSchema, tfJson, 'the document');
  const res = (type: string) => Object.entries(doc.resource[type] ?? {});

  const fns = res('google_cloudfunctions2_function').map(([id, v]) => ({ id, fn: parsed(fnSchema, v, `google_cloudfunctions2_function.${id}`) }));
  if (fns.length === 0) {
    throw new ValidationError('the synthesized stack has no Cloud Functions: it is not a Lifeboat stack.', {
      remedy: 'Point lifeboat cost at cdktf.out/stacks/lifeboat/cdk.tf.json, or remove cdktf.out so it synthesizes the stack itself.',
    });
  }
  const env = fns.find((f) => f.fn.service_config.environment_variables)?.fn.service_config.environment_variables ?? {};
  const settings: IdleSettings = {
    heartbeatIntervalSeconds: numberSetting(env, 'agent.heartbeatIntervalSeconds'),
    leaseRenewIntervalSeconds: numberSetting(env, 'lease.renewIntervalSeconds'),
    probeScheduleIntervalSeconds: numberSetting(env, 'probe.scheduleIntervalSeconds'),
    probeRecheckIntervalSeconds: numberSetting(env, 'probe.recheckIntervalSeconds'),
    probeContinuous: readSetting(env, 'probe.continuous') === 'true',
    dnsTtlSeconds: Number(readSetting(env, 'dns.ttlSeconds')),
  };

  const sqls = res('google_sql_database_instance').map(([id, v]) => parsed(sqlSchema, v, `google_sql_database_instance.${id}`));
  const sqlDoc = sqls[0];
  const sql = sqlDoc
    ? {
        tier: sqlDoc.settings.tier,
        diskGb: sqlDoc.settings.disk_size ?? 10,
        diskType: sqlDoc.settings.disk_type ?? 'PD_SSD',
        backups: sqlDoc.settings.backup_configuration?.enabled === true,
        publicIp: sqlDoc.settings.ip_configuration?.ipv4_enabled !== false,
      }
    : undefined;

  const region = (() => {
    const loc = (Object.values(doc.resource.google_cloudfunctions2_function ?? {})[0] as { location?: unknown } | undefined)?.location;
    return typeof loc === 'string' ? loc : 'unknown';
  })();

  return {
    region,
    sql,
    functions: fns.map(({ fn }) => ({
      name: fn.name,
      memoryMb: parseFunctionMemoryMb(fn.service_config.available_memory),
      entryPoint: fn.build_config.entry_point,
      secretEnvCount: fn.service_config.secret_environment_variables?.length ?? 0,
    })),
    schedulerJobMinutes: res('google_cloud_scheduler_job').map(([id, v]) => cronIntervalMinutes(parsed(schedulerSchema, v, `google_cloud_scheduler_job.${id}`).schedule)),
    dnsZonesCreated: res('google_dns_managed_zone').length,
    secretVersions: res('google_secret_manager_secret_version').length,
    alertConditions: res('google_monitoring_alert_policy').reduce(
      (n, [id, v]) => n + parsed(alertSchema, v, `google_monitoring_alert_policy.${id}`).conditions.length,
      0,
    ),
    logMetrics: res('google_logging_metric').length,
    bucketLocations: res('google_storage_bucket').map(([id, v]) => parsed(bucketSchema, v, `google_storage_bucket.${id}`).location.toLowerCase()),
    runServicesMinInstances: res('google_cloud_run_v2_service').map(
      ([id, v]) => parsed(runSchema, v, `google_cloud_run_v2_service.${id}`).template.scaling?.min_instance_count ?? 0,
    ),
    settings,
  };
}

// ---------------------------------------------------------------------------
// Assumptions: what the figures cannot come from the stack

export interface IdleAssumptions {
  /** Billed time of one apply invocation for a heartbeat batch (one small transaction). */
  readonly applySecondsPerHeartbeat: number;
  /** Time of one probe check: the health URL plus a Firestore read. */
  readonly probeSecondsPerCheck: number;
  readonly leaseReadsPerRenewal: number;
  readonly leaseWritesPerRenewal: number;
  /** The probe reads the lease (and its own state) once per check… */
  readonly probeReadsPerCheck: number;
  /** …and writes its result once per run. */
  readonly probeWritesPerRun: number;
  /** Resolvers that keep re-asking for the app's record (each asks once per TTL). */
  readonly dnsResolvers: number;
  readonly cloudSqlBackupGb: number;
  /** Function source zips, reports and claim checks while idle. */
  readonly bucketGb: number;
  /** Secret reads: once per function instance start. */
  readonly instanceStartsPerFunctionPerDay: number;
  /** Platform request log plus the function's own lines, per invocation. */
  readonly logBytesPerInvocation: number;
  /** One built image per function in Artifact Registry. */
  readonly imageGbPerFunction: number;
  /** Alert evaluation: series returned per condition per minute. */
  readonly alertSeriesPerConditionPerMinute: number;
  /** Log-based metric data: bytes per metric per minute written to Monitoring. */
  readonly metricBytesPerMetricPerMinute: number;
}

export const DEFAULT_ASSUMPTIONS: IdleAssumptions = {
  applySecondsPerHeartbeat: 0.1,
  probeSecondsPerCheck: 1,
  leaseReadsPerRenewal: 1,
  leaseWritesPerRenewal: 1,
  probeReadsPerCheck: 1,
  probeWritesPerRun: 1,
  dnsResolvers: 5,
  cloudSqlBackupGb: 1,
  bucketGb: 0.05,
  instanceStartsPerFunctionPerDay: 4,
  logBytesPerInvocation: 1500,
  imageGbPerFunction: 0.15,
  alertSeriesPerConditionPerMinute: 6,
  metricBytesPerMetricPerMinute: 80,
};

// ---------------------------------------------------------------------------
// The estimate

export type CostGroup = 'cloud-sql' | 'beyond-cloud-sql';

export interface CostRow {
  readonly resource: string;
  readonly group: CostGroup;
  /** What drives the figure, in words with the numbers. */
  readonly usage: string;
  readonly listUsdPerMonth: number;
  /** Covered by free tiers (≥ 0). */
  readonly freeTierUsdPerMonth: number;
  readonly usdPerMonth: number;
  readonly prices: readonly string[];
}

export interface IdleCostReport {
  readonly pricesTakenOn: string;
  readonly region: string;
  readonly rows: readonly CostRow[];
  readonly totals: {
    readonly usdPerMonth: number;
    readonly listUsdPerMonth: number;
    readonly cloudSqlUsdPerMonth: number;
    readonly idleBeyondCloudSqlUsdPerMonth: number;
    readonly idleBeyondCloudSqlListUsdPerMonth: number;
  };
  readonly goalUsdPerMonth: number;
  readonly meetsGoal: boolean;
  readonly settings: IdleSettings;
  readonly assumptions: IdleAssumptions;
  readonly notes: readonly string[];
}

const round = (n: number) => Math.round(n * 10_000) / 10_000;
const grain = GCP_PRICES.cloudRun.billingGrainSeconds;
const billed = (seconds: number) => Math.round(Math.ceil(seconds / grain - 1e-9) * grain * 1e6) / 1e6;
const fmt = (n: number) => (Number.isInteger(n) ? n.toLocaleString('en-US') : n.toLocaleString('en-US', { maximumFractionDigits: 2 }));

/** Hourly price of a Cloud SQL tier: shared-core table, or db-custom-CPU-MB. */
export function cloudSqlTierHourly(tier: string): { usd: number; price: Price[] } {
  const shared = CLOUD_SQL_SHARED_CORE_HOURLY[tier];
  if (shared) return { usd: shared.usd, price: [shared] };
  const m = /^db-custom-(\d+)-(\d+)$/.exec(tier);
  if (m) {
    const { vcpuHour, memoryGbHour } = GCP_PRICES.cloudSql;
    return { usd: Number(m[1]) * vcpuHour.usd + (Number(m[2]) / 1024) * memoryGbHour.usd, price: [vcpuHour, memoryGbHour] };
  }
  throw new ValidationError(`no price known for Cloud SQL tier ${JSON.stringify(tier)}.`, {
    remedy: "lifeboat cost knows db-f1-micro, db-g1-small and db-custom-CPU-MB tiers; add the tier's hourly price to core/gcp-prices.ts.",
  });
}

interface Draft {
  resource: string;
  group: CostGroup;
  usage: string;
  list: number;
  free: number;
  prices: Price[];
}

/** Splits one free-tier allowance over several rows in proportion to their use. */
function creditShared(drafts: Draft[], uses: number[], unitPrice: number, allowance: number): void {
  const total = uses.reduce((a, b) => a + b, 0);
  const covered = Math.min(total, allowance);
  if (total <= 0) return;
  drafts.forEach((d, i) => {
    d.free += ((uses[i] ?? 0) / total) * covered * unitPrice;
  });
}

export function estimateIdleCost(facts: StackFacts, assumptions: IdleAssumptions = DEFAULT_ASSUMPTIONS): IdleCostReport {
  const P = GCP_PRICES;
  const s = facts.settings;
  const a = assumptions;
  const rows: Draft[] = [];
  const notes: string[] = [];

  // Cloud SQL
  if (facts.sql) {
    const tier = cloudSqlTierHourly(facts.sql.tier);
    rows.push({ resource: `Cloud SQL instance (${facts.sql.tier})`, group: 'cloud-sql', usage: `${HOURS_PER_MONTH} h`, list: tier.usd * HOURS_PER_MONTH, free: 0, prices: tier.price });
    const disk = facts.sql.diskType === 'PD_HDD' ? P.cloudSql.hddGbMonth : P.cloudSql.ssdGbMonth;
    rows.push({ resource: 'Cloud SQL storage', group: 'cloud-sql', usage: `${facts.sql.diskGb} GB ${facts.sql.diskType}`, list: facts.sql.diskGb * disk.usd, free: 0, prices: [disk] });
    if (facts.sql.backups) {
      rows.push({ resource: 'Cloud SQL backups', group: 'cloud-sql', usage: `${a.cloudSqlBackupGb} GB retained (assumed)`, list: a.cloudSqlBackupGb * P.cloudSql.backupGbMonth.usd, free: 0, prices: [P.cloudSql.backupGbMonth] });
    }
    if (facts.sql.publicIp) {
      notes.push(
        `Cloud SQL's public IPv4 address costs $${P.cloudSql.publicIpv4Hour.usd} an hour only while the instance is stopped; a running standby pays nothing for it.`,
      );
    }
  } else {
    notes.push('The stack has no Cloud SQL instance; its cost is not included.');
  }

  // Functions: heartbeats drive apply, the scheduler drives probe.
  const heartbeats = SECONDS_PER_MONTH / s.heartbeatIntervalSeconds;
  const probeRuns = SECONDS_PER_MONTH / s.probeScheduleIntervalSeconds;
  const checksPerRun = s.probeContinuous ? Math.max(1, Math.floor(s.probeScheduleIntervalSeconds / s.probeRecheckIntervalSeconds)) : 1;
  const probeRunSeconds = s.probeContinuous ? s.probeScheduleIntervalSeconds : a.probeSecondsPerCheck;
  const fnDrafts: Draft[] = [];
  const fnUse: { vcpu: number; gib: number; req: number }[] = [];
  for (const f of facts.functions) {
    const vcpu = defaultFunctionVcpu(f.memoryMb);
    const gib = f.memoryMb / 1024;
    let invocations = 0;
    let seconds = 0;
    let usage: string;
    if (f.entryPoint === 'lifeboatApply') {
      invocations = heartbeats;
      seconds = billed(a.applySecondsPerHeartbeat);
      usage = `${fmt(Math.round(invocations))} heartbeat batches × ${seconds} s at ${vcpu} vCPU, ${f.memoryMb} MB`;
    } else if (f.entryPoint === 'lifeboatProbe') {
      invocations = probeRuns;
      seconds = billed(probeRunSeconds);
      usage = `${fmt(Math.round(invocations))} runs × ${seconds} s${s.probeContinuous ? ' (continuous)' : ''} at ${vcpu} vCPU, ${f.memoryMb} MB`;
    } else {
      usage = 'only when called (lifeboat status); 0 while idle';
    }
    const use = { vcpu: invocations * seconds * vcpu, gib: invocations * seconds * gib, req: invocations };
    fnUse.push(use);
    fnDrafts.push({
      resource: `Cloud Function ${f.name}`,
      group: 'beyond-cloud-sql',
      usage,
      list: use.vcpu * P.cloudRun.vcpuSecond.usd + use.gib * P.cloudRun.gibSecond.usd + (use.req / 1e6) * P.cloudRun.millionRequests.usd,
      free: 0,
      prices: [P.cloudRun.vcpuSecond, P.cloudRun.gibSecond, P.cloudRun.millionRequests],
    });
  }
  creditShared(fnDrafts, fnUse.map((u) => u.vcpu), P.cloudRun.vcpuSecond.usd, P.cloudRun.freeVcpuSecondsPerMonth);
  creditShared(fnDrafts, fnUse.map((u) => u.gib), P.cloudRun.gibSecond.usd, P.cloudRun.freeGibSecondsPerMonth);
  creditShared(fnDrafts, fnUse.map((u) => u.req), P.cloudRun.millionRequests.usd / 1e6, P.cloudRun.freeRequestsPerMonth);
  rows.push(...fnDrafts);

  // Cloud Scheduler
  const jobs = facts.schedulerJobMinutes.length;
  rows.push({
    resource: 'Cloud Scheduler',
    group: 'beyond-cloud-sql',
    usage: `${jobs} job${jobs === 1 ? '' : 's'}`,
    list: jobs * P.scheduler.jobMonth.usd,
    free: Math.min(jobs, P.scheduler.freeJobs) * P.scheduler.jobMonth.usd,
    prices: [P.scheduler.jobMonth],
  });

  // Pub/Sub: each heartbeat is one publish request and one push delivery, billed at the 1000-byte minimum.
  const pubsubGib = (heartbeats * 2 * P.pubsub.minBytesPerRequest) / 1024 ** 3;
  const pubsubList = (pubsubGib / 1024) * P.pubsub.tib.usd;
  rows.push({
    resource: 'Pub/Sub',
    group: 'beyond-cloud-sql',
    usage: `${fmt(Math.round(heartbeats))} heartbeats × (publish + push) × ${P.pubsub.minBytesPerRequest} B = ${fmt(pubsubGib)} GiB`,
    list: pubsubList,
    free: (Math.min(pubsubGib, P.pubsub.freeGibPerMonth) / 1024) * P.pubsub.tib.usd,
    prices: [P.pubsub.tib],
  });

  // Firestore: lease renewals and probe checks; the free quota is per day.
  const renewalsPerDay = 86_400 / s.leaseRenewIntervalSeconds;
  const runsPerDay = 86_400 / s.probeScheduleIntervalSeconds;
  const readsPerDay = renewalsPerDay * a.leaseReadsPerRenewal + runsPerDay * checksPerRun * a.probeReadsPerCheck;
  const writesPerDay = renewalsPerDay * a.leaseWritesPerRenewal + runsPerDay * a.probeWritesPerRun;
  const fsReadList = ((readsPerDay * DAYS_PER_MONTH) / 1e5) * P.firestore.hundredThousandReads.usd;
  const fsWriteList = ((writesPerDay * DAYS_PER_MONTH) / 1e5) * P.firestore.hundredThousandWrites.usd;
  const fsFree =
    ((Math.min(readsPerDay, P.firestore.freeReadsPerDay) * DAYS_PER_MONTH) / 1e5) * P.firestore.hundredThousandReads.usd +
    ((Math.min(writesPerDay, P.firestore.freeWritesPerDay) * DAYS_PER_MONTH) / 1e5) * P.firestore.hundredThousandWrites.usd;
  rows.push({
    resource: 'Firestore (lease and probe state)',
    group: 'beyond-cloud-sql',
    usage: `${fmt(Math.round(readsPerDay))} reads and ${fmt(Math.round(writesPerDay))} writes a day (free: ${fmt(P.firestore.freeReadsPerDay)} and ${fmt(P.firestore.freeWritesPerDay)})`,
    list: fsReadList + fsWriteList,
    free: fsFree,
    prices: [P.firestore.hundredThousandReads, P.firestore.hundredThousandWrites],
  });

  // Cloud DNS: the zone (when the stack creates it) and the queries the low TTL causes.
  const queries = a.dnsResolvers * (SECONDS_PER_MONTH / Math.max(1, s.dnsTtlSeconds));
  rows.push({
    resource: 'Cloud DNS',
    group: 'beyond-cloud-sql',
    usage: `${facts.dnsZonesCreated} managed zone${facts.dnsZonesCreated === 1 ? '' : 's'}; ${fmt(Math.round(queries))} queries (${a.dnsResolvers} resolvers, TTL ${s.dnsTtlSeconds} s)`,
    list: facts.dnsZonesCreated * HOURS_PER_MONTH * P.dns.zoneHour.usd + (queries / 1e6) * P.dns.millionQueries.usd,
    free: 0,
    prices: [P.dns.zoneHour, P.dns.millionQueries],
  });

  // Cloud Storage: the function source and reports; no operations while idle.
  const buckets = facts.bucketLocations.length;
  const storageList = buckets * a.bucketGb * P.storage.standardRegionalGbMonth.usd;
  const inFreeRegion = facts.bucketLocations.some((l) => P.storage.freeRegions.includes(l));
  rows.push({
    resource: 'Cloud Storage',
    group: 'beyond-cloud-sql',
    usage: `${buckets} bucket${buckets === 1 ? '' : 's'} × ${a.bucketGb} GB (function source, reports)`,
    list: storageList,
    free: inFreeRegion ? Math.min(storageList, P.storage.freeGbMonthsUsRegions * P.storage.standardRegionalGbMonth.usd) : 0,
    prices: [P.storage.standardRegionalGbMonth],
  });

  // Secret Manager: versions, plus one read per secret per instance start.
  const secretReads = facts.functions.reduce((n, f) => n + f.secretEnvCount, 0) * a.instanceStartsPerFunctionPerDay * DAYS_PER_MONTH;
  const smList = facts.secretVersions * P.secretManager.activeVersionMonth.usd + (secretReads / 1e4) * P.secretManager.tenThousandAccesses.usd;
  rows.push({
    resource: 'Secret Manager',
    group: 'beyond-cloud-sql',
    usage: `${facts.secretVersions} active versions; ${fmt(Math.round(secretReads))} reads (${a.instanceStartsPerFunctionPerDay} instance starts a day per function)`,
    list: smList,
    free:
      Math.min(facts.secretVersions, P.secretManager.freeActiveVersions) * P.secretManager.activeVersionMonth.usd +
      (Math.min(secretReads, P.secretManager.freeAccessesPerMonth) / 1e4) * P.secretManager.tenThousandAccesses.usd,
    prices: [P.secretManager.activeVersionMonth, P.secretManager.tenThousandAccesses],
  });

  // Cloud Monitoring: alert conditions and the series they read; log-based metric data.
  const series = facts.alertConditions * a.alertSeriesPerConditionPerMinute * (SECONDS_PER_MONTH / 60);
  rows.push({
    resource: 'Cloud Monitoring alerting',
    group: 'beyond-cloud-sql',
    usage: `${facts.alertConditions} condition${facts.alertConditions === 1 ? '' : 's'}; ${fmt(Math.round(series))} series returned`,
    list: facts.alertConditions * P.monitoring.alertConditionMonth.usd + (series / 1e6) * P.monitoring.millionTimeSeriesReturned.usd,
    free: 0,
    prices: [P.monitoring.alertConditionMonth, P.monitoring.millionTimeSeriesReturned],
  });
  const metricMib = (facts.logMetrics * a.metricBytesPerMetricPerMinute * (SECONDS_PER_MONTH / 60)) / 1024 ** 2;
  rows.push({
    resource: 'Cloud Monitoring log-based metrics and dashboard',
    group: 'beyond-cloud-sql',
    usage: `${facts.logMetrics} log-based metrics, ${fmt(metricMib)} MiB of metric data (free: ${P.monitoring.freeMetricMibPerMonth} MiB)`,
    list: metricMib * P.monitoring.metricMib.usd,
    free: Math.min(metricMib, P.monitoring.freeMetricMibPerMonth) * P.monitoring.metricMib.usd,
    prices: [P.monitoring.metricMib],
  });

  // Cloud Logging: every invocation writes a request log and a few lines.
  const logGib = ((heartbeats + probeRuns * checksPerRun) * a.logBytesPerInvocation) / 1024 ** 3;
  rows.push({
    resource: 'Cloud Logging',
    group: 'beyond-cloud-sql',
    usage: `${fmt(logGib)} GiB of logs (free: ${P.logging.freeGibPerMonth} GiB per project)`,
    list: logGib * P.logging.gib.usd,
    free: Math.min(logGib, P.logging.freeGibPerMonth) * P.logging.gib.usd,
    prices: [P.logging.gib],
  });

  // Artifact Registry: the images Cloud Build made of the functions.
  const imageGb = facts.functions.length * a.imageGbPerFunction;
  rows.push({
    resource: 'Artifact Registry (function images)',
    group: 'beyond-cloud-sql',
    usage: `${facts.functions.length} images × ${a.imageGbPerFunction} GB`,
    list: imageGb * P.artifactRegistry.gbMonth.usd,
    free: Math.min(imageGb, P.artifactRegistry.freeGbPerMonth) * P.artifactRegistry.gbMonth.usd,
    prices: [P.artifactRegistry.gbMonth],
  });

  // Cloud Run: the app's copy costs nothing at 0 instances.
  for (const min of facts.runServicesMinInstances) {
    rows.push({
      resource: 'Cloud Run (app copy)',
      group: 'beyond-cloud-sql',
      usage: min === 0 ? '0 instances until failover' : `${min} always-on instances (not idle-priced here)`,
      list: 0,
      free: 0,
      prices: [P.cloudRun.vcpuSecond, P.cloudRun.gibSecond],
    });
    if (min > 0) notes.push(`The Cloud Run service keeps ${min} instances warm; that cost is not in this estimate.`);
  }

  if (!['us-central1', 'us-east1', 'us-east4', 'us-west1', 'europe-west1', 'europe-west4', 'europe-north1', 'asia-east1', 'asia-northeast1', 'unknown'].includes(facts.region)) {
    notes.push(`Prices are Tier 1 list prices (us-central1, europe-west1); ${facts.region} may cost more.`);
  }
  notes.push('Free tiers are counted as if Lifeboat were the only user of its billing account (Firestore and Logging: of its project).');

  const finalRows: CostRow[] = rows.map((d) => {
    const free = Math.min(d.free, d.list);
    return {
      resource: d.resource,
      group: d.group,
      usage: d.usage,
      listUsdPerMonth: round(d.list),
      freeTierUsdPerMonth: round(free),
      usdPerMonth: round(d.list - free),
      prices: [...new Set(d.prices.map((x) => `$${x.usd} ${x.per} (${x.source.url}; ${x.source.certainty})`))],
    };
  });
  const sum = (f: (r: CostRow) => number, g?: CostGroup) => round(finalRows.filter((r) => !g || r.group === g).reduce((n, r) => n + f(r), 0));
  const beyond = sum((r) => r.usdPerMonth, 'beyond-cloud-sql');
  return {
    pricesTakenOn: PRICES_TAKEN_ON,
    region: facts.region,
    rows: finalRows,
    totals: {
      usdPerMonth: sum((r) => r.usdPerMonth),
      listUsdPerMonth: sum((r) => r.listUsdPerMonth),
      cloudSqlUsdPerMonth: sum((r) => r.usdPerMonth, 'cloud-sql'),
      idleBeyondCloudSqlUsdPerMonth: beyond,
      idleBeyondCloudSqlListUsdPerMonth: sum((r) => r.listUsdPerMonth, 'beyond-cloud-sql'),
    },
    goalUsdPerMonth: IDLE_GOAL_USD_PER_MONTH,
    meetsGoal: beyond <= IDLE_GOAL_USD_PER_MONTH,
    settings: s,
    assumptions: a,
    notes,
  };
}

// ---------------------------------------------------------------------------
// Sensitivity: how one setting moves the idle cost beyond Cloud SQL

export interface SensitivityPoint {
  readonly setting: string;
  readonly value: string;
  readonly current: boolean;
  readonly idleBeyondCloudSqlUsdPerMonth: number;
  readonly idleBeyondCloudSqlListUsdPerMonth: number;
}

const VARIATIONS: readonly { setting: string; key: keyof IdleSettings; values: readonly (number | boolean)[] }[] = [
  { setting: 'probe.continuous', key: 'probeContinuous', values: [false, true] },
  { setting: 'probe.scheduleIntervalSeconds', key: 'probeScheduleIntervalSeconds', values: [60, 120, 300] },
  { setting: 'lease.renewIntervalSeconds', key: 'leaseRenewIntervalSeconds', values: [2, 5, 10, 15] },
  { setting: 'agent.heartbeatIntervalSeconds', key: 'heartbeatIntervalSeconds', values: [2, 5, 10] },
];

/**
 * The idle cost beyond Cloud SQL with one setting changed at a time. The
 * values are not checked against the timing rules (lifeboat config check does
 * that); they only show the price of each choice.
 */
export function idleCostSensitivity(facts: StackFacts, assumptions: IdleAssumptions = DEFAULT_ASSUMPTIONS): SensitivityPoint[] {
  const out: SensitivityPoint[] = [];
  for (const v of VARIATIONS) {
    const values = [...v.values];
    const currentValue = facts.settings[v.key];
    if (!values.includes(currentValue)) values.push(currentValue);
    values.sort((x, y) => Number(x) - Number(y));
    for (const value of values) {
      const r = estimateIdleCost({ ...facts, settings: { ...facts.settings, [v.key]: value } }, assumptions);
      out.push({
        setting: v.setting,
        value: String(value),
        current: value === currentValue,
        idleBeyondCloudSqlUsdPerMonth: r.totals.idleBeyondCloudSqlUsdPerMonth,
        idleBeyondCloudSqlListUsdPerMonth: r.totals.idleBeyondCloudSqlListUsdPerMonth,
      });
    }
  }
  return out;
}
