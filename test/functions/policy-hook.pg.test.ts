// The policy hook against a real HTTP server: 2xx allows; any other answer,
// no answer in time, or no server at all is a veto. The URL's token never
// reaches the answer.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { askPolicyHook } from '../../functions/policy-hook.ts';

let server: Server;
let base: string;
const bodies: unknown[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    let text = '';
    req.on('data', (d: Buffer) => (text += d.toString()));
    req.on('end', () => {
      bodies.push(JSON.parse(text));
      if (req.url?.startsWith('/allow')) res.writeHead(200).end('go ahead');
      else if (req.url?.startsWith('/veto')) res.writeHead(403).end('change freeze until Monday');
      else setTimeout(() => res.writeHead(200).end('too late'), 2_000);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

const ask = { phase: 'promote' as const, stream: 'main', epoch: 7, reason: '3 probes failed in a row' };

describe('askPolicyHook', () => {
  it('allows on 2xx and sends the decision', async () => {
    const r = await askPolicyHook(`${base}/allow?token=s3cret`, 1_000, ask);
    expect(r).toEqual({ phase: 'promote', allowed: true, detail: `${new URL(base).host} answered HTTP 200: go ahead` });
    expect(bodies.at(-1)).toMatchObject({ phase: 'promote', stream: 'main', epoch: 7, reason: '3 probes failed in a row' });
  });

  it('vetoes on any other status, with the answer in the detail and no token', async () => {
    const r = await askPolicyHook(`${base}/veto?token=s3cret`, 1_000, { ...ask, phase: 'demote' });
    expect(r.allowed).toBe(false);
    expect(r.detail).toMatch(/answered HTTP 403: change freeze until Monday/);
    expect(r.detail).not.toContain('s3cret');
  });

  it('a timeout or an unreachable hook is a veto', async () => {
    expect(await askPolicyHook(`${base}/slow`, 200, ask)).toMatchObject({ allowed: false, detail: expect.stringMatching(/did not answer within 200 ms/) });
    expect(await askPolicyHook('http://127.0.0.1:1/hook', 1_000, ask)).toMatchObject({ allowed: false, detail: expect.stringMatching(/could not be reached/) });
  });
});
