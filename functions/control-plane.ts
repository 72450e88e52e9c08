// The failover controller's wiring from one config: the lease and control
// stores (Firestore), traffic and the app's cloud copy (Cloud DNS and Cloud
// Run in cloud mode; the router's and the scaler's state files in local
// mode), the events topic, the target pool and the cloud steps. The probe
// and status functions and the operator commands (`lifeboat failover`,
// `lifeboat failback`, `lifeboat status`) all build it here, so they act on
// the same things in the same way.
import { resolve } from 'node:path';
import type { Firestore } from '@google-cloud/firestore';
import pg from 'pg';
import { resolveStateDir } from '../agent/agent-state.ts';
import { createCloudDnsTrafficSwitch } from '../adapters/cloud-dns-traffic-switch.ts';
import { createCloudRunScaler } from '../adapters/cloud-run-scaler.ts';
import { controlDocumentFor, FirestoreControlStore } from '../adapters/firestore-control-store.ts';
import { connectFirestore, FirestoreLeaseStore } from '../adapters/firestore-lease-store.ts';
import { createFileTrafficSwitch, createLocalAppScaler } from '../adapters/local-traffic-router.ts';
import { createPubsubEventSink } from '../adapters/pubsub-event-sink.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { PermanentError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { AppScaler, EventSink, TrafficSwitch } from '../core/ports.ts';
import { LeaseClient } from '../core/writer-lease.ts';
import { cloudFailoverSteps, withPool, type CloudStepDeps } from './failover-steps.ts';
import { FailoverRunner, type StepHandlers, type TargetObservation } from './failover-runner.ts';
import { createHttpHealthProbe } from './health-probe.ts';
import { readControlObservations } from './target-control.ts';

export interface ControlPlaneOptions {
  readonly config: LifeboatConfig;
  /** The directory the config's relative paths are resolved against. */
  readonly baseDir: string;
  /** FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST, LIFEBOAT_STATE_DIR. */
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly logger: Logger;
}

export interface ControlPlane {
  readonly lease: LeaseClient;
  readonly store: FirestoreControlStore;
  readonly pool: pg.Pool;
  readonly withTarget: CloudStepDeps['withTarget'];
  readonly target: { observe(): Promise<TargetObservation> };
  readonly traffic: TrafficSwitch;
  readonly scaler: AppScaler;
  readonly events: EventSink;
  /** The cloud-side steps (target, traffic, scaler, events, hook). */
  readonly cloudSteps: StepHandlers;
  close(): Promise<void>;
}

/** Where local mode keeps its state files: LIFEBOAT_STATE_DIR, else the parent of storage.localDir (as the agent does). */
export function localStateDir(config: LifeboatConfig, baseDir: string, env: Readonly<Record<string, string | undefined>>): string {
  return resolveStateDir({ config, baseDir, env });
}

function required<T>(value: T | undefined, field: string, why: string): T {
  if (value === undefined) {
    throw new PermanentError(`${field} is not set: ${why}`, { remedy: `Set ${field} in lifeboat.yaml (or its LIFEBOAT_* variable) and deploy again.` });
  }
  return value;
}

export function buildTrafficAndScaler(o: ControlPlaneOptions): { traffic: TrafficSwitch; scaler: AppScaler } {
  const { config, logger } = o;
  if (config.mode !== 'cloud') {
    const dir = localStateDir(config, o.baseDir, o.env);
    return {
      traffic: createFileTrafficSwitch({ stateFile: resolve(dir, 'router.json'), logger }),
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

export function connectControlStores(o: ControlPlaneOptions): { firestore: Firestore; lease: LeaseClient; store: FirestoreControlStore } {
  const { config } = o;
  const emulatorHost = o.env.FIRESTORE_EMULATOR_HOST;
  const firestore = connectFirestore({ projectId: config.project, ...(emulatorHost ? { emulatorHost } : {}) });
  const lease = new LeaseClient({ store: new FirestoreLeaseStore({ firestore, document: config.lease.document }), timing: config });
  const store = new FirestoreControlStore({ firestore, document: controlDocumentFor(config.lease.document, config.stream) });
  return { firestore, lease, store };
}

export function buildControlPlane(o: ControlPlaneOptions, existingPool?: pg.Pool): ControlPlane {
  const { config, logger } = o;
  if (!config.target.databaseUrl) {
    throw new PermanentError('target.databaseUrl is not set: the controller cannot read or change the standby database.', {
      remedy: 'Set LIFEBOAT_TARGET_DATABASE_URL (the deployment sets it from Secret Manager).',
    });
  }
  const { firestore, lease, store } = connectControlStores(o);
  const pool = existingPool ?? new pg.Pool({ connectionString: config.target.databaseUrl, max: config.target.poolMax, application_name: 'lifeboat-control' });
  const withTarget = withPool(pool);
  const { traffic, scaler } = buildTrafficAndScaler(o);
  const emulator = o.env.PUBSUB_EMULATOR_HOST ?? config.pubsub.emulatorHost;
  const events = createPubsubEventSink({ projectId: config.project, topic: config.pubsub.eventsTopic, ...(emulator ? { emulatorHost: emulator } : {}), logger });
  const cloudSteps = cloudFailoverSteps({
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
  });
  return {
    lease,
    store,
    pool,
    withTarget,
    target: {
      observe: async () => {
        const obs = await withTarget((c) => readControlObservations(c, config.stream));
        return { appliedLsn: obs.appliedLsn, lastAppliedAt: obs.lastAppliedAt?.getTime() ?? null };
      },
    },
    traffic,
    scaler,
    events,
    cloudSteps,
    async close() {
      await events.close?.().catch(() => undefined);
      if (!existingPool) await pool.end().catch(() => undefined);
      // terminate() can wait on abandoned calls; never let it hold a command open.
      await Promise.race([firestore.terminate(), new Promise((r) => setTimeout(r, 2_000))]);
    },
  };
}

/**
 * The failover runner of the cloud side: probes the app, reads the target,
 * executes the cloud steps and defers failback's local steps. The probe
 * function and `lifeboat failover` both run it.
 */
export function createCloudRunner(plane: ControlPlane, config: LifeboatConfig, runner: string, logger: Logger): FailoverRunner {
  return new FailoverRunner({
    stream: config.stream,
    runner,
    settings: config,
    store: plane.store,
    lease: plane.lease,
    ...(config.probe.healthUrl !== undefined && { probe: createHttpHealthProbe({ url: config.probe.healthUrl, timeoutMs: config.probe.timeoutMs }) }),
    target: plane.target,
    steps: plane.cloudSteps,
    deferredHint: 'on the local side: run `lifeboat failback` there',
    logger,
  });
}
