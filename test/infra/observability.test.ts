// The log contract, the log-based metrics, the dashboard and the alert must
// agree with each other: a metric that reads a field nobody logs, or a query
// on a metric that does not exist, would show nothing and alert never.
import { describe, expect, it } from 'vitest';
import { LOG_EVENTS, LOG_METRICS, alertQuery, alertSignals, dashboardDefinition, promMetric } from '../../infra/observability.ts';

const events = Object.values(LOG_EVENTS);
const signals = alertSignals({ lagAlertSeconds: 120, stalledAfterSeconds: 600, probeFailureThreshold: 3, deadLetterSubscription: 'dlq' });
const dashboard = dashboardDefinition({ displayName: 'Lifeboat', deadLetterSubscription: 'dlq', applySubscription: 'apply' }) as {
  mosaicLayout: { columns: number; tiles: { xPos: number; yPos: number; width: number; widget: { xyChart: { dataSets: { timeSeriesQuery: { prometheusQuery: string } }[] } } }[] };
};
const queries = [...dashboard.mosaicLayout.tiles.flatMap((t) => t.widget.xyChart.dataSets.map((d) => d.timeSeriesQuery.prometheusQuery)), alertQuery(signals)];

describe('log-based metrics', () => {
  it.each(LOG_METRICS.map((m) => [m.name, m] as const))('%s reads an event and fields the functions log', (_name, m) => {
    const event = events.find((e) => m.filter.includes(`jsonPayload.event="${e.event}"`) && m.filter.includes(`jsonPayload.component="${e.component}"`));
    expect(event).toBeDefined();
    const fields = Object.keys(event?.fields ?? {});
    for (const f of Object.values(m.labels)) expect(fields).toContain(f);
    if (m.kind === 'distribution') {
      expect(fields).toContain(m.valueField);
      expect(m.buckets).toBeDefined();
    } else {
      expect(m.valueField).toBeUndefined();
    }
  });

  it('every Lifeboat metric a query reads exists, and every metric is shown somewhere', () => {
    const names = new Set(LOG_METRICS.map((m) => m.name));
    const used = new Set<string>();
    for (const q of queries) {
      for (const m of q.matchAll(/logging_googleapis_com:user_([a-z_]+?)(?:_sum|_count|_bucket)?(?=[[{)\s])/g)) {
        const base = [...names].find((n) => m[1] === n || m[1]?.startsWith(n));
        expect(base, `query reads unknown metric ${m[1]}`).toBeDefined();
        if (base) used.add(base);
      }
    }
    expect([...used].sort()).toEqual([...names].sort());
  });
});

describe('the alert', () => {
  it('is one expression with every signal labelled', () => {
    const q = alertQuery(signals);
    expect(q.split('\n  or ').length).toBe(signals.length);
    for (const s of signals) expect(q).toContain(`label_replace(${s.promql}, "signal", "${s.signal}", "", "")`);
    expect(signals.map((s) => s.signal)).toEqual(['lag', 'stalled', 'halted', 'failover', 'probe-failures', 'dead-letters']);
    expect(signals.find((s) => s.signal === 'probe-failures')?.promql).toContain(`${promMetric('lifeboat_probe_results')}{result!="ok"}[5m])) >= 3`);
  });
});

describe('the dashboard', () => {
  it('tiles sit inside the 48-column grid without overlapping', () => {
    const seen = new Set<string>();
    for (const t of dashboard.mosaicLayout.tiles) {
      expect(t.xPos + t.width).toBeLessThanOrEqual(dashboard.mosaicLayout.columns);
      const key = `${t.xPos},${t.yPos}`;
      expect(seen.has(key)).toBe(false);
      seen.add(key);
    }
  });
});
