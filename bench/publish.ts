// How fast does the agent's publishing path go with message ordering?
//
//   npx tsx bench/publish.ts [batches per run, default 200]
//
// Starts its own Pub/Sub emulator, then pushes 1000-row INSERT batches (an
// events table: bigint, timestamptz, integer, text, numeric, jsonb) through
// the real path: BatchOutbox (encode with gzip, flow control, frontier) →
// createPubsubPublisher (ordering key = stream) → emulator, until every batch
// is acknowledged. Prints batches/s, rows/s and wire bytes per batch for a few
// settings of the outbox's in-flight window and the client's batching, plus
// the encode cost alone (what the agent's CPU pays per batch).
//
// The emulator shares the machine (2 cores) with this process, so the figures
// are a floor for the real service, not a forecast.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FsObjectStore } from '../adapters/object-store-fs.ts';
import { createPubsubPublisher, ensureTopic } from '../adapters/pubsub-publisher.ts';
import { BatchOutbox } from '../agent/batch-outbox.ts';
import { encodeBatch } from '../core/batch-codec.ts';
import { formatIsoMicros, type ChangeBatch, type RelationDescriptor } from '../core/change-batch.ts';
import { createLogger } from '../core/log.ts';
import { startPubsubEmulator } from '../local/local-stack.ts';

const BATCHES = Number(process.argv[2] ?? 200);
const ROWS = 1000;
const logger = createLogger({ component: 'bench-publish', level: 'error' });

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

const KINDS = ['deposit', 'withdrawal', 'transfer', 'fee', 'refund'];

/** A chain of `count` batches, each one 1000-row transaction. Deterministic. */
function chain(count: number): ChangeBatch[] {
  const out: ChangeBatch[] = [];
  let prev = 0x1_0000_0000n;
  for (let seq = 0; seq < count; seq++) {
    const commitLsn = prev + 0x40n;
    const endLsn = commitLsn + 0x2_0000n;
    const micros = 1_795_000_000_000_000n + BigInt(seq) * 1000n;
    out.push({
      v: 1,
      kind: 'changes',
      stream: 'main',
      epoch: 1,
      seq,
      lsnPrev: prev,
      lsnFirst: commitLsn,
      lsnLast: endLsn,
      createdAt: new Date(Number(micros / 1000n)).toISOString(),
      relations: [events],
      transactions: [
        {
          xid: 5000 + seq,
          commitLsn,
          endLsn,
          commitTime: formatIsoMicros(micros),
          changes: Array.from({ length: ROWS }, (_, r) => {
            const id = seq * ROWS + r;
            return {
              op: 'insert' as const,
              rel: 0,
              new: [
                String(id),
                '2026-11-23 13:31:02.123456+00',
                String(1 + (id % 977)),
                KINDS[id % KINDS.length]!,
                `${(id % 100_000) / 100}`,
                `{"source": "bench", "ref": ${id * 7919 % 1_000_003}, "tags": ["a", "b"]}`,
              ],
            };
          }),
        },
      ],
    });
    prev = endLsn;
  }
  return out;
}

interface Setting {
  name: string;
  maxInflightBatches: number;
  batching?: { maxMessages?: number; maxMilliseconds?: number };
}

const SETTINGS: Setting[] = [
  { name: 'inflight 16, client sends at once (default)', maxInflightBatches: 16 },
  { name: 'inflight 16, client maxMessages 1', maxInflightBatches: 16, batching: { maxMessages: 1, maxMilliseconds: 0 } },
  { name: 'inflight 16, client waits 10 ms (library default)', maxInflightBatches: 16, batching: { maxMessages: 100, maxMilliseconds: 10 } },
  { name: 'inflight 1 (no pipelining)', maxInflightBatches: 1 },
  { name: 'inflight 64', maxInflightBatches: 64 },
];

async function run(emulatorHost: string, setting: Setting, batches: ChangeBatch[], tmp: string, n: number) {
  const projectId = `bench-publish-${n}-${process.pid}`;
  await ensureTopic({ projectId, topic: 'lifeboat-changes', emulatorHost });
  const publisher = createPubsubPublisher({
    projectId,
    topic: 'lifeboat-changes',
    emulatorHost,
    logger,
    ...(setting.batching && { batching: setting.batching }),
  });
  const outbox = new BatchOutbox({
    stream: 'main',
    startLsn: batches[0]!.lsnPrev,
    publisher,
    objectStore: new FsObjectStore(path.join(tmp, String(n))),
    batching: { maxInflightBatches: setting.maxInflightBatches, maxBufferedBytes: 64 * 1024 * 1024, compressAboveBytes: 1024, claimCheckAboveBytes: 4 * 1024 * 1024 },
    claimCheckPrefix: 'claim-check/',
    onConfirmable: () => {},
    logger,
  });
  const t0 = performance.now();
  for (const b of batches) await outbox.enqueue(b);
  await outbox.drain(AbortSignal.timeout(300_000));
  const seconds = (performance.now() - t0) / 1000;
  const stats = outbox.stats();
  await publisher.close();
  return { seconds, stats };
}

async function main(): Promise<void> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-bench-publish-'));
  const emulator = await startPubsubEmulator({ dir: tmp, log: () => {} });
  try {
    const batches = chain(BATCHES);

    const te = performance.now();
    let wire = 0;
    for (const b of batches) {
      const e = encodeBatch(b);
      wire += e.kind === 'inline' ? e.message.data.length : e.payload.length;
    }
    const encodeMs = (performance.now() - te) / batches.length;
    console.log(`${BATCHES} batches × ${ROWS} rows; gzip body ${(wire / batches.length / 1024).toFixed(1)} KiB per batch; encode alone ${encodeMs.toFixed(2)} ms per batch (${Math.round((ROWS * 1000) / encodeMs).toLocaleString('en')} rows/s)\n`);

    // Warm-up: JIT, gRPC channel, emulator.
    await run(emulator.host, SETTINGS[0]!, chain(20), tmp, 0);

    console.log('setting                                              batches/s      rows/s   wire KiB/batch');
    for (const [i, setting] of SETTINGS.entries()) {
      const { seconds, stats } = await run(emulator.host, setting, batches, tmp, i + 1);
      if (stats.publishedBatches !== batches.length) throw new Error(`${setting.name}: ${stats.publishedBatches} of ${batches.length} acknowledged`);
      const perSecond = stats.publishedBatches / seconds;
      console.log(
        `${setting.name.padEnd(52)} ${perSecond.toFixed(0).padStart(9)} ${Math.round(stats.publishedRows / seconds).toLocaleString('en').padStart(11)} ${(stats.publishedBytes / stats.publishedBatches / 1024).toFixed(1).padStart(16)}`,
      );
    }
  } finally {
    await emulator.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
