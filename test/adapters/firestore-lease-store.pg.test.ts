// FirestoreLeaseStore against the real Firestore emulator of the local stack.
import { Firestore, Timestamp } from '@google-cloud/firestore';
import { afterAll, describe, expect, it } from 'vitest';
import {
  connectFirestore,
  FirestoreLeaseStore,
  formatLeaseVersion,
  leaseStoreError,
  parseLeaseVersion,
} from '../../adapters/firestore-lease-store.ts';
import { PermanentError, RetryableError, ValidationError } from '../../core/errors.ts';
import { createLease, LeaseClient, renew, takeOver, type Lease, type LeaseTiming } from '../../core/writer-lease.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

const stack = getStack();
const timing: LeaseTiming = { lease: { ttlSeconds: 30, clockSkewMarginSeconds: 5 } };
const clients: Firestore[] = [];

function firestore(projectId: string): Firestore {
  const db = connectFirestore({ projectId, emulatorHost: stack.firestoreEmulatorHost });
  clients.push(db);
  return db;
}

let docCounter = 0;
function freshStore(projectId = uniqueProjectId('lease')): { store: FirestoreLeaseStore; projectId: string; document: string } {
  docCounter += 1;
  const document = `lifeboat/lease-${docCounter}`;
  return { store: new FirestoreLeaseStore({ firestore: firestore(projectId), document }), projectId, document };
}

/** A local lease renewed `agoMs` before now (real clock, as the stores' users run). */
const localLease = (agoMs: number, epoch = 1): Lease => ({ ...createLease('local', Date.now() - agoMs, timing, 'local created the lease at epoch 1'), epoch });

afterAll(async () => {
  await Promise.all(clients.map((c) => c.terminate()));
});

describe('FirestoreLeaseStore on the emulator', () => {
  it('reads nothing before the lease exists, then creates it only if absent', async () => {
    const { store } = freshStore();
    expect(await store.read()).toBeUndefined();
    const lease = localLease(0);
    const created = await store.compareAndSet(null, lease);
    expect(created.ok).toBe(true);
    const snap = await store.read();
    expect(snap).toEqual({ lease, version: created.ok ? created.version : '' });
    const again = await store.compareAndSet(null, localLease(0, 5));
    expect(again).toEqual({ ok: false, current: snap });
  });

  it('renews at the current version, and a stale version loses with the current lease', async () => {
    const { store } = freshStore();
    const first = await store.compareAndSet(null, localLease(1000));
    if (!first.ok) throw new Error('create failed');
    const renewed = renew((await store.read())!.lease, 'local', Date.now(), timing);
    const second = await store.compareAndSet(first.version, renewed);
    expect(second.ok).toBe(true);
    expect(second.ok && second.version).not.toBe(first.version);
    const stale = await store.compareAndSet(first.version, renew(renewed, 'local', Date.now() + 1, timing));
    expect(stale).toEqual({ ok: false, current: { lease: renewed, version: second.ok ? second.version : '' } });
  });

  it('a lease written with nulls and big millisecond times reads back identically', async () => {
    const { store } = freshStore();
    const lease: Lease = { ...localLease(0, 42), takeoverRequestedAt: null, releasedAt: Date.now(), markerLsn: '16/B374D848' };
    await store.compareAndSet(null, lease);
    expect((await store.read())?.lease).toEqual(lease);
  });

  it('LeaseClient over it: create, renew, refuse a valid takeover, take over after expiry', async () => {
    const { store } = freshStore();
    const local = new LeaseClient({ store, timing });
    expect((await local.acquireOrRenew('local')).change).toBe('created');
    expect((await local.acquireOrRenew('local')).change).toBe('renewed');
    const cloud = new LeaseClient({ store, timing });
    const early = await cloud.tryTakeOver('cloud', '3 probes failed', { expectedEpoch: 1 });
    expect(early).toMatchObject({ ok: false, change: 'refused' });
    expect(early.sentence).toMatch(/^local holds the lease at epoch 1, valid until .*; it can be taken only after the 5 s clock-skew margin/);
    // The same cloud 36 s later (a clock passed in, the store is real).
    const later = new LeaseClient({ store, timing, clock: () => Date.now() + 36_000 });
    const taken = await later.tryTakeOver('cloud', '3 probes failed', { expectedEpoch: 1 });
    expect(taken).toMatchObject({ ok: true, change: 'taken-over', lease: { holder: 'cloud', epoch: 2 } });
    expect((await store.read())?.lease).toMatchObject({ holder: 'cloud', epoch: 2 });
    expect(await local.acquireOrRenew('local')).toMatchObject({ ok: false, sentence: 'local does not hold the lease: cloud holds it at epoch 2' });
  });

  it('200 concurrent takeovers from one version across 4 clients: exactly one wins, the rest see its lease', async () => {
    const projectId = uniqueProjectId('lease-race');
    const document = 'lifeboat/lease-race';
    const stores = [0, 1, 2, 3].map(() => new FirestoreLeaseStore({ firestore: firestore(projectId), document }));
    const created = await stores[0]!.compareAndSet(null, localLease(100_000, 6));
    if (!created.ok) throw new Error('create failed');
    const base = (await stores[0]!.read())!;
    const attempts = Array.from({ length: 200 }, (_, i) =>
      stores[i % 4]!.compareAndSet(base.version, takeOver(base.lease, 'cloud', Date.now(), timing, `attempt ${i}`)),
    );
    const results = await Promise.all(attempts);
    const winners = results.filter((r) => r.ok);
    expect(winners).toHaveLength(1);
    const final = (await stores[1]!.read())!;
    expect(final.lease).toMatchObject({ holder: 'cloud', epoch: 7 });
    for (const r of results) if (!r.ok) expect(r.current).toEqual(final);
  });

  it('4 clients racing through many epochs: exactly one winner per epoch, epochs without gaps', async () => {
    const projectId = uniqueProjectId('lease-epochs');
    const document = 'lifeboat/lease-epochs';
    const stores = [0, 1, 2, 3].map(() => new FirestoreLeaseStore({ firestore: firestore(projectId), document }));
    await stores[0]!.compareAndSet(null, localLease(0, 1));
    const wins = new Map<number, string[]>();
    // Each client, 12 times: read, then hand the lease to the other side at the next epoch.
    await Promise.all(
      stores.map(async (store, c) => {
        for (let i = 0; i < 12; i++) {
          const snap = (await store.read())!;
          const to = snap.lease.holder === 'local' ? 'cloud' : 'local';
          const next = { ...createLease(to, Date.now(), timing, `client ${c} attempt ${i}`), epoch: snap.lease.epoch + 1 };
          const r = await store.compareAndSet(snap.version, next);
          if (r.ok) wins.set(next.epoch, [...(wins.get(next.epoch) ?? []), `client ${c}`]);
        }
      }),
    );
    const final = (await stores[0]!.read())!.lease;
    expect([...wins.values()].every((w) => w.length === 1)).toBe(true);
    expect([...wins.keys()].sort((a, b) => a - b)).toEqual(Array.from({ length: final.epoch - 1 }, (_, i) => i + 2));
    expect(wins.size).toBeGreaterThanOrEqual(12);
  });

  it('a document that is not a lease is a ValidationError naming what is wrong', async () => {
    const { store, projectId, document } = freshStore();
    await firestore(projectId).doc(document).set({ holder: 'martian', epoch: 1 });
    await expect(store.read()).rejects.toThrow(ValidationError);
    await expect(store.read()).rejects.toThrow(/invalid lease document lifeboat\/lease-\d+: holder: .*; leaseExpiresAt/);
  });

  it('refuses to write an invalid lease, and an invalid version', async () => {
    const { store } = freshStore();
    await expect(store.compareAndSet(null, { ...localLease(0), epoch: 0 })).rejects.toThrow(ValidationError);
    await expect(store.compareAndSet('yesterday', localLease(0))).rejects.toThrow(/invalid lease version "yesterday"/);
  });

  it('an unreachable Firestore gives a RetryableError within the request timeout', async () => {
    // The client follows FIRESTORE_EMULATOR_HOST whatever host it is given: leave it out while constructing.
    const saved = process.env.FIRESTORE_EMULATOR_HOST;
    delete process.env.FIRESTORE_EMULATOR_HOST;
    let db: Firestore;
    try {
      db = new Firestore({ projectId: uniqueProjectId('lease-down'), host: '127.0.0.1:9', ssl: false });
    } finally {
      process.env.FIRESTORE_EMULATOR_HOST = saved;
    }
    // Not terminated: terminate() waits for the client's own retries of the abandoned calls (up to 10 minutes).
    const store = new FirestoreLeaseStore({ firestore: db, document: 'lifeboat/lease-main', requestTimeoutMs: 1500 });
    await expect(store.read()).rejects.toBeInstanceOf(RetryableError);
    await expect(store.compareAndSet(null, localLease(0))).rejects.toThrow(/lease store: .*lifeboat\/lease-main/);
  });
});

describe('lease store errors and versions (no emulator needed)', () => {
  it('maps gRPC codes: transient ones retryable, permissions permanent with the role to grant', () => {
    const grpc = (code: number, message: string) => Object.assign(new Error(message), { code });
    expect(leaseStoreError('update', 'lifeboat/lease-main', grpc(14, 'connect ECONNREFUSED'))).toBeInstanceOf(RetryableError);
    expect(leaseStoreError('update', 'lifeboat/lease-main', grpc(4, 'deadline'))).toBeInstanceOf(RetryableError);
    const denied = leaseStoreError('update', 'lifeboat/lease-main', grpc(7, 'Missing or insufficient permissions.'));
    expect(denied).toBeInstanceOf(PermanentError);
    expect(denied.message).toBe('lease store: update of lifeboat/lease-main failed (PERMISSION_DENIED): Missing or insufficient permissions.');
    expect((denied as PermanentError).remedy).toMatch(/roles\/datastore\.user/);
    expect(leaseStoreError('read', 'x/y', grpc(3, 'bad'))).toBeInstanceOf(PermanentError);
    expect(leaseStoreError('read', 'x/y', Object.assign(new Error('reset'), { code: 'ECONNRESET' }))).toBeInstanceOf(RetryableError);
    expect(leaseStoreError('read', 'x/y', new TypeError('not a document'))).toBeInstanceOf(PermanentError);
  });

  it('a version keeps the nanoseconds and parses back', () => {
    const t = new Timestamp(1_795_000_000, 1_234);
    expect(formatLeaseVersion(t)).toBe('1795000000.000001234');
    expect(parseLeaseVersion('1795000000.000001234').isEqual(t)).toBe(true);
  });

  it('refuses a document path with an odd number of segments', () => {
    expect(() => new FirestoreLeaseStore({ firestore: firestore(uniqueProjectId('lease-path')), document: 'lifeboat' })).toThrow(/even number of segments/);
  });
});
