import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ValidationError } from '../../core/errors.ts';
import {
  MAX_LSN,
  ZERO_LSN,
  compareLsn,
  formatLsn,
  isLsn,
  lsnDiffBytes,
  lsnText,
  maxLsn,
  minLsn,
  parseLsn,
} from '../../core/lsn.ts';

const anyLsn = fc.bigInt({ min: 0n, max: MAX_LSN });

/** The zero-padded form some tools print: 00000000/01CF75A0. */
function paddedForm(lsn: bigint, lowercase: boolean): string {
  const half = (n: bigint): string => n.toString(16).padStart(8, '0');
  const text = `${half(lsn >> 32n)}/${half(lsn & 0xffffffffn)}`;
  return lowercase ? text : text.toUpperCase();
}

describe('parseLsn / formatLsn', () => {
  it('parses the examples in both forms', () => {
    expect(parseLsn('0/1CF7460')).toBe(0x1cf7460n);
    expect(parseLsn('00000000/01CF75A0')).toBe(0x1cf75a0n);
    expect(parseLsn('16/B374D848')).toBe((0x16n << 32n) | 0xb374d848n);
    expect(parseLsn('16/b374d848')).toBe(parseLsn('16/B374D848'));
    expect(parseLsn('FFFFFFFF/FFFFFFFF')).toBe(MAX_LSN);
    expect(parseLsn('0/0')).toBe(ZERO_LSN);
  });

  it('formats as PostgreSQL prints: uppercase, no leading zeros', () => {
    expect(formatLsn(0x1cf7460n)).toBe('0/1CF7460');
    expect(formatLsn((0x16n << 32n) | 0xb374d848n)).toBe('16/B374D848');
    expect(formatLsn(ZERO_LSN)).toBe('0/0');
    expect(formatLsn(MAX_LSN)).toBe('FFFFFFFF/FFFFFFFF');
    expect(formatLsn(parseLsn('00000000/01CF75A0'))).toBe('0/1CF75A0');
  });

  it('round-trips every LSN through both text forms', () => {
    fc.assert(
      fc.property(anyLsn, fc.boolean(), (lsn, lowercase) => {
        expect(parseLsn(formatLsn(lsn))).toBe(lsn);
        expect(parseLsn(paddedForm(lsn, lowercase))).toBe(lsn);
        expect(formatLsn(parseLsn(paddedForm(lsn, lowercase)))).toBe(formatLsn(lsn));
        expect(formatLsn(lsn)).toMatch(/^(0|[1-9A-F][0-9A-F]{0,7})\/(0|[1-9A-F][0-9A-F]{0,7})$/);
      }),
      { numRuns: 2000 },
    );
  });

  it('orders like the numbers, not like the text', () => {
    fc.assert(
      fc.property(anyLsn, anyLsn, (a, b) => {
        const expected = a < b ? -1 : a > b ? 1 : 0;
        expect(compareLsn(parseLsn(formatLsn(a)), parseLsn(paddedForm(b, true)))).toBe(expected);
      }),
    );
    // Text comparison would get this one wrong.
    expect(compareLsn(parseLsn('A/0'), parseLsn('10/0'))).toBe(-1);
  });

  it.each([
    ['1/', 'empty low half'],
    ['/1', 'empty high half'],
    ['G/0', 'non-hex digit'],
    ['123456789/0', '9-digit high half'],
    ['0/123456789', '9-digit low half'],
    ['-1/0', 'negative high half'],
    ['0/-1', 'negative low half'],
    ['', 'empty'],
    ['0x1/0', 'hex prefix'],
    [' 0/1', 'leading space'],
    ['0/1\n', 'trailing newline'],
    ['0/1/2', 'three parts'],
    ['12345', 'no slash'],
  ])('rejects %j (%s) with a ValidationError naming the input', (text) => {
    expect(() => parseLsn(text)).toThrow(ValidationError);
    expect(() => parseLsn(text)).toThrow(`invalid LSN ${JSON.stringify(text)}`);
  });

  it('rejects non-strings and shortens long input in the message', () => {
    expect(() => parseLsn(17 as unknown as string)).toThrow('invalid LSN 17: expected text like 0/1CF7460, got number');
    const long = 'x'.repeat(1000);
    expect(() => parseLsn(long)).toThrow(`invalid LSN "${'x'.repeat(40)}…"`);
  });

  it('refuses to format values outside [0, 2^64)', () => {
    expect(() => formatLsn(-1n)).toThrow('invalid LSN -1n');
    expect(() => formatLsn(MAX_LSN + 1n)).toThrow(ValidationError);
    expect(() => formatLsn(5 as unknown as bigint)).toThrow(ValidationError);
  });
});

describe('helpers', () => {
  it('max/min/diff/isLsn', () => {
    expect(maxLsn(3n, 10n, 7n)).toBe(10n);
    expect(maxLsn(3n)).toBe(3n);
    expect(minLsn(3n, 10n, 1n)).toBe(1n);
    expect(lsnDiffBytes(parseLsn('1/0'), parseLsn('0/FFFFFFFF'))).toBe(1);
    expect(lsnDiffBytes(10n, 25n)).toBe(-15);
    expect(isLsn(0n)).toBe(true);
    expect(isLsn(MAX_LSN + 1n)).toBe(false);
    expect(isLsn(-1n)).toBe(false);
    expect(isLsn(1)).toBe(false);
  });

  it('maxLsn agrees with numeric max', () => {
    fc.assert(
      fc.property(fc.array(anyLsn, { minLength: 1 }), (lsns) => {
        const [first, ...rest] = lsns as [bigint, ...bigint[]];
        const expected = lsns.reduce((a, b) => (a > b ? a : b));
        expect(maxLsn(first, ...rest)).toBe(expected);
      }),
    );
  });
});

describe('lsnText zod codec', () => {
  it('decodes text to bigint and encodes back to canonical text', () => {
    expect(lsnText.parse('00000016/B374D848')).toBe((0x16n << 32n) | 0xb374d848n);
    expect(z.encode(lsnText, (0x16n << 32n) | 0xb374d848n)).toBe('16/B374D848');
    fc.assert(
      fc.property(anyLsn, (lsn) => {
        expect(z.decode(lsnText, z.encode(lsnText, lsn))).toBe(lsn);
      }),
    );
  });

  it('reports bad text as an issue naming the input', () => {
    const result = z.object({ at: lsnText }).safeParse({ at: 'G/0' });
    expect(result.success).toBe(false);
    expect(result.error?.issues[0]?.path).toEqual(['at']);
    expect(result.error?.issues[0]?.message).toContain('invalid LSN "G/0"');
    expect(lsnText.safeParse(12).success).toBe(false);
  });

  it('refuses to encode out-of-range bigints', () => {
    expect(() => z.encode(lsnText, -1n)).toThrow(/outside \[0, 2\^64\)/);
  });
});
