// The configuration the Cloud Functions run with: every setting of the one
// schema, as the LIFEBOAT_* environment variables that core/config-load.ts
// reads (lease.ttlSeconds → LIFEBOAT_LEASE_TTL_SECONDS). Pure.
//
// Left out: secrets (passwords go through Secret Manager, never plain env) and
// settings that only mean something on the machine of local mode or of the
// agent.

import { configFields, envVarName, type LifeboatConfig } from '../core/config.ts';

/** Fields that only the agent's machine or local mode use. */
export const LOCAL_ONLY_FIELDS: ReadonlySet<string> = new Set([
  'storage.localDir',
  'dns.routerPort',
  'agent.httpHost',
  'agent.httpPort',
  'pubsub.emulatorHost',
  'probe.localIntervalSeconds',
]);

function getPath(obj: unknown, path: string): unknown {
  let cur: unknown = obj;
  for (const k of path.split('.')) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

function envText(value: unknown): string {
  if (Array.isArray(value)) return value.map(String).join(',');
  return String(value);
}

/**
 * LIFEBOAT_* variables for the functions, in schema order. Unset optional
 * fields are left out; secret fields never appear (see secretFieldPaths).
 */
export function functionEnvironment(cfg: LifeboatConfig): Record<string, string> {
  const env: Record<string, string> = {};
  for (const f of configFields()) {
    if (f.meta.secret || LOCAL_ONLY_FIELDS.has(f.path)) continue;
    const v = getPath(cfg, f.path);
    if (v === undefined) continue;
    env[envVarName(f.path)] = envText(v);
  }
  env[envVarName('mode')] = 'cloud';
  return env;
}

/** Secret fields that are set in the config (their values must not reach the stack). */
export function secretFieldPaths(cfg: LifeboatConfig): string[] {
  return configFields()
    .filter((f) => f.meta.secret && getPath(cfg, f.path) !== undefined)
    .map((f) => f.path);
}
