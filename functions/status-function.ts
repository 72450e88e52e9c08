// The status function: one GET that answers what `lifeboat status` and the
// status page show: the controller's phase and state, the lease, the
// target's watermark and fencing epoch, the last decisions with their
// sentences, and the probe history. Read-only; each part that cannot be read
// is reported as such (with the error) instead of failing the whole answer.
import type { ControlStore } from '../core/control-record.ts';
import { describeError } from '../core/errors.ts';
import { formatLsn } from '../core/lsn.ts';
import type { LeaseClient } from '../core/writer-lease.ts';
import type { StreamState } from './apply-engine.ts';

export interface StatusDeps {
  readonly stream: string;
  readonly mode: 'local' | 'cloud';
  readonly store: ControlStore;
  readonly lease: Pick<LeaseClient, 'read'>;
  /** The stream's row on the target, or undefined when nothing was applied yet. */
  readonly streamState: () => Promise<StreamState | undefined>;
  readonly clock?: () => number;
}

type Part<T> = T | { readonly error: string };

async function part<T>(fn: () => Promise<T>): Promise<Part<T>> {
  try {
    return await fn();
  } catch (err) {
    return { error: describeError(err) };
  }
}

const iso = (ms: number | null | undefined) => (ms === null || ms === undefined ? null : new Date(ms).toISOString());

/** The status document (JSON-ready). */
export async function readStatus(deps: StatusDeps, historyLimit = 20) {
  const now = (deps.clock ?? Date.now)();
  const [control, lease, stream, decisions, probes] = await Promise.all([
    part(() => deps.store.read()),
    part(() => deps.lease.read()),
    part(() => deps.streamState()),
    part(() => deps.store.recent('decision', historyLimit)),
    part(() => deps.store.recent('probe', historyLimit)),
  ]);
  const record = control && !('error' in control) ? control.record : undefined;
  return {
    stream: deps.stream,
    mode: deps.mode,
    at: iso(now),
    phase: record?.state.phase ?? (control && 'error' in control ? 'unknown' : 'normal'),
    controller:
      control && 'error' in control
        ? control
        : {
            state: record?.state ?? null,
            pendingOperator: record?.pendingOperator ?? null,
            lastDecision: record?.lastDecision ? { ...record.lastDecision, at: iso(record.lastDecision.at) } : null,
            lastStepError: record?.lastStepError ?? null,
          },
    lease:
      lease && 'error' in lease
        ? lease
        : lease === undefined
          ? null
          : {
              holder: lease.lease.holder,
              epoch: lease.lease.epoch,
              expiresAt: iso(lease.lease.leaseExpiresAt),
              renewedAt: iso(lease.lease.renewedAt),
              releasedAt: iso(lease.lease.releasedAt),
              markerLsn: lease.lease.markerLsn,
              takeoverRequestedBy: lease.lease.takeoverRequestedBy,
              changeReason: lease.lease.changeReason,
            },
    target:
      stream && 'error' in stream
        ? stream
        : stream === undefined
          ? null
          : {
              appliedLsn: stream.watermark === null ? null : formatLsn(stream.watermark),
              appliedAt: stream.appliedAt?.toISOString() ?? null,
              lagSeconds: stream.appliedAt ? Math.max(0, (now - stream.appliedAt.getTime()) / 1000) : null,
              fencingEpoch: stream.epoch,
              writerEpoch: stream.writerEpoch,
              halted: stream.halted,
              halt: stream.halt,
            },
    decisions: 'error' in decisions ? decisions : decisions.map((d) => ({ ...d, at: iso(d.at) })),
    probes: 'error' in probes ? probes : probes.map((p) => ({ ...p, at: iso(p.at) })),
  };
}

export type StatusDocument = Awaited<ReturnType<typeof readStatus>>;

interface Req {
  readonly method?: string;
  readonly query?: Record<string, unknown>;
}
interface Res {
  status(code: number): Res;
  set(name: string, value: string): Res;
  send(body: string): unknown;
}

export function createStatusHandler(deps: () => StatusDeps) {
  return async (req: Req, res: Res): Promise<void> => {
    if (req.method !== undefined && req.method !== 'GET') {
      res.status(405).set('allow', 'GET').set('content-type', 'application/json').send(JSON.stringify({ error: 'the status function only answers GET' }));
      return;
    }
    try {
      const doc = await readStatus(deps());
      res.status(200).set('content-type', 'application/json').set('cache-control', 'no-store').send(JSON.stringify(doc, null, 2));
    } catch (err) {
      res.status(500).set('content-type', 'application/json').send(JSON.stringify({ error: describeError(err) }));
    }
  };
}
