import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PermanentError, RetryableError, ValidationError } from '../../core/errors.ts';
import {
  canRenew,
  canTakeOver,
  createLease,
  handOver,
  LeaseClient,
  MemoryLeaseStore,
  mustSelfFence,
  parseLease,
  release,
  renew,
  requestTakeover,
  selfFenceDeadline,
  takeOver,
  type CompareAndSetResult,
  type Lease,
  type LeaseSnapshot,
  type LeaseStore,
  type LeaseTiming,
} from '../../core/writer-lease.ts';

const T0 = Date.parse('2026-11-23T10:00:00.000Z');
const timing: LeaseTiming = { lease: { ttlSeconds: 30, clockSkewMarginSeconds: 5 } };
const s = (n: number) => n * 1000;

const localLease = (over: Partial<Lease> = {}): Lease => ({ ...createLease('local', T0, timing, 'local created the lease at epoch 1'), ...over });

describe('lease document schema', () => {
  it('accepts what createLease makes and refuses a lease that expires before its renewal', () => {
    expect(parseLease(localLease())).toEqual(localLease());
    expect(() => parseLease({ ...localLease(), leaseExpiresAt: T0 - 1 })).toThrow(/leaseExpiresAt: must not be before renewedAt/);
  });

  it('refuses unknown fields, epoch 0, a half-set takeover request and a holder asking itself', () => {
    expect(() => parseLease({ ...localLease(), extra: 1 })).toThrow(ValidationError);
    expect(() => parseLease({ ...localLease(), epoch: 0 })).toThrow(/epoch/);
    expect(() => parseLease({ ...localLease(), takeoverRequestedAt: T0 })).toThrow(/set together/);
    expect(() => parseLease({ ...localLease(), takeoverRequestedAt: T0, takeoverRequestedBy: 'local' })).toThrow(/cannot request a takeover from itself/);
  });

  it('refuses a release without a marker LSN, and a marker that is not an LSN', () => {
    expect(() => parseLease({ ...localLease(), releasedAt: T0 })).toThrow(/marker LSN/);
    expect(() => parseLease({ ...localLease(), releasedAt: T0, markerLsn: 'nope' })).toThrow(/must be an LSN/);
  });
});

describe('renewal', () => {
  it('keeps holder and epoch and moves the expiry to now + ttl', () => {
    const next = renew(localLease({ epoch: 4 }), 'local', T0 + s(10), timing);
    expect(next).toMatchObject({ holder: 'local', epoch: 4, renewedAt: T0 + s(10), leaseExpiresAt: T0 + s(40) });
  });

  it('is refused to the other side, after a release, and to local once the lease lapsed past the margin', () => {
    expect(canRenew(localLease(), 'cloud', T0, timing)).toEqual({ allowed: false, reason: 'cloud cannot renew the lease: local holds it at epoch 1' });
    expect(canRenew(release(localLease(), 'local', T0, '0/10'), 'local', T0, timing).reason).toBe(
      'local cannot renew the lease at epoch 1: it released it at 2026-11-23T10:00:00.000Z (marker 0/10); it must be re-acquired with a new epoch',
    );
    expect(canRenew(localLease(), 'local', T0 + s(35), timing).allowed).toBe(true);
    expect(canRenew(localLease(), 'local', T0 + s(35) + 1, timing).reason).toBe(
      'local cannot renew the lease at epoch 1: it expired at 2026-11-23T10:00:30.000Z and the 5 s margin has passed, so it must be re-acquired with a new epoch',
    );
    expect(() => renew(localLease(), 'cloud', T0, timing)).toThrow(PermanentError);
  });

  it('never moves the expiry earlier, even when the renewer clock is behind', () => {
    const lease = localLease({ leaseExpiresAt: T0 + s(60), renewedAt: T0 + s(30) });
    expect(renew(lease, 'local', T0 + s(20), timing)).toMatchObject({ renewedAt: T0 + s(20), leaseExpiresAt: T0 + s(60) });
  });

  it('a cloud-held lease never lapses for its holder', () => {
    const cloud = takeOver(localLease(), 'cloud', T0 + s(36), timing, 'test');
    expect(canRenew(cloud, 'cloud', T0 + s(3600), timing).allowed).toBe(true);
  });
});

describe('takeover', () => {
  it('is refused while the local lease is valid, and until the margin has passed after expiry', () => {
    expect(canTakeOver(localLease(), 'cloud', T0 + s(35), timing)).toEqual({
      allowed: false,
      reason:
        'local holds the lease at epoch 1, valid until 2026-11-23T10:00:30.000Z; it can be taken only after the 5 s clock-skew margin, at 2026-11-23T10:00:35.000Z (0 s from now)',
    });
    expect(canTakeOver(localLease(), 'cloud', T0 + s(35) + 1, timing)).toEqual({
      allowed: true,
      reason: 'the lease held by local at epoch 1 expired at 2026-11-23T10:00:30.000Z and the 5 s margin has passed',
    });
  });

  it('increments the epoch, changes the holder and clears the handover fields', () => {
    const released = release(requestTakeover(localLease({ epoch: 6 }), 'cloud', T0, 'app down'), 'local', T0 + s(1), '0/1B00');
    const next = takeOver(released, 'cloud', T0 + s(2), timing, 'because');
    expect(next).toEqual({
      holder: 'cloud',
      epoch: 7,
      renewedAt: T0 + s(2),
      leaseExpiresAt: T0 + s(32),
      acquiredAt: T0 + s(2),
      releasedAt: null,
      markerLsn: null,
      takeoverRequestedAt: null,
      takeoverRequestedBy: null,
      takeoverReason: null,
      changeReason: 'because',
    });
  });

  it('a released lease is free at once, but only for the side that requested it', () => {
    const released = release(requestTakeover(localLease(), 'cloud', T0, 'app down'), 'local', T0 + s(1), '0/1B00');
    expect(canTakeOver(released, 'cloud', T0 + s(1), timing).reason).toBe(
      'local released the lease at epoch 1 at 2026-11-23T10:00:01.000Z after fencing itself (marker 0/1B00)',
    );
    expect(canTakeOver(released, 'local', T0 + s(1), timing)).toEqual({
      allowed: false,
      reason: 'local cannot take the lease: local released it at epoch 1 for the takeover cloud requested',
    });
    // Released without a request (a clean shutdown): local may take it back, with a new epoch.
    expect(takeOver(release(localLease(), 'local', T0, '0/10'), 'local', T0 + 1, timing, 'back').epoch).toBe(2);
  });

  it('a lease held by cloud never lapses to local', () => {
    const cloud = takeOver(localLease(), 'cloud', T0 + s(36), timing, 'test');
    expect(canTakeOver(cloud, 'local', T0 + s(36_000), timing)).toEqual({
      allowed: false,
      reason: 'cloud holds the lease at epoch 2; a lease held by cloud never lapses to local: only failback hands it back, after reverse sync',
    });
  });

  it('handOver gives the lease to the other side with the next epoch', () => {
    const cloud = takeOver(localLease({ epoch: 3 }), 'cloud', T0 + s(36), timing, 'test');
    expect(handOver(cloud, 'cloud', 'local', T0 + s(100), timing, 'failback')).toMatchObject({ holder: 'local', epoch: 5, changeReason: 'failback' });
    expect(() => handOver(cloud, 'local', 'cloud', T0, timing, 'x')).toThrow(/local cannot hand the lease over: cloud holds it at epoch 4/);
  });
});

describe('self-fencing', () => {
  it('the holder may write until renewedAt + ttl − margin, then must fence', () => {
    const lease = localLease();
    expect(selfFenceDeadline(lease, timing)).toBe(T0 + s(25));
    expect(mustSelfFence(lease, 'local', T0 + s(25) - 1, timing)).toEqual({
      fence: false,
      reason: 'local holds the lease at epoch 1 and may write until 2026-11-23T10:00:25.000Z',
    });
    expect(mustSelfFence(lease, 'local', T0 + s(25), timing)).toEqual({
      fence: true,
      reason:
        'local must fence itself: its last confirmed renewal started at 2026-11-23T10:00:00.000Z, and ttl − margin (25 s) ran out at 2026-11-23T10:00:25.000Z',
    });
  });

  it('a pending takeover request, a release, another holder or no lease all fence', () => {
    expect(mustSelfFence(requestTakeover(localLease(), 'cloud', T0, 'app down'), 'local', T0, timing).reason).toBe(
      'local must fence itself: cloud requested a takeover at 2026-11-23T10:00:00.000Z (app down)',
    );
    expect(mustSelfFence(release(localLease(), 'local', T0, '0/1'), 'local', T0, timing).fence).toBe(true);
    expect(mustSelfFence(localLease(), 'cloud', T0, timing).reason).toBe('cloud must stay fenced: local holds the lease at epoch 1');
    expect(mustSelfFence(undefined, 'local', T0, timing).reason).toBe('local must stay fenced: it holds no lease');
  });

  it('for any skew below the margin, the holder stops writing before any taker may take over (in real time)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 0, max: 60 }),
        fc.double({ min: -0.999, max: 0.999, noNaN: true }),
        fc.integer({ min: 0, max: 3_600_000 }),
        (ttlSeconds, marginSeconds, skewFraction, startOffset) => {
          const t: LeaseTiming = { lease: { ttlSeconds, clockSkewMarginSeconds: marginSeconds } };
          // Real time = the holder's clock; the taker's clock is real + skew, |skew| < margin.
          const skew = Math.trunc(skewFraction * marginSeconds * 1000);
          const start = T0 + startOffset;
          const lease = createLease('local', start, t, 'test');
          const lastWrite = selfFenceDeadline(lease, t) - 1;
          expect(mustSelfFence(lease, 'local', lastWrite, t).fence).toBe(false);
          expect(mustSelfFence(lease, 'local', lastWrite + 1, t).fence).toBe(true);
          // The earliest real moment the taker's clock allows a takeover.
          const firstTake = lease.leaseExpiresAt + t.lease.clockSkewMarginSeconds * 1000 + 1 - skew;
          expect(canTakeOver(lease, 'cloud', firstTake + skew, t).allowed).toBe(true);
          expect(canTakeOver(lease, 'cloud', firstTake - 1 + skew, t).allowed).toBe(false);
          expect(firstTake).toBeGreaterThan(lastWrite);
        },
      ),
    );
  });
});

describe('MemoryLeaseStore', () => {
  it('creates only when absent and writes only at the expected version', async () => {
    const store = new MemoryLeaseStore();
    const first = await store.compareAndSet(null, localLease());
    expect(first).toEqual({ ok: true, version: '1' });
    expect(await store.compareAndSet(null, localLease())).toEqual({ ok: false, current: { lease: localLease(), version: '1' } });
    expect((await store.compareAndSet('1', renew(localLease(), 'local', T0 + 1, timing))).ok).toBe(true);
    expect(await store.compareAndSet('1', localLease())).toMatchObject({ ok: false, current: { version: '2' } });
  });

  it('refuses to store an invalid lease', async () => {
    await expect(new MemoryLeaseStore().compareAndSet(null, { ...localLease(), epoch: 0 })).rejects.toThrow(ValidationError);
  });
});

/** A store whose next compare-and-sets are preceded by someone else's write. */
class InterferingStore implements LeaseStore {
  readonly inner = new MemoryLeaseStore();
  interfere: ((inner: MemoryLeaseStore) => Promise<void>)[] = [];
  read(): Promise<LeaseSnapshot | undefined> {
    return this.inner.read();
  }
  async compareAndSet(expected: string | null, next: Lease): Promise<CompareAndSetResult> {
    await this.interfere.shift()?.(this.inner);
    return this.inner.compareAndSet(expected, next);
  }
}

describe('LeaseClient', () => {
  const client = (store: LeaseStore, clock: () => number) => new LeaseClient({ store, timing, clock });

  it('acquireOrRenew creates, renews, and re-acquires a lapsed lease with a new epoch', async () => {
    const store = new MemoryLeaseStore();
    let now = T0;
    const local = client(store, () => now);
    expect(await local.acquireOrRenew('local')).toMatchObject({ ok: true, change: 'created', sentence: 'local created the lease at epoch 1' });
    now += s(5);
    expect(await local.acquireOrRenew('local')).toMatchObject({
      ok: true,
      change: 'renewed',
      sentence: 'local renewed the lease at epoch 1 until 2026-11-23T10:00:35.000Z',
    });
    now += s(41);
    const r = await local.acquireOrRenew('local');
    expect(r).toMatchObject({ ok: true, change: 're-acquired', lease: { epoch: 2, holder: 'local' } });
    expect(r.sentence).toBe(
      'local re-acquired the lease at epoch 2 because the lease held by local at epoch 1 expired at 2026-11-23T10:00:35.000Z and the 5 s margin has passed',
    );
  });

  it('the renewal sentence tells the holder about a pending takeover request', async () => {
    const store = new MemoryLeaseStore();
    await store.compareAndSet(null, requestTakeover(localLease(), 'cloud', T0, 'the app failed 3 probes'));
    const r = await client(store, () => T0 + s(1)).acquireOrRenew('local');
    expect(r.sentence).toBe('local renewed the lease at epoch 1 until 2026-11-23T10:00:31.000Z; cloud requests a takeover (the app failed 3 probes)');
    expect(r.ok && mustSelfFence(r.lease, 'local', T0 + s(1), timing).fence).toBe(true);
  });

  it('local cannot acquire a lease the cloud holds', async () => {
    const store = new MemoryLeaseStore();
    await store.compareAndSet(null, takeOver(localLease(), 'cloud', T0 + s(36), timing, 'x'));
    expect(await client(store, () => T0 + s(99_999)).acquireOrRenew('local')).toMatchObject({
      ok: false,
      change: 'refused',
      sentence: 'local does not hold the lease: cloud holds it at epoch 2',
    });
  });

  it('tryTakeOver refuses a valid lease, a lease that moved from the decided epoch, and takes an expired one', async () => {
    const store = new MemoryLeaseStore();
    await store.compareAndSet(null, localLease({ epoch: 6 }));
    const early = await client(store, () => T0 + s(10)).tryTakeOver('cloud', '3 probes failed');
    expect(early).toMatchObject({ ok: false, change: 'refused' });
    const moved = await client(store, () => T0 + s(40)).tryTakeOver('cloud', '3 probes failed', { expectedEpoch: 5 });
    expect(moved.sentence).toBe('cloud did not take over: the lease is at epoch 6 (held by local), not at epoch 5 as decided');
    const taken = await client(store, () => T0 + s(40)).tryTakeOver('cloud', '3 probes failed', { expectedEpoch: 6 });
    expect(taken).toMatchObject({ ok: true, change: 'taken-over', lease: { holder: 'cloud', epoch: 7 } });
    expect(taken.sentence).toBe(
      'cloud took over the lease at epoch 7 because 3 probes failed, and the lease held by local at epoch 6 expired at 2026-11-23T10:00:30.000Z and the 5 s margin has passed',
    );
  });

  it('a renewal that loses the race to a takeover request retries on the new version and keeps the request', async () => {
    const store = new InterferingStore();
    await store.inner.compareAndSet(null, localLease());
    store.interfere.push(async (inner) => {
      const cur = (await inner.read())!;
      await inner.compareAndSet(cur.version, requestTakeover(cur.lease, 'cloud', T0, 'app down'));
    });
    const r = await client(store, () => T0 + s(2)).acquireOrRenew('local');
    expect(r).toMatchObject({ ok: true, change: 'renewed', lease: { takeoverRequestedBy: 'cloud', renewedAt: T0 + s(2) } });
  });

  it('of two takeovers racing at the same epoch, the loser re-reads and is refused', async () => {
    const store = new InterferingStore();
    await store.inner.compareAndSet(null, localLease({ epoch: 3 }));
    const other = client(store.inner, () => T0 + s(40));
    store.interfere.push(async () => {
      expect((await other.tryTakeOver('cloud', 'the other controller', { expectedEpoch: 3 })).ok).toBe(true);
    });
    const r = await client(store, () => T0 + s(40)).tryTakeOver('cloud', 'this controller', { expectedEpoch: 3 });
    expect(r).toMatchObject({ ok: false, change: 'refused', sentence: 'cloud did not take over: the lease is at epoch 4 (held by cloud), not at epoch 3 as decided' });
    expect((await store.read())?.lease.changeReason).toMatch(/because the other controller/);
  });

  it('gives up after maxAttempts lost compare-and-sets, saying so', async () => {
    const store = new InterferingStore();
    await store.inner.compareAndSet(null, localLease());
    const bump = async (inner: MemoryLeaseStore) => {
      const cur = (await inner.read())!;
      await inner.compareAndSet(cur.version, renew(cur.lease, 'local', cur.lease.renewedAt + 1, timing));
    };
    store.interfere.push(bump, bump, bump);
    const r = await client(store, () => T0 + s(1)).acquireOrRenew('local');
    expect(r).toMatchObject({ ok: false, change: 'lost-race' });
    expect(r.sentence).toBe('gave up after losing the compare-and-set 3 times in a row; it is now held by local at epoch 1');
  });

  it('graceful handover: request, release with the marker, take over at once', async () => {
    const store = new MemoryLeaseStore();
    let now = T0;
    const local = client(store, () => now);
    const cloud = client(store, () => now);
    await local.acquireOrRenew('local');
    expect((await cloud.requestTakeover('cloud', 'the app failed 3 probes')).sentence).toBe(
      'cloud asked local to hand over the lease at epoch 1 because the app failed 3 probes',
    );
    expect((await cloud.requestTakeover('cloud', 'again')).change).toBe('unchanged');
    now += s(1);
    expect((await local.release('local', '0/1B00')).sentence).toBe(
      'local released the lease at epoch 1 after fencing itself; its last batch is the marker at 0/1B00',
    );
    expect(await local.acquireOrRenew('local')).toMatchObject({ ok: false, change: 'refused' });
    expect(await cloud.tryTakeOver('cloud', 'the app failed 3 probes', { expectedEpoch: 1 })).toMatchObject({
      ok: true,
      lease: { holder: 'cloud', epoch: 2 },
    });
  });

  it('failback hands the lease to local, which then renews it on its own clock', async () => {
    const store = new MemoryLeaseStore();
    await store.compareAndSet(null, takeOver(localLease({ epoch: 7 }), 'cloud', T0 + s(40), timing, 'x'));
    const cloud = client(store, () => T0 + s(100));
    expect((await cloud.handOver('cloud', 'local', 'reverse sync drained', { expectedEpoch: 7 })).ok).toBe(false);
    const r = await cloud.handOver('cloud', 'local', 'reverse sync drained', { expectedEpoch: 8 });
    expect(r).toMatchObject({ ok: true, change: 'handed-over', lease: { holder: 'local', epoch: 9 } });
    expect(r.sentence).toBe('cloud handed the lease to local at epoch 9 because reverse sync drained');
    const renewed = await client(store, () => T0 + s(101)).acquireOrRenew('local');
    expect(renewed).toMatchObject({ ok: true, change: 'renewed', lease: { epoch: 9, renewedAt: T0 + s(101) } });
  });

  it('store errors reach the caller unchanged (retryable stays retryable)', async () => {
    const failing: LeaseStore = {
      read: async () => {
        throw new RetryableError('firestore unavailable');
      },
      compareAndSet: async () => ({ ok: true, version: 'x' }),
    };
    await expect(client(failing, () => T0).acquireOrRenew('local')).rejects.toBeInstanceOf(RetryableError);
  });
});
