// Failover end to end on the whole local system (local/local-system.ts):
// both clusters, both emulators, the agent and the three functions as
// processes, the demo app twice and the traffic router. Timings are shortened
// through the config (lease TTL 8 s, rechecks every second) so that the test
// runs in seconds; the decisions are the same.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyTables } from '../../agent/table-verify.ts';
import { main } from '../../cli/main.ts';
import { startLocalSystem, type LocalSystem } from '../../local/local-system.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts';
import { controlDocumentFor, FirestoreControlStore } from '../../adapters/firestore-control-store.ts';
import { connectFirestore } from '../../adapters/firestore-lease-store.ts';
import type { ControlLogEntry } from '../../core/control-record.ts';

let sys: LocalSystem;
let firestoreProxy: TcpProxy;
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

async function dropSlotsOf(adminUrl: string, database: string): Promise<void> {
  await query(adminUrl, 'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active', [database]).catch(() => undefined);
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) {
      const agentLog = readFileSync(join(dir, 'logs', 'agent.log'), 'utf8').split('\n').slice(-25).join('\n');
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; system log:\n${lines.slice(-30).join('\n')}\nagent log:\n${agentLog}`);
    }
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

async function runCli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  // No --config: the CLI finds the running system through local.json in LIFEBOAT_STATE_DIR.
  const { LIFEBOAT_CONFIG: _none, ...env } = process.env;
  const code = await main(args, { ...env, LIFEBOAT_STATE_DIR: dir }, { stdout: (t) => (out += t), stderr: (t) => (err += t), cwd: dir });
  return { code, out, err };
}

async function verify() {
  const [a, b] = [new pg.Client({ connectionString: sys.info.localDatabaseUrl }), new pg.Client({ connectionString: sys.info.cloudDatabaseUrl })];
  await a.connect();
  await b.connect();
  try {
    return await verifyTables(a, b);
  } finally {
    await a.end();
    await b.end();
  }
}

/** Every decision in the audit trail (newest first), straight from Firestore. */
async function auditTrail(): Promise<Extract<ControlLogEntry, { kind: 'decision' }>[]> {
  const firestore = connectFirestore({ projectId: sys.config.project, emulatorHost: getStack().firestoreEmulatorHost });
  try {
    const store = new FirestoreControlStore({ firestore, document: controlDocumentFor(sys.config.lease.document, sys.config.stream) });
    return (await store.recent('decision', 2000)).filter((d): d is Extract<ControlLogEntry, { kind: 'decision' }> => d.kind === 'decision');
  } finally {
    await Promise.race([firestore.terminate(), new Promise((r) => setTimeout(r, 2000))]);
  }
}

async function status(): Promise<Record<string, any>> {
  return (await (await fetch(sys.info.statusUrl)).json()) as Record<string, any>;
}

beforeAll(async () => {
  const stack = getStack();
  dir = mkdtempSync(join(tmpdir(), 'lifeboat-e2e-failover-'));
  const database = `failover_${process.pid}`;
  firestoreProxy = await startTcpProxy(stack.firestoreEmulatorHost);
  sys = await startLocalSystem({
    dir,
    // The agent reaches Firestore through a proxy the Firestore-cut test can stop.
    agentEnv: { FIRESTORE_EMULATOR_HOST: firestoreProxy.host },
    durable: false,
    log: (l) => lines.push(l),
    existing: {
      localAdminUrl: stack.localUrl,
      cloudAdminUrl: stack.cloudUrl,
      pubsubEmulatorHost: stack.pubsubEmulatorHost,
      firestoreEmulatorHost: stack.firestoreEmulatorHost,
      database,
    },
    config: { ...fast, project: uniqueProjectId('failover'), source: { slot: 'lifeboat_e2e_failover' } },
  });
}, 180_000);

afterAll(async () => {
  await sys?.stop();
  // Slots are per cluster, not per database: drop ours so later tests on the shared clusters can use the names.
  await dropSlotsOf(getStack().localUrl, `failover_${process.pid}`);
  await dropSlotsOf(getStack().cloudUrl, `failover_${process.pid}`);
  await firestoreProxy?.close();
  if (dir && !process.env.LIFEBOAT_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
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
    const cli = await runCli(['status', '--json']);
    expect(cli.err).toBe('');
    const report = JSON.parse(cli.out);
    if (report.phase !== 'normal' || report.stream?.halted !== false) console.log(JSON.stringify(report, null, 2));
    expect(report).toMatchObject({ mode: 'local', phase: 'normal', lease: { holder: 'local', epoch: 1 }, stream: { halted: false } });
    expect(report.stream.lastAppliedLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(report.lag.bytes).toBeGreaterThanOrEqual(0);
    const human = await runCli(['status']);
    expect(human.out).toMatch(/^mode local, stream main: normal\nlease: local at epoch 1/);
  }, 120_000);

  it('graceful takeover when the app dies and the agent lives: RPO 0, traffic to the cloud, local refuses writes', async () => {
    // A writer on the local database (as the app role) until the fence stops it.
    const committed: string[] = [];
    let writing = true;
    const writer = (async () => {
      let n = 0;
      while (writing) {
        const c = new pg.Client({ connectionString: appUrl(sys.info.localDatabaseUrl) });
        c.on('error', () => {}); // the fence terminates this session
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
    await waitFor('the failover to be recorded', async () => (await status()).phase === 'failed-over', 60_000);

    const s = await status();
    expect(s.lease).toMatchObject({ holder: 'cloud', epoch: 2 });
    // The cloud copy accepts the app's writes.
    const res = await addTodo('written in the cloud');
    expect(res.status).toBe(201);
    expect(res.headers.get('x-lifeboat-app')).toBe('cloud');
    // The local database refuses them, for a new session of any role.
    // (the app role also lost CONNECT: source.appRole is set)
    await expect(query(appUrl(sys.info.localDatabaseUrl), "INSERT INTO public.todos (title) VALUES ('late local write')")).rejects.toThrow(/read-only|permission denied for database/);
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

  it('full failback: stranded tail saved, reverse sync, checksums equal, traffic local, forward replication again', async () => {
    // Writes made in the cloud while it served must come home.
    for (const t of ['cloud write 1', 'cloud write 2']) expect((await addTodo(t)).status).toBe(201);
    await sys.localApp.start();
    const started = Date.now();
    const { code, out, err } = await runCli(['failback', '--timeout', '240']);
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(out).toMatch(/saved the stranded tail/);
    // The probe function's runs share the cycles with the command, so a step may appear in either: read the audit trail.
    expect((await auditTrail()).some((d) => d.action === 'hand-lease-to-local' && d.outcome === 'ok' && /handed the lease to local at epoch 3/.test(d.reason))).toBe(true);
    const s = await status();
    expect(s.phase).toBe('normal');
    expect(s.lease).toMatchObject({ holder: 'local', epoch: 3 });
    await waitFor('the router to send traffic home', async () => (await fetch(`${sys.info.routerUrl}/todos`)).headers.get('x-lifeboat-app') === 'local', 30_000);
    expect(await verify()).toMatchObject({ equal: true });
    const v = await runCli(['verify', '--json']);
    expect(v.code).toBe(0);
    expect(JSON.parse(v.out)).toMatchObject({ equal: true, tables: [{ table: 'public.todos', match: true }] });
    // Local takes writes again once the agent holds the lease, and they replicate.
    await waitFor('local to accept writes', async () => (await addTodo('home again')).status === 201, 120_000);
    await waitFor('the new write to reach the cloud', async () => (await query(sys.info.cloudDatabaseUrl, "SELECT 1 FROM public.todos WHERE title = 'home again'")).length === 1, 120_000);
    console.log(`failback: ${((Date.now() - started) / 1000).toFixed(1)} s from \`lifeboat failback\` to local serving and replicating again`);
  }, 400_000);

  it('hard failover under load: every local row that did not reach the cloud is in the stranded-tail report', async () => {
    const committed: string[] = [];
    let writing = true;
    const writer = (async () => {
      const c = new pg.Client({ connectionString: appUrl(sys.info.localDatabaseUrl) });
      c.on('error', () => {});
      await c.connect();
      try {
        for (let n = 0; writing; n++) {
          const title = `hard ${n}`;
          await c.query('INSERT INTO public.todos (title) VALUES ($1)', [title]);
          committed.push(title);
        }
      } finally {
        await c.end().catch(() => undefined);
      }
    })();
    await waitFor('load to run', async () => committed.length > 200, 60_000);
    // The host "dies": the agent first (no fence, no marker), the app and the writer a moment later.
    sys.agent.signal('SIGKILL');
    await sys.agent.stop();
    await new Promise((r) => setTimeout(r, 300));
    writing = false;
    await writer;
    const downAt = Date.now();
    await sys.localApp.stop();
    // Two probe runs at the same moment, every time, until the cloud serves: exactly one may promote.
    sys.setScheduler(false);
    await waitFor('the cloud to serve after the lease expired', async () => {
      await Promise.all([sys.probeNow(), sys.probeNow()]);
      return (await status()).phase === 'failed-over';
    }, 180_000);
    sys.setScheduler(true);
    const trail = await auditTrail();
    const promotions = trail.filter((d) => d.action === 'promote-cloud' && d.outcome === 'ok' && d.reason.includes('at epoch 4'));
    expect(promotions).toHaveLength(1);
    expect(trail.some((d) => d.outcome === 'skipped')).toBe(true);
    await waitFor('the router to send traffic to the cloud', async () => (await fetch(`${sys.info.routerUrl}/todos`)).headers.get('x-lifeboat-app') === 'cloud', 60_000);
    const rto = (Date.now() - downAt) / 1000;
    const s = await status();
    expect(s.lease).toMatchObject({ holder: 'cloud', epoch: 4 });
    expect(s.decisions.find((d: { action: string }) => d.action === 'promote-cloud')?.reason).toMatch(/the lease expired at/);
    const cloudTitles = new Set((await query<{ title: string }>(sys.info.cloudDatabaseUrl, 'SELECT title FROM public.todos')).map((r) => r.title));
    const stranded = committed.filter((t) => !cloudTitles.has(t));

    // Failback saves them in the report (never applies them).
    await sys.agent.start();
    await sys.localApp.start();
    const { code, err } = await runCli(['failback', '--timeout', '240']);
    expect(err).toBe('');
    expect(code).toBe(0);
    const reports = readdirSync(join(dir, 'objects', 'reports', 'main')).filter((f) => f.includes('epoch-4') && f.endsWith('.sql'));
    expect(reports).toHaveLength(1);
    const sql = readFileSync(join(dir, 'objects', 'reports', 'main', reports[0]!), 'utf8');
    const notReported = stranded.filter((t) => !sql.includes(`'${t}'`));
    expect(notReported).toEqual([]);
    expect(await verify()).toMatchObject({ equal: true });
    console.log(`hard failover: ${committed.length} rows committed under load, ${stranded.length} stranded (RPO), all ${stranded.length} in the report; app down → traffic on the cloud ${rto.toFixed(1)} s`);
  }, 500_000);

  it('agent cut off from Firestore while local runs: local fences itself before the lease can be taken; no write on both sides', async () => {
    expect((await status()).lease).toMatchObject({ holder: 'local', epoch: 5 });
    const commits: number[] = [];
    let writing = true;
    const writer = (async () => {
      for (let n = 0; writing; n++) {
        const c = new pg.Client({ connectionString: appUrl(sys.info.localDatabaseUrl) });
        c.on('error', () => {});
        try {
          await c.connect();
          while (writing) {
            await c.query('INSERT INTO public.todos (title) VALUES ($1)', [`cut ${n}`]);
            commits.push(Date.now());
            await new Promise((r) => setTimeout(r, 10));
          }
        } catch {
          await new Promise((r) => setTimeout(r, 50));
        } finally {
          await c.end().catch(() => undefined);
        }
      }
    })();
    await waitFor('local writes', async () => commits.length > 20, 30_000);
    firestoreProxy.cut();
    const cutAt = Date.now();
    await waitFor('local to fence itself', async () => (await query<{ ro: string }>(sys.info.localDatabaseUrl, "SELECT current_setting('default_transaction_read_only') AS ro"))[0]?.ro === 'on', 60_000);
    const fencedAt = Date.now();
    await waitFor('the cloud to serve', async () => (await status()).phase === 'failed-over', 180_000);
    writing = false;
    await writer;
    const trail = await auditTrail();
    const promote = trail.find((d) => d.action === 'promote-cloud' && d.outcome === 'ok' && d.reason.includes('at epoch 6'));
    const writable = trail.find((d) => d.action === 'make-cloud-writable' && d.outcome === 'ok' && d.epoch === 6);
    expect(promote?.reason).toMatch(/the lease expired at/);
    const expiry = Date.parse(/the lease expired at (\S+?)[;,)]?(?:\s|$)/.exec(promote!.reason)![1]!);
    const lastLocalCommit = Math.max(...commits);
    // The fence came before the lease could be taken (expiry + margin), and no local write after it.
    expect(fencedAt).toBeLessThan(expiry + sys.config.lease.clockSkewMarginSeconds * 1000);
    expect(lastLocalCommit).toBeLessThan(promote!.at);
    expect(lastLocalCommit).toBeLessThan(writable!.at);
    console.log(
      `Firestore cut: local fenced ${((fencedAt - cutAt) / 1000).toFixed(1)} s after the cut, ${((expiry - fencedAt) / 1000).toFixed(1)} s before the lease expired; ` +
        `last local commit ${((writable!.at - lastLocalCommit) / 1000).toFixed(1)} s before the cloud became writable at epoch 6`,
    );
    firestoreProxy.restore();
  }, 400_000);

  it('failover.failback = auto: the agent brings the writer home by itself once local is back', async () => {
    expect((await status()).phase).toBe('failed-over');
    // The agent reads its config at each (re)start; the supervisor restarts it while the cloud serves.
    const cfg = parseYaml(readFileSync(sys.info.configFile, 'utf8')) as Record<string, any>;
    writeFileSync(sys.info.configFile, stringifyYaml({ ...cfg, failover: { ...cfg.failover, failback: 'auto' } }));
    await sys.localApp.start();
    const started = Date.now();
    await waitFor('the automatic failback', async () => (await status()).phase === 'normal', 240_000);
    const s = await status();
    expect(s.lease).toMatchObject({ holder: 'local', epoch: 7 });
    const trail = await auditTrail();
    expect(trail.some((d) => d.runner.includes('failover.failback = auto') && d.action === 'save-stranded-tail' && d.outcome === 'ok')).toBe(true);
    await waitFor('the router to send traffic home', async () => (await fetch(`${sys.info.routerUrl}/todos`)).headers.get('x-lifeboat-app') === 'local', 60_000);
    expect(await verify()).toMatchObject({ equal: true });
    await waitFor('local to accept writes', async () => (await addTodo('auto home')).status === 201, 120_000);
    await waitFor('the write to reach the cloud', async () => (await query(sys.info.cloudDatabaseUrl, "SELECT 1 FROM public.todos WHERE title = 'auto home'")).length === 1, 120_000);
    console.log(`automatic failback: ${((Date.now() - started) / 1000).toFixed(1)} s from the local app's return to local serving`);
  }, 400_000);
});
