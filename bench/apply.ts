// How fast does the apply engine write a backlog to the target?
//
//   npx tsx bench/apply.ts [rows, default 500000]
//
// Starts its own PostgreSQL 15 cluster as the target (or uses
// LIFEBOAT_BENCH_TARGET_URL), then applies a backlog of `rows` inserts in
// 1,000-row source transactions, 5 transactions (5,000 rows) per batch, with
// applyBatch() one batch after another, as one apply function instance
// would. Then the same rows again as updates (every row's amount and note),
// then as deletes. Prints rows/s per phase and ms per batch (p50, max).
//
// Reference (docs/STACK): native logical replication applies such a backlog
// at 125–190k rows/s on this machine; set-based upserts did ~100k rows/s.
// The target shares the machine (2 cores) with this process, so the figures
// are a floor.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { type ChangeBatch, type RelationDescriptor, type Transaction, formatIsoMicros } from '../core/change-batch.ts';
import { createLogger } from '../core/log.ts';
import { type Lsn } from '../core/lsn.ts';
import { applyBatch } from '../functions/apply-engine.ts';
import { ensureTargetSchema } from '../functions/target-schema.ts';
import { startPostgresCluster } from '../local/local-stack.ts';

const ROWS = Number(process.argv[2] ?? 500_000);
const TX_ROWS = 1000;
const TX_PER_BATCH = 5;
const logger = createLogger({ component: 'bench-apply', level: 'error' });

const events: RelationDescriptor = {
  oid: 16500,
  schema: 'public',
  name: 'events',
  replicaIdentity: 'default',
  columns: [
    { name: 'id', type: 'bigint', typeOid: 20, typmod: -1, key: true },
    { name: 'at', type: 'timestamp with time zone', typeOid: 1184, typmod: -1, key: false },
    { name: 'account', type: 'integer', typeOid: 23, typmod: -1, key: false },
    { name: 'kind', type: 'text', typeOid: 25, typmod: -1, key: false },
    { name: 'amount', type: 'numeric(12,2)', typeOid: 1700, typmod: 786438, key: false },
    { name: 'payload', type: 'jsonb', typeOid: 3802, typmod: -1, key: false },
  ],
};

type Op = 'insert' | 'update' | 'delete';

/** The whole backlog for one op as batches, chained from `start`. */
function backlog(op: Op, start: Lsn): ChangeBatch[] {
  const batches: ChangeBatch[] = [];
  let lsn = start;
  let id = 1;
  const at = formatIsoMicros(BigInt(Date.now()) * 1000n);
  while (id <= ROWS) {
    const lsnPrev = lsn;
    const transactions: Transaction[] = [];
    for (let t = 0; t < TX_PER_BATCH && id <= ROWS; t++) {
      const changes: Transaction['changes'] = [];
      for (let r = 0; r < TX_ROWS && id <= ROWS; r++, id++) {
        const key = String(id);
        const row = [key, '2026-11-23 13:31:02.123456+00', String(id % 977), op === 'insert' ? 'deposit' : 'refund', `${id % 10000}.25`, `{"n": ${id}, "tag": "t${id % 13}"}`];
        if (op === 'insert') changes.push({ op: 'insert', rel: 0, new: row });
        else if (op === 'update') changes.push({ op: 'update', rel: 0, new: row });
        else changes.push({ op: 'delete', rel: 0, key: [key, null, null, null, null, null] });
      }
      const commitLsn = lsn + 16n;
      lsn = commitLsn + 64n;
      transactions.push({ xid: 1000 + batches.length * TX_PER_BATCH + t, commitLsn, endLsn: lsn, commitTime: at, changes });
    }
    batches.push({
      v: 1,
      kind: 'changes',
      stream: 'bench',
      epoch: 1,
      seq: batches.length,
      lsnPrev,
      lsnFirst: transactions[0]!.commitLsn,
      lsnLast: lsn,
      createdAt: new Date().toISOString(),
      relations: [events],
      transactions,
    });
  }
  return batches;
}

async function main(): Promise<void> {
  let cluster: Awaited<ReturnType<typeof startPostgresCluster>> | undefined;
  let url = process.env.LIFEBOAT_BENCH_TARGET_URL;
  let base: string | undefined;
  if (url === undefined) {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-bench-apply-'));
    fs.chmodSync(base, 0o755);
    cluster = await startPostgresCluster({ name: 'bench-target', dir: path.join(base, 'data'), log: () => {} });
    url = cluster.url;
  }
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query('DROP SCHEMA IF EXISTS lifeboat CASCADE');
    await client.query('DROP TABLE IF EXISTS public.events');
    await ensureTargetSchema(client);
    // The initial copy of an empty database.
    await applyBatch(
      client,
      {
        v: 1,
        kind: 'marker',
        stream: 'bench',
        epoch: 1,
        seq: 0,
        lsnPrev: 0x1000n,
        lsnFirst: 0x1000n,
        lsnLast: 0x1000n,
        createdAt: new Date().toISOString(),
        relations: [],
        transactions: [],
        marker: { markerId: 'bench', reason: 'snapshot-complete', snapshot: { snapshotId: 'bench', consistentLsn: 0x1000n, tables: [] } },
      },
      { logger },
    );
    console.log(`apply backlog: ${ROWS} rows in ${TX_ROWS}-row transactions, ${TX_PER_BATCH * TX_ROWS}-row batches, one target connection`);
    let lsn: Lsn = 0x1000n;
    for (const op of ['insert', 'update', 'delete'] as const) {
      const batches = backlog(op, lsn);
      lsn = batches[batches.length - 1]!.lsnLast;
      const perBatch: number[] = [];
      const t0 = performance.now();
      for (const batch of batches) {
        const b0 = performance.now();
        const r = await applyBatch(client, batch, { logger });
        perBatch.push(performance.now() - b0);
        if (r.outcome !== 'applied') throw new Error(`batch ${batch.seq}: ${r.outcome} (${r.reason})`);
      }
      const seconds = (performance.now() - t0) / 1000;
      perBatch.sort((a, b) => a - b);
      const p50 = perBatch[Math.floor(perBatch.length / 2)]!;
      const max = perBatch[perBatch.length - 1]!;
      console.log(
        `  ${op.padEnd(6)} ${Math.round(ROWS / seconds).toLocaleString('en-US').padStart(9)} rows/s  ` +
          `(${seconds.toFixed(2)} s, ${batches.length} batches, per batch p50 ${p50.toFixed(1)} ms, max ${max.toFixed(1)} ms)`,
      );
    }
    const left = await client.query<{ n: string }>('SELECT count(*) AS n FROM public.events');
    if (left.rows[0]!.n !== '0') throw new Error(`expected an empty table after the deletes, found ${left.rows[0]!.n} rows`);
  } finally {
    await client.end();
    await cluster?.stop();
    if (base !== undefined) fs.rmSync(base, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
