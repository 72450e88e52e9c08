// Cloud Functions entry points (functions-framework). Each is a thin wrapper:
// configuration from LIFEBOAT_* environment variables (infra/function-env.ts),
// adapters, then the handler.
//
//   lifeboatApply   CloudEvent (Pub/Sub push): applies change batches.
//   lifeboatProbe   HTTP, called by Cloud Scheduler: one probe session of the
//                   failover controller (probe, decide, act).
//   lifeboatStatus  HTTP GET: controller, lease, target and audit trail.
//
// Local mode runs the same entry points on localhost; there the traffic
// switch is the router's state file and the app scaler a state file that the
// local supervisor follows, both in the state directory (LIFEBOAT_STATE_DIR,
// else the parent of storage.localDir: .lifeboat).
import { dirname, resolve } from 'node:path';
import * as functions from '@google-cloud/functions-framework';
import pg from 'pg';
import { createCloudDnsTrafficSwitch } from '../adapters/cloud-dns-traffic-switch.ts';
import { createCloudRunScaler } from '../adapters/cloud-run-scaler.ts';
import { controlDocumentFor, FirestoreControlStore } from '../adapters/firestore-control-store.ts';
import { connectFirestore, FirestoreLeaseStore } from '../adapters/firestore-lease-store.ts';
import { createFileTrafficSwitch, createLocalAppScaler } from '../adapters/local-traffic-router.ts';
import { createFsObjectStore } from '../adapters/object-store-fs.ts';
import { createGcsObjectStore } from '../adapters/object-store-gcs.ts';
import { createPubsubEventSink } from '../adapters/pubsub-event-sink.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { loadConfig } from '../core/config-load.ts';
import { PermanentError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import type { AppScaler, TrafficSwitch } from '../core/ports.ts';
import { LeaseClient } from '../core/writer-lease.ts';
import { readStreamState } from './apply-engine.ts';
import { createApplyHandler, type ApplyHandler, type PubsubCloudEvent } from './apply-function.ts';
import { cloudFailoverSteps, withPool } from './failover-steps.ts';
import { FailoverRunner } from './failover-runner.ts';
import { createHttpHealthProbe } from './health-probe.ts';
import { createProbeHandler } from './probe-function.ts';
import { createStatusHandler, type StatusDeps } from './status-function.ts';
import { readControlObservations } from './target-control.ts';

interface Runtime {
  readonly config: LifeboatConfig;
  readonly baseDir: string;
  readonly pool: pg.Pool;
  readonly env: NodeJS.ProcessEnv;
}

let runtime: Runtime | undefined;

/** Built on first use, so a cold start pays for it once and tests can set the environment first. */
function runtimeFromEnv(env: NodeJS.ProcessEnv = process.env): Runtime {
  if (runtime) return runtime;
  const { config, baseDir } = loadConfig({ env, allowMissingFile: true, file: env.LIFEBOAT_CONFIG ?? 'lifeboat.yaml' });
  if (!config.target.databaseUrl) {
    throw new PermanentError('target.databaseUrl is not set: the functions do not know which database to use.', {
      remedy: 'Set LIFEBOAT_TARGET_DATABASE_URL (the deployment sets it from Secret Manager).',
    });
  }
  const pool = new pg.Pool({ connectionString: config.target.databaseUrl, max: config.target.poolMax, application_name: 'lifeboat-functions' });
  runtime = { config, baseDir, pool, env };
  return runtime;
}

let applyHandler: ApplyHandler | undefined;

function applyHandlerFromEnv(): ApplyHandler {
  if (applyHandler) return applyHandler;
  const { config, baseDir, pool } = runtimeFromEnv();
  const objectStore =
    config.mode === 'cloud' && config.storage.bucket
      ? createGcsObjectStore({ bucket: config.storage.bucket, projectId: config.project })
      : createFsObjectStore(`${baseDir}/${config.storage.localDir}`);
  applyHandler = createApplyHandler({ pool, objectStore, logger: createLogger({ component: 'apply', fields: { stream: config.stream } }) });
  return applyHandler;
}

// The same directory the agent keeps its state in (agent/agent-state.ts): LIFEBOAT_STATE_DIR, else the parent of storage.localDir.
const localStateDir = (rt: Runtime) => rt.env.LIFEBOAT_STATE_DIR || dirname(resolve(rt.baseDir, rt.config.storage.localDir));

function controlPlane(rt: Runtime) {
  const { config } = rt;
  const emulatorHost = rt.env.FIRESTORE_EMULATOR_HOST;
  const firestore = connectFirestore({ projectId: config.project, ...(emulatorHost ? { emulatorHost } : {}) });
  const lease = new LeaseClient({ store: new FirestoreLeaseStore({ firestore, document: config.lease.document }), timing: config });
  const store = new FirestoreControlStore({ firestore, document: controlDocumentFor(config.lease.document, config.stream) });
  return { lease, store };
}

function required<T>(value: T | undefined, field: string, why: string): T {
  if (value === undefined) {
    throw new PermanentError(`${field} is not set: ${why}`, { remedy: `Set ${field} in lifeboat.yaml (or its LIFEBOAT_* variable) and deploy again.` });
  }
  return value;
}

function trafficAndScaler(rt: Runtime, logger: Logger): { traffic: TrafficSwitch; scaler: AppScaler } {
  const { config } = rt;
  if (config.mode !== 'cloud') {
    const dir = localStateDir(rt);
    return {
      traffic: createFileTrafficSwitch({ stateFile: resolve(dir, 'router.json') }),
      scaler: createLocalAppScaler({ stateFile: resolve(dir, 'cloud-app.json') }),
    };
  }
  const traffic = createCloudDnsTrafficSwitch({
    projectId: config.project,
    managedZone: required(config.dns.managedZone, 'dns.managedZone', 'failover cannot point the app at the cloud without it'),
    recordName: required(config.dns.recordName, 'dns.recordName', 'failover cannot point the app at the cloud without it'),
    ttlSeconds: config.dns.ttlSeconds,
    localTarget: required(config.dns.localTarget, 'dns.localTarget', 'failback cannot point the record home without it'),
    cloudTarget: required(config.dns.cloudTarget, 'dns.cloudTarget', 'failover needs the address of the cloud copy'),
    logger,
  });
  const scaler = createCloudRunScaler({ projectId: config.project, region: required(config.run.region, 'run.region', 'the Cloud Run service cannot be found'), service: config.run.service, logger });
  return { traffic, scaler };
}

let probeRunner: FailoverRunner | undefined;

function probeRunnerFromEnv(): FailoverRunner {
  if (probeRunner) return probeRunner;
  const rt = runtimeFromEnv();
  const { config, pool } = rt;
  const logger = createLogger({ component: 'probe', fields: { stream: config.stream } });
  const { lease, store } = controlPlane(rt);
  const { traffic, scaler } = trafficAndScaler(rt, logger);
  const events = createPubsubEventSink({ projectId: config.project, topic: config.pubsub.eventsTopic, ...(rt.env.PUBSUB_EMULATOR_HOST ? { emulatorHost: rt.env.PUBSUB_EMULATOR_HOST } : {}), logger });
  const withTarget = withPool(pool);
  probeRunner = new FailoverRunner({
    stream: config.stream,
    runner: config.mode === 'cloud' ? 'probe-function' : 'probe-function (local mode)',
    settings: config,
    store,
    lease,
    ...(config.probe.healthUrl !== undefined && { probe: createHttpHealthProbe({ url: config.probe.healthUrl, timeoutMs: config.probe.timeoutMs }) }),
    target: {
      observe: async () => {
        const o = await withTarget((c) => readControlObservations(c, config.stream));
        return { appliedLsn: o.appliedLsn, lastAppliedAt: o.lastAppliedAt?.getTime() ?? null };
      },
    },
    steps: cloudFailoverSteps({
      stream: config.stream,
      appRole: config.target.appRole,
      applyRole: config.target.applyRole,
      sequenceSafetyGap: config.failover.sequenceSafetyGap,
      ...(config.failover.hookUrl !== undefined && { hook: { url: config.failover.hookUrl, timeoutMs: config.failover.hookTimeoutMs } }),
      withTarget,
      traffic,
      scaler,
      events,
      logger,
    }),
    deferredHint: 'on the local side: run `lifeboat failback` there',
    logger,
  });
  return probeRunner;
}

functions.cloudEvent('lifeboatApply', async (event: functions.CloudEvent<PubsubCloudEvent['data']>) => {
  await applyHandlerFromEnv()({ id: event.id, data: event.data ?? null });
});

functions.http('lifeboatProbe', (req, res) => {
  const rt = runtimeFromEnv();
  const { probe, functions: fn } = rt.config;
  // Leave 10 s of the function's timeout for the last cycle to finish and answer.
  const budgetMs = Math.max(1_000, (fn.probeTimeoutSeconds - 10) * 1000);
  return createProbeHandler({
    runner: probeRunnerFromEnv,
    session: { recheckIntervalMs: probe.recheckIntervalSeconds * 1000, continuous: probe.continuous, budgetMs },
    logger: createLogger({ component: 'probe', fields: { stream: rt.config.stream } }),
  })(req, res);
});

let statusDeps: StatusDeps | undefined;

functions.http('lifeboatStatus', (req, res) => {
  return createStatusHandler(() => {
    if (statusDeps) return statusDeps;
    const rt = runtimeFromEnv();
    const { lease, store } = controlPlane(rt);
    const withTarget = withPool(rt.pool);
    statusDeps = { stream: rt.config.stream, mode: rt.config.mode, store, lease, streamState: () => withTarget((c) => readStreamState(c, rt.config.stream)) };
    return statusDeps;
  })(req, res);
});
