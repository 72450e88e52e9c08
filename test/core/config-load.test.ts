import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG, envVarName } from '../../core/config.ts';
import {
  checkConfigSource,
  closest,
  ConfigError,
  describeConfigFields,
  formatIssue,
  levenshtein,
  loadConfig,
  readEnvOverrides,
  type ConfigIssue,
} from '../../core/config-load.ts';
import { ValidationError } from '../../core/errors.ts';
import { clearRegisteredSecrets, createLogger } from '../../core/log.ts';

const FILE = 'lifeboat.yaml';
const load = (yamlText: string, env: Record<string, string | undefined> = {}) => loadConfig({ file: FILE, yamlText, env });
const check = (yamlText: string, env: Record<string, string | undefined> = {}) => checkConfigSource({ file: FILE, yamlText, env });

function only(issues: readonly ConfigIssue[], path: string): ConfigIssue {
  const found = issues.filter((i) => i.path === path);
  expect(found, `${path} in ${JSON.stringify(issues)}`).toHaveLength(1);
  return found[0] as ConfigIssue;
}

function getPath(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
}

describe('loadConfig: file', () => {
  it('an empty file gives the defaults, with sources', () => {
    for (const text of ['', '# only a comment\n', '---\n']) {
      const r = load(text);
      expect(r.config).toEqual(DEFAULT_CONFIG);
      expect(r.warnings).toEqual([]);
      expect(r.sources['lease.ttlSeconds']).toEqual({ kind: 'default' });
      expect(r.sources['source.slot']).toEqual({ kind: 'derived', from: 'lifeboat_<stream>' });
    }
  });

  it('reads values and records their line:column', () => {
    const r = load('stream: orders\nlease:\n  ttlSeconds: 60\nbatching:\n  maxBytes: 2MiB\n');
    expect(r.config.stream).toBe('orders');
    expect(r.config.source.slot).toBe('lifeboat_orders');
    expect(r.config.lease.ttlSeconds).toBe(60);
    expect(r.config.batching.maxBytes).toBe(2 * 1024 * 1024);
    expect(r.sources['lease.ttlSeconds']).toEqual({ kind: 'file', file: FILE, line: 3, column: 3 });
  });

  it('treats a section header with everything commented out as empty', () => {
    expect(load('lease:\n  # ttlSeconds: 30\nprobe:\n').config.lease).toEqual(DEFAULT_CONFIG.lease);
  });

  it('a timing problem is reported at the YAML line of the field, with the fix', () => {
    const yaml = ['mode: local', 'lease:', '  renewIntervalSeconds: 10', '  clockSkewMarginSeconds: 1', '  ttlSeconds: 20', ''].join('\n');
    const r = check(yaml);
    expect(r.ok).toBe(false);
    const issue = only(r.errors, 'lease.ttlSeconds');
    expect([issue.line, issue.column]).toEqual([5, 3]);
    expect(formatIssue(issue)).toMatch(
      /^lifeboat\.yaml:5:3 lease\.ttlSeconds: must be at least 3 × lease\.renewIntervalSeconds \(10 s\), got 20 s; raise lease\.ttlSeconds to 30 or lower lease\.renewIntervalSeconds/,
    );
  });

  it('reports unknown keys with a did-you-mean from the sibling keys', () => {
    const r = check('lease:\n  ttl: 30\n  renewIntervalSecond: 5\nprobe:\n  failurethreshold: 3\nleases: {}\nttlSeconds: 5\n');
    expect(only(r.errors, 'lease.ttl').message).toBe('unknown field; did you mean lease.ttlSeconds?');
    expect(only(r.errors, 'lease.ttl')).toMatchObject({ line: 2, column: 3, file: FILE });
    expect(only(r.errors, 'lease.renewIntervalSecond').message).toContain('lease.renewIntervalSeconds');
    expect(only(r.errors, 'probe.failurethreshold').message).toContain('probe.failureThreshold');
    expect(only(r.errors, 'leases').message).toContain('did you mean lease?');
    expect(only(r.errors, 'ttlSeconds').message).toContain('lease.ttlSeconds or dns.ttlSeconds');
  });

  it('explains type and value errors with the value and a hint', () => {
    const r = check(
      'probe:\n  failureThreshold: "3"\n  timeoutMs: 1.5\nfailover:\n  failback: automatic\npubsub:\n  maxDeliveryAttempts: 3\nlease: 5\n',
    );
    expect(only(r.errors, 'probe.failureThreshold').message).toBe('must be a whole number, got "3" (remove the quotes)');
    expect(only(r.errors, 'probe.timeoutMs').message).toMatch(/whole number/);
    expect(only(r.errors, 'failover.failback').message).toBe(`must be one of manual, auto, got "automatic"; did you mean 'auto'?`);
    const attempts = only(r.errors, 'pubsub.maxDeliveryAttempts');
    expect(attempts.message).toBe('must be at least 5, got 3 (Pub/Sub accepts 5 to 100)');
    expect([attempts.line, attempts.column]).toEqual([7, 3]);
    expect(only(r.errors, 'lease').message).toMatch(/mapping/);
  });

  it('reports list items by index', () => {
    const r = check('source:\n  tables:\n    - public.a\n    - orders\n');
    const issue = only(r.errors, 'source.tables[1]');
    expect(issue.message).toMatch(/schema-qualified/);
    expect(issue.line).toBe(4);
  });

  it('never echoes a secret field value in an error', () => {
    const r = check('source:\n  databaseUrl: "mysql://root:hunter22@db/app"\n');
    const issue = only(r.errors, 'source.databaseUrl');
    expect(issue.message).not.toContain('hunter22');
    expect(issue.message).toMatch(/postgres:\/\//);
  });

  it('reports YAML syntax errors with line and column', () => {
    const r = check('lease:\n  ttlSeconds: 30\n  ttlSeconds: 40\n');
    expect(r.ok).toBe(false);
    expect(r.errors[0]).toMatchObject({ rule: 'yaml', line: 3, column: 3 });
    expect(r.errors[0]?.message).toMatch(/unique/);
    const bad = check('lease: [\n');
    expect(bad.errors[0]?.rule).toBe('yaml');
    expect(bad.errors[0]?.line).toBeGreaterThan(0);
  });

  it('rejects a document that is not a mapping', () => {
    const r = check('- a\n- b\n');
    expect(r.errors[0]?.message).toMatch(/must be a mapping of sections/);
  });

  it('throws a ConfigError (a ValidationError) listing every problem', () => {
    let caught: unknown;
    try {
      load('lease:\n  ttlSeconds: 20\n  renewIntervalSeconds: 10\nbogus: 1\n');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect(caught).toBeInstanceOf(ValidationError);
    const err = caught as ConfigError;
    expect(err.issues.map((i) => i.path)).toEqual(['bogus']);
    expect(err.message).toContain('lifeboat.yaml:4:1 bogus: unknown field');
  });

  it('names the missing file and `lifeboat init`; allowMissingFile gives the defaults', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-cfg-'));
    try {
      const file = join(dir, 'lifeboat.yaml');
      const r = checkConfigSource({ file, env: {} });
      expect(r.missingFile).toBe(true);
      expect(formatIssue(r.errors[0] as ConfigIssue)).toMatch(/not found; run `lifeboat init`/);
      expect(() => loadConfig({ file, env: {} })).toThrow(/lifeboat init/);
      expect(loadConfig({ file, env: {}, allowMissingFile: true }).config).toEqual(DEFAULT_CONFIG);
      writeFileSync(file, 'stream: disk\n');
      const loaded = loadConfig({ file, env: {} });
      expect(loaded.config.stream).toBe('disk');
      expect(loaded.baseDir).toBe(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('loadConfig: environment', () => {
  it('maps LIFEBOAT_<SECTION>_<FIELD> and coerces by the field type', () => {
    const r = load('lease:\n  ttlSeconds: 30\n', {
      LIFEBOAT_LEASE_TTL_SECONDS: '45',
      LIFEBOAT_SOURCE_DATABASE_URL: 'postgres://app@localhost:5432/app',
      LIFEBOAT_PROBE_CONTINUOUS: 'true',
      LIFEBOAT_FAILOVER_AUTO: '0',
      LIFEBOAT_SOURCE_TABLES: 'public.a, public.b,',
      LIFEBOAT_BATCHING_MAX_BYTES: '8MiB',
      LIFEBOAT_BATCHING_MAX_ROWS: '100',
      LIFEBOAT_MODE: 'local',
      LIFEBOAT_LOG_LEVEL: 'debug',
    });
    expect(r.config.lease.ttlSeconds).toBe(45);
    expect(r.config.source.databaseUrl).toBe('postgres://app@localhost:5432/app');
    expect(r.config.probe.continuous).toBe(true);
    expect(r.config.failover.auto).toBe(false);
    expect(r.config.source.tables).toEqual(['public.a', 'public.b']);
    expect(r.config.batching.maxBytes).toBe(8 * 1024 * 1024);
    expect(r.config.batching.maxRows).toBe(100);
    expect(r.config.logLevel).toBe('debug');
    expect(r.sources['lease.ttlSeconds']).toEqual({ kind: 'env', name: 'LIFEBOAT_LEASE_TTL_SECONDS' });
    expect(r.warnings).toEqual([]);
  });

  it('an invalid env value is an error located at the variable', () => {
    const r = check('', { LIFEBOAT_LEASE_TTL_SECONDS: 'soon', LIFEBOAT_PROBE_CONTINUOUS: 'yes please' });
    const ttl = only(r.errors, 'lease.ttlSeconds');
    expect(ttl.env).toBe('LIFEBOAT_LEASE_TTL_SECONDS');
    expect(formatIssue(ttl)).toBe('$LIFEBOAT_LEASE_TTL_SECONDS lease.ttlSeconds: must be a number, got "soon"; fix or unset LIFEBOAT_LEASE_TTL_SECONDS');
    expect(only(r.errors, 'probe.continuous').message).toMatch(/true or false/);
  });

  it('a timing problem caused by the environment points at the variable', () => {
    const r = check('', { LIFEBOAT_LEASE_TTL_SECONDS: '10' });
    expect(only(r.errors, 'lease.ttlSeconds').env).toBe('LIFEBOAT_LEASE_TTL_SECONDS');
  });

  it('an unknown LIFEBOAT_* variable is a warning naming it, with a suggestion', () => {
    const r = load('', { LIFEBOAT_LEASE_TTL: '30', LIFEBOAT_WHATEVER: 'x', PATH: '/bin' });
    expect(r.warnings.map((w) => w.env)).toEqual(['LIFEBOAT_LEASE_TTL', 'LIFEBOAT_WHATEVER']);
    expect(formatIssue(r.warnings[0] as ConfigIssue)).toMatch(/^\$LIFEBOAT_LEASE_TTL is not a config field.*did you mean LIFEBOAT_LEASE_TTL_SECONDS\?/);
  });

  it('does not warn about variables read elsewhere', () => {
    const r = loadConfig({
      yamlText: '',
      allowEnv: ['LIFEBOAT_CUSTOM'],
      env: {
      LIFEBOAT_PG_BIN: '/usr/lib/postgresql/15/bin',
      LIFEBOAT_GCLOUD_SDK: '/usr/lib/google-cloud-sdk',
      LIFEBOAT_CONFIG: 'x.yaml',
      LIFEBOAT_TEST_SEED: '1',
      LIFEBOAT_CUSTOM: 'y',
      },
    });
    expect(r.warnings).toEqual([]);
    // LIFEBOAT_CUSTOM is allowed through allowEnv only:
    expect(checkConfigSource({ yamlText: '', env: { LIFEBOAT_CUSTOM: 'y' } }).warnings).toHaveLength(1);
  });

  it('ignores an empty variable with a warning', () => {
    const r = load('', { LIFEBOAT_DNS_CLOUD_TARGET: '' });
    expect(r.config.dns.cloudTarget).toBeUndefined();
    expect(r.warnings[0]).toMatchObject({ env: 'LIFEBOAT_DNS_CLOUD_TARGET', path: 'dns.cloudTarget' });
  });

  it('every field round-trips through its environment variable', () => {
    const env: Record<string, string> = {};
    for (const row of describeConfigFields()) {
      const v = getPath(DEFAULT_CONFIG, row.path);
      if (v === undefined) continue;
      env[row.env] = Array.isArray(v) ? v.join(',') : String(v);
    }
    const r = load('', env);
    expect(r.config).toEqual(DEFAULT_CONFIG);
    expect(r.warnings).toEqual([]);
    expect(Object.values(r.sources).every((s) => s.kind === 'env' || s.kind === 'derived' || s.kind === 'default')).toBe(true);
  });

  it('property: any integer ttl that satisfies the rules is taken from the environment', () => {
    fc.assert(
      fc.property(fc.integer({ min: 16, max: 100_000 }), (ttl) => {
        expect(load('', { [envVarName('lease.ttlSeconds')]: String(ttl) }).config.lease.ttlSeconds).toBe(ttl);
      }),
      { numRuns: 50 },
    );
  });

  it('readEnvOverrides only considers LIFEBOAT_* names', () => {
    const o = readEnvOverrides({ HOME: '/root', LIFEBOAT_STREAM: 'x' });
    expect([...o.values.keys()]).toEqual(['stream']);
  });
});

describe('loadConfig: cloud mode and secrets', () => {
  afterAll(() => clearRegisteredSecrets());

  it('names each missing cloud field at the mode line', () => {
    const r = check('mode: cloud\nproject: acme-prod\n');
    const paths = r.errors.map((e) => e.path);
    expect(paths).toEqual([
      'target.instanceConnectionName',
      'storage.bucket',
      'probe.healthUrl',
      'dns.managedZone',
      'dns.recordName',
      'dns.localTarget',
      'run.image',
    ]);
    expect(formatIssue(r.errors[0] as ConfigIssue)).toBe(
      'lifeboat.yaml:1:1 target.instanceConnectionName: is required in cloud mode: the Cloud SQL instance that the apply function writes to; set target.instanceConnectionName in lifeboat.yaml (or LIFEBOAT_TARGET_INSTANCE_CONNECTION_NAME)',
    );
  });

  it('registers passwords it sees, so logs mask them', () => {
    const lines: string[] = [];
    const log = createLogger({ component: 't', sink: (l) => lines.push(l), env: {} });
    load('', { LIFEBOAT_SOURCE_DATABASE_URL: 'postgres://app:s3cr3t-pw@db:5432/app', PGPASSWORD: 'pg-pass-123' });
    log.info('connecting with s3cr3t-pw and pg-pass-123');
    expect(lines.join('\n')).not.toContain('s3cr3t-pw');
    expect(lines.join('\n')).not.toContain('pg-pass-123');
  });

  it('warns when a password is stored in the file', () => {
    const r = load('source:\n  databaseUrl: postgres://app:filepw12@db/app\n');
    const w = only(r.warnings, 'source.databaseUrl');
    expect(w.rule).toBe('secret-in-file');
    expect(w.remedy).toContain('LIFEBOAT_SOURCE_DATABASE_URL');
    expect(JSON.stringify(r.warnings)).not.toContain('filepw12');
  });
});

describe('describeConfigFields', () => {
  it('has one row per field with its default, env and description', () => {
    const rows = describeConfigFields();
    expect(rows.length).toBeGreaterThan(60);
    for (const r of rows) {
      expect(r.description, r.path).not.toBe('');
      expect(r.env).toBe(envVarName(r.path));
      if (r.default !== null) expect(getPath(DEFAULT_CONFIG, r.path), r.path).toEqual(r.default);
    }
    const byPath = new Map(rows.map((r) => [r.path, r]));
    expect(byPath.get('lease.ttlSeconds')).toMatchObject({ type: 'number', default: 30, env: 'LIFEBOAT_LEASE_TTL_SECONDS' });
    expect(byPath.get('batching.maxBytes')).toMatchObject({ type: 'bytes', defaultText: '4 MiB' });
    expect(byPath.get('mode')).toMatchObject({ type: 'local | cloud', default: 'local' });
    expect(byPath.get('source.databaseUrl')).toMatchObject({ secret: true, default: null });
    expect(byPath.get('run.image')?.requiredInCloud).toBeTruthy();
    expect(byPath.get('source.slot')?.defaultText).toBe('lifeboat_<stream>');
  });
});

describe('suggestions', () => {
  it('levenshtein', () => {
    expect(levenshtein('kitten', 'sitting')).toBe(3);
    expect(levenshtein('', 'abc')).toBe(3);
    expect(levenshtein('same', 'same')).toBe(0);
  });

  it('closest prefers case/underscore-insensitive matches, then small edits, then prefixes', () => {
    expect(closest('ttl_seconds', ['ttlSeconds', 'renewIntervalSeconds'])).toBe('ttlSeconds');
    expect(closest('ttlSecnds', ['ttlSeconds', 'renewIntervalSeconds'])).toBe('ttlSeconds');
    expect(closest('ttl', ['ttlSeconds', 'renewIntervalSeconds'])).toBe('ttlSeconds');
    expect(closest('zzzzzz', ['ttlSeconds'])).toBeUndefined();
  });

  it('property: levenshtein is a metric (symmetric, zero iff equal, triangle)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 12 }), fc.string({ maxLength: 12 }), fc.string({ maxLength: 12 }), (a, b, c) => {
        expect(levenshtein(a, b)).toBe(levenshtein(b, a));
        expect(levenshtein(a, b) === 0).toBe(a === b);
        expect(levenshtein(a, c)).toBeLessThanOrEqual(levenshtein(a, b) + levenshtein(b, c));
      }),
    );
  });
});
