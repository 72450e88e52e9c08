// HTTP-level test of the agent's endpoints on a real localhost socket.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerSecret } from '../../core/log.ts';
import { startStatusServer, type StatusServer } from '../../agent/status-server.ts';

let server: StatusServer;
let healthy = true;

beforeAll(async () => {
  registerSecret('s3cr3t-pass');
  server = await startStatusServer('127.0.0.1', 0, {
    health: () => ({ ok: healthy, reason: healthy ? 'streaming; last batch acknowledged 1 s ago' : 'Pub/Sub unreachable for 40 s' }),
    status: () => ({
      stream: 'main',
      source: 'postgres://agent:s3cr3t-pass@db.local:5432/app',
      positions: { confirmedLsn: '0/1CF7600', receivedBytes: 123n },
    }),
    metrics: () => [{ name: 'lifeboat_agent_lag_bytes', help: 'Lag in bytes', type: 'gauge', samples: [{ labels: { stream: 'main' }, value: 7 }] }],
  });
});
afterAll(() => server.close());

describe('agent status server', () => {
  it('/healthz is 200 when healthy and 503 with the reason when not', async () => {
    healthy = true;
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    healthy = false;
    const res = await fetch(`${server.url}/healthz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ ok: false, reason: 'Pub/Sub unreachable for 40 s' });
  });

  it('/status is JSON with bigints as strings and secrets masked', async () => {
    const res = await fetch(`${server.url}/status`);
    const text = await res.text();
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(text).not.toContain('s3cr3t-pass');
    expect(JSON.parse(text)).toMatchObject({ stream: 'main', positions: { confirmedLsn: '0/1CF7600', receivedBytes: '123' } });
  });

  it('/metrics is Prometheus text', async () => {
    const res = await fetch(`${server.url}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(await res.text()).toContain('lifeboat_agent_lag_bytes{stream="main"} 7');
  });

  it('unknown paths and writes are refused with a pointer', async () => {
    expect(await (await fetch(`${server.url}/nope`)).text()).toMatch(/try \/healthz, \/status or \/metrics/);
    expect((await fetch(`${server.url}/status`, { method: 'POST' })).status).toBe(405);
  });
});
