import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  PG_EPOCH_UNIX_MICROS,
  PgoutputProtocolError,
  UNCHANGED_TOAST,
  describeByte,
  encodeStandbyStatusUpdate,
  nowPgMicros,
  parsePgoutputMessage,
  parseReplicationFrame,
  pgMicrosToIso,
  type TupleValue,
} from '../../agent/pgoutput-reader.ts';

// ---------------------------------------------------------------------------
// A tiny pgoutput encoder for fixtures (what PostgreSQL's proto.c writes).

class W {
  private parts: Buffer[] = [];
  u8(v: number | string): this {
    this.parts.push(Buffer.from([typeof v === 'string' ? v.charCodeAt(0) : v]));
    return this;
  }
  i16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeInt16BE(v);
    this.parts.push(b);
    return this;
  }
  i32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.parts.push(b);
    return this;
  }
  i64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(v);
    this.parts.push(b);
    return this;
  }
  cstr(s: string): this {
    this.parts.push(Buffer.from(s, 'utf8'), Buffer.from([0]));
    return this;
  }
  bytes(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  tuple(values: readonly TupleValue[]): this {
    this.i16(values.length);
    for (const v of values) {
      if (v === null) this.u8('n');
      else if (v === UNCHANGED_TOAST) this.u8('u');
      else {
        const b = Buffer.from(v as string, 'utf8');
        this.u8('t').i32(b.length).bytes(b);
      }
    }
    return this;
  }
  build(): Buffer {
    return Buffer.concat(this.parts);
  }
}

const w = () => new W();
const insert = (oid: number, t: readonly TupleValue[]) => w().u8('I').u32(oid).u8('N').tuple(t).build();

/** XLogData framing around a pgoutput message. */
function xlog(walStart: bigint, walEnd: bigint, sendTime: bigint, payload: Buffer): Buffer {
  return Buffer.concat([w().u8('w').u64(walStart).u64(walEnd).i64(sendTime).build(), payload]);
}

// ---------------------------------------------------------------------------

describe('parsePgoutputMessage', () => {
  it('decodes Begin with microsecond commit time', () => {
    // 2026-11-23T10:11:12.123456Z
    const unixMicros = BigInt(Date.UTC(2026, 10, 23, 10, 11, 12, 123)) * 1000n + 456n;
    const pgMicros = unixMicros - PG_EPOCH_UNIX_MICROS;
    const buf = w().u8('B').u64(0x16b374d848n).i64(pgMicros).u32(4_000_000_000).build();
    expect(parsePgoutputMessage(buf)).toEqual({
      tag: 'begin',
      finalLsn: 0x16b374d848n,
      commitTimeMicros: pgMicros,
      commitTime: '2026-11-23T10:11:12.123456Z',
      xid: 4_000_000_000,
    });
  });

  it('decodes Commit', () => {
    const buf = w().u8('C').u8(0).u64(100n).u64(156n).i64(0n).build();
    expect(parsePgoutputMessage(buf)).toEqual({
      tag: 'commit',
      flags: 0,
      commitLsn: 100n,
      endLsn: 156n,
      commitTimeMicros: 0n,
      commitTime: '2000-01-01T00:00:00.000000Z',
    });
  });

  it('decodes Origin', () => {
    const buf = w().u8('O').u64(42n).cstr('pg_16384').build();
    expect(parsePgoutputMessage(buf)).toEqual({ tag: 'origin', originLsn: 42n, name: 'pg_16384' });
  });

  it('decodes Relation, mapping the empty namespace to pg_catalog and the identity byte', () => {
    const buf = w()
      .u8('R')
      .u32(16385)
      .cstr('')
      .cstr('pgbench_accounts')
      .u8('f')
      .i16(2)
      .u8(1)
      .cstr('aid')
      .u32(23)
      .i32(-1)
      .u8(0)
      .cstr('näme')
      .u32(1043)
      .i32(104)
      .build();
    expect(parsePgoutputMessage(buf)).toEqual({
      tag: 'relation',
      oid: 16385,
      namespace: 'pg_catalog',
      name: 'pgbench_accounts',
      replicaIdentity: 'full',
      columns: [
        { flags: 1, isKey: true, name: 'aid', typeOid: 23, typmod: -1 },
        { flags: 0, isKey: false, name: 'näme', typeOid: 1043, typmod: 104 },
      ],
    });
    for (const [byte, name] of [
      ['d', 'default'],
      ['n', 'nothing'],
      ['i', 'index'],
    ] as const) {
      const b = w().u8('R').u32(1).cstr('public').cstr('t').u8(byte).i16(0).build();
      expect(parsePgoutputMessage(b)).toMatchObject({ namespace: 'public', replicaIdentity: name, columns: [] });
    }
  });

  it('decodes Type', () => {
    const buf = w().u8('Y').u32(16400).cstr('app').cstr('mood').build();
    expect(parsePgoutputMessage(buf)).toEqual({ tag: 'type', oid: 16400, namespace: 'app', name: 'mood' });
    const cat = w().u8('Y').u32(16401).cstr('').cstr('x').build();
    expect(parsePgoutputMessage(cat)).toMatchObject({ namespace: 'pg_catalog' });
  });

  it('decodes Insert with text, NULL, empty string and unchanged TOAST', () => {
    const buf = insert(16385, ['1', null, '', UNCHANGED_TOAST, '€ 𝄞 ü']);
    const msg = parsePgoutputMessage(buf);
    expect(msg).toEqual({ tag: 'insert', relationOid: 16385, new: ['1', null, '', UNCHANGED_TOAST, '€ 𝄞 ü'] });
    if (msg.tag !== 'insert') throw new Error('unreachable');
    // NULL and '' and the marker stay three different things.
    expect(msg.new[1]).toBeNull();
    expect(msg.new[2]).toBe('');
    expect(msg.new[3]).toBe(UNCHANGED_TOAST);
  });

  it('decodes Update without old row, with key (K), and with full old row (O)', () => {
    expect(parsePgoutputMessage(w().u8('U').u32(7).u8('N').tuple(['1', UNCHANGED_TOAST]).build())).toEqual({
      tag: 'update',
      relationOid: 7,
      new: ['1', UNCHANGED_TOAST],
    });
    const withKey = parsePgoutputMessage(w().u8('U').u32(7).u8('K').tuple(['1', null]).u8('N').tuple(['2', 'x']).build());
    expect(withKey).toEqual({ tag: 'update', relationOid: 7, key: ['1', null], new: ['2', 'x'] });
    const withOld = parsePgoutputMessage(w().u8('U').u32(7).u8('O').tuple(['1', 'a']).u8('N').tuple(['1', 'b']).build());
    expect(withOld).toEqual({ tag: 'update', relationOid: 7, old: ['1', 'a'], new: ['1', 'b'] });
  });

  it('decodes Delete with key (K) or old row (O)', () => {
    expect(parsePgoutputMessage(w().u8('D').u32(9).u8('K').tuple(['5', null]).build())).toEqual({
      tag: 'delete',
      relationOid: 9,
      key: ['5', null],
    });
    expect(parsePgoutputMessage(w().u8('D').u32(9).u8('O').tuple(['5', 'z']).build())).toEqual({
      tag: 'delete',
      relationOid: 9,
      old: ['5', 'z'],
    });
  });

  it('decodes Truncate options and relation oids', () => {
    expect(parsePgoutputMessage(w().u8('T').i32(2).u8(3).u32(10).u32(4_294_967_295).build())).toEqual({
      tag: 'truncate',
      cascade: true,
      restartIdentity: true,
      relationOids: [10, 4_294_967_295],
    });
    expect(parsePgoutputMessage(w().u8('T').i32(1).u8(0).u32(10).build())).toEqual({
      tag: 'truncate',
      cascade: false,
      restartIdentity: false,
      relationOids: [10],
    });
    expect(parsePgoutputMessage(w().u8('T').i32(1).u8(2).u32(10).build())).toMatchObject({ cascade: false, restartIdentity: true });
  });

  it('decodes logical Messages (transactional and not) and copies the content', () => {
    const content = Buffer.from([0, 1, 2, 0xff]);
    const buf = w().u8('M').u8(1).u64(0x1234n).cstr('lifeboat').i32(content.length).bytes(content).build();
    const msg = parsePgoutputMessage(buf);
    expect(msg).toEqual({ tag: 'message', transactional: true, lsn: 0x1234n, prefix: 'lifeboat', content });
    buf.fill(0); // the decoded content must not alias the input buffer
    if (msg.tag !== 'message') throw new Error('unreachable');
    expect([...msg.content]).toEqual([0, 1, 2, 0xff]);
    const nonTx = w().u8('M').u8(0).u64(1n).cstr('p').i32(0).build();
    expect(parsePgoutputMessage(nonTx)).toMatchObject({ transactional: false, content: Buffer.alloc(0) });
  });

  it('decodes a message inside a larger buffer given start and end', () => {
    const inner = insert(1, ['a']);
    const outer = Buffer.concat([Buffer.from('junk'), inner, Buffer.from('more')]);
    expect(parsePgoutputMessage(outer, 4, 4 + inner.length)).toEqual({ tag: 'insert', relationOid: 1, new: ['a'] });
  });

  describe('errors', () => {
    const err = (buf: Buffer) => {
      try {
        parsePgoutputMessage(buf);
      } catch (e) {
        expect(e).toBeInstanceOf(PgoutputProtocolError);
        return (e as Error).message;
      }
      throw new Error('expected a PgoutputProtocolError');
    };

    it('names an unknown message type byte', () => {
      expect(err(Buffer.from('Z'))).toMatch(/unknown pgoutput message type 'Z' \(0x5a\)/);
      expect(err(Buffer.from([0x01]))).toMatch(/unknown pgoutput message type 0x01/);
    });

    it('rejects protocol v2 streaming messages', () => {
      for (const t of ['S', 'E', 'c', 'A']) {
        expect(err(w().u8(t).u32(1).build())).toMatch(/streaming message .*proto_version '1'/);
      }
    });

    it('rejects two-phase messages', () => {
      for (const t of ['b', 'P', 'K', 'r', 'p']) expect(err(w().u8(t).build())).toMatch(/two-phase/);
    });

    it('rejects binary tuple values', () => {
      const buf = w().u8('I').u32(1).u8('N').i16(1).u8('b').i32(1).u8(0).build();
      expect(err(buf)).toMatch(/binary format \('b'\).*never requests binary/);
    });

    it('rejects unknown tuple kinds and markers', () => {
      expect(err(w().u8('I').u32(1).u8('N').i16(1).u8('x').build())).toMatch(/unknown tuple column kind 'x'/);
      expect(err(w().u8('I').u32(1).u8('K').tuple([]).build())).toMatch(/Insert: unexpected tuple marker 'K'/);
      expect(err(w().u8('U').u32(1).u8('X').build())).toMatch(/Update: unexpected tuple marker 'X'/);
      expect(err(w().u8('D').u32(1).u8('N').tuple([]).build())).toMatch(/Delete: unexpected tuple marker 'N'/);
      expect(err(w().u8('R').u32(1).cstr('s').cstr('t').u8('q').i16(0).build())).toMatch(/unknown replica identity 'q'/);
    });

    it('rejects truncated messages at every cut point, never reading past the end', () => {
      const fixtures = [
        w().u8('B').u64(1n).i64(2n).u32(3).build(),
        w().u8('C').u8(0).u64(1n).u64(2n).i64(3n).build(),
        w().u8('R').u32(1).cstr('s').cstr('t').u8('d').i16(1).u8(1).cstr('id').u32(23).i32(-1).build(),
        insert(1, ['hello', null, UNCHANGED_TOAST, 'x']),
        w().u8('U').u32(1).u8('K').tuple(['1']).u8('N').tuple(['2']).build(),
        w().u8('T').i32(2).u8(0).u32(1).u32(2).build(),
        w().u8('M').u8(1).u64(1n).cstr('p').i32(3).bytes(Buffer.from('abc')).build(),
      ];
      for (const full of fixtures) {
        // Cut inside a larger buffer so reading past `end` would find bytes.
        const padded = Buffer.concat([full, Buffer.alloc(64, 0x74)]);
        for (let cut = 1; cut < full.length; cut++) {
          expect(() => parsePgoutputMessage(padded, 0, cut), `cut at ${cut} of ${full[0]}`).toThrow(PgoutputProtocolError);
        }
        expect(() => parsePgoutputMessage(padded, 0, full.length)).not.toThrow();
      }
    });

    it('rejects trailing bytes', () => {
      expect(err(Buffer.concat([insert(1, ['a']), Buffer.from([0])]))).toMatch(/1 unexpected trailing byte/);
    });

    it('rejects a text length that overruns the message', () => {
      const buf = w().u8('I').u32(1).u8('N').i16(1).u8('t').i32(1000).bytes(Buffer.from('ab')).build();
      expect(err(buf)).toMatch(/declares 1000 byte\(s\)/);
    });
  });

  describe('property: tuples round-trip', () => {
    const value = fc.oneof(
      { weight: 6, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
      { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 10 }) },
      { weight: 1, arbitrary: fc.constant('') },
      { weight: 1, arbitrary: fc.constant(null) },
      { weight: 1, arbitrary: fc.constant(UNCHANGED_TOAST) },
    ) as fc.Arbitrary<TupleValue>;
    const tuple = fc.array(value, { maxLength: 30 });

    it('Insert', () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 0xffffffff }), tuple, (oid, t) => {
          expect(parsePgoutputMessage(insert(oid, t))).toEqual({ tag: 'insert', relationOid: oid, new: t });
        }),
        { numRuns: 500 },
      );
    });

    it('Update with optional key/old and Delete', () => {
      fc.assert(
        fc.property(fc.constantFrom('none', 'K', 'O'), tuple, tuple, (mode, before, after) => {
          const b = w().u8('U').u32(3);
          if (mode !== 'none') b.u8(mode).tuple(before);
          const msg = parsePgoutputMessage(b.u8('N').tuple(after).build());
          if (msg.tag !== 'update') throw new Error('not an update');
          expect(msg.new).toEqual(after);
          expect(msg.key).toEqual(mode === 'K' ? before : undefined);
          expect(msg.old).toEqual(mode === 'O' ? before : undefined);
          if (mode !== 'none') {
            const del = parsePgoutputMessage(w().u8('D').u32(3).u8(mode).tuple(before).build());
            expect(del).toEqual(mode === 'K' ? { tag: 'delete', relationOid: 3, key: before } : { tag: 'delete', relationOid: 3, old: before });
          }
        }),
        { numRuns: 300 },
      );
    });

    it('never throws anything but PgoutputProtocolError on arbitrary bytes', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
          try {
            parsePgoutputMessage(Buffer.from(bytes));
          } catch (e) {
            expect(e).toBeInstanceOf(PgoutputProtocolError);
          }
        }),
        { numRuns: 2000 },
      );
    });
  });
});

describe('replication framing', () => {
  it('parses XLogData and points at the pgoutput payload', () => {
    const payload = insert(5, ['x']);
    const chunk = xlog(0x100n, 0x200n, 77n, payload);
    const frame = parseReplicationFrame(chunk);
    expect(frame).toEqual({ kind: 'xlogdata', walStart: 0x100n, walEnd: 0x200n, sendTimeMicros: 77n, dataOffset: 25 });
    if (frame.kind !== 'xlogdata') throw new Error('unreachable');
    expect(parsePgoutputMessage(chunk, frame.dataOffset)).toEqual({ tag: 'insert', relationOid: 5, new: ['x'] });
  });

  it('parses primary keepalives with and without reply requested', () => {
    const k = (flag: number) => w().u8('k').u64(0xffffffffffffffffn).i64(5n).u8(flag).build();
    expect(parseReplicationFrame(k(1))).toEqual({ kind: 'keepalive', walEnd: 0xffffffffffffffffn, sendTimeMicros: 5n, replyRequested: true });
    expect(parseReplicationFrame(k(0))).toMatchObject({ replyRequested: false });
  });

  it('rejects unknown frames and truncated headers', () => {
    expect(() => parseReplicationFrame(Buffer.from('x'))).toThrow(/unknown replication message kind 'x'/);
    expect(() => parseReplicationFrame(w().u8('w').u64(1n).build())).toThrow(PgoutputProtocolError);
    expect(() => parseReplicationFrame(w().u8('k').u64(1n).i64(1n).build())).toThrow(/keepalive reply flag/);
  });

  it('encodes a standby status update with write = flush = apply', () => {
    const buf = encodeStandbyStatusUpdate(0x16b374d848n, 123456789n);
    expect(buf.length).toBe(34);
    expect(String.fromCharCode(buf[0]!)).toBe('r');
    expect(buf.readBigUInt64BE(1)).toBe(0x16b374d848n);
    expect(buf.readBigUInt64BE(9)).toBe(0x16b374d848n);
    expect(buf.readBigUInt64BE(17)).toBe(0x16b374d848n);
    expect(buf.readBigInt64BE(25)).toBe(123456789n);
    expect(buf[33]).toBe(0);
  });
});

describe('timestamps', () => {
  it('formats with 6 fractional digits, including before 2000 and before 1970', () => {
    expect(pgMicrosToIso(0n)).toBe('2000-01-01T00:00:00.000000Z');
    expect(pgMicrosToIso(1n)).toBe('2000-01-01T00:00:00.000001Z');
    expect(pgMicrosToIso(-1n)).toBe('1999-12-31T23:59:59.999999Z');
    expect(pgMicrosToIso(-PG_EPOCH_UNIX_MICROS - 1n)).toBe('1969-12-31T23:59:59.999999Z');
  });

  it('round-trips microseconds through the ISO text', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(10n ** 15n), max: 10n ** 16n }), (micros) => {
        const iso = pgMicrosToIso(micros);
        expect(iso).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
        const ms = BigInt(Date.parse(iso));
        const frac = BigInt(iso.slice(-4, -1)); // the last 3 of the 6 digits
        expect(ms * 1000n + frac - PG_EPOCH_UNIX_MICROS).toBe(micros);
      }),
    );
  });

  it('nowPgMicros is µs since 2000-01-01', () => {
    expect(nowPgMicros(Date.UTC(2000, 0, 1))).toBe(0n);
    expect(nowPgMicros(Date.UTC(2000, 0, 1) + 1.5)).toBe(1500n);
  });

  it('describes bytes', () => {
    expect(describeByte(0x41)).toBe("'A' (0x41)");
    expect(describeByte(0)).toBe('0x00');
  });
});
