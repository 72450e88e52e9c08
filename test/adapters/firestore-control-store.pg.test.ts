// FirestoreControlStore and the failover runner on the real Firestore
// emulator: compare-and-set, the audit trail, and two runners racing.
import type { Firestore } from '@google-cloud/firestore';
import { afterAll, describe, expect, it } from 'vitest';
import { controlDocumentFor, FirestoreControlStore } from '../../adapters/firestore-control-store.ts';
import { connectFirestore, FirestoreLeaseStore } from '../../adapters/firestore-lease-store.ts';
import { initialControlRecord } from '../../core/control-record.ts';
import { ValidationError } from '../../core/errors.ts';
import type { ControllerSettings } from '../../core/failover-controller.ts';
import { createLogger } from '../../core/log.ts';
import { LeaseClient } from '../../core/writer-lease.ts';
import { FailoverRunner } from '../../functions/failover-runner.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const clients: Firestore[] = [];
const settings: ControllerSettings = {
  lease: { ttlSeconds: 30, clockSkewMarginSeconds: 5 },
  probe: { failureThreshold: 2, recheckIntervalSeconds: 1, heartbeatStaleSeconds: 30 },
  failover: { auto: true, failback: 'manual', drainTimeoutSeconds: 60 },
};
const silent = createLogger({ component: 'test', sink: () => {} });

function firestore(): Firestore {
  const db = connectFirestore({ projectId: uniqueProjectId('control'), emulatorHost: stack.firestoreEmulatorHost });
  clients.push(db);
  return db;
}

afterAll(async () => {
  await Promise.all(clients.map((c) => Promise.race([c.terminate(), new Promise((r) => setTimeout(r, 2000))])));
});

describe('FirestoreControlStore on the emulator', () => {
  it('creates only if absent, then updates only from the version read', async () => {
    const store = new FirestoreControlStore({ firestore: firestore(), document: controlDocumentFor('lifeboat/lease-main', 'main') });
    expect(await store.read()).toBeUndefined();
    const rec = initialControlRecord(1_000);
    const created = await store.compareAndSet(null, rec);
    expect(created.ok).toBe(true);
    expect((await store.compareAndSet(null, rec)).ok).toBe(false);
    const read = await store.read();
    expect(read?.record).toEqual(rec);
    const v = created.ok ? created.version : '';
    const moved = await store.compareAndSet(v, { ...rec, updatedAt: 2_000, pendingOperator: { command: 'failover', requestedAt: 2_000, requestedBy: 'alice' } });
    expect(moved.ok).toBe(true);
    // The old version no longer matches.
    expect((await store.compareAndSet(v, { ...rec, updatedAt: 3_000 })).ok).toBe(false);
    expect((await store.read())?.record.pendingOperator?.requestedBy).toBe('alice');
  });

  it('keeps the audit trail newest first and refuses a malformed record', async () => {
    const db = firestore();
    const store = new FirestoreControlStore({ firestore: db, document: 'lifeboat/control-x' });
    for (let i = 1; i <= 3; i++) {
      await store.append({ kind: 'probe', at: i * 1000, runner: 'test', outcome: i === 2 ? 'failed' : 'ok', latencyMs: 5, ...(i === 2 && { detail: 'HTTP 503' }) });
    }
    await store.append({ kind: 'decision', at: 4000, runner: 'test', phase: 'normal', nextPhase: 'normal', action: 'record-probe', reason: 'the app answered', outcome: 'ok', epoch: 1 });
    const probes = await store.recent('probe', 2);
    expect(probes.map((p) => p.at)).toEqual([3000, 2000]);
    expect((await store.recent('decision', 5)).map((d) => d.kind === 'decision' && d.reason)).toEqual(['the app answered']);
    await db.doc('lifeboat/control-x').set({ state: { phase: 'sideways' } });
    await expect(store.read()).rejects.toThrow(ValidationError);
    await expect(store.read()).rejects.toThrow(/control record lifeboat\/control-x is not valid/);
  });

  it('two runners racing on the emulator: exactly one acts per cycle, and the cloud is promoted once', async () => {
    const db = firestore();
    const leaseStore = new FirestoreLeaseStore({ firestore: db, document: 'lifeboat/lease-main' });
    const control = new FirestoreControlStore({ firestore: db, document: 'lifeboat/control-main' });
    // A local lease that expired long ago: the cloud may take it.
    const past = Date.now() - 120_000;
    await new LeaseClient({ store: leaseStore, timing: settings, clock: () => past }).acquireOrRenew('local');
    const promoted: number[] = [];
    const runner = (name: string) =>
      new FailoverRunner({
        stream: 'main',
        runner: name,
        settings,
        store: control,
        lease: new LeaseClient({ store: leaseStore, timing: settings }),
        probe: async () => ({ outcome: 'failed', latencyMs: 1, detail: 'connection refused' }),
        target: { observe: async () => ({ appliedLsn: 0x100n, lastAppliedAt: past }) },
        steps: {
          'write-epoch-to-target': async (a) => {
            if (a.kind === 'write-epoch-to-target') promoted.push(a.epoch);
          },
        },
        logger: silent,
      });
    const a = runner('run-a');
    const b = runner('run-b');
    // Both run every cycle at the same moment; set-sequences has no handler here, so they stop there (deferred).
    for (let i = 0; i < 6; i++) await Promise.all([a.cycle(), b.cycle()]);
    expect((await control.read())?.record.state).toMatchObject({ phase: 'failing-over', step: 'set-sequences', epoch: 2 });
    const lease = await leaseStore.read();
    expect(lease?.lease).toMatchObject({ holder: 'cloud', epoch: 2 });
    expect(promoted).toEqual([2]);
    const decisions = await control.recent('decision', 50);
    const promotions = decisions.filter((d) => d.kind === 'decision' && d.action === 'promote-cloud' && d.outcome === 'ok');
    expect(promotions).toHaveLength(1);
  });
});
