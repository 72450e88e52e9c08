// The agent's local HTTP endpoints: /healthz, /status (JSON) and /metrics
// (Prometheus). Everything served passes through the same redaction as the
// logs, so a connection string with a password can never leak here.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { redact } from '../core/log.ts';
import { formatPrometheusText, type Metric } from './prometheus-text.ts';

export interface Health {
  readonly ok: boolean;
  /** A sentence: why the agent is (un)healthy. */
  readonly reason: string;
}

export interface StatusSources {
  health(): Health;
  /** JSON-able status; bigints are written as decimal strings. */
  status(): unknown;
  metrics(): readonly Metric[];
}

export interface StatusServer {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

function toJson(value: unknown): string {
  return JSON.stringify(redact(value), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2);
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store' });
  res.end(body);
}

function handle(sources: StatusSources, req: IncomingMessage, res: ServerResponse): void {
  const path = new URL(req.url ?? '/', 'http://agent').pathname;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    send(res, 405, 'text/plain; charset=utf-8', `${req.method} not allowed: the agent's endpoints are read-only (GET)\n`);
    return;
  }
  try {
    switch (path) {
      case '/healthz': {
        const h = sources.health();
        send(res, h.ok ? 200 : 503, 'application/json', toJson(h));
        return;
      }
      case '/status':
        send(res, 200, 'application/json', toJson(sources.status()));
        return;
      case '/metrics':
        send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', formatPrometheusText(sources.metrics()));
        return;
      default:
        send(res, 404, 'text/plain; charset=utf-8', `no endpoint ${path}: try /healthz, /status or /metrics\n`);
    }
  } catch (err) {
    send(res, 500, 'text/plain; charset=utf-8', `status endpoint failed: ${err instanceof Error ? err.message : String(err)}\n`);
  }
}

/** Listens on host:port (port 0 picks a free one). */
export async function startStatusServer(host: string, port: number, sources: StatusSources): Promise<StatusServer> {
  const server = createServer((req, res) => handle(sources, req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `http://${host}:${actual}`,
    port: actual,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
