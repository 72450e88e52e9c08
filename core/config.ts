// The one configuration schema of Lifeboat: the agent, the Cloud Functions,
// the CLI and the cdktf stack all read a LifeboatConfig parsed from here.
//
// Every field has a description (`.describe()`), and a default wherever one
// makes sense, so that local mode works with an empty lifeboat.yaml. Values
// that have no sensible default in cloud mode (the Cloud SQL instance, the
// bucket, the DNS zone, the app's image...) are optional in the schema and
// listed by checkModeRequirements(), which names each missing one and what it
// is for. Cross-field timing rules live in checkTimingRules(); the loader
// (config-load.ts) runs both. Docs (docs/configuration.md) are generated from
// this file by scripts/gen-config-docs.ts.
//
// This module is pure: no I/O, no cloud SDK.

import { z } from 'zod';
import { ValidationError } from './errors.ts';

// ---------------------------------------------------------------------------
// Field metadata beyond the description

export interface FieldMeta {
  /** The value may carry a password or token: never print it unmasked. */
  readonly secret?: boolean;
  /** Required in cloud mode; the text says what it is for. */
  readonly cloud?: string;
  /** The default is computed from other fields (shown in docs). */
  readonly derived?: string;
  /** Appended to validation messages for this field (e.g. a platform limit). */
  readonly hint?: string;
  /** Display type override for docs (e.g. 'bytes'). */
  readonly type?: string;
}

const fieldMeta = new WeakMap<object, FieldMeta>();

/** Metadata recorded for a field schema (as found in a section's shape). */
export function getFieldMeta(schema: unknown): FieldMeta {
  return (typeof schema === 'object' && schema !== null && fieldMeta.get(schema)) || {};
}

function field<T extends z.ZodType>(schema: T, description: string, meta: FieldMeta = {}): T {
  const described = schema.describe(description);
  fieldMeta.set(described, meta);
  return described;
}

function section<S extends z.ZodRawShape>(shape: S, description: string) {
  return z.strictObject(shape).prefault({} as z.input<z.ZodObject<S, z.core.$strict>>).describe(description);
}

// ---------------------------------------------------------------------------
// Value types

const KIB = 1024;
const MIB = 1024 * KIB;
const GIB = 1024 * MIB;

/** Pub/Sub's limit is 10 MB per message; keep room for attributes and framing. */
export const MAX_PUBSUB_PAYLOAD_BYTES = 9_500_000;
/** The finest Cloud Scheduler grain. */
export const SCHEDULER_MIN_INTERVAL_SECONDS = 60;
/** Cloud DNS TTLs above this make failover slow to reach clients. */
export const DNS_TTL_WARN_SECONDS = 300;
/** The project id that marks a config never pointed at a real project. */
export const LOCAL_PROJECT = 'lifeboat-local';

const BYTE_UNITS: Record<string, number> = {
  b: 1,
  k: 1000, kb: 1000, kib: KIB,
  m: 1000 ** 2, mb: 1000 ** 2, mib: MIB,
  g: 1000 ** 3, gb: 1000 ** 3, gib: GIB,
  t: 1000 ** 4, tb: 1000 ** 4, tib: 1024 * GIB,
};

/**
 * A byte count from a number or a size string: '4MiB' (binary, 1024²),
 * '9.5MB' (decimal, 10⁶), '512' (bytes). Returns undefined when unparseable.
 */
export function parseByteSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  if (!m) return undefined;
  const unit = BYTE_UNITS[(m[2] ?? '').toLowerCase() || 'b'];
  if (unit === undefined) return undefined;
  const n = Math.floor(Number(m[1]) * unit);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** 4194304 → '4 MiB'; 1000 → '1000 B'. */
export function formatBytes(n: number): string {
  for (const [unit, size] of [['GiB', GIB], ['MiB', MIB], ['KiB', KIB]] as const) {
    if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  }
  if (n >= MIB) return `${(n / MIB).toFixed(1)} MiB (${n} B)`;
  return `${n} B`;
}

const bytes = () =>
  z
    .union([z.number(), z.string()])
    .transform((v, ctx) => {
      const n = parseByteSize(v);
      if (n === undefined) {
        ctx.issues.push({
          code: 'custom',
          input: v,
          message: `must be a byte count or a size like '4MiB' or '9.5MB', got ${JSON.stringify(v)}`,
        });
        return z.NEVER;
      }
      return n;
    });

const PG_SIZE_UNITS: Record<string, number> = { B: 1, kB: KIB, MB: MIB, GB: GIB, TB: 1024 * GIB };

/** A PostgreSQL size setting ('4GB', PostgreSQL's units are 1024-based) in bytes. */
export function parsePgSize(value: string): number | undefined {
  const m = /^(\d+)\s*(B|kB|MB|GB|TB)$/.exec(value.trim());
  if (!m) return undefined;
  return Number(m[1]) * (PG_SIZE_UNITS[m[2] ?? 'B'] ?? 1);
}

const pgSize = () =>
  z.string().refine((s) => parsePgSize(s) !== undefined, {
    error: "must be a PostgreSQL size such as '4GB' or '512MB' (units B, kB, MB, GB, TB; case-sensitive)",
  });

const seconds = () => z.number().positive();
const int = (min: number, max?: number) => {
  const s = z.number().int().min(min);
  return max === undefined ? s : s.max(max);
};
const port = () => int(0, 65535);

/** Lower-case unquoted PostgreSQL identifier. */
const PG_IDENT = /^[a-z_][a-z0-9_$]{0,62}$/;
const pgIdent = (what: string) =>
  z.string().regex(PG_IDENT, {
    error: `must be a lower-case PostgreSQL ${what} name (letters, digits, _; at most 63 characters)`,
  });
const qualifiedTable = z.string().regex(/^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$/, {
  error: "must be a schema-qualified table name such as 'public.orders'",
});

export function isPostgresUrl(s: string): boolean {
  if (!/^postgres(ql)?:\/\//.test(s)) return false;
  try {
    new URL(s);
    return true;
  } catch {
    return false;
  }
}
const postgresUrl = () =>
  z.string().refine(isPostgresUrl, {
    error: 'must be a postgres:// or postgresql:// URL such as postgres://app@localhost:5432/app',
  });

const httpUrl = () =>
  z.string().refine(
    (s) => {
      try {
        const u = new URL(s);
        return u.protocol === 'http:' || u.protocol === 'https:';
      } catch {
        return false;
      }
    },
    { error: 'must be an http:// or https:// URL' },
  );

const pubsubName = (what: string) =>
  z
    .string()
    .regex(/^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$/, {
      error: `must be a Pub/Sub ${what} name: 3-255 characters, starting with a letter (letters, digits, - _ . ~ + %)`,
    })
    .refine((s) => !s.toLowerCase().startsWith('goog'), { error: "must not start with 'goog'" });

const objectPrefix = () =>
  z.string().regex(/^(?:[^/].*\/)?$/, { error: "must be empty or a relative prefix ending in '/', e.g. 'reports/'" });

export const STREAM_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

// ---------------------------------------------------------------------------
// The schema

const functionMemory = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768] as const;
const memoryMb = () =>
  z
    .number()
    .int()
    .refine((n) => (functionMemory as readonly number[]).includes(n), {
      error: `must be one of ${functionMemory.join(', ')} (MB)`,
    });

const sourceSection = section(
  {
    databaseUrl: field(
      postgresUrl().optional(),
      "Connection URL of your local PostgreSQL (the app's database), used by the agent for logical replication and snapshots. Keep the password out of the file: set LIFEBOAT_SOURCE_DATABASE_URL or PGPASSWORD. Local mode without it uses the cluster that `lifeboat local` starts.",
      { secret: true, type: 'postgres URL' },
    ),
    publication: field(pgIdent('publication').default('lifeboat'), 'Name of the PostgreSQL publication the agent creates and reads.'),
    slot: field(
      pgIdent('replication slot').optional(),
      'Name of the logical replication slot (pgoutput). One slot per stream.',
      { derived: 'lifeboat_<stream>' },
    ),
    tables: field(
      z.array(qualifiedTable).default([]),
      "Tables to replicate, schema-qualified ('public.orders'). Empty means every table (FOR ALL TABLES).",
    ),
    excludeTables: field(
      z.array(qualifiedTable).default([]),
      'Tables never replicated, even when `tables` is empty (for example caches, sessions).',
    ),
    appRole: field(
      pgIdent('role').optional(),
      "The app's login role on the local database. When set, the agent's self-fence also revokes this role's CONNECT on the database (and PUBLIC's, when that is where it comes from), on top of making new sessions read-only and terminating every app session.",
    ),
    maxSlotWalKeepSize: field(
      pgSize().default('4GB'),
      "PostgreSQL's max_slot_wal_keep_size that setup checks for: the most WAL a stalled slot may hold before PostgreSQL invalidates it (protects your disk).",
    ),
    walRetentionWarnBytes: field(
      bytes().default(GIB),
      'Warn (agent health, `lifeboat status`) when the slot retains more WAL than this. Accepts a byte count or a size such as 1GiB.',
      { type: 'bytes' },
    ),
  },
  'The local PostgreSQL that is replicated.',
);

const targetSection = section(
  {
    databaseUrl: field(
      postgresUrl().optional(),
      'Connection URL of the standby database when connecting directly (local mode, or a Cloud SQL instance reached over its IP).',
      { secret: true, type: 'postgres URL' },
    ),
    instanceConnectionName: field(
      z
        .string()
        .regex(/^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]*:[a-z0-9-]+:[a-z0-9][a-z0-9-]*$/, {
          error: "must be a Cloud SQL instance connection name 'project:region:instance'",
        })
        .optional(),
      "Cloud SQL instance connection name ('project:region:instance') the functions connect to.",
      { cloud: 'the Cloud SQL instance that the apply function writes to' },
    ),
    database: field(pgIdent('database').default('app'), 'Database name on the standby.'),
    applyRole: field(pgIdent('role').default('lifeboat_apply'), 'Role the apply function uses to write replicated changes.'),
    appRole: field(pgIdent('role').default('app'), "Role the app's cloud copy logs in as; it is only granted writes once the cloud side holds the lease."),
    poolMax: field(int(1, 100).default(4), 'Maximum database connections per function instance.'),
    tier: field(
      z
        .string()
        .regex(/^db-[a-z0-9-]+$/, { error: "must be a Cloud SQL tier such as 'db-f1-micro' or 'db-custom-1-3840'" })
        .default('db-f1-micro'),
      'Cloud SQL machine tier (infra and cost estimates).',
    ),
  },
  'The standby database (Cloud SQL in cloud mode, a second local PostgreSQL in local mode).',
);

const pubsubSection = section(
  {
    changesTopic: field(pubsubName('topic').default('lifeboat-changes'), 'Topic the agent publishes change batches to.'),
    deadLetterTopic: field(pubsubName('topic').default('lifeboat-dead-letters'), 'Topic for batches that failed every delivery attempt.'),
    eventsTopic: field(pubsubName('topic').default('lifeboat-events'), 'Topic for lifecycle events (failover, failback, lease changes).'),
    applySubscription: field(pubsubName('subscription').default('lifeboat-apply'), 'Subscription that delivers change batches to the apply function.'),
    maxDeliveryAttempts: field(int(5, 100).default(100), 'Deliveries of one batch before it is dead-lettered (Pub/Sub allows 5 to 100).', {
      hint: 'Pub/Sub accepts 5 to 100',
    }),
    minRetryBackoffSeconds: field(int(0, 600).default(10), 'Shortest wait before Pub/Sub redelivers a nacked batch (0 to 600).', {
      hint: 'Pub/Sub accepts 0 to 600 s',
    }),
    maxRetryBackoffSeconds: field(int(0, 600).default(600), 'Longest wait before Pub/Sub redelivers a nacked batch (0 to 600).', {
      hint: 'Pub/Sub accepts 0 to 600 s',
    }),
    emulatorHost: field(
      z
        .string()
        .regex(/^[A-Za-z0-9.\-[\]:]+:\d{1,5}$/, { error: "must be 'host:port', e.g. '127.0.0.1:8085'" })
        .optional(),
      "Pub/Sub emulator 'host:port' (local mode sets it for you).",
    ),
  },
  'Pub/Sub topics and delivery policy.',
);

const batchingSection = section(
  {
    maxDelayMs: field(int(0, 60_000).default(200), 'Longest a committed transaction waits in the agent before its batch is published.'),
    maxRows: field(int(1).default(5000), 'Rows per batch (whole transactions are never split, so a large one can exceed it).'),
    maxBytes: field(bytes().default(4 * MIB), 'Target encoded size of a batch.', { type: 'bytes' }),
    compressAboveBytes: field(bytes().default(1024), 'Batches larger than this are compressed.', { type: 'bytes' }),
    claimCheckAboveBytes: field(
      bytes().default(4 * MIB),
      'Batches larger than this (after compression) go to object storage and the message carries a reference (claim check). At most 9.5MB.',
      { type: 'bytes', hint: "at most 9.5MB so that a message fits Pub/Sub's 10 MB limit" },
    ),
    maxInflightBatches: field(int(1, 10_000).default(16), 'Published but unacknowledged batches before the agent stops reading (flow control).'),
    maxBufferedBytes: field(bytes().default(64 * MIB), 'Bytes buffered in the agent before it stops reading (flow control).', { type: 'bytes' }),
  },
  'How the agent groups transactions into messages.',
);

const storageSection = section(
  {
    bucket: field(
      z
        .string()
        .regex(/^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$/, {
          error: 'must be a Cloud Storage bucket name (lower-case letters, digits, - _ .)',
        })
        .optional(),
      'Cloud Storage bucket for claim checks and reports.',
      { cloud: 'the Cloud Storage bucket for large batches (claim checks) and failover reports' },
    ),
    localDir: field(z.string().min(1).default('.lifeboat/objects'), 'Directory that stands in for the bucket in local mode; a relative path is resolved against the directory of lifeboat.yaml.'),
    claimCheckPrefix: field(objectPrefix().default('claim-check/'), 'Object name prefix for claim-checked batches.'),
    reportsPrefix: field(objectPrefix().default('reports/'), 'Object name prefix for failover and failback reports.'),
  },
  'Object storage (Cloud Storage, or a local directory).',
);

const leaseSection = section(
  {
    document: field(
      z
        .string()
        .regex(/^[^/\s]+\/[^/\s]+(?:\/[^/\s]+\/[^/\s]+)*$/, {
          error: "must be a Firestore document path 'collection/document' (an even number of segments)",
        })
        .optional(),
      'Firestore document that holds the single-writer lease and its fencing epoch.',
      { derived: 'lifeboat/lease-<stream>' },
    ),
    ttlSeconds: field(seconds().default(30), 'The lease expires this long after its last renewal; only then can the other side take it.'),
    renewIntervalSeconds: field(seconds().default(5), 'How often the holder renews the lease.'),
    clockSkewMarginSeconds: field(
      z.number().min(0).default(5),
      'The holder fences itself this long before the lease would expire (ttl − margin after its last renewal), covering clock skew and latency.',
    ),
  },
  'The single-writer lease (Firestore) with a fencing epoch.',
);

const agentSection = section(
  {
    httpHost: field(z.string().min(1).default('127.0.0.1'), 'Address the agent\'s health and metrics endpoint listens on.'),
    httpPort: field(port().default(8765), "Port of the agent's health and metrics endpoint (0 = any free port)."),
    heartbeatIntervalSeconds: field(seconds().default(5), 'How often the agent publishes a heartbeat (also when idle).'),
    snapshotChunkRows: field(int(1).default(10_000), 'Rows per chunk of the initial copy.'),
    shutdownTimeoutSeconds: field(seconds().default(30), 'How long shutdown waits for in-flight batches before giving up.'),
  },
  'The local agent.',
);

const probeSection = section(
  {
    healthUrl: field(
      httpUrl().optional(),
      "The app's health URL that the probe checks from the cloud.",
      { cloud: "the app's health URL that the cloud probe checks to decide on failover" },
    ),
    scheduleIntervalSeconds: field(
      z
        .number()
        .int()
        .min(SCHEDULER_MIN_INTERVAL_SECONDS)
        .multipleOf(SCHEDULER_MIN_INTERVAL_SECONDS)
        .default(60),
      'How often Cloud Scheduler runs the probe function: whole minutes, at least 60 (its finest grain).',
      { hint: 'Cloud Scheduler runs at most once a minute, on whole minutes' },
    ),
    recheckIntervalSeconds: field(seconds().default(5), 'After a failed check, wait this long before checking again.'),
    failureThreshold: field(int(1, 20).default(3), 'Consecutive failed checks that confirm an outage.'),
    timeoutMs: field(int(100, 60_000).default(2000), 'Timeout of one health check.'),
    continuous: field(
      z.boolean().default(false),
      'Keep probing throughout each scheduler run instead of checking once (detects outages faster, costs more function time).',
    ),
    heartbeatStaleSeconds: field(seconds().default(30), "The agent's heartbeat counts as missing when older than this."),
    localIntervalSeconds: field(
      seconds().default(5),
      "Local mode: how often the local scheduler loop calls the probe function (Cloud Scheduler's one-minute grain does not apply on one machine).",
    ),
  },
  'Health probing from the cloud.',
);

const failoverSection = section(
  {
    auto: field(z.boolean().default(true), 'Fail over automatically when the probe confirms an outage (false: only `lifeboat failover`).'),
    failback: field(z.enum(['manual', 'auto']).default('manual'), 'Fail back when home is healthy again: manual (`lifeboat failback`) or auto.'),
    hookUrl: field(
      httpUrl().optional(),
      'Webhook called before promote and demote; a non-2xx answer vetoes the change.',
      { secret: true, type: 'URL' },
    ),
    hookTimeoutMs: field(int(100, 120_000).default(5000), 'Timeout of the webhook call (a timeout counts as a veto).'),
    sequenceSafetyGap: field(
      int(0).default(1000),
      'On promotion, sequences on the standby are advanced by this much beyond the last replicated value.',
    ),
    drainTimeoutSeconds: field(seconds().default(60), 'How long failover waits for already-published batches to be applied.'),
  },
  'Failover and failback policy.',
);

const dnsSection = section(
  {
    managedZone: field(
      z
        .string()
        .regex(/^[a-z][a-z0-9-]{0,62}$/, { error: "must be a Cloud DNS managed zone name such as 'example-com'" })
        .optional(),
      'Cloud DNS managed zone that holds the record.',
      { cloud: 'the Cloud DNS managed zone in which failover flips the record' },
    ),
    recordName: field(
      z
        .string()
        .regex(/^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+$/, {
          error: "must be a fully qualified DNS name ending in '.', such as 'app.example.com.'",
        })
        .optional(),
      "DNS name clients use to reach the app, fully qualified ('app.example.com.').",
      { cloud: 'the DNS name that failover points at the cloud copy' },
    ),
    ttlSeconds: field(int(0, 86_400).default(30), 'TTL of the record; failover reaches clients only after it expires.'),
    localTarget: field(
      z.string().min(1).optional(),
      'Where the record points while home is healthy: an IP address (A/AAAA) or a host name (CNAME, ending in .).',
      { cloud: 'where the record points while home is healthy (needed to fail back)' },
    ),
    cloudTarget: field(
      z.string().min(1).optional(),
      "Where the record points after failover. Default: the Cloud Run service's domain mapping or load balancer address.",
    ),
    routerPort: field(port().default(8080), 'Local mode: port of the localhost traffic router that stands in for DNS.'),
  },
  'Traffic switching (Cloud DNS, or the localhost router in local mode).',
);

const runSection = section(
  {
    service: field(
      z
        .string()
        .regex(/^[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?$/, {
          error: 'must be a Cloud Run service name: lower-case letters, digits and -, at most 49 characters',
        })
        .default('lifeboat-app'),
      "Cloud Run service that runs the app's cloud copy (scaled to zero until failover).",
    ),
    image: field(
      z.string().min(1).optional(),
      "Container image of the app's cloud copy.",
      { cloud: "the container image of the app's cloud copy on Cloud Run" },
    ),
    region: field(z.string().regex(/^[a-z]+-[a-z]+\d+$/, { error: "must be a region such as 'europe-west1'" }).optional(), 'Cloud Run region.', {
      derived: '<region>',
    }),
    port: field(int(1, 65535).default(8080), 'Port the container listens on (PORT).'),
  },
  "The app's cloud copy on Cloud Run.",
);

const functionsSection = section(
  {
    runtime: field(z.string().regex(/^nodejs\d+$/, { error: "must be a Node.js runtime such as 'nodejs22'" }).default('nodejs22'), 'Cloud Functions runtime.'),
    applyMemoryMb: field(memoryMb().default(512), 'Memory of the apply function (MB).'),
    probeMemoryMb: field(memoryMb().default(256), 'Memory of the probe function (MB).'),
    applyConcurrency: field(
      int(1, 1000).default(1),
      'Maximum apply function instances. 1 applies batches strictly in order; more needs the target to tolerate reordering.',
    ),
    applyTimeoutSeconds: field(int(1, 540).default(60), 'Timeout of one apply invocation (at most 540 for event-driven functions).', {
      hint: 'event-driven functions allow at most 540 s',
    }),
    probeTimeoutSeconds: field(int(1, 3600).default(90), 'Timeout of one probe invocation; must cover the rechecks of one run.'),
  },
  'Cloud Functions sizing.',
);

const configObjectSchema = z
  .strictObject({
    mode: field(z.enum(['local', 'cloud']).default('local'), 'local runs everything on this machine with emulators; cloud deploys the standby to Google Cloud.'),
    project: field(
      z
        .string()
        .regex(/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/, {
          error: 'must be a GCP project id: 6-30 lower-case letters, digits and -, starting with a letter',
        })
        .default(LOCAL_PROJECT),
      'Google Cloud project id.',
    ),
    region: field(
      z.string().regex(/^[a-z]+-[a-z]+\d+$/, { error: "must be a region such as 'europe-west1'" }).default('europe-west1'),
      'Google Cloud region for Cloud SQL, functions and Cloud Run.',
    ),
    stream: field(
      z
        .string()
        .regex(STREAM_ID, { error: 'must be 1-63 lower-case letters, digits, _ or -, starting with a letter or digit' })
        .default('main'),
      'Stream id: names the replication slot, the lease and the ordering key. One stream per source database.',
    ),
    logLevel: field(z.enum(['debug', 'info', 'warning', 'error']).default('info'), 'Lowest severity that is logged.'),
    source: sourceSection,
    target: targetSection,
    pubsub: pubsubSection,
    batching: batchingSection,
    storage: storageSection,
    lease: leaseSection,
    agent: agentSection,
    probe: probeSection,
    failover: failoverSection,
    dns: dnsSection,
    run: runSection,
    functions: functionsSection,
  })
  .describe('Lifeboat configuration (lifeboat.yaml).');

/** The object schema before derived defaults are filled in (for introspection). */
export const configObjectShape = configObjectSchema.shape;

export function defaultSlotName(stream: string): string {
  return `lifeboat_${stream.replace(/-/g, '_')}`.slice(0, 63);
}

/** The schema: structural validation, then the defaults derived from other fields. */
export const configSchema = configObjectSchema.transform((c) => ({
  ...c,
  source: inShapeOrder(sourceSection, { ...c.source, slot: c.source.slot ?? defaultSlotName(c.stream) }),
  lease: inShapeOrder(leaseSection, { ...c.lease, document: c.lease.document ?? `lifeboat/lease-${c.stream}` }),
  run: inShapeOrder(runSection, { ...c.run, region: c.run.region ?? c.region }),
}));

/** The same object with its keys in declaration order (derived fields in place). */
function inShapeOrder<T extends object>(schema: z.ZodType, obj: T): T {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(sectionShape(schema) ?? {})) if (k in obj) out[k] = (obj as Record<string, unknown>)[k];
  return Object.assign(out, obj) as T;
}

export type LifeboatConfig = z.output<typeof configSchema>;
/** What a YAML file (or a test) may provide: everything optional. */
export type LifeboatConfigInput = z.input<typeof configSchema>;

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/** Every default, parsed from an empty document (deep-frozen). */
export const DEFAULT_CONFIG: LifeboatConfig = deepFreeze(configSchema.parse({}));

/**
 * Parses a config object (no file, no env). Throws a ValidationError listing
 * every problem; does not run the timing rules (see checkConfig).
 */
export function parseConfig(input: unknown): LifeboatConfig {
  const r = configSchema.safeParse(input ?? {});
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
  throw new ValidationError(`invalid Lifeboat config: ${lines.join('; ')}`, {
    remedy: 'Fix the fields named; `lifeboat config defaults` lists every field.',
    details: { issues: r.error.issues },
  });
}

// ---------------------------------------------------------------------------
// Cross-field rules

export interface ConfigProblem {
  readonly severity: 'error' | 'warning';
  /** Stable id of the rule, e.g. 'lease.renew-vs-ttl'. */
  readonly rule: string;
  /** The field to change (dotted path). */
  readonly path: string;
  /** Other fields the rule involves. */
  readonly related: readonly string[];
  /** What is wrong, with the values: "must be at least …, got …". */
  readonly message: string;
  /** How to fix it. */
  readonly remedy: string;
}
export type TimingProblem = ConfigProblem;

export interface RuleDoc {
  readonly id: string;
  readonly severity: 'error' | 'warning';
  readonly rule: string;
  readonly why: string;
}

/** The timing rules, for docs. checkTimingRules implements exactly these. */
export const TIMING_RULES: readonly RuleDoc[] = [
  {
    id: 'lease.renew-vs-ttl',
    severity: 'error',
    rule: 'lease.ttlSeconds ≥ 3 × lease.renewIntervalSeconds',
    why: 'Two renewals in a row can fail before the lease expires (as Patroni: loop_wait + 2 × retry_timeout ≤ ttl).',
  },
  {
    id: 'lease.self-fence',
    severity: 'error',
    rule: 'lease.ttlSeconds − lease.clockSkewMarginSeconds > 2 × lease.renewIntervalSeconds',
    why: 'The holder fences itself at ttl − margin after its last successful renewal. That deadline must come after the retry that follows one failed renewal, so a single failed renewal never stops writes.',
  },
  {
    id: 'probe.confirm-within-run',
    severity: 'error',
    rule: 'probe.failureThreshold × (probe.recheckIntervalSeconds + probe.timeoutMs / 1000) < probe.scheduleIntervalSeconds',
    why: 'An outage is confirmed within one scheduler run, before the next run starts.',
  },
  {
    id: 'probe.timeout-vs-recheck',
    severity: 'error',
    rule: 'probe.timeoutMs / 1000 < probe.recheckIntervalSeconds',
    why: 'A check finishes before the next one is due.',
  },
  {
    id: 'functions.probe-timeout',
    severity: 'error',
    rule: 'functions.probeTimeoutSeconds > the longest probe run: failureThreshold × (recheckIntervalSeconds + timeoutMs / 1000), or scheduleIntervalSeconds + timeoutMs / 1000 when probe.continuous',
    why: 'The platform must not kill the probe before it has confirmed an outage.',
  },
  {
    id: 'agent.heartbeat-vs-stale',
    severity: 'error',
    rule: 'agent.heartbeatIntervalSeconds < probe.heartbeatStaleSeconds / 2',
    why: 'One lost heartbeat does not make the agent look dead.',
  },
  {
    id: 'agent.heartbeat-vs-lease',
    severity: 'error',
    rule: 'agent.heartbeatIntervalSeconds < lease.ttlSeconds',
    why: 'Heartbeats show the agent alive more often than the lease could expire.',
  },
  {
    id: 'batching.delay-vs-heartbeat',
    severity: 'error',
    rule: 'batching.maxDelayMs < agent.heartbeatIntervalSeconds × 1000',
    why: 'A batch is published before the next heartbeat, so heartbeats never overtake pending data.',
  },
  {
    id: 'batching.claim-check-limit',
    severity: 'error',
    rule: 'batching.claimCheckAboveBytes ≤ 9.5 MB (9,500,000 bytes)',
    why: "Every message that is not claim-checked fits Pub/Sub's 10 MB message limit.",
  },
  {
    id: 'batching.buffer-vs-batch',
    severity: 'error',
    rule: 'batching.maxBufferedBytes ≥ batching.maxBytes',
    why: 'Flow control can hold at least one full batch; otherwise the agent stalls.',
  },
  {
    id: 'source.wal-warn-vs-keep',
    severity: 'error',
    rule: 'source.walRetentionWarnBytes < source.maxSlotWalKeepSize',
    why: 'The retention warning fires before PostgreSQL invalidates the slot.',
  },
  {
    id: 'pubsub.backoff-order',
    severity: 'error',
    rule: 'pubsub.minRetryBackoffSeconds ≤ pubsub.maxRetryBackoffSeconds ≤ 600',
    why: 'Pub/Sub retry policy limits.',
  },
  {
    id: 'dns.ttl',
    severity: 'warning',
    rule: 'dns.ttlSeconds ≤ 300',
    why: 'Failover reaches clients only once their cached record expires.',
  },
  {
    id: 'lease.margin-zero',
    severity: 'warning',
    rule: 'lease.clockSkewMarginSeconds ≥ 1',
    why: 'Without a margin, clock skew between home and the cloud can let both sides write.',
  },
];

const fmtS = (n: number) => `${+n.toFixed(3)} s`;
const round = (n: number) => +n.toFixed(3);

/** The deadline, after its last successful renewal, at which the holder stops writing. */
export function selfFenceAfterSeconds(cfg: Pick<LifeboatConfig, 'lease'>): number {
  return cfg.lease.ttlSeconds - cfg.lease.clockSkewMarginSeconds;
}

/** Worst-case seconds for one scheduler run to confirm an outage. */
export function probeConfirmSeconds(cfg: Pick<LifeboatConfig, 'probe'>): number {
  const p = cfg.probe;
  return p.failureThreshold * (p.recheckIntervalSeconds + p.timeoutMs / 1000);
}

/** Checks the cross-field timing and size rules (TIMING_RULES). */
export function checkTimingRules(cfg: LifeboatConfig): TimingProblem[] {
  const out: TimingProblem[] = [];
  const err = (rule: string, path: string, related: string[], message: string, remedy: string) =>
    out.push({ severity: 'error', rule, path, related, message, remedy });
  const warn = (rule: string, path: string, related: string[], message: string, remedy: string) =>
    out.push({ severity: 'warning', rule, path, related, message, remedy });

  const { lease, probe, agent, batching, pubsub, dns, functions, source } = cfg;

  if (lease.renewIntervalSeconds * 3 > lease.ttlSeconds) {
    const need = round(lease.renewIntervalSeconds * 3);
    err(
      'lease.renew-vs-ttl',
      'lease.ttlSeconds',
      ['lease.renewIntervalSeconds'],
      `must be at least 3 × lease.renewIntervalSeconds (${fmtS(lease.renewIntervalSeconds)}), got ${fmtS(lease.ttlSeconds)}`,
      `raise lease.ttlSeconds to ${need} or lower lease.renewIntervalSeconds to at most ${Math.floor((lease.ttlSeconds / 3) * 1000) / 1000}`,
    );
  }
  const fence = selfFenceAfterSeconds(cfg);
  if (!(fence > 2 * lease.renewIntervalSeconds)) {
    const maxMargin = round(lease.ttlSeconds - 2 * lease.renewIntervalSeconds);
    err(
      'lease.self-fence',
      'lease.clockSkewMarginSeconds',
      ['lease.ttlSeconds', 'lease.renewIntervalSeconds'],
      `must be less than lease.ttlSeconds − 2 × lease.renewIntervalSeconds (${fmtS(lease.ttlSeconds)} − 2 × ${fmtS(lease.renewIntervalSeconds)} = ${fmtS(maxMargin)}), got ${fmtS(lease.clockSkewMarginSeconds)}: the holder would fence itself (after ${fmtS(fence)}) before retrying one failed renewal`,
      maxMargin > 0
        ? `lower lease.clockSkewMarginSeconds below ${maxMargin} or raise lease.ttlSeconds above ${round(lease.clockSkewMarginSeconds + 2 * lease.renewIntervalSeconds)}`
        : `raise lease.ttlSeconds above ${round(lease.clockSkewMarginSeconds + 2 * lease.renewIntervalSeconds)}`,
    );
  }
  const confirm = probeConfirmSeconds(cfg);
  if (!(confirm < probe.scheduleIntervalSeconds)) {
    err(
      'probe.confirm-within-run',
      'probe.failureThreshold',
      ['probe.recheckIntervalSeconds', 'probe.timeoutMs', 'probe.scheduleIntervalSeconds'],
      `confirming an outage takes probe.failureThreshold × (probe.recheckIntervalSeconds + probe.timeoutMs/1000) = ${probe.failureThreshold} × (${fmtS(probe.recheckIntervalSeconds)} + ${fmtS(probe.timeoutMs / 1000)}) = ${fmtS(confirm)}, which must be less than probe.scheduleIntervalSeconds (${fmtS(probe.scheduleIntervalSeconds)})`,
      `lower probe.failureThreshold, probe.recheckIntervalSeconds or probe.timeoutMs, or raise probe.scheduleIntervalSeconds to ${Math.floor(confirm / 60 + 1) * 60}`,
    );
  }
  if (!(probe.timeoutMs / 1000 < probe.recheckIntervalSeconds)) {
    err(
      'probe.timeout-vs-recheck',
      'probe.timeoutMs',
      ['probe.recheckIntervalSeconds'],
      `must be less than probe.recheckIntervalSeconds (${fmtS(probe.recheckIntervalSeconds)} = ${round(probe.recheckIntervalSeconds * 1000)} ms), got ${probe.timeoutMs} ms`,
      `lower probe.timeoutMs below ${round(probe.recheckIntervalSeconds * 1000)} or raise probe.recheckIntervalSeconds above ${fmtS(probe.timeoutMs / 1000)}`,
    );
  }
  const longestRun = probe.continuous ? probe.scheduleIntervalSeconds + probe.timeoutMs / 1000 : confirm;
  if (!(functions.probeTimeoutSeconds > longestRun)) {
    err(
      'functions.probe-timeout',
      'functions.probeTimeoutSeconds',
      ['probe.failureThreshold', 'probe.recheckIntervalSeconds', 'probe.timeoutMs', 'probe.continuous', 'probe.scheduleIntervalSeconds'],
      `must be more than the longest probe run (${fmtS(longestRun)}${probe.continuous ? ', probe.continuous' : ''}), got ${fmtS(functions.probeTimeoutSeconds)}`,
      `raise functions.probeTimeoutSeconds to ${Math.floor(longestRun) + 10}`,
    );
  }
  if (!(agent.heartbeatIntervalSeconds < probe.heartbeatStaleSeconds / 2)) {
    err(
      'agent.heartbeat-vs-stale',
      'agent.heartbeatIntervalSeconds',
      ['probe.heartbeatStaleSeconds'],
      `must be less than probe.heartbeatStaleSeconds / 2 (${fmtS(probe.heartbeatStaleSeconds / 2)}), got ${fmtS(agent.heartbeatIntervalSeconds)}`,
      `lower agent.heartbeatIntervalSeconds below ${round(probe.heartbeatStaleSeconds / 2)} or raise probe.heartbeatStaleSeconds above ${round(agent.heartbeatIntervalSeconds * 2)}`,
    );
  }
  if (!(agent.heartbeatIntervalSeconds < lease.ttlSeconds)) {
    err(
      'agent.heartbeat-vs-lease',
      'agent.heartbeatIntervalSeconds',
      ['lease.ttlSeconds'],
      `must be less than lease.ttlSeconds (${fmtS(lease.ttlSeconds)}), got ${fmtS(agent.heartbeatIntervalSeconds)}`,
      `lower agent.heartbeatIntervalSeconds below ${round(lease.ttlSeconds)}`,
    );
  }
  if (!(batching.maxDelayMs < agent.heartbeatIntervalSeconds * 1000)) {
    err(
      'batching.delay-vs-heartbeat',
      'batching.maxDelayMs',
      ['agent.heartbeatIntervalSeconds'],
      `must be less than agent.heartbeatIntervalSeconds (${round(agent.heartbeatIntervalSeconds * 1000)} ms), got ${batching.maxDelayMs} ms`,
      `lower batching.maxDelayMs below ${round(agent.heartbeatIntervalSeconds * 1000)} or raise agent.heartbeatIntervalSeconds`,
    );
  }
  if (batching.claimCheckAboveBytes > MAX_PUBSUB_PAYLOAD_BYTES) {
    err(
      'batching.claim-check-limit',
      'batching.claimCheckAboveBytes',
      [],
      `must be at most 9.5 MB (${MAX_PUBSUB_PAYLOAD_BYTES} bytes) so that every message fits Pub/Sub's 10 MB limit, got ${batching.claimCheckAboveBytes} bytes`,
      'lower batching.claimCheckAboveBytes to 9.5MB or less (the default is 4MiB)',
    );
  }
  if (batching.maxBufferedBytes < batching.maxBytes) {
    err(
      'batching.buffer-vs-batch',
      'batching.maxBufferedBytes',
      ['batching.maxBytes'],
      `must be at least batching.maxBytes (${formatBytes(batching.maxBytes)}), got ${formatBytes(batching.maxBufferedBytes)}`,
      `raise batching.maxBufferedBytes to ${batching.maxBytes} or lower batching.maxBytes`,
    );
  }
  const keep = parsePgSize(source.maxSlotWalKeepSize);
  if (keep !== undefined && !(source.walRetentionWarnBytes < keep)) {
    err(
      'source.wal-warn-vs-keep',
      'source.walRetentionWarnBytes',
      ['source.maxSlotWalKeepSize'],
      `must be less than source.maxSlotWalKeepSize (${source.maxSlotWalKeepSize} = ${keep} bytes), got ${source.walRetentionWarnBytes} bytes`,
      `lower source.walRetentionWarnBytes (for example to ${formatBytes(Math.floor(keep / 4))}) or raise source.maxSlotWalKeepSize`,
    );
  }
  if (pubsub.minRetryBackoffSeconds > pubsub.maxRetryBackoffSeconds) {
    err(
      'pubsub.backoff-order',
      'pubsub.minRetryBackoffSeconds',
      ['pubsub.maxRetryBackoffSeconds'],
      `must be at most pubsub.maxRetryBackoffSeconds (${fmtS(pubsub.maxRetryBackoffSeconds)}), got ${fmtS(pubsub.minRetryBackoffSeconds)}`,
      `lower pubsub.minRetryBackoffSeconds to ${pubsub.maxRetryBackoffSeconds} or raise pubsub.maxRetryBackoffSeconds (at most 600)`,
    );
  }
  if (pubsub.maxRetryBackoffSeconds > 600) {
    err(
      'pubsub.backoff-order',
      'pubsub.maxRetryBackoffSeconds',
      [],
      `must be at most 600 s (Pub/Sub's limit), got ${fmtS(pubsub.maxRetryBackoffSeconds)}`,
      'lower pubsub.maxRetryBackoffSeconds to 600',
    );
  }
  if (dns.ttlSeconds > DNS_TTL_WARN_SECONDS) {
    warn(
      'dns.ttl',
      'dns.ttlSeconds',
      [],
      `is ${dns.ttlSeconds} s: after a failover, clients keep using the home address until their cached record expires, up to ${dns.ttlSeconds} s`,
      `lower dns.ttlSeconds to ${DNS_TTL_WARN_SECONDS} or less (the default is 30)`,
    );
  }
  if (lease.clockSkewMarginSeconds < 1) {
    warn(
      'lease.margin-zero',
      'lease.clockSkewMarginSeconds',
      [],
      `is ${fmtS(lease.clockSkewMarginSeconds)}: clock skew or latency between home and the cloud could let both sides write`,
      'raise lease.clockSkewMarginSeconds to at least 1 (the default is 5)',
    );
  }
  return out;
}

// ---------------------------------------------------------------------------
// Mode requirements

export interface FieldInfo {
  readonly path: string;
  readonly schema: z.ZodType;
  readonly meta: FieldMeta;
  readonly description: string;
}

/** Every leaf field of the schema, in declaration order. */
export function configFields(): FieldInfo[] {
  const out: FieldInfo[] = [];
  const walk = (shape: Record<string, z.ZodType>, prefix: string) => {
    for (const [key, schema] of Object.entries(shape)) {
      const path = prefix ? `${prefix}.${key}` : key;
      const obj = sectionShape(schema);
      if (obj) walk(obj, path);
      else out.push({ path, schema, meta: getFieldMeta(schema), description: schema.description ?? '' });
    }
  };
  walk(configObjectShape as unknown as Record<string, z.ZodType>, '');
  return out;
}

/** The shape of a section schema (object wrapped in prefault/default/optional), or undefined for a leaf. */
export function sectionShape(schema: z.ZodType): Record<string, z.ZodType> | undefined {
  let s: z.ZodType = schema;
  for (;;) {
    const def = s.def as { type: string; innerType?: z.ZodType; shape?: Record<string, z.ZodType> };
    if (def.type === 'object') return def.shape;
    if ((def.type === 'prefault' || def.type === 'default' || def.type === 'optional') && def.innerType) s = def.innerType;
    else return undefined;
  }
}

function getPath(obj: unknown, path: string): unknown {
  let cur: unknown = obj;
  for (const k of path.split('.')) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

/** Fields that cloud mode needs but that have no default (missing → error). */
export function checkModeRequirements(cfg: LifeboatConfig): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  if (cfg.mode !== 'cloud') {
    if (cfg.dns.routerPort !== 0 && cfg.dns.routerPort === cfg.agent.httpPort) {
      out.push({
        severity: 'error',
        rule: 'local.port-clash',
        path: 'dns.routerPort',
        related: ['agent.httpPort'],
        message: `is the same port as agent.httpPort (${cfg.agent.httpPort}); both listen on this machine in local mode`,
        remedy: 'change dns.routerPort or agent.httpPort (0 picks a free port)',
      });
    }
    return out;
  }
  if (cfg.project === LOCAL_PROJECT) {
    out.push({
      severity: 'error',
      rule: 'cloud.required',
      path: 'project',
      related: ['mode'],
      message: `is still the local default '${LOCAL_PROJECT}'; cloud mode needs the Google Cloud project to deploy to`,
      remedy: 'set project to your GCP project id (or LIFEBOAT_PROJECT)',
    });
  }
  for (const f of configFields()) {
    if (!f.meta.cloud) continue;
    const v = getPath(cfg, f.path);
    if (v === undefined || v === '') {
      out.push({
        severity: 'error',
        rule: 'cloud.required',
        path: f.path,
        related: ['mode'],
        message: `is required in cloud mode: ${f.meta.cloud}`,
        remedy: `set ${f.path} in lifeboat.yaml (or ${envVarName(f.path)})`,
      });
    }
  }
  if (cfg.source.databaseUrl === undefined) {
    out.push({
      severity: 'warning',
      rule: 'cloud.source-url',
      path: 'source.databaseUrl',
      related: ['mode'],
      message: 'is not set; the agent needs it to read your database',
      remedy: 'set LIFEBOAT_SOURCE_DATABASE_URL where the agent runs (keeps the password out of the file)',
    });
  }
  return out;
}

/** checkTimingRules plus checkModeRequirements. */
export function checkConfig(cfg: LifeboatConfig): ConfigProblem[] {
  return [...checkModeRequirements(cfg), ...checkTimingRules(cfg)];
}

// ---------------------------------------------------------------------------
// Environment names

/** 'lease.ttlSeconds' → 'LIFEBOAT_LEASE_TTL_SECONDS'. */
export function envVarName(path: string): string {
  return (
    'LIFEBOAT_' +
    path
      .split('.')
      .map((seg) => seg.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/([A-Z])([A-Z][a-z])/g, '$1_$2').toUpperCase())
      .join('_')
  );
}
