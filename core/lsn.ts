// PostgreSQL log sequence numbers (LSNs), in one place.
//
// An LSN is an unsigned 64-bit byte position in the WAL. PostgreSQL prints it
// as two 32-bit hex halves, `X/Y` (`0/1CF7460`, `16/B374D848`), but some
// tools (pg-logical-replication among them) zero-pad each half to 8 digits
// (`00000000/01CF75A0`). Comparing those strings is wrong both ways
// ('A/0' > '10/0' as text), and a JS number loses precision above 2^53, so in
// memory an LSN is always a `bigint`, text exists only at the edges, and every
// conversion goes through this module.
//
// `Lsn` is deliberately a plain `bigint` alias rather than a branded type:
// LSN arithmetic (`lsn + 1n`, differences) is common and a brand would be lost
// by every operation, forcing casts everywhere. Range is checked where values
// enter or leave (parseLsn, formatLsn, the zod schemas).

import { z } from 'zod';
import { ValidationError } from './errors.ts';

/** A WAL position: an unsigned 64-bit integer in [0, 2^64). */
export type Lsn = bigint;

/** `0/0`, the "no position yet" LSN (PostgreSQL's InvalidXLogRecPtr). */
export const ZERO_LSN: Lsn = 0n;

/** The largest representable LSN, `FFFFFFFF/FFFFFFFF`. */
export const MAX_LSN: Lsn = (1n << 64n) - 1n;

// Each half is 1–8 hex digits; nothing else (no sign, no 0x, no spaces).
const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;
const LOW_32_BITS = 0xffffffffn;

/** Shows untrusted input in an error message without flooding it. */
function quoteInput(input: unknown): string {
  if (typeof input !== 'string') return typeof input === 'bigint' ? `${input}n` : String(input);
  const shown = input.length > 40 ? `${input.slice(0, 40)}…` : input;
  return JSON.stringify(shown);
}

/** Why `text` is not an LSN, or undefined if it is one. */
function lsnTextProblem(text: unknown): string | undefined {
  if (typeof text !== 'string') return `invalid LSN ${quoteInput(text)}: expected text like 0/1CF7460, got ${typeof text}`;
  if (LSN_TEXT.test(text)) return undefined;
  return `invalid LSN ${quoteInput(text)}: expected two hex numbers of 1–8 digits separated by "/", like 0/1CF7460 or 00000000/01CF75A0`;
}

/**
 * Parses PostgreSQL LSN text in either form (`0/1CF7460` or the zero-padded
 * `00000000/01CF75A0`; hex digits in either case).
 * @throws ValidationError naming the input when it is not an LSN.
 */
export function parseLsn(text: string): Lsn {
  const problem = lsnTextProblem(text);
  if (problem !== undefined) throw new ValidationError(problem, { details: { input: text } });
  const [high, low] = text.split('/') as [string, string];
  return (BigInt(`0x${high}`) << 32n) | BigInt(`0x${low}`);
}

/** True when `value` is a bigint in the LSN range [0, 2^64). */
export function isLsn(value: unknown): value is Lsn {
  return typeof value === 'bigint' && value >= 0n && value <= MAX_LSN;
}

function assertLsn(value: unknown, what = 'LSN'): asserts value is Lsn {
  if (!isLsn(value)) {
    throw new ValidationError(`invalid ${what} ${quoteInput(value)}: expected a bigint in [0, 2^64)`);
  }
}

/**
 * Formats an LSN the way PostgreSQL prints it: uppercase hex halves without
 * leading zeros, `X/Y` (e.g. `0/1CF7460`, `16/B374D848`).
 * @throws ValidationError when the value is not a bigint in [0, 2^64).
 */
export function formatLsn(lsn: Lsn): string {
  assertLsn(lsn);
  const high = (lsn >> 32n).toString(16).toUpperCase();
  const low = (lsn & LOW_32_BITS).toString(16).toUpperCase();
  return `${high}/${low}`;
}

/** Sort comparator: negative when a < b, 0 when equal, positive when a > b. */
export function compareLsn(a: Lsn, b: Lsn): -1 | 0 | 1 {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The greatest of the given LSNs. */
export function maxLsn(first: Lsn, ...rest: Lsn[]): Lsn {
  let max = first;
  for (const lsn of rest) if (lsn > max) max = lsn;
  return max;
}

/** The least of the given LSNs. */
export function minLsn(first: Lsn, ...rest: Lsn[]): Lsn {
  let min = first;
  for (const lsn of rest) if (lsn < min) min = lsn;
  return min;
}

/**
 * WAL bytes from `b` to `a` (`a - b`, negative when a is behind b), like
 * `pg_wal_lsn_diff(a, b)`. A number, because it feeds lag metrics and logs;
 * exact up to 2^53 bytes (8 PiB), far beyond any real lag.
 */
export function lsnDiffBytes(a: Lsn, b: Lsn): number {
  return Number(a - b);
}

/**
 * Zod codec between LSN text (either form) and `bigint`.
 * `lsnText.parse('0/1CF7460')` → 30373984n; `z.encode(lsnText, 30373984n)` →
 * `'0/1CF7460'` (canonical form). Bad text is an issue naming the input.
 */
export const lsnText = z.codec(z.string(), z.bigint(), {
  decode: (text, ctx) => {
    const problem = lsnTextProblem(text);
    if (problem === undefined) return parseLsn(text);
    ctx.issues.push({ code: 'custom', message: problem, input: text });
    return z.NEVER;
  },
  encode: (lsn, ctx) => {
    if (isLsn(lsn)) return formatLsn(lsn);
    ctx.issues.push({ code: 'custom', message: `LSN ${quoteInput(lsn)} is outside [0, 2^64)`, input: lsn });
    return z.NEVER;
  },
});
