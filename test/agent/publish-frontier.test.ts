import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PermanentError, ValidationError } from '../../core/errors.ts';
import { PublishFrontier } from '../../agent/publish-frontier.ts';

describe('PublishFrontier', () => {
  it('starts at the start LSN with nothing in flight', () => {
    const f = new PublishFrontier(0x100n);
    expect(f.confirmableLsn()).toBe(0x100n);
    expect(f.inflightCount()).toBe(0);
    expect(f.inflightBytes()).toBe(0);
    expect(f.oldestUnacked()).toBeUndefined();
    expect(f.unacked()).toEqual([]);
  });

  it('advances only over the contiguous acknowledged prefix', () => {
    const f = new PublishFrontier(0x100n);
    f.track(0, 0x200n, 10);
    f.track(1, 0x300n, 20);
    f.track(2, 0x400n, 30);
    expect(f.inflightCount()).toBe(3);
    expect(f.inflightBytes()).toBe(60);

    expect(f.published(1)).toBe(true);
    expect(f.confirmableLsn()).toBe(0x100n); // seq 0 still unacknowledged
    expect(f.oldestUnacked()).toEqual({ seq: 0, lsnLast: 0x200n, bytes: 10 });
    expect(f.unacked().map((e) => e.seq)).toEqual([0, 2]);
    expect(f.inflightCount()).toBe(2);
    expect(f.inflightBytes()).toBe(40);

    expect(f.published(0)).toBe(true);
    expect(f.confirmableLsn()).toBe(0x300n); // 0 and 1 are now both done
    expect(f.oldestUnacked()).toEqual({ seq: 2, lsnLast: 0x400n, bytes: 30 });

    expect(f.published(2)).toBe(true);
    expect(f.confirmableLsn()).toBe(0x400n);
    expect(f.inflightCount()).toBe(0);
    expect(f.oldestUnacked()).toBeUndefined();
  });

  it('treats a second ack of the same batch as a no-op', () => {
    const f = new PublishFrontier(0n);
    f.track(5, 10n, 1);
    f.track(6, 20n, 1);
    expect(f.published(6)).toBe(true);
    expect(f.published(6)).toBe(false); // inside the window, already acked
    expect(f.published(5)).toBe(true);
    expect(f.published(5)).toBe(false); // behind the frontier now
    expect(f.confirmableLsn()).toBe(20n);
    expect(f.inflightBytes()).toBe(0);
  });

  it('refuses acks for batches it never tracked', () => {
    const f = new PublishFrontier(0n);
    expect(() => f.published(0)).toThrow(PermanentError);
    f.track(3, 10n);
    expect(() => f.published(2)).toThrow(/no batch with that seq/);
    expect(() => f.published(4)).toThrow(/no batch with that seq/);
    expect(() => f.published(1.5)).toThrow(PermanentError);
  });

  it('requires consecutive seqs and an LSN chain that does not go backwards', () => {
    const f = new PublishFrontier(100n);
    expect(() => f.track(0, 99n)).toThrow(/went backwards/);
    f.track(0, 100n);
    expect(() => f.track(2, 200n)).toThrow(/does not follow 0/);
    expect(() => f.track(1, 50n)).toThrow(/went backwards/);
    expect(() => f.track(1, 200n, -1)).toThrow(ValidationError);
    f.track(1, 200n);
    expect(f.inflightCount()).toBe(2);
  });

  it('rejects a start LSN that is not an LSN', () => {
    expect(() => new PublishFrontier(-1n)).toThrow(ValidationError);
  });

  it('keeps working across window compaction (many batches, acks lagging by a few)', () => {
    const f = new PublishFrontier(0n);
    const lag = 7;
    for (let seq = 0; seq < 5000; seq++) {
      f.track(seq, BigInt(seq + 1) * 100n, 3);
      if (seq >= lag) f.published(seq - lag);
      expect(f.confirmableLsn()).toBe(seq >= lag ? BigInt(seq - lag + 1) * 100n : 0n);
    }
    expect(f.inflightCount()).toBe(lag);
    expect(f.inflightBytes()).toBe(lag * 3);
    expect(f.oldestUnacked()?.seq).toBe(5000 - lag);
  });
});

// ---------------------------------------------------------------------------
// Model-based: random interleavings of track / ack / duplicate ack.

interface ModelEntry {
  seq: number;
  lsnLast: bigint;
  bytes: number;
  acked: boolean;
}

interface Model {
  readonly start: bigint;
  entries: ModelEntry[];
  lastLsn: bigint;
  highestSeenFrontier: bigint;
}

interface Real {
  frontier: PublishFrontier;
}

/** What the frontier must be: lsnLast of the longest fully acknowledged prefix. */
function expectedFrontier(m: Model): bigint {
  let lsn = m.start;
  for (const e of m.entries) {
    if (!e.acked) break;
    lsn = e.lsnLast;
  }
  return lsn;
}

function checkInvariants(m: Model, r: Real): void {
  const lsn = r.frontier.confirmableLsn();
  expect(lsn).toBe(expectedFrontier(m));
  // Never passes (or reaches) an unacknowledged batch: lsnLast grows strictly here.
  for (const e of m.entries) if (!e.acked) expect(lsn < e.lsnLast).toBe(true);
  // Never decreases.
  expect(lsn >= m.highestSeenFrontier).toBe(true);
  m.highestSeenFrontier = lsn;

  const unacked = m.entries.filter((e) => !e.acked);
  expect(r.frontier.inflightCount()).toBe(unacked.length);
  expect(r.frontier.inflightBytes()).toBe(unacked.reduce((sum, e) => sum + e.bytes, 0));
  const oldest = unacked[0];
  expect(r.frontier.oldestUnacked()).toEqual(oldest === undefined ? undefined : { seq: oldest.seq, lsnLast: oldest.lsnLast, bytes: oldest.bytes });
  expect(r.frontier.unacked().map((e) => e.seq)).toEqual(unacked.map((e) => e.seq));
}

class TrackCommand implements fc.Command<Model, Real> {
  constructor(
    readonly lsnStep: number,
    readonly bytes: number,
  ) {}
  check(): boolean {
    return true;
  }
  run(m: Model, r: Real): void {
    const seq = m.entries.length;
    const lsnLast = m.lastLsn + BigInt(this.lsnStep);
    r.frontier.track(seq, lsnLast, this.bytes);
    m.entries.push({ seq, lsnLast, bytes: this.bytes, acked: false });
    m.lastLsn = lsnLast;
    checkInvariants(m, r);
  }
  toString(): string {
    return `track(+${this.lsnStep}, ${this.bytes}B)`;
  }
}

class AckCommand implements fc.Command<Model, Real> {
  constructor(readonly pick: number) {}
  check(m: Readonly<Model>): boolean {
    return m.entries.some((e) => !e.acked);
  }
  run(m: Model, r: Real): void {
    const unacked = m.entries.filter((e) => !e.acked);
    const entry = unacked[this.pick % unacked.length]!;
    expect(r.frontier.published(entry.seq)).toBe(true);
    entry.acked = true;
    checkInvariants(m, r);
  }
  toString(): string {
    return `ack(pick ${this.pick})`;
  }
}

class DuplicateAckCommand implements fc.Command<Model, Real> {
  constructor(readonly pick: number) {}
  check(m: Readonly<Model>): boolean {
    return m.entries.some((e) => e.acked);
  }
  run(m: Model, r: Real): void {
    const acked = m.entries.filter((e) => e.acked);
    const entry = acked[this.pick % acked.length]!;
    expect(r.frontier.published(entry.seq)).toBe(false);
    checkInvariants(m, r);
  }
  toString(): string {
    return `duplicate-ack(pick ${this.pick})`;
  }
}

describe('PublishFrontier (model-based)', () => {
  it('never passes an unacked batch, never decreases, and reaches the last lsnLast once all are acked in any order', () => {
    const commands = [
      fc.tuple(fc.integer({ min: 1, max: 1000 }), fc.nat({ max: 5000 })).map(([step, bytes]) => new TrackCommand(step, bytes)),
      fc.nat().map((pick) => new AckCommand(pick)),
      fc.nat().map((pick) => new DuplicateAckCommand(pick)),
    ];
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: 1n << 40n }),
        fc.commands(commands, { maxCommands: 60 }),
        fc.array(fc.nat(), { maxLength: 80 }),
        (start, cmds, finalOrderKeys) => {
          const model: Model = { start, entries: [], lastLsn: start, highestSeenFrontier: start };
          const real: Real = { frontier: new PublishFrontier(start) };
          fc.modelRun(() => ({ model, real }), cmds);

          // Acknowledge whatever is left, in an order given by random keys.
          const left = model.entries.filter((e) => !e.acked);
          const order = left
            .map((entry, i) => ({ entry, key: finalOrderKeys[i] ?? i }))
            .sort((a, b) => a.key - b.key || a.entry.seq - b.entry.seq);
          for (const { entry } of order) {
            real.frontier.published(entry.seq);
            entry.acked = true;
            checkInvariants(model, real);
          }
          expect(real.frontier.confirmableLsn()).toBe(model.lastLsn);
          expect(real.frontier.inflightCount()).toBe(0);
        },
      ),
      { numRuns: 200 },
    );
  });
});
