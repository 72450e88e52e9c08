// ChangeBatch v1 through the real Pub/Sub emulator: what the agent publishes
// comes back byte-exact through a subscriber, and a user can read it with
// `gcloud pubsub subscriptions pull` (the attributes say what is inside).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { PubSub, type Message } from '@google-cloud/pubsub';
import { describe, expect, it } from 'vitest';
import { decodeMessage, encodeBatch, type PubSubMessage } from '../../core/batch-codec.ts';
import type { ChangeBatch } from '../../core/change-batch.ts';
import { sampleBatch as changes } from './batch-fixtures.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

const run = promisify(execFile);
const stack = getStack();
const GCLOUD = `${process.env.LIFEBOAT_GCLOUD_SDK ?? '/usr/lib/google-cloud-sdk'}/bin/gcloud`;

function heartbeat(): ChangeBatch {
  return {
    v: 1,
    kind: 'heartbeat',
    stream: 'main',
    epoch: 3,
    seq: 18,
    lsnPrev: 0x1cf7600n,
    lsnFirst: 0x1cf7700n,
    lsnLast: 0x1cf7700n,
    createdAt: '2026-11-23T13:31:07.000Z',
    relations: [],
    transactions: [],
    heartbeat: {
      sourceTime: '2026-11-23T13:31:07.000001Z',
      walLsn: 0x1cf7700n,
      sequences: [{ schema: 'public', name: 'accounts_id_seq', lastValue: '9223372036854775000', isCalled: true }],
    },
  };
}

function inline(batch: ChangeBatch, compressAboveBytes = 1024): PubSubMessage {
  const encoded = encodeBatch(batch, { compressAboveBytes });
  if (encoded.kind !== 'inline') throw new Error('expected an inline message');
  return encoded.message;
}

async function setUp(project: string) {
  const pubsub = new PubSub({ projectId: project, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
  const [topic] = await pubsub.createTopic('lifeboat-changes');
  await topic.createSubscription('lifeboat-apply', { enableMessageOrdering: true });
  await topic.createSubscription('inspect');
  return { pubsub, topic: pubsub.topic('lifeboat-changes', { messageOrdering: true }) };
}

describe('ChangeBatch v1 over the Pub/Sub emulator', () => {
  it('comes back byte-exact and decodes to the same batch, gzip and plain, heartbeat included', async () => {
    const { pubsub, topic } = await setUp(uniqueProjectId('wire'));
    try {
      const batches = [changes(), heartbeat()];
      const sent = [inline(batches[0]!, 0), inline(batches[1]!, Number.MAX_SAFE_INTEGER)];
      expect(sent[0]!.attributes.encoding).toBe('json+gzip');
      expect(sent[1]!.attributes.tables).toBe('');
      for (const m of sent) await topic.publishMessage(m);

      const received = await new Promise<Message[]>((resolve, reject) => {
        const got: Message[] = [];
        const sub = pubsub.subscription('lifeboat-apply');
        const timer = setTimeout(() => reject(new Error(`pulled ${got.length} of ${sent.length} in 20 s`)), 20_000);
        sub.on('error', reject);
        sub.on('message', (m: Message) => {
          m.ack();
          got.push(m);
          if (got.length === sent.length) {
            clearTimeout(timer);
            void sub.close().then(() => resolve(got));
          }
        });
      });
      expect(received.map((m) => m.orderingKey)).toEqual(['main', 'main']);
      for (const [i, m] of received.entries()) {
        expect(Buffer.compare(m.data, sent[i]!.data)).toBe(0);
        expect(m.attributes).toEqual(sent[i]!.attributes);
        expect(await decodeMessage(m)).toStrictEqual(batches[i]);
      }
    } finally {
      await pubsub.close();
    }
  });

  it.skipIf(!existsSync(GCLOUD))('is readable with `gcloud pubsub subscriptions pull`', async () => {
    const project = uniqueProjectId('gcloud');
    const { pubsub, topic } = await setUp(project);
    try {
      const message = inline(changes());
      await topic.publishMessage(message);
      const { stdout } = await run(
        GCLOUD,
        ['pubsub', 'subscriptions', 'pull', 'inspect', '--auto-ack', '--limit=5', `--project=${project}`, '--format=json'],
        {
          env: {
            ...process.env,
            CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB: `http://${stack.pubsubEmulatorHost}/`,
            CLOUDSDK_AUTH_DISABLE_CREDENTIALS: 'true',
            CLOUDSDK_CORE_DISABLE_PROMPTS: '1',
            CLOUDSDK_CONFIG: `${stack.tempDir}/gcloud-config`,
          },
          timeout: 60_000,
        },
      );
      const pulled = JSON.parse(stdout) as { message: { attributes: Record<string, string>; data: string; orderingKey?: string } }[];
      expect(pulled).toHaveLength(1);
      const attrs = pulled[0]!.message.attributes;
      expect(attrs).toMatchObject({
        'lifeboat-version': '1',
        kind: 'changes',
        stream: 'main',
        epoch: '3',
        'lsn-first': '0/1CF7460',
        'lsn-last': '0/1CF7600',
        'tx-count': '2',
        'row-count': '3',
        tables: 'public.pgbench_accounts',
        payload: 'inline',
      });
      expect(attrs.checksum).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(pulled[0]!.message.orderingKey).toBe('main');
      // What gcloud shows decodes to the batch that was sent.
      const data = Buffer.from(pulled[0]!.message.data, 'base64');
      expect(await decodeMessage({ data, attributes: attrs })).toStrictEqual(changes());
    } finally {
      await pubsub.close();
    }
  });
});
