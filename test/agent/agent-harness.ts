// Runs the real agent in process against the shared stack and collects what
// it publishes, decoded, in order of first delivery. By default with a fixed
// epoch (4); with `lease`, the agent keeps a writer lease through the given
// LeaseClient (leaseStore() is one in the Firestore emulator).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PubSub, type Message } from '@google-cloud/pubsub';
import type { Firestore } from '@google-cloud/firestore';
import { LifeboatAgent, type AgentLeaseOptions, type AgentRunOutcome } from '../../agent/agent.ts';
import { connectFirestore, FirestoreLeaseStore } from '../../adapters/firestore-lease-store.ts';
import { createFsObjectStore } from '../../adapters/object-store-fs.ts';
import { createPubsubPublisher, ensureTopic } from '../../adapters/pubsub-publisher.ts';
import { decodeMessage } from '../../core/batch-codec.ts';
import type { Change, ChangeBatch } from '../../core/change-batch.ts';
import { parseConfig, type LifeboatConfig } from '../../core/config.ts';
import { createLogger, type Logger } from '../../core/log.ts';
import type { MessagePublisher } from '../../core/ports.ts';
import { getStack, uniqueProjectId } from '../stack/stack-env.ts';

export interface AgentHarness {
  readonly dir: string;
  readonly project: string;
  readonly received: ChangeBatch[];
  config(): LifeboatConfig;
  startAgent(opts?: StartAgentOptions): RunningAgent;
  /** The lease document of this harness's project in the Firestore emulator. */
  leaseStore(): FirestoreLeaseStore;
  /** Every change of kind `op` in the changes batches received so far. */
  changes(op?: Change['op']): Change[];
  close(): Promise<void>;
}

export interface StartAgentOptions {
  /** Keep a writer lease instead of the fixed epoch 4. */
  readonly lease?: AgentLeaseOptions;
  readonly logger?: Logger;
  /** Wraps the Pub/Sub publisher, e.g. to delay acknowledgements. */
  readonly wrapPublisher?: (publisher: MessagePublisher) => MessagePublisher;
}

export interface RunningAgent {
  readonly agent: LifeboatAgent;
  /** Settles when the run ends by itself (fenced, handed over) or after stop(). */
  readonly done: Promise<AgentRunOutcome>;
  stop(): Promise<AgentRunOutcome>;
}

export async function waitFor<T>(what: string, probe: () => T | undefined | false, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `overrides` are merged into the config section by section. */
export async function startAgentHarness(databaseUrl: string, name: string, overrides: Record<string, Record<string, unknown>> = {}): Promise<AgentHarness> {
  const stack = getStack();
  const dir = mkdtempSync(join(tmpdir(), `lifeboat-${name}-`));
  const project = uniqueProjectId(name);
  const objects = join(dir, 'objects');
  const input = {
    project,
    stream: 'main',
    logLevel: 'warning',
    ...overrides,
    source: { databaseUrl, publication: `lifeboat_${name}`, slot: `lifeboat_${name}`, maxSlotWalKeepSize: '1GB', ...overrides.source },
    batching: { maxDelayMs: 50, ...overrides.batching },
    agent: { heartbeatIntervalSeconds: 1, snapshotChunkRows: 1000, ...overrides.agent },
    storage: { localDir: objects, ...overrides.storage },
  };
  const config = () => parseConfig(input);
  await ensureTopic({ projectId: project, topic: config().pubsub.changesTopic, emulatorHost: stack.pubsubEmulatorHost });
  const pubsub = new PubSub({ projectId: project, apiEndpoint: stack.pubsubEmulatorHost, emulatorMode: true });
  const [sub] = await pubsub.topic(config().pubsub.changesTopic).createSubscription('inspect', { enableMessageOrdering: true });
  const received: ChangeBatch[] = [];
  const store = createFsObjectStore(objects);
  let firestore: Firestore | undefined;
  // Decode in delivery order, so `received` is the order of first delivery.
  let decoded = Promise.resolve();
  sub.on('message', (m: Message) => {
    m.ack();
    decoded = decoded.then(async () => {
      received.push(await decodeMessage(m, (uri) => store.get(uri)));
    });
  });
  return {
    dir,
    project,
    received,
    config,
    startAgent(opts = {}) {
      const cfg = config();
      const publisher = createPubsubPublisher({ projectId: project, topic: cfg.pubsub.changesTopic, emulatorHost: stack.pubsubEmulatorHost });
      const agent = new LifeboatAgent({
        config: cfg,
        baseDir: dir,
        publisher: opts.wrapPublisher ? opts.wrapPublisher(publisher) : publisher,
        objectStore: store,
        ...(opts.lease ? { lease: opts.lease } : { epoch: () => 4 }),
        stateDir: dir,
        logger: opts.logger ?? createLogger({ component: `agent-${name}`, level: 'warning' }),
      });
      const ac = new AbortController();
      const done = agent.run(ac.signal).finally(() => publisher.close());
      // A test that never awaits `done` must not see an unhandled rejection; stop() still rethrows.
      done.catch(() => undefined);
      return {
        agent,
        done,
        async stop() {
          ac.abort();
          return done;
        },
      };
    },
    leaseStore() {
      firestore ??= connectFirestore({ projectId: project, emulatorHost: stack.firestoreEmulatorHost });
      return new FirestoreLeaseStore({ firestore, document: config().lease.document });
    },
    changes(op) {
      const all = received.filter((b) => b.kind === 'changes').flatMap((b) => b.transactions.flatMap((t) => t.changes));
      return op ? all.filter((c) => c.op === op) : all;
    },
    async close() {
      await sub.close();
      await pubsub.close();
      if (firestore) await Promise.race([firestore.terminate(), new Promise((r) => setTimeout(r, 2_000))]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
