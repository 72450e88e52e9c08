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
import * as functions from '@google-cloud/functions-framework';
import pg from 'pg';
import { createFsObjectStore } from '../adapters/object-store-fs.ts';
import { createGcsObjectStore } from '../adapters/object-store-gcs.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { loadConfig } from '../core/config-load.ts';
import { PermanentError } from '../core/errors.ts';
import { createLogger } from '../core/log.ts';
import { readStreamState } from './apply-engine.ts';
import { createApplyHandler, type ApplyHandler, type PubsubCloudEvent } from './apply-function.ts';
import { buildControlPlane, connectControlStores, createCloudRunner } from './control-plane.ts';
import { withPool } from './failover-steps.ts';
import type { FailoverRunner } from './failover-runner.ts';
import { createProbeHandler } from './probe-function.ts';
import { createStatusHandler, type StatusDeps } from './status-function.ts';

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
let probeRunner: FailoverRunner | undefined;

function probeRunnerFromEnv(): FailoverRunner {
  if (probeRunner) return probeRunner;
  const rt = runtimeFromEnv();
  const { config } = rt;
  const logger = createLogger({ component: 'probe', fields: { stream: config.stream } });
  const plane = buildControlPlane({ config, baseDir: rt.baseDir, env: rt.env, logger }, rt.pool);
  probeRunner = createCloudRunner(plane, config, config.mode === 'cloud' ? 'probe-function' : 'probe-function (local mode)', logger);
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
    const { lease, store } = connectControlStores({ config: rt.config, baseDir: rt.baseDir, env: rt.env, logger: createLogger({ component: 'status' }) });
    const withTarget = withPool(rt.pool);
    statusDeps = { stream: rt.config.stream, mode: rt.config.mode, store, lease, streamState: () => withTarget((c) => readStreamState(c, rt.config.stream)) };
    return statusDeps;
  })(req, res);
});
