import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../../cli/main.ts';
import { loadConfig } from '../../core/config-load.ts';

const dir = mkdtempSync(join(tmpdir(), 'lifeboat-init-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, {}, { stdout: (t) => (out += t), stderr: (t) => (err += t), cwd: dir });
  return { code, out, err };
}

describe('lifeboat init', () => {
  it('writes a valid commented lifeboat.yaml and prints the settings and grants', async () => {
    const r = await run(['init', '--role', 'agent_role', '--database', 'shop']);
    expect(r.code).toBe(0);
    const text = readFileSync(join(dir, 'lifeboat.yaml'), 'utf8');
    expect(text).toMatch(/^#/m);
    expect(loadConfig({ file: join(dir, 'lifeboat.yaml'), env: {} }).config.stream).toBe('main');
    expect(r.out).toContain('ALTER SYSTEM SET wal_level = logical;');
    expect(r.out).toContain('CREATE ROLE "agent_role" LOGIN REPLICATION');
    expect(r.out).toContain('ALTER DATABASE "shop" OWNER TO "agent_role"');
    expect(r.out).toContain('GRANT pg_signal_backend TO "agent_role"');
  });

  it('never overwrites without --force, and says so', async () => {
    writeFileSync(join(dir, 'lifeboat.yaml'), 'stream: mine\n');
    const r = await run(['init']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/exists; nothing was written. Use --force/);
    expect(readFileSync(join(dir, 'lifeboat.yaml'), 'utf8')).toBe('stream: mine\n');
    const forced = await run(['init', '--force', '--json']);
    expect(forced.code).toBe(0);
    expect(JSON.parse(forced.out)).toMatchObject({ file: join(dir, 'lifeboat.yaml'), settings: expect.any(Array), grants: expect.any(Array) });
  });

  it('refuses a role name that would need quoting tricks', async () => {
    const r = await run(['init', '--file', 'x.yaml', '--role', 'Robert"); DROP']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--role .* is not a plain lower-case PostgreSQL name/);
  });
});
