// What the operator commands (failover, failback, status) share: finding the
// config, and in local mode the running system's `.lifeboat/local.json`
// (emulator hosts, the state directory), so that `lifeboat failover` in the
// project directory acts on the system `npm start` runs without any flag.
import { existsSync, readFileSync } from 'node:fs';
import { hostname, userInfo } from 'node:os';
import { resolve } from 'node:path';
import { z } from 'zod';
import type { LifeboatConfig } from '../core/config.ts';
import { ConfigError, defaultConfigFile, formatIssue, loadConfig } from '../core/config-load.ts';
import { describeError, PermanentError } from '../core/errors.ts';

const localInfoSchema = z.object({
  configFile: z.string().min(1),
  stateDir: z.string().min(1),
  pubsubEmulatorHost: z.string().min(1),
  firestoreEmulatorHost: z.string().min(1),
  statusUrl: z.string().optional(),
  routerUrl: z.string().optional(),
  pid: z.number().int().optional(),
});

export type LocalInfoFile = z.output<typeof localInfoSchema>;

export interface OperatorContext {
  readonly config: LifeboatConfig;
  readonly baseDir: string;
  /** env plus what local.json adds (emulator hosts, LIFEBOAT_STATE_DIR). */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Present when a running local system was found. */
  readonly local?: LocalInfoFile;
  /** 'alice@host', for the audit trail. */
  readonly who: string;
}

/** `.lifeboat/local.json` of a running `lifeboat local` in cwd (or LIFEBOAT_STATE_DIR), if any. */
export function readLocalInfo(env: Readonly<Record<string, string | undefined>>, cwd: string): LocalInfoFile | undefined {
  const file = resolve(cwd, env.LIFEBOAT_STATE_DIR || '.lifeboat', 'local.json');
  if (!existsSync(file)) return undefined;
  const parsed = localInfoSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
  if (!parsed.success) {
    throw new PermanentError(`${file} is not a local.json written by \`lifeboat local\`: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`, {
      remedy: 'Start the local system again with `npm start`, or delete the file if no local system runs.',
    });
  }
  return parsed.data;
}

/**
 * The config of an operator command: --config, else $LIFEBOAT_CONFIG, else
 * the running local system's, else ./lifeboat.yaml. Throws a PermanentError
 * whose message lists every config problem.
 */
export function operatorContext(configFlag: string | undefined, env: Readonly<Record<string, string | undefined>>, cwd: string): OperatorContext {
  const local = configFlag === undefined && !env.LIFEBOAT_CONFIG ? readLocalInfo(env, cwd) : undefined;
  const merged: Record<string, string | undefined> = local
    ? { ...env, PUBSUB_EMULATOR_HOST: env.PUBSUB_EMULATOR_HOST ?? local.pubsubEmulatorHost, FIRESTORE_EMULATOR_HOST: env.FIRESTORE_EMULATOR_HOST ?? local.firestoreEmulatorHost, LIFEBOAT_STATE_DIR: env.LIFEBOAT_STATE_DIR ?? local.stateDir }
    : { ...env };
  const file = configFlag ? resolve(cwd, configFlag) : local ? local.configFile : defaultConfigFile(env, cwd);
  let loaded;
  try {
    loaded = loadConfig({ file, env: merged, allowMissingFile: true });
  } catch (err) {
    if (err instanceof ConfigError) {
      throw new PermanentError(`the config is not valid:\n${err.issues.map((i) => `  ${formatIssue(i)}`).join('\n')}`, { remedy: 'Fix lifeboat.yaml; `lifeboat config check` shows each problem.' });
    }
    throw new PermanentError(describeError(err));
  }
  if (loaded.config.mode === 'local' && !merged.FIRESTORE_EMULATOR_HOST) {
    throw new PermanentError('local mode, but no running local system was found (.lifeboat/local.json) and FIRESTORE_EMULATOR_HOST is not set', {
      remedy: 'Start it with `npm start` (lifeboat local) in this directory, or run the command where it runs.',
    });
  }
  return { config: loaded.config, baseDir: loaded.baseDir, env: merged, ...(local && { local }), who: `${env.USER ?? userInfo().username}@${hostname()}` };
}
