// ChangeBatch <-> Pub/Sub message.
//
// Body: UTF-8 JSON of toWireJson(batch), gzipped when it is larger than
// `compressAboveBytes` and gzip actually makes it smaller. The `encoding`
// attribute says which: `json` or `json+gzip`. gzip is the default because
// Node 20 has it natively; zstd exists only as a wasm package and the bench
// (bench/wire-compression.ts) decides whether it would pay off. A future
// `json+zstd` fits the same attribute; today the decoder rejects it clearly.
//
// Claim check: when the body is larger than `claimCheckAboveBytes` (or would
// not fit the Pub/Sub limit), the body goes to object storage and the message
// data is a small JSON pointer
//   { "claimCheck": { "uri": "gs://bucket/path" | "file:///…", "bytes": n,
//                     "sha256": hex, "encoding": "json+gzip" } }
// with attribute `payload=gcs` (`file://` in local mode too: "gcs" means "not
// inline, follow data.claimCheck.uri"). The codec never talks to storage: the
// encoder returns the payload plus a finisher that builds the message once the
// caller has uploaded it; the decoder takes a fetch function. For a claim
// check the `encoding` attribute names the payload's encoding (the pointer
// itself is always plain JSON) and must agree with the pointer.
//
// Attributes make a batch readable with `gcloud pubsub subscriptions pull`
// (all strings; Pub/Sub limits: key ≤ 256 bytes, value ≤ 1024 bytes):
//   lifeboat-version "1", kind, stream, epoch, seq, lsn-prev, lsn-first,
//   lsn-last, tx-count, row-count, tables (comma-separated, cut to 1024 bytes
//   with ",…(+N more)"), encoding, payload (inline|gcs),
//   checksum ("sha256:" + hex of the message data bytes as sent).
// Ordering key = stream id.
//
// Decoding trusts nothing: size limit first, then version, checksum, pointer
// and claim-check sha256, decompression under a size limit (gzip bombs), strict
// UTF-8, JSON, parseChangeBatch, and finally every attribute that is derived
// from the body must agree with it. Every failure is a ValidationError (a
// permanent error: redelivering the same bytes cannot help) whose message says
// what is wrong and where. Errors thrown by the claim-check fetcher pass
// through untouched, so the fetcher decides what is retryable.

import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { gunzip, gzipSync } from 'node:zlib';
import { z } from 'zod';
import { PermanentError, ValidationError } from './errors.ts';
import { batchRowCount, batchTables, parseChangeBatch, toWireJson, type BatchKind, type ChangeBatch } from './change-batch.ts';
import { formatLsn, parseLsn, type Lsn } from './lsn.ts';

/** The contract version this code speaks (attribute `lifeboat-version`). */
export const LIFEBOAT_VERSION = '1';

export const BODY_ENCODINGS = ['json', 'json+gzip'] as const;
export type BodyEncoding = (typeof BODY_ENCODINGS)[number];

export const DEFAULT_COMPRESS_ABOVE_BYTES = 1024;
export const DEFAULT_CLAIM_CHECK_ABOVE_BYTES = 4 * 1024 * 1024;
/** Pub/Sub's message size limit. */
export const PUBSUB_MAX_MESSAGE_BYTES = 10_000_000;
export const DEFAULT_MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024;
/**
 * gzip level 1. bench/wire-compression.ts: on pgbench batches of 1000–5000
 * rows level 1 gives ~16–17 bytes per row against ~14 for level 6 (goal: 40)
 * at about a third of the compress+decompress time; the agent shares its
 * machine with the production database, so CPU is the scarcer resource.
 */
export const DEFAULT_GZIP_LEVEL = 1;

export const PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES = 1024;
export const PUBSUB_MAX_ATTRIBUTE_KEY_BYTES = 256;

/** A message ready to publish (the shape @google-cloud/pubsub's publishMessage takes). */
export interface PubSubMessage {
  data: Buffer;
  attributes: Record<string, string>;
  orderingKey: string;
}

/** A received message: pull (@google-cloud/pubsub Message) or push, after base64. */
export interface ReceivedMessage {
  data: Buffer | Uint8Array;
  attributes?: Readonly<Record<string, string>> | null | undefined;
  orderingKey?: string | null | undefined;
}

export interface EncodeOptions {
  /** gzip the JSON body when it is larger than this. Default 1024. */
  compressAboveBytes?: number;
  /** Use a claim check when the (compressed) body is larger than this. Default 4 MiB. */
  claimCheckAboveBytes?: number;
  /** Pub/Sub message limit (data + attributes + ordering key). Default 10,000,000. */
  maxMessageBytes?: number;
  /** zlib level 1–9. Default DEFAULT_GZIP_LEVEL. */
  gzipLevel?: number;
  /**
   * Validate the batch before encoding (default true), so that the agent
   * fails loudly instead of publishing a batch the applier must reject.
   */
  validate?: boolean;
}

export type EncodedBatch =
  | { kind: 'inline'; message: PubSubMessage }
  | {
      kind: 'claim-check';
      /** The encoded body to store under the URI given to `finish`. */
      payload: Buffer;
      /** Hex SHA-256 of `payload`. */
      sha256: string;
      encoding: BodyEncoding;
      /** Builds the pointer message once `payload` is stored at `uri`. */
      finish(uri: string): PubSubMessage;
    };

export interface DecodeOptions {
  /** Reject message data larger than this. Default 10,000,000. */
  maxMessageBytes?: number;
  /** Reject bodies (and claim-check payloads) that are or expand beyond this. Default 512 MiB. */
  maxDecompressedBytes?: number;
}

/** Reads a claim-check payload; its errors pass through decodeMessage unchanged. */
export type FetchClaimCheck = (uri: string) => Promise<Buffer | Uint8Array>;

// ---------------------------------------------------------------------------
// Encode

/** Encodes a batch as a Pub/Sub message, or as a claim-check payload plus finisher. */
export function encodeBatch(batch: ChangeBatch, opts: EncodeOptions = {}): EncodedBatch {
  const compressAboveBytes = sizeOption('compressAboveBytes', opts.compressAboveBytes, DEFAULT_COMPRESS_ABOVE_BYTES);
  const claimCheckAboveBytes = sizeOption('claimCheckAboveBytes', opts.claimCheckAboveBytes, DEFAULT_CLAIM_CHECK_ABOVE_BYTES);
  const maxMessageBytes = sizeOption('maxMessageBytes', opts.maxMessageBytes, PUBSUB_MAX_MESSAGE_BYTES);
  const gzipLevel = opts.gzipLevel ?? DEFAULT_GZIP_LEVEL;
  if (!Number.isInteger(gzipLevel) || gzipLevel < 1 || gzipLevel > 9) {
    throw new ValidationError(`gzipLevel must be an integer from 1 to 9, got ${gzipLevel}`);
  }

  const wire = toWireJson(batch);
  if (opts.validate !== false) {
    try {
      parseChangeBatch(wire);
    } catch (err) {
      throw new ValidationError(`cannot encode batch seq ${batch.seq} of stream ${batch.stream}: ${(err as Error).message}`, {
        cause: err,
        remedy: 'This is a bug in the agent that built the batch; nothing was published.',
      });
    }
  }

  const json = Buffer.from(JSON.stringify(wire), 'utf8');
  let body = json;
  let encoding: BodyEncoding = 'json';
  if (json.length > compressAboveBytes) {
    const gzipped = gzipSync(json, { level: gzipLevel });
    // Tiny or incompressible bodies can grow; then plain JSON is the better wire form.
    if (gzipped.length < json.length) {
      body = gzipped;
      encoding = 'json+gzip';
    }
  }

  const summary = batchAttributes(batch, encoding);
  const sha256 = sha256Hex(body); // the inline checksum, or the claim check's
  const inline = buildMessage(body, { ...summary, payload: 'inline' }, batch.stream, sha256);
  if (body.length <= claimCheckAboveBytes && messageBytes(inline) <= maxMessageBytes) {
    return { kind: 'inline', message: inline };
  }

  return {
    kind: 'claim-check',
    payload: body,
    sha256,
    encoding,
    finish(uri: string): PubSubMessage {
      const problem = claimCheckUriProblem(uri);
      if (problem !== undefined) throw new ValidationError(`cannot finish claim check: ${problem}`);
      const pointer: ClaimCheckPointer = { claimCheck: { uri, bytes: body.length, sha256, encoding } };
      const message = buildMessage(Buffer.from(JSON.stringify(pointer), 'utf8'), { ...summary, payload: 'gcs' }, batch.stream);
      if (messageBytes(message) > maxMessageBytes) {
        throw new ValidationError(`claim-check message is ${messageBytes(message)} bytes, over maxMessageBytes ${maxMessageBytes}`);
      }
      return message;
    },
  };
}

function sizeOption(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 0) throw new ValidationError(`${name} must be a non-negative integer, got ${value}`);
  return value;
}

/** The attributes that describe the batch (all but payload and checksum). */
function batchAttributes(batch: ChangeBatch, encoding: BodyEncoding): Record<string, string> {
  return {
    'lifeboat-version': LIFEBOAT_VERSION,
    kind: batch.kind,
    stream: batch.stream,
    epoch: String(batch.epoch),
    seq: String(batch.seq),
    'lsn-prev': formatLsn(batch.lsnPrev),
    'lsn-first': formatLsn(batch.lsnFirst),
    'lsn-last': formatLsn(batch.lsnLast),
    'tx-count': String(batch.transactions.length),
    'row-count': String(batchRowCount(batch)),
    tables: tablesAttribute(batchTables(batch)),
    encoding,
  };
}

function buildMessage(data: Buffer, attributes: Record<string, string>, orderingKey: string, dataSha256 = sha256Hex(data)): PubSubMessage {
  return { data, attributes: { ...attributes, checksum: `sha256:${dataSha256}` }, orderingKey };
}

/** Size as Pub/Sub counts it, roughly: data, attribute keys and values, ordering key. */
function messageBytes(message: PubSubMessage): number {
  let bytes = message.data.length + Buffer.byteLength(message.orderingKey);
  for (const [key, value] of Object.entries(message.attributes)) bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
  return bytes;
}

/**
 * Comma-separated table names that fit a Pub/Sub attribute value (1024 UTF-8
 * bytes); names that do not fit are replaced by `,…(+N more)`.
 */
export function tablesAttribute(names: readonly string[], maxBytes = PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES): string {
  const all = names.join(',');
  if (Buffer.byteLength(all) <= maxBytes) return all;
  const suffix = (omitted: number, afterName: boolean): string => `${afterName ? ',' : ''}…(+${omitted} more)`;
  // Keep the longest prefix of names for which prefix + suffix still fits.
  let kept = '';
  let keptCount = 0;
  for (const name of names) {
    const candidate = keptCount === 0 ? name : `${kept},${name}`;
    const omittedAfter = names.length - keptCount - 1;
    if (Buffer.byteLength(candidate) + Buffer.byteLength(suffix(omittedAfter, true)) > maxBytes) break;
    kept = candidate;
    keptCount += 1;
  }
  return kept + suffix(names.length - keptCount, keptCount > 0);
}

function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

// ---------------------------------------------------------------------------
// Claim-check pointer

// gs://bucket/object (bucket naming rules, loosely) or file:///absolute/path.
const CLAIM_CHECK_URI = /^(?:gs:\/\/[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]\/\S.*|file:\/\/\/\S.*)$/;
const MAX_CLAIM_CHECK_URI_LENGTH = 2048;

function claimCheckUriProblem(uri: unknown): string | undefined {
  if (typeof uri !== 'string') return `claim-check uri must be a string, got ${typeof uri}`;
  if (uri.length > MAX_CLAIM_CHECK_URI_LENGTH) return `claim-check uri is longer than ${MAX_CLAIM_CHECK_URI_LENGTH} characters`;
  if (!CLAIM_CHECK_URI.test(uri)) return `claim-check uri ${JSON.stringify(uri)} is not gs://bucket/path or file:///path`;
  return undefined;
}

const claimCheckPointerSchema = z.strictObject({
  claimCheck: z.strictObject({
    uri: z.string().superRefine((uri, ctx) => {
      const problem = claimCheckUriProblem(uri);
      if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
    }),
    bytes: z.int().min(0),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex digits'),
    encoding: z.enum(BODY_ENCODINGS),
  }),
});

type ClaimCheckPointer = z.output<typeof claimCheckPointerSchema>;

// ---------------------------------------------------------------------------
// Decode

const gunzipAsync = promisify(gunzip);

/** Attributes that must be present on every Lifeboat message. */
const REQUIRED_ATTRIBUTES = [
  'kind',
  'stream',
  'epoch',
  'seq',
  'lsn-prev',
  'lsn-first',
  'lsn-last',
  'tx-count',
  'row-count',
  'encoding',
  'payload',
  'checksum',
] as const;

/**
 * Decodes and fully validates a received message.
 * @param fetchClaimCheck reads a claim-check payload; required only for `payload=gcs` messages.
 * @throws ValidationError for anything wrong with the message; the fetcher's own errors unchanged.
 */
export async function decodeMessage(
  message: ReceivedMessage,
  fetchClaimCheck?: FetchClaimCheck,
  opts: DecodeOptions = {},
): Promise<ChangeBatch> {
  const maxMessageBytes = sizeOption('maxMessageBytes', opts.maxMessageBytes, PUBSUB_MAX_MESSAGE_BYTES);
  const maxDecompressedBytes = sizeOption('maxDecompressedBytes', opts.maxDecompressedBytes, DEFAULT_MAX_DECOMPRESSED_BYTES);
  const data = message.data;
  if (!(data instanceof Uint8Array)) throw new ValidationError(`message data must be bytes, got ${typeof data}`);
  if (data.length > maxMessageBytes) {
    throw new ValidationError(`message data is ${data.length} bytes, over the limit of ${maxMessageBytes} bytes`);
  }
  const attributes = message.attributes ?? {};

  const version = attributes['lifeboat-version'];
  if (version === undefined) {
    throw new ValidationError('message has no lifeboat-version attribute: it is not a Lifeboat batch');
  }
  if (version !== LIFEBOAT_VERSION) {
    throw new ValidationError(
      `unsupported lifeboat-version ${version.slice(0, 40)}: this apply function understands ${LIFEBOAT_VERSION}; upgrade the function`,
      { remedy: 'Deploy the apply function from the same Lifeboat release as the agent.' },
    );
  }
  for (const name of REQUIRED_ATTRIBUTES) {
    if (typeof attributes[name] !== 'string') throw new ValidationError(`message has no ${name} attribute`);
  }
  const attr = (name: (typeof REQUIRED_ATTRIBUTES)[number]): string => attributes[name] as string;

  const checksum = attr('checksum');
  if (!/^sha256:[0-9a-f]{64}$/.test(checksum)) {
    throw new ValidationError(`attribute checksum ${JSON.stringify(checksum)} is not "sha256:" followed by 64 lowercase hex digits`);
  }
  const actual = `sha256:${sha256Hex(data)}`;
  if (checksum !== actual) {
    throw new ValidationError(`checksum mismatch: attribute checksum is ${checksum} but the message data hashes to ${actual}; the data was corrupted or altered`);
  }

  const encoding = attr('encoding');
  if (!isBodyEncoding(encoding)) {
    throw new ValidationError(`unsupported encoding ${JSON.stringify(encoding)}: this function understands ${BODY_ENCODINGS.join(' and ')}`);
  }

  let body: Uint8Array;
  const payload = attr('payload');
  if (payload === 'inline') {
    body = data;
  } else if (payload === 'gcs') {
    body = await fetchVerifiedClaimCheck(data, encoding, fetchClaimCheck, maxDecompressedBytes);
  } else {
    throw new ValidationError(`attribute payload is ${JSON.stringify(payload)}: expected inline or gcs`);
  }

  const json = await decompress(body, encoding, maxDecompressedBytes);
  const batch = parseChangeBatch(parseJson(json, 'message body'));
  checkAttributesAgree(batch, attr, message.orderingKey);
  return batch;
}

function isBodyEncoding(value: string): value is BodyEncoding {
  return (BODY_ENCODINGS as readonly string[]).includes(value);
}

async function fetchVerifiedClaimCheck(
  data: Uint8Array,
  encoding: BodyEncoding,
  fetchClaimCheck: FetchClaimCheck | undefined,
  maxBytes: number,
): Promise<Uint8Array> {
  const parsed = claimCheckPointerSchema.safeParse(parseJson(utf8(data, 'claim-check pointer'), 'claim-check pointer'));
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    const where = first === undefined || first.path.length === 0 ? '' : `${first.path.join('.')}: `;
    throw new ValidationError(`invalid claim-check pointer: ${where}${first?.message ?? 'unknown problem'}`);
  }
  const pointer = parsed.data.claimCheck;
  if (pointer.encoding !== encoding) {
    throw new ValidationError(`attribute encoding is ${encoding} but the claim-check pointer says ${pointer.encoding}`);
  }
  if (pointer.bytes > maxBytes) {
    throw new ValidationError(`claim-check payload at ${pointer.uri} is ${pointer.bytes} bytes, over the limit of ${maxBytes} bytes`);
  }
  if (fetchClaimCheck === undefined) {
    throw new PermanentError(`message is a claim check (payload=gcs, ${pointer.uri}) but no claim-check fetcher was given`);
  }

  const payload = await fetchClaimCheck(pointer.uri);
  if (payload.length !== pointer.bytes) {
    throw new ValidationError(`claim-check payload at ${pointer.uri} is ${payload.length} bytes but the pointer says ${pointer.bytes}`);
  }
  const sha256 = sha256Hex(payload);
  if (sha256 !== pointer.sha256) {
    throw new ValidationError(`claim-check sha256 mismatch: payload at ${pointer.uri} hashes to ${sha256} but the pointer says ${pointer.sha256}`);
  }
  return payload;
}

async function decompress(body: Uint8Array, encoding: BodyEncoding, maxBytes: number): Promise<string> {
  if (encoding === 'json') {
    if (body.length > maxBytes) throw new ValidationError(`message body is ${body.length} bytes, over the limit of ${maxBytes} bytes`);
    return utf8(body, 'message body');
  }
  let inflated: Buffer;
  try {
    inflated = await gunzipAsync(body, { maxOutputLength: maxBytes });
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') {
      throw new ValidationError(`gzip body expands beyond the limit of ${maxBytes} bytes (a decompression bomb, or maxDecompressedBytes is too low)`, { cause: err });
    }
    throw new ValidationError(`message body is marked json+gzip but is not valid gzip: ${(err as Error).message}`, { cause: err });
  }
  return utf8(inflated, 'message body');
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Strict UTF-8: replacement characters would silently change row values. */
function utf8(bytes: Uint8Array, what: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch (err) {
    throw new ValidationError(`${what} is not valid UTF-8`, { cause: err });
  }
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ValidationError(`${what} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/** Every attribute derived from the body must match it: a mismatch names the attribute. */
function checkAttributesAgree(
  batch: ChangeBatch,
  attr: (name: (typeof REQUIRED_ATTRIBUTES)[number]) => string,
  orderingKey: string | null | undefined,
): void {
  const expectText = (name: 'kind' | 'stream' | 'epoch' | 'seq' | 'tx-count' | 'row-count', fromBody: string | number | BatchKind): void => {
    if (attr(name) !== String(fromBody)) {
      throw new ValidationError(`attribute ${name} is ${JSON.stringify(attr(name))} but the body says ${JSON.stringify(String(fromBody))}`);
    }
  };
  const expectLsn = (name: 'lsn-prev' | 'lsn-first' | 'lsn-last', fromBody: Lsn): void => {
    let value: Lsn;
    try {
      value = parseLsn(attr(name));
    } catch (err) {
      throw new ValidationError(`attribute ${name}: ${(err as Error).message}`, { cause: err });
    }
    if (value !== fromBody) throw new ValidationError(`attribute ${name} is ${attr(name)} but the body says ${formatLsn(fromBody)}`);
  };

  expectText('kind', batch.kind);
  expectText('stream', batch.stream);
  expectText('epoch', batch.epoch);
  expectText('seq', batch.seq);
  expectLsn('lsn-prev', batch.lsnPrev);
  expectLsn('lsn-first', batch.lsnFirst);
  expectLsn('lsn-last', batch.lsnLast);
  expectText('tx-count', batch.transactions.length);
  expectText('row-count', batchRowCount(batch));
  // Push deliveries (and the emulator) carry no ordering key; when there is one it must be the stream.
  if (orderingKey && orderingKey !== batch.stream) {
    throw new ValidationError(`ordering key is ${JSON.stringify(orderingKey)} but the body's stream is ${JSON.stringify(batch.stream)}`);
  }
}

// ---------------------------------------------------------------------------
// Push envelopes

const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Builds a message from a push envelope's `message.data` (standard, padded
 * base64) and `message.attributes`. Buffer.from(x, 'base64') silently skips
 * bad characters, so the text is checked first.
 * @throws ValidationError for bad base64, non-string attributes, or data over maxMessageBytes.
 */
export function messageFromPushData(
  base64: string,
  attributes: Readonly<Record<string, unknown>> | null | undefined,
  opts: { orderingKey?: string; maxMessageBytes?: number } = {},
): ReceivedMessage {
  const maxMessageBytes = sizeOption('maxMessageBytes', opts.maxMessageBytes, PUBSUB_MAX_MESSAGE_BYTES);
  if (typeof base64 !== 'string') throw new ValidationError(`push message data must be a base64 string, got ${typeof base64}`);
  const decodedBytes = (base64.length / 4) * 3 - (base64.endsWith('==') ? 2 : base64.endsWith('=') ? 1 : 0);
  if (decodedBytes > maxMessageBytes) {
    throw new ValidationError(`push message data is about ${Math.floor(decodedBytes)} bytes, over the limit of ${maxMessageBytes} bytes`);
  }
  if (!STRICT_BASE64.test(base64)) throw new ValidationError(`push message data is not valid base64: ${base64Problem(base64)}`);

  const checked: Record<string, string> = {};
  for (const [key, value] of Object.entries(attributes ?? {})) {
    if (typeof value !== 'string') throw new ValidationError(`push message attribute ${key} must be a string, got ${typeof value}`);
    checked[key] = value;
  }
  return { data: Buffer.from(base64, 'base64'), attributes: checked, ...(opts.orderingKey !== undefined && { orderingKey: opts.orderingKey }) };
}

function base64Problem(text: string): string {
  const bad = /[^A-Za-z0-9+/=]/.exec(text);
  if (bad !== null) return `character ${JSON.stringify(bad[0])} at offset ${bad.index} is not in the standard base64 alphabet`;
  if (text.length % 4 !== 0) return `length ${text.length} is not a multiple of 4 (missing padding?)`;
  return "'=' padding appears before the end";
}
