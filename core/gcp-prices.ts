// Google Cloud list prices (USD) that the idle-cost model (idle-cost.ts) uses.
//
// Taken on 2026-11-23 from stored copies of Google's public pricing pages
// (this machine has no internet; the copies were read through a search index
// of public pages). Each entry names its page and says how sure the figure is:
//
//   'page'      the number was read on the named page (or a verbatim transcript of it)
//   'secondary' read on a third-party page that quotes the official one
//   'recalled'  the official page could not be re-read here; the figure is the
//               long-standing published list price, to be re-checked before relying on it
//
// Prices are for Tier 1 regions (us-central1, europe-west1, ...) without
// discounts. Free tiers are per billing account unless noted (Firestore: per
// project, (default) database only; Cloud Logging: per project).
//
// Re-check these when Google changes a price; `lifeboat cost` prints PRICES_TAKEN_ON.

export const PRICES_TAKEN_ON = '2026-11-23';

export type PriceCertainty = 'page' | 'secondary' | 'recalled';

export interface PriceSource {
  readonly url: string;
  readonly certainty: PriceCertainty;
  /** The date printed on or recorded for the copy that was read, when known. */
  readonly copyDated?: string;
}

const SOURCES = {
  cloudSql: { url: 'https://cloud.google.com/sql/pricing', certainty: 'recalled' },
  cloudSqlCustom: { url: 'https://www.usage.ai/blogs/gcp/cloud-sql/pricing/ (quoting cloud.google.com/sql/pricing)', certainty: 'secondary', copyDated: '2026-05' },
  cloudSqlIp: { url: 'https://www.data-max.io/post/three-cost-pitfalls-on-cloud-sql (on cloud.google.com/sql/pricing, network section)', certainty: 'secondary' },
  cloudRun: { url: 'https://cloud.google.com/run/pricing', certainty: 'page' },
  scheduler: { url: 'https://cloud.google.com/scheduler/pricing', certainty: 'page' },
  pubsub: { url: 'https://cloud.google.com/pubsub/pricing', certainty: 'page' },
  firestore: { url: 'https://cloud.google.com/firestore/pricing', certainty: 'page' },
  firestoreOps: { url: 'https://cloud.google.com/firestore/pricing (multi-region rates; regional rates are lower)', certainty: 'secondary' },
  dns: { url: 'https://cloud.google.com/dns/pricing (transcript in github.com/api-evangelist/google-cloud-dns)', certainty: 'page', copyDated: '2026-09-20' },
  storage: { url: 'https://cloud.google.com/storage/pricing-examples', certainty: 'page' },
  storageFree: { url: 'https://cloud.google.com/free', certainty: 'recalled' },
  secretManager: { url: 'https://cloud.google.com/secret-manager/pricing', certainty: 'page' },
  alerting: { url: 'https://cloud.google.com/monitoring/alerts/cost-control', certainty: 'page' },
  monitoringMetrics: { url: 'https://cloud.google.com/stackdriver/pricing', certainty: 'recalled' },
  logging: { url: 'https://cloud.google.com/stackdriver/pricing', certainty: 'page' },
  artifactRegistry: { url: 'https://cloud.google.com/artifact-registry/pricing', certainty: 'recalled' },
} as const satisfies Record<string, PriceSource>;

export interface Price {
  readonly usd: number;
  /** What one unit is, in words: 'per hour', 'per GiB-month'… */
  readonly per: string;
  readonly source: PriceSource;
}

const p = (usd: number, per: string, source: PriceSource): Price => ({ usd, per, source });

/** Shared-core Cloud SQL tiers (Enterprise edition, per instance-hour). */
export const CLOUD_SQL_SHARED_CORE_HOURLY: Readonly<Record<string, Price>> = {
  'db-f1-micro': p(0.0105, 'per hour (shared vCPU, 0.6 GB)', SOURCES.cloudSql),
  'db-g1-small': p(0.035, 'per hour (shared vCPU, 1.7 GB)', SOURCES.cloudSql),
};

export const GCP_PRICES = {
  cloudSql: {
    /** Dedicated-core tiers (db-custom-CPU-MB, Enterprise edition). */
    vcpuHour: p(0.0413, 'per vCPU-hour', SOURCES.cloudSqlCustom),
    memoryGbHour: p(0.007, 'per GB-hour', SOURCES.cloudSqlCustom),
    ssdGbMonth: p(0.17, 'per GB-month of SSD storage', SOURCES.cloudSql),
    hddGbMonth: p(0.09, 'per GB-month of HDD storage', SOURCES.cloudSql),
    backupGbMonth: p(0.08, 'per GB-month of backups', SOURCES.cloudSql),
    /** Charged only while the instance is stopped (the address stays reserved). */
    publicIpv4Hour: p(0.01, 'per hour for the public IPv4 address of a stopped instance', SOURCES.cloudSqlIp),
  },
  /** Cloud Run services billed per request (Cloud Functions 2nd gen runs on these). */
  cloudRun: {
    vcpuSecond: p(0.000024, 'per vCPU-second', SOURCES.cloudRun),
    gibSecond: p(0.0000025, 'per GiB-second', SOURCES.cloudRun),
    millionRequests: p(0.4, 'per million requests', SOURCES.cloudRun),
    freeVcpuSecondsPerMonth: 180_000,
    freeGibSecondsPerMonth: 360_000,
    freeRequestsPerMonth: 2_000_000,
    /** Billed time is rounded up to this grain per request. */
    billingGrainSeconds: 0.1,
  },
  scheduler: {
    jobMonth: p(0.1, 'per job per 31 days', SOURCES.scheduler),
    freeJobs: 3,
  },
  pubsub: {
    tib: p(40, 'per TiB of publish and delivery throughput', SOURCES.pubsub),
    freeGibPerMonth: 10,
    /** Each publish, push or pull request is billed at least this many bytes. */
    minBytesPerRequest: 1000,
  },
  firestore: {
    hundredThousandReads: p(0.06, 'per 100,000 document reads', SOURCES.firestoreOps),
    hundredThousandWrites: p(0.18, 'per 100,000 document writes', SOURCES.firestoreOps),
    hundredThousandDeletes: p(0.02, 'per 100,000 document deletes', SOURCES.firestoreOps),
    /** Per day, per project, (default) database only. */
    freeReadsPerDay: 50_000,
    freeWritesPerDay: 20_000,
    freeDeletesPerDay: 20_000,
    freeSource: SOURCES.firestore,
  },
  dns: {
    zoneHour: p(0.000273973, 'per managed zone-hour (first 25 zones; $0.20 per month)', SOURCES.dns),
    millionQueries: p(0.4, 'per million queries (first billion)', SOURCES.dns),
  },
  storage: {
    standardRegionalGbMonth: p(0.02, 'per GB-month, Standard class, regional (us-central1, europe-west1)', SOURCES.storage),
    thousandClassA: p(0.005, 'per 1,000 Class A operations (writes, lists)', SOURCES.storage),
    thousandClassB: p(0.0004, 'per 1,000 Class B operations (reads)', SOURCES.storage),
    /** Always Free: only in us-east1, us-west1, us-central1. */
    freeGbMonthsUsRegions: 5,
    freeRegions: ['us-east1', 'us-west1', 'us-central1'] as readonly string[],
    freeSource: SOURCES.storageFree,
  },
  secretManager: {
    activeVersionMonth: p(0.06, 'per active secret version per location per month', SOURCES.secretManager),
    tenThousandAccesses: p(0.03, 'per 10,000 access operations', SOURCES.secretManager),
    freeActiveVersions: 6,
    freeAccessesPerMonth: 10_000,
  },
  monitoring: {
    alertConditionMonth: p(1.5, 'per alerting-policy condition per month', SOURCES.alerting),
    millionTimeSeriesReturned: p(0.35, 'per million time series returned by alert evaluation', SOURCES.alerting),
    /** Dashboards and log-based metric definitions are free; metric data is free up to this. */
    freeMetricMibPerMonth: 150,
    metricMib: p(0.258, 'per MiB of metric data beyond the free allotment', SOURCES.monitoringMetrics),
  },
  logging: {
    gib: p(0.5, 'per GiB of logs stored (first 30 days included)', SOURCES.logging),
    /** Per project per month. */
    freeGibPerMonth: 50,
  },
  artifactRegistry: {
    gbMonth: p(0.1, 'per GB-month of container images (function builds)', SOURCES.artifactRegistry),
    freeGbPerMonth: 0.5,
  },
} as const;

export type GcpPrices = typeof GCP_PRICES;

/**
 * vCPU that Cloud Functions (2nd gen) gives an instance of this memory when
 * `available_cpu` is not set (cloud.google.com/functions/docs/configuring/memory).
 */
export function defaultFunctionVcpu(memoryMb: number): number {
  if (memoryMb <= 128) return 0.083;
  if (memoryMb <= 256) return 0.167;
  if (memoryMb <= 512) return 0.333;
  if (memoryMb <= 1024) return 0.583;
  if (memoryMb <= 2048) return 1;
  if (memoryMb <= 8192) return 2;
  if (memoryMb <= 16384) return 4;
  return 8;
}
