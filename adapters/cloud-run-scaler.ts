// AppScaler over the Cloud Run Admin API v2 (@google-cloud/run 4.2,
// ServicesClient): the minimum instance count of the app's cloud copy.
//
// Which field: the SERVICE-level `scaling.min_instance_count`
// (google.cloud.run.v2.ServiceScaling in the installed service.proto and
// vendor_settings.proto), not the revision template's
// `template.scaling.min_instance_count`. Changing the template deploys a new
// revision: slow, and it would roll out whatever else changed in the template
// since the last deploy. The service-level setting takes effect without a new
// revision (Cloud Run docs, "Set minimum instances"), and it is what the cdktf
// stack leaves to failover (`ignore_changes = [scaling]`, with the template's
// own minimum at 0: Google advises against combining both levels).
//
// setMinInstances reads the service and changes nothing when the value is
// already right. Otherwise it sends UpdateService with the field mask
// `scaling.minInstanceCount` (supported by UpdateService since 2024): only
// that field changes, whatever else the request carries (the client adds empty
// label and annotation maps, which without a mask would clear the service's).
// It then polls the long-running operation for at most operationTimeoutMs and
// says 'pending' in its detail otherwise (Cloud Run finishes it on its own).
//
// Transport: always the REST fallback (`fallback: true`): no gRPC channel to
// set up in a cold Cloud Function, and the tests exercise the same transport
// as production, against a local HTTP server (apiEndpoint as a URL gives the
// host, port and protocol google-gax's fallback stub takes).
//
// Errors: UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, INTERNAL and the other
// transient codes, and network failures, are RetryableError; PERMISSION_DENIED,
// NOT_FOUND, UNAUTHENTICATED and INVALID_ARGUMENT are PermanentError naming
// the service and what to grant or fix.

import { ServicesClient } from '@google-cloud/run';
import { z } from 'zod';
import { sleep } from '../core/backoff.ts';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { AppScaler } from '../core/ports.ts';
import { GrpcStatus, GRPC_STATUS_NAMES, RETRYABLE_GRPC_CODES } from './grpc-status.ts';

type ServicesClientOptions = NonNullable<ConstructorParameters<typeof ServicesClient>[0]>;

/**
 * The field mask path in its JSON form (lowerCamelCase, as the REST reference
 * writes masks): the REST transport sends paths verbatim, and gRPC is never used here.
 */
export const MIN_INSTANCES_MASK_PATH = 'scaling.minInstanceCount';

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

const optionsSchema = z.object({
  projectId: z.string().regex(/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/, { error: 'must be a Google Cloud project id' }),
  region: z.string().regex(/^[a-z]+-[a-z]+\d+$/, { error: "must be a region such as 'europe-west1'" }),
  service: z.string().regex(/^[a-z](?:[a-z0-9-]{0,47}[a-z0-9])?$/, { error: 'must be a Cloud Run service name: lower-case letters, digits and -, at most 49 characters' }),
  operationTimeoutMs: z.number().int().min(0).max(600_000),
  pollIntervalMs: z.number().int().min(1).max(60_000),
  requestTimeoutMs: z.number().int().min(100).max(600_000),
});

// What the adapter reads from a Service (the client decodes it with enums as names and defaults filled in).
const serviceSchema = z.looseObject({
  name: z.string().optional(),
  scaling: z
    .looseObject({
      minInstanceCount: z.number().int().nullish(),
      scalingMode: z.union([z.string(), z.number()]).nullish(),
    })
    .nullish(),
});

export interface CloudRunScalerOptions {
  projectId: string;
  region: string;
  /** The Cloud Run service of the app's cloud copy (run.service). */
  service: string;
  /**
   * Default 'run.googleapis.com'. A host name picks another endpoint
   * ('europe-west1-run.googleapis.com'); a URL (http://127.0.0.1:PORT) points
   * the client at that server: tests.
   */
  apiEndpoint?: string;
  /** Default: Application Default Credentials. Tests give an OAuth2Client with a preset token. */
  authClient?: ServicesClientOptions['authClient'];
  logger: Logger;
  /** How long setMinInstances waits for the update operation. Default 60 s. */
  operationTimeoutMs?: number;
  /** First delay between polls of the operation; it doubles up to 5 s. Default 1 s. */
  pollIntervalMs?: number;
  /** Deadline of one API call, the client's own retries included. Default 15 s. */
  requestTimeoutMs?: number;
}

export interface CloudRunScaler extends AppScaler {
  /** projects/P/locations/R/services/S */
  readonly serviceName: string;
  close(): Promise<void>;
}

type RunAction = 'read' | 'update' | 'operation';

/** Maps a Cloud Run Admin API error to RetryableError or PermanentError with what to do. */
export function classifyRunError(err: unknown, action: RunAction, ctx: { projectId: string; region: string; service: string }): RetryableError | PermanentError {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  // A failed operation carries a plain google.rpc.Status, not an Error.
  const text = (err as { message?: unknown } | null)?.message;
  const reason = typeof text === 'string' ? text : String(err);
  const codeName = typeof code === 'number' ? (GRPC_STATUS_NAMES.get(code) ?? String(code)) : typeof code === 'string' ? code : undefined;
  const what = action === 'read' ? 'read' : action === 'update' ? 'update the minimum instances of' : 'finish updating the minimum instances of';
  const where = `Cloud Run service ${ctx.service} (region ${ctx.region}, project ${ctx.projectId})`;
  const message = `Cloud Run: cannot ${what} ${where}${codeName ? ` (${codeName})` : ''}: ${reason}`;
  const details = { code: codeName, action, ...ctx };
  if (typeof code === 'number') {
    if (RETRYABLE_GRPC_CODES.has(code)) return new RetryableError(message, { cause: err, details });
    const permission = action === 'read' ? 'run.services.get' : 'run.services.update and run.services.get';
    const remedy =
      code === GrpcStatus.PERMISSION_DENIED
        ? `The failover service account needs ${permission} on ${where} (roles/run.developer on the service) and, to update it, iam.serviceAccounts.actAs on the app's runtime service account (roles/iam.serviceAccountUser), as the cdktf stack grants.`
        : code === GrpcStatus.NOT_FOUND
          ? `${where} does not exist: deploy it (the cdktf stack does) or fix run.service, run.region and project in lifeboat.yaml.`
          : code === GrpcStatus.UNAUTHENTICATED
            ? 'The credentials were rejected: check Application Default Credentials (the service account attached to the probe function, or GOOGLE_APPLICATION_CREDENTIALS).'
            : code === GrpcStatus.INVALID_ARGUMENT
              ? 'Cloud Run refused the update as invalid; check that the service allows service-level scaling (scaling.minInstanceCount) and report this as a bug.'
              : undefined;
    return new PermanentError(message, { cause: err, details, remedy });
  }
  if (typeof code === 'string' && NETWORK_CODES.has(code)) return new RetryableError(message, { cause: err, details });
  return new PermanentError(message, { cause: err, details });
}

function parseOptions(opts: CloudRunScalerOptions) {
  const parsed = optionsSchema.safeParse({
    projectId: opts.projectId,
    region: opts.region,
    service: opts.service,
    operationTimeoutMs: opts.operationTimeoutMs ?? 60_000,
    pollIntervalMs: opts.pollIntervalMs ?? 1_000,
    requestTimeoutMs: opts.requestTimeoutMs ?? 15_000,
  });
  if (!parsed.success) {
    throw new ValidationError(`Cloud Run scaler: invalid options: ${z.prettifyError(parsed.error)}`, {
      remedy: 'Fix the run section (service, region) and project of lifeboat.yaml (see docs/configuration.md).',
    });
  }
  return parsed.data;
}

/** The client options that reach apiEndpoint: a host, or a URL's host, port and protocol. */
function endpointOptions(apiEndpoint: string | undefined): Pick<ServicesClientOptions, 'apiEndpoint' | 'port' | 'protocol'> {
  if (apiEndpoint === undefined || apiEndpoint === '') return {};
  if (!/^https?:\/\//.test(apiEndpoint)) return { apiEndpoint };
  const url = new URL(apiEndpoint);
  const protocol = url.protocol === 'http:' ? 'http' : 'https';
  return { apiEndpoint: url.hostname, port: url.port === '' ? (protocol === 'http' ? 80 : 443) : Number(url.port), protocol };
}

export function createCloudRunScaler(opts: CloudRunScalerOptions): CloudRunScaler {
  const o = parseOptions(opts);
  const ctx = { projectId: o.projectId, region: o.region, service: o.service };
  const serviceName = `projects/${o.projectId}/locations/${o.region}/services/${o.service}`;
  const log = opts.logger.child({ runService: serviceName });
  const clientOptions: ServicesClientOptions = { fallback: true, projectId: o.projectId, ...endpointOptions(opts.apiEndpoint) };
  if (opts.authClient !== undefined) clientOptions.authClient = opts.authClient;
  let client = new ServicesClient(clientOptions);
  let ready: Promise<unknown> | undefined;
  const callOptions = { timeout: o.requestTimeoutMs };

  /**
   * Sets the client up (credentials, transport) before its first call. The
   * client's methods start this themselves but rethrow its failure from a
   * promise nobody awaits, which ends the process (seen without credentials);
   * awaited here first, a failure is an ordinary error, and the next call
   * starts over with a new client (the failed one stays failed).
   */
  async function ensureClient(): Promise<void> {
    const attempt = (ready ??= client.initialize());
    try {
      await attempt;
    } catch (err) {
      if (ready === attempt) {
        ready = undefined;
        const failed = client;
        client = new ServicesClient(clientOptions);
        await failed.close().catch(() => undefined);
      }
      throw new PermanentError(`Cloud Run: cannot set up the Cloud Run Admin API client for ${serviceName}: ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
        details: ctx,
        remedy: 'Check Application Default Credentials (the service account attached to the probe function, or GOOGLE_APPLICATION_CREDENTIALS).',
      });
    }
  }

  async function readScaling(): Promise<{ minInstances: number; manual: boolean }> {
    await ensureClient();
    let raw: unknown;
    try {
      [raw] = await client.getService({ name: serviceName }, callOptions);
    } catch (err) {
      throw classifyRunError(err, 'read', ctx);
    }
    const parsed = serviceSchema.safeParse(raw);
    if (!parsed.success) {
      throw new PermanentError(`Cloud Run: ${serviceName} came back in an unexpected shape: ${z.prettifyError(parsed.error)}`, { details: ctx });
    }
    const mode = parsed.data.scaling?.scalingMode;
    return { minInstances: parsed.data.scaling?.minInstanceCount ?? 0, manual: mode === 'MANUAL' || mode === 2 };
  }

  /** UpdateService with the field mask: only the service-level minimum changes. */
  async function submitUpdate(count: 0 | 1) {
    await ensureClient();
    try {
      const [operation] = await client.updateService(
        { service: { name: serviceName, scaling: { minInstanceCount: count } }, updateMask: { paths: [MIN_INSTANCES_MASK_PATH] } },
        callOptions,
      );
      return operation;
    } catch (err) {
      throw classifyRunError(err, 'update', ctx);
    }
  }

  async function setMinInstances(count: 0 | 1): Promise<{ changed: boolean; detail: string }> {
    if (count !== 0 && count !== 1) throw new ValidationError(`setMinInstances: count must be 0 or 1, got ${JSON.stringify(count)}`);
    const before = await readScaling();
    if (before.manual) {
      throw new PermanentError(`Cloud Run: ${serviceName} uses manual scaling, where minimum instances have no effect`, {
        details: ctx,
        remedy: 'Switch the service back to automatic scaling (the cdktf stack deploys it so); Lifeboat scales the cloud copy with scaling.minInstanceCount.',
      });
    }
    if (before.minInstances === count) {
      return { changed: false, detail: `Cloud Run service ${o.service} already has min instances ${count}` };
    }
    let operation = await submitUpdate(count);
    const operationName = operation.name ?? '';
    if (!operation.done && operationName === '') {
      throw new PermanentError(`Cloud Run accepted the update of ${serviceName} but returned no operation name to follow`, {
        details: ctx,
        remedy: 'Check the service in the Cloud Run console; setting the minimum instances again is safe.',
      });
    }
    const summary = `Cloud Run service ${o.service}: min instances ${before.minInstances} → ${count}`;
    const deadline = Date.now() + o.operationTimeoutMs;
    let delay = o.pollIntervalMs;
    while (!operation.done) {
      const left = deadline - Date.now();
      if (left <= 0) {
        log.warn('Cloud Run update submitted but not finished in time', { operation: operationName, minInstances: count });
        return { changed: true, detail: `${summary}; operation ${operationName} still running after ${(o.operationTimeoutMs / 1000).toFixed(1)} s (Cloud Run completes it on its own)` };
      }
      await sleep(Math.min(delay, left));
      delay = Math.min(delay * 2, Math.max(5_000, o.pollIntervalMs));
      try {
        operation = await client.checkUpdateServiceProgress(operationName);
      } catch (err) {
        const classified = classifyRunError(err, 'operation', ctx);
        if (!classified.retryable) throw classified;
        log.warn('polling the Cloud Run operation failed; polling again', { operation: operationName, err: classified });
      }
    }
    if (operation.error) throw classifyRunError(operation.error, 'operation', ctx);
    const after = serviceSchema.safeParse(operation.result).data?.scaling?.minInstanceCount ?? 0;
    if (after !== count) {
      throw new PermanentError(`Cloud Run: ${serviceName} reports min instances ${after} after an update to ${count}`, {
        details: { ...ctx, operation: operationName, expected: count, reported: after },
        remedy: 'Check the service in the Cloud Run console: another change may have overridden this one.',
      });
    }
    log.info('Cloud Run min instances set', { operation: operationName, from: before.minInstances, to: count });
    return { changed: true, detail: `${summary}; operation ${operationName} done` };
  }

  return {
    serviceName,
    setMinInstances,
    async minInstances(): Promise<number> {
      return (await readScaling()).minInstances;
    },
    close: () => client.close(),
  };
}
