import { describe, expect, it } from 'vitest';
import { formatPrometheusText } from '../../agent/prometheus-text.ts';

describe('formatPrometheusText', () => {
  it('writes HELP, TYPE and samples with escaped labels', () => {
    const text = formatPrometheusText([
      { name: 'lifeboat_agent_rows_published_total', help: 'Rows published.\nAll kinds.', type: 'counter', samples: [{ labels: { stream: 'main' }, value: 42 }] },
      { name: 'lifeboat_agent_lag_bytes', help: 'Lag', type: 'gauge', samples: [{ labels: { stream: 'a"b\\c' }, value: 18446744073709551615n }] },
      { name: 'lifeboat_agent_up', help: 'Up', type: 'gauge', samples: [{ value: NaN }] },
    ]);
    expect(text).toBe(
      [
        '# HELP lifeboat_agent_rows_published_total Rows published.\\nAll kinds.',
        '# TYPE lifeboat_agent_rows_published_total counter',
        'lifeboat_agent_rows_published_total{stream="main"} 42',
        '# HELP lifeboat_agent_lag_bytes Lag',
        '# TYPE lifeboat_agent_lag_bytes gauge',
        'lifeboat_agent_lag_bytes{stream="a\\"b\\\\c"} 18446744073709551615',
        '# HELP lifeboat_agent_up Up',
        '# TYPE lifeboat_agent_up gauge',
        'lifeboat_agent_up NaN',
        '',
      ].join('\n'),
    );
  });

  it('refuses names Prometheus would reject, and counters without _total', () => {
    expect(() => formatPrometheusText([{ name: 'lifeboat-x', help: '', type: 'gauge', samples: [] }])).toThrow(/invalid metric name/);
    expect(() => formatPrometheusText([{ name: 'lifeboat_rows', help: '', type: 'counter', samples: [] }])).toThrow(/_total/);
    expect(() =>
      formatPrometheusText([{ name: 'lifeboat_x', help: '', type: 'gauge', samples: [{ labels: { 'bad-label': 'v' }, value: 1 }] }]),
    ).toThrow(/invalid label name/);
  });
});
