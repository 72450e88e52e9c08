import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config-load.ts';
import { clearRegisteredSecrets } from '../../core/log.ts';
import { LOCAL_ONLY_FIELDS, functionEnvironment, secretFieldPaths } from '../../infra/function-env.ts';
import { fixtureConfig } from './fixtures/synth.ts';

describe('functionEnvironment', () => {
  it('is read back by the config loader into the same config (local-only and secret fields aside)', () => {
    const cfg = fixtureConfig({
      LIFEBOAT_SOURCE_TABLES: 'public.orders,public.items',
      LIFEBOAT_PROBE_CONTINUOUS: 'true',
      LIFEBOAT_FUNCTIONS_PROBE_TIMEOUT_SECONDS: '120',
      LIFEBOAT_BATCHING_MAX_BYTES: '2MiB',
    });
    const env = functionEnvironment(cfg);
    const back = loadConfig({ file: '/nonexistent/lifeboat.yaml', allowMissingFile: true, env }).config;
    const strip = (c: typeof cfg) => {
      const copy = structuredClone(c) as unknown as Record<string, Record<string, unknown>>;
      for (const path of LOCAL_ONLY_FIELDS) {
        const [section, key] = path.split('.') as [string, string];
        delete copy[section]?.[key];
      }
      return copy;
    };
    expect(strip(back)).toEqual(strip(cfg));
    expect(env.LIFEBOAT_SOURCE_TABLES).toBe('public.orders,public.items');
    expect(env.LIFEBOAT_BATCHING_MAX_BYTES).toBe(String(2 * 1024 * 1024));
  });

  it('never carries a secret field or a local-only one', () => {
    const cfg = fixtureConfig({
      LIFEBOAT_SOURCE_DATABASE_URL: 'postgres://app:s3cretpass@db.home/app',
      LIFEBOAT_FAILOVER_HOOK_URL: 'https://hooks.example.com/x?token=abcdef',
    });
    const env = functionEnvironment(cfg);
    expect(JSON.stringify(env)).not.toContain('s3cretpass');
    expect(JSON.stringify(env)).not.toContain('abcdef');
    expect(env).not.toHaveProperty('LIFEBOAT_SOURCE_DATABASE_URL');
    expect(env).not.toHaveProperty('LIFEBOAT_STORAGE_LOCAL_DIR');
    expect(env).not.toHaveProperty('LIFEBOAT_DNS_ROUTER_PORT');
    expect(env.LIFEBOAT_MODE).toBe('cloud');
    expect(secretFieldPaths(cfg).sort()).toEqual(['failover.hookUrl', 'source.databaseUrl']);
    clearRegisteredSecrets();
  });
});
