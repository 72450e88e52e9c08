// Pure pgoutput decode throughput on synthetic pgbench-like traffic.
//
//   npx tsx bench/pgoutput-decode.ts [rows=500000] [rounds=5]
//
// Builds CopyData chunks exactly as a walsender sends them (XLogData framing
// around pgoutput v1 messages): transactions of Begin, an UPDATE of
// pgbench_accounts (4 columns incl. an 84-char filler), an INSERT into
// pgbench_history (6 columns with a microsecond timestamp), and Commit; plus
// a share of plain INSERTs into pgbench_accounts as in `pgbench -i`. Then it
// decodes them the way agent/replication-stream.ts does (frame + message) and
// prints rows/s and MB/s. Goal: 150k+ rows/s on one core.

import { parsePgoutputMessage, parseReplicationFrame } from '../agent/pgoutput-reader.ts';

const totalRows = Number(process.argv[2] ?? 500_000);
const rounds = Number(process.argv[3] ?? 5);

function frame(walStart: bigint, payload: Buffer): Buffer {
  const head = Buffer.alloc(25);
  head[0] = 0x77; // w
  head.writeBigUInt64BE(walStart, 1);
  head.writeBigUInt64BE(walStart, 9);
  head.writeBigInt64BE(0n, 17);
  return Buffer.concat([head, payload]);
}

function tuple(values: (string | null)[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.alloc(2);
  n.writeInt16BE(values.length);
  parts.push(n);
  for (const v of values) {
    if (v === null) {
      parts.push(Buffer.from('n'));
      continue;
    }
    const b = Buffer.from(v, 'utf8');
    const h = Buffer.alloc(5);
    h[0] = 0x74; // t
    h.writeInt32BE(b.length, 1);
    parts.push(h, b);
  }
  return Buffer.concat(parts);
}

function change(kind: 'I' | 'U', oid: number, values: (string | null)[]): Buffer {
  const h = Buffer.alloc(6);
  h[0] = kind.charCodeAt(0);
  h.writeUInt32BE(oid, 1);
  h[5] = 0x4e; // N
  return Buffer.concat([h, tuple(values)]);
}

function begin(lsn: bigint, xid: number): Buffer {
  const b = Buffer.alloc(21);
  b[0] = 0x42;
  b.writeBigUInt64BE(lsn, 1);
  b.writeBigInt64BE(848_000_000_000_000n, 9);
  b.writeUInt32BE(xid, 17);
  return b;
}

function commit(lsn: bigint): Buffer {
  const b = Buffer.alloc(26);
  b[0] = 0x43;
  b[1] = 0;
  b.writeBigUInt64BE(lsn, 2);
  b.writeBigUInt64BE(lsn + 48n, 10);
  b.writeBigInt64BE(848_000_000_000_000n, 18);
  return b;
}

// Build the synthetic stream: half the rows in pgbench transactions (2 rows
// each), half as bulk inserts (1000 rows per transaction).
const chunks: Buffer[] = [];
let rows = 0;
let lsn = 0x1_0000_0000n;
let xid = 1000;
const filler = ' '.repeat(84);
while (rows < totalRows / 2) {
  chunks.push(frame(lsn, begin(lsn + 500n, xid)));
  const aid = String(1 + (rows % 100_000));
  const delta = String((rows % 10_000) - 5000);
  chunks.push(frame((lsn += 100n), change('U', 16390, [aid, '1', delta, filler])));
  chunks.push(
    frame((lsn += 100n), change('I', 16396, ['7', '1', aid, delta, '2026-11-23 10:11:12.123456', null])),
  );
  chunks.push(frame((lsn += 100n), commit(lsn)));
  rows += 2;
  xid++;
}
while (rows < totalRows) {
  chunks.push(frame(lsn, begin(lsn + 100_000n, xid++)));
  for (let i = 0; i < 1000 && rows < totalRows; i++, rows++) {
    chunks.push(frame((lsn += 100n), change('I', 16390, [String(rows), '1', '0', filler])));
  }
  chunks.push(frame((lsn += 100n), commit(lsn)));
}
const bytes = chunks.reduce((n, c) => n + c.length, 0);

function decodeAll(): number {
  let decodedRows = 0;
  for (const chunk of chunks) {
    const f = parseReplicationFrame(chunk);
    if (f.kind !== 'xlogdata') continue;
    const m = parsePgoutputMessage(chunk, f.dataOffset);
    if (m.tag === 'insert' || m.tag === 'update' || m.tag === 'delete') decodedRows++;
  }
  return decodedRows;
}

console.log(`pgoutput decode: ${rows} rows in ${chunks.length} CopyData chunks, ${(bytes / 1e6).toFixed(1)} MB`);
decodeAll(); // warm-up (JIT)
const results: number[] = [];
for (let r = 0; r < rounds; r++) {
  const t0 = process.hrtime.bigint();
  const n = decodeAll();
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (n !== rows) throw new Error(`decoded ${n} rows, expected ${rows}`);
  results.push(secs);
  console.log(`  round ${r + 1}: ${(rows / secs / 1000).toFixed(0)}k rows/s, ${(bytes / secs / 1e6).toFixed(1)} MB/s`);
}
const best = Math.min(...results);
const median = [...results].sort((a, b) => a - b)[Math.floor(results.length / 2)]!;
console.log(
  `best: ${(rows / best / 1000).toFixed(0)}k rows/s, ${(bytes / best / 1e6).toFixed(1)} MB/s; ` +
    `median: ${(rows / median / 1000).toFixed(0)}k rows/s, ${(bytes / median / 1e6).toFixed(1)} MB/s (goal 150k rows/s)`,
);
