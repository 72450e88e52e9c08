// The policy hook: an HTTP webhook asked before promote and before demote.
// A 2xx answer allows; any other answer, a network error or a timeout is a
// veto (fail closed). The URL may carry a token, so it never reaches a log or
// an answer: only its host is named.
import type { StepResult } from './failover-runner.ts';

export interface PolicyHookRequest {
  readonly phase: 'promote' | 'demote';
  readonly stream: string;
  readonly epoch: number;
  /** The decision's sentence. */
  readonly reason: string;
}

export async function askPolicyHook(url: string, timeoutMs: number, request: PolicyHookRequest): Promise<NonNullable<StepResult['hook']>> {
  const host = new URL(url).host;
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const res = await fetch(url, {
      method: 'POST',
      signal,
      headers: { 'content-type': 'application/json', 'user-agent': 'lifeboat-policy-hook' },
      body: JSON.stringify({ ...request, at: new Date().toISOString() }),
    });
    const text = (await res.text().catch(() => '')).slice(0, 200).replace(/\s+/g, ' ').trim();
    const said = text ? `: ${text}` : '';
    if (res.ok) return { phase: request.phase, allowed: true, detail: `${host} answered HTTP ${res.status}${said}` };
    return { phase: request.phase, allowed: false, detail: `${host} answered HTTP ${res.status}${said}` };
  } catch (err) {
    if (signal.aborted) return { phase: request.phase, allowed: false, detail: `${host} did not answer within ${timeoutMs} ms (a timeout counts as a veto)` };
    const code = (err as { cause?: { code?: unknown } }).cause?.code;
    return { phase: request.phase, allowed: false, detail: `${host} could not be reached (${typeof code === 'string' ? code : 'network error'}; counts as a veto)` };
  }
}
