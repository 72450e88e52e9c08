// The Cloud Run scaler through the official client (REST transport), pointed
// at a local HTTP server that answers the Cloud Run Admin API v2 as the
// protos in node_modules describe it (services.get, services.patch with an
// update mask returning a long-running operation, operations.get) and records
// every call. Cloud Run has no emulator (see STACK.md). No stack needed, but it
// opens sockets, so it runs in the integration project.
import { OAuth2Client } from 'google-auth-library';
import { afterEach, describe, expect, it } from 'vitest';
import { classifyRunError, createCloudRunScaler, type CloudRunScaler, type CloudRunScalerOptions } from '../../adapters/cloud-run-scaler.ts';
import { PermanentError, RetryableError, ValidationError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { routes, startRecordingServer, type RecordedCall, type RecordingServer, type Reply, type Route } from '../helpers/recording-http-server.ts';

const PROJECT = 'lifeboat-run-test';
const REGION = 'europe-west1';
const SERVICE = 'lifeboat-app';
const SERVICE_NAME = `projects/${PROJECT}/locations/${REGION}/services/${SERVICE}`;
const SERVICE_PATH = `/v2/${SERVICE_NAME}`;
const SERVICE_TYPE = 'type.googleapis.com/google.cloud.run.v2.Service';

const logger = createLogger({ component: 'run-scaler-test', level: 'critical' });

/** An error body as Google's REST APIs send it. */
const apiError = (status: number, grpcStatus: string, message: string): Reply => ({ status, body: { error: { code: status, message, status: grpcStatus } } });

/** One Cloud Run service and its operations: service-level scaling updated through the field mask only. */
class FakeRun {
  minInstanceCount: number;
  scalingMode: string | undefined;
  generation = 7;
  /** operations.get calls an update answers with done:false before done:true */
  pollsBeforeDone = 0;
  failOperationWith: { code: number; message: string } | undefined;
  readonly operations = new Map<string, { pollsLeft: number; error?: { code: number; message: string } }>();

  constructor(minInstanceCount = 0, scalingMode?: string) {
    this.minInstanceCount = minInstanceCount;
    this.scalingMode = scalingMode;
  }

  resource() {
    // proto3 JSON leaves zero values out, as the API does.
    const scaling: Record<string, unknown> = { maxInstanceCount: 4 };
    if (this.minInstanceCount !== 0) scaling.minInstanceCount = this.minInstanceCount;
    if (this.scalingMode !== undefined) scaling.scalingMode = this.scalingMode;
    return {
      name: SERVICE_NAME,
      uid: '6f2bdb2e-0000-4000-8000-000000000001',
      generation: String(this.generation),
      scaling,
      template: { scaling: { maxInstanceCount: 4 }, containers: [{ image: 'europe-docker.pkg.dev/p/r/app:1', ports: [{ containerPort: 8080 }] }] },
      latestReadyRevision: `${SERVICE_NAME}/revisions/${SERVICE}-00003-abc`,
      etag: `"gen-${this.generation}"`,
    };
  }

  private operation(id: string) {
    const op = this.operations.get(id)!;
    const name = `projects/${PROJECT}/locations/${REGION}/operations/${id}`;
    const metadata = { '@type': SERVICE_TYPE, ...this.resource() };
    if (op.pollsLeft > 0) return { name, metadata, done: false };
    if (op.error) return { name, metadata, done: true, error: op.error };
    return { name, metadata, done: true, response: { '@type': SERVICE_TYPE, ...this.resource() } };
  }

  routes(): Route[] {
    return [
      { method: 'GET', path: SERVICE_PATH, handle: () => ({ body: this.resource() }) },
      {
        method: 'PATCH',
        path: SERVICE_PATH,
        handle: (call) => {
          const mask = call.url.searchParams.get('updateMask');
          if (mask !== 'scaling.minInstanceCount') return apiError(400, 'INVALID_ARGUMENT', `fake Cloud Run: unexpected updateMask ${mask}`);
          const body = JSON.parse(call.text) as { scaling?: { minInstanceCount?: number } };
          // Field-mask semantics: a masked field absent from the body is set to its default.
          this.minInstanceCount = body.scaling?.minInstanceCount ?? 0;
          this.generation += 1;
          const id = `op-${this.operations.size + 1}`;
          this.operations.set(id, { pollsLeft: this.pollsBeforeDone, ...(this.failOperationWith && { error: this.failOperationWith }) });
          return { body: this.operation(id) };
        },
      },
      {
        method: 'GET',
        path: new RegExp(`^/v2/projects/${PROJECT}/locations/${REGION}/operations/([^/]+)$`),
        handle: (_call, m) => {
          const op = this.operations.get(m[1]!);
          if (op === undefined) return apiError(404, 'NOT_FOUND', `operation ${m[1]} not found`);
          if (op.pollsLeft > 0) op.pollsLeft -= 1;
          return { body: this.operation(m[1]!) };
        },
      },
    ];
  }
}

const servers: RecordingServer[] = [];
const scalers: CloudRunScaler[] = [];
afterEach(async () => {
  while (scalers.length > 0) await scalers.pop()!.close();
  while (servers.length > 0) await servers.pop()!.close();
});

async function setUp(handler: Route[] | ((call: RecordedCall) => Reply | Promise<Reply>), opts: Partial<CloudRunScalerOptions> = {}) {
  const server = await startRecordingServer(handler);
  servers.push(server);
  const authClient = new OAuth2Client();
  authClient.setCredentials({ access_token: 'test-token', expiry_date: Date.now() + 3_600_000 });
  // google-gax bundles its own google-auth-library (11.x, the top level is 10.x): the same
  // client at run time, but two distinct types for the compiler.
  const scaler = createCloudRunScaler({
    projectId: PROJECT,
    region: REGION,
    service: SERVICE,
    apiEndpoint: server.url,
    authClient: authClient as unknown as CloudRunScalerOptions['authClient'],
    logger,
    pollIntervalMs: 5,
    ...opts,
  });
  scalers.push(scaler);
  return { server, scaler };
}

const patches = (server: RecordingServer) => server.calls.filter((c) => c.method === 'PATCH');
const operationPolls = (server: RecordingServer) => server.calls.filter((c) => c.method === 'GET' && c.path.includes('/operations/'));

describe('createCloudRunScaler against a recording Cloud Run Admin API server', () => {
  it('sets the service-level minimum with an update mask and waits for the operation; 1 then back to 0', async () => {
    const run = new FakeRun(0);
    const { server, scaler } = await setUp(run.routes());
    expect(scaler.serviceName).toBe(SERVICE_NAME);
    expect(await scaler.minInstances()).toBe(0);
    const get = server.calls[0]!;
    expect(get).toMatchObject({ method: 'GET', path: SERVICE_PATH });
    expect(get.headers.authorization).toBe('Bearer test-token');

    const up = await scaler.setMinInstances(1);
    expect(up).toEqual({ changed: true, detail: `Cloud Run service ${SERVICE}: min instances 0 → 1; operation projects/${PROJECT}/locations/${REGION}/operations/op-1 done` });
    const [patch] = patches(server);
    expect(patch!.path).toBe(SERVICE_PATH);
    expect(patch!.url.searchParams.get('updateMask')).toBe('scaling.minInstanceCount');
    // The name travels in the path; the client adds empty label and annotation maps, which the mask keeps the server from applying.
    expect(JSON.parse(patch!.text)).toEqual({ labels: {}, annotations: {}, scaling: { minInstanceCount: 1 } });
    expect(patch!.headers['x-goog-request-params']).toBe(`location=${REGION}`);
    expect(run.minInstanceCount).toBe(1);
    expect(await scaler.minInstances()).toBe(1);

    const down = await scaler.setMinInstances(0);
    expect(down.changed).toBe(true);
    expect(down.detail).toMatch(/min instances 1 → 0; operation .*\/op-2 done$/);
    const second = patches(server)[1]!;
    expect(second.url.searchParams.get('updateMask')).toBe('scaling.minInstanceCount');
    expect(JSON.parse(second.text)).toEqual({ labels: {}, annotations: {}, scaling: { minInstanceCount: 0 } });
    expect(run.minInstanceCount).toBe(0);
    expect(server.unmatched).toEqual([]);
  });

  it('is idempotent: no update when the minimum is already the wanted one', async () => {
    const run = new FakeRun(1);
    const { server, scaler } = await setUp(run.routes());
    expect(await scaler.setMinInstances(1)).toEqual({ changed: false, detail: `Cloud Run service ${SERVICE} already has min instances 1` });
    run.minInstanceCount = 0;
    expect((await scaler.setMinInstances(0)).changed).toBe(false);
    expect(patches(server)).toEqual([]);
    expect(server.calls.map((c) => `${c.method} ${c.path}`)).toEqual([`GET ${SERVICE_PATH}`, `GET ${SERVICE_PATH}`]);
  });

  it('polls a running operation until done, and reports one still running after the bound', async () => {
    const run = new FakeRun(0);
    run.pollsBeforeDone = 3;
    const { server, scaler } = await setUp(run.routes());
    expect((await scaler.setMinInstances(1)).detail).toMatch(/op-1 done$/);
    const polls = operationPolls(server);
    expect(polls).toHaveLength(3);
    expect(polls.map((c) => c.path)).toEqual(Array(3).fill(`/v2/projects/${PROJECT}/locations/${REGION}/operations/op-1`));

    const slow = new FakeRun(0);
    slow.pollsBeforeDone = 1_000_000;
    const second = await setUp(slow.routes(), { operationTimeoutMs: 60 });
    const pending = await second.scaler.setMinInstances(1);
    expect(pending.changed).toBe(true);
    expect(pending.detail).toMatch(/op-1 still running after 0\.1 s \(Cloud Run completes it on its own\)$/);
    expect(operationPolls(second.server).length).toBeGreaterThan(0);
  });

  it('a failed operation is an error with its status; manual scaling is refused before any update', async () => {
    const run = new FakeRun(0);
    run.pollsBeforeDone = 1;
    run.failOperationWith = { code: 7, message: "Permission 'iam.serviceaccounts.actAs' denied on service account lifeboat-app@p.iam.gserviceaccount.com" };
    const { scaler } = await setUp(run.routes());
    const err = (await scaler.setMinInstances(1).catch((e: unknown) => e)) as PermanentError;
    expect(err).toBeInstanceOf(PermanentError);
    expect(err.message).toBe(
      `Cloud Run: cannot finish updating the minimum instances of Cloud Run service ${SERVICE} (region ${REGION}, project ${PROJECT}) (PERMISSION_DENIED): Permission 'iam.serviceaccounts.actAs' denied on service account lifeboat-app@p.iam.gserviceaccount.com`,
    );
    expect(err.remedy).toMatch(/roles\/iam\.serviceAccountUser/);

    const manual = new FakeRun(0, 'MANUAL');
    const second = await setUp(manual.routes());
    const refused = (await second.scaler.setMinInstances(1).catch((e: unknown) => e)) as PermanentError;
    expect(refused).toBeInstanceOf(PermanentError);
    expect(refused.message).toMatch(/manual scaling/);
    expect(patches(second.server)).toEqual([]);
  });

  it('maps API errors: 403 names the role, 404 the settings; 503 and 409 are retryable', async () => {
    const run = new FakeRun(0);
    const real = routes(run.routes());
    let patchAnswer: Reply | undefined = apiError(403, 'PERMISSION_DENIED', `Permission 'run.services.update' denied on resource '${SERVICE_NAME}' (or it may not exist).`);
    const { scaler } = await setUp((call) => (call.method === 'PATCH' && patchAnswer ? patchAnswer : real(call)));
    const denied = (await scaler.setMinInstances(1).catch((e: unknown) => e)) as PermanentError;
    expect(denied).toBeInstanceOf(PermanentError);
    expect(denied.message).toContain(`cannot update the minimum instances of Cloud Run service ${SERVICE} (region ${REGION}, project ${PROJECT}) (PERMISSION_DENIED)`);
    expect(denied.remedy).toBe(
      `The failover service account needs run.services.update and run.services.get on Cloud Run service ${SERVICE} (region ${REGION}, project ${PROJECT}) (roles/run.developer on the service) and, to update it, iam.serviceAccounts.actAs on the app's runtime service account (roles/iam.serviceAccountUser), as the cdktf stack grants.`,
    );
    expect(run.minInstanceCount).toBe(0);

    patchAnswer = apiError(409, 'ABORTED', 'Conflict for resource: another operation is in progress');
    expect(await scaler.setMinInstances(1).catch((e: unknown) => e)).toBeInstanceOf(RetryableError);
    patchAnswer = apiError(503, 'UNAVAILABLE', 'The service is currently unavailable.');
    expect(await scaler.setMinInstances(1).catch((e: unknown) => e)).toBeInstanceOf(RetryableError);
    patchAnswer = undefined;
    expect((await scaler.setMinInstances(1)).changed).toBe(true);

    const missing = await setUp(() => apiError(404, 'NOT_FOUND', `Resource '${SERVICE}' of kind 'SERVICE' in region '${REGION}' in project '${PROJECT}' does not exist.`));
    const notFound = (await missing.scaler.minInstances().catch((e: unknown) => e)) as PermanentError;
    expect(notFound).toBeInstanceOf(PermanentError);
    expect(notFound.remedy).toMatch(/run\.service, run\.region/);

    const ctx = { projectId: PROJECT, region: REGION, service: SERVICE };
    expect(classifyRunError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), 'read', ctx)).toBeInstanceOf(RetryableError);
    expect(classifyRunError(new TypeError('bug'), 'read', ctx)).toBeInstanceOf(PermanentError);
  });

  it('missing credentials are a PermanentError, not an unhandled rejection that ends the process', async () => {
    const server = await startRecordingServer(new FakeRun(0).routes());
    servers.push(server);
    const saved = process.env.GOOGLE_APPLICATION_CREDENTIALS;
    // A key file that does not exist: Application Default Credentials fail the same way on every machine.
    process.env.GOOGLE_APPLICATION_CREDENTIALS = '/nonexistent/lifeboat-test-key.json';
    try {
      const scaler = createCloudRunScaler({ projectId: PROJECT, region: REGION, service: SERVICE, apiEndpoint: server.url, logger });
      scalers.push(scaler);
      for (const attempt of [scaler.minInstances(), scaler.setMinInstances(1)]) {
        const err = (await attempt.catch((e: unknown) => e)) as PermanentError;
        expect(err).toBeInstanceOf(PermanentError);
        expect(err.message).toContain(`cannot set up the Cloud Run Admin API client for ${SERVICE_NAME}`);
        expect(err.remedy).toMatch(/Application Default Credentials/);
      }
      // Give a stray rejection the chance to surface (vitest fails the run on one).
      await new Promise((resolve) => setImmediate(resolve));
      expect(server.calls).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
      else process.env.GOOGLE_APPLICATION_CREDENTIALS = saved;
    }
  });

  it('validates the count and the options before any request', async () => {
    const { server, scaler } = await setUp(new FakeRun(0).routes());
    await expect(scaler.setMinInstances(2 as 1)).rejects.toBeInstanceOf(ValidationError);
    expect(() => createCloudRunScaler({ projectId: PROJECT, region: 'Europe West', service: SERVICE, logger })).toThrow(/region/);
    expect(() => createCloudRunScaler({ projectId: PROJECT, region: REGION, service: 'Bad_Name', logger })).toThrow(/service/);
    expect(server.calls).toEqual([]);
  });
});
