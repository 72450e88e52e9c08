import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../cli/command.ts';
import { configCheckCommand, configDefaultsCommand } from '../../cli/commands/config.ts';
import { describeConfigFields } from '../../core/config-load.ts';
import { clearRegisteredSecrets } from '../../core/log.ts';

const REPO = new URL('../../', import.meta.url).pathname;

function capture(cwd: string): CliIo & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    cwd,
    stdout: (t: string) => {
      io.out += t;
    },
    stderr: (t: string) => {
      io.err += t;
    },
  };
  return io;
}

let dir = '';
const write = (name: string, text: string) => writeFileSync(join(dir, name), text);

async function checkIn(args: string[], env: Record<string, string | undefined> = {}, cwd = dir) {
  const io = capture(cwd);
  const code = await configCheckCommand.run(args, env, io);
  return { code, out: io.out, err: io.err };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'lifeboat-cli-config-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  clearRegisteredSecrets();
});

describe('lifeboat config check', () => {
  it('has the right path and help', async () => {
    expect(configCheckCommand.path).toEqual(['config', 'check']);
    expect(configCheckCommand.help).toMatch(/Usage: lifeboat config check \[FILE\] \[--json\]/);
    const r = await checkIn(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('Usage: lifeboat config check');
  });

  it('a valid ./lifeboat.yaml: says so with a summary, password masked', async () => {
    write('lifeboat.yaml', 'stream: orders\nlease:\n  ttlSeconds: 45\n');
    const r = await checkIn([], { LIFEBOAT_SOURCE_DATABASE_URL: 'postgres://app:Sup3rS3cret@db.home:5432/shop' });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^lifeboat\.yaml is valid\n/);
    expect(r.out).toMatch(/stream\s+orders/);
    expect(r.out).toMatch(/project\s+lifeboat-local/);
    expect(r.out).toContain('postgres://app:***@db.home:5432/shop');
    expect(r.out).toContain('host db.home:5432');
    expect(r.out).toMatch(/lease\s+ttl 45 s, renewed every 5 s/);
    expect(r.out).toMatch(/probe\s+every 60 s/);
    expect(r.out).toMatch(/from env\s+LIFEBOAT_SOURCE_DATABASE_URL/);
    expect(r.out + r.err).not.toContain('Sup3rS3cret');
    expect(r.err).toBe('');
  });

  it('an invalid file: each problem with file:line:column, path, rule and fix; exit 1', async () => {
    write(
      'bad.yaml',
      ['mode: local', 'stream: main', 'lease:', '  renewIntervalSeconds: 10', '  clockSkewMarginSeconds: 1', '  ttlSeconds: 20', 'probe:', '  failureTreshold: 3', ''].join('\n'),
    );
    let r = await checkIn(['bad.yaml']);
    expect(r.code).toBe(1);
    expect(r.err).toContain('bad.yaml is invalid (1 problem)');
    expect(r.err).toContain('bad.yaml:8:3 probe.failureTreshold: unknown field; did you mean probe.failureThreshold?');
    write('bad.yaml', ['mode: local', 'lease:', '  renewIntervalSeconds: 10', '  clockSkewMarginSeconds: 1', '  ttlSeconds: 20', ''].join('\n'));
    r = await checkIn(['bad.yaml']);
    expect(r.code).toBe(1);
    expect(r.err).toContain(
      'bad.yaml:5:3 lease.ttlSeconds: must be at least 3 × lease.renewIntervalSeconds (10 s), got 20 s; raise lease.ttlSeconds to 30 or lower lease.renewIntervalSeconds',
    );
    expect(r.out).toBe('');
  });

  it('prints warnings for a valid config', async () => {
    write('warn.yaml', 'dns:\n  ttlSeconds: 900\n');
    const r = await checkIn(['warn.yaml'], { LIFEBOAT_NOT_A_FIELD: '1' });
    expect(r.code).toBe(0);
    expect(r.err).toContain('warning: warn.yaml:2:3 dns.ttlSeconds: is 900 s');
    expect(r.err).toContain('warning: $LIFEBOAT_NOT_A_FIELD is not a config field');
  });

  it('a missing file: clear error pointing at `lifeboat init`, exit 1', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'lifeboat-cli-empty-'));
    try {
      const r = await checkIn([], {}, empty);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/^lifeboat\.yaml not found/);
      expect(r.err).toContain('lifeboat init');
      const j = await checkIn(['--json'], {}, empty);
      expect(j.code).toBe(1);
      const parsed = JSON.parse(j.out) as { valid: boolean; errors: { message: string; text: string }[] };
      expect(parsed.valid).toBe(false);
      expect(parsed.errors[0]?.text).toContain('lifeboat init');
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('uses LIFEBOAT_CONFIG when no FILE is given', async () => {
    mkdirSync(join(dir, 'conf'), { recursive: true });
    write('conf/custom.yaml', 'stream: custom\n');
    const r = await checkIn([], { LIFEBOAT_CONFIG: 'conf/custom.yaml' });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^conf\/custom\.yaml is valid/);
    expect(r.out).toMatch(/stream\s+custom/);
  });

  it('--json: {valid, file, errors, warnings, config} with secrets masked', async () => {
    write('j.yaml', 'source:\n  databaseUrl: postgres://app:FileSecret99@db/app\nlease:\n  ttlSeconds: 20\n  renewIntervalSeconds: 10\n  clockSkewMarginSeconds: 1\n');
    const bad = await checkIn(['j.yaml', '--json']);
    expect(bad.code).toBe(1);
    const b = JSON.parse(bad.out) as Record<string, unknown>;
    expect(b).toMatchObject({ valid: false, file: 'j.yaml', config: null });
    expect(b.errors).toContainEqual(
      expect.objectContaining({
        path: 'lease.ttlSeconds',
        line: 4,
        column: 3,
        message: 'must be at least 3 × lease.renewIntervalSeconds (10 s), got 20 s',
        remedy: expect.stringMatching(/^raise lease\.ttlSeconds to 30/),
        text: expect.stringMatching(/^j\.yaml:4:3 lease\.ttlSeconds: must be at least/),
      }),
    );
    // ttl 20 with renew 10 also breaks the self-fence rule (20 − 1 ≤ 2 × 10)
    expect((b.errors as { path: string }[]).map((e) => e.path)).toEqual(['lease.ttlSeconds', 'lease.clockSkewMarginSeconds']);
    expect(bad.out).not.toContain('FileSecret99');

    write('j.yaml', 'source:\n  databaseUrl: postgres://app:FileSecret99@db/app\n');
    const good = await checkIn(['--json', 'j.yaml']);
    expect(good.code).toBe(0);
    const g = JSON.parse(good.out) as { valid: boolean; errors: unknown[]; warnings: { path: string }[]; config: Record<string, Record<string, unknown>> };
    expect(g.valid).toBe(true);
    expect(g.errors).toEqual([]);
    expect(g.warnings.map((w) => w.path)).toContain('source.databaseUrl');
    expect(g.config.source?.databaseUrl).toBe('postgres://app:***@db/app');
    expect(g.config.lease?.ttlSeconds).toBe(30);
    expect(good.out).not.toContain('FileSecret99');
  });

  it('usage errors exit 2', async () => {
    expect((await checkIn(['--bogus'])).code).toBe(2);
    expect((await checkIn(['a.yaml', 'b.yaml'])).code).toBe(2);
  });
});

describe('lifeboat.example.yaml', () => {
  const example = join(REPO, 'lifeboat.example.yaml');

  it('passes config check as it is', async () => {
    const r = await checkIn([example], {}, REPO);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
  });

  it('passes config check in cloud mode too', async () => {
    const r = await checkIn([example], { LIFEBOAT_MODE: 'cloud', LIFEBOAT_SOURCE_DATABASE_URL: 'postgres://app@localhost/app' }, REPO);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
  });

  it('mentions every field (set or commented)', () => {
    const text = readFileSync(example, 'utf8');
    const lines = text.split('\n');
    for (const row of describeConfigFields()) {
      const key = row.path.split('.').pop() ?? '';
      const indent = row.path.includes('.') ? '  ' : '';
      const found = lines.some((l) => l.startsWith(`${indent}${key}:`) || l.startsWith(`${indent}# ${key}:`));
      expect(found, row.path).toBe(true);
    }
  });
});

describe('lifeboat config defaults', () => {
  it('prints every field with default and env var', async () => {
    const io = capture(dir);
    expect(await configDefaultsCommand.run([], {}, io)).toBe(0);
    expect(configDefaultsCommand.path).toEqual(['config', 'defaults']);
    for (const row of describeConfigFields()) {
      expect(io.out).toContain(row.path);
      expect(io.out).toContain(row.env);
    }
    expect(io.out).toContain('lease.ttlSeconds = 30');
    expect(io.out).toContain('batching.maxBytes = 4 MiB');
  });

  it('--json prints the rows', async () => {
    const io = capture(dir);
    expect(await configDefaultsCommand.run(['--json'], {}, io)).toBe(0);
    expect(JSON.parse(io.out)).toEqual(JSON.parse(JSON.stringify(describeConfigFields())));
  });

  it('--help and usage errors', async () => {
    const io = capture(dir);
    expect(await configDefaultsCommand.run(['--help'], {}, io)).toBe(0);
    expect(io.out).toContain('Usage: lifeboat config defaults');
    expect(await configDefaultsCommand.run(['extra'], {}, capture(dir))).toBe(2);
  });
});
