// The one structured logger: one JSON object per line, in the shape Cloud
// Logging parses from stdout/stderr of Cloud Functions and Cloud Run
// (https://cloud.google.com/logging/docs/structured-logging):
//
//   {"severity":"INFO","message":"batch published","time":"2026-…Z",
//    "component":"agent","stream":"main","lsn":"0/1CF7460","epoch":"7"}
//
// - `severity` is one of DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL.
// - `time` is an ISO timestamp (Cloud Logging uses it as the entry time).
// - bigints are written as strings; Dates as ISO strings; Buffers as
//   "<N bytes>"; cycles as "[Circular]"; depth is capped.
// - An Error value becomes {error, errorName, stack?, remedy?, retryable?,
//   details?, cause?}. Errors passed as `fields` itself go under `err`.
//   Decision for Error Reporting: at ERROR and CRITICAL the first Error's
//   stack is ALSO copied to a top-level `stack_trace` field, which Error
//   Reporting recognizes in jsonPayload, so failures are grouped there
//   while `message` stays a readable one-liner.
// - Field names severity/message/time in `fields` would clash with the
//   envelope; they are written as _severity/_message/_time.
//
// Secrets never reach the sink. Every record goes through redact():
//   1. values under keys that look secret (password, secret, token,
//      authorization, apiKey, privateKey, credential, cookie…) become '***';
//   2. in every string, URL passwords (postgres://user:***@host), sensitive
//      query parameters (?token=***), `password=***` pairs and
//      `Bearer ***` are masked;
//   3. every occurrence of a registered secret (registerSecret) becomes
//      '***'. Secrets shorter than MIN_SECRET_LENGTH are not registered (they
//      would mask common words and are not real secrets).
//   Finally the serialized line is checked: if a registered secret (or its
//   JSON-escaped form) still appears, the record is replaced by a fixed
//   "[record withheld]" record. A leak is therefore impossible by construction.
//
// Level: the `level` option, else LIFEBOAT_LOG_LEVEL, else info.

export type Severity = 'DEBUG' | 'INFO' | 'NOTICE' | 'WARNING' | 'ERROR' | 'CRITICAL';
export type LogLevel = 'debug' | 'info' | 'notice' | 'warning' | 'error' | 'critical';
export type LogFields = Readonly<Record<string, unknown>>;

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, notice: 2, warning: 3, error: 4, critical: 5 };
const SEVERITY: Record<LogLevel, Severity> = {
  debug: 'DEBUG',
  info: 'INFO',
  notice: 'NOTICE',
  warning: 'WARNING',
  error: 'ERROR',
  critical: 'CRITICAL',
};

/** 'warn', 'WARNING', ' Info ' → a LogLevel; undefined if not a level. */
export function parseLogLevel(value: string | undefined): LogLevel | undefined {
  if (value === undefined) return undefined;
  const v = value.trim().toLowerCase();
  if (v === 'warn') return 'warning';
  if (v === 'fatal') return 'critical';
  return v in RANK ? (v as LogLevel) : undefined;
}

// ---------------------------------------------------------------------------
// Redaction

export const REDACTED = '***';
export const MIN_SECRET_LENGTH = 4;

const secrets = new Set<string>();
let secretsSorted: string[] = [];

/**
 * Masks this exact string wherever it appears in any later log record (also
 * its URL-encoded form). The config loader registers the passwords it sees.
 */
export function registerSecret(value: string | undefined | null): void {
  if (typeof value !== 'string' || value.length < MIN_SECRET_LENGTH) return;
  const forms = new Set([value]);
  forms.add(encodeURIComponent(value));
  try {
    forms.add(decodeURIComponent(value));
  } catch {
    // not URL-encoded
  }
  let changed = false;
  for (const f of forms) {
    if (f.length >= MIN_SECRET_LENGTH && !secrets.has(f)) {
      secrets.add(f);
      changed = true;
    }
  }
  if (changed) secretsSorted = [...secrets].sort((a, b) => b.length - a.length);
}

/** Registers the password of a URL (if any). */
export function registerUrlSecrets(url: string | undefined): void {
  if (!url) return;
  const m = /^[a-z][a-z0-9+.-]*:\/\/[^\s:/@]*:([^\s]*)@/i.exec(url);
  if (m?.[1]) {
    registerSecret(m[1]);
    // The driver may see the decoded form.
    try {
      registerSecret(decodeURIComponent(m[1]));
    } catch {
      // not URL-encoded
    }
  }
  try {
    const u = new URL(url);
    if (u.password) registerSecret(u.password);
    for (const [k, v] of u.searchParams) if (SENSITIVE_PARAM.test(k)) registerSecret(v);
  } catch {
    // not a URL: nothing structured to register
  }
}

/** For tests: forget every registered secret. */
export function clearRegisteredSecrets(): void {
  secrets.clear();
  secretsSorted = [];
}

const SENSITIVE_KEY = /^pass$|password|passwd|passphrase|^pwd$|secret|token|authori[sz]ation|api_?key|private_?key|credential|cookie|^auth$|signature/i;
const SENSITIVE_PARAM = /^(password|passwd|pwd|secret|token|access_token|refresh_token|id_token|api_?key|key|sig|signature|x-goog-signature|x-goog-credential|auth|authorization)$/i;

/** True for keys whose values are masked whole. */
export function isSensitiveKey(key: string): boolean {
  return SENSITIVE_KEY.test(key.replace(/[-\s]/g, '_'));
}

// scheme://user:PASSWORD@ — greedy to the last '@' of the token: may over-mask, never under-masks.
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/[^\s:/@]*:)([^\s]*)@/gi;
const QUERY_PARAM = /([?&;])([^=&\s#;]+)=([^&\s#;]*)/g;
const KV_PASSWORD = /\b(password|passwd|pwd|secret|token|api_?key)("?\s*[=:]\s*)('[^']*'|"[^"]*"|[^\s,;&'"}]+)/gi;
const BEARER = /\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/g;

/** Masks credentials in one string (patterns, then registered secrets). */
export function redactString(s: string): string {
  let out = s;
  if (out.includes('://')) out = out.replace(URL_USERINFO, (_m, pre: string) => `${pre}${REDACTED}@`);
  if (out.includes('=')) {
    out = out.replace(QUERY_PARAM, (m, sep: string, k: string) => (SENSITIVE_PARAM.test(k) ? `${sep}${k}=${REDACTED}` : m));
    out = out.replace(KV_PASSWORD, maskKv);
  } else if (out.includes(':')) {
    out = out.replace(KV_PASSWORD, maskKv);
  }
  if (out.includes('Bearer') || out.includes('Basic')) out = out.replace(BEARER, (_m, scheme: string) => `${scheme} ${REDACTED}`);
  return replaceSecrets(out);
}

function maskKv(_m: string, k: string, eq: string, value: string): string {
  const q = value[0] === '"' || value[0] === "'" ? value[0] : '';
  return `${k}${eq}${q}${REDACTED}${q}`;
}

function replaceSecrets(s: string): string {
  if (secretsSorted.length === 0) return s;
  let out = s;
  // Each replacement shortens the string (secret ≥ 4 chars → 3), so this ends.
  for (let again = true; again; ) {
    again = false;
    for (const secret of secretsSorted) {
      if (out.includes(secret)) {
        out = out.split(secret).join(REDACTED);
        again = true;
      }
    }
  }
  return out;
}

function containsSecret(line: string): boolean {
  for (const secret of secretsSorted) {
    if (line.includes(secret)) return true;
    const escaped = JSON.stringify(secret).slice(1, -1);
    if (escaped !== secret && line.includes(escaped)) return true;
  }
  return false;
}

const MAX_DEPTH = 8;

export interface SerializedError {
  error: string;
  errorName: string;
  stack?: string;
  remedy?: string;
  retryable?: boolean;
  details?: unknown;
  cause?: unknown;
  code?: unknown;
}

/**
 * A JSON-safe, redacted copy of any value: bigint → string, Error →
 * SerializedError, sensitive keys → '***', strings masked.
 */
export function redact(value: unknown): unknown {
  return toJson(value, 0, new WeakSet());
}

function toJson(value: unknown, depth: number, seen: WeakSet<object>): unknown {
  switch (typeof value) {
    case 'string':
      return redactString(value);
    case 'bigint':
      return value.toString();
    case 'number':
      return Number.isFinite(value) ? value : String(value);
    case 'boolean':
      return value;
    case 'undefined':
    case 'function':
      return undefined;
    case 'symbol':
      return value.toString();
  }
  if (value === null) return null;
  const obj = value as object;
  if (seen.has(obj)) return '[Circular]';
  if (depth >= MAX_DEPTH) return '[Truncated]';
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString();
  if (value instanceof Uint8Array) return `<${value.byteLength} bytes>`;
  if (value instanceof URL) return redactString(value.href);
  if (value instanceof RegExp) return String(value);
  seen.add(obj);
  try {
    if (value instanceof Error) return serializeError(value, depth, seen);
    if (Array.isArray(value)) return value.map((v) => toJson(v, depth + 1, seen) ?? null);
    if (value instanceof Map) return toJson(Object.fromEntries(value), depth, seen);
    if (value instanceof Set) return toJson([...value], depth, seen);
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(obj)) {
      const key = redactString(k);
      if (isSensitiveKey(k) && v !== undefined && v !== null && v !== '') {
        out[key] = REDACTED;
        continue;
      }
      const j = toJson(v, depth + 1, seen);
      if (j !== undefined) out[key] = j;
    }
    return out;
  } finally {
    seen.delete(obj);
  }
}

function serializeError(err: Error, depth: number, seen: WeakSet<object>): SerializedError {
  const e = err as Error & { remedy?: unknown; retryable?: unknown; details?: unknown; code?: unknown };
  const out: SerializedError = { error: redactString(String(err.message)), errorName: err.name || 'Error' };
  if (typeof err.stack === 'string') out.stack = redactString(err.stack);
  if (typeof e.remedy === 'string') out.remedy = redactString(e.remedy);
  if (typeof e.retryable === 'boolean') out.retryable = e.retryable;
  if (e.code !== undefined) out.code = toJson(e.code, depth + 1, seen);
  if (e.details !== undefined && typeof e.details === 'object' && e.details !== null && Object.keys(e.details).length > 0) {
    out.details = toJson(e.details, depth + 1, seen);
  }
  if (err.cause !== undefined) out.cause = toJson(err.cause, depth + 1, seen);
  return out;
}

// ---------------------------------------------------------------------------
// Logger

export interface Logger {
  readonly level: LogLevel;
  isLevelEnabled(level: LogLevel): boolean;
  debug(message: string, fields?: LogFields | Error): void;
  info(message: string, fields?: LogFields | Error): void;
  notice(message: string, fields?: LogFields | Error): void;
  warn(message: string, fields?: LogFields | Error): void;
  error(message: string, fields?: LogFields | Error): void;
  critical(message: string, fields?: LogFields | Error): void;
  /** A logger whose records carry these fields too (later fields win). */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  readonly component: string;
  /** Receives one JSON line per record, without the newline. Default: stderr. */
  readonly sink?: (line: string) => void;
  /** Default: LIFEBOAT_LOG_LEVEL from `env`, else 'info'. */
  readonly level?: LogLevel | string;
  readonly clock?: () => Date;
  /** Fields on every record (e.g. stream). */
  readonly fields?: LogFields;
  /** Same as `fields` (both may be given; `fields` wins). */
  readonly base?: LogFields;
  /** Where LIFEBOAT_LOG_LEVEL is read from; default process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

const RESERVED = new Set(['severity', 'message', 'time']);

const defaultSink = (line: string) => {
  process.stderr.write(line + '\n');
};

export function createLogger(opts: LoggerOptions): Logger {
  const sink = opts.sink ?? defaultSink;
  const clock = opts.clock ?? (() => new Date());
  const env = opts.env ?? process.env;
  const requested = opts.level ?? env.LIFEBOAT_LOG_LEVEL;
  const parsed = parseLogLevel(requested);
  const level: LogLevel = parsed ?? 'info';
  const base: Record<string, unknown> = { component: opts.component, ...opts.base, ...opts.fields };
  const logger = makeLogger(level, base, sink, clock);
  if (requested !== undefined && requested !== '' && parsed === undefined) {
    logger.warn('unknown log level; using info', {
      requested,
      hint: 'use debug, info, notice, warning, error or critical (LIFEBOAT_LOG_LEVEL)',
    });
  }
  return logger;
}

function makeLogger(
  level: LogLevel,
  base: Record<string, unknown>,
  sink: (line: string) => void,
  clock: () => Date,
): Logger {
  const min = RANK[level];
  const emit = (lvl: LogLevel, message: string, fields?: LogFields | Error) => {
    if (RANK[lvl] < min) return;
    const severity = SEVERITY[lvl];
    const time = clock().toISOString();
    const extra: Record<string, unknown> = fields instanceof Error ? { err: fields } : { ...fields };
    const record: Record<string, unknown> = { severity, message: String(message), time };
    for (const [k, v] of Object.entries(base)) record[RESERVED.has(k) ? `_${k}` : k] = v;
    for (const [k, v] of Object.entries(extra)) record[RESERVED.has(k) ? `_${k}` : k] = v;
    const stackSource = RANK[lvl] >= RANK.error ? firstError(extra) : undefined;
    const json = redact(record) as Record<string, unknown>;
    if (stackSource?.stack && json.stack_trace === undefined) json.stack_trace = redactString(stackSource.stack);
    let line: string;
    try {
      line = JSON.stringify(json);
    } catch (e) {
      line = JSON.stringify({ severity, message: redactString(String(message)), time, component: base.component, logError: String(e) });
    }
    if (containsSecret(line)) {
      const withheld = { severity, message: '[record withheld: it contained a registered secret]', time };
      line = JSON.stringify({ ...withheld, component: redactString(String(base.component)) });
      if (containsSecret(line)) line = JSON.stringify(withheld);
    }
    sink(line);
  };
  return {
    level,
    isLevelEnabled: (l) => RANK[l] >= min,
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    notice: (m, f) => emit('notice', m, f),
    warn: (m, f) => emit('warning', m, f),
    error: (m, f) => emit('error', m, f),
    critical: (m, f) => emit('critical', m, f),
    child: (fields) => makeLogger(level, { ...base, ...fields }, sink, clock),
  };
}

function firstError(fields: Record<string, unknown>): Error | undefined {
  for (const v of Object.values(fields)) if (v instanceof Error) return v;
  return undefined;
}
