import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { AbortedError, backoffDelayMs, retry, sleep } from '../../core/backoff.ts';
import { PermanentError, RetryableError } from '../../core/errors.ts';

describe('backoffDelayMs', () => {
  it('stays within [0, min(cap, initial × multiplier^(n−1))]', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 60 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 1, max: 600_000 }),
        fc.double({ min: 0, max: 0.999999, noNaN: true }),
        (attempt, initialMs, maxMs, r) => {
          const d = backoffDelayMs(attempt, { initialMs, maxMs, multiplier: 2 }, () => r);
          expect(d).toBeGreaterThanOrEqual(0);
          expect(d).toBeLessThanOrEqual(Math.min(maxMs, initialMs * 2 ** (attempt - 1)));
        },
      ),
    );
  });

  it('grows with the attempt until the cap', () => {
    const p = { initialMs: 100, maxMs: 1000, multiplier: 2 };
    const top = (n: number) => backoffDelayMs(n, p, () => 0.999999);
    expect(top(1)).toBe(99);
    expect(top(3)).toBe(399);
    expect(top(10)).toBe(999);
  });

  it('rejects a non-positive attempt', () => {
    expect(() => backoffDelayMs(0)).toThrow(/positive integer/);
  });
});

describe('retry', () => {
  const noSleep = async () => {};

  it('retries retryable errors and returns the first success', async () => {
    let calls = 0;
    const delays: number[] = [];
    const out = await retry(
      async () => {
        calls++;
        if (calls < 3) throw new RetryableError('connection refused');
        return 'ok';
      },
      { sleep: noSleep, onRetry: (_e, _a, d) => delays.push(d), random: () => 0.5 },
    );
    expect(out).toBe('ok');
    expect(calls).toBe(3);
    expect(delays).toEqual([50, 100]);
  });

  it('returns a permanent error at once', async () => {
    let calls = 0;
    await expect(
      retry(async () => {
        calls++;
        throw new PermanentError('bad batch');
      }, { sleep: noSleep }),
    ).rejects.toThrow('bad batch');
    expect(calls).toBe(1);
  });

  it('gives up after maxAttempts with the last error', async () => {
    let calls = 0;
    await expect(
      retry(async () => {
        calls++;
        throw new RetryableError(`try ${calls}`);
      }, { sleep: noSleep, maxAttempts: 4 }),
    ).rejects.toThrow('try 4');
  });

  it('stops sleeping when the signal aborts', async () => {
    const ac = new AbortController();
    const started = Date.now();
    const p = retry(async () => {
      throw new RetryableError('down');
    }, { signal: ac.signal, policy: { initialMs: 60_000, maxMs: 60_000, multiplier: 1 }, random: () => 0.99 });
    setTimeout(() => ac.abort(new Error('shutting down')), 20);
    await expect(p).rejects.toBeInstanceOf(AbortedError);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('sleep rejects at once on an aborted signal', async () => {
    await expect(sleep(10, AbortSignal.abort())).rejects.toBeInstanceOf(AbortedError);
  });
});
