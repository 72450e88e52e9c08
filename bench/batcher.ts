// Batching throughput on synthetic pgbench-like traffic, one core.
//
//   npx tsx bench/batcher.ts [rows=200000] [rounds=3]
//
// Feeds typed pgoutput messages (as agent/pgoutput-reader.ts produces them)
// into agent/change-batcher.ts with the config defaults (maxRows 5000, maxBytes
// 4 MiB) and prints rows/s for:
//   - batching alone (push → ChangeBatch objects);
//   - batching + encodeBatch with gzip level 1 (the default), with the
//     codec's pre-send validation (default) and without it.
// Two mixes: pgbench TPC-B transactions (3 UPDATEs + 1 INSERT each, like
// `pgbench -T`) and bulk INSERTs of 1000 rows per transaction (like
// `pgbench -i`). Decoding is measured separately by bench/pgoutput-decode.ts.

import { ChangeBatcher } from '../agent/change-batcher.ts';
import type { PgoutputMessage, RelationMessage } from '../agent/pgoutput-reader.ts';
import type { StreamedMessage } from '../agent/replication-stream.ts';
import { encodeBatch } from '../core/batch-codec.ts';
import type { ChangeBatch } from '../core/change-batch.ts';
import type { Logger } from '../core/log.ts';

const totalRows = Number(process.argv[2] ?? 200_000);
const rounds = Number(process.argv[3] ?? 3);

const quiet: Logger = {
  level: 'critical',
  isLevelEnabled: () => false,
  debug: () => {},
  info: () => {},
  notice: () => {},
  warn: () => {},
  error: () => {},
  critical: () => {},
  child: () => quiet,
};

const TYPES = new Map([
  ['23/-1', 'integer'],
  ['20/-1', 'bigint'],
  ['1042/88', 'character(84)'],
  ['1042/26', 'character(22)'],
  ['1114/-1', 'timestamp without time zone'],
]);

function rel(oid: number, name: string, columns: [string, number, number, boolean][]): RelationMessage {
  return {
    tag: 'relation',
    oid,
    namespace: 'public',
    name,
    replicaIdentity: 'default',
    columns: columns.map(([n, typeOid, typmod, key]) => ({ flags: key ? 1 : 0, isKey: key, name: n, typeOid, typmod })),
  };
}

const accounts = rel(16390, 'pgbench_accounts', [
  ['aid', 23, -1, true],
  ['bid', 23, -1, false],
  ['abalance', 23, -1, false],
  ['filler', 1042, 88, false],
]);
const tellers = rel(16391, 'pgbench_tellers', [
  ['tid', 23, -1, true],
  ['bid', 23, -1, false],
  ['tbalance', 23, -1, false],
  ['filler', 1042, 88, false],
]);
const branches = rel(16392, 'pgbench_branches', [
  ['bid', 23, -1, true],
  ['bbalance', 23, -1, false],
  ['filler', 1042, 88, false],
]);
const history = rel(16393, 'pgbench_history', [
  ['tid', 23, -1, false],
  ['bid', 23, -1, false],
  ['aid', 23, -1, false],
  ['delta', 23, -1, false],
  ['mtime', 1114, -1, false],
  ['filler', 1042, 26, false],
]);

const filler84 = ' '.repeat(84);
const COMMIT_MICROS = 848_000_000_000_000n;
const COMMIT_TIME = '2026-11-15T19:33:20.000000Z';

/** A message list with LSNs, as the replication stream yields it. */
function buildStream(kind: 'tpcb' | 'bulk', rows: number): { items: StreamedMessage[]; rows: number } {
  const items: StreamedMessage[] = [];
  let lsn = 0x1_0000_0000n;
  let xid = 1000;
  let produced = 0;
  let first = true;
  const push = (message: PgoutputMessage): void => {
    lsn += 0x40n;
    items.push({ lsn, message });
  };
  while (produced < rows) {
    const changes: PgoutputMessage[] = [];
    if (first) changes.push(accounts, tellers, branches, history);
    first = false;
    if (kind === 'tpcb') {
      const aid = (produced * 7919) % 100_000;
      const delta = String((produced % 10_000) - 5000);
      changes.push(
        { tag: 'update', relationOid: accounts.oid, key: undefined, old: undefined, new: [String(aid), String(1 + (aid % 10)), delta, filler84] },
        { tag: 'update', relationOid: tellers.oid, key: undefined, old: undefined, new: [String(aid % 100), String(1 + (aid % 10)), delta, filler84] },
        { tag: 'update', relationOid: branches.oid, key: undefined, old: undefined, new: [String(1 + (aid % 10)), delta, filler84] },
        { tag: 'insert', relationOid: history.oid, new: [String(aid % 100), String(1 + (aid % 10)), String(aid), delta, '2026-11-23 13:31:02.123456', null] },
      );
      produced += 4;
    } else {
      for (let i = 0; i < 1000; i++) {
        const aid = produced + i + 1;
        changes.push({ tag: 'insert', relationOid: accounts.oid, new: [String(aid), String(1 + Math.floor(aid / 100_000)), '0', filler84] });
      }
      produced += 1000;
    }
    const commitLsn = lsn + BigInt(changes.length + 2) * 0x40n;
    items.push({ lsn, message: { tag: 'begin', finalLsn: commitLsn, commitTimeMicros: COMMIT_MICROS, commitTime: COMMIT_TIME, xid: xid++ } });
    for (const change of changes) push(change);
    lsn = commitLsn;
    const endLsn = commitLsn + 0x30n;
    items.push({ lsn: endLsn, message: { tag: 'commit', flags: 0, commitLsn, endLsn, commitTimeMicros: COMMIT_MICROS, commitTime: COMMIT_TIME } });
    lsn = endLsn;
  }
  return { items, rows: produced };
}

function newBatcher(): ChangeBatcher {
  return new ChangeBatcher({
    stream: 'main',
    epoch: () => 1,
    startLsn: 0x1_0000_0000n,
    maxRows: 5000,
    maxBytes: 4 * 1024 * 1024,
    maxDelayMs: 200,
    clock: () => 1_795_000_000_000,
    typeName: (oid, typmod) => TYPES.get(`${oid}/${typmod}`),
    logger: quiet,
  });
}

type Mode = 'batch' | 'batch+encode' | 'batch+encode (no validation)';

function runOnce(items: StreamedMessage[], mode: Mode): { ms: number; batches: number; wireBytes: number } {
  const batcher = newBatcher();
  let batches = 0;
  let wireBytes = 0;
  const handle = (out: ChangeBatch[]): void => {
    for (const batch of out) {
      batches++;
      if (mode === 'batch') continue;
      const encoded = encodeBatch(batch, { validate: mode === 'batch+encode' });
      wireBytes += encoded.kind === 'inline' ? encoded.message.data.length : encoded.payload.length;
    }
  };
  const start = process.hrtime.bigint();
  for (const item of items) {
    const out = batcher.push(item);
    if (out.length > 0) handle(out);
  }
  handle(batcher.flush());
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  return { ms, batches, wireBytes };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

const format = (n: number): string => Math.round(n).toLocaleString('en-US');

console.log(`node ${process.version}, ${rounds} rounds, median and best of rows/s (one core)`);
for (const kind of ['tpcb', 'bulk'] as const) {
  const { items, rows } = buildStream(kind, totalRows);
  const label = kind === 'tpcb' ? 'pgbench TPC-B (4 rows/tx)' : 'bulk insert (1000 rows/tx)';
  console.log(`\n${label}: ${format(rows)} rows, ${format(items.length)} messages`);
  for (const mode of ['batch', 'batch+encode', 'batch+encode (no validation)'] as const) {
    runOnce(items, mode); // warm-up
    const rates: number[] = [];
    let last = { ms: 0, batches: 0, wireBytes: 0 };
    for (let r = 0; r < rounds; r++) {
      last = runOnce(items, mode);
      rates.push(rows / (last.ms / 1000));
    }
    const wire = mode === 'batch' ? '' : `, ${(last.wireBytes / rows).toFixed(1)} wire bytes/row (gzip-1)`;
    console.log(
      `  ${mode.padEnd(30)} median ${format(median(rates)).padStart(10)} rows/s   best ${format(Math.max(...rates)).padStart(10)} rows/s   (${last.batches} batches${wire})`,
    );
  }
}
