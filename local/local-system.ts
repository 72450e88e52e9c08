// The whole system on one machine (`lifeboat local`, and the end-to-end
// failover tests):
//
//   local PostgreSQL ─ agent ─► Pub/Sub emulator ─push─► apply function ─► cloud PostgreSQL
//        ▲                           Firestore emulator (lease, control record)
//        │                                  ▲
//   demo app (local copy)     scheduler loop ─► probe function ─► router state, cloud app scaler
//   demo app (cloud copy) ◄─ started while the scaler asks for an instance
//   traffic router (stands in for DNS) ─► whichever side the state file names
//
// The agent and the three functions run as child processes under a
// supervisor (a `kill -9` is answered by a restart, with a log line); the
// clusters and emulators run under local-stack's exit hooks; the demo apps
// and the router run in this process. Everything is started on free ports
// except the router (dns.routerPort). stop() leaves no process behind.
import { mkdirSync, readFileSync, writeFileSync, existsSync, renameSync, watch, type FSWatcher } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PubSub } from '@google-cloud/pubsub';
import pg from 'pg';
import { stringify } from 'yaml';
import { readRouterState, startTrafficRouter, writeRouterState } from '../adapters/local-traffic-router.ts';
import { controlDocumentFor, FirestoreControlStore } from '../adapters/firestore-control-store.ts';
import { connectFirestore, FirestoreLeaseStore } from '../adapters/firestore-lease-store.ts';
import { initialControlRecord } from '../core/control-record.ts';
import { createLease } from '../core/writer-lease.ts';
import { readStreamState, setFencingEpoch } from '../functions/apply-engine.ts';
import { createLogger } from '../core/log.ts';
import { parseConfig, type LifeboatConfig } from '../core/config.ts';
import { ensureTargetSchema } from '../functions/target-schema.ts';
import { prepareTargetRoles } from '../functions/target-control.ts';
import { DEMO_TABLE_SQL, startDemoApp, type DemoApp } from './demo-app.ts';
import {
  freePort,
  startChildProcess,
  startFirestoreEmulator,
  startPostgresCluster,
  startPubsubEmulator,
  type Emulator,
} from './local-stack.ts';
import { Supervised } from './supervisor.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const FUNCTIONS_FRAMEWORK = join(ROOT, 'node_modules', '@google-cloud', 'functions-framework', 'build', 'src', 'main.js');
const LIFEBOAT_BIN = join(ROOT, 'bin', 'lifeboat.js');

export const LOCAL_APP_ROLE = 'app';

/** What other commands and scripts read from `.lifeboat/local.json`. */
export interface LocalInfo {
  readonly localDatabaseUrl: string;
  readonly cloudDatabaseUrl: string;
  readonly pubsubEmulatorHost: string;
  readonly firestoreEmulatorHost: string;
  readonly project: string;
  readonly stream: string;
  readonly changesTopic: string;
  readonly appUrl: string;
  readonly routerUrl: string;
  readonly localAppUrl: string;
  readonly statusUrl: string;
  readonly probeUrl: string;
  readonly applyUrl: string;
  readonly agentStatusUrl: string;
  readonly configFile: string;
  readonly stateDir: string;
  readonly pid: number;
  readonly startedAt: string;
}

export interface LocalSystemOptions {
  /** The state directory (clusters, logs, objects, local.json): `.lifeboat`. */
  readonly dir: string;
  /** Merged over the local defaults before validation (tests shorten timings here). */
  readonly config?: Record<string, unknown>;
  /** Progress lines. */
  readonly log?: (line: string) => void;
  /** Keep PostgreSQL data crash-safe (fsync). Default true; tests pass false. */
  readonly durable?: boolean;
  /**
   * Use running servers instead of starting them (each one optional): admin
   * URLs of the two clusters (a superuser) and the emulators' host:port. The
   * replicated database `database` (default 'app') is created on each if missing.
   */
  /** Extra environment for the agent process only (tests route its Firestore through a proxy). */
  readonly agentEnv?: Readonly<Record<string, string>>;
  readonly existing?: {
    readonly localAdminUrl?: string;
    readonly cloudAdminUrl?: string;
    readonly pubsubEmulatorHost?: string;
    readonly firestoreEmulatorHost?: string;
    readonly database?: string;
  };
}

export interface LocalSystem {
  readonly info: LocalInfo;
  readonly config: LifeboatConfig;
  readonly agent: Supervised;
  readonly functions: { readonly apply: Supervised; readonly probe: Supervised; readonly status: Supervised };
  /** The local copy of the demo app (stop it to simulate an outage of the app). */
  readonly localApp: { stop(): Promise<void>; start(): Promise<void>; readonly running: boolean };
  /** Runs one probe session now (what the scheduler loop does); resolves with the function's answer. */
  probeNow(): Promise<unknown>;
  /** Pauses or resumes the scheduler loop. */
  setScheduler(on: boolean): void;
  stop(): Promise<void>;
}

function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b) ? deepMerge(b as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

async function prepareDatabase(adminUrl: string, side: 'local' | 'cloud', database: string): Promise<string> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`);
    const role = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [LOCAL_APP_ROLE]);
    // Trust authentication on 127.0.0.1: the demo role needs no password.
    if (role.rowCount === 0) await admin.query(`CREATE ROLE "${LOCAL_APP_ROLE}" LOGIN`);
  } finally {
    await admin.end();
  }
  const url = withDatabase(adminUrl, database);
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    // The app's schema exists on both sides, as a user's migrations would make it: a table that the
    // target creates from a replication descriptor has no defaults or sequences of its own.
    await c.query(DEMO_TABLE_SQL);
    if (side === 'local') {
      await c.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "${LOCAL_APP_ROLE}"`);
      await c.query(`GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "${LOCAL_APP_ROLE}"`);
    }
  } finally {
    await c.end();
  }
  return url;
}

function appRoleUrl(url: string): string {
  const u = new URL(url);
  u.username = LOCAL_APP_ROLE;
  return u.toString();
}

function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n');
  renameSync(tmp, file);
}

export async function startLocalSystem(opts: LocalSystemOptions): Promise<LocalSystem> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const dir = resolve(opts.dir);
  const logs = join(dir, 'logs');
  mkdirSync(logs, { recursive: true });
  const stops: (() => Promise<unknown>)[] = [];
  const stopAll = async () => {
    for (const s of stops.splice(0).reverse()) await s().catch((err: unknown) => log(`stop: ${err instanceof Error ? err.message : String(err)}`));
  };
  try {
    const t0 = performance.now();
    const step = (what: string) => log(`lifeboat local: ${what} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    const durable = opts.durable ?? true;
    const quiet = () => {};
    const database = opts.existing?.database ?? 'app';
    const ex = opts.existing ?? {};
    const startCluster = async (name: 'local' | 'cloud'): Promise<string> => {
      const c = await startPostgresCluster({ name, dir: join(dir, 'pg', name), logFile: join(logs, `postgres-${name}.log`), durable, log: quiet });
      stops.push(() => c.stop());
      step(`PostgreSQL ${name} on :${c.port} (${join(dir, 'pg', name)})`);
      return c.url;
    };
    const [localAdmin, cloudAdmin] = await Promise.all([ex.localAdminUrl ?? startCluster('local'), ex.cloudAdminUrl ?? startCluster('cloud')]);
    const adminUrls = { local: localAdmin, cloud: cloudAdmin };
    const emulatorDir = join(dir, 'emulators');
    mkdirSync(emulatorDir, { recursive: true });
    const startEmu = async (which: 'pubsub' | 'firestore'): Promise<string> => {
      const e: Emulator =
        which === 'pubsub'
          ? await startPubsubEmulator({ dir: emulatorDir, logFile: join(logs, 'pubsub-emulator.log'), log: quiet })
          : await startFirestoreEmulator({ dir: emulatorDir, logFile: join(logs, 'firestore-emulator.log'), log: quiet });
      stops.push(() => e.stop());
      step(`${which === 'pubsub' ? 'Pub/Sub' : 'Firestore'} emulator on ${e.host}`);
      return e.host;
    };
    const [pubsubHost, firestoreHost] = await Promise.all([ex.pubsubEmulatorHost ?? startEmu('pubsub'), ex.firestoreEmulatorHost ?? startEmu('firestore')]);
    const hosts = { pubsub: pubsubHost, firestore: firestoreHost };

    const [localUrl, cloudUrl] = await Promise.all([prepareDatabase(adminUrls.local, 'local', database), prepareDatabase(adminUrls.cloud, 'cloud', database)]);
    const [applyPort, probePort, statusPort, agentPort, localAppPort, cloudAppPort] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    const localAppUrl = `http://127.0.0.1:${localAppPort}`;

    const configObject = deepMerge(
      {
        mode: 'local',
        stream: 'main',
        source: { databaseUrl: localUrl, appRole: LOCAL_APP_ROLE },
        target: { databaseUrl: cloudUrl, database, appRole: LOCAL_APP_ROLE, applyRole: 'postgres' },
        pubsub: { emulatorHost: hosts.pubsub },
        storage: { localDir: 'objects' },
        agent: { httpPort: agentPort },
        probe: { healthUrl: `${localAppUrl}/healthz` },
      },
      opts.config ?? {},
    );
    const config = parseConfig(configObject);
    const configFile = join(dir, 'lifeboat.local.yaml');
    writeFileSync(configFile, `# Written by \`lifeboat local\` at each start; edit lifeboat.yaml instead.\n${stringify(configObject)}`);

    // Pub/Sub: topics and the ordered push subscription to the apply function.
    const pubsub = new PubSub({ projectId: config.project, apiEndpoint: hosts.pubsub, emulatorMode: true });
    stops.push(() => pubsub.close());
    for (const t of [config.pubsub.changesTopic, config.pubsub.eventsTopic, config.pubsub.deadLetterTopic]) {
      const [exists] = await pubsub.topic(t).exists();
      if (!exists) await pubsub.createTopic(t);
    }
    const applyUrl = `http://127.0.0.1:${applyPort}`;
    const sub = pubsub.subscription(config.pubsub.applySubscription);
    if ((await sub.exists())[0]) await sub.delete();
    await pubsub.topic(config.pubsub.changesTopic).createSubscription(config.pubsub.applySubscription, {
      enableMessageOrdering: true,
      pushConfig: { pushEndpoint: `${applyUrl}/projects/${config.project}/topics/${config.pubsub.changesTopic}` },
      ackDeadlineSeconds: 60,
      retryPolicy: { minimumBackoff: { seconds: 1 }, maximumBackoff: { seconds: 5 } },
    });

    // Traffic: the router follows router.json; a fresh system serves local.
    const routerState = join(dir, 'router.json');
    if (!existsSync(routerState)) await writeRouterState(routerState, { side: 'local', changedAt: new Date().toISOString(), reason: 'lifeboat local started' });
    const serving = (await readRouterState(routerState).catch(() => undefined)) ?? { missing: true };
    const side = 'state' in serving ? serving.state.side : 'local';

    // The target: lifeboat schema; the app role read-only there unless the cloud serves.
    const target = new pg.Client({ connectionString: cloudUrl });
    await target.connect();
    try {
      await ensureTargetSchema(target);
      if (side === 'local') await prepareTargetRoles(target, { stream: config.stream, appRole: LOCAL_APP_ROLE, applyRole: 'postgres', actor: 'lifeboat local' });
      await restoreLease({ config, firestoreHost: hosts.firestore, target, side, log: step });
    } finally {
      await target.end();
    }

    const cloudAppUrl = `http://127.0.0.1:${cloudAppPort}`;
    const router = await startTrafficRouter({
      host: '127.0.0.1',
      port: config.dns.routerPort,
      targets: { local: localAppUrl, cloud: cloudAppUrl },
      stateFile: routerState,
      logger: createLogger({ component: 'router' }),
    });
    stops.push(() => router.close());

    // Child processes: the three functions and the agent.
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      LIFEBOAT_CONFIG: configFile,
      LIFEBOAT_STATE_DIR: dir,
      PUBSUB_EMULATOR_HOST: hosts.pubsub,
      FIRESTORE_EMULATOR_HOST: hosts.firestore,
    };
    const fn = (name: string, target: string, port: number, signature: 'http' | 'cloudevent') =>
      new Supervised({
        name,
        log,
        start: () =>
          startChildProcess({
            name,
            command: process.execPath,
            args: ['--import', 'tsx', FUNCTIONS_FRAMEWORK, `--target=${target}`, `--signature-type=${signature}`, `--source=${join(ROOT, 'functions', 'index.ts')}`, `--port=${port}`],
            cwd: ROOT,
            logFile: join(logs, `${name}.log`),
            env: { ...env, PORT: String(port) },
          }),
      });
    const functions = {
      apply: fn('apply function', 'lifeboatApply', applyPort, 'cloudevent'),
      probe: fn('probe function', 'lifeboatProbe', probePort, 'http'),
      status: fn('status function', 'lifeboatStatus', statusPort, 'http'),
    };
    for (const f of Object.values(functions)) {
      await f.start();
      stops.push(() => f.stop());
    }
    const probeUrl = `http://127.0.0.1:${probePort}`;
    const statusUrl = `http://127.0.0.1:${statusPort}`;
    await waitForHttp(`${statusUrl}/`, 60_000, 'the status function');
    step(`functions: apply ${applyUrl}, probe ${probeUrl}, status ${statusUrl}`);

    // The demo app: the local copy always, the cloud copy while the scaler asks for it.
    let localApp: DemoApp | undefined = await startDemoApp({ name: 'local', databaseUrl: appRoleUrl(localUrl), port: localAppPort });
    stops.push(() => localApp?.stop() ?? Promise.resolve());
    const cloudApp = followScaler(join(dir, 'cloud-app.json'), () => startDemoApp({ name: 'cloud', databaseUrl: appRoleUrl(cloudUrl), port: cloudAppPort }), log);
    stops.push(() => cloudApp.close());

    const agent = new Supervised({
      name: 'agent',
      log,
      start: () =>
        startChildProcess({
          name: 'agent',
          command: process.execPath,
          args: [LIFEBOAT_BIN, 'agent', '--config', configFile],
          cwd: ROOT,
          logFile: join(logs, 'agent.log'),
          env: { ...env, ...opts.agentEnv },
        }),
    });
    await agent.start();
    stops.push(() => agent.stop());
    const agentStatusUrl = `http://127.0.0.1:${agentPort}/status`;
    step(`agent started (status ${agentStatusUrl})`);

    // The scheduler loop: Cloud Scheduler's job, every probe.localIntervalSeconds.
    let schedulerOn = true;
    let schedulerStopped = false;
    let wake: (() => void) | undefined;
    const probeNow = async () => {
      const res = await fetch(probeUrl, { method: 'POST', signal: AbortSignal.timeout(config.functions.probeTimeoutSeconds * 1000) });
      const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
      return body;
    };
    const loop = (async () => {
      while (!schedulerStopped) {
        if (schedulerOn) await probeNow().catch((err: unknown) => log(`scheduler: the probe call failed: ${err instanceof Error ? err.message : String(err)}`));
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, config.probe.localIntervalSeconds * 1000);
        });
      }
    })();
    stops.push(async () => {
      schedulerStopped = true;
      wake?.();
      await loop;
    });

    const info: LocalInfo = {
      localDatabaseUrl: localUrl,
      cloudDatabaseUrl: cloudUrl,
      pubsubEmulatorHost: hosts.pubsub,
      firestoreEmulatorHost: hosts.firestore,
      project: config.project,
      stream: config.stream,
      changesTopic: config.pubsub.changesTopic,
      appUrl: router.url,
      routerUrl: router.url,
      localAppUrl,
      statusUrl,
      probeUrl,
      applyUrl,
      agentStatusUrl,
      configFile,
      stateDir: dir,
      pid: process.pid,
      startedAt: new Date().toISOString(),
    };
    writeJsonAtomic(join(dir, 'local.json'), info);
    step(`ready: app ${router.url}`);

    return {
      info,
      config,
      agent,
      functions,
      localApp: {
        get running() {
          return localApp !== undefined;
        },
        stop: async () => {
          await localApp?.stop();
          localApp = undefined;
        },
        start: async () => {
          localApp ??= await startDemoApp({ name: 'local', databaseUrl: appRoleUrl(localUrl), port: localAppPort });
        },
      },
      probeNow,
      setScheduler: (on) => {
        schedulerOn = on;
      },
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

async function waitForHttp(url: string, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      if (res.status < 500) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what} did not answer at ${url} within ${timeoutMs / 1000} s (${last}); see its log under .lifeboat/logs`);
}

/** Starts the cloud copy while the scaler file asks for at least one instance, stops it at zero. */
function followScaler(stateFile: string, start: () => Promise<DemoApp>, log: (line: string) => void): { close(): Promise<void> } {
  let app: DemoApp | undefined;
  let busy = Promise.resolve();
  let closed = false;
  const desired = (): number => {
    try {
      const v = JSON.parse(readFileSync(stateFile, 'utf8')) as { minInstances?: unknown };
      return typeof v.minInstances === 'number' ? v.minInstances : 0;
    } catch {
      return 0;
    }
  };
  const reconcile = () => {
    busy = busy.then(async () => {
      if (closed) return;
      const want = desired();
      if (want > 0 && !app) {
        app = await start();
        log(`cloud app copy started on ${app.url} (min instances ${want})`);
      } else if (want === 0 && app) {
        await app.stop();
        app = undefined;
        log('cloud app copy stopped (min instances 0)');
      }
    }).catch((err: unknown) => log(`cloud app copy: ${err instanceof Error ? err.message : String(err)}`));
  };
  mkdirSync(dirname(stateFile), { recursive: true });
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(stateFile), (_e, name) => {
      if (name === null || String(name).startsWith('cloud-app.json')) reconcile();
    });
  } catch {
    watcher = undefined;
  }
  // fs.watch can miss events on some file systems; a slow poll backs it up.
  const timer = setInterval(reconcile, 1_000);
  reconcile();
  return {
    close: async () => {
      closed = true;
      clearInterval(timer);
      watcher?.close();
      await busy;
      await app?.stop();
    },
  };
}

/**
 * The Firestore emulator keeps nothing across restarts, but the databases do:
 * a second `npm start` finds no lease while the target remembers epoch E. A
 * lease at epoch 1 would make every new batch stale there, so the lease is
 * restored at E + 1 for the side the router serves (and, when that is the
 * cloud, the controller's record says failed over and the target's fencing
 * epoch follows), as a failover to the same side would.
 */
async function restoreLease(o: { config: LifeboatConfig; firestoreHost: string; target: pg.Client; side: 'local' | 'cloud'; log: (line: string) => void }): Promise<void> {
  const { config } = o;
  const firestore = connectFirestore({ projectId: config.project, emulatorHost: o.firestoreHost });
  try {
    const leases = new FirestoreLeaseStore({ firestore, document: config.lease.document });
    if ((await leases.read()) !== undefined) return;
    const state = await readStreamState(o.target, config.stream);
    const seen = Math.max(state?.epoch ?? 0, state?.writerEpoch ?? 0);
    if (seen === 0) return; // a fresh system: the agent creates the lease at epoch 1
    const now = Date.now();
    const epoch = seen + 1;
    const reason = `lifeboat local restored the lease at epoch ${epoch} for ${o.side} after the Firestore emulator restarted (the target had seen epoch ${seen})`;
    const lease = { ...createLease(o.side, now, config, reason), epoch };
    if (o.side === 'cloud') {
      await setFencingEpoch(o.target, config.stream, epoch, 'lifeboat local');
      const control = new FirestoreControlStore({ firestore, document: controlDocumentFor(config.lease.document, config.stream) });
      await control.compareAndSet(null, initialControlRecord(now, { phase: 'failed-over', knownEpoch: epoch, epoch, since: now, failbackRequested: false, failbackBlocked: null }));
    }
    const r = await leases.compareAndSet(null, lease);
    o.log(r.ok ? reason : `the lease appeared while restoring it; kept the one found`);
  } finally {
    await Promise.race([firestore.terminate(), new Promise((r) => setTimeout(r, 2_000))]);
  }
}
