// A local HTTP server on 127.0.0.1 that records every request and answers
// through a handler. Official Google clients without an emulator (Cloud
// Storage, Cloud DNS, Cloud Run Admin) are pointed at it so adapter tests can
// assert the exact calls they make. Test-only; generic on purpose: each test
// implements just enough of its API in the handler.
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedCall {
  method: string;
  /** The path without the query, percent-decoded. */
  path: string;
  /** The path as sent, percent-encoding kept. */
  rawPath: string;
  /** Query parameters; a repeated parameter keeps its last value (all values in `url.searchParams`). */
  query: Record<string, string>;
  url: URL;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The body as UTF-8. */
  text: string;
}

export interface Reply {
  status?: number;
  headers?: Record<string, string>;
  /** A string or Buffer is sent as is; anything else as JSON. */
  body?: unknown;
  /** Drop the connection without answering (a network failure). */
  destroy?: boolean;
}

export type Handler = (call: RecordedCall) => Reply | Promise<Reply>;

export interface Route {
  method: string;
  /** A regex matched against the decoded path, or an exact path. */
  path: RegExp | string;
  handle: (call: RecordedCall, match: RegExpExecArray) => Reply | Promise<Reply>;
}

export interface RecordingServer {
  /** http://127.0.0.1:PORT */
  url: string;
  port: number;
  /** Every request so far, in arrival order. */
  calls: RecordedCall[];
  /** Requests that no route answered (also recorded in calls). */
  unmatched: RecordedCall[];
  close(): Promise<void>;
}

// Replies that routes() made because nothing matched.
const noRouteReplies = new WeakSet<Reply>();

/** A handler from a route table; an unmatched request gets a 404 naming it (and lands in `unmatched`). */
export function routes(table: readonly Route[]): Handler {
  return (call) => {
    for (const route of table) {
      if (route.method !== call.method) continue;
      const match = typeof route.path === 'string' ? (route.path === call.path ? [call.path] : null) : route.path.exec(call.path);
      if (match) return route.handle(call, match as RegExpExecArray);
    }
    const reply: Reply = { status: 404, body: { error: { code: 404, message: `recording server: no route for ${call.method} ${call.rawPath}` } } };
    noRouteReplies.add(reply);
    return reply;
  };
}

function send(res: ServerResponse, reply: Reply): void {
  const headers: Record<string, string> = { ...reply.headers };
  let payload: Buffer;
  if (reply.body === undefined) payload = Buffer.alloc(0);
  else if (Buffer.isBuffer(reply.body)) payload = reply.body;
  else if (typeof reply.body === 'string') payload = Buffer.from(reply.body, 'utf8');
  else {
    payload = Buffer.from(JSON.stringify(reply.body), 'utf8');
    headers['content-type'] ??= 'application/json; charset=utf-8';
  }
  headers['content-length'] = String(payload.length);
  res.writeHead(reply.status ?? 200, headers);
  res.end(payload);
}

export async function startRecordingServer(handler: Handler | readonly Route[]): Promise<RecordingServer> {
  const handle = typeof handler === 'function' ? handler : routes(handler);
  const calls: RecordedCall[] = [];
  const unmatched: RecordedCall[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const body = Buffer.concat(chunks);
      let path: string;
      try {
        path = decodeURIComponent(url.pathname);
      } catch {
        path = url.pathname;
      }
      const call: RecordedCall = {
        method: req.method ?? 'GET',
        path,
        rawPath: url.pathname,
        query: Object.fromEntries(url.searchParams),
        url,
        headers: req.headers,
        body,
        text: body.toString('utf8'),
      };
      calls.push(call);
      Promise.resolve()
        .then(() => handle(call))
        .then(
          (reply) => {
            if (noRouteReplies.has(reply)) unmatched.push(call);
            if (reply.destroy) req.socket.destroy();
            else send(res, reply);
          },
          (err: unknown) => send(res, { status: 500, body: { error: { code: 500, message: `recording server handler failed: ${String(err)}` } } }),
        );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    calls,
    unmatched,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}
