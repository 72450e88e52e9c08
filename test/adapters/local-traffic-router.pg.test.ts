// The localhost traffic router with the file traffic switch, and the local app
// scaler: two small upstream HTTP servers stand for home and the cloud copy.
// No stack needed, but it opens sockets, so it runs in the integration project.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http, { type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { createFileTrafficSwitch, createLocalAppScaler, readRouterState, startTrafficRouter, writeRouterState, type TrafficRouter } from '../../adapters/local-traffic-router.ts';
import { ValidationError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';

const logger = createLogger({ component: 'traffic-router-test', level: 'critical' });

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  bodySha256: string;
  bodyBytes: number;
  /** performance.now() when the request arrived */
  at: number;
}

interface Upstream {
  url: string;
  seen: Seen[];
  /** Resolved by the test to let /stream send its second chunk. */
  releaseStream: () => void;
  close(): Promise<void>;
}

/** An app that answers with what it received; /stream sends one chunk, then waits for the test before the second. */
async function startUpstream(name: string): Promise<Upstream> {
  const seen: Seen[] = [];
  let release: () => void = () => undefined;
  let released = new Promise<void>((resolve) => (release = resolve));
  const server: Server = http.createServer((req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    const at = performance.now();
    req.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    req.on('end', () => {
      const entry: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, bodySha256: hash.digest('hex'), bodyBytes: bytes, at };
      seen.push(entry);
      if (req.url === '/stream') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write(`first from ${name}\n`);
        void released.then(() => res.end(`second from ${name}\n`));
        return;
      }
      const body = JSON.stringify({ name, method: entry.method, url: entry.url, bodySha256: entry.bodySha256, bodyBytes: bytes });
      res.writeHead(201, { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'], 'x-app': name, connection: 'keep-alive, x-app-hop', 'x-app-hop': 'one hop only', 'keep-alive': 'timeout=77' });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    releaseStream: () => {
      release();
      released = new Promise<void>((resolve) => (release = resolve));
    },
    close: () =>
      new Promise<void>((resolve) => {
        release();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function request(url: string, opts: { method?: string; headers?: Record<string, string>; body?: Buffer | Buffer[] } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (Array.isArray(opts.body)) {
      // Written in pieces without a content-length: a chunked request body.
      for (const piece of opts.body) req.write(piece);
      req.end();
    } else req.end(opts.body);
  });
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function setUp(opts: { cloudUrl?: string } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-router-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const home = await startUpstream('home');
  cleanups.push(() => home.close());
  const cloud = await startUpstream('cloud');
  cleanups.push(() => cloud.close());
  const stateFile = join(dir, 'state', 'router.json');
  const router: TrafficRouter = await startTrafficRouter({ host: '127.0.0.1', port: 0, targets: { local: home.url, cloud: opts.cloudUrl ?? cloud.url }, stateFile, logger });
  cleanups.push(() => router.close());
  const trafficSwitch = createFileTrafficSwitch({ stateFile, logger });
  return { dir, home, cloud, stateFile, router, trafficSwitch };
}

describe('startTrafficRouter with the file traffic switch', () => {
  it('refuses with 503 until a side is chosen, then follows every switch from the very next request', async () => {
    const { home, cloud, stateFile, router, trafficSwitch } = await setUp();

    const refused = await request(`${router.url}/orders`);
    expect(refused.status).toBe(503);
    expect(refused.body).toContain(`no serving side: traffic router state file ${stateFile} does not exist`);
    expect(refused.headers['x-lifeboat-side']).toBeUndefined();
    expect(await trafficSwitch.current()).toBe('unknown');
    expect(home.seen.length + cloud.seen.length).toBe(0);

    expect(await trafficSwitch.pointAt('local')).toEqual({ changed: true, detail: 'traffic router now sends requests to local (was nowhere (no state file))' });
    const first = await request(`${router.url}/orders?id=7`);
    expect(first.status).toBe(201);
    expect(first.headers['x-lifeboat-side']).toBe('local');
    expect(JSON.parse(first.body)).toMatchObject({ name: 'home', method: 'GET', url: '/orders?id=7' });
    expect(await trafficSwitch.current()).toBe('local');
    expect((await trafficSwitch.pointAt('local')).changed).toBe(false);

    const delays: number[] = [];
    for (const side of ['cloud', 'local', 'cloud'] as const) {
      const result = await trafficSwitch.pointAt(side);
      const switched = performance.now();
      expect(result.changed).toBe(true);
      const answer = await request(`${router.url}/after-switch`);
      // The very first request after pointAt() resolved goes to the new side.
      expect(answer.headers['x-lifeboat-side']).toBe(side);
      expect(JSON.parse(answer.body).name).toBe(side === 'local' ? 'home' : 'cloud');
      const arrived = (side === 'local' ? home : cloud).seen.at(-1)!;
      expect(arrived.url).toBe('/after-switch');
      delays.push(arrived.at - switched);
    }
    console.log(`traffic router: pointAt() resolved → next request at the new side: ${delays.map((d) => `${d.toFixed(2)} ms`).join(', ')}`);

    const state = await readRouterState(stateFile);
    expect('state' in state && state.state.side).toBe('cloud');
  });

  it('passes methods, bodies (sized and chunked), headers and x-forwarded-* through, and drops hop-by-hop headers', async () => {
    const { home, router, trafficSwitch } = await setUp();
    await trafficSwitch.pointAt('local');
    const body = randomBytes(1024 * 1024 + 17);
    const posted = await request(`${router.url}/upload`, { method: 'POST', body, headers: {
        'content-type': 'application/octet-stream',
        'x-request-id': 'r-1',
        'x-forwarded-for': '203.0.113.9',
        connection: 'keep-alive, x-client-hop',
        'x-client-hop': 'one hop only',
        'keep-alive': 'timeout=9',
      },
    });
    expect(posted.status).toBe(201);
    const seen = home.seen.at(-1)!;
    expect(seen).toMatchObject({ method: 'POST', url: '/upload', bodyBytes: body.length, bodySha256: createHash('sha256').update(body).digest('hex') });
    expect(seen.headers['content-length']).toBe(String(body.length));
    expect(seen.headers['x-request-id']).toBe('r-1');
    expect(seen.headers['x-forwarded-for']).toBe('203.0.113.9, 127.0.0.1');
    expect(seen.headers['x-forwarded-host']).toBe(new URL(router.url).host);
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers.host).toBe(new URL(home.url).host);
    expect(seen.headers['keep-alive']).not.toBe('timeout=9');
    expect(seen.headers['x-client-hop']).toBeUndefined();
    // The app's response headers come back (both cookies), its hop-by-hop ones do not.
    expect(posted.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(posted.headers['x-app']).toBe('home');
    // (Node's server adds its own keep-alive header for the router's connection; the app's must not pass.)
    expect(posted.headers['keep-alive']).not.toBe('timeout=77');
    expect(posted.headers['x-app-hop']).toBeUndefined();

    const pieces = [randomBytes(70_000), randomBytes(5), randomBytes(130_000)];
    const chunked = await request(`${router.url}/chunked`, { method: 'PUT', body: pieces });
    expect(chunked.status).toBe(201);
    expect(home.seen.at(-1)).toMatchObject({ method: 'PUT', bodyBytes: 200_005, bodySha256: createHash('sha256').update(Buffer.concat(pieces)).digest('hex') });

    for (const method of ['DELETE', 'PATCH', 'OPTIONS', 'HEAD']) {
      const answer = await request(`${router.url}/m`, { method });
      expect(answer.status, method).toBe(201);
      expect(home.seen.at(-1)!.method).toBe(method);
    }
  });

  it('streams a response: the first chunk reaches the client while the app still holds the rest', async () => {
    const { cloud, router, trafficSwitch } = await setUp();
    await trafficSwitch.pointAt('cloud');
    const text = await new Promise<string>((resolve, reject) => {
      http
        .get(`${router.url}/stream`, (res) => {
          expect(res.headers['x-lifeboat-side']).toBe('cloud');
          let got = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            got += chunk;
            // Only once the first chunk has come through the router does the app send the second: a buffering proxy would hang here.
            if (got === 'first from cloud\n') cloud.releaseStream();
          });
          res.on('end', () => resolve(got));
          res.on('error', reject);
        })
        .on('error', reject);
    });
    expect(text).toBe('first from cloud\nsecond from cloud\n');
  });

  it('answers 502 naming the side when its upstream refuses, and 503 for a garbled state file', async () => {
    const port = await closedPort();
    const { stateFile, router, trafficSwitch } = await setUp({ cloudUrl: `http://127.0.0.1:${port}` });
    await trafficSwitch.pointAt('cloud');
    const down = await request(`${router.url}/x`, { method: 'POST', body: Buffer.from('lost?') });
    expect(down.status).toBe(502);
    expect(down.headers['x-lifeboat-side']).toBe('cloud');
    expect(down.body).toContain(`the cloud side (http://127.0.0.1:${port}) did not answer: ECONNREFUSED`);

    await writeFile(stateFile, '{"side": "cl');
    const garbled = await request(`${router.url}/x`);
    expect(garbled.status).toBe(503);
    expect(garbled.body).toContain(`traffic router state file ${stateFile} is not valid JSON`);
    expect(await trafficSwitch.current()).toBe('unknown');

    await writeFile(stateFile, JSON.stringify({ side: 'both', changedAt: new Date().toISOString() }));
    const invalid = await request(`${router.url}/x`);
    expect(invalid.status).toBe(503);
    expect(invalid.body).toContain('is not valid: ✖ Invalid option');

    // A valid state written by another writer (local mode's start, with a reason) is followed again.
    await writeRouterState(stateFile, { side: 'local', changedAt: new Date().toISOString(), reason: 'lifeboat local started' });
    expect((await request(`${router.url}/x`)).headers['x-lifeboat-side']).toBe('local');
    await expect(writeRouterState(stateFile, { side: 'nowhere' as 'local', changedAt: 'now' })).rejects.toBeInstanceOf(ValidationError);
  });

  it('refuses targets that are not http(s) URLs', async () => {
    await expect(startTrafficRouter({ host: '127.0.0.1', port: 0, targets: { local: 'localhost:3000', cloud: 'http://127.0.0.1:1' }, stateFile: '/tmp/x.json', logger })).rejects.toBeInstanceOf(
      ValidationError,
    );
  });
});

describe('createLocalAppScaler', () => {
  it('records the wanted minimum instances atomically; no file means 0; a garbled file is an error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lifeboat-scaler-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const stateFile = join(dir, 'cloud-app.json');
    const scaler = createLocalAppScaler({ stateFile, clock: () => new Date('2026-11-23T10:00:00.000Z') });
    expect(await scaler.minInstances()).toBe(0);
    expect(await scaler.setMinInstances(0)).toEqual({ changed: false, detail: 'local cloud copy already has min instances 0' });
    expect(await scaler.setMinInstances(1)).toEqual({ changed: true, detail: `local cloud copy: min instances 0 → 1 (${stateFile})` });
    expect(JSON.parse(await readFile(stateFile, 'utf8'))).toEqual({ minInstances: 1, changedAt: '2026-11-23T10:00:00.000Z' });
    expect(await scaler.minInstances()).toBe(1);
    expect((await scaler.setMinInstances(1)).changed).toBe(false);
    expect((await scaler.setMinInstances(0)).changed).toBe(true);
    expect(await scaler.minInstances()).toBe(0);
    await expect(scaler.setMinInstances(3 as 1)).rejects.toBeInstanceOf(ValidationError);

    await writeFile(stateFile, '{"minInstances": 5, "changedAt": "2026-11-23T10:00:00.000Z"}');
    const err = (await scaler.minInstances().catch((e: unknown) => e)) as ValidationError;
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.message).toContain(`app scale state file ${stateFile} is not valid`);
    expect(err.remedy).toContain(`Delete ${stateFile}`);
  });
});
