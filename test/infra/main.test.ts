// The cdktf app entry: context, config, and a real synth to disk that writes
// plain Terraform JSON (what `npx cdktf synth` does, in-process).
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ValidationError } from '../../core/errors.ts';
import { readInfraContext, resolveFunctionsSource, runInfraMain } from '../../infra/main.ts';
import { FIXTURE_CONFIG_FILE, FIXTURE_FUNCTIONS_DIR } from './fixtures/synth.ts';

const REPO = new URL('../../', import.meta.url).pathname;
let dir = '';

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'lifeboat-infra-main-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('the "lifeboat" context', () => {
  it('comes from cdktf.json, CDKTF_CONTEXT_JSON wins, defaults fill the rest', () => {
    const file = JSON.stringify({ context: { lifeboat: { dnsZone: 'existing', alertEmail: 'a@example.com' } } });
    expect(readInfraContext(file, undefined)).toEqual({ dnsZone: 'existing', alertEmail: 'a@example.com' });
    expect(readInfraContext(file, JSON.stringify({ lifeboat: { dnsZone: 'create', stateBucket: 'tf-state' } }))).toEqual({
      dnsZone: 'create',
      alertEmail: 'a@example.com',
      stateBucket: 'tf-state',
    });
    expect(readInfraContext(undefined, undefined)).toEqual({ dnsZone: 'create' });
  });

  it('the repository cdktf.json is valid', () => {
    expect(readInfraContext(readFileSync(join(REPO, 'cdktf.json'), 'utf8'), undefined).dnsZone).toBe('create');
    expect(JSON.parse(readFileSync(join(REPO, 'cdktf.json'), 'utf8')).app).toBe('npx tsx infra/main.ts');
  });

  it('refuses unknown keys and bad values with a clear error', () => {
    const bad = JSON.stringify({ context: { lifeboat: { dnsZone: 'maybe', alertEmal: 'x' } } });
    expect(() => readInfraContext(bad, undefined)).toThrow(ValidationError);
    expect(() => readInfraContext(bad, undefined)).toThrow(/dnsZone|alertEmal/);
  });
});

describe('the functions source', () => {
  it('a prebuilt directory must hold index.js and package.json', () => {
    expect(resolveFunctionsSource(REPO, { dnsZone: 'create', functionsDir: FIXTURE_FUNCTIONS_DIR }, {}, () => {})).toEqual({ kind: 'directory', path: FIXTURE_FUNCTIONS_DIR });
    expect(() => resolveFunctionsSource(REPO, { dnsZone: 'create' }, { LIFEBOAT_FUNCTIONS_DIR: dir }, () => {})).toThrow(/has no index\.js and package\.json/);
    expect(resolveFunctionsSource(REPO, { dnsZone: 'create', functionsObject: 'functions-source/x.zip' }, {}, () => {})).toEqual({
      kind: 'uploaded-object',
      object: 'functions-source/x.zip',
    });
  });
});

describe('runInfraMain', () => {
  it('synthesizes plain Terraform JSON, the functions zip and a portable state path', () => {
    const outdir = join(dir, 'out');
    let out = '';
    let err = '';
    const code = runInfraMain(
      { LIFEBOAT_CONFIG: FIXTURE_CONFIG_FILE, LIFEBOAT_FUNCTIONS_DIR: FIXTURE_FUNCTIONS_DIR, CDKTF_OUTDIR: outdir },
      REPO,
      (t) => (out += t),
      (t) => (err += t),
    );
    expect(err).toBe('');
    expect(code).toBe(0);
    const file = join(outdir, 'stacks', 'lifeboat', 'cdk.tf.json');
    expect(out).toContain(file);
    const json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, Record<string, unknown>>;
    expect(Object.keys(json).sort()).toEqual(['//', 'data', 'output', 'provider', 'resource', 'terraform']);
    expect(json.terraform?.required_providers).toMatchObject({ google: { version: '6.50.0' }, random: { source: 'hashicorp/random' } });
    expect(json.provider?.google).toEqual([{ project: 'lifeboat-test-project', region: 'europe-west1' }]);
    // The state file lives beside cdktf.json, referenced relatively (no path of this machine).
    const backend = json.terraform?.backend as { local: { path: string } };
    expect(backend.local.path.endsWith('terraform.lifeboat.tfstate')).toBe(true);
    expect(backend.local.path.startsWith('/')).toBe(false);
    const obj = (json.resource?.google_storage_bucket_object as Record<string, { source: string }>).functions_source_object;
    expect(existsSync(join(outdir, 'stacks', 'lifeboat', obj?.source ?? 'missing'))).toBe(true);
  });

  it('names what is missing when the config is not a cloud config', () => {
    let err = '';
    const code = runInfraMain({ LIFEBOAT_CONFIG: join(dir, 'none.yaml') }, REPO, () => {}, (t) => (err += t));
    expect(code).toBe(1);
    expect(err).toMatch(/none\.yaml.*not found/);
    err = '';
    const local = runInfraMain(
      { LIFEBOAT_CONFIG: FIXTURE_CONFIG_FILE, LIFEBOAT_MODE: 'local', LIFEBOAT_FUNCTIONS_DIR: FIXTURE_FUNCTIONS_DIR, CDKTF_OUTDIR: join(dir, 'out2') },
      REPO,
      () => {},
      (t) => (err += t),
    );
    expect(local).toBe(1);
    expect(err).toContain("mode is 'local'");
  });

  it('builds the functions from this repository: the bundle registers apply, probe and status', () => {
    const outdir = join(dir, 'out3');
    let err = '';
    const code = runInfraMain({ LIFEBOAT_CONFIG: FIXTURE_CONFIG_FILE, CDKTF_OUTDIR: outdir }, REPO, () => {}, (t) => (err += t));
    expect(err).toMatch(/^build-functions: .*index\.js .*6 external dependencies/);
    expect(code).toBe(0);
    const bundle = readFileSync(join(REPO, '.lifeboat', 'functions-build', 'index.js'), 'utf8');
    for (const name of ['lifeboatApply', 'lifeboatProbe', 'lifeboatStatus']) expect(bundle).toContain(`"${name}"`);
    const json = JSON.parse(readFileSync(join(outdir, 'stacks', 'lifeboat', 'cdk.tf.json'), 'utf8')) as { resource: Record<string, Record<string, { build_config?: { entry_point?: string } }>> };
    const entryPoints = Object.values(json.resource.google_cloudfunctions2_function ?? {}).map((f) => f.build_config?.entry_point).sort();
    expect(entryPoints).toEqual(['lifeboatApply', 'lifeboatProbe', 'lifeboatStatus']);
  }, 120_000);
});
