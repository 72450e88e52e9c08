// Prometheus text exposition format (version 0.0.4), just what the agent
// needs: counters and gauges with optional labels. Pure, so it is unit-tested.

export type MetricType = 'counter' | 'gauge';

export interface MetricSample {
  readonly labels?: Readonly<Record<string, string>>;
  readonly value: number | bigint;
}

export interface Metric {
  /** Must match [a-zA-Z_:][a-zA-Z0-9_:]*; ours all start with lifeboat_. */
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  readonly samples: readonly MetricSample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeHelp(text: string): string {
  return text.replaceAll('\\', '\\\\').replaceAll('\n', '\\n');
}

function escapeLabelValue(text: string): string {
  return text.replaceAll('\\', '\\\\').replaceAll('\n', '\\n').replaceAll('"', '\\"');
}

function formatValue(value: number | bigint): string {
  if (typeof value === 'bigint') return value.toString();
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

export function formatPrometheusText(metrics: readonly Metric[]): string {
  const lines: string[] = [];
  for (const m of metrics) {
    if (!METRIC_NAME.test(m.name)) throw new Error(`invalid metric name ${JSON.stringify(m.name)}`);
    if (m.type === 'counter' && !m.name.endsWith('_total')) {
      throw new Error(`counter ${m.name} must end with _total (Prometheus naming convention)`);
    }
    lines.push(`# HELP ${m.name} ${escapeHelp(m.help)}`, `# TYPE ${m.name} ${m.type}`);
    for (const s of m.samples) {
      const entries = Object.entries(s.labels ?? {});
      for (const [k] of entries) {
        if (!LABEL_NAME.test(k) || k.startsWith('__')) throw new Error(`invalid label name ${JSON.stringify(k)} on ${m.name}`);
      }
      const labels = entries.length ? `{${entries.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(',')}}` : '';
      lines.push(`${m.name}${labels} ${formatValue(s.value)}`);
    }
  }
  return lines.join('\n') + '\n';
}
