import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { PermanentError, RetryableError } from '../../core/errors.ts';
import {
  clearRegisteredSecrets,
  createLogger,
  isSensitiveKey,
  parseLogLevel,
  redact,
  redactString,
  registerSecret,
  registerUrlSecrets,
  type LoggerOptions,
} from '../../core/log.ts';

const T0 = new Date('2026-11-23T12:00:00.000Z');

function capture(opts: Partial<LoggerOptions> = {}) {
  const lines: string[] = [];
  const log = createLogger({ component: 'agent', sink: (l) => lines.push(l), clock: () => T0, env: {}, ...opts });
  const records = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { log, lines, records };
}

afterEach(() => clearRegisteredSecrets());

describe('record shape', () => {
  it('writes one JSON line per record with severity, message, time and fields', () => {
    const { log, lines, records } = capture({ fields: { stream: 'main' } });
    log.info('batch published', { lsn: '0/1CF7460', epoch: 7n, rows: 12 });
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toContain('\n');
    expect(records()[0]).toEqual({
      severity: 'INFO',
      message: 'batch published',
      time: '2026-11-23T12:00:00.000Z',
      component: 'agent',
      stream: 'main',
      lsn: '0/1CF7460',
      epoch: '7',
      rows: 12,
    });
  });

  it('maps every method to a Cloud Logging severity', () => {
    const { log, records } = capture({ level: 'debug' });
    log.debug('d');
    log.info('i');
    log.notice('n');
    log.warn('w');
    log.error('e');
    log.critical('c');
    expect(records().map((r) => r.severity)).toEqual(['DEBUG', 'INFO', 'NOTICE', 'WARNING', 'ERROR', 'CRITICAL']);
  });

  it('child loggers add fields, later fields win', () => {
    const { log, records } = capture({ fields: { stream: 'main' } });
    const child = log.child({ component: 'apply', epoch: 3 });
    child.child({ epoch: 4 }).info('x', { extra: true });
    expect(records()[0]).toMatchObject({ component: 'apply', stream: 'main', epoch: 4, extra: true });
  });

  it('keeps the envelope: reserved field names are prefixed with _', () => {
    const { log, records } = capture();
    log.info('real', { message: 'fake', severity: 'DEBUG', time: 'never' });
    expect(records()[0]).toMatchObject({ message: 'real', severity: 'INFO', time: T0.toISOString(), _message: 'fake', _severity: 'DEBUG', _time: 'never' });
  });

  it('serializes awkward values', () => {
    const { log, records } = capture();
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    log.info('values', {
      big: 2n ** 70n,
      when: new Date(0),
      buf: Buffer.from('abc'),
      set: new Set([1n]),
      map: new Map([['k', 1]]),
      nan: Number.NaN,
      undef: undefined,
      fn: () => 1,
      cyclic,
    });
    expect(records()[0]).toMatchObject({
      big: '1180591620717411303424',
      when: '1970-01-01T00:00:00.000Z',
      buf: '<3 bytes>',
      set: ['1'],
      map: { k: 1 },
      nan: 'NaN',
      cyclic: { a: 1, self: '[Circular]' },
    });
    expect(records()[0]).not.toHaveProperty('undef');
    expect(records()[0]).not.toHaveProperty('fn');
  });
});

describe('levels', () => {
  it('filters below the level', () => {
    const { log, records } = capture({ level: 'warning' });
    log.debug('no');
    log.info('no');
    log.notice('no');
    log.warn('yes');
    log.error('yes');
    expect(records().map((r) => r.severity)).toEqual(['WARNING', 'ERROR']);
    expect(log.isLevelEnabled('info')).toBe(false);
    expect(log.isLevelEnabled('error')).toBe(true);
  });

  it('reads LIFEBOAT_LOG_LEVEL, and warns about an unknown one', () => {
    expect(capture({ env: { LIFEBOAT_LOG_LEVEL: 'debug' } }).log.level).toBe('debug');
    expect(capture({ env: { LIFEBOAT_LOG_LEVEL: 'WARN' } }).log.level).toBe('warning');
    const bad = capture({ env: { LIFEBOAT_LOG_LEVEL: 'loud' } });
    expect(bad.log.level).toBe('info');
    expect(bad.records()[0]).toMatchObject({ severity: 'WARNING', requested: 'loud' });
    expect(capture({ level: 'error', env: { LIFEBOAT_LOG_LEVEL: 'debug' } }).log.level).toBe('error');
  });

  it('parseLogLevel', () => {
    expect(parseLogLevel(' Info ')).toBe('info');
    expect(parseLogLevel('fatal')).toBe('critical');
    expect(parseLogLevel('nope')).toBeUndefined();
    expect(parseLogLevel(undefined)).toBeUndefined();
  });
});

describe('errors', () => {
  it('serializes an Error field as {error, errorName, stack}', () => {
    const { log, records } = capture();
    log.warn('retrying', { err: new RetryableError('connection lost', { remedy: 'check the network', details: { attempt: 2 } }) });
    const err = records()[0]?.err as Record<string, unknown>;
    expect(err).toMatchObject({ error: 'connection lost', errorName: 'RetryableError', retryable: true, remedy: 'check the network', details: { attempt: 2 } });
    expect(err.stack).toMatch(/connection lost/);
    expect(records()[0]).not.toHaveProperty('stack_trace');
  });

  it('at ERROR and above, copies the stack to stack_trace for Error Reporting', () => {
    const { log, records } = capture();
    log.error('apply failed', new PermanentError('bad batch', { cause: new Error('root cause') }));
    const r = records()[0] as Record<string, unknown>;
    expect(r.message).toBe('apply failed');
    expect(r.stack_trace).toMatch(/^PermanentError: bad batch\n\s+at /);
    expect((r.err as Record<string, unknown>).cause).toMatchObject({ error: 'root cause', errorName: 'Error' });
  });
});

describe('redaction', () => {
  it('masks passwords in URLs', () => {
    expect(redactString('postgres://user:secret@host:5432/db')).toBe('postgres://user:***@host:5432/db');
    expect(redactString('connect postgresql://:p%40ss@h/db failed')).toBe('connect postgresql://:***@h/db failed');
    expect(redactString('postgres://user@host/db')).toBe('postgres://user@host/db');
    expect(redactString('a postgres://u:p@ss@h/d b')).not.toContain('p@ss');
  });

  it('masks values of secret-looking keys', () => {
    const r = redact({ password: 'x', dbPassword: 'y', apiKey: 'k', private_key: 'pk', Authorization: 'Bearer t', token: 1, nested: { clientSecret: 's' }, lsn: '0/1' });
    expect(r).toEqual({ password: '***', dbPassword: '***', apiKey: '***', private_key: '***', Authorization: '***', token: '***', nested: { clientSecret: '***' }, lsn: '0/1' });
    expect(isSensitiveKey('x-goog-api-key')).toBe(true);
    expect(isSensitiveKey('epoch')).toBe(false);
  });

  it('masks password=…, bearer tokens and sensitive query parameters in text', () => {
    expect(redactString('host=db password=hunter2 user=app')).toBe('host=db password=*** user=app');
    expect(redactString('{"password":"hunter2"}')).toBe('{"password":"***"}');
    expect(redactString('Authorization: Bearer abc.def.ghi')).toBe('Authorization: Bearer ***');
    expect(redactString('https://hook.test/x?token=abc&mode=1')).toBe('https://hook.test/x?token=***&mode=1');
  });

  it('masks registered secrets anywhere, including in error messages, stacks and keys', () => {
    registerSecret('tr0ub4dor&3');
    const { log, lines } = capture();
    const e = new Error('auth failed for tr0ub4dor&3');
    log.error('oops tr0ub4dor&3', { e, ['key-tr0ub4dor&3']: 'v', list: ['a tr0ub4dor&3 b'] });
    expect(lines[0]).not.toContain('tr0ub4dor&3');
    expect(lines[0]).toContain('oops ***');
  });

  it('registers the URL-encoded and decoded forms, and URL passwords', () => {
    registerUrlSecrets('postgres://app:p%40ss%2Fw0rd@db/app');
    expect(redactString('raw p@ss/w0rd and encoded p%40ss%2Fw0rd')).toBe('raw *** and encoded ***');
    registerSecret('ab'); // too short to be a secret: ignored
    expect(redactString('abc')).toBe('abc');
  });

  it('withholds a record whose serialized form would still reveal a secret', () => {
    registerSecret('a\\nb1');
    const { log, lines } = capture();
    log.info('x', { v: 'a\nb1' }); // JSON-escapes to the secret's text
    expect(lines[0]).not.toContain('a\\nb1');
    expect(JSON.parse(lines[0] ?? '{}').message).toMatch(/withheld/);
  });

  const secretArb = fc
    .string({ minLength: 4, maxLength: 24, unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEF0123456789!#$%&()*+,-./:;<=>?@[]^_{|}~"\\ '.split('')) })
    .filter((s) => s.trim().length >= 4);

  it('property: a registered secret never reaches the sink, wherever it is embedded', () => {
    fc.assert(
      fc.property(secretArb, fc.string(), fc.string(), fc.constantFrom('debug', 'info', 'error') as fc.Arbitrary<'debug' | 'info' | 'error'>, (secret, pre, post, lvl) => {
        clearRegisteredSecrets();
        registerSecret(secret);
        const { log, lines } = capture({ level: 'debug' });
        const text = `${pre}${secret}${post}`;
        const err = new Error(text);
        log[lvl](text, { field: text, nested: { deep: [text] }, [text]: 1, err });
        for (const line of lines) {
          expect(line).not.toContain(secret);
          expect(line).not.toContain(JSON.stringify(secret).slice(1, -1));
          const parsed = JSON.parse(line) as unknown;
          expect(JSON.stringify(parsed)).not.toContain(JSON.stringify(secret).slice(1, -1));
        }
      }),
      { numRuns: 300 },
    );
  });

  it('property: URL passwords are masked without registration', () => {
    const word = fc.string({ minLength: 1, maxLength: 12, unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789'.split('')) });
    fc.assert(
      fc.property(word, word, word, fc.string({ maxLength: 20 }), (user, pw, host, context) => {
        const password = `PW${pw}`;
        const line = redactString(`${context} postgres://${user}:${password}@${host}.db:5432/app ${context}`);
        expect(line).toContain(`postgres://${user}:***@${host}.db:5432/app`);
        expect(line.includes(password) && !context.includes(password)).toBe(false);
      }),
    );
  });
});
