import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  checkConfig,
  checkModeRequirements,
  checkTimingRules,
  configFields,
  configObjectShape,
  configSchema,
  DEFAULT_CONFIG,
  defaultSlotName,
  envVarName,
  formatBytes,
  parseByteSize,
  parseConfig,
  parsePgSize,
  TIMING_RULES,
  type LifeboatConfig,
  type LifeboatConfigInput,
} from '../../core/config.ts';
import { ValidationError } from '../../core/errors.ts';
import { DOC_PATH, renderConfigDocs } from '../../scripts/gen-config-docs.ts';

const MiB = 1024 * 1024;

function withDefaults(input: LifeboatConfigInput): LifeboatConfig {
  return parseConfig(input);
}

describe('DEFAULT_CONFIG', () => {
  it('has the designed defaults', () => {
    const d = DEFAULT_CONFIG;
    expect(d.mode).toBe('local');
    expect(d.project).toBe('lifeboat-local');
    expect(d.region).toBe('europe-west1');
    expect(d.stream).toBe('main');
    expect(d.logLevel).toBe('info');
    expect(d.source).toEqual({
      publication: 'lifeboat',
      slot: 'lifeboat_main',
      tables: [],
      excludeTables: [],
      maxSlotWalKeepSize: '4GB',
      walRetentionWarnBytes: 1024 * MiB,
    });
    expect(d.target).toMatchObject({ database: 'app', applyRole: 'lifeboat_apply', appRole: 'app', poolMax: 4, tier: 'db-f1-micro' });
    expect(d.target.instanceConnectionName).toBeUndefined();
    expect(d.pubsub).toEqual({
      changesTopic: 'lifeboat-changes',
      deadLetterTopic: 'lifeboat-dead-letters',
      eventsTopic: 'lifeboat-events',
      applySubscription: 'lifeboat-apply',
      maxDeliveryAttempts: 100,
      minRetryBackoffSeconds: 10,
      maxRetryBackoffSeconds: 600,
    });
    expect(d.batching).toEqual({
      maxDelayMs: 200,
      maxRows: 5000,
      maxBytes: 4 * MiB,
      compressAboveBytes: 1024,
      claimCheckAboveBytes: 4 * MiB,
      maxInflightBatches: 16,
      maxBufferedBytes: 64 * MiB,
    });
    expect(d.storage).toEqual({ localDir: '.lifeboat/objects', claimCheckPrefix: 'claim-check/', reportsPrefix: 'reports/' });
    expect(d.lease).toEqual({ document: 'lifeboat/lease-main', ttlSeconds: 30, renewIntervalSeconds: 5, clockSkewMarginSeconds: 5 });
    expect(d.agent).toEqual({ httpHost: '127.0.0.1', httpPort: 8765, heartbeatIntervalSeconds: 5, snapshotChunkRows: 10_000, shutdownTimeoutSeconds: 30 });
    expect(d.probe).toEqual({
      scheduleIntervalSeconds: 60,
      recheckIntervalSeconds: 5,
      failureThreshold: 3,
      timeoutMs: 2000,
      continuous: false,
      heartbeatStaleSeconds: 30,
      localIntervalSeconds: 5,
    });
    expect(d.failover).toEqual({ auto: true, failback: 'manual', hookTimeoutMs: 5000, sequenceSafetyGap: 1000, drainTimeoutSeconds: 60 });
    expect(d.dns).toEqual({ ttlSeconds: 30, routerPort: 8080 });
    expect(d.run).toEqual({ service: 'lifeboat-app', region: 'europe-west1', port: 8080 });
    expect(d.functions).toEqual({
      runtime: 'nodejs22',
      applyMemoryMb: 512,
      probeMemoryMb: 256,
      applyConcurrency: 1,
      applyTimeoutSeconds: 60,
      probeTimeoutSeconds: 90,
    });
  });

  it('passes every rule (local mode works with an empty file)', () => {
    expect(checkTimingRules(DEFAULT_CONFIG)).toEqual([]);
    expect(checkConfig(DEFAULT_CONFIG)).toEqual([]);
  });

  it('is deep-frozen', () => {
    expect(Object.isFrozen(DEFAULT_CONFIG)).toBe(true);
    expect(Object.isFrozen(DEFAULT_CONFIG.lease)).toBe(true);
    expect(() => {
      (DEFAULT_CONFIG.lease as { ttlSeconds: number }).ttlSeconds = 1;
    }).toThrow();
  });

  it('derives slot, lease document and Cloud Run region from other fields', () => {
    const c = withDefaults({ stream: 'orders-eu', region: 'us-central1' });
    expect(c.source.slot).toBe('lifeboat_orders_eu');
    expect(c.lease.document).toBe('lifeboat/lease-orders-eu');
    expect(c.run.region).toBe('us-central1');
    const explicit = withDefaults({ stream: 'x', source: { slot: 'my_slot' }, lease: { document: 'a/b' }, run: { region: 'asia-east1' } });
    expect([explicit.source.slot, explicit.lease.document, explicit.run.region]).toEqual(['my_slot', 'a/b', 'asia-east1']);
    expect(defaultSlotName('a'.repeat(63))).toHaveLength(63);
  });
});

describe('schema', () => {
  it('describes every field and section', () => {
    for (const f of configFields()) expect(f.description, f.path).not.toBe('');
    for (const [k, s] of Object.entries(configObjectShape)) expect((s as { description?: string }).description, k).toBeTruthy();
  });

  it('gives every field a unique environment variable', () => {
    const names = configFields().map((f) => envVarName(f.path));
    expect(new Set(names).size).toBe(names.length);
    expect(envVarName('lease.ttlSeconds')).toBe('LIFEBOAT_LEASE_TTL_SECONDS');
    expect(envVarName('source.databaseUrl')).toBe('LIFEBOAT_SOURCE_DATABASE_URL');
    expect(envVarName('logLevel')).toBe('LIFEBOAT_LOG_LEVEL');
    expect(envVarName('target.instanceConnectionName')).toBe('LIFEBOAT_TARGET_INSTANCE_CONNECTION_NAME');
  });

  it('is strict: unknown keys are rejected', () => {
    expect(configSchema.safeParse({ lease: { ttl: 3 } }).success).toBe(false);
    expect(configSchema.safeParse({ extra: 1 }).success).toBe(false);
  });

  it('enforces platform limits per field', () => {
    const bad: LifeboatConfigInput[] = [
      { pubsub: { maxDeliveryAttempts: 4 } },
      { pubsub: { maxDeliveryAttempts: 101 } },
      { pubsub: { maxRetryBackoffSeconds: 601 } },
      { probe: { scheduleIntervalSeconds: 30 } },
      { probe: { scheduleIntervalSeconds: 90 } },
      { stream: 'Main' },
      { stream: '-x' },
      { source: { tables: ['orders'] } },
      { source: { maxSlotWalKeepSize: '4gb' } },
      { source: { databaseUrl: 'mysql://x@y/z' } },
      { dns: { recordName: 'app.example.com' } },
      { functions: { applyMemoryMb: 500 } },
      { functions: { applyTimeoutSeconds: 541 } },
      { batching: { maxBytes: '4 parsecs' } },
      { storage: { reportsPrefix: '/abs/' } },
      { pubsub: { changesTopic: 'goog-changes' } },
      { project: 'Has_Upper' },
      { agent: { httpPort: 70000 } },
    ];
    for (const input of bad) expect(configSchema.safeParse(input).success, JSON.stringify(input)).toBe(false);
    const good: LifeboatConfigInput[] = [
      { pubsub: { maxDeliveryAttempts: 5 } },
      { probe: { scheduleIntervalSeconds: 120 } },
      { source: { tables: ['public.orders', 'billing.invoices'], databaseUrl: 'postgresql://u:p@h:5432/db' } },
      { dns: { recordName: 'app.example.com.' } },
      { batching: { maxBytes: '9.5MB' } },
      { target: { instanceConnectionName: 'my-proj:europe-west1:standby' } },
      { lease: { ttlSeconds: 1.5, renewIntervalSeconds: 0.25, clockSkewMarginSeconds: 0.5 } },
    ];
    for (const input of good) expect(configSchema.safeParse(input).success, JSON.stringify(input)).toBe(true);
  });

  it('parseConfig throws a ValidationError naming the field', () => {
    expect(() => parseConfig({ lease: { ttlSeconds: 'soon' } })).toThrow(ValidationError);
    expect(() => parseConfig({ lease: { ttlSeconds: 'soon' } })).toThrow(/lease\.ttlSeconds/);
  });
});

describe('byte sizes', () => {
  it('parses numbers and unit strings', () => {
    expect(parseByteSize(512)).toBe(512);
    expect(parseByteSize('512')).toBe(512);
    expect(parseByteSize('4MiB')).toBe(4 * MiB);
    expect(parseByteSize('4 mib')).toBe(4 * MiB);
    expect(parseByteSize('9.5MB')).toBe(9_500_000);
    expect(parseByteSize('1KiB')).toBe(1024);
    expect(parseByteSize('1kb')).toBe(1000);
    expect(parseByteSize('1GiB')).toBe(1024 * MiB);
    expect(parseByteSize('-1')).toBeUndefined();
    expect(parseByteSize('4 parsecs')).toBeUndefined();
    expect(parseByteSize(1.5)).toBeUndefined();
    expect(parsePgSize('4GB')).toBe(4 * 1024 * MiB);
    expect(parsePgSize('512MB')).toBe(512 * MiB);
    expect(parsePgSize('4gb')).toBeUndefined();
  });

  it('formatBytes output parses back to the same count', () => {
    fc.assert(
      fc.property(fc.nat({ max: 1024 }), fc.constantFrom(1, 1024, MiB, 1024 * MiB), (n, unit) => {
        const bytes = n * unit;
        const text = formatBytes(bytes);
        expect(parseByteSize(text.split(' (')[0] ?? '')).toBe(bytes);
      }),
    );
  });
});

describe('checkTimingRules', () => {
  const ids = (c: LifeboatConfig) => checkTimingRules(c).map((p) => p.rule);

  it('explains the lease rule with the values and the fix', () => {
    const [p] = checkTimingRules(withDefaults({ lease: { ttlSeconds: 20, renewIntervalSeconds: 10, clockSkewMarginSeconds: 0 } })).filter(
      (x) => x.rule === 'lease.renew-vs-ttl',
    );
    expect(p).toMatchObject({ severity: 'error', path: 'lease.ttlSeconds' });
    expect(p?.message).toBe('must be at least 3 × lease.renewIntervalSeconds (10 s), got 20 s');
    expect(p?.remedy).toMatch(/^raise lease\.ttlSeconds to 30 or lower lease\.renewIntervalSeconds/);
  });

  it('self-fence: ttl − margin must exceed two renew intervals', () => {
    expect(ids(withDefaults({ lease: { ttlSeconds: 30, renewIntervalSeconds: 10, clockSkewMarginSeconds: 10 } }))).toContain('lease.self-fence');
    expect(ids(withDefaults({ lease: { ttlSeconds: 30, renewIntervalSeconds: 10, clockSkewMarginSeconds: 9 } }))).not.toContain('lease.self-fence');
  });

  it('produces every documented rule for some config, and nothing undocumented', () => {
    const violating: LifeboatConfigInput[] = [
      { lease: { ttlSeconds: 20, renewIntervalSeconds: 10 } },
      { lease: { ttlSeconds: 30, renewIntervalSeconds: 5, clockSkewMarginSeconds: 25 } },
      { probe: { failureThreshold: 10 }, functions: { probeTimeoutSeconds: 600 } },
      { probe: { timeoutMs: 6000 } },
      { functions: { probeTimeoutSeconds: 20 } },
      { probe: { continuous: true }, functions: { probeTimeoutSeconds: 60 } },
      { agent: { heartbeatIntervalSeconds: 15 } },
      { agent: { heartbeatIntervalSeconds: 40 }, probe: { heartbeatStaleSeconds: 100 } },
      { batching: { maxDelayMs: 5000 } },
      { batching: { claimCheckAboveBytes: '12MB' } },
      { batching: { maxBufferedBytes: '1MiB' } },
      { source: { walRetentionWarnBytes: '8GiB' } },
      { pubsub: { minRetryBackoffSeconds: 60, maxRetryBackoffSeconds: 30 } },
      { dns: { ttlSeconds: 3600 } },
      { lease: { clockSkewMarginSeconds: 0 } },
    ];
    const seen = new Set<string>();
    for (const v of violating) {
      const problems = checkTimingRules(withDefaults(v));
      expect(problems.length, JSON.stringify(v)).toBeGreaterThan(0);
      for (const p of problems) {
        seen.add(p.rule);
        expect(p.message.length).toBeGreaterThan(10);
        expect(p.remedy.length).toBeGreaterThan(10);
        expect(configFields().some((f) => f.path === p.path), p.path).toBe(true);
      }
    }
    expect([...seen].sort()).toEqual(TIMING_RULES.map((r) => r.id).sort());
    const severities = new Map(TIMING_RULES.map((r) => [r.id, r.severity]));
    for (const v of violating) for (const p of checkTimingRules(withDefaults(v))) expect(p.severity).toBe(severities.get(p.rule));
  });

  it('dns TTL above 300 s is only a warning', () => {
    const problems = checkTimingRules(withDefaults({ dns: { ttlSeconds: 600 } }));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ severity: 'warning', path: 'dns.ttlSeconds' });
  });

  it('property: a config with no lease errors never has renew ≥ ttl, and fences after a failed renewal', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 0.1, max: 600, noNaN: true }),
        fc.double({ min: 0.1, max: 300, noNaN: true }),
        fc.double({ min: 0, max: 300, noNaN: true }),
        (ttl, renew, margin) => {
          const c = withDefaults({ lease: { ttlSeconds: ttl, renewIntervalSeconds: renew, clockSkewMarginSeconds: margin } });
          const leaseErrors = checkTimingRules(c).filter((p) => p.severity === 'error' && p.rule.startsWith('lease.'));
          if (leaseErrors.length === 0) {
            expect(renew).toBeLessThan(ttl);
            expect(renew * 3).toBeLessThanOrEqual(ttl);
            expect(ttl - margin).toBeGreaterThan(2 * renew);
          }
        },
      ),
    );
  });

  it('property: a probe config with no errors confirms an outage within one scheduler run', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.double({ min: 0.1, max: 60, noNaN: true }),
        fc.integer({ min: 100, max: 60_000 }),
        fc.constantFrom(60, 120, 300),
        (threshold, recheck, timeoutMs, schedule) => {
          const c = withDefaults({
            probe: { failureThreshold: threshold, recheckIntervalSeconds: recheck, timeoutMs, scheduleIntervalSeconds: schedule },
            functions: { probeTimeoutSeconds: 3600 },
          });
          if (checkTimingRules(c).filter((p) => p.severity === 'error').length === 0) {
            expect(threshold * (recheck + timeoutMs / 1000)).toBeLessThan(schedule);
            expect(timeoutMs / 1000).toBeLessThan(recheck);
          }
        },
      ),
    );
  });
});

describe('checkModeRequirements', () => {
  it('cloud mode names every missing field and what it is for', () => {
    const problems = checkModeRequirements(withDefaults({ mode: 'cloud' }));
    const errors = problems.filter((p) => p.severity === 'error').map((p) => p.path);
    expect(errors).toEqual([
      'project',
      'target.instanceConnectionName',
      'storage.bucket',
      'probe.healthUrl',
      'dns.managedZone',
      'dns.recordName',
      'dns.localTarget',
      'run.image',
    ]);
    for (const p of problems) expect(p.message).toMatch(/cloud mode|agent/);
    expect(problems.find((p) => p.path === 'run.image')?.remedy).toContain('LIFEBOAT_RUN_IMAGE');
  });

  it('a complete cloud config has no errors', () => {
    const c = withDefaults({
      mode: 'cloud',
      project: 'acme-prod',
      source: { databaseUrl: 'postgres://app@db:5432/app' },
      target: { instanceConnectionName: 'acme-prod:europe-west1:standby' },
      storage: { bucket: 'acme-lifeboat' },
      probe: { healthUrl: 'https://app.acme.test/healthz' },
      dns: { managedZone: 'acme', recordName: 'app.acme.test.', localTarget: '203.0.113.5' },
      run: { image: 'europe-docker.pkg.dev/acme/app:1' },
    });
    expect(checkConfig(c)).toEqual([]);
  });

  it('local mode rejects the router and the agent on one port', () => {
    const p = checkModeRequirements(withDefaults({ agent: { httpPort: 8080 } }));
    expect(p.map((x) => x.rule)).toEqual(['local.port-clash']);
    expect(checkModeRequirements(withDefaults({ agent: { httpPort: 0 }, dns: { routerPort: 0 } }))).toEqual([]);
  });
});

describe('docs/configuration.md', () => {
  it('is up to date with the schema (regenerate: npx tsx scripts/gen-config-docs.ts)', () => {
    expect(readFileSync(DOC_PATH, 'utf8')).toBe(renderConfigDocs());
  });

  it('documents every field', () => {
    const doc = renderConfigDocs();
    for (const f of configFields()) {
      expect(doc).toContain(`\`${f.path}\``);
      expect(doc).toContain(envVarName(f.path));
    }
  });
});
