import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decodeMessage,
  encodeBatch,
  messageFromPushData,
  tablesAttribute,
  type EncodedBatch,
  type PubSubMessage,
  type ReceivedMessage,
} from '../../core/batch-codec.ts';
import {
  UNCHANGED_TOAST,
  formatIsoMicros,
  toWireJson,
  type ChangeBatch,
  type Change,
  type RelationDescriptor,
  type Transaction,
  type Tuple,
  type TupleValue,
} from '../../core/change-batch.ts';
import { PermanentError, ValidationError } from '../../core/errors.ts';
import { sampleBatch } from './batch-fixtures.ts';

// ---------------------------------------------------------------------------
// Arbitraries for valid batches

// fast-check may build null-prototype records; decoded batches are plain
// objects, and toStrictEqual compares prototypes too.
const plainObjects = { noNullPrototype: true } as const;

/** Text as PostgreSQL could print it: any code point (astral too) but NUL. */
const pgText = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: 'binary', maxLength: 16 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 8 }) },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', '0', 'null', 'NULL', '\\N', '{"a": 1.10}', '2026-11-23 13:31:02.123456+01', '😀𝄞', '\t\n"\\') },
  // Huge numerics: 40-digit decimals that a JSON number would mangle.
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.bigInt({ min: -(10n ** 40n), max: 10n ** 40n }), fc.bigInt({ min: 0n, max: 10n ** 10n - 1n }))
      .map(([whole, fraction]) => `${whole}.${fraction.toString().padStart(10, '0')}`),
  },
).map((text) => text.replaceAll('\u0000', ''));

const sqlValue: fc.Arbitrary<string | null> = fc.oneof({ weight: 5, arbitrary: pgText }, { weight: 1, arbitrary: fc.constant(null) });
const keyValue = pgText;
const newValue: fc.Arbitrary<TupleValue> = fc.oneof(
  { weight: 5, arbitrary: sqlValue },
  { weight: 1, arbitrary: fc.constant(UNCHANGED_TOAST) },
);

const identifier = fc.oneof(fc.stringMatching(/^[a-z_][a-z0-9_]{0,20}$/), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 10 }));
const typeName = fc.constantFrom('integer', 'bigint', 'text', 'numeric(40,10)', 'public.mood[]', 'timestamp with time zone', 'jsonb', 'bytea', 'character(84)');

const relationArb: fc.Arbitrary<RelationDescriptor> = fc
  .record({
    oid: fc.integer({ min: 0, max: 0xffffffff }),
    schema: identifier,
    name: identifier,
    replicaIdentity: fc.constantFrom('default', 'index', 'full', 'nothing', 'default', 'full'),
    columns: fc.uniqueArray(
      fc.record({ name: identifier, type: typeName, typeOid: fc.integer({ min: 0, max: 0xffffffff }), typmod: fc.integer({ min: -1, max: 1000 }) }),
      { minLength: 1, maxLength: 6, selector: (column) => column.name },
    ),
    keyColumns: fc.integer({ min: 1, max: 6 }),
  })
  .map(({ keyColumns, ...relation }) => ({
    ...relation,
    // pgoutput flags: FULL marks every column, NOTHING none, default/index the key.
    columns: relation.columns.map((column, i) => ({
      ...column,
      key: relation.replicaIdentity === 'full' || (relation.replicaIdentity !== 'nothing' && i < keyColumns),
    })),
  }));

function tupleOf(relation: RelationDescriptor, valueFor: (key: boolean) => fc.Arbitrary<TupleValue>): fc.Arbitrary<Tuple> {
  return fc.tuple(...relation.columns.map((column) => valueFor(column.key)));
}

/** A row change that PostgreSQL could have sent for this relation. */
function rowChangeArb(relations: RelationDescriptor[]): fc.Arbitrary<Change> {
  return fc.integer({ min: 0, max: relations.length - 1 }).chain((rel): fc.Arbitrary<Change> => {
    const relation = relations[rel] as RelationDescriptor;
    const insert = tupleOf(relation, () => sqlValue).map((tuple): Change => ({ op: 'insert', rel, new: tuple }));
    const keyTuple = tupleOf(relation, (key) => (key ? keyValue : fc.constant(null)));
    switch (relation.replicaIdentity) {
      case 'nothing':
        return insert;
      case 'full':
        return fc.oneof(
          insert,
          fc.record({ new: tupleOf(relation, () => newValue), old: tupleOf(relation, () => sqlValue) }).map((t): Change => ({ op: 'update', rel, ...t })),
          tupleOf(relation, () => sqlValue).map((old): Change => ({ op: 'delete', rel, old })),
        );
      default:
        return fc.oneof(
          insert,
          fc
            .record({ new: tupleOf(relation, (key) => (key ? keyValue : newValue)), key: keyTuple }, { ...plainObjects, requiredKeys: ['new'] })
            .map((t): Change => ({ op: 'update', rel, ...t })),
          keyTuple.map((key): Change => ({ op: 'delete', rel, key })),
        );
    }
  });
}

function changeArb(relations: RelationDescriptor[]): fc.Arbitrary<Change> {
  const truncate = fc
    .record({
      rels: fc.uniqueArray(fc.integer({ min: 0, max: relations.length - 1 }), { minLength: 1, maxLength: relations.length }),
      cascade: fc.boolean(),
      restartIdentity: fc.boolean(),
    })
    .map((t): Change => ({ op: 'truncate', ...t }));
  return fc.oneof({ weight: 12, arbitrary: rowChangeArb(relations) }, { weight: 1, arbitrary: truncate });
}

const commitTimeArb = fc.bigInt({ min: 946_684_800_000_000n, max: 4_102_444_800_000_000n }).map(formatIsoMicros);
const createdAtArb = fc.date({ min: new Date('2000-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString());

interface Common {
  stream: string;
  epoch: number;
  seq: number;
  lsnPrev: bigint;
  createdAt: string;
}
const commonArb: fc.Arbitrary<Common> = fc.record({
  stream: fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,62}$/),
  epoch: fc.maxSafeNat(),
  seq: fc.maxSafeNat(),
  lsnPrev: fc.bigInt({ min: 0n, max: 1n << 63n }),
  createdAt: createdAtArb,
});

const changesBatchArb: fc.Arbitrary<ChangeBatch> = fc
  .tuple(commonArb, fc.array(relationArb, { minLength: 1, maxLength: 4 }))
  .chain(([common, relations]) =>
    fc
      .array(
        fc.record({
          xid: fc.integer({ min: 0, max: 0xffffffff }),
          gap: fc.bigInt({ min: 0n, max: 1n << 20n }),
          length: fc.bigInt({ min: 1n, max: 1n << 12n }),
          commitTime: commitTimeArb,
          changes: fc.array(changeArb(relations), { minLength: 1, maxLength: 8 }),
        }),
        { minLength: 1, maxLength: 6 },
      )
      .map((drafts): ChangeBatch => {
        let at = common.lsnPrev;
        const transactions: Transaction[] = drafts.map(({ gap, length, ...tx }) => {
          const commitLsn = at + gap;
          at = commitLsn + length;
          return { ...tx, commitLsn, endLsn: at };
        });
        const first = transactions[0] as Transaction;
        return { v: 1, kind: 'changes', ...common, lsnFirst: first.commitLsn, lsnLast: at, relations, transactions };
      }),
  );

const snapshotBatchArb: fc.Arbitrary<ChangeBatch> = fc
  .tuple(commonArb, relationArb, fc.bigInt({ min: 0n, max: 1n << 20n }))
  .chain(([common, relation, ahead]) =>
    fc
      .record({
        snapshotId: fc.stringMatching(/^[0-9A-F]{8}-[0-9A-F]{8}-[0-9]$/),
        chunk: fc.nat(),
        rows: fc.array(tupleOf(relation, () => sqlValue), { maxLength: 10 }),
        lastChunk: fc.boolean(),
      })
      .map((snapshot): ChangeBatch => {
        const at = common.lsnPrev + ahead;
        return {
          v: 1,
          kind: 'snapshot',
          ...common,
          lsnFirst: at,
          lsnLast: at,
          relations: [relation],
          transactions: [],
          snapshot: { ...snapshot, relation: 0, consistentLsn: at },
        };
      }),
  );

const heartbeatBatchArb: fc.Arbitrary<ChangeBatch> = fc
  .tuple(
    commonArb,
    fc.record({
      sourceTime: createdAtArb,
      walLsn: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      sequences: fc.array(
        fc.record({
          schema: identifier,
          name: identifier,
          lastValue: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String),
          isCalled: fc.boolean(),
        }, plainObjects),
        { maxLength: 4 },
      ),
    }, plainObjects),
  )
  .map(([common, heartbeat]): ChangeBatch => ({
    v: 1,
    kind: 'heartbeat',
    ...common,
    lsnFirst: common.lsnPrev,
    lsnLast: common.lsnPrev,
    relations: [],
    transactions: [],
    heartbeat,
  }));

const markerBatchArb: fc.Arbitrary<ChangeBatch> = fc
  .tuple(
    commonArb,
    fc.record(
      { markerId: fc.uuid(), reason: fc.constantFrom('takeover', 'drain', 'failback'), requestedBy: pgText },
      { ...plainObjects, requiredKeys: ['markerId', 'reason'] },
    ),
  )
  .map(([common, marker]): ChangeBatch => ({
    v: 1,
    kind: 'marker',
    ...common,
    lsnFirst: common.lsnPrev,
    lsnLast: common.lsnPrev,
    relations: [],
    transactions: [],
    marker,
  }));

const batchArb = fc.oneof(
  { weight: 4, arbitrary: changesBatchArb },
  { weight: 1, arbitrary: snapshotBatchArb },
  { weight: 1, arbitrary: heartbeatBatchArb },
  { weight: 1, arbitrary: markerBatchArb },
);

// ---------------------------------------------------------------------------
// Helpers

/** An in-memory claim-check store standing in for GCS. */
function memoryStore(): { put(uri: string, payload: Buffer): void; fetch(uri: string): Promise<Buffer> } {
  const objects = new Map<string, Buffer>();
  return {
    put: (uri, payload) => objects.set(uri, Buffer.from(payload)),
    fetch: async (uri) => {
      const payload = objects.get(uri);
      if (payload === undefined) throw new Error(`no object at ${uri}`);
      return payload;
    },
  };
}

let uriCounter = 0;
function finishClaimCheck(encoded: EncodedBatch, store: ReturnType<typeof memoryStore>): PubSubMessage {
  if (encoded.kind !== 'claim-check') throw new Error(`expected a claim check, got ${encoded.kind}`);
  const uri = `gs://lifeboat-test/batches/${++uriCounter}.json.gz`;
  store.put(uri, encoded.payload);
  return encoded.finish(uri);
}

function inlineMessage(encoded: EncodedBatch): PubSubMessage {
  if (encoded.kind !== 'inline') throw new Error(`expected inline, got ${encoded.kind}`);
  return encoded.message;
}

/** Replaces the data and recomputes the checksum, as a buggy but honest producer would. */
function withData(message: PubSubMessage, data: Buffer, attributes: Record<string, string> = {}): ReceivedMessage {
  const checksum = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  return { data, attributes: { ...message.attributes, ...attributes, checksum }, orderingKey: message.orderingKey };
}

/** Re-encodes an edited wire JSON body as plain JSON with a correct checksum. */
function withWireBody(message: PubSubMessage, edit: (wire: Record<string, unknown>) => void): ReceivedMessage {
  const wire = JSON.parse(message.data.toString('utf8')) as Record<string, unknown>;
  edit(wire);
  return withData(message, Buffer.from(JSON.stringify(wire)), { encoding: 'json' });
}

async function decodeError(message: ReceivedMessage, ...rest: Parameters<typeof decodeMessage> extends [unknown, ...infer R] ? R : never): Promise<Error> {
  try {
    await decodeMessage(message, ...rest);
  } catch (err) {
    return err as Error;
  }
  throw new Error('decodeMessage did not throw');
}

/** Plain JSON (no compression) so tests can edit the body. */
function sampleMessage(batch = sampleBatch()): PubSubMessage {
  return inlineMessage(encodeBatch(batch, { compressAboveBytes: Number.MAX_SAFE_INTEGER }));
}

// ---------------------------------------------------------------------------

describe('round trip', () => {
  it('decode(encode(b)) equals b on the inline JSON, inline gzip and claim-check paths', async () => {
    const store = memoryStore();
    let gzipped = 0;
    await fc.assert(
      fc.asyncProperty(batchArb, async (batch) => {
        const plain = inlineMessage(encodeBatch(batch, { compressAboveBytes: Number.MAX_SAFE_INTEGER }));
        expect(plain.attributes.encoding).toBe('json');
        expect(await decodeMessage(plain)).toStrictEqual(batch);

        const compressed = inlineMessage(encodeBatch(batch, { compressAboveBytes: 0 }));
        if (compressed.attributes.encoding === 'json+gzip') gzipped += 1;
        // gzip is used only when it makes the body smaller.
        expect(compressed.data.length).toBeLessThanOrEqual(plain.data.length);
        expect(await decodeMessage(compressed)).toStrictEqual(batch);

        const claimCheck = finishClaimCheck(encodeBatch(batch, { claimCheckAboveBytes: 0 }), store);
        expect(claimCheck.attributes.payload).toBe('gcs');
        expect(await decodeMessage(claimCheck, store.fetch)).toStrictEqual(batch);
      }),
      { numRuns: 150 },
    );
    expect(gzipped).toBeGreaterThan(50);
  });

  it('survives a push envelope (base64 data, attributes, no ordering key)', async () => {
    await fc.assert(
      fc.asyncProperty(batchArb, async (batch) => {
        const { data, attributes } = inlineMessage(encodeBatch(batch));
        const pushed = messageFromPushData(data.toString('base64'), attributes);
        expect(await decodeMessage(pushed)).toStrictEqual(batch);
      }),
      { numRuns: 50 },
    );
  });
});

describe('encodeBatch', () => {
  it('describes the batch in attributes readable with gcloud pull', () => {
    const message = sampleMessage();
    expect(message.orderingKey).toBe('main');
    expect(message.attributes).toEqual({
      'lifeboat-version': '1',
      kind: 'changes',
      stream: 'main',
      epoch: '3',
      seq: '17',
      'lsn-prev': '0/1CF7400',
      'lsn-first': '0/1CF7460',
      'lsn-last': '0/1CF7600',
      'tx-count': '2',
      'row-count': '3',
      tables: 'public.pgbench_accounts',
      encoding: 'json',
      payload: 'inline',
      checksum: `sha256:${createHash('sha256').update(message.data).digest('hex')}`,
    });
    // Unchanged TOAST travels as 0; LSNs as canonical text.
    const body = JSON.parse(message.data.toString('utf8'));
    expect(body.transactions[0].changes[0].new).toEqual(['1', '1', '-42', 0]);
    expect(body.lsnLast).toBe('0/1CF7600');
  });

  it('gzips bodies above compressAboveBytes', () => {
    const big = encodeBatch(sampleBatch(), { compressAboveBytes: 100 });
    expect(inlineMessage(big).attributes.encoding).toBe('json+gzip');
    const small = encodeBatch(sampleBatch(), { compressAboveBytes: 5000 });
    expect(inlineMessage(small).attributes.encoding).toBe('json');
  });

  it('switches to a claim check above claimCheckAboveBytes or when the message would not fit', async () => {
    const store = memoryStore();
    const encoded = encodeBatch(sampleBatch(), { claimCheckAboveBytes: 10 });
    expect(encoded.kind).toBe('claim-check');
    const message = finishClaimCheck(encoded, store);
    const pointer = JSON.parse(message.data.toString('utf8'));
    expect(pointer).toEqual({
      claimCheck: {
        uri: expect.stringMatching(/^gs:\/\/lifeboat-test\//),
        bytes: encoded.kind === 'claim-check' ? encoded.payload.length : -1,
        sha256: encoded.kind === 'claim-check' ? encoded.sha256 : '',
        encoding: 'json+gzip',
      },
    });
    expect(message.attributes.payload).toBe('gcs');
    expect(message.attributes.encoding).toBe('json+gzip');

    // Plain JSON body (~1.1 kB) plus attributes would not fit 1200 bytes; the pointer does.
    const tooBigForPubSub = encodeBatch(sampleBatch(), { compressAboveBytes: Number.MAX_SAFE_INTEGER, maxMessageBytes: 1200 });
    expect(tooBigForPubSub.kind).toBe('claim-check');
    if (tooBigForPubSub.kind === 'claim-check') {
      const local = tooBigForPubSub.finish('file:///var/lib/lifeboat/claims/1.json');
      expect(await decodeMessage(local, async () => tooBigForPubSub.payload)).toStrictEqual(sampleBatch());
    }
  });

  it('refuses bad claim-check URIs', () => {
    const encoded = encodeBatch(sampleBatch(), { claimCheckAboveBytes: 0 });
    if (encoded.kind !== 'claim-check') throw new Error('expected a claim check');
    expect(() => encoded.finish('https://example.com/x')).toThrow('is not gs://bucket/path or file:///path');
    expect(() => encoded.finish('gs://bucket')).toThrow(ValidationError);
  });

  it('refuses to encode an invalid batch, naming the problem', () => {
    const batch = sampleBatch();
    (batch.transactions[0] as Transaction).changes.push({ op: 'insert', rel: 0, new: ['3'] });
    expect(() => encodeBatch(batch)).toThrow(
      'cannot encode batch seq 17 of stream main: invalid ChangeBatch (1 problem): transactions[0].changes[2].new: tuple has 1 value but relation public.pgbench_accounts has 4 columns',
    );
  });

  it('truncates the tables attribute to 1024 bytes with a count of the rest', () => {
    const names = Array.from({ length: 200 }, (_, i) => `schema_${i}.table_with_a_long_name_${i}`);
    const value = tablesAttribute(names);
    expect(Buffer.byteLength(value)).toBeLessThanOrEqual(1024);
    const match = /^(.*),…\(\+(\d+) more\)$/.exec(value);
    expect(match).not.toBeNull();
    const kept = (match?.[1] ?? '').split(',');
    expect(kept.length + Number(match?.[2])).toBe(200);
    expect(kept).toEqual(names.slice(0, kept.length));
    expect(tablesAttribute(['a.b', 'c.d'])).toBe('a.b,c.d');
    expect(tablesAttribute(['x'.repeat(2000)])).toBe('…(+1 more)');
    // Multi-byte names are measured in UTF-8 bytes.
    fc.assert(
      fc.property(fc.array(fc.string({ unit: 'binary', maxLength: 80 }), { maxLength: 60 }), (list) => {
        expect(Buffer.byteLength(tablesAttribute(list))).toBeLessThanOrEqual(1024);
      }),
    );
  });
});

describe('decodeMessage rejects malformed input with a clear message', () => {
  it('bad JSON', async () => {
    const err = await decodeError(withData(sampleMessage(), Buffer.from('{"v": 1, "kind":'), { encoding: 'json' }));
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.message).toMatch(/^message body is not valid JSON: /);
  });

  it('invalid UTF-8', async () => {
    const err = await decodeError(withData(sampleMessage(), Buffer.from([0x7b, 0xff, 0x7d]), { encoding: 'json' }));
    expect(err.message).toBe('message body is not valid UTF-8');
  });

  it('unsupported lifeboat-version attribute', async () => {
    const message = sampleMessage();
    const err = await decodeError({ ...message, attributes: { ...message.attributes, 'lifeboat-version': '2' } });
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.message).toBe('unsupported lifeboat-version 2: this apply function understands 1; upgrade the function');
  });

  it('missing lifeboat-version or other attributes', async () => {
    const message = sampleMessage();
    const { 'lifeboat-version': _, ...noVersion } = message.attributes;
    expect((await decodeError({ ...message, attributes: noVersion })).message).toContain('no lifeboat-version attribute');
    const { 'lsn-prev': __, ...noPrev } = message.attributes;
    expect((await decodeError({ ...message, attributes: noPrev })).message).toBe('message has no lsn-prev attribute');
  });

  it('wrong body version', async () => {
    const err = await decodeError(withWireBody(sampleMessage(), (wire) => (wire.v = 2)));
    expect(err.message).toContain('v: unsupported ChangeBatch version 2: this code understands v1');
  });

  it('missing field', async () => {
    const err = await decodeError(withWireBody(sampleMessage(), (wire) => delete wire.lsnLast));
    expect(err.message).toContain('lsnLast: required field is missing');
  });

  it('tuple length mismatch', async () => {
    const err = await decodeError(
      withWireBody(sampleMessage(), (wire) => {
        const txs = wire.transactions as { changes: { new: unknown[] }[] }[];
        txs[0]?.changes[1]?.new.pop();
      }),
    );
    expect(err.message).toContain('transactions[0].changes[1].new: tuple has 3 values but relation public.pgbench_accounts has 4 columns');
  });

  it('bad LSN text', async () => {
    const err = await decodeError(withWireBody(sampleMessage(), (wire) => (wire.lsnPrev = 'G/0')));
    expect(err.message).toContain('lsnPrev: invalid LSN "G/0"');
  });

  it('non-monotonic transaction order', async () => {
    const err = await decodeError(
      withWireBody(sampleMessage(), (wire) => {
        const txs = wire.transactions as { commitLsn: string }[];
        (txs[1] as { commitLsn: string }).commitLsn = '0/1CF7470';
      }),
    );
    expect(err.message).toContain(
      "transactions[1].commitLsn: transactions out of order: commitLsn 0/1CF7470 is before the previous transaction's endLsn 0/1CF7490",
    );
  });

  it('unknown kind', async () => {
    const err = await decodeError(withWireBody(sampleMessage(), (wire) => (wire.kind = 'schema')), undefined);
    expect(err.message).toContain('kind: unknown kind "schema": expected changes, snapshot, heartbeat or marker');
  });

  it('lying checksum', async () => {
    const message = sampleMessage();
    const data = Buffer.from(message.data);
    data[10] = (data[10] ?? 0) ^ 1;
    const err = await decodeError({ ...message, data });
    expect(err.message).toMatch(/^checksum mismatch: attribute checksum is sha256:[0-9a-f]{64} but the message data hashes to sha256:[0-9a-f]{64}/);
    const malformed = await decodeError({ ...message, attributes: { ...message.attributes, checksum: 'md5:abc' } });
    expect(malformed.message).toContain('attribute checksum "md5:abc" is not "sha256:"');
  });

  it('lying claim-check sha256, size, or missing fetcher', async () => {
    const encoded = encodeBatch(sampleBatch(), { claimCheckAboveBytes: 0 });
    if (encoded.kind !== 'claim-check') throw new Error('expected a claim check');
    const message = encoded.finish('gs://lifeboat-test/batches/lying.json');
    const tampered = Buffer.from(encoded.payload);
    tampered[5] = (tampered[5] ?? 0) ^ 0xff;
    const err = await decodeError(message, async () => tampered);
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.message).toMatch(/^claim-check sha256 mismatch: payload at gs:\/\/lifeboat-test\/batches\/lying.json hashes to [0-9a-f]{64} but the pointer says [0-9a-f]{64}$/);

    const short = await decodeError(message, async () => encoded.payload.subarray(1));
    expect(short.message).toContain(`is ${encoded.payload.length - 1} bytes but the pointer says ${encoded.payload.length}`);

    const noFetcher = await decodeError(message);
    expect(noFetcher).toBeInstanceOf(PermanentError);
    expect(noFetcher.message).toContain('no claim-check fetcher was given');

    // The fetcher's own errors pass through unchanged (it decides what is retryable).
    const unavailable = new Error('503 from storage');
    expect(await decodeError(message, async () => Promise.reject(unavailable))).toBe(unavailable);
  });

  it('claim-check pointer that disagrees with the attributes or is malformed', async () => {
    const encoded = encodeBatch(sampleBatch(), { claimCheckAboveBytes: 0, compressAboveBytes: 0 });
    if (encoded.kind !== 'claim-check') throw new Error('expected a claim check');
    const message = encoded.finish('gs://lifeboat-test/batches/x.json.gz');
    const err = await decodeError(withData(message, message.data, { encoding: 'json' }), async () => encoded.payload);
    expect(err.message).toBe('attribute encoding is json but the claim-check pointer says json+gzip');
    const bad = await decodeError(withData(message, Buffer.from('{"claimCheck":{"uri":"http://x/y","bytes":1,"sha256":"00","encoding":"json"}}')));
    expect(bad.message).toContain('invalid claim-check pointer: claimCheck.uri: claim-check uri "http://x/y" is not gs://bucket/path or file:///path');
  });

  it('oversized data', async () => {
    const message = sampleMessage();
    const err = await decodeError(message, undefined, { maxMessageBytes: 100 });
    expect(err.message).toBe(`message data is ${message.data.length} bytes, over the limit of 100 bytes`);
  });

  it('bad base64 in a push envelope', () => {
    expect(() => messageFromPushData('eyJ2Ijo$MX0=', {})).toThrow('push message data is not valid base64: character "$" at offset 7 is not in the standard base64 alphabet');
    expect(() => messageFromPushData('eyJ2IjoxfQ', {})).toThrow('length 10 is not a multiple of 4');
    expect(() => messageFromPushData('ab=c', {})).toThrow("'=' padding appears before the end");
    expect(() => messageFromPushData('eyJ2-jox_Q==', {})).toThrow('is not in the standard base64 alphabet');
    expect(() => messageFromPushData('QUJD', { n: 5 })).toThrow('push message attribute n must be a string, got number');
    expect(() => messageFromPushData('QUJDRA==', {}, { maxMessageBytes: 3 })).toThrow('push message data is about 4 bytes, over the limit of 3 bytes');
    expect(messageFromPushData('QUJDRA==', { a: 'b' }).data.toString()).toBe('ABCD');
    expect(messageFromPushData('', undefined).data.length).toBe(0);
  });

  it('attributes that disagree with the body', async () => {
    const message = sampleMessage();
    const cases: [string, string, string][] = [
      ['lsn-last', '0/1CF7700', 'attribute lsn-last is 0/1CF7700 but the body says 0/1CF7600'],
      ['lsn-first', 'nonsense', 'attribute lsn-first: invalid LSN "nonsense"'],
      ['stream', 'other', 'attribute stream is "other" but the body says "main"'],
      ['epoch', '4', 'attribute epoch is "4" but the body says "3"'],
      ['kind', 'heartbeat', 'attribute kind is "heartbeat" but the body says "changes"'],
      ['row-count', '99', 'attribute row-count is "99" but the body says "3"'],
    ];
    for (const [name, value, expected] of cases) {
      const err = await decodeError({ ...message, attributes: { ...message.attributes, [name]: value } });
      expect(err).toBeInstanceOf(ValidationError);
      expect(err.message).toContain(expected);
    }
    // Equivalent LSN spellings agree.
    const padded = { ...message, attributes: { ...message.attributes, 'lsn-last': '00000000/01cf7600' } };
    expect(await decodeMessage(padded)).toStrictEqual(sampleBatch());
    const wrongKey = await decodeError({ ...message, orderingKey: 'other' });
    expect(wrongKey.message).toBe('ordering key is "other" but the body\'s stream is "main"');
  });

  it('gzip bomb over the limit', async () => {
    const bomb = gzipSync(Buffer.alloc(20 * 1024 * 1024, 0x20));
    expect(bomb.length).toBeLessThan(100_000);
    const err = await decodeError(withData(sampleMessage(), bomb, { encoding: 'json+gzip' }), undefined, { maxDecompressedBytes: 1024 * 1024 });
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.message).toContain('gzip body expands beyond the limit of 1048576 bytes');
  });

  it('corrupt gzip and unsupported encodings', async () => {
    const notGzip = await decodeError(withData(sampleMessage(), Buffer.from('{}'), { encoding: 'json+gzip' }));
    expect(notGzip.message).toBe('message body is marked json+gzip but is not valid gzip: incorrect header check');
    const zstd = await decodeError(withData(sampleMessage(), Buffer.from('{}'), { encoding: 'json+zstd' }));
    expect(zstd.message).toBe('unsupported encoding "json+zstd": this function understands json and json+gzip');
    const payload = await decodeError(withData(sampleMessage(), Buffer.from('{}'), { payload: 's3' }));
    expect(payload.message).toBe('attribute payload is "s3": expected inline or gcs');
  });
});
