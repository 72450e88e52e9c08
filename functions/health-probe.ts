// The app-health signal of the probe: one GET of the health URL, bounded by
// probe.timeoutMs. Only a 2xx answer in time counts as healthy; the detail
// says what was seen (HTTP status, refused, timed out) for the reason sentence.
import type { ProbeResult } from '../core/failover-controller.ts';

export interface HttpHealthProbeOptions {
  readonly url: string;
  readonly timeoutMs: number;
  readonly clock?: () => number;
}

const CAUSES: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'DNS lookup failed',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  UND_ERR_SOCKET: 'connection closed',
};

export function createHttpHealthProbe(opts: HttpHealthProbeOptions): () => Promise<ProbeResult> {
  const clock = opts.clock ?? (() => performance.now());
  return async () => {
    const started = clock();
    const signal = AbortSignal.timeout(opts.timeoutMs);
    try {
      const res = await fetch(opts.url, { signal, redirect: 'manual', headers: { 'user-agent': 'lifeboat-probe' } });
      // Drain the body so the connection is released; its content does not matter.
      await res.arrayBuffer().catch(() => undefined);
      const latencyMs = Math.max(0, clock() - started);
      if (res.status >= 200 && res.status < 300) return { outcome: 'ok', latencyMs };
      return { outcome: 'failed', latencyMs, detail: `HTTP ${res.status}` };
    } catch (err) {
      const latencyMs = Math.max(0, clock() - started);
      if (signal.aborted) return { outcome: 'timeout', latencyMs, detail: `no answer within ${opts.timeoutMs} ms` };
      const cause = (err as { cause?: { code?: unknown } }).cause;
      const code = typeof cause?.code === 'string' ? cause.code : undefined;
      return { outcome: 'failed', latencyMs, detail: code ? (CAUSES[code] ?? code) : err instanceof Error ? err.message : String(err) };
    }
  };
}
