// Failover end to end on the whole local system (local/local-system.ts):
// both clusters, both emulators, the agent and the three functions as
// processes, the demo app twice and the traffic router. Timings are shortened
// through the config (lease TTL 8 s, rechecks every second) so that the test
// runs in seconds; the decisions are the same.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalSystem, type LocalSystem } from '../../local/local-system.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

let sys: LocalSystem;
let dir: string;
const lines: string[] = [];

const fast = {
  lease: { ttlSeconds: 8, renewIntervalSeconds: 1, clockSkewMarginSeconds: 2 },
  probe: { recheckIntervalSeconds: 1, failureThreshold: 2, timeoutMs: 500, heartbeatStaleSeconds: 6, localIntervalSeconds: 1 },
  agent: { heartbeatIntervalSeconds: 1 },
  failover: { drainTimeoutSeconds: 20 },
  batching: { maxDelayMs: 50 },
  dns: { routerPort: 0 },
};

async function query<T extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; system log:\n${lines.slice(-30).join('\n')}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function appUrl(url: string): string {
  const u = new URL(url);
  u.username = 'app';
  return u.toString();
}

async function addTodo(title: string): Promise<Response> {
  return fetch(`${sys.info.routerUrl}/todos`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title }) });
}

async function status(): Promise<Record<string, any>> {
  return (await (await fetch(sys.info.statusUrl)).json()) as Record<string, any>;
}

beforeAll(async () => {
  const stack = getStack();
  dir = mkdtempSync(join(tmpdir(), 'lifeboat-e2e-failover-'));
  const database = `failover_${process.pid}`;
  sys = await startLocalSystem({
    dir,
    durable: false,
    log: (l) => lines.push(l),
    existing: {
      localAdminUrl: stack.localUrl,
      cloudAdminUrl: stack.cloudUrl,
      pubsubEmulatorHost: stack.pubsubEmulatorHost,
      firestoreEmulatorHost: stack.firestoreEmulatorHost,
      database,
    },
    config: { ...fast, project: uniqueProjectId('failover') },
  });
}, 180_000);

afterAll(async () => {
  await sys?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
}, 60_000);

describe('local system', () => {
  it('serves the app through the router from local and replicates its writes to the cloud', async () => {
    const res = await addTodo('buy milk');
    expect(res.status).toBe(201);
    expect(res.headers.get('x-lifeboat-app')).toBe('local');
    await waitFor('the to-do to reach the cloud', async () => (await query(sys.info.cloudDatabaseUrl, "SELECT 1 FROM public.todos WHERE title = 'buy milk'")).length === 1, 90_000);
    const s = await status();
    expect(s.lease).toMatchObject({ holder: 'local', epoch: 1 });
    expect(s.decisions.length).toBeGreaterThan(0);
  }, 120_000);

  it('graceful takeover when the app dies and the agent lives: RPO 0, traffic to the cloud, local refuses writes', async () => {
    // A writer on the local database (as the app role) until the fence stops it.
    const committed: string[] = [];
    let writing = true;
    const writer = (async () => {
      let n = 0;
      while (writing) {
        const c = new pg.Client({ connectionString: appUrl(sys.info.localDatabaseUrl) });
        try {
          await c.connect();
          while (writing) {
            const title = `load ${n++}`;
            await c.query('INSERT INTO public.todos (title) VALUES ($1)', [title]);
            committed.push(title);
            await new Promise((r) => setTimeout(r, 20));
          }
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        } finally {
          await c.end().catch(() => undefined);
        }
      }
    })();
    await waitFor('some load to commit', async () => committed.length > 20, 30_000);
    const appDownAt = Date.now();
    await sys.localApp.stop();
    await waitFor('the cloud to hold the lease', async () => (await status()).lease?.holder === 'cloud', 120_000);
    await waitFor('the router to send traffic to the cloud', async () => (await fetch(`${sys.info.routerUrl}/todos`)).headers.get('x-lifeboat-app') === 'cloud', 60_000);
    const switchedAt = Date.now();
    writing = false;
    await writer;

    const s = await status();
    expect(s.lease).toMatchObject({ holder: 'cloud', epoch: 2 });
    // The cloud copy accepts the app's writes.
    const res = await addTodo('written in the cloud');
    expect(res.status).toBe(201);
    expect(res.headers.get('x-lifeboat-app')).toBe('cloud');
    // The local database refuses them, for a new session of any role.
    await expect(query(appUrl(sys.info.localDatabaseUrl), "INSERT INTO public.todos (title) VALUES ('late local write')")).rejects.toThrow(/read-only/);
    await expect(query(sys.info.localDatabaseUrl, "INSERT INTO public.todos (title) VALUES ('late local write')")).rejects.toThrow(/read-only/);
    // RPO 0: every row the local side committed is in the cloud.
    const cloudTitles = new Set((await query<{ title: string }>(sys.info.cloudDatabaseUrl, 'SELECT title FROM public.todos')).map((r) => r.title));
    const missing = committed.filter((t) => !cloudTitles.has(t));
    expect(missing).toEqual([]);

    const decisions = (s.decisions as { action: string; at: string; reason: string }[]).slice().reverse();
    const at = (action: string) => Date.parse(decisions.find((d) => d.action === action)?.at ?? 'NaN');
    const confirmed = decisions.find((d) => d.reason.includes('probes failed in a row') && d.action !== 'record-probe');
    expect(decisions.some((d) => d.action === 'request-graceful-takeover')).toBe(true);
    expect(decisions.find((d) => d.action === 'promote-cloud')?.reason).toMatch(/promoted cloud at epoch 2 because .*local handed over at marker/);
    console.log(
      `graceful failover: ${committed.length} rows committed locally, ${missing.length} lost; ` +
        `detection ${((Date.parse(confirmed?.at ?? 'NaN') - appDownAt) / 1000).toFixed(1)} s after the app stopped; ` +
        `promote → traffic switched ${at('switch-traffic-to-cloud') - at('promote-cloud')} ms; ` +
        `app down → router on cloud ${((switchedAt - appDownAt) / 1000).toFixed(1)} s`,
    );
  }, 240_000);
});
