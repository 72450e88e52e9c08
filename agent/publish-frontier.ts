// Which LSN is safe to confirm to PostgreSQL while batches are published
// concurrently. Pure bookkeeping: no timers, no I/O.
//
// Batches are tracked in publish order (seq, consecutive) with their lsnLast.
// Pub/Sub acknowledgements come back in any order, and a failed publish is
// retried by the caller while its entry simply stays unacknowledged. The
// confirmable LSN is the lsnLast of the highest batch such that it and every
// batch before it are acknowledged: the contiguous frontier. Confirming any
// further could let PostgreSQL recycle WAL of a batch that Pub/Sub never
// stored, which loses it. The frontier starts at the start LSN and never moves
// backwards.
//
//   const frontier = new PublishFrontier(startLsn);
//   frontier.track(batch.seq, batch.lsnLast, bytes);   // before publishing
//   … on ack: frontier.published(batch.seq); stream.confirm(frontier.confirmableLsn());

import { PermanentError, ValidationError } from '../core/errors.ts';
import { formatLsn, isLsn, type Lsn } from '../core/lsn.ts';

export interface FrontierEntry {
  readonly seq: number;
  readonly lsnLast: Lsn;
  /** Encoded size, for flow control. */
  readonly bytes: number;
}

interface Slot extends FrontierEntry {
  acked: boolean;
}

export class PublishFrontier {
  // Tracked entries not yet behind the frontier, by seq: window[i].seq = baseSeq + i.
  // An array with a head index: shift() on a long array is O(n).
  private window: Slot[] = [];
  private head = 0;
  private frontier: Lsn;
  private firstSeq: number | undefined;
  private lastSeq: number | undefined;
  private lastLsn: Lsn;
  private unackedCount = 0;
  private unackedBytes = 0;

  constructor(startLsn: Lsn) {
    if (!isLsn(startLsn)) throw new ValidationError(`invalid start LSN ${String(startLsn)}`);
    this.frontier = startLsn;
    this.lastLsn = startLsn;
  }

  /**
   * Records a batch about to be published. seqs must be consecutive and
   * lsnLast must not go backwards (the batcher's chain guarantees both).
   * @throws PermanentError when they are not (a bug in the caller).
   */
  track(seq: number, lsnLast: Lsn, bytes = 0): void {
    if (!Number.isSafeInteger(seq) || seq < 0) throw new ValidationError(`track(): seq must be an integer ≥ 0, got ${String(seq)}`);
    if (!isLsn(lsnLast)) throw new ValidationError(`track(): invalid lsnLast ${String(lsnLast)}`);
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new ValidationError(`track(): bytes must be an integer ≥ 0, got ${String(bytes)}`);
    if (this.lastSeq !== undefined && seq !== this.lastSeq + 1) {
      throw new PermanentError(`track(): seq ${seq} does not follow ${this.lastSeq}: batches must be tracked in publish order`, {
        details: { seq, lastSeq: this.lastSeq },
      });
    }
    if (lsnLast < this.lastLsn) {
      throw new PermanentError(`track(): lsnLast ${formatLsn(lsnLast)} of seq ${seq} is before ${formatLsn(this.lastLsn)}: the chain went backwards`, {
        details: { seq, lsnLast: formatLsn(lsnLast), previous: formatLsn(this.lastLsn) },
      });
    }
    this.window.push({ seq, lsnLast, bytes, acked: false });
    this.firstSeq ??= seq;
    this.lastSeq = seq;
    this.lastLsn = lsnLast;
    this.unackedCount++;
    this.unackedBytes += bytes;
  }

  /**
   * Marks batch `seq` acknowledged by Pub/Sub and advances the frontier over
   * every leading acknowledged batch. Returns false when it was already
   * acknowledged (a second ack changes nothing).
   * @throws PermanentError for a seq that was never tracked.
   */
  published(seq: number): boolean {
    if (this.firstSeq === undefined || this.lastSeq === undefined || !Number.isSafeInteger(seq) || seq < this.firstSeq || seq > this.lastSeq) {
      throw new PermanentError(`published(${String(seq)}): no batch with that seq was tracked`, {
        details: { seq, lastTrackedSeq: this.lastSeq },
      });
    }
    const baseSeq = this.window[this.head]?.seq ?? this.lastSeq + 1;
    if (seq < baseSeq) return false; // behind the frontier: acknowledged before
    const slot = this.window[this.head + (seq - baseSeq)]!;
    if (slot.acked) return false;
    slot.acked = true;
    this.unackedCount--;
    this.unackedBytes -= slot.bytes;
    this.advance();
    return true;
  }

  /** lsnLast of the last batch of the fully acknowledged prefix; the start LSN before any. */
  confirmableLsn(): Lsn {
    return this.frontier;
  }

  /** Tracked batches not yet acknowledged. */
  inflightCount(): number {
    return this.unackedCount;
  }

  /** Bytes of tracked batches not yet acknowledged. */
  inflightBytes(): number {
    return this.unackedBytes;
  }

  /** The earliest unacknowledged batch: the one holding the frontier back. */
  oldestUnacked(): FrontierEntry | undefined {
    const slot = this.window[this.head];
    return slot === undefined ? undefined : { seq: slot.seq, lsnLast: slot.lsnLast, bytes: slot.bytes };
  }

  /** Every unacknowledged batch in seq order (e.g. to publish again after a publisher restart). */
  unacked(): FrontierEntry[] {
    const out: FrontierEntry[] = [];
    for (let i = this.head; i < this.window.length; i++) {
      const slot = this.window[i]!;
      if (!slot.acked) out.push({ seq: slot.seq, lsnLast: slot.lsnLast, bytes: slot.bytes });
    }
    return out;
  }

  private advance(): void {
    let slot = this.window[this.head];
    while (slot !== undefined && slot.acked) {
      // lsnLast never decreases along the window, so neither does the frontier.
      this.frontier = slot.lsnLast;
      this.head++;
      slot = this.window[this.head];
    }
    if (this.head === this.window.length) {
      this.window = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.window.length) {
      this.window = this.window.slice(this.head);
      this.head = 0;
    }
  }
}
