// Local mode's stand-ins for Cloud DNS and Cloud Run:
//
// - startTrafficRouter: an HTTP reverse proxy on localhost that sends every
//   request to the side named in a small JSON state file,
//   { side, changedAt, reason? }. Clients use the router's address the way
//   they would use the DNS name in cloud mode.
// - createFileTrafficSwitch: the TrafficSwitch that writes that file
//   (atomically: temp file, fsync, rename), from any process.
// - createLocalAppScaler: the AppScaler of local mode, which records the
//   wanted minimum instances in a JSON file.
//
// The router and the switch share nothing but the file, so they may run in
// different processes. The router notices a switch at once: before each
// request it stats the file, and the rename gives the file a new inode (and
// mtime), so the first request after pointAt() resolved already goes to the
// new side; an fs.watch on the directory additionally marks the cache stale,
// for file systems with coarse timestamps. A missing or garbled state file
// answers 503 (fail closed: the router never guesses a side); an upstream that
// refuses answers 502 naming the side.
//
// Bodies stream both ways (no buffering), every method passes, hop-by-hop
// headers are dropped, x-forwarded-for/-host/-proto are added, and every
// answer from a side carries `x-lifeboat-side`. Not supported: protocol
// upgrades (WebSocket), which get a 501.

import { randomBytes } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import http, { type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { basename, dirname } from 'node:path';
import { pipeline } from 'node:stream';
import { z } from 'zod';
import { ValidationError } from '../core/errors.ts';
import { createLogger, type Logger } from '../core/log.ts';
import type { AppScaler, ServingSide, TrafficSwitch } from '../core/ports.ts';

// ---------------------------------------------------------------------------
// State files

const routerStateSchema = z.object({
  side: z.enum(['local', 'cloud']),
  changedAt: z.iso.datetime({ offset: true }),
  reason: z.string().max(2_000).optional(),
});
export type RouterState = z.infer<typeof routerStateSchema>;

const appScaleStateSchema = z.object({
  minInstances: z.union([z.literal(0), z.literal(1)]),
  changedAt: z.iso.datetime({ offset: true }),
});
export type LocalAppScaleState = z.infer<typeof appScaleStateSchema>;

/** Writes a file so that readers see the old or the new content, never a part: temp file, fsync, rename, fsync of the directory. */
async function writeFileAtomically(path: string, content: string): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const temp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const handle = await open(temp, 'wx', 0o644);
  try {
    await handle.writeFile(content, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw err;
  }
  // The rename itself is durable only once the directory is synced (not possible on every platform).
  const dirHandle = await open(dir, 'r').catch(() => undefined);
  if (dirHandle) {
    await dirHandle.sync().catch(() => undefined);
    await dirHandle.close();
  }
}

/** A state file as read: its valid content, or what is wrong with it; `key` identifies the version read. */
export type StateFileRead<T> = { state: T; key: string } | { problem: string; missing: boolean; key: string };

/** Reads and validates a JSON state file; `key` identifies this version of the file (inode, size, mtime). */
async function readStateFile<T>(path: string, schema: z.ZodType<T>, what: string): Promise<StateFileRead<T>> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOENT') return { problem: `${what} ${path} does not exist`, missing: true, key: 'missing' };
    return { problem: `${what} ${path} cannot be read: ${(err as Error).message}`, missing: false, key: `error:${String(code)}` };
  }
  try {
    const info = await handle.stat();
    const key = versionKey(info);
    const text = await handle.readFile('utf8');
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      return { problem: `${what} ${path} is not valid JSON (${(err as Error).message})`, missing: false, key };
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) return { problem: `${what} ${path} is not valid: ${z.prettifyError(parsed.error).replace(/\n/g, ' ')}`, missing: false, key };
    return { state: parsed.data, key };
  } finally {
    await handle.close();
  }
}

function versionKey(info: { ino: number; size: number; mtimeMs: number; ctimeMs: number }): string {
  return `${info.ino}:${info.size}:${info.mtimeMs}:${info.ctimeMs}`;
}

/** The router's state: which side serves. Missing or invalid files are described in `problem`. */
export function readRouterState(stateFile: string): Promise<StateFileRead<RouterState>> {
  return readStateFile(stateFile, routerStateSchema, 'traffic router state file');
}

/** Writes the router's state atomically (the file switch uses it; local mode may write the first state with a reason). */
export async function writeRouterState(stateFile: string, state: RouterState): Promise<void> {
  const parsed = routerStateSchema.safeParse(state);
  if (!parsed.success) throw new ValidationError(`invalid traffic router state: ${z.prettifyError(parsed.error)}`);
  await writeFileAtomically(stateFile, `${JSON.stringify(parsed.data, null, 2)}\n`);
}

// ---------------------------------------------------------------------------
// The file traffic switch

export interface FileTrafficSwitchOptions {
  /** The router's state file (local mode: <state dir>/router.json). */
  stateFile: string;
  logger?: Logger;
  clock?: () => Date;
}

export interface FileTrafficSwitch extends TrafficSwitch {
  readonly stateFile: string;
}

export function createFileTrafficSwitch(opts: FileTrafficSwitchOptions): FileTrafficSwitch {
  const log = (opts.logger ?? createLogger({ component: 'traffic-switch' })).child({ stateFile: opts.stateFile });
  const clock = opts.clock ?? (() => new Date());
  return {
    stateFile: opts.stateFile,

    async pointAt(side: ServingSide): Promise<{ changed: boolean; detail: string }> {
      if (side !== 'local' && side !== 'cloud') throw new ValidationError(`pointAt: side must be 'local' or 'cloud', got ${JSON.stringify(side)}`);
      const current = await readRouterState(opts.stateFile);
      if ('state' in current && current.state.side === side) {
        return { changed: false, detail: `traffic router already sends requests to ${side} (since ${current.state.changedAt})` };
      }
      const changedAt = clock().toISOString();
      await writeRouterState(opts.stateFile, { side, changedAt });
      const before = 'state' in current ? current.state.side : current.missing ? 'nowhere (no state file)' : 'nowhere (invalid state file)';
      log.info('traffic router switched', { side, before, changedAt });
      return { changed: true, detail: `traffic router now sends requests to ${side} (was ${before})` };
    },

    async current(): Promise<ServingSide | 'unknown'> {
      const current = await readRouterState(opts.stateFile);
      if ('state' in current) return current.state.side;
      if (!current.missing) log.warn('traffic router state is unreadable; the router refuses requests', { problem: current.problem });
      return 'unknown';
    },
  };
}

// ---------------------------------------------------------------------------
// The local app scaler

export interface LocalAppScalerOptions {
  /** Local mode: <state dir>/cloud-app.json */
  stateFile: string;
  clock?: () => Date;
}

export interface LocalAppScaler extends AppScaler {
  readonly stateFile: string;
}

/**
 * AppScaler of local mode. It only records the wanted minimum instances:
 * local mode's supervisor (`lifeboat local`) watches this file and starts the
 * app's cloud copy as a local process at 1, and stops it at 0. No file means
 * the default 0, as a freshly deployed Cloud Run service has.
 */
export function createLocalAppScaler(opts: LocalAppScalerOptions): LocalAppScaler {
  const clock = opts.clock ?? (() => new Date());
  const read = async (): Promise<number> => {
    const current = await readStateFile(opts.stateFile, appScaleStateSchema, 'app scale state file');
    if ('state' in current) return current.state.minInstances;
    if (current.missing) return 0;
    throw new ValidationError(current.problem, {
      remedy: `Delete ${opts.stateFile} (the cloud copy then counts as scaled to zero) or write {"minInstances": 0 or 1, "changedAt": "<ISO time>"}.`,
    });
  };
  return {
    stateFile: opts.stateFile,
    minInstances: read,
    async setMinInstances(count: 0 | 1): Promise<{ changed: boolean; detail: string }> {
      if (count !== 0 && count !== 1) throw new ValidationError(`setMinInstances: count must be 0 or 1, got ${JSON.stringify(count)}`);
      const before = await read();
      if (before === count) return { changed: false, detail: `local cloud copy already has min instances ${count}` };
      const state: LocalAppScaleState = { minInstances: count, changedAt: clock().toISOString() };
      await writeFileAtomically(opts.stateFile, `${JSON.stringify(state, null, 2)}\n`);
      return { changed: true, detail: `local cloud copy: min instances ${before} → ${count} (${opts.stateFile})` };
    },
  };
}

// ---------------------------------------------------------------------------
// The router

export interface TrafficRouterOptions {
  /** Address to listen on, e.g. 127.0.0.1. */
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Base URLs of the two sides, e.g. http://127.0.0.1:3000. */
  targets: { local: string; cloud: string };
  stateFile: string;
  logger: Logger;
}

export interface TrafficRouter {
  /** http://host:port */
  readonly url: string;
  close(): Promise<void>;
}

// RFC 9110 §7.6.1: these describe one connection, never forwarded.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

function withoutHopByHop(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const listed = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter((h) => h !== ''),
  );
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || listed.has(name)) continue;
    out[name] = value;
  }
  return out;
}

function parseTarget(url: string, side: ServingSide): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ValidationError(`traffic router: the ${side} target ${JSON.stringify(url)} is not a URL`, { remedy: `Give the ${side} side as http://host:port.` });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ValidationError(`traffic router: the ${side} target ${url} is not http(s)`, { remedy: `Give the ${side} side as http://host:port.` });
  }
  if (parsed.search !== '' || parsed.hash !== '' || parsed.username !== '' || parsed.password !== '') {
    throw new ValidationError(`traffic router: the ${side} target ${parsed.origin} may only have a scheme, host, port and path`);
  }
  return parsed;
}

function sendPlain(res: ServerResponse, status: number, text: string, headers: OutgoingHttpHeaders = {}): void {
  const body = `${text}\n`;
  res.writeHead(status, { ...headers, 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

export async function startTrafficRouter(opts: TrafficRouterOptions): Promise<TrafficRouter> {
  const targets: Record<ServingSide, URL> = { local: parseTarget(opts.targets.local, 'local'), cloud: parseTarget(opts.targets.cloud, 'cloud') };
  const log = opts.logger.child({ stateFile: opts.stateFile });
  const agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };

  // The last state read, valid while the file's version key is the same and no watch event came.
  let cached: StateFileRead<RouterState> | undefined;
  let stale = true;
  let lastLogged = '';
  let watcher: FSWatcher | undefined;
  try {
    // The switch creates the directory on its first write; watching needs it now.
    await mkdir(dirname(opts.stateFile), { recursive: true });
    watcher = watch(dirname(opts.stateFile), { persistent: false }, (_event, filename) => {
      if (filename === null || filename === basename(opts.stateFile)) stale = true;
    });
    watcher.on('error', (err) => {
      log.warn('watching the state directory failed; the router still checks the file before every request', { err });
      watcher?.close();
      watcher = undefined;
    });
  } catch (err) {
    log.warn('cannot watch the state directory; the router still checks the file before every request', { err });
  }

  async function currentState(): Promise<StateFileRead<RouterState>> {
    if (!stale && cached !== undefined) {
      const info = await stat(opts.stateFile).catch(() => undefined);
      const key = info === undefined ? 'missing' : versionKey(info);
      if (key === cached.key) return cached;
    }
    stale = false;
    cached = await readRouterState(opts.stateFile);
    const summary = 'state' in cached ? `side:${cached.state.side}:${cached.state.changedAt}` : `problem:${cached.problem}`;
    if (summary !== lastLogged) {
      lastLogged = summary;
      if ('state' in cached) log.info('traffic router sends requests to ' + cached.state.side, { side: cached.state.side, changedAt: cached.state.changedAt, reason: cached.state.reason });
      else log.warn('traffic router refuses requests: no valid state', { problem: cached.problem });
    }
    return cached;
  }

  function forward(req: IncomingMessage, res: ServerResponse, side: ServingSide): void {
    const target = targets[side];
    const basePath = target.pathname.replace(/\/+$/, '');
    const path = `${basePath}${req.url?.startsWith('/') ? req.url : `/${req.url ?? ''}`}`;
    const headers = withoutHopByHop(req.headers);
    const clientAddress = req.socket.remoteAddress ?? '';
    const priorFor = req.headers['x-forwarded-for'];
    headers['x-forwarded-for'] = priorFor ? `${String(priorFor)}, ${clientAddress}` : clientAddress;
    headers['x-forwarded-host'] ??= req.headers.host ?? '';
    headers['x-forwarded-proto'] ??= 'http';
    headers.host = target.host;
    const transport = target.protocol === 'https:' ? https : http;
    const upstream = transport.request(
      {
        protocol: target.protocol,
        hostname: target.hostname,
        port: target.port,
        method: req.method,
        path,
        headers,
        agent: target.protocol === 'https:' ? agents.https : agents.http,
      },
      (upstreamRes) => {
        const responseHeaders = withoutHopByHop(upstreamRes.headers);
        responseHeaders['x-lifeboat-side'] = side;
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.statusMessage, responseHeaders);
        pipeline(upstreamRes, res, (err) => {
          if (err && !res.destroyed) res.destroy(err);
        });
      },
    );
    upstream.on('error', (err: Error & { code?: string }) => {
      if (res.headersSent) {
        // The answer had started: all a proxy can do is cut it, so the client sees it incomplete.
        res.destroy(err);
        return;
      }
      log.warn('upstream did not answer', { side, target: target.origin, err });
      sendPlain(res, 502, `lifeboat traffic router: the ${side} side (${target.origin}) did not answer: ${err.code ?? err.message}`, { 'x-lifeboat-side': side });
    });
    // The client went away before the request body was complete: drop the upstream request too.
    pipeline(req, upstream, (err) => {
      if (err) upstream.destroy(err);
    });
  }

  const server = http.createServer((req, res) => {
    currentState().then(
      (state) => {
        if ('problem' in state) {
          sendPlain(
            res,
            503,
            `lifeboat traffic router: no serving side: ${state.problem}. The router never guesses a side; the traffic switch (failover, failback, or lifeboat local at start) writes this file.`,
            { 'retry-after': '1' },
          );
          req.resume();
          return;
        }
        forward(req, res, state.state.side);
      },
      (err: unknown) => {
        log.error('traffic router failed to read its state', { err });
        sendPlain(res, 503, `lifeboat traffic router: cannot read ${opts.stateFile}: ${String(err)}`);
        req.resume();
      },
    );
  });
  server.on('upgrade', (_req: IncomingMessage, socket: Socket) => {
    socket.end('HTTP/1.1 501 Not Implemented\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nlifeboat traffic router: protocol upgrades (WebSocket) are not forwarded\n');
  });
  server.on('clientError', (_err, socket: Socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    else socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const hostInUrl = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${hostInUrl}:${address.port}`;
  log.info('traffic router listening', { url, local: targets.local.origin, cloud: targets.cloud.origin });

  return {
    url,
    close: () =>
      new Promise<void>((resolve, reject) => {
        watcher?.close();
        agents.http.destroy();
        agents.https.destroy();
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}
