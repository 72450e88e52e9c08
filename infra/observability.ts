// What Lifeboat's Cloud Monitoring shows, and the log contract behind it.
//
// The functions log one structured JSON line per event through core/log.ts
// (Cloud Logging parses it into jsonPayload). Log-based metrics count those
// lines or extract a number from them; the dashboard and the alert read the
// metrics with PromQL. The field names below are a contract: the apply and
// probe functions must emit exactly these (docs/deploy.md lists them).
//
// One alert policy with ONE PromQL condition covers every signal (lag,
// stalled stream, halted stream, failover, probe failures, dead letters):
// Cloud Monitoring charges per condition, and each series carries a `signal`
// label that says which one fired.
//
// Pure: no cdktf here; infra/lifeboat-stack.ts turns these into resources.

/** jsonPayload.event values, and the fields each event carries. */
export const LOG_EVENTS = {
  /** apply, after the transaction of a batch committed (heartbeats too). */
  batchApplied: {
    event: 'batch-applied',
    component: 'apply',
    fields: {
      stream: 'stream id (string)',
      kind: "batch kind: 'changes' | 'heartbeat' | 'snapshot' | 'marker' (string)",
      rows: 'rows applied by this batch, 0 for a heartbeat (number)',
      lagSeconds: 'now minus the commit time of the last transaction, or the heartbeat sourceTime (number, seconds)',
      epoch: 'writer epoch the batch carried (number)',
    },
  },
  /** apply, when a delivery is refused with an error (retryable or not). */
  applyFailed: {
    event: 'apply-failed',
    component: 'apply',
    fields: { stream: 'stream id', retryable: 'true for RetryableError (boolean)', error: 'error message (string)' },
  },
  /** apply, when a permanent error halts the stream (and on every refused delivery while halted). */
  streamHalted: {
    event: 'stream-halted',
    component: 'apply',
    fields: { stream: 'stream id', reason: 'what halted it (string)' },
  },
  /** probe, once per health check. */
  probeResult: {
    event: 'probe-result',
    component: 'probe',
    fields: { result: "'ok' | 'failed' | 'timeout' (string)", latencyMs: 'check latency (number)' },
  },
  /** probe, once per run: the lease it read. */
  leaseObserved: {
    event: 'lease-observed',
    component: 'probe',
    fields: { holder: "'local' | 'cloud' (string)", epoch: 'current epoch (number)' },
  },
  /** probe (or the manual path), when traffic moves. */
  failover: {
    event: 'failover',
    component: 'probe',
    fields: { direction: "'to-cloud' | 'to-local' (string)", epoch: 'epoch after the change (number)', reason: 'the decision sentence (string)' },
  },
} as const;

export interface LogMetricSpec {
  /** Metric name (logging.googleapis.com/user/<name>). */
  readonly name: string;
  readonly description: string;
  readonly filter: string;
  readonly kind: 'counter' | 'distribution';
  /** jsonPayload field a distribution extracts. */
  readonly valueField?: string;
  readonly unit: string;
  /** label → jsonPayload field. */
  readonly labels: Readonly<Record<string, string>>;
  /** Exponential buckets for distributions: scale, growth, count. */
  readonly buckets?: { readonly scale: number; readonly growthFactor: number; readonly count: number };
}

const eventFilter = (e: { event: string; component: string }) =>
  `resource.type="cloud_run_revision" AND jsonPayload.component="${e.component}" AND jsonPayload.event="${e.event}"`;

export const LOG_METRICS: readonly LogMetricSpec[] = [
  {
    name: 'lifeboat_batches_applied',
    description: 'Batches applied to the target (heartbeats included).',
    filter: eventFilter(LOG_EVENTS.batchApplied),
    kind: 'counter',
    unit: '1',
    labels: { stream: 'stream', kind: 'kind' },
  },
  {
    name: 'lifeboat_rows_applied',
    description: 'Rows applied per batch (the sum over time is rows applied).',
    filter: eventFilter(LOG_EVENTS.batchApplied),
    kind: 'distribution',
    valueField: 'rows',
    unit: '1',
    labels: { stream: 'stream' },
    buckets: { scale: 1, growthFactor: 4, count: 12 },
  },
  {
    name: 'lifeboat_replication_lag_seconds',
    description: 'Commit on the source to applied on the target, per batch.',
    filter: eventFilter(LOG_EVENTS.batchApplied),
    kind: 'distribution',
    valueField: 'lagSeconds',
    unit: 's',
    labels: { stream: 'stream' },
    buckets: { scale: 0.05, growthFactor: 2, count: 16 },
  },
  {
    name: 'lifeboat_apply_errors',
    description: 'Deliveries the apply function refused with an error.',
    filter: eventFilter(LOG_EVENTS.applyFailed),
    kind: 'counter',
    unit: '1',
    labels: { stream: 'stream', retryable: 'retryable' },
  },
  {
    name: 'lifeboat_stream_halted',
    description: 'Deliveries refused because the stream is halted.',
    filter: eventFilter(LOG_EVENTS.streamHalted),
    kind: 'counter',
    unit: '1',
    labels: { stream: 'stream' },
  },
  {
    name: 'lifeboat_probe_results',
    description: 'Health checks of the app by result.',
    filter: eventFilter(LOG_EVENTS.probeResult),
    kind: 'counter',
    unit: '1',
    labels: { result: 'result' },
  },
  {
    name: 'lifeboat_lease_epoch',
    description: 'The writer epoch the probe saw, by lease holder.',
    filter: eventFilter(LOG_EVENTS.leaseObserved),
    kind: 'distribution',
    valueField: 'epoch',
    unit: '1',
    labels: { holder: 'holder' },
    buckets: { scale: 1, growthFactor: 2, count: 40 },
  },
  {
    name: 'lifeboat_failovers',
    description: 'Traffic switches, by direction.',
    filter: eventFilter(LOG_EVENTS.failover),
    kind: 'counter',
    unit: '1',
    labels: { direction: 'direction' },
  },
];

/** PromQL name of a log-based metric: logging.googleapis.com/user/<name>. */
export function promMetric(name: string): string {
  return `logging_googleapis_com:user_${name}`;
}

export interface AlertSignal {
  readonly signal: string;
  readonly description: string;
  readonly promql: string;
}

export interface AlertInputs {
  readonly lagAlertSeconds: number;
  readonly stalledAfterSeconds: number;
  readonly probeFailureThreshold: number;
  readonly deadLetterSubscription: string;
}

/** The signals the one alert condition watches. */
export function alertSignals(i: AlertInputs): AlertSignal[] {
  const lag = promMetric('lifeboat_replication_lag_seconds');
  const stalledWindow = `${Math.max(60, Math.ceil(i.stalledAfterSeconds))}s`;
  return [
    {
      signal: 'lag',
      description: `mean replication lag over 5 minutes above ${i.lagAlertSeconds} s`,
      promql: `sum(rate(${lag}_sum[5m])) / sum(rate(${lag}_count[5m])) > ${i.lagAlertSeconds}`,
    },
    {
      signal: 'stalled',
      description: `no batch (not even a heartbeat) applied for ${stalledWindow}`,
      promql: `(sum(increase(${promMetric('lifeboat_batches_applied')}[${stalledWindow}])) or vector(0)) == 0`,
    },
    {
      signal: 'halted',
      description: 'the stream is halted by a permanent error',
      promql: `sum(increase(${promMetric('lifeboat_stream_halted')}[5m])) > 0`,
    },
    {
      signal: 'failover',
      description: 'traffic moved between home and the cloud',
      promql: `sum(increase(${promMetric('lifeboat_failovers')}[10m])) > 0`,
    },
    {
      signal: 'probe-failures',
      description: `at least ${i.probeFailureThreshold} failed health checks in 5 minutes`,
      promql: `sum(increase(${promMetric('lifeboat_probe_results')}{result!="ok"}[5m])) >= ${i.probeFailureThreshold}`,
    },
    {
      signal: 'dead-letters',
      description: 'messages are waiting in the dead-letter subscription',
      promql: `sum(pubsub_googleapis_com:subscription_num_undelivered_messages{monitored_resource="pubsub_subscription",subscription_id="${i.deadLetterSubscription}"}) > 0`,
    },
  ];
}

/** One PromQL expression: the union of every signal, each labelled. */
export function alertQuery(signals: readonly AlertSignal[]): string {
  return signals.map((s) => `label_replace(${s.promql}, "signal", "${s.signal}", "", "")`).join('\n  or ');
}

interface Tile {
  readonly title: string;
  readonly queries: readonly { readonly promql: string; readonly legend: string }[];
  readonly unit: string;
}

/** The dashboard (google_monitoring_dashboard dashboard_json), as an object. */
export function dashboardDefinition(opts: { readonly displayName: string; readonly deadLetterSubscription: string; readonly applySubscription: string }): Record<string, unknown> {
  const lag = promMetric('lifeboat_replication_lag_seconds');
  const rows = promMetric('lifeboat_rows_applied');
  const tiles: Tile[] = [
    {
      title: 'Replication lag (s)',
      unit: 's',
      queries: [
        { promql: `sum(rate(${lag}_sum[5m])) / sum(rate(${lag}_count[5m]))`, legend: 'mean' },
        { promql: `histogram_quantile(0.99, sum by (le) (rate(${lag}_bucket[5m])))`, legend: 'p99' },
      ],
    },
    {
      title: 'Rows and batches applied per second',
      unit: '1/s',
      queries: [
        { promql: `sum(rate(${rows}_sum[5m]))`, legend: 'rows/s' },
        { promql: `sum by (kind) (rate(${promMetric('lifeboat_batches_applied')}[5m]))`, legend: 'batches/s ({{kind}})' },
      ],
    },
    {
      title: 'Apply errors',
      unit: '1',
      queries: [{ promql: `sum by (retryable) (increase(${promMetric('lifeboat_apply_errors')}[5m]))`, legend: 'retryable={{retryable}}' }],
    },
    {
      title: 'Halted stream (refused deliveries)',
      unit: '1',
      queries: [{ promql: `sum by (stream) (increase(${promMetric('lifeboat_stream_halted')}[5m]))`, legend: '{{stream}}' }],
    },
    {
      title: 'Probe results',
      unit: '1',
      queries: [{ promql: `sum by (result) (increase(${promMetric('lifeboat_probe_results')}[5m]))`, legend: '{{result}}' }],
    },
    {
      title: 'Lease holder and epoch',
      unit: '1',
      queries: [
        {
          promql: `sum by (holder) (rate(${promMetric('lifeboat_lease_epoch')}_sum[5m])) / sum by (holder) (rate(${promMetric('lifeboat_lease_epoch')}_count[5m]))`,
          legend: 'epoch held by {{holder}}',
        },
      ],
    },
    {
      title: 'Failovers',
      unit: '1',
      queries: [{ promql: `sum by (direction) (increase(${promMetric('lifeboat_failovers')}[1h]))`, legend: '{{direction}}' }],
    },
    {
      title: 'Backlog and dead letters',
      unit: '1',
      queries: [
        {
          promql: `sum(pubsub_googleapis_com:subscription_num_undelivered_messages{monitored_resource="pubsub_subscription",subscription_id="${opts.applySubscription}"})`,
          legend: 'waiting for apply',
        },
        {
          promql: `sum(pubsub_googleapis_com:subscription_num_undelivered_messages{monitored_resource="pubsub_subscription",subscription_id="${opts.deadLetterSubscription}"})`,
          legend: 'dead letters',
        },
      ],
    },
  ];
  const width = 24;
  const height = 16;
  return {
    displayName: opts.displayName,
    mosaicLayout: {
      columns: 48,
      tiles: tiles.map((t, i) => ({
        xPos: (i % 2) * width,
        yPos: Math.floor(i / 2) * height,
        width,
        height,
        widget: {
          title: t.title,
          xyChart: {
            dataSets: t.queries.map((q) => ({
              timeSeriesQuery: { prometheusQuery: q.promql, unitOverride: t.unit },
              plotType: 'LINE',
              legendTemplate: q.legend,
            })),
            yAxis: { scale: 'LINEAR' },
          },
        },
      })),
    },
  };
}
