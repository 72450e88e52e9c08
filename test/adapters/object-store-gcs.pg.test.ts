// The Cloud Storage adapter through the official client, pointed at a local
// HTTP server that implements just enough of the JSON API (multipart upload
// with ifGenerationMatch, media download, list with pages) and records every
// call. Cloud Storage has no usable emulator here (see STACK.md). It needs no
// stack, but opens sockets, so it runs in the integration project.
import { createHash } from 'node:crypto';
import { CRC32C } from '@google-cloud/storage';
import { OAuth2Client } from 'google-auth-library';
import { afterEach, describe, expect, it } from 'vitest';
import { GcsObjectStore, parseGsUri, type GcsObjectStoreOptions } from '../../adapters/object-store-gcs.ts';
import { PermanentError, RetryableError, ValidationError } from '../../core/errors.ts';
import { routes, startRecordingServer, type RecordedCall, type RecordingServer, type Reply, type Route } from '../helpers/recording-http-server.ts';

const BUCKET = 'lifeboat-test-bucket';

interface StoredObject {
  data: Buffer;
  generation: number;
  metadata: Record<string, unknown>;
}

/** Splits a multipart/related body into its parts (headers as text, body as bytes). */
function parseMultipart(call: RecordedCall): { headers: string; body: Buffer }[] {
  const type = String(call.headers['content-type'] ?? '');
  const boundary = /boundary="?([^";]+)"?/.exec(type)?.[1];
  if (!boundary) throw new Error(`not multipart: ${type}`);
  const delimiter = Buffer.from(`--${boundary}`);
  const parts: { headers: string; body: Buffer }[] = [];
  let at = call.body.indexOf(delimiter);
  while (at >= 0) {
    const start = at + delimiter.length;
    if (call.body.subarray(start, start + 2).toString() === '--') break;
    const next = call.body.indexOf(delimiter, start);
    const part = call.body.subarray(start + 2, next - 2); // skip CRLF after the delimiter and before the next one
    const split = part.indexOf('\r\n\r\n');
    parts.push({ headers: part.subarray(0, split).toString(), body: part.subarray(split + 4) });
    at = next;
  }
  return parts;
}

function hashes(data: Buffer): { md5Hash: string; crc32c: string } {
  const crc = new CRC32C();
  crc.update(data);
  return { md5Hash: createHash('md5').update(data).digest('base64'), crc32c: crc.toString() };
}

function resource(name: string, o: StoredObject): Record<string, unknown> {
  return {
    kind: 'storage#object',
    bucket: BUCKET,
    name,
    generation: String(o.generation),
    size: String(o.data.length),
    ...hashes(o.data),
    contentType: o.metadata.contentType,
    metadata: o.metadata.metadata,
  };
}

const apiError = (status: number, message: string): Reply => ({ status, body: { error: { code: status, message, errors: [{ message, reason: 'test' }] } } });

/** A fake bucket: create-only uploads honour ifGenerationMatch=0, as GCS does. */
function fakeGcs(objects = new Map<string, StoredObject>(), pageSize = 2): Route[] {
  let generation = 1000;
  return [
    {
      method: 'POST',
      path: /^\/upload\/storage\/v1\/b\/([^/]+)\/o$/,
      handle: (call, m) => {
        if (m[1] !== BUCKET) return apiError(404, 'The specified bucket does not exist.');
        const name = call.query.name!;
        const [meta, media] = parseMultipart(call);
        const metadata = JSON.parse(meta!.body.toString()) as Record<string, unknown>;
        if (call.query.ifGenerationMatch === '0' && objects.has(name)) return apiError(412, 'At least one of the pre-conditions you specified did not hold.');
        if (typeof metadata.md5Hash === 'string' && metadata.md5Hash !== hashes(media!.body).md5Hash) {
          return apiError(400, 'Provided MD5 hash does not match the calculated MD5 hash of the data.');
        }
        const stored = { data: Buffer.from(media!.body), generation: ++generation, metadata };
        objects.set(name, stored);
        return { body: resource(name, stored) };
      },
    },
    {
      method: 'GET',
      path: /^\/storage\/v1\/b\/([^/]+)\/o\/(.+)$/,
      handle: (call, m) => {
        const o = objects.get(m[2]!);
        if (m[1] !== BUCKET || o === undefined) return apiError(404, 'No such object.');
        if (call.query.alt !== 'media') return { body: resource(m[2]!, o) };
        const h = hashes(o.data);
        return { headers: { 'content-type': 'application/octet-stream', 'x-goog-hash': `crc32c=${h.crc32c},md5=${h.md5Hash}` }, body: o.data };
      },
    },
    {
      method: 'GET',
      path: /^\/storage\/v1\/b\/([^/]+)\/o$/,
      handle: (call, m) => {
        if (m[1] !== BUCKET) return apiError(404, 'The specified bucket does not exist.');
        const names = [...objects.keys()].filter((n) => n.startsWith(call.query.prefix ?? '')).sort();
        const from = Number(call.query.pageToken ?? 0);
        const page = names.slice(from, from + pageSize);
        const more = from + pageSize < names.length;
        return { body: { kind: 'storage#objects', items: page.map((n) => resource(n, objects.get(n)!)), ...(more && { nextPageToken: String(from + pageSize) }) } };
      },
    },
  ];
}

const servers: RecordingServer[] = [];
afterEach(async () => {
  while (servers.length > 0) await servers.pop()!.close();
});

async function setUp(handler: Route[] | ((call: RecordedCall) => Reply | Promise<Reply>), opts: Partial<GcsObjectStoreOptions> = {}) {
  const server = await startRecordingServer(handler);
  servers.push(server);
  const authClient = new OAuth2Client();
  authClient.setCredentials({ access_token: 'test-token', expiry_date: Date.now() + 3_600_000 });
  // Storage bundles its own google-auth-library (11.x, the top level is 10.x): the same
  // client at run time, but two distinct types for the compiler.
  const store = new GcsObjectStore({
    bucket: BUCKET,
    projectId: 'lifeboat-test',
    apiEndpoint: server.url,
    authClient: authClient as unknown as GcsObjectStoreOptions['authClient'],
    ...opts,
  });
  return { server, store };
}

const uploads = (server: RecordingServer) => server.calls.filter((c) => c.method === 'POST' && c.path.startsWith('/upload/'));

describe('GcsObjectStore against a recording JSON API server', () => {
  it('uploads create-only with ifGenerationMatch=0 and an md5 the server checks, then reads it back', async () => {
    const { server, store } = await setUp(fakeGcs());
    const body = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0xff, 0x00, 0x0d, 0x0a, 0x2d, 0x2d]); // binary, with CRLF and '--'
    const key = 'claim-check/main/0000000001CF7460-0000000001CF7600-0123456789abcdef.json.gz';

    const put = await store.putIfAbsent(key, body);
    expect(put).toEqual({ uri: `gs://${BUCKET}/${key}`, created: true });

    const [upload] = uploads(server);
    expect(upload).toBeDefined();
    expect(upload!.path).toBe(`/upload/storage/v1/b/${BUCKET}/o`);
    expect(upload!.query).toMatchObject({ uploadType: 'multipart', name: key, ifGenerationMatch: '0' });
    expect(upload!.headers.authorization).toBe('Bearer test-token');
    const [meta, media] = parseMultipart(upload!);
    expect(JSON.parse(meta!.body.toString())).toEqual({
      contentType: 'application/octet-stream',
      md5Hash: createHash('md5').update(body).digest('base64'),
      metadata: { sha256: createHash('sha256').update(body).digest('hex') },
    });
    expect(Buffer.compare(media!.body, body)).toBe(0);

    expect(Buffer.compare(await store.get(put.uri), body)).toBe(0);
    const download = server.calls.at(-1)!;
    expect(download).toMatchObject({ method: 'GET', path: `/storage/v1/b/${BUCKET}/o/${key}`, query: { alt: 'media' } });
    expect(download.rawPath).toBe(`/storage/v1/b/${BUCKET}/o/${encodeURIComponent(key)}`);
    expect(server.unmatched).toEqual([]);
  });

  it('never overwrites: the same bytes again are created:false, different bytes a PermanentError', async () => {
    const objects = new Map<string, StoredObject>();
    const { server, store } = await setUp(fakeGcs(objects));
    await store.putIfAbsent('k/one', Buffer.from('original'));
    const generation = objects.get('k/one')!.generation;

    await expect(store.putIfAbsent('k/one', Buffer.from('original'))).resolves.toEqual({ uri: `gs://${BUCKET}/k/one`, created: false });
    const err = await store.putIfAbsent('k/one', Buffer.from('changed')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as Error).message).toMatch(/already exists with different content/);

    // Every upload carried the precondition; the object was written once.
    expect(uploads(server)).toHaveLength(3);
    for (const u of uploads(server)) expect(u.query.ifGenerationMatch).toBe('0');
    expect(objects.get('k/one')!.data.toString()).toBe('original');
    expect(objects.get('k/one')!.generation).toBe(generation);
    // The 412s were followed by a read of the existing object to compare.
    expect(server.calls.filter((c) => c.method === 'GET' && c.query.alt === 'media')).toHaveLength(2);
  });

  it('a retried upload whose first response was lost ends as created:false, not as an error or an overwrite', async () => {
    const objects = new Map<string, StoredObject>();
    const real = routes(fakeGcs(objects));
    let failed = false;
    const { server, store } = await setUp(async (call) => {
      const reply = await real(call);
      // The first upload is stored, but its answer is a 503.
      if (!failed && call.method === 'POST') {
        failed = true;
        return apiError(503, 'backend error');
      }
      return reply;
    });
    await expect(store.putIfAbsent('lost/answer', Buffer.from('payload'))).resolves.toEqual({ uri: `gs://${BUCKET}/lost/answer`, created: false });
    expect(uploads(server).map((u) => u.query.ifGenerationMatch)).toEqual(['0', '0']);
    expect(objects.get('lost/answer')!.data.toString()).toBe('payload');
  });

  it('a body that the server finds corrupted (md5 mismatch, 400) is a PermanentError and is not stored', async () => {
    const objects = new Map<string, StoredObject>();
    const real = routes(fakeGcs(objects));
    const { store } = await setUp(async (call) => {
      if (call.method === 'POST') {
        // Flip one byte of the media on the way, as a broken proxy would.
        const i = call.body.lastIndexOf(Buffer.from('payload'));
        call.body[i] = 0x50;
      }
      return real(call);
    });
    await expect(store.putIfAbsent('corrupt/me', Buffer.from('payload'))).rejects.toBeInstanceOf(PermanentError);
    expect(objects.has('corrupt/me')).toBe(false);
  });

  it('lists by prefix across pages in key order, with sizes', async () => {
    const { server, store } = await setUp(fakeGcs(new Map(), 2));
    for (const key of ['r/3', 'r/1', 'other/1', 'r/2', 'r/10']) await store.putIfAbsent(key, Buffer.from(key));
    const listed = await store.list('r/');
    expect(listed).toEqual(['r/1', 'r/10', 'r/2', 'r/3'].map((key) => ({ key, uri: `gs://${BUCKET}/${key}`, bytes: key.length })));
    const lists = server.calls.filter((c) => c.method === 'GET' && c.path === `/storage/v1/b/${BUCKET}/o`);
    expect(lists.map((c) => c.query.prefix)).toEqual(['r/', 'r/']);
    expect(lists.map((c) => c.query.pageToken)).toEqual([undefined, '2']);
  });

  it('get refuses other buckets and non-gs URIs without a request; a missing object is a PermanentError', async () => {
    const { server, store } = await setUp(fakeGcs());
    await expect(store.get('gs://another-bucket/k')).rejects.toBeInstanceOf(PermanentError);
    await expect(store.get('file:///tmp/k')).rejects.toBeInstanceOf(PermanentError);
    await expect(store.get(`gs://${BUCKET}/../k`)).rejects.toBeInstanceOf(PermanentError);
    expect(server.calls).toEqual([]);
    const err = await store.get(`gs://${BUCKET}/missing/k`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as Error).message).toMatch(/does not exist/);
  });

  it('maps HTTP failures: 5xx, 429 and dropped connections are retryable; 403, 404, 401 permanent with a remedy', async () => {
    let answer: Reply = apiError(503, 'unavailable');
    const { store } = await setUp(() => answer, { retryOptions: { autoRetry: false } });
    const putError = () => store.putIfAbsent('k', Buffer.from('x')).catch((e: unknown) => e as Error);

    for (const status of [500, 503, 429, 408]) {
      answer = apiError(status, `status ${status}`);
      const err = await putError();
      expect(err, String(status)).toBeInstanceOf(RetryableError);
      expect((err as RetryableError).details).toMatchObject({ status, bucket: BUCKET });
    }
    answer = { destroy: true };
    expect(await putError()).toBeInstanceOf(RetryableError);

    answer = apiError(403, 'forbidden');
    let err = await putError();
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).remedy).toMatch(/roles\/storage\.objectCreator.*lifeboat-test-bucket/);
    answer = apiError(404, 'no bucket');
    err = await putError();
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).remedy).toMatch(/storage\.bucket/);
    answer = apiError(401, 'who are you');
    expect(((await putError()) as PermanentError).remedy).toMatch(/credentials/);
    answer = apiError(400, 'bad');
    expect(await putError()).toBeInstanceOf(PermanentError);

    answer = apiError(503, 'unavailable');
    await expect(store.list('')).rejects.toBeInstanceOf(RetryableError);
    await expect(store.get(`gs://${BUCKET}/k`)).rejects.toBeInstanceOf(RetryableError);
    answer = apiError(403, 'forbidden');
    await expect(store.list('')).rejects.toBeInstanceOf(PermanentError);
  });

  it('validates keys and the bucket name before any request', async () => {
    const { server, store } = await setUp(fakeGcs());
    await expect(store.putIfAbsent('../escape', Buffer.from('x'))).rejects.toBeInstanceOf(ValidationError);
    await expect(store.putIfAbsent('a//b', Buffer.from('x'))).rejects.toBeInstanceOf(ValidationError);
    await expect(store.list('/abs')).rejects.toBeInstanceOf(ValidationError);
    expect(server.calls).toEqual([]);
    expect(() => new GcsObjectStore({ bucket: 'Bad_Bucket!' })).toThrow(ValidationError);
    expect(parseGsUri('gs://b-1/x/y.json.gz')).toEqual({ bucket: 'b-1', key: 'x/y.json.gz' });
  });
});
