// The agent's figures for issue #3, on the real local stack.
//
//   npx tsx bench/agent.ts [--quick]
//
// Starts its own stack (two PostgreSQL 15 clusters and the emulators, see
// test/stack/local-stack.ts) and measures:
//   1. Agent-only throughput: a backlog of 1000-row transactions (500k rows;
//      --quick 100k) captured from the slot and published to the Pub/Sub
//      emulator, with PostgreSQL's native logical replication (publication +
//      subscription to the "cloud" cluster) on the same backlog as a reference.
//   2. Compressed wire bytes per changed row for a pgbench workload
//      (goal ≤ 40 B), the initial snapshot's bytes left out.
//   3. RSS and CPU of the agent, run as its own process, at a paced
//      10k rows/s (goals ≤ 80 MB, ≤ 0.5 core), with idle baselines: under tsx
//      (as the tests run it), as plain JS bundled with esbuild (the way a
//      shipped agent runs, without tsx's loader in the process), and that
//      bundle with a smaller young generation and with a capped old space.
//      A preloaded probe reports process.memoryUsage() and, after the load,
//      the live heap after a forced full GC (heap data vs GC slack).
//
// The machine has 2 cores shared by PostgreSQL, the Java emulators, the load
// driver, the agent and other engineers' work: the figures are floors for a
// dedicated machine, not forecasts.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import pg from 'pg';
import { createFsObjectStore } from '../adapters/object-store-fs.ts';
import { createPubsubPublisher, ensureTopic } from '../adapters/pubsub-publisher.ts';
import { LifeboatAgent, type AgentStatusReport } from '../agent/agent.ts';
import { parseConfig, type LifeboatConfig } from '../core/config.ts';
import { createLogger } from '../core/log.ts';
import { parseLsn, type Lsn } from '../core/lsn.ts';
import { startLocalStack, type LocalStack } from '../local/local-stack.ts';
import { findPgBin, realLookup } from '../local/prerequisites.ts';

const QUICK = process.argv.includes('--quick');
const REPO = fileURLToPath(new URL('..', import.meta.url));
const RUN_AGENT = path.join(REPO, 'test', 'agent', 'fixtures', 'run-agent.ts');
const COMMAND = `npx tsx bench/agent.ts${QUICK ? ' --quick' : ''}`;

const BACKLOG_ROWS = QUICK ? 100_000 : 500_000;
const BACKLOG_TX_ROWS = 1000;
const PGBENCH_SECONDS = QUICK ? 10 : 20;
const PACED_SECONDS = QUICK ? 15 : 30;
const PACED_TX_PER_SECOND = 50;
const PACED_TX_ROWS = 200;
const IDLE_SECONDS = QUICK ? 5 : 10;
const SKIP_SECONDS = 5;
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

const GOAL_BYTES_PER_ROW = 40;
const GOAL_RSS_MB = 80;
const GOAL_CPU_CORES = 0.5;

process.env.METADATA_SERVER_DETECTION = 'none';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const note = (line: string) => process.stderr.write(`bench: ${line}\n`);
const fmt = (n: number, digits = 0) => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const mb = (kb: number) => kb / 1024;

// ---------------------------------------------------------------------------
// Cleanup: the stack, agent child processes and the scratch dir go away on
// every exit path, Ctrl-C included.

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-bench-agent-'));
const children = new Set<ChildProcess>();
let stack: LocalStack | undefined;

function killChildren(): void {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
}

process.once('SIGINT', () => {
  note('interrupted: stopping the agent processes and the stack');
  killChildren();
  fs.rmSync(scratch, { recursive: true, force: true });
  setTimeout(() => process.exit(130), 20_000).unref();
  void (stack?.stop() ?? Promise.resolve()).catch(() => undefined).finally(() => process.exit(130));
});

// ---------------------------------------------------------------------------
// Helpers

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function createDatabase(serverUrl: string, name: string): Promise<string> {
  await withClient(serverUrl, (c) => c.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`));
  const u = new URL(serverUrl);
  u.pathname = `/${encodeURIComponent(name)}`;
  return u.toString();
}

/** Drops the slot (if it exists) and then the database, so later goals do not pay for its WAL. */
async function dropDatabase(serverUrl: string, name: string, slot?: string): Promise<void> {
  await withClient(serverUrl, async (c) => {
    if (slot) await c.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1', [slot]);
    await c.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`);
  });
}

async function currentWalLsn(c: pg.Client): Promise<Lsn> {
  const r = await c.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return parseLsn(r.rows[0]!.lsn);
}

async function waitUntil<T>(what: string, timeoutMs: number, probe: () => T | undefined | false | Promise<T | undefined | false>, intervalMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(intervalMs);
  }
}

const BENCH_TABLE = 'CREATE TABLE bench (id bigint PRIMARY KEY, v int NOT NULL, filler text NOT NULL)';
// ~80 characters of hex: about as compressible as ordinary text columns.
const BENCH_INSERT =
  'INSERT INTO bench (id, v, filler) SELECT g, (g % 1000)::int, substr(repeat(md5(g::text), 3), 1, 80) FROM generate_series($1::bigint, $2::bigint) AS g';

function agentConfig(o: { project: string; stream: string; databaseUrl: string; name: string; dir: string }): LifeboatConfig {
  return parseConfig({
    project: o.project,
    stream: o.stream,
    logLevel: 'warning',
    source: { databaseUrl: o.databaseUrl, publication: `lifeboat_${o.name}`, slot: `lifeboat_${o.name}`, maxSlotWalKeepSize: '1GB' },
    storage: { localDir: path.join(o.dir, 'objects') },
  });
}

interface InProcessAgent {
  agent: LifeboatAgent;
  status(): AgentStatusReport;
  stop(): Promise<void>;
}

function startInProcessAgent(config: LifeboatConfig, dir: string, emulatorHost: string): InProcessAgent {
  const publisher = createPubsubPublisher({ projectId: config.project, topic: config.pubsub.changesTopic, emulatorHost });
  const agent = new LifeboatAgent({
    config,
    baseDir: dir,
    stateDir: dir,
    publisher,
    objectStore: createFsObjectStore(config.storage.localDir),
    epoch: () => 1,
    logger: createLogger({ component: 'bench-agent', level: 'warning' }),
  });
  const ac = new AbortController();
  let failure: unknown;
  const done = agent.run(ac.signal).catch((err: unknown) => {
    failure = err;
  });
  return {
    agent,
    status() {
      if (failure) throw new Error(`the agent failed: ${failure instanceof Error ? failure.message : String(failure)}`);
      return agent.status();
    },
    async stop() {
      ac.abort();
      await done;
      await publisher.close();
    },
  };
}

// ---------------------------------------------------------------------------
// Results

interface Row {
  goal: string;
  measure: string;
  value: string;
  target: string;
  verdict: string;
}
const rows: Row[] = [];
const conclusions: string[] = [];
const notDone: string[] = [];

function record(goal: string, measure: string, value: string, target = '', verdict = ''): void {
  rows.push({ goal, measure, value, target, verdict });
}

function printTable(): void {
  const headers: Row = { goal: 'goal', measure: 'measure', value: 'value', target: 'target', verdict: 'verdict' };
  const keys = Object.keys(headers) as (keyof Row)[];
  const width = Object.fromEntries(keys.map((k) => [k, Math.max(headers[k].length, ...rows.map((r) => r[k].length))])) as Record<keyof Row, number>;
  const line = (r: Row) => '| ' + keys.map((k) => (k === 'value' ? r[k].padStart(width[k]) : r[k].padEnd(width[k]))).join(' | ') + ' |';
  const out = [line(headers), '|' + keys.map((k) => '-'.repeat(width[k] + 2)).join('|') + '|', ...rows.map(line)];
  process.stdout.write(`\n${out.join('\n')}\n\n`);
}

// ---------------------------------------------------------------------------
// Goal 1: backlog throughput, agent vs native logical replication

async function goalThroughput(s: LocalStack): Promise<void> {
  note(`goal 1: ${fmt(BACKLOG_ROWS)}-row backlog in ${BACKLOG_TX_ROWS}-row transactions`);
  const dbName = 'bench_throughput';
  const url = await createDatabase(s.local.url, dbName);
  const cloudUrl = await createDatabase(s.cloud.url, dbName);
  const dir = path.join(scratch, 'throughput');
  const config = agentConfig({ project: 'bench-throughput', stream: 'main', databaseUrl: url, name: 'throughput', dir });
  await ensureTopic({ projectId: config.project, topic: config.pubsub.changesTopic, emulatorHost: s.pubsub.host });
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const cloud = new pg.Client({ connectionString: cloudUrl });
  await cloud.connect();
  try {
    await db.query(BENCH_TABLE);
    await cloud.query(BENCH_TABLE);

    // First run: creates the slot and ships the (empty) snapshot.
    let run = startInProcessAgent(config, dir, s.pubsub.host);
    await waitUntil('the agent to stream after its initial snapshot', 120_000, () => run.status().phase === 'streaming');
    await run.stop();

    // The native subscription's slot exists before the load, so both read the same backlog.
    const port = new URL(s.local.url).port;
    await db.query('CREATE PUBLICATION bench_native FOR TABLE bench');
    await cloud.query(
      `CREATE SUBSCRIPTION bench_native CONNECTION 'host=127.0.0.1 port=${port} dbname=${dbName} user=postgres' ` +
        'PUBLICATION bench_native WITH (enabled = false, copy_data = false)',
    );

    const tLoad = performance.now();
    for (let first = 1; first <= BACKLOG_ROWS; first += BACKLOG_TX_ROWS) {
      await db.query(BENCH_INSERT, [first, first + BACKLOG_TX_ROWS - 1]);
    }
    const loadSeconds = (performance.now() - tLoad) / 1000;
    const walBytes = Number(
      (await db.query<{ b: string }>("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS b FROM pg_replication_slots WHERE slot_name = 'lifeboat_throughput'")).rows[0]?.b ?? 0,
    );
    note(`backlog loaded in ${loadSeconds.toFixed(1)} s (${fmt(BACKLOG_ROWS / loadSeconds)} rows/s), ${fmt(walBytes / 1e6, 1)} MB of WAL behind the agent's slot`);

    const backlogEnd = await currentWalLsn(db);

    // Second run: time from start until every backlog row is acknowledged by Pub/Sub,
    // with a timeline of where the time goes.
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    run = startInProcessAgent(config, dir, s.pubsub.host);
    const at: { streaming?: number; firstReceived?: number; allReceived?: number; firstAck?: number } = {};
    let status = run.status();
    await waitUntil('the agent to publish the backlog', 600_000, () => {
      status = run.status();
      const now = performance.now();
      if (at.streaming === undefined && status.phase === 'streaming') at.streaming = now;
      const received = status.positions.receivedLsn === null ? 0n : parseLsn(status.positions.receivedLsn);
      if (at.firstReceived === undefined && received > 0n) at.firstReceived = now;
      if (at.allReceived === undefined && received > 0n && received >= backlogEnd - 0x10000n) at.allReceived = now;
      if (at.firstAck === undefined && status.batches.rows > 0) at.firstAck = now;
      return status.batches.rows >= BACKLOG_ROWS;
    }, 10);
    const tDone = performance.now();
    const cpu = process.cpuUsage(cpu0);
    const benchCores = (cpu.user + cpu.system) / 1e6 / ((tDone - t0) / 1000);
    await run.stop();
    const agentSeconds = (tDone - t0) / 1000;
    const agentRate = BACKLOG_ROWS / agentSeconds;
    const tFirst = at.firstAck ?? t0;
    const steadySeconds = (tDone - tFirst) / 1000;
    const batches = status.batches.published;
    const since = (t: number | undefined) => (t === undefined ? 'n/a' : `${((t - t0) / 1000).toFixed(2)} s`);
    const timeline =
      `session streaming ${since(at.streaming)}, first change received ${since(at.firstReceived)}, ` +
      `backlog received ${since(at.allReceived)}, first ack ${since(at.firstAck)}, last ack ${since(tDone)}`;
    note(`agent: ${fmt(BACKLOG_ROWS)} rows, ${batches} batches, ${fmt(status.batches.bytes / 1e6, 1)} MB on the wire; timeline from start: ${timeline}`);

    // Native logical replication on the same backlog.
    const tn0 = performance.now();
    await cloud.query('ALTER SUBSCRIPTION bench_native ENABLE');
    // Transactions apply in commit order, so the highest id arriving means all did.
    await waitUntil('the native subscriber to apply the backlog', 600_000, async () => {
      const r = await cloud.query<{ m: string | null }>('SELECT max(id)::text AS m FROM bench');
      return Number(r.rows[0]?.m ?? 0) >= BACKLOG_ROWS;
    });
    const nativeSeconds = (performance.now() - tn0) / 1000;
    const nativeCount = Number((await cloud.query<{ n: string }>('SELECT count(*) AS n FROM bench')).rows[0]!.n);
    if (nativeCount !== BACKLOG_ROWS) throw new Error(`native subscriber has ${nativeCount} rows, expected ${BACKLOG_ROWS}`);
    await cloud.query('DROP SUBSCRIPTION bench_native');
    const nativeRate = BACKLOG_ROWS / nativeSeconds;

    const g = '1 throughput';
    record(g, `backlog (${BACKLOG_TX_ROWS}-row tx), load time`, `${fmt(BACKLOG_ROWS)} rows, ${loadSeconds.toFixed(1)} s`);
    record(g, 'agent: captured + published, from start', `${fmt(agentRate)} rows/s`, '', `${agentSeconds.toFixed(2)} s`);
    record(g, 'agent: first ack to last ack', `${fmt(BACKLOG_ROWS / steadySeconds)} rows/s`, '', `${steadySeconds.toFixed(2)} s`);
    record(g, 'agent timeline (s from start)', `${since(at.streaming)} / ${since(at.firstReceived)} / ${since(at.allReceived)} / ${since(at.firstAck)} / ${since(tDone)}`, '', 'stream/1st rx/all rx/1st ack/last ack');
    record(g, 'CPU of the process running the agent', `${benchCores.toFixed(2)} core`, '', 'agent + status polling');
    record(g, 'agent: batches, rows/batch, wire MB', `${batches}, ${fmt(BACKLOG_ROWS / Math.max(1, batches))}, ${fmt(status.batches.bytes / 1e6, 1)}`);
    record(g, 'native logical replication (applied)', `${fmt(nativeRate)} rows/s`, '', `${nativeSeconds.toFixed(2)} s`);
    record(g, 'ratio agent / native', `${(agentRate / nativeRate).toFixed(2)}`);
    conclusions.push(
      `1. The agent captured and published a ${fmt(BACKLOG_ROWS)}-row backlog at ${fmt(agentRate)} rows/s (${agentSeconds.toFixed(1)} s from start, ` +
        `${fmt(BACKLOG_ROWS / steadySeconds)} rows/s between first and last acknowledgement); native logical replication applied the same backlog at ` +
        `${fmt(nativeRate)} rows/s, ratio ${(agentRate / nativeRate).toFixed(2)}. The agent only publishes (nothing is applied; the topic has no subscription), ` +
        'while native replication also writes every row on the subscriber: the ratio is a reference, not a like-for-like race. ' +
        `Timeline from the agent's start: ${timeline}; the process running the agent used ${benchCores.toFixed(2)} core meanwhile.`,
    );
  } finally {
    await db.end().catch(() => undefined);
    await cloud.end().catch(() => undefined);
    await dropDatabase(s.local.url, dbName, 'lifeboat_throughput').catch((err: unknown) => note(`cleanup: ${String(err)}`));
    await dropDatabase(s.cloud.url, dbName).catch((err: unknown) => note(`cleanup: ${String(err)}`));
  }
}

// ---------------------------------------------------------------------------
// Goal 2: wire bytes per changed row under pgbench

function pgbenchPath(): string {
  return path.join(findPgBin(realLookup()).bin, 'pgbench');
}

function pgEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  return env;
}

function runPgbench(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(pgbenchPath(), args, { env: pgEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      children.delete(child);
      if (code === 0) resolve(out);
      else reject(new Error(`pgbench ${args.join(' ')} exited with ${code}:\n${out}`));
    });
  });
}

async function goalWireBytes(s: LocalStack): Promise<void> {
  note(`goal 2: pgbench -s 2, -T ${PGBENCH_SECONDS} -c 4 -j 2`);
  const dbName = 'bench_pgbench';
  const url = await createDatabase(s.local.url, dbName);
  const port = new URL(s.local.url).port;
  const conn = ['-h', '127.0.0.1', '-p', port, '-U', 'postgres'];
  const dir = path.join(scratch, 'pgbench');
  const config = agentConfig({ project: 'bench-pgbench', stream: 'main', databaseUrl: url, name: 'pgbench', dir });
  await ensureTopic({ projectId: config.project, topic: config.pubsub.changesTopic, emulatorHost: s.pubsub.host });
  await runPgbench(['-i', '-s', '2', '-q', ...conn, dbName]);
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  let run: InProcessAgent | undefined;
  try {
    run = startInProcessAgent(config, dir, s.pubsub.host);
    const agent = run;
    await waitUntil('the agent to finish the snapshot', 300_000, () => agent.status().phase === 'streaming');
    await sleep(1000);
    const before = agent.status().batches;
    note(`snapshot: ${fmt(before.rows)} rows, ${fmt(before.bytes)} wire bytes (${(before.bytes / Math.max(1, before.rows)).toFixed(1)} B/row); running pgbench`);

    const tRun = performance.now();
    const out = await runPgbench(['-T', String(PGBENCH_SECONDS), '-c', '4', '-j', '2', ...conn, dbName]);
    const runSeconds = (performance.now() - tRun) / 1000;
    const endLsn = await currentWalLsn(db);
    const tEnd = performance.now();
    const txns = Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1] ?? NaN);
    const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out)?.[1] ?? NaN);
    // tpcb-like: 3 UPDATEs and 1 INSERT per transaction.
    const expectedRows = txns * 4;
    let rowsCaughtUpAt: number | undefined;
    await waitUntil('the agent to catch up with pgbench', 300_000, () => {
      const st = agent.status();
      if (rowsCaughtUpAt === undefined && st.batches.rows - before.rows >= expectedRows) rowsCaughtUpAt = performance.now();
      const published = st.positions.publishedLsn;
      return published !== null && parseLsn(published) >= endLsn;
    });
    const frontierCaughtUp = (performance.now() - tEnd) / 1000;
    const after = agent.status().batches;
    const changedRows = after.rows - before.rows;
    const wireBytes = after.bytes - before.bytes;
    const batches = after.published - before.published;
    const perRow = wireBytes / changedRows;
    const g = '2 wire bytes';
    record(g, 'pgbench tps (4 clients)', fmt(tps), '', `${fmt(txns)} tx in ${runSeconds.toFixed(1)} s`);
    record(g, 'changed rows published, rows/s', `${fmt(changedRows)}, ${fmt(changedRows / PGBENCH_SECONDS)}/s`, '', changedRows === expectedRows ? '= 4 x tx' : `expected ${fmt(expectedRows)}`);
    record(g, 'batches (incl. heartbeats), rows/batch', `${batches}, ${fmt(changedRows / Math.max(1, batches))}`);
    record(g, 'wire bytes per changed row', `${perRow.toFixed(1)} B`, `<= ${GOAL_BYTES_PER_ROW} B`, perRow <= GOAL_BYTES_PER_ROW ? 'met' : 'MISSED');
    record(g, 'catch-up after pgbench: rows / frontier', `${rowsCaughtUpAt === undefined ? 'n/a' : ((rowsCaughtUpAt - tEnd) / 1000).toFixed(2)} s / ${frontierCaughtUp.toFixed(2)} s`);
    record(g, 'snapshot (excluded): rows, B/row', `${fmt(before.rows)}, ${(before.bytes / Math.max(1, before.rows)).toFixed(1)} B`);
    conclusions.push(
      `2. Under pgbench (${fmt(tps)} tps, ${fmt(changedRows / PGBENCH_SECONDS)} changed rows/s) the agent sent ${perRow.toFixed(1)} wire bytes per changed row ` +
        `(data + attributes + ordering key, compressed, heartbeats included; snapshot excluded) in ${batches} batches of ~${fmt(changedRows / Math.max(1, batches))} rows: ` +
        `goal ≤ ${GOAL_BYTES_PER_ROW} B ${perRow <= GOAL_BYTES_PER_ROW ? 'met' : 'MISSED'}. ` +
        `Every row was published ${rowsCaughtUpAt === undefined ? '(rows never matched 4 × tx!)' : `${((rowsCaughtUpAt - tEnd) / 1000).toFixed(2)} s after pgbench ended`}; ` +
        `the published frontier passed the server's end LSN after ${frontierCaughtUp.toFixed(2)} s.`,
    );
  } finally {
    await run?.stop().catch((err: unknown) => note(`agent stop: ${String(err)}`));
    await db.end().catch(() => undefined);
    await dropDatabase(s.local.url, dbName, 'lifeboat_pgbench').catch((err: unknown) => note(`cleanup: ${String(err)}`));
  }
}

// ---------------------------------------------------------------------------
// Goal 3: RSS and CPU of the agent process at 10k rows/s

interface MemoryBreakdown {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

interface ProcSample {
  at: number;
  /** process.memoryUsage() as the agent process last wrote it (see MEM_PROBE). */
  memory: MemoryBreakdown | undefined;
  rssKb: number;
  ticks: number;
  /** RSS of the agent's child processes (tsx's esbuild service, if any). */
  childRssKb: number;
}

// Preloaded into the agent process (node --import): once a second it writes
// process.memoryUsage() to a file named after its pid, which tells heap from
// native memory. One timer and a small write: negligible next to the agent.
const MEM_PROBE = `import fs from 'node:fs';
const file = process.env.LIFEBOAT_BENCH_MEM_DIR + '/' + process.pid + '.json';
setInterval(() => fs.writeFileSync(file, JSON.stringify(process.memoryUsage())), 1000).unref();
// On SIGUSR2 (sent once, at the end of the load): a full GC, then what is still live.
process.on('SIGUSR2', () => {
  globalThis.gc?.();
  fs.writeFileSync(file.replace(/\\.json$/, '.gc.json'), JSON.stringify(process.memoryUsage()));
});
`;
const memDir = () => path.join(scratch, 'mem');
const memFile = (pid: number) => path.join(memDir(), `${pid}.json`);

function readRssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

function readTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 (utime) and 15 (stime); f[0] is field 3.
  return Number(f[11]) + Number(f[12]);
}

function childPidsOf(pid: number): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(e));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

function sampleProc(pid: number): ProcSample {
  let childRssKb = 0;
  for (const c of childPidsOf(pid)) {
    try {
      childRssKb += readRssKb(c);
    } catch {
      // exited meanwhile
    }
  }
  let memory: MemoryBreakdown | undefined;
  try {
    memory = JSON.parse(fs.readFileSync(memFile(pid), 'utf8')) as MemoryBreakdown;
  } catch {
    memory = undefined;
  }
  return { at: performance.now(), rssKb: readRssKb(pid), ticks: readTicks(pid), childRssKb, memory };
}

/** Samples pid once a second while `during` runs; returns the samples. */
async function sampleWhile(pid: number, during: Promise<unknown>): Promise<ProcSample[]> {
  const samples: ProcSample[] = [sampleProc(pid)];
  let finished = false;
  const done = during.finally(() => {
    finished = true;
  });
  while (!finished) {
    await Promise.race([sleep(1000), done]);
    if (!finished || performance.now() - samples[samples.length - 1]!.at > 500) samples.push(sampleProc(pid));
  }
  await done;
  return samples;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
}

interface ProcFigures {
  rssP50Mb: number;
  rssMaxMb: number;
  childRssMaxMb: number;
  /** process.memoryUsage() nearest the highest RSS. */
  memoryAtMax: MemoryBreakdown | undefined;
  cpuAvg: number;
  cpuMax: number;
}

function summarize(samples: ProcSample[], skipSeconds: number): ProcFigures {
  const t0 = samples[0]!.at;
  const steady = samples.filter((x) => x.at - t0 >= skipSeconds * 1000 - 100);
  const cpu: number[] = [];
  for (let i = 1; i < steady.length; i++) {
    const a = steady[i - 1]!;
    const b = steady[i]!;
    cpu.push((b.ticks - a.ticks) / CLK_TCK / ((b.at - a.at) / 1000));
  }
  const first = steady[0]!;
  const last = steady[steady.length - 1]!;
  const peak = steady.reduce((a, b) => (b.rssKb > a.rssKb ? b : a));
  return {
    memoryAtMax: peak.memory,
    rssP50Mb: mb(percentile(steady.map((x) => x.rssKb), 50)),
    rssMaxMb: mb(Math.max(...steady.map((x) => x.rssKb))),
    childRssMaxMb: mb(Math.max(...steady.map((x) => x.childRssKb))),
    cpuAvg: (last.ticks - first.ticks) / CLK_TCK / Math.max(0.001, (last.at - first.at) / 1000),
    cpuMax: cpu.length > 0 ? Math.max(...cpu) : NaN,
  };
}

function spawnAgentProcess(args: string[], env: NodeJS.ProcessEnv): Promise<ChildProcess> {
  const child = spawn(process.execPath, args, { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    let out = '';
    child.once('error', reject);
    child.once('exit', (code, signal) => reject(new Error(`agent process exited early (${signal ?? code}): ${out}`)));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('agent-started')) resolve(child);
    });
  });
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 40_000);
  await exited;
  clearTimeout(timer);
}

/** RSS of a process that only idles: plain node, or node with tsx's loader. */
async function idleRssMb(args: string[]): Promise<number> {
  const child = spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  try {
    await new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.stdout.once('data', () => resolve());
    });
    await sleep(1500);
    return mb(readRssKb(child.pid!));
  } finally {
    child.kill('SIGKILL');
    children.delete(child);
  }
}

/** Bundles run-agent.ts (our code only; packages stay imports) into plain JS that node runs without tsx. */
async function bundleRunAgent(): Promise<string> {
  const dir = path.join(scratch, 'bundle');
  fs.mkdirSync(dir, { recursive: true });
  // The bundle's bare imports resolve through this link to the repo's packages.
  fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(dir, 'node_modules'));
  const outfile = path.join(dir, 'run-agent.mjs');
  await build({ entryPoints: [RUN_AGENT], bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', outfile, logLevel: 'error' });
  return outfile;
}

interface ProcessVariant {
  /** Short id, part of the table's goal column and of database/slot names. */
  id: string;
  /** How the agent runs, for the conclusion. */
  label: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

async function measureAgentProcess(s: LocalStack, variant: ProcessVariant, letter: string): Promise<void> {
  const name = `rss_${variant.id.replace(/[^a-z0-9]+/g, '_')}`;
  const entry = variant.args;
  note(`goal 3 (${variant.id}): agent process, idle ${IDLE_SECONDS} s, then ${fmt(PACED_TX_PER_SECOND * PACED_TX_ROWS)} rows/s for ${PACED_SECONDS} s`);
  const url = await createDatabase(s.local.url, `bench_${name}`);
  const dir = path.join(scratch, name);
  fs.mkdirSync(dir, { recursive: true });
  const slot = `lifeboat_${name}`;
  const config = {
    project: `bench-${name.replace(/_/g, '-')}`,
    stream: 'main',
    source: { databaseUrl: url, publication: slot, slot, maxSlotWalKeepSize: '1GB' },
    storage: { localDir: path.join(dir, 'objects') },
  };
  const cfg = parseConfig(config);
  await ensureTopic({ projectId: cfg.project, topic: cfg.pubsub.changesTopic, emulatorHost: s.pubsub.host });
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const monitor = new pg.Client({ connectionString: url });
  await monitor.connect();
  let child: ChildProcess | undefined;
  try {
    await db.query(BENCH_TABLE);
    fs.mkdirSync(memDir(), { recursive: true });
    const probe = path.join(memDir(), 'probe.mjs');
    fs.writeFileSync(probe, MEM_PROBE);
    // --expose-gc only makes gc() callable (the probe calls it once, after the load).
    child = await spawnAgentProcess(['--expose-gc', '--import', probe, ...entry], {
      ...variant.env,
      LIFEBOAT_BENCH_MEM_DIR: memDir(),
      LIFEBOAT_LOG_LEVEL: 'error',
      METADATA_SERVER_DETECTION: 'none',
      LIFEBOAT_TEST_AGENT_CONFIG: JSON.stringify({ config, dir, emulatorHost: s.pubsub.host, epoch: 1 }),
    });
    const pid = child.pid!;
    // Streaming once the slot exists and a walsender holds it (the empty snapshot is done by then).
    await waitUntil('the agent process to stream', 120_000, async () => {
      const r = await monitor.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      return r.rows[0]?.active === true;
    }, 200);
    await sleep(3000);
    const idle = summarize(await sampleWhile(pid, sleep(IDLE_SECONDS * 1000)), 0);

    // Paced load: transaction i is due at i × 20 ms after the start; a late one goes at once.
    const lagSamples: number[] = [];
    let loadDone = false;
    const lagMonitor = (async () => {
      while (!loadDone) {
        const r = await monitor.query<{ b: string }>(
          'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS b FROM pg_replication_slots WHERE slot_name = $1',
          [slot],
        );
        lagSamples.push(Number(r.rows[0]?.b ?? 0));
        await sleep(1000);
      }
    })();
    let sentTx = 0;
    const intervalMs = 1000 / PACED_TX_PER_SECOND;
    const load = (async () => {
      const t0 = performance.now();
      while (performance.now() - t0 < PACED_SECONDS * 1000) {
        const wait = t0 + sentTx * intervalMs - performance.now();
        if (wait > 0) await sleep(wait);
        const first = sentTx * PACED_TX_ROWS + 1;
        await db.query(BENCH_INSERT, [first, first + PACED_TX_ROWS - 1]);
        sentTx += 1;
      }
      return (performance.now() - t0) / 1000;
    })();
    const samples = await sampleWhile(pid, load);
    const loadSeconds = await load;
    loadDone = true;
    await lagMonitor;
    const endLsn = await currentWalLsn(monitor);
    const tEnd = performance.now();
    // The live heap at the end of the load: a forced full GC tells retained data from GC slack.
    const gcFile = memFile(pid).replace(/\.json$/, '.gc.json');
    process.kill(pid, 'SIGUSR2');
    const afterGc = await waitUntil('the agent process to report its heap after a full GC', 10_000, () => {
      try {
        return JSON.parse(fs.readFileSync(gcFile, 'utf8')) as MemoryBreakdown;
      } catch {
        return undefined;
      }
    }, 50);
    await waitUntil('the agent process to confirm the load', 120_000, async () => {
      const r = await monitor.query<{ lsn: string | null }>('SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      const lsn = r.rows[0]?.lsn;
      return lsn ? parseLsn(lsn) >= endLsn : false;
    }, 100);
    const confirmSeconds = (performance.now() - tEnd) / 1000;
    const loaded = summarize(samples, SKIP_SECONDS);
    const achieved = (sentTx * PACED_TX_ROWS) / loadSeconds;

    const g = `3 agent process (${variant.id})`;
    record(g, 'idle: RSS p50 / max', `${idle.rssP50Mb.toFixed(1)} / ${idle.rssMaxMb.toFixed(1)} MB`, '', `CPU ${idle.cpuAvg.toFixed(3)} core`);
    record(g, 'paced load achieved', `${fmt(achieved)} rows/s`, '10,000 rows/s', `${sentTx} tx in ${loadSeconds.toFixed(1)} s`);
    record(g, 'RSS p50 / max (steady)', `${loaded.rssP50Mb.toFixed(1)} / ${loaded.rssMaxMb.toFixed(1)} MB`, `<= ${GOAL_RSS_MB} MB`, loaded.rssMaxMb <= GOAL_RSS_MB ? 'met' : loaded.rssP50Mb <= GOAL_RSS_MB ? 'p50 met, max MISSED' : 'MISSED');
    record(g, 'CPU avg / max (steady)', `${loaded.cpuAvg.toFixed(2)} / ${loaded.cpuMax.toFixed(2)} core`, `<= ${GOAL_CPU_CORES} core`, loaded.cpuAvg <= GOAL_CPU_CORES ? 'met' : 'MISSED');
    record(g, 'slot lag max during load; confirm after', `${fmt(Math.max(0, ...lagSamples) / 1024)} KiB; ${confirmSeconds.toFixed(2)} s`);
    const m = loaded.memoryAtMax;
    const mib = (n: number) => (n / 1048576).toFixed(1);
    if (m) {
      record(g, 'at max RSS: heap used/total, external, arrayBuffers', `${mib(m.heapUsed)}/${mib(m.heapTotal)}, ${mib(m.external)}, ${mib(m.arrayBuffers)} MB`, '', `RSS - heapTotal = ${mib(m.rss - m.heapTotal)} MB`);
    }
    record(g, 'after load + forced full GC: heap used, RSS', `${mib(afterGc.heapUsed)}, ${mib(afterGc.rss)} MB`, '', 'live heap');
    if (loaded.childRssMaxMb > 0) record(g, 'child processes RSS max', `${loaded.childRssMaxMb.toFixed(1)} MB`);
    conclusions.push(
      `3${letter}. Agent process ${variant.label} at ${fmt(achieved)} rows/s: RSS p50 ${loaded.rssP50Mb.toFixed(1)} MB, max ${loaded.rssMaxMb.toFixed(1)} MB ` +
        `(goal ≤ ${GOAL_RSS_MB} MB: ${loaded.rssMaxMb <= GOAL_RSS_MB ? 'met' : 'MISSED'}; idle ${idle.rssP50Mb.toFixed(1)} MB); CPU avg ${loaded.cpuAvg.toFixed(2)}, max ${loaded.cpuMax.toFixed(2)} core ` +
        `(goal ≤ ${GOAL_CPU_CORES}: ${loaded.cpuAvg <= GOAL_CPU_CORES ? 'met' : 'MISSED'}; idle ${idle.cpuAvg.toFixed(3)}). ` +
        `After the load a forced full GC left ${mib(afterGc.heapUsed)} MB of live heap (RSS ${mib(afterGc.rss)} MB). ` +
        `It kept up: the slot lagged at most ${fmt(Math.max(0, ...lagSamples) / 1024)} KiB and confirmed the end of the load ${confirmSeconds.toFixed(2)} s after it.`,
    );
  } finally {
    if (child) await stopProcess(child).catch(() => undefined);
    await db.end().catch(() => undefined);
    await monitor.end().catch(() => undefined);
    await dropDatabase(s.local.url, `bench_${name}`, slot).catch((err: unknown) => note(`cleanup: ${String(err)}`));
  }
}

async function goalProcess(s: LocalStack): Promise<void> {
  const idleScript = path.join(scratch, 'idle.ts');
  fs.writeFileSync(idleScript, "process.stdout.write('up\\n');\nsetInterval(() => {}, 1000);\nexport {};\n");
  const nodeIdle = await idleRssMb(['-e', "process.stdout.write('up\\n'); setInterval(() => {}, 1000)"]);
  const tsxIdle = await idleRssMb(['--import', 'tsx', idleScript]);
  const loadedIdle = async (module: string) =>
    idleRssMb(['--input-type=module', '-e', `await import(${JSON.stringify(module)}); process.stdout.write('up\\n'); setInterval(() => {}, 1000);`]);
  const pgIdle = await loadedIdle('pg');
  const pubsubIdle = await loadedIdle('@google-cloud/pubsub');
  record('3 baselines', 'idle RSS: node / node --import tsx', `${nodeIdle.toFixed(1)} / ${tsxIdle.toFixed(1)} MB`, '', `tsx adds ${(tsxIdle - nodeIdle).toFixed(1)} MB`);
  record('3 baselines', 'idle RSS: node + pg / + @google-cloud/pubsub', `${pgIdle.toFixed(1)} / ${pubsubIdle.toFixed(1)} MB`, '', 'import only');
  conclusions.push(
    `3. Baselines (idle processes): plain node ${nodeIdle.toFixed(1)} MB RSS; with tsx's loader ${tsxIdle.toFixed(1)} MB (before it compiles the agent's modules); ` +
      `node that only imports pg ${pgIdle.toFixed(1)} MB, only @google-cloud/pubsub ${pubsubIdle.toFixed(1)} MB.`,
  );

  await measureAgentProcess(s, { id: 'tsx', label: 'under tsx (node --import tsx run-agent.ts)', args: ['--import', 'tsx', RUN_AGENT] }, 'a');
  let bundled: string | undefined;
  try {
    bundled = await bundleRunAgent();
  } catch (err) {
    notDone.push(`the plain-JS agent run: esbuild could not bundle run-agent.ts (${err instanceof Error ? err.message : String(err)})`);
  }
  if (bundled) {
    await measureAgentProcess(s, { id: 'js', label: 'as bundled plain JS (esbuild, packages external)', args: [bundled] }, 'b');
    // How much of the RSS is V8's young generation left to grow (16 MB semi-spaces by default on 64-bit).
    await measureAgentProcess(
      s,
      { id: 'js semi1', label: 'as bundled plain JS with node --max-semi-space-size=1', args: ['--max-semi-space-size=1', bundled] },
      'c',
    );
    // The live heap after a full GC is small: cap the old space so V8 collects sooner (a probe, not a tested default).
    await measureAgentProcess(
      s,
      {
        id: 'js semi1 old64',
        label: 'as bundled plain JS with --max-semi-space-size=1 --max-old-space-size=64',
        args: ['--max-semi-space-size=1', '--max-old-space-size=64', bundled],
      },
      'd',
    );
  }
}

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const t0 = performance.now();
  note(`${QUICK ? 'quick' : 'full'} run; ${os.cpus().length} cores, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  stack = await startLocalStack({ log: (line) => note(line) });
  const goals: [string, (s: LocalStack) => Promise<void>][] = [
    ['1 throughput', goalThroughput],
    ['2 wire bytes', goalWireBytes],
    ['3 agent process', goalProcess],
  ];
  try {
    for (const [name, goal] of goals) {
      try {
        await goal(stack);
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        notDone.push(`goal ${name} failed: ${msg}`);
        note(`goal ${name} failed: ${err instanceof Error ? (err.stack ?? msg) : msg}`);
      }
    }
  } finally {
    killChildren();
    await stack.stop().catch((err: unknown) => note(`stack stop: ${String(err)}`));
    stack = undefined;
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  printTable();
  process.stdout.write(`${conclusions.join('\n')}\n`);
  if (notDone.length > 0) process.stdout.write(`\nNot measured:\n${notDone.map((x) => `- ${x}`).join('\n')}\n`);
  process.stdout.write(
    `\n${os.cpus().length} cores shared with PostgreSQL x2, two Java emulators and the load driver (load average at the end ` +
      `${os.loadavg().map((x) => x.toFixed(2)).join(' ')}); ${((performance.now() - t0) / 1000).toFixed(0)} s in all.\nReproduce: ${COMMAND}\n`,
  );
  process.exitCode = notDone.length > 0 ? 1 : 0;
}

await main();
