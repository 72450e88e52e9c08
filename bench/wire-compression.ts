// How many bytes does a changed row cost on the wire, and which compression
// should the ChangeBatch codec use?
//
//   npx tsx bench/wire-compression.ts
//
// Builds realistic batches with a seeded generator (same numbers every run)
// and, for 100/1000/5000 changed rows per batch, prints the raw JSON size and
// the size after gzip (levels 1 and 6), brotli (quality 4, built-in zlib) and
// zstd (levels 3 and 9, the zstd-codec wasm package), as bytes per changed
// row, plus compress+decompress time per MB of JSON. The JSON row's time is
// JSON.stringify(toWireJson) + JSON.parse (no validation). A last row per
// batch, "codec", is the real path: encodeBatch + decodeMessage with
// validation on both sides, at the codec's default gzip level.
//
// Workloads:
//   pgbench  TPC-B like: per transaction UPDATE pgbench_accounts, UPDATE
//            pgbench_tellers, UPDATE pgbench_branches, INSERT pgbench_history,
//            default replica identity (so updates carry the whole new row and
//            no old key), scale 10. pgbench_accounts.filler is char(84) and
//            pgbench initialises it to '' so it prints as 84 spaces; the other
//            fillers are NULL.
//   bulk     1000-row INSERT transactions into an events table (bigint id,
//            timestamptz, integer, text, numeric, jsonb). A batch carries whole
//            transactions, so there is no 100-row bulk batch.
//
// Goal: ≤ 40 compressed bytes per changed row for pgbench.

import { createRequire } from 'node:module';
import { brotliCompressSync, brotliDecompressSync, constants as zlibConstants, gunzipSync, gzipSync } from 'node:zlib';
import { DEFAULT_GZIP_LEVEL, decodeMessage, encodeBatch } from '../core/batch-codec.ts';
import { batchRowCount, formatIsoMicros, toWireJson, type ChangeBatch, type Change, type RelationDescriptor, type Transaction } from '../core/change-batch.ts';

// ---------------------------------------------------------------------------
// Seeded randomness (mulberry32): reproducible batches.

function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const randomInt = (random: () => number, min: number, max: number): number => min + Math.floor(random() * (max - min + 1));

// ---------------------------------------------------------------------------
// Relations as pgoutput describes them

const int4 = (name: string, key = false) => ({ name, type: 'integer', typeOid: 23, typmod: -1, key });
const bpchar = (name: string, length: number) => ({ name, type: `character(${length})`, typeOid: 1042, typmod: length + 4, key: false });

const pgbenchRelations: RelationDescriptor[] = [
  { oid: 16397, schema: 'public', name: 'pgbench_accounts', replicaIdentity: 'default', columns: [int4('aid', true), int4('bid'), int4('abalance'), bpchar('filler', 84)] },
  { oid: 16394, schema: 'public', name: 'pgbench_tellers', replicaIdentity: 'default', columns: [int4('tid', true), int4('bid'), int4('tbalance'), bpchar('filler', 84)] },
  { oid: 16400, schema: 'public', name: 'pgbench_branches', replicaIdentity: 'default', columns: [int4('bid', true), int4('bbalance'), bpchar('filler', 88)] },
  {
    oid: 16391,
    schema: 'public',
    name: 'pgbench_history',
    replicaIdentity: 'default', // no primary key: fine for an insert-only table
    columns: [int4('tid'), int4('bid'), int4('aid'), int4('delta'), { name: 'mtime', type: 'timestamp without time zone', typeOid: 1114, typmod: -1, key: false }, bpchar('filler', 22)],
  },
];

const eventsRelation: RelationDescriptor = {
  oid: 16420,
  schema: 'public',
  name: 'events',
  replicaIdentity: 'default',
  columns: [
    { name: 'id', type: 'bigint', typeOid: 20, typmod: -1, key: true },
    { name: 'created_at', type: 'timestamp with time zone', typeOid: 1184, typmod: -1, key: false },
    int4('user_id'),
    { name: 'kind', type: 'text', typeOid: 25, typmod: -1, key: false },
    { name: 'amount', type: 'numeric(12,2)', typeOid: 1700, typmod: 786438, key: false },
    { name: 'payload', type: 'jsonb', typeOid: 3802, typmod: -1, key: false },
  ],
};

// ---------------------------------------------------------------------------
// Workload generators

/** Source-side clock and WAL position, shared by a generator's transactions. */
interface SourceState {
  random: () => number;
  lsn: bigint;
  xid: number;
  micros: bigint; // Unix microseconds
}

function newSource(seed: number): SourceState {
  return { random: seededRandom(seed), lsn: 0x16_b374_d848n, xid: 748_211, micros: 1_795_440_662_000_000n };
}

/** Advances WAL and clock for one commit; returns the transaction frame. */
function commit(source: SourceState, walBytes: number, gapMicros: number, changes: Change[]): Transaction {
  const { random } = source;
  const commitLsn = source.lsn + BigInt(walBytes);
  const endLsn = commitLsn + 40n + BigInt(randomInt(random, 0, 15) * 8); // a commit record, 8-byte aligned-ish
  source.lsn = endLsn + BigInt(randomInt(random, 0, 3) * 8);
  source.xid += randomInt(random, 1, 4); // concurrent clients interleave xids
  source.micros += BigInt(gapMicros);
  return { xid: source.xid, commitLsn, endLsn, commitTime: formatIsoMicros(source.micros), changes };
}

/** timestamp without time zone text, as PostgreSQL prints it: `2026-11-23 13:31:02.123456`. */
function pgTimestamp(unixMicros: bigint): string {
  return formatIsoMicros(unixMicros).replace('T', ' ').replace('Z', '').replace(/\.?0+$/, '');
}

function pgbenchGenerator(seed: number, scale = 10): (transactions: number) => Transaction[] {
  const source = newSource(seed);
  const { random } = source;
  const accounts = new Map<number, number>();
  const tellers = new Map<number, number>();
  const branches = new Map<number, number>();
  const accountFiller = ' '.repeat(84);
  return (count) =>
    Array.from({ length: count }, () => {
      const aid = randomInt(random, 1, 100_000 * scale);
      const tid = randomInt(random, 1, 10 * scale);
      const bid = randomInt(random, 1, scale);
      const delta = randomInt(random, -5000, 5000);
      const abalance = (accounts.get(aid) ?? 0) + delta;
      const tbalance = (tellers.get(tid) ?? 0) + delta;
      const bbalance = (branches.get(bid) ?? 0) + delta;
      accounts.set(aid, abalance);
      tellers.set(tid, tbalance);
      branches.set(bid, bbalance);
      const startMicros = source.micros + BigInt(randomInt(random, 50, 400));
      const changes: Change[] = [
        { op: 'update', rel: 0, new: [String(aid), String(Math.floor((aid - 1) / 100_000) + 1), String(abalance), accountFiller] },
        { op: 'update', rel: 1, new: [String(tid), String(Math.floor((tid - 1) / 10) + 1), String(tbalance), null] },
        { op: 'update', rel: 2, new: [String(bid), String(bbalance), null] },
        { op: 'insert', rel: 3, new: [String(tid), String(bid), String(aid), String(delta), pgTimestamp(startMicros), null] },
      ];
      // ~1,300 tps on this machine: about 780 µs between commits, ~600 WAL bytes each.
      return commit(source, randomInt(random, 520, 700), randomInt(random, 300, 1300), changes);
    });
}

const EVENT_KINDS = ['page_view', 'click', 'signup', 'purchase', 'logout'];
const USER_AGENTS = ['Mozilla/5.0 (X11; Linux x86_64)', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)', 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)'];

function bulkGenerator(seed: number, rowsPerTransaction = 1000): (transactions: number) => Transaction[] {
  const source = newSource(seed);
  const { random } = source;
  let nextId = 10_000_000;
  return (count) =>
    Array.from({ length: count }, () => {
      const changes: Change[] = [];
      for (let i = 0; i < rowsPerTransaction; i++) {
        const createdMicros = source.micros + BigInt(i * randomInt(random, 5, 40));
        const kind = EVENT_KINDS[randomInt(random, 0, EVENT_KINDS.length - 1)] as string;
        const cents = randomInt(random, 0, 2_000_000);
        const payload = `{"ip": "10.${randomInt(random, 0, 255)}.${randomInt(random, 0, 255)}.${randomInt(random, 1, 254)}", "ua": "${USER_AGENTS[randomInt(random, 0, 2)]}", "ref": "campaign-${randomInt(random, 1, 60)}"}`;
        changes.push({
          op: 'insert',
          rel: 0,
          new: [String(nextId++), `${pgTimestamp(createdMicros)}+00`, String(randomInt(random, 1, 100_000)), kind, (cents / 100).toFixed(2), payload],
        });
      }
      return commit(source, rowsPerTransaction * randomInt(random, 150, 180), randomInt(random, 20_000, 60_000), changes);
    });
}

function batchOf(relations: RelationDescriptor[], transactions: Transaction[], lsnPrev: bigint, seq: number): ChangeBatch {
  const first = transactions[0] as Transaction;
  const last = transactions[transactions.length - 1] as Transaction;
  return {
    v: 1,
    kind: 'changes',
    stream: 'main',
    epoch: 7,
    seq,
    lsnPrev,
    lsnFirst: first.commitLsn,
    lsnLast: last.endLsn,
    createdAt: new Date(Date.parse(last.commitTime) + 3).toISOString(), // the agent sends a few ms after the commit
    relations,
    transactions,
  };
}

// ---------------------------------------------------------------------------
// Codecs

interface Codec {
  name: string;
  compress(json: Buffer): Uint8Array;
  decompress(data: Uint8Array): Uint8Array;
}

interface ZstdSimple {
  compress(data: Uint8Array, level: number): Uint8Array | null;
  decompress(data: Uint8Array): Uint8Array | null;
}

/** zstd-codec has no types and initialises its wasm asynchronously. */
async function loadZstd(): Promise<ZstdSimple> {
  const require = createRequire(import.meta.url);
  const { ZstdCodec } = require('zstd-codec') as { ZstdCodec: { run(onReady: (zstd: { Simple: new () => ZstdSimple }) => void): void } };
  return new Promise((resolve) => ZstdCodec.run((zstd) => resolve(new zstd.Simple())));
}

function zstdCodec(zstd: ZstdSimple, level: number): Codec {
  return {
    name: `zstd-${level}`,
    compress: (json) => {
      const out = zstd.compress(json, level);
      if (out === null) throw new Error('zstd compress failed');
      return out;
    },
    decompress: (data) => {
      const out = zstd.decompress(data);
      if (out === null) throw new Error('zstd decompress failed');
      return out;
    },
  };
}

function codecs(zstd: ZstdSimple): Codec[] {
  const gzip = (level: number): Codec => ({ name: `gzip-${level}`, compress: (json) => gzipSync(json, { level }), decompress: (data) => gunzipSync(data) });
  return [
    gzip(1),
    gzip(6),
    {
      name: 'brotli-4',
      compress: (json) =>
        brotliCompressSync(json, { params: { [zlibConstants.BROTLI_PARAM_QUALITY]: 4, [zlibConstants.BROTLI_PARAM_SIZE_HINT]: json.length } }),
      decompress: (data) => brotliDecompressSync(data),
    },
    zstdCodec(zstd, 3),
    zstdCodec(zstd, 9),
  ];
}

// ---------------------------------------------------------------------------
// Measurement

/** Median ms per call of `fn`, over enough calls to total ~1 MB+ of input per round. */
async function timePerCall(inputBytes: number, fn: () => unknown | Promise<unknown>): Promise<number> {
  const callsPerRound = Math.max(3, Math.ceil((2 * 1024 * 1024) / inputBytes));
  await fn(); // warm up
  const rounds: number[] = [];
  for (let round = 0; round < 5; round++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < callsPerRound; i++) await fn();
    rounds.push(Number(process.hrtime.bigint() - start) / 1e6 / callsPerRound);
  }
  rounds.sort((a, b) => a - b);
  return rounds[2] as number;
}

interface Row {
  workload: string;
  rows: number;
  codec: string;
  bytes: number;
  bytesPerRow: number;
  ratio: number;
  msPerMB: number;
}

async function measure(workload: string, batch: ChangeBatch, codecList: Codec[]): Promise<Row[]> {
  const rows = batchRowCount(batch);
  const json = Buffer.from(JSON.stringify(toWireJson(batch)), 'utf8');
  const mb = json.length / (1024 * 1024);
  const row = (codec: string, bytes: number, ms: number): Row => ({ workload, rows, codec, bytes, bytesPerRow: bytes / rows, ratio: json.length / bytes, msPerMB: ms / mb });

  const results: Row[] = [];
  const jsonMs = await timePerCall(json.length, () => JSON.parse(JSON.stringify(toWireJson(batch))));
  results.push(row('json', json.length, jsonMs));
  for (const codec of codecList) {
    const compressed = codec.compress(json);
    if (!Buffer.from(codec.decompress(compressed)).equals(json)) throw new Error(`${codec.name} did not round-trip`);
    const ms = await timePerCall(json.length, () => codec.decompress(codec.compress(json)));
    results.push(row(codec.name, compressed.length, ms));
  }
  // The real path: validate + JSON + gzip + checksum, and back.
  const encoded = encodeBatch(batch, { claimCheckAboveBytes: Number.MAX_SAFE_INTEGER });
  if (encoded.kind !== 'inline') throw new Error('expected an inline message');
  const ms = await timePerCall(json.length, () => {
    const again = encodeBatch(batch, { claimCheckAboveBytes: Number.MAX_SAFE_INTEGER });
    return again.kind === 'inline' ? decodeMessage(again.message) : undefined;
  });
  results.push(row(`codec (gzip-${DEFAULT_GZIP_LEVEL})`, encoded.message.data.length, ms));
  return results;
}

function printTable(rows: Row[]): void {
  const header = ['workload', 'rows', 'codec', 'bytes', 'B/row', 'ratio', 'enc+dec ms/MB'];
  const cells = rows.map((r) => [r.workload, String(r.rows), r.codec, r.bytes.toLocaleString('en-US'), r.bytesPerRow.toFixed(1), `${r.ratio.toFixed(1)}x`, r.msPerMB.toFixed(1)]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (values: string[]): string => values.map((v, i) => (i < 3 ? v.padEnd(widths[i] as number) : v.padStart(widths[i] as number))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  let previous = '';
  for (const [i, c] of cells.entries()) {
    const group = `${rows[i]?.workload}/${rows[i]?.rows}`;
    if (previous !== '' && group !== previous) console.log('');
    previous = group;
    console.log(line(c));
  }
}

function find(rows: Row[], workload: string, size: number, codec: string): Row {
  const row = rows.find((r) => r.workload === workload && r.rows === size && r.codec === codec);
  if (row === undefined) throw new Error(`no result for ${workload}/${size}/${codec}`);
  return row;
}

async function main(): Promise<void> {
  const zstd = await loadZstd();
  const codecList = codecs(zstd);
  const results: Row[] = [];

  for (const rowsPerBatch of [100, 1000, 5000]) {
    const nextTransactions = pgbenchGenerator(42);
    nextTransactions(2000); // warm the balances up, as a running pgbench would be
    const transactions = nextTransactions(rowsPerBatch / 4);
    results.push(...(await measure('pgbench', batchOf(pgbenchRelations, transactions, (transactions[0] as Transaction).commitLsn - 16n, 1), codecList)));
  }
  for (const rowsPerBatch of [1000, 5000]) {
    const transactions = bulkGenerator(7)(rowsPerBatch / 1000);
    results.push(...(await measure('bulk', batchOf([eventsRelation], transactions, (transactions[0] as Transaction).commitLsn - 16n, 1), codecList)));
  }

  printTable(results);
  console.log('(bulk has no 100-row batch: a batch carries whole 1000-row transactions)');
  console.log('');

  // Conclusions, at the batch sizes the agent will mostly send.
  for (const size of [1000, 5000]) {
    const gzip1 = find(results, 'pgbench', size, 'gzip-1');
    const gzip6 = find(results, 'pgbench', size, 'gzip-6');
    const zstd3 = find(results, 'pgbench', size, 'zstd-3');
    const saving = 1 - zstd3.bytes / gzip1.bytes;
    console.log(
      `pgbench ${size} rows: gzip-1 ${gzip1.bytesPerRow.toFixed(1)} B/row (${gzip1.msPerMB.toFixed(1)} ms/MB), gzip-6 ${gzip6.bytesPerRow.toFixed(1)} B/row (${gzip6.msPerMB.toFixed(1)} ms/MB), zstd-3 ${zstd3.bytesPerRow.toFixed(1)} B/row (${zstd3.msPerMB.toFixed(1)} ms/MB): zstd-3 is ${(saving * 100).toFixed(0)}% smaller than gzip-1.`,
    );
  }
  const gzip1 = find(results, 'pgbench', 1000, 'gzip-1');
  const gzip6 = find(results, 'pgbench', 1000, 'gzip-6');
  const zstd3 = find(results, 'pgbench', 1000, 'zstd-3');
  const bulkGzip1 = find(results, 'bulk', 1000, 'gzip-1');
  const bulkZstd3 = find(results, 'bulk', 1000, 'zstd-3');
  // zstd would pay off if it saved a quarter of the bytes at no worse speed, or
  // were clearly faster at equal size: enough to justify a wasm dependency.
  const paysOff =
    (zstd3.bytes <= 0.75 * gzip1.bytes && zstd3.msPerMB <= gzip1.msPerMB) ||
    (zstd3.bytes <= gzip1.bytes && zstd3.msPerMB <= 0.5 * gzip1.msPerMB);
  const defaultRow = find(results, 'pgbench', 1000, `codec (gzip-${DEFAULT_GZIP_LEVEL})`);
  // The apply side's share alone: checksum, gunzip, JSON.parse and full validation.
  const sample = pgbenchGenerator(42)(250);
  const sampleBatch = batchOf(pgbenchRelations, sample, (sample[0] as Transaction).commitLsn - 16n, 1);
  const sampleEncoded = encodeBatch(sampleBatch);
  if (sampleEncoded.kind !== 'inline') throw new Error('expected an inline message');
  const decodeMs = await timePerCall(sampleEncoded.message.data.length * 7, () => decodeMessage(sampleEncoded.message));
  console.log(`decodeMessage alone (apply side), pgbench 1000 rows: ${decodeMs.toFixed(2)} ms per batch = ${Math.round(1000 / (decodeMs / 1000)).toLocaleString('en-US')} rows/s on one core.`);
  console.log(
    `Goal ≤ 40 B/row for pgbench: ${defaultRow.bytesPerRow <= 40 ? 'met' : 'NOT met'} with the codec's default gzip-${DEFAULT_GZIP_LEVEL} (${defaultRow.bytesPerRow.toFixed(1)} B/row at 1000 rows).`,
  );
  console.log(
    `Conclusion: zstd ${paysOff ? 'PAYS OFF' : 'does NOT pay off'} over gzip: at 1000 rows zstd-3 is ${zstd3.bytesPerRow.toFixed(1)} B/row vs gzip-1 ${gzip1.bytesPerRow.toFixed(1)} / gzip-6 ${gzip6.bytesPerRow.toFixed(1)} (pgbench), ${bulkZstd3.bytesPerRow.toFixed(1)} vs ${bulkGzip1.bytesPerRow.toFixed(1)} (bulk), at ${zstd3.msPerMB.toFixed(1)} vs ${gzip1.msPerMB.toFixed(1)} ms/MB; ${paysOff ? 'worth a json+zstd encoding.' : 'keep json+gzip (native in Node, no wasm dependency).'}`,
  );
}

await main();
