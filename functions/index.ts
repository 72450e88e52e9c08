// Cloud Functions entry points (functions-framework). Each is a thin wrapper:
// configuration from LIFEBOAT_* environment variables (infra/function-env.ts),
// adapters, then the handler. The probe and status functions arrive with
// issue #5.
import * as functions from '@google-cloud/functions-framework';
import pg from 'pg';
import { createFsObjectStore } from '../adapters/object-store-fs.ts';
import { createGcsObjectStore } from '../adapters/object-store-gcs.ts';
import { loadConfig } from '../core/config-load.ts';
import { PermanentError } from '../core/errors.ts';
import { createLogger } from '../core/log.ts';
import { createApplyHandler, type ApplyHandler, type PubsubCloudEvent } from './apply-function.ts';

let applyHandler: ApplyHandler | undefined;

/** Built on first use, so a cold start pays for it once and tests can set the environment first. */
function applyHandlerFromEnv(env: NodeJS.ProcessEnv = process.env): ApplyHandler {
  if (applyHandler) return applyHandler;
  const { config, baseDir } = loadConfig({ env, allowMissingFile: true, file: env.LIFEBOAT_CONFIG ?? 'lifeboat.yaml' });
  if (!config.target.databaseUrl) {
    throw new PermanentError('target.databaseUrl is not set: the apply function does not know which database to write.', {
      remedy: 'Set LIFEBOAT_TARGET_DATABASE_URL (the deployment sets it from Secret Manager).',
    });
  }
  const pool = new pg.Pool({ connectionString: config.target.databaseUrl, max: config.target.poolMax, application_name: 'lifeboat-apply' });
  const objectStore =
    config.mode === 'cloud' && config.storage.bucket
      ? createGcsObjectStore({ bucket: config.storage.bucket, projectId: config.project })
      : createFsObjectStore(`${baseDir}/${config.storage.localDir}`);
  applyHandler = createApplyHandler({ pool, objectStore, logger: createLogger({ component: 'apply', fields: { stream: config.stream } }) });
  return applyHandler;
}

functions.cloudEvent('lifeboatApply', async (event: functions.CloudEvent<PubsubCloudEvent['data']>) => {
  await applyHandlerFromEnv()({ id: event.id, data: event.data ?? null });
});
