// `lifeboat agent`: runs the agent beside the local PostgreSQL until SIGTERM
// or SIGINT, with its /healthz, /status and /metrics endpoints.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { LifeboatAgent } from '../../agent/agent.ts';
import { sleep } from '../../core/backoff.ts';
import { runFailback } from './failback.ts';
import { startStatusServer } from '../../agent/status-server.ts';
import { connectFirestore, FirestoreLeaseStore } from '../../adapters/firestore-lease-store.ts';
import { createFsObjectStore } from '../../adapters/object-store-fs.ts';
import { createGcsObjectStore } from '../../adapters/object-store-gcs.ts';
import { createPubsubPublisher } from '../../adapters/pubsub-publisher.ts';
import { ConfigError, defaultConfigFile, formatIssue, loadConfig } from '../../core/config-load.ts';
import type { LifeboatConfig } from '../../core/config.ts';
import { describeError, PermanentError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { LeaseClient } from '../../core/writer-lease.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, type CliCommand } from '../command.ts';

const HELP = `Usage: lifeboat agent [--config FILE] [--resnapshot] [--alter-publication]

Runs the agent beside the local PostgreSQL: checks the database, creates the
publication and the replication slot if they are missing, copies every table
once, then streams every committed transaction to Pub/Sub. It confirms a
position to PostgreSQL only after Pub/Sub acknowledged everything up to it,
so it is safe to kill at any moment. It holds the writer lease for the local
side; new batches carry its epoch.

The lease guards the local database (docs/design.md):
  - at start it lifts the local fence, only once it holds a valid lease; if
    the cloud holds the lease, it fences the local database and exits 1;
  - if it cannot renew the lease in time, it fences the local database
    (new sessions read-only, every app session terminated, CONNECT revoked
    from source.appRole when set) before ttl − margin, stops and exits 1;
  - when the cloud asks for a graceful takeover, it fences the local
    database, publishes a takeover marker, waits until Pub/Sub acknowledged
    it, releases the lease and exits 0, leaving the database fenced.
  The agent's role must own the database (or be a superuser) and hold
  pg_signal_backend; it checks that at start.

With failover.failback: auto, an agent that starts while the cloud serves
runs the failback itself (as \`lifeboat failback\` would: stranded tail, reverse
sync, verify, fence the cloud, hand the lease home), then starts as the
writer. Do not run \`lifeboat failback\` by hand at the same time.

Options:
  --config FILE         the config (default: $LIFEBOAT_CONFIG, else ./lifeboat.yaml)
  --resnapshot          drop the slot and copy every table again (after the
                        slot was invalidated, or to start over)
  --alter-publication   let the agent change a publication whose tables
                        differ from the config
  -h, --help            show this help

Endpoints (agent.httpHost:agent.httpPort): /healthz, /status (JSON),
/metrics (Prometheus). SIGTERM or SIGINT stops intake, publishes and confirms
what is in flight, and exits within agent.shutdownTimeoutSeconds.

In local mode the emulators are found through pubsub.emulatorHost (or
PUBSUB_EMULATOR_HOST) and FIRESTORE_EMULATOR_HOST; \`lifeboat local\` sets them.
`;

function emulators(cfg: LifeboatConfig, env: Readonly<Record<string, string | undefined>>) {
  if (cfg.mode === 'cloud') return { pubsub: cfg.pubsub.emulatorHost, firestore: undefined };
  const pubsub = cfg.pubsub.emulatorHost ?? env.PUBSUB_EMULATOR_HOST;
  const firestore = env.FIRESTORE_EMULATOR_HOST;
  const missing = [!pubsub && 'pubsub.emulatorHost (or PUBSUB_EMULATOR_HOST)', !firestore && 'FIRESTORE_EMULATOR_HOST'].filter(Boolean);
  if (missing.length > 0) {
    throw new PermanentError(`local mode needs the emulators, but ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} not set.`, {
      remedy: 'Run the whole local system with `lifeboat local` (npm start), or set them to the running emulators, or set mode: cloud.',
    });
  }
  return { pubsub, firestore };
}

export const agentCommand: CliCommand = {
  path: ['agent'],
  summary: 'run the agent beside the local PostgreSQL',
  help: HELP,
  async run(argv, env, io) {
    let values: { config?: string; resnapshot?: boolean; 'alter-publication'?: boolean };
    try {
      values = parseArgs({
        args: [...argv],
        options: { config: { type: 'string' }, resnapshot: { type: 'boolean' }, 'alter-publication': { type: 'boolean' } },
        strict: true,
      }).values;
    } catch (err) {
      io.stderr(`lifeboat agent: ${(err as Error).message}. Run \`lifeboat agent --help\`.\n`);
      return EXIT_USAGE;
    }
    const log = createLogger({ component: 'agent', env });
    let loaded;
    try {
      loaded = loadConfig({ file: values.config ? resolve(io.cwd, values.config) : defaultConfigFile(env, io.cwd), env });
    } catch (err) {
      if (err instanceof ConfigError) {
        io.stderr(`lifeboat agent: the config is not valid:\n${err.issues.map((i) => `  ${formatIssue(i)}`).join('\n')}\n`);
      } else io.stderr(`lifeboat agent: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    }
    const cfg = loaded.config;
    for (const w of loaded.warnings) log.warn(formatIssue(w));

    const stop = new AbortController();
    const onSignal = (sig: NodeJS.Signals) => {
      log.notice(`${sig} received: stopping intake, publishing and confirming what is in flight`);
      stop.abort();
      // A second signal, or the deadline, ends the process without waiting.
      setTimeout(() => process.exit(EXIT_FAILURE), cfg.agent.shutdownTimeoutSeconds * 1000).unref();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    const closers: (() => Promise<unknown>)[] = [];
    try {
      const hosts = emulators(cfg, env);
      const publisher = createPubsubPublisher({
        projectId: cfg.project,
        topic: cfg.pubsub.changesTopic,
        ...(hosts.pubsub ? { emulatorHost: hosts.pubsub } : {}),
        logger: log,
      });
      closers.push(() => publisher.close());
      const objectStore =
        cfg.mode === 'cloud'
          ? createGcsObjectStore({ bucket: cfg.storage.bucket as string, projectId: cfg.project })
          : createFsObjectStore(resolve(loaded.baseDir, cfg.storage.localDir));
      const firestore = connectFirestore({ projectId: cfg.project, ...(hosts.firestore ? { emulatorHost: hosts.firestore } : {}) });
      closers.push(() => Promise.race([firestore.terminate(), new Promise((r) => setTimeout(r, 2_000))]));
      const leaseClient = new LeaseClient({ store: new FirestoreLeaseStore({ firestore, document: cfg.lease.document }), timing: cfg });
      if (cfg.failover.failback === 'auto' && (await leaseClient.read())?.lease.holder === 'cloud') {
        // failover.failback = auto: the local side is back, so bring the writer home before writing.
        const ctx = {
          config: cfg,
          baseDir: loaded.baseDir,
          env: { ...env, ...(hosts.firestore && { FIRESTORE_EMULATOR_HOST: hosts.firestore }), ...(hosts.pubsub && { PUBSUB_EMULATOR_HOST: hosts.pubsub }) },
          who: 'the agent (failover.failback = auto)',
        };
        log.notice('the cloud serves and failover.failback is auto: failing back before starting as the writer');
        for (;;) {
          const r = await runFailback(ctx, { timeoutMs: 600_000, print: (c) => log.notice(c.sentence, { phase: c.phase, nextPhase: c.nextPhase }), note: (t) => log.notice(t), signal: stop.signal, untilHandedOver: true });
          if (r.ended === 'done' || r.ended === 'nothing-to-do' || stop.signal.aborted) break;
          log.warn(`automatic failback stopped (${r.ended}) while ${r.phase}; trying again in 30 s`);
          await sleep(30_000, stop.signal).catch(() => undefined);
          if (stop.signal.aborted) break;
        }
        if (stop.signal.aborted) return EXIT_OK;
      }
      const agent = new LifeboatAgent({
        config: cfg,
        baseDir: loaded.baseDir,
        publisher,
        objectStore,
        lease: { client: leaseClient },
        logger: log,
        resnapshot: values.resnapshot ?? false,
        alterPublication: values['alter-publication'] ?? false,
        env,
      });
      const server = await startStatusServer(cfg.agent.httpHost, cfg.agent.httpPort, {
        health: () => agent.health(),
        status: () => agent.status(),
        metrics: () => agent.metrics(),
      });
      closers.push(() => server.close());
      log.notice(`agent endpoints on ${server.url} (/healthz, /status, /metrics)`, { url: server.url });
      const outcome = await agent.run(stop.signal);
      if (outcome.ending === 'fenced') {
        // A supervisor should notice: the local side may not write until failback.
        io.stderr(`lifeboat agent: ${outcome.reason}\n`);
        return EXIT_FAILURE;
      }
      return EXIT_OK;
    } catch (err) {
      io.stderr(`lifeboat agent: ${describeError(err)}\n`);
      return EXIT_FAILURE;
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      for (const close of closers.reverse()) await close().catch(() => undefined);
    }
  },
};
