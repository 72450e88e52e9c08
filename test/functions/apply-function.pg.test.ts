// The apply function at the HTTP level (functions-framework getTestServer):
// a Pub/Sub push envelope in, a status code out, the target database changed
// exactly as the batch says.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeBatch } from '../../core/batch-codec.ts';
import type { ChangeBatch, RelationDescriptor } from '../../core/change-batch.ts';
import { setFencingEpoch } from '../../functions/apply-engine.ts';
import { main } from '../../cli/main.ts';
import { formatLsn } from '../../core/lsn.ts';
import { createDatabase } from '../stack/stack-env.ts';

let server: Server;
let base: string;
let target: pg.Client;

const notes: RelationDescriptor = {
  oid: 16500,
  schema: 'public',
  name: 'notes',
  replicaIdentity: 'default',
  columns: [
    { name: 'id', type: 'bigint', typeOid: 20, typmod: -1, key: true },
    { name: 'body', type: 'text', typeOid: 25, typmod: -1, key: false },
  ],
};

const C = 0x3000000n;
const snapshotComplete: ChangeBatch = {
  v: 1, kind: 'marker', stream: 'main', epoch: 1, seq: 0, lsnPrev: C, lsnFirst: C, lsnLast: C, createdAt: '2026-11-23T15:00:00.000Z',
  relations: [], transactions: [],
  marker: { markerId: 'snap-1', reason: 'snapshot-complete', snapshot: { snapshotId: 'snap-1', consistentLsn: C, tables: [] } },
};
const insertNotes = (seq: number, prev: bigint, commit: bigint, end: bigint, id: string, epoch = 1): ChangeBatch => ({
  v: 1, kind: 'changes', stream: 'main', epoch, seq, lsnPrev: prev, lsnFirst: commit, lsnLast: end, createdAt: '2026-11-23T15:00:01.000Z',
  relations: [notes],
  transactions: [{ xid: 700 + seq, commitLsn: commit, endLsn: end, commitTime: '2026-11-23T15:00:01.000001Z', changes: [{ op: 'insert', rel: 0, new: [id, `note ${id}`] }] }],
});

function envelope(batch: ChangeBatch) {
  const encoded = encodeBatch(batch);
  if (encoded.kind !== 'inline') throw new Error('expected inline');
  return { message: { data: encoded.message.data.toString('base64'), attributes: encoded.message.attributes, messageId: `m-${batch.seq}` }, subscription: 'projects/p/subscriptions/lifeboat-apply' };
}

async function deliver(body: unknown): Promise<number> {
  const res = await fetch(`${base}/projects/p/topics/lifeboat-changes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  await res.text();
  return res.status;
}

const count = async (sql: string) => Number((await target.query<{ n: string }>(sql)).rows[0]!.n);

beforeAll(async () => {
  const url = await createDatabase('cloud', 'applyfn');
  process.env.LIFEBOAT_TARGET_DATABASE_URL = url;
  process.env.LIFEBOAT_STORAGE_LOCAL_DIR = mkdtempSync(join(tmpdir(), 'lifeboat-applyfn-'));
  process.env.LIFEBOAT_CONFIG = join(tmpdir(), 'lifeboat-applyfn-no-such-config.yaml');
  process.env.LIFEBOAT_LOG_LEVEL = 'error';
  await import('../../functions/index.ts');
  const { getTestServer } = await import('@google-cloud/functions-framework/testing');
  server = getTestServer('lifeboatApply');
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  target = new pg.Client({ connectionString: url });
  await target.connect();
});

afterAll(async () => {
  await new Promise((r) => server?.close(r));
  await target?.end();
  if (process.env.LIFEBOAT_STORAGE_LOCAL_DIR) rmSync(process.env.LIFEBOAT_STORAGE_LOCAL_DIR, { recursive: true, force: true });
});

describe('lifeboatApply over HTTP', () => {
  it('refuses changes before the snapshot is complete (500, redelivered later), then applies them once', async () => {
    const first = insertNotes(1, C, C + 0x100n, C + 0x180n, '1');
    expect(await deliver(envelope(first))).toBe(500);
    expect(await deliver(envelope(snapshotComplete))).toBe(204);
    expect(await deliver(envelope(first))).toBe(204);
    expect(await count('SELECT count(*) AS n FROM public.notes')).toBe(1);
    // The same batch again changes nothing.
    expect(await deliver(envelope(first))).toBe(204);
    expect(await count('SELECT count(*) AS n FROM public.notes')).toBe(1);
  });

  it('answers a gap with 500 so Pub/Sub redelivers it, and applies it once its predecessor arrived', async () => {
    const second = insertNotes(2, C + 0x180n, C + 0x200n, C + 0x280n, '2');
    const third = insertNotes(3, C + 0x280n, C + 0x300n, C + 0x380n, '3');
    expect(await deliver(envelope(third))).toBe(500);
    expect(await deliver(envelope(second))).toBe(204);
    expect(await deliver(envelope(third))).toBe(204);
    expect((await target.query('SELECT id::text FROM public.notes ORDER BY id')).rows.map((r) => r.id)).toEqual(['1', '2', '3']);
  });

  it('records and acknowledges a stale-epoch batch without applying any of it', async () => {
    await setFencingEpoch(target, 'main', 5, 'test');
    const stale = insertNotes(4, C + 0x380n, C + 0x400n, C + 0x480n, '4', 3);
    expect(await deliver(envelope(stale))).toBe(204);
    expect(await count(`SELECT count(*) AS n FROM public.notes WHERE id = 4`)).toBe(0);
    expect(await count('SELECT count(*) AS n FROM lifeboat.stale_batches')).toBe(1);
  });

  it('records a message that fails validation, whole, and acknowledges it', async () => {
    expect(await deliver({ message: { data: 'not*base64', attributes: { kind: 'changes' }, messageId: 'bad-1' }, subscription: 's' })).toBe(204);
    const rows = await target.query<{ message_id: string; error: string }>('SELECT message_id, error FROM lifeboat.rejected_messages');
    expect(rows.rows).toEqual([{ message_id: 'bad-1', error: expect.stringMatching(/not valid base64/) }]);
  });

  it('halts on a change that cannot apply (500 every time), until `lifeboat resume --skip-batch` with an audit record', async () => {
    await target.query(`INSERT INTO public.notes VALUES (7, 'written on the target by hand')`);
    const bad = insertNotes(5, C + 0x380n, C + 0x500n, C + 0x580n, '7', 5);
    const next = insertNotes(6, C + 0x580n, C + 0x600n, C + 0x680n, '8', 5);
    expect(await deliver(envelope(bad))).toBe(500);
    expect(await deliver(envelope(next))).toBe(500); // refused while halted, so Pub/Sub keeps it

    let out = '';
    let err = '';
    const io = { cwd: process.cwd(), stdout: (t: string) => (out += t), stderr: (t: string) => (err += t) };
    const env = { LIFEBOAT_TARGET_DATABASE_URL: process.env.LIFEBOAT_TARGET_DATABASE_URL, LIFEBOAT_CONFIG: process.env.LIFEBOAT_CONFIG, USER: 'ops' };
    expect(await main(['resume', '--reason', 'row 7 exists on the target'], env, io)).toBe(0); // retries the same batch: still halts
    expect(await deliver(envelope(bad))).toBe(500);
    const range = `${formatLsn(C + 0x500n)}..${formatLsn(C + 0x580n)}`;
    expect(await main(['resume', '--reason', 'row 7 was written on the target by hand', '--skip-batch', range], env, io)).toBe(0);
    expect(err).toBe('');
    expect(out).toMatch(new RegExp(`stream main resumed, skipping batch ${range.replace(/\./g, '\\.')} \\(its changes are NOT on the target\\)`));
    expect(await deliver(envelope(next))).toBe(204);
    expect(await count(`SELECT count(*) AS n FROM public.notes WHERE id = 8`)).toBe(1);
    const audit = await target.query<{ actor: string; action: string }>(`SELECT actor, action FROM lifeboat.audit WHERE action LIKE 'resume%' ORDER BY id`);
    expect(audit.rows).toEqual([
      { actor: 'ops', action: expect.stringMatching(/^resume/) },
      { actor: 'ops', action: 'resume-skip-batch' },
    ]);
  });

  it('resume refuses a usage error before touching anything', async () => {
    let err = '';
    const io = { cwd: process.cwd(), stdout: () => {}, stderr: (t: string) => (err += t) };
    expect(await main(['resume'], {}, io)).toBe(2);
    expect(err).toMatch(/--reason is required/);
    expect(await main(['resume', '--reason', 'x', '--skip-batch', 'nonsense'], {}, io)).toBe(2);
    expect(err).toMatch(/not an LSN range/);
  });
});
