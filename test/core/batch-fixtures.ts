// Shared ChangeBatch fixtures for the codec tests (pure and over the emulator).
import { UNCHANGED_TOAST, type ChangeBatch, type RelationDescriptor } from '../../core/change-batch.ts';

export const accounts: RelationDescriptor = {
  oid: 16390,
  schema: 'public',
  name: 'pgbench_accounts',
  replicaIdentity: 'default',
  columns: [
    { name: 'aid', type: 'integer', typeOid: 23, typmod: -1, key: true },
    { name: 'bid', type: 'integer', typeOid: 23, typmod: -1, key: false },
    { name: 'abalance', type: 'integer', typeOid: 23, typmod: -1, key: false },
    { name: 'filler', type: 'character(84)', typeOid: 1042, typmod: 88, key: false },
  ],
};

/** A small valid batch: two transactions, one update with an unchanged TOAST value. */
export function sampleBatch(): ChangeBatch {
  return {
    v: 1,
    kind: 'changes',
    stream: 'main',
    epoch: 3,
    seq: 17,
    lsnPrev: 0x1cf7400n,
    lsnFirst: 0x1cf7460n,
    lsnLast: 0x1cf7600n,
    createdAt: '2026-11-23T13:31:02.123Z',
    relations: [accounts],
    transactions: [
      {
        xid: 1001,
        commitLsn: 0x1cf7460n,
        endLsn: 0x1cf7490n,
        commitTime: '2026-11-23T13:31:02.100001Z',
        changes: [
          { op: 'update', rel: 0, new: ['1', '1', '-42', UNCHANGED_TOAST] },
          { op: 'insert', rel: 0, new: ['2', '1', '0', ' '.repeat(84)] },
        ],
      },
      {
        xid: 1002,
        commitLsn: 0x1cf7500n,
        endLsn: 0x1cf7600n,
        commitTime: '2026-11-23T13:31:02.200002Z',
        changes: [{ op: 'delete', rel: 0, key: ['2', null, null, null] }],
      },
    ],
  };
}

