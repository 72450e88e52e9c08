// cdktf app entry (cdktf.json: "app": "npx tsx infra/main.ts").
//
//   npx cdktf synth            → cdktf.out/stacks/lifeboat/cdk.tf.json
//   npx tsx infra/main.ts      the same without the cdktf CLI (CDKTF_OUTDIR sets the directory)
//
// Reads the one config (LIFEBOAT_CONFIG, else ./lifeboat.yaml, plus LIFEBOAT_*
// overrides; cloud mode and its fields are required) and the `lifeboat`
// context in cdktf.json (or CDKTF_CONTEXT_JSON):
//
//   functionsDir     prebuilt functions directory (index.js + package.json)
//   functionsObject  or: a zip already uploaded to the bucket (object name)
//   dnsZone          'create' (default) or 'existing'
//   dnsZoneDnsName   DNS name of a created zone (default: the record's parent)
//   alertEmail       where alerts are mailed
//   lagAlertSeconds  mean lag that alerts (default 120)
//   stateBucket      GCS bucket for Terraform state (recommended)
//
// Without functionsDir/functionsObject it runs scripts/build-functions.mjs
// first (which needs functions/index.ts). LIFEBOAT_FUNCTIONS_DIR overrides the
// directory for one run.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { App } from 'cdktf';
import { z } from 'zod';
import { defaultConfigFile, formatIssue, loadConfig } from '../core/config-load.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { describeError, ValidationError } from '../core/errors.ts';
import { LifeboatStack, STACK_ID, type FunctionsSource } from './lifeboat-stack.ts';

export const FUNCTIONS_DIR_ENV = 'LIFEBOAT_FUNCTIONS_DIR';
export const DEFAULT_FUNCTIONS_BUILD_DIR = '.lifeboat/functions-build';
export const CONTEXT_KEY = 'lifeboat';

export const infraContextSchema = z
  .strictObject({
    functionsDir: z.string().min(1).optional(),
    functionsObject: z.string().min(1).optional(),
    dnsZone: z.enum(['create', 'existing']).default('create'),
    dnsZoneDnsName: z
      .string()
      .regex(/^(?:[A-Za-z0-9-]+\.)+$/, { error: "must be a DNS name ending in '.', such as 'example.com.'" })
      .optional(),
    alertEmail: z.email().optional(),
    lagAlertSeconds: z.number().positive().optional(),
    stateBucket: z.string().min(3).optional(),
  })
  .refine((c) => !(c.functionsDir && c.functionsObject), { error: 'set functionsDir or functionsObject, not both' });

export type InfraContext = z.output<typeof infraContextSchema>;

/** The `lifeboat` context from cdktf.json and CDKTF_CONTEXT_JSON (the latter wins), validated. */
export function readInfraContext(cdktfJsonText: string | undefined, contextEnv: string | undefined): InfraContext {
  const fromFile = cdktfJsonText === undefined ? {} : (JSON.parse(cdktfJsonText) as { context?: Record<string, unknown> }).context ?? {};
  const fromEnv = contextEnv ? (JSON.parse(contextEnv) as Record<string, unknown>) : {};
  const raw = { ...((fromFile[CONTEXT_KEY] as object | undefined) ?? {}), ...((fromEnv[CONTEXT_KEY] as object | undefined) ?? {}) };
  const r = infraContextSchema.safeParse(raw);
  if (!r.success) {
    throw new ValidationError(`the "${CONTEXT_KEY}" context in cdktf.json is invalid: ${r.error.issues.map((i) => `${i.path.join('.') || '(context)'}: ${i.message}`).join('; ')}.`, {
      remedy: 'Fix the "context": {"lifeboat": {...}} block of cdktf.json (infra/main.ts lists its keys).',
    });
  }
  return r.data;
}

export interface LifeboatAppOptions {
  readonly config: LifeboatConfig;
  readonly context: InfraContext;
  readonly functionsSource: FunctionsSource;
  readonly outdir?: string;
  /** Directory of the local Terraform state file when no stateBucket is set (default: the current directory). */
  readonly stateDir?: string;
}

export const LOCAL_STATE_FILE = 'terraform.lifeboat.tfstate';

/** The app with its one stack, not yet synthesized. */
export function createLifeboatApp(opts: LifeboatAppOptions): { app: App; stack: LifeboatStack } {
  const app = new App({ outdir: opts.outdir, skipValidation: false });
  // Relative to the stack directory, so the JSON carries no path of this machine and survives a re-synth.
  const stackDir = resolve(app.outdir, 'stacks', STACK_ID);
  const localStatePath = relative(stackDir, resolve(opts.stateDir ?? process.cwd(), LOCAL_STATE_FILE));
  const stack = new LifeboatStack(app, STACK_ID, {
    config: opts.config,
    functionsSource: opts.functionsSource,
    dnsZone: opts.context.dnsZone,
    dnsZoneDnsName: opts.context.dnsZoneDnsName,
    alertEmail: opts.context.alertEmail,
    lagAlertSeconds: opts.context.lagAlertSeconds,
    stateBucket: opts.context.stateBucket,
    localStatePath,
  });
  return { app, stack };
}

/** Synthesizes to `outdir` and returns the path of the stack's Terraform JSON. */
export function synthesizeLifeboat(opts: LifeboatAppOptions & { readonly outdir: string }): string {
  const { app } = createLifeboatApp(opts);
  app.synth();
  return join(opts.outdir, 'stacks', STACK_ID, 'cdk.tf.json');
}

/** Runs scripts/build-functions.mjs; returns the staging directory. */
function buildFunctions(root: string, outDir: string, stderr: (t: string) => void): string {
  const r = spawnSync(process.execPath, [join(root, 'scripts', 'build-functions.mjs'), '--out', outDir], { cwd: root, encoding: 'utf8' });
  if (r.stderr) stderr(r.stderr);
  if (r.status !== 0) {
    throw new ValidationError('the functions could not be built, so the stack was not synthesized.', {
      remedy: `Fix the build above, or point the "lifeboat" context's functionsDir (or ${FUNCTIONS_DIR_ENV}) at a prebuilt directory.`,
    });
  }
  return outDir;
}

export function resolveFunctionsSource(
  root: string,
  context: InfraContext,
  env: Readonly<Record<string, string | undefined>>,
  stderr: (t: string) => void,
): FunctionsSource {
  const dir = env[FUNCTIONS_DIR_ENV] || context.functionsDir;
  if (dir) {
    const abs = resolve(root, dir);
    if (!existsSync(join(abs, 'index.js')) || !existsSync(join(abs, 'package.json'))) {
      throw new ValidationError(`the functions directory ${abs} has no index.js and package.json.`, {
        remedy: 'Build it with `node scripts/build-functions.mjs --out DIR`, or fix functionsDir / LIFEBOAT_FUNCTIONS_DIR.',
      });
    }
    return { kind: 'directory', path: abs };
  }
  if (context.functionsObject) return { kind: 'uploaded-object', object: context.functionsObject };
  return { kind: 'directory', path: buildFunctions(root, resolve(root, DEFAULT_FUNCTIONS_BUILD_DIR), stderr) };
}

export function runInfraMain(
  env: Readonly<Record<string, string | undefined>>,
  cwd: string,
  stdout: (t: string) => void,
  stderr: (t: string) => void,
): number {
  try {
    const cdktfJson = join(cwd, 'cdktf.json');
    const context = readInfraContext(existsSync(cdktfJson) ? readFileSync(cdktfJson, 'utf8') : undefined, env.CDKTF_CONTEXT_JSON);
    const loaded = loadConfig({ file: defaultConfigFile(env, cwd), env, allowEnv: [FUNCTIONS_DIR_ENV] });
    // The source URL is the agent's business, not the stack's.
    for (const w of loaded.warnings) if (w.rule !== 'cloud.source-url') stderr(`warning: ${formatIssue(w)}\n`);
    const functionsSource = resolveFunctionsSource(cwd, context, env, stderr);
    const outdir = env.CDKTF_OUTDIR || join(cwd, 'cdktf.out');
    const file = synthesizeLifeboat({ config: loaded.config, context, functionsSource, outdir, stateDir: cwd });
    stdout(`lifeboat infra: synthesized ${file}\n`);
    return 0;
  } catch (e) {
    stderr(`lifeboat infra: ${describeError(e)}\n`);
    return 1;
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = runInfraMain(
    process.env,
    process.cwd(),
    (t) => process.stdout.write(t),
    (t) => process.stderr.write(t),
  );
}
