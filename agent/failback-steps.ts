// The failback steps that run on the local side (`lifeboat failback`): they
// need the local database, which the cloud's probe function cannot reach.
//
//   save-stranded-tail        collect local transactions the cloud never got;
//                             save them as JSON + SQL; apply nothing
//   start-reverse-sync        cloud → local: copy, then stream (ReverseSync)
//   verify                    per-table row counts and checksums, both sides
//   resume-forward-streaming  after the drain: a new forward slot, the agent's
//                             state file, the target's watermark rebased
//
// and the local-health observation: the local database and app answer, and
// how far reverse sync has come. The reverse sync lives in this process; a
// failback command that starts in the middle of a failback starts it again
// (restartReverseSync), which copies again from a new snapshot.
import pg from 'pg';
import type { LifeboatConfig } from '../core/config.ts';
import { describeError, PermanentError } from '../core/errors.ts';
import type { Action, ProbeResult } from '../core/failover-controller.ts';
import type { Logger } from '../core/log.ts';
import type { ObjectStore } from '../core/ports.ts';
import type { LocalHealth, StepHandlers, StepResult } from '../functions/failover-runner.ts';
import { ReverseSync, resumeForwardStreaming, type ReverseReplicationNames } from './reverse-sync.ts';
import { collectStrandedTail, saveStrandedTail } from './stranded-tail.ts';
import { verifyTables } from './table-verify.ts';

export interface FailbackSideOptions {
  readonly config: LifeboatConfig;
  /** The local (source) database URL. */
  readonly localUrl: string;
  /** The cloud (target) database URL, as a role that may create a publication and a slot. */
  readonly cloudUrl: string;
  /** Where the agent keeps its state file. */
  readonly stateDir: string;
  readonly objectStore: ObjectStore;
  /** The local app's health check, when one is configured. */
  readonly appHealth?: () => Promise<ProbeResult>;
  readonly logger: Logger;
  readonly clock?: () => number;
}

export interface FailbackSide {
  readonly steps: StepHandlers;
  localHealth(): Promise<LocalHealth>;
  /** Starts reverse sync again (a failback resumed by a new process). */
  restartReverseSync(epoch: number): Promise<void>;
  close(): Promise<void>;
}

/** The reverse slot and publication on the cloud, named after the stream. */
export function reverseNames(config: LifeboatConfig): ReverseReplicationNames & { readonly slot: string; readonly publication: string } {
  const suffix = config.stream.replace(/[^a-z0-9_]/g, '_');
  return { cloudUrl: config.target.databaseUrl!, slot: `lifeboat_reverse_${suffix}`.slice(0, 63), publication: `lifeboat_reverse_${suffix}`.slice(0, 63) } as ReverseReplicationNames & {
    slot: string;
    publication: string;
  };
}

function want<K extends Action['kind']>(action: Action, kind: K): Extract<Action, { kind: K }> {
  if (action.kind !== kind) throw new PermanentError(`the ${kind} step was handed a ${action.kind} action`);
  return action as Extract<Action, { kind: K }>;
}

async function withClient<T>(url: string, name: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url, application_name: name });
  c.on('error', () => {});
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

export function createFailbackSide(o: FailbackSideOptions): FailbackSide {
  const { config, logger } = o;
  const clock = o.clock ?? Date.now;
  const names = reverseNames(config);
  let reverse: ReverseSync | undefined;

  const startReverse = async (epoch: number) => {
    await reverse?.stop();
    reverse = new ReverseSync({ cloudUrl: o.cloudUrl, localUrl: o.localUrl, stream: config.stream, slot: names.slot, publication: names.publication, epoch, logger });
    await reverse.start();
  };

  const steps: StepHandlers = {
    'save-stranded-tail': async (action): Promise<StepResult> => {
      const { epoch } = want(action, 'save-stranded-tail');
      const tail = await withClient(o.localUrl, 'lifeboat-failback', (source) =>
        withClient(o.cloudUrl, 'lifeboat-failback', (target) =>
          collectStrandedTail({ source, target, stream: config.stream, slot: config.source.slot, publication: config.source.publication, logger }),
        ),
      );
      const saved = await saveStrandedTail(tail, { objectStore: o.objectStore, prefix: config.storage.reportsPrefix, stream: config.stream, epoch, now: new Date(clock()), logger });
      return {
        detail: `${saved.transactions} stranded transaction(s), ${saved.rows} row(s), saved to ${saved.jsonUri} and ${saved.sqlUri}; none was applied (apply them only if you decide to)`,
      };
    },
    'start-reverse-sync': async (action): Promise<StepResult> => {
      const { epoch } = want(action, 'start-reverse-sync');
      await startReverse(epoch);
      return { detail: reverse!.status().detail };
    },
    verify: async (): Promise<StepResult> => {
      const result = await withClient(o.localUrl, 'lifeboat-verify', (local) => withClient(o.cloudUrl, 'lifeboat-verify', (cloud) => verifyTables(local, cloud)));
      return { verify: { equal: result.equal, detail: result.detail }, detail: result.detail };
    },
    'resume-forward-streaming': async (action): Promise<StepResult> => {
      const { epoch } = want(action, 'resume-forward-streaming');
      if (reverse) {
        // The cloud is fenced: drain what it committed up to now, then stop reading it.
        const drained = await reverse.drain({ timeoutMs: config.failover.drainTimeoutSeconds * 1000 });
        logger.info('reverse sync drained', { appliedLsn: String(drained.appliedLsn) });
        await reverse.stop();
        reverse = undefined;
      }
      const r = await withClient(o.cloudUrl, 'lifeboat-failback', (targetClient) =>
        resumeForwardStreaming({
          localUrl: o.localUrl,
          stream: config.stream,
          slot: config.source.slot,
          publication: config.source.publication,
          stateDir: o.stateDir,
          targetClient,
          epoch,
          reverse: names,
          logger,
        }),
      );
      return { detail: `new forward slot ${r.slot} at ${String(r.consistentLsn)}; the agent streams from there at its next start` };
    },
  };

  return {
    steps,
    restartReverseSync: startReverse,
    async localHealth(): Promise<LocalHealth> {
      const problems: string[] = [];
      try {
        await withClient(o.localUrl, 'lifeboat-failback-health', (c) => c.query('SELECT 1'));
      } catch (err) {
        problems.push(`the local database does not answer (${describeError(err)})`);
      }
      if (o.appHealth) {
        // The app must be up, but while local is fenced it cannot use its database (CONNECT is revoked),
        // so any HTTP answer counts: only no answer at all means the home side is not back.
        const p = await o.appHealth();
        const answered = p.outcome === 'ok' || (p.outcome === 'failed' && p.detail?.startsWith('HTTP ') === true);
        if (!answered) problems.push(`the local app does not answer (${p.outcome === 'timeout' ? 'timed out' : (p.detail ?? 'no detail')})`);
      }
      const rs = reverse?.status();
      const sync = rs ? rs.detail : 'reverse sync is not running in this process';
      if (problems.length > 0) return { healthy: false, caughtUp: false, detail: `${problems.join('; ')}; ${sync}` };
      return { healthy: true, caughtUp: rs?.caughtUp ?? false, detail: `local answers; ${sync}` };
    },
    async close() {
      await reverse?.stop();
      reverse = undefined;
    },
  };
}
