// A pure reader for PostgreSQL's pgoutput logical decoding protocol, version 1
// (PostgreSQL 15), and for the CopyBoth framing of a logical replication
// stream (XLogData 'w', primary keepalive 'k', standby status update 'r').
//
// Why our own (like Rocicorp's zero-cache) instead of pg-logical-replication:
// values must stay exactly the text the server printed (no JSON.parse of json,
// no Date for timestamptz), unchanged TOAST must be a marker distinct from NULL,
// and acknowledgements must be fully in our hands (see agent/replication-stream.ts).
//
// This is the agent's hot path (goal: 150k+ rows/s on one core), so:
// - one module-level cursor is reused (parsing is synchronous, never re-entered);
// - tuples are plain arrays of strings/null/marker, built with a preallocated length;
// - text is decoded natively with `buffer.toString('utf8', start, end)`: the
//   native decoder already has an ASCII fast path, so a JS-side latin1 check
//   would only add a pass (measured: even calling utf8Slice directly gains ~3%);
// - LSNs are read as bigint with readBigUInt64BE, never through a JS number.
//
// Wire reference: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
// and https://www.postgresql.org/docs/15/protocol-replication.html

import {
  PG_EPOCH_UNIX_MICROS,
  UNCHANGED_TOAST,
  formatIsoMicros,
  type ReplicaIdentity,
  type Tuple,
  type TupleValue,
  type UnchangedToast,
} from '../core/change-batch.ts';
import type { Lsn } from '../core/lsn.ts';

// One definition of the value model, shared with the ChangeBatch contract.
export { PG_EPOCH_UNIX_MICROS, UNCHANGED_TOAST };
export type { ReplicaIdentity, Tuple, TupleValue, UnchangedToast };

/** A timestamp as pgoutput sends it: int64 microseconds since 2000-01-01 00:00:00 UTC. */
export type PgMicros = bigint;

export interface RelationColumn {
  /** Raw column flags; bit 1 marks a column that is part of the replica identity key. */
  readonly flags: number;
  /** `(flags & 1) !== 0`: the column is part of the key sent for UPDATE/DELETE. */
  readonly isKey: boolean;
  readonly name: string;
  readonly typeOid: number;
  /** Type modifier (atttypmod), -1 when none; e.g. numeric(10,2) or varchar(n). */
  readonly typmod: number;
}

export interface BeginMessage {
  readonly tag: 'begin';
  /** LSN of the commit record (the transaction's final LSN). */
  readonly finalLsn: Lsn;
  /** Commit time, microseconds since 2000-01-01 UTC, as on the wire. */
  readonly commitTimeMicros: PgMicros;
  /** Commit time as ISO 8601 UTC text with 6 fractional digits (PostgreSQL accepts it). */
  readonly commitTime: string;
  readonly xid: number;
}

export interface CommitMessage {
  readonly tag: 'commit';
  /** Unused by PostgreSQL 15 (always 0). */
  readonly flags: number;
  /** LSN of the commit record. */
  readonly commitLsn: Lsn;
  /** End of the commit record: the position to confirm once this transaction is safe. */
  readonly endLsn: Lsn;
  readonly commitTimeMicros: PgMicros;
  readonly commitTime: string;
}

export interface OriginMessage {
  readonly tag: 'origin';
  /** Commit LSN on the origin server. */
  readonly originLsn: Lsn;
  readonly name: string;
}

export interface RelationMessage {
  readonly tag: 'relation';
  readonly oid: number;
  /** Schema name; pgoutput sends '' for pg_catalog, which is mapped back here. */
  readonly namespace: string;
  readonly name: string;
  readonly replicaIdentity: ReplicaIdentity;
  readonly columns: RelationColumn[];
}

export interface TypeMessage {
  readonly tag: 'type';
  readonly oid: number;
  readonly namespace: string;
  readonly name: string;
}

export interface InsertMessage {
  readonly tag: 'insert';
  readonly relationOid: number;
  readonly new: Tuple;
}

export interface UpdateMessage {
  readonly tag: 'update';
  readonly relationOid: number;
  /** Old key columns ('K'): sent when the key changed (default or index identity); other columns are null. */
  readonly key?: Tuple | undefined;
  /** Whole old row ('O'): sent with REPLICA IDENTITY FULL. */
  readonly old?: Tuple | undefined;
  readonly new: Tuple;
}

export interface DeleteMessage {
  readonly tag: 'delete';
  readonly relationOid: number;
  /** Key columns ('K'); the non-key columns are null. */
  readonly key?: Tuple | undefined;
  /** Whole old row ('O'): REPLICA IDENTITY FULL. */
  readonly old?: Tuple | undefined;
}

export interface TruncateMessage {
  readonly tag: 'truncate';
  readonly cascade: boolean;
  readonly restartIdentity: boolean;
  readonly relationOids: number[];
}

export interface LogicalMessage {
  readonly tag: 'message';
  /** true when emitted with pg_logical_emit_message(true, …): it arrives inside its transaction. */
  readonly transactional: boolean;
  readonly lsn: Lsn;
  readonly prefix: string;
  /** A copy: it never aliases the socket buffer. */
  readonly content: Buffer;
}

export type PgoutputMessage =
  | BeginMessage
  | CommitMessage
  | OriginMessage
  | RelationMessage
  | TypeMessage
  | InsertMessage
  | UpdateMessage
  | DeleteMessage
  | TruncateMessage
  | LogicalMessage;

/** XLogData ('w'): one pgoutput message and its WAL position. */
export interface XLogData {
  readonly kind: 'xlogdata';
  /** Start of the WAL data in this message; for pgoutput, the position the message stands for. */
  readonly walStart: Lsn;
  /** Current end of WAL on the server. Never a position to confirm. */
  readonly walEnd: Lsn;
  readonly sendTimeMicros: PgMicros;
  /** Offset of the pgoutput message inside the CopyData chunk. */
  readonly dataOffset: number;
}

/** Primary keepalive ('k'). */
export interface PrimaryKeepalive {
  readonly kind: 'keepalive';
  /** The server's current end of WAL. Never a position to confirm. */
  readonly walEnd: Lsn;
  readonly sendTimeMicros: PgMicros;
  /** The server wants a standby status update now, or it may disconnect us. */
  readonly replyRequested: boolean;
}

export type ReplicationFrame = XLogData | PrimaryKeepalive;

/** The binary protocol was not what pgoutput v1 sends (a bug or an unsupported option). */
export class PgoutputProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PgoutputProtocolError';
  }
}

// ---------------------------------------------------------------------------
// Cursor

/** A bounds-checked big-endian cursor over one message. */
class Cursor {
  buf: Buffer = Buffer.alloc(0);
  pos = 0;
  end = 0;

  reset(buf: Buffer, start: number, end: number): this {
    this.buf = buf;
    this.pos = start;
    this.end = end;
    return this;
  }

  need(n: number, what: string): void {
    if (this.pos + n > this.end) {
      throw new PgoutputProtocolError(
        `truncated pgoutput message: need ${n} byte(s) for ${what} at offset ${this.pos}, but the message ends at ${this.end}`,
      );
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  i16(what: string): number {
    this.need(2, what);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  i32(what: string): number {
    this.need(4, what);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  i64(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A NUL-terminated string (identifiers, prefixes). */
  cstring(what: string): string {
    const nul = this.buf.indexOf(0, this.pos);
    if (nul < 0 || nul >= this.end) {
      throw new PgoutputProtocolError(`truncated pgoutput message: ${what} at offset ${this.pos} has no terminating NUL`);
    }
    const s = this.buf.toString('utf8', this.pos, nul);
    this.pos = nul + 1;
    return s;
  }

  done(what: string): void {
    if (this.pos !== this.end) {
      throw new PgoutputProtocolError(`${this.end - this.pos} unexpected trailing byte(s) after ${what}`);
    }
  }
}

const cursor = new Cursor();

// ---------------------------------------------------------------------------
// Timestamps

/**
 * ISO 8601 UTC text with exactly 6 fractional digits, e.g. `2026-11-23T10:11:12.123456Z`
 * (the ChangeBatch commitTime form). Microseconds survive; a Date alone would drop them.
 */
export function pgMicrosToIso(micros: PgMicros): string {
  return formatIsoMicros(micros + PG_EPOCH_UNIX_MICROS);
}

/** Now, in microseconds since 2000-01-01 UTC (for standby status updates). */
export function nowPgMicros(nowMs: number = Date.now()): PgMicros {
  return BigInt(Math.round(nowMs * 1000)) - PG_EPOCH_UNIX_MICROS;
}

// ---------------------------------------------------------------------------
// Replication framing (CopyData payloads)

/**
 * Parses one CopyData payload of a logical replication stream. For XLogData
 * the pgoutput message starts at `dataOffset`; decode it with
 * {@link parsePgoutputMessage}(chunk, frame.dataOffset).
 */
export function parseReplicationFrame(chunk: Buffer): ReplicationFrame {
  const c = cursor.reset(chunk, 0, chunk.length);
  const kind = c.u8('replication message kind');
  if (kind === 0x77 /* w */) {
    const walStart = c.u64('XLogData walStart');
    const walEnd = c.u64('XLogData walEnd');
    const sendTimeMicros = c.i64('XLogData sendTime');
    return { kind: 'xlogdata', walStart, walEnd, sendTimeMicros, dataOffset: c.pos };
  }
  if (kind === 0x6b /* k */) {
    const walEnd = c.u64('keepalive walEnd');
    const sendTimeMicros = c.i64('keepalive sendTime');
    const replyRequested = c.u8('keepalive reply flag') !== 0;
    return { kind: 'keepalive', walEnd, sendTimeMicros, replyRequested };
  }
  throw new PgoutputProtocolError(
    `unknown replication message kind ${describeByte(kind)}: expected 'w' (XLogData) or 'k' (primary keepalive)`,
  );
}

/**
 * A Standby Status Update ('r'): write = flush = apply = `confirmedLsn`.
 * Callers pass only a confirmed LSN: PostgreSQL moves the slot's
 * confirmed_flush_lsn to the flush position, and WAL before it may be recycled.
 */
export function encodeStandbyStatusUpdate(confirmedLsn: Lsn, clientTimeMicros: PgMicros = nowPgMicros(), replyRequested = false): Buffer {
  const buf = Buffer.allocUnsafe(34);
  buf[0] = 0x72; // r
  buf.writeBigUInt64BE(confirmedLsn, 1); // written
  buf.writeBigUInt64BE(confirmedLsn, 9); // flushed
  buf.writeBigUInt64BE(confirmedLsn, 17); // applied
  buf.writeBigInt64BE(clientTimeMicros, 25);
  buf[33] = replyRequested ? 1 : 0;
  return buf;
}

// ---------------------------------------------------------------------------
// pgoutput messages

/**
 * Decodes one pgoutput (protocol version 1) message from `buf[start, end)`.
 * Throws PgoutputProtocolError on unknown or unsupported message types, on
 * binary tuple values, and on truncated or over-long messages.
 */
export function parsePgoutputMessage(buf: Buffer, start = 0, end = buf.length): PgoutputMessage {
  const c = cursor.reset(buf, start, end);
  const type = c.u8('pgoutput message type');
  let msg: PgoutputMessage;
  switch (type) {
    case 0x49 /* I */: {
      const relationOid = c.u32('Insert relation oid');
      const marker = c.u8('Insert tuple marker');
      if (marker !== 0x4e /* N */) throw badMarker('Insert', marker, "'N'");
      msg = { tag: 'insert', relationOid, new: readTuple(c) };
      break;
    }
    case 0x55 /* U */: {
      const relationOid = c.u32('Update relation oid');
      let marker = c.u8('Update tuple marker');
      let key: Tuple | undefined;
      let old: Tuple | undefined;
      if (marker === 0x4b /* K */) {
        key = readTuple(c);
        marker = c.u8('Update new-tuple marker');
      } else if (marker === 0x4f /* O */) {
        old = readTuple(c);
        marker = c.u8('Update new-tuple marker');
      }
      if (marker !== 0x4e /* N */) throw badMarker('Update', marker, "'K', 'O' or 'N'");
      msg = { tag: 'update', relationOid, key, old, new: readTuple(c) };
      break;
    }
    case 0x44 /* D */: {
      const relationOid = c.u32('Delete relation oid');
      const marker = c.u8('Delete tuple marker');
      if (marker === 0x4b /* K */) msg = { tag: 'delete', relationOid, key: readTuple(c), old: undefined };
      else if (marker === 0x4f /* O */) msg = { tag: 'delete', relationOid, key: undefined, old: readTuple(c) };
      else throw badMarker('Delete', marker, "'K' or 'O'");
      break;
    }
    case 0x42 /* B */: {
      const finalLsn = c.u64('Begin final LSN');
      const commitTimeMicros = c.i64('Begin commit time');
      const xid = c.u32('Begin xid');
      msg = { tag: 'begin', finalLsn, commitTimeMicros, commitTime: pgMicrosToIso(commitTimeMicros), xid };
      break;
    }
    case 0x43 /* C */: {
      const flags = c.u8('Commit flags');
      const commitLsn = c.u64('Commit LSN');
      const endLsn = c.u64('Commit end LSN');
      const commitTimeMicros = c.i64('Commit time');
      msg = { tag: 'commit', flags, commitLsn, endLsn, commitTimeMicros, commitTime: pgMicrosToIso(commitTimeMicros) };
      break;
    }
    case 0x52 /* R */: {
      const oid = c.u32('Relation oid');
      const namespace = c.cstring('Relation namespace') || 'pg_catalog';
      const name = c.cstring('Relation name');
      const identityByte = c.u8('Relation replica identity');
      const replicaIdentity = replicaIdentityOf(identityByte);
      const ncols = c.i16('Relation column count');
      if (ncols < 0) throw new PgoutputProtocolError(`Relation ${namespace}.${name}: negative column count ${ncols}`);
      const columns: RelationColumn[] = new Array(ncols);
      for (let i = 0; i < ncols; i++) {
        const flags = c.u8('Relation column flags');
        const colName = c.cstring('Relation column name');
        const typeOid = c.u32('Relation column type oid');
        const typmod = c.i32('Relation column typmod');
        columns[i] = { flags, isKey: (flags & 1) !== 0, name: colName, typeOid, typmod };
      }
      msg = { tag: 'relation', oid, namespace, name, replicaIdentity, columns };
      break;
    }
    case 0x59 /* Y */: {
      const oid = c.u32('Type oid');
      const namespace = c.cstring('Type namespace') || 'pg_catalog';
      const name = c.cstring('Type name');
      msg = { tag: 'type', oid, namespace, name };
      break;
    }
    case 0x4f /* O */: {
      const originLsn = c.u64('Origin LSN');
      const name = c.cstring('Origin name');
      msg = { tag: 'origin', originLsn, name };
      break;
    }
    case 0x54 /* T */: {
      const nrels = c.i32('Truncate relation count');
      if (nrels < 0) throw new PgoutputProtocolError(`Truncate: negative relation count ${nrels}`);
      const options = c.u8('Truncate options');
      const relationOids: number[] = new Array(nrels);
      for (let i = 0; i < nrels; i++) relationOids[i] = c.u32('Truncate relation oid');
      msg = { tag: 'truncate', cascade: (options & 1) !== 0, restartIdentity: (options & 2) !== 0, relationOids };
      break;
    }
    case 0x4d /* M */: {
      const flags = c.u8('Message flags');
      const lsn = c.u64('Message LSN');
      const prefix = c.cstring('Message prefix');
      const len = c.i32('Message content length');
      if (len < 0) throw new PgoutputProtocolError(`Message: negative content length ${len}`);
      c.need(len, 'Message content');
      // Copied: the CopyData chunk may alias a socket buffer that pg reuses.
      const content = Buffer.from(buf.subarray(c.pos, c.pos + len));
      c.pos += len;
      msg = { tag: 'message', transactional: (flags & 1) !== 0, lsn, prefix, content };
      break;
    }
    case 0x53 /* S */:
    case 0x45 /* E */:
    case 0x63 /* c */:
    case 0x41 /* A */:
      throw new PgoutputProtocolError(
        `pgoutput sent a streaming message ${describeByte(type)} (protocol v2 streaming of in-progress transactions), ` +
          `but Lifeboat requests proto_version '1' without 'streaming'; large transactions must arrive only after commit`,
      );
    case 0x62 /* b */:
    case 0x50 /* P */:
    case 0x4b /* K */:
    case 0x72 /* r */:
    case 0x70 /* p */:
      throw new PgoutputProtocolError(
        `pgoutput sent a two-phase commit message ${describeByte(type)}, but Lifeboat never requests 'two_phase'`,
      );
    default:
      throw new PgoutputProtocolError(`unknown pgoutput message type ${describeByte(type)}`);
  }
  c.done(`pgoutput '${String.fromCharCode(type)}' message`);
  return msg;
}

function readTuple(c: Cursor): Tuple {
  const ncols = c.i16('tuple column count');
  if (ncols < 0) throw new PgoutputProtocolError(`negative tuple column count ${ncols}`);
  const values: Tuple = new Array(ncols);
  // Hot loop: locals instead of method calls where it matters.
  const buf = c.buf;
  const end = c.end;
  let pos = c.pos;
  for (let i = 0; i < ncols; i++) {
    if (pos >= end) {
      c.pos = pos;
      c.need(1, `tuple column ${i} kind`);
    }
    const kind = buf[pos++]!;
    if (kind === 0x74 /* t */) {
      if (pos + 4 > end) {
        c.pos = pos;
        c.need(4, `tuple column ${i} length`);
      }
      const len = buf.readInt32BE(pos);
      pos += 4;
      if (len < 0 || pos + len > end) {
        throw new PgoutputProtocolError(
          `truncated pgoutput message: tuple column ${i} declares ${len} byte(s) of text at offset ${pos}, but the message ends at ${end}`,
        );
      }
      values[i] = buf.toString('utf8', pos, pos + len);
      pos += len;
    } else if (kind === 0x6e /* n */) {
      values[i] = null;
    } else if (kind === 0x75 /* u */) {
      values[i] = UNCHANGED_TOAST;
    } else if (kind === 0x62 /* b */) {
      throw new PgoutputProtocolError(
        `tuple column ${i} is in binary format ('b'), but Lifeboat never requests binary; values must be the server's text`,
      );
    } else {
      throw new PgoutputProtocolError(`unknown tuple column kind ${describeByte(kind)} for column ${i}: expected 'n', 'u', 't' or 'b'`);
    }
  }
  c.pos = pos;
  return values;
}

function replicaIdentityOf(b: number): ReplicaIdentity {
  switch (b) {
    case 0x64 /* d */:
      return 'default';
    case 0x6e /* n */:
      return 'nothing';
    case 0x66 /* f */:
      return 'full';
    case 0x69 /* i */:
      return 'index';
    default:
      throw new PgoutputProtocolError(`unknown replica identity ${describeByte(b)}: expected 'd', 'n', 'f' or 'i'`);
  }
}

function badMarker(what: string, marker: number, expected: string): PgoutputProtocolError {
  return new PgoutputProtocolError(`${what}: unexpected tuple marker ${describeByte(marker)}, expected ${expected}`);
}

/** `'X' (0x58)` for printable bytes, `0x07` otherwise. */
export function describeByte(b: number): string {
  const hex = `0x${b.toString(16).padStart(2, '0')}`;
  return b >= 0x20 && b < 0x7f ? `'${String.fromCharCode(b)}' (${hex})` : hex;
}
