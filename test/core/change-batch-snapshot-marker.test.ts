import { describe, expect, it } from 'vitest';
import { MARKER_REASONS, parseChangeBatch, toWireJson, type ChangeBatch, type ChangeBatchWire } from '../../core/change-batch.ts';
import { ValidationError } from '../../core/errors.ts';

// The 'snapshot-complete' marker that closes an initial copy.

const consistentLsn = 0x1cf7460n;

function snapshotCompleteBatch(): ChangeBatch {
  return {
    v: 1,
    kind: 'marker',
    stream: 'main',
    epoch: 1,
    seq: 4,
    lsnPrev: consistentLsn,
    lsnFirst: consistentLsn,
    lsnLast: consistentLsn,
    createdAt: '2026-11-23T13:31:02.123Z',
    relations: [],
    transactions: [],
    marker: {
      markerId: '0b7e6a52-4d7a-4a43-9d55-3f1f8a2f6c10',
      reason: 'snapshot-complete',
      snapshot: {
        snapshotId: '0b7e6a52-4d7a-4a43-9d55-3f1f8a2f6c10',
        consistentLsn,
        tables: [
          { schema: 'public', name: 'accounts', chunks: 3, rows: 25_000 },
          { schema: 'public', name: 'empty', chunks: 1, rows: 0 },
        ],
      },
    },
  };
}

function wire(): ChangeBatchWire {
  return structuredClone(toWireJson(snapshotCompleteBatch()));
}

function problemsOf(json: unknown): string {
  try {
    parseChangeBatch(json);
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return (err as Error).message;
  }
  throw new Error('expected the batch to be rejected');
}

describe("marker reason 'snapshot-complete'", () => {
  it('is a marker reason', () => {
    expect(MARKER_REASONS).toContain('snapshot-complete');
  });

  it('round-trips through the wire form with its table list', () => {
    const batch = snapshotCompleteBatch();
    const json = JSON.parse(JSON.stringify(toWireJson(batch))) as ChangeBatchWire;
    expect(json.marker?.snapshot).toEqual({
      snapshotId: '0b7e6a52-4d7a-4a43-9d55-3f1f8a2f6c10',
      consistentLsn: '0/1CF7460',
      tables: [
        { schema: 'public', name: 'accounts', chunks: 3, rows: 25_000 },
        { schema: 'public', name: 'empty', chunks: 1, rows: 0 },
      ],
    });
    expect(parseChangeBatch(json)).toEqual(batch);
  });

  it('accepts an empty database (no tables)', () => {
    const json = wire();
    json.marker!.snapshot!.tables = [];
    expect(parseChangeBatch(json).marker?.snapshot?.tables).toEqual([]);
  });

  it('requires the snapshot field', () => {
    const json = wire();
    delete json.marker!.snapshot;
    expect(problemsOf(json)).toContain("marker.snapshot: a 'snapshot-complete' marker needs a snapshot field listing the copied tables");
  });

  it.each(['takeover', 'drain', 'failback'] as const)("rejects a snapshot field on a '%s' marker", (reason) => {
    const json = wire();
    json.marker!.reason = reason;
    expect(problemsOf(json)).toContain(`marker.snapshot: a '${reason}' marker must not have a snapshot field (only 'snapshot-complete' has one)`);
  });

  it('keeps the other reasons valid without a snapshot field', () => {
    const json = wire();
    json.marker = { markerId: 'm1', reason: 'drain', requestedBy: 'ops' };
    expect(parseChangeBatch(json).marker).toEqual({ markerId: 'm1', reason: 'drain', requestedBy: 'ops' });
  });

  it('requires consistentLsn to be the position the marker stands for', () => {
    const json = wire();
    json.marker!.snapshot!.consistentLsn = '0/1CF7461';
    expect(problemsOf(json)).toContain(
      "marker.snapshot.consistentLsn: consistentLsn 0/1CF7461 must equal the batch's lsnLast 0/1CF7460: the marker stands for the snapshot's consistent point",
    );
  });

  it('rejects a table listed twice', () => {
    const json = wire();
    json.marker!.snapshot!.tables.push({ schema: 'public', name: 'accounts', chunks: 1, rows: 1 });
    expect(problemsOf(json)).toContain('marker.snapshot.tables[2]: table public.accounts is listed twice');
  });

  it('rejects a table with no chunks, negative rows and unknown fields', () => {
    const json = wire();
    json.marker!.snapshot!.tables[1]!.chunks = 0;
    expect(problemsOf(json)).toContain('marker.snapshot.tables[1].chunks: every copied table sends at least one chunk');
    const negative = wire();
    negative.marker!.snapshot!.tables[0]!.rows = -1;
    expect(problemsOf(negative)).toContain('marker.snapshot.tables[0].rows');
    const extra = wire();
    Object.assign(extra.marker!.snapshot!, { finishedAt: '2026-11-23T13:31:02Z' });
    expect(problemsOf(extra)).toMatch(/marker\.snapshot: Unrecognized key: "finishedAt"/);
  });

  it('names the new reason when a reason is unknown', () => {
    const json = wire();
    (json.marker as { reason: string }).reason = 'snapshot-done';
    expect(problemsOf(json)).toContain(
      'marker.reason: unknown marker reason "snapshot-done": expected takeover, drain or failback (operator markers) or snapshot-complete (end of the initial copy)',
    );
  });
});
