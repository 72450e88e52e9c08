// Loads lifeboat.yaml plus LIFEBOAT_* environment overrides, validates them
// against the one schema (config.ts), runs the cross-field rules, and reports
// every problem with the field's dotted path, where it came from (the YAML
// line:column, or the environment variable) and how to fix it.
//
// Precedence: environment > file > defaults (derived defaults last).
// Env names: LIFEBOAT_ + the dotted camelCase path in SCREAMING_SNAKE
// (lease.ttlSeconds → LIFEBOAT_LEASE_TTL_SECONDS). Env values are coerced by
// the field's schema type: numbers, booleans (true/false/1/0), lists
// (comma-separated); byte sizes accept '4MiB'. An empty value is ignored
// (with a warning). An unknown LIFEBOAT_* variable is a warning, unless it is
// in NON_CONFIG_ENV_VARS (variables read elsewhere, e.g. LIFEBOAT_PG_BIN).
//
// The loader registers every password it sees (URLs in secret fields,
// PGPASSWORD) with the logger's redaction (log.ts registerSecret).

import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import { z } from 'zod';
import {
  checkConfig,
  configFields,
  configObjectShape,
  configSchema,
  envVarName,
  formatBytes,
  sectionShape,
  type FieldInfo,
  type LifeboatConfig,
} from './config.ts';
import { ValidationError } from './errors.ts';
import { registerSecret, registerUrlSecrets } from './log.ts';

// ---------------------------------------------------------------------------
// Types

export type ConfigSource =
  | { readonly kind: 'default' }
  | { readonly kind: 'derived'; readonly from: string }
  | { readonly kind: 'file'; readonly file: string; readonly line?: number; readonly column?: number }
  | { readonly kind: 'env'; readonly name: string };

export interface ConfigIssue {
  readonly severity: 'error' | 'warning';
  /** Dotted path of the field ('' for the whole file or an env variable). */
  readonly path: string;
  /** What is wrong. */
  readonly message: string;
  /** How to fix it, when there is more to say than the message. */
  readonly remedy?: string;
  /** The rule id for cross-field rules (config.ts TIMING_RULES), 'schema', 'yaml', 'env', 'file'. */
  readonly rule: string;
  readonly file?: string;
  readonly line?: number;
  readonly column?: number;
  /** The environment variable the value came from. */
  readonly env?: string;
}

export interface LoadConfigOptions {
  /** Path of lifeboat.yaml. Read unless yamlText is given (then it is the label in messages). */
  readonly file?: string;
  /** YAML text to parse instead of reading `file`. */
  readonly yamlText?: string;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** A missing `file` counts as an empty one (local mode needs no file). Default false. */
  readonly allowMissingFile?: boolean;
  /** More LIFEBOAT_* names that are not config fields (no warning for them). */
  readonly allowEnv?: readonly string[];
}

export interface LoadedConfig {
  readonly config: LifeboatConfig;
  /** Where each leaf field's value came from, by dotted path. */
  readonly sources: Readonly<Record<string, ConfigSource>>;
  readonly warnings: readonly ConfigIssue[];
  /** The file read (as given), if any. */
  readonly file: string | undefined;
  /** Directory that relative paths in the config (storage.localDir) are resolved against. */
  readonly baseDir: string;
}

export interface ConfigCheckResult {
  readonly ok: boolean;
  readonly config: LifeboatConfig | undefined;
  readonly errors: readonly ConfigIssue[];
  readonly warnings: readonly ConfigIssue[];
  readonly sources: Readonly<Record<string, ConfigSource>>;
  readonly file: string | undefined;
  readonly baseDir: string;
  /** The file did not exist (errors then holds one issue saying so). */
  readonly missingFile: boolean;
}

/** Thrown by loadConfig; `issues` holds every error (with locations). */
export class ConfigError extends ValidationError {
  readonly issues: readonly ConfigIssue[];
  readonly warnings: readonly ConfigIssue[];
  constructor(issues: readonly ConfigIssue[], warnings: readonly ConfigIssue[], file: string | undefined) {
    super(
      issues.length === 1 && issues[0]?.rule === 'file'
        ? formatIssue(issues[0])
        : `${file ?? 'configuration'} is invalid:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}`,
      {
        remedy: issues.some((i) => i.rule === 'file')
          ? undefined
          : 'Fix the fields named above; `lifeboat config defaults` lists every field, and `lifeboat config check` re-checks.',
        details: { issues },
      },
    );
    this.issues = issues;
    this.warnings = warnings;
  }
}

/**
 * LIFEBOAT_* variables read by other parts of Lifeboat (not config fields):
 * no warning for them.
 */
export const NON_CONFIG_ENV_VARS: ReadonlySet<string> = new Set([
  'LIFEBOAT_CONFIG',
  'LIFEBOAT_PG_BIN',
  'LIFEBOAT_GCLOUD_SDK',
  'LIFEBOAT_JAVA',
  'LIFEBOAT_HOME',
  'LIFEBOAT_STATE_DIR',
  'LIFEBOAT_KEEP_STACK',
  'LIFEBOAT_NO_COLOR',
  'LIFEBOAT_DEBUG',
]);
/** Prefixes of LIFEBOAT_* variables used by tests, benches and the stack. */
export const NON_CONFIG_ENV_PREFIXES: readonly string[] = ['LIFEBOAT_TEST_', 'LIFEBOAT_BENCH_', 'LIFEBOAT_STACK_', 'LIFEBOAT_E2E_'];

/** The config file to use: LIFEBOAT_CONFIG, else lifeboat.yaml in `cwd`. */
export function defaultConfigFile(env: Readonly<Record<string, string | undefined>>, cwd: string): string {
  return resolve(cwd, env.LIFEBOAT_CONFIG || 'lifeboat.yaml');
}

// ---------------------------------------------------------------------------
// Formatting

/**
 * One line: `lifeboat.yaml:12:3 lease.ttlSeconds: must be …; raise …`.
 * Values from the environment are located as `$LIFEBOAT_…`.
 */
export function formatIssue(issue: ConfigIssue): string {
  let where = '';
  if (issue.env) where = `$${issue.env}`;
  else if (issue.file) where = issue.line ? `${issue.file}:${issue.line}:${issue.column ?? 1}` : issue.file;
  const head = [where, issue.path ? `${issue.path}:` : ''].filter(Boolean).join(' ');
  const body = issue.remedy ? `${issue.message}; ${issue.remedy}` : issue.message;
  return head ? `${head} ${body}` : body;
}

// ---------------------------------------------------------------------------
// Field introspection

type AnyDef = {
  type: string;
  innerType?: z.ZodType;
  in?: z.ZodType;
  options?: z.ZodType[];
  element?: z.ZodType;
  entries?: Record<string, string>;
  defaultValue?: unknown;
};
const defOf = (s: z.ZodType) => s.def as unknown as AnyDef;

/** The schema under default/optional/prefault/pipe wrappers. */
function baseOf(schema: z.ZodType): z.ZodType {
  let s = schema;
  for (;;) {
    const d = defOf(s);
    if ((d.type === 'default' || d.type === 'prefault' || d.type === 'optional' || d.type === 'nullable') && d.innerType) s = d.innerType;
    else if (d.type === 'pipe' && d.in) s = d.in;
    else return s;
  }
}

type CoerceKind = 'number' | 'boolean' | 'list' | 'string' | 'bytes';

function coerceKind(f: FieldInfo): CoerceKind {
  const b = baseOf(f.schema);
  const d = defOf(b);
  if (d.type === 'number') return 'number';
  if (d.type === 'boolean') return 'boolean';
  if (d.type === 'array') return 'list';
  if (d.type === 'union') return 'bytes';
  return 'string';
}

function typeText(f: FieldInfo): string {
  if (f.meta.type) return f.meta.type;
  const b = baseOf(f.schema);
  const d = defOf(b);
  switch (d.type) {
    case 'number':
      return (b as unknown as { isInt?: boolean }).isInt ? 'integer' : 'number';
    case 'boolean':
      return 'boolean';
    case 'enum':
      return Object.values(d.entries ?? {}).join(' | ');
    case 'array':
      return 'list of strings';
    default:
      return 'string';
  }
}

function defaultOf(f: FieldInfo): unknown {
  const d = defOf(f.schema);
  return d.type === 'default' ? d.defaultValue : undefined;
}

export interface ConfigFieldRow {
  /** Dotted path, e.g. 'lease.ttlSeconds'. */
  readonly path: string;
  readonly type: string;
  /** The default value (JSON), or null when there is none. */
  readonly default: unknown;
  /** The default for humans: '4 MiB', '[]', 'lifeboat_<stream>', '' when none. */
  readonly defaultText: string;
  readonly description: string;
  /** The environment variable that overrides it. */
  readonly env: string;
  readonly secret: boolean;
  /** Why cloud mode requires it (no default), if it does. */
  readonly requiredInCloud: string | undefined;
}

/** One row per leaf field: the single source of the defaults table. */
export function describeConfigFields(): ConfigFieldRow[] {
  return configFields().map((f) => {
    const def = defaultOf(f);
    let text = '';
    if (f.meta.derived) text = f.meta.derived;
    else if (def !== undefined) {
      if (f.meta.type === 'bytes' && typeof def === 'number') text = formatBytes(def);
      else if (Array.isArray(def)) text = def.length ? def.join(', ') : '[]';
      else text = String(def);
    }
    return {
      path: f.path,
      type: typeText(f),
      default: def === undefined ? null : def,
      defaultText: text,
      description: f.description,
      env: envVarName(f.path),
      secret: f.meta.secret === true,
      requiredInCloud: f.meta.cloud,
    };
  });
}

// ---------------------------------------------------------------------------
// Environment

export interface EnvOverrides {
  /** Coerced values by dotted path. */
  readonly values: ReadonlyMap<string, { value: unknown; name: string }>;
  readonly warnings: readonly ConfigIssue[];
}

const BOOL: Record<string, boolean> = { true: true, false: false, '1': true, '0': false };

function coerceEnv(kind: CoerceKind, raw: string): unknown {
  const v = raw.trim();
  switch (kind) {
    case 'number':
      return /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v) ? Number(v) : raw;
    case 'boolean': {
      const b = BOOL[v.toLowerCase()];
      return b === undefined ? raw : b;
    }
    case 'list':
      return v === '' ? [] : v.split(',').map((s) => s.trim()).filter((s) => s !== '');
    case 'bytes':
      return /^\d+$/.test(v) ? Number(v) : v;
    default:
      return v;
  }
}

/** Reads the LIFEBOAT_* variables that map to config fields. */
export function readEnvOverrides(
  env: Readonly<Record<string, string | undefined>>,
  allowEnv: readonly string[] = [],
): EnvOverrides {
  const fields = configFields();
  const byEnv = new Map(fields.map((f) => [envVarName(f.path), f] as const));
  const values = new Map<string, { value: unknown; name: string }>();
  const warnings: ConfigIssue[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith('LIFEBOAT_')) continue;
    const raw = env[name];
    if (raw === undefined) continue;
    const f = byEnv.get(name);
    if (!f) {
      if (NON_CONFIG_ENV_VARS.has(name) || allowEnv.includes(name) || NON_CONFIG_ENV_PREFIXES.some((p) => name.startsWith(p))) continue;
      const guess = closest(name, [...byEnv.keys()], 4);
      warnings.push({
        severity: 'warning',
        rule: 'env',
        path: '',
        env: name,
        message: `is not a config field and is ignored${guess ? `; did you mean ${guess}?` : ''}`,
        remedy: 'unset it if it is a typo; `lifeboat config defaults` lists the variables',
      });
      continue;
    }
    const kind = coerceKind(f);
    if (raw.trim() === '' && kind !== 'list') {
      warnings.push({
        severity: 'warning',
        rule: 'env',
        path: f.path,
        env: name,
        message: 'is empty and is ignored',
        remedy: `unset it or give ${f.path} a value`,
      });
      continue;
    }
    values.set(f.path, { value: coerceEnv(kind, raw), name });
  }
  return { values, warnings };
}

// ---------------------------------------------------------------------------
// Suggestions

export function levenshtein(a: string, b: string): number {
  if (a === b) return 0;
  if (!a.length) return b.length;
  if (!b.length) return a.length;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost);
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

const norm = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '');

/** The candidate closest to `word`, if close enough to be a likely typo. */
export function closest(word: string, candidates: readonly string[], maxDistance?: number): string | undefined {
  const w = norm(word);
  const exact = candidates.find((c) => norm(c) === w);
  if (exact) return exact;
  const limit = maxDistance ?? Math.max(2, Math.floor(w.length / 3));
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = levenshtein(w, norm(c));
    if (d < bestD) {
      best = c;
      bestD = d;
    }
  }
  if (best !== undefined && bestD <= limit) return best;
  // 'ttl' → 'ttlSeconds', 'renewInterval' → 'renewIntervalSeconds'
  if (w.length >= 3) {
    const prefixed = candidates.filter((c) => norm(c).startsWith(w));
    if (prefixed.length === 1) return prefixed[0];
    // 'automatic' → 'auto'
    const prefixes = candidates.filter((c) => norm(c).length >= 3 && w.startsWith(norm(c)));
    if (prefixes.length === 1) return prefixes[0];
  }
  return undefined;
}

function suggestKey(parentPath: string, key: string): string | undefined {
  const shape = parentPath === '' ? (configObjectShape as unknown as Record<string, z.ZodType>) : shapeAt(parentPath);
  if (shape) {
    const sibling = closest(key, Object.keys(shape));
    if (sibling) return parentPath ? `${parentPath}.${sibling}` : sibling;
  }
  // The same name in another section: `ttlSeconds` at the top → lease.ttlSeconds
  const w = norm(key);
  const elsewhere = configFields().filter((f) => norm(f.path.split('.').pop() ?? '') === w);
  if (elsewhere.length > 0) return elsewhere.map((f) => f.path).join(' or ');
  if (parentPath === '') {
    // `leases` → `lease`
    const sec = closest(key, Object.keys(configObjectShape));
    if (sec) return sec;
  }
  return undefined;
}

function shapeAt(path: string): Record<string, z.ZodType> | undefined {
  let shape: Record<string, z.ZodType> | undefined = configObjectShape as unknown as Record<string, z.ZodType>;
  for (const seg of path.split('.')) {
    const s: z.ZodType | undefined = shape?.[seg];
    shape = s ? sectionShape(s) : undefined;
    if (!shape) return undefined;
  }
  return shape;
}

// ---------------------------------------------------------------------------
// YAML locations

interface Located {
  readonly line: number;
  readonly column: number;
  /** The whole path was found (not just an ancestor). */
  readonly exact: boolean;
}

function locate(doc: Document | undefined, lc: LineCounter, path: readonly (string | number)[]): Located | undefined {
  if (!doc) return undefined;
  let node: unknown = doc.contents;
  let offset: number | undefined;
  let found = 0;
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(seg));
      if (!pair) break;
      const keyRange = (pair.key as { range?: [number, number, number] } | null)?.range;
      if (keyRange) offset = keyRange[0];
      node = pair.value;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg] as { range?: [number, number, number] } | undefined;
      if (!item) break;
      if (item.range) offset = item.range[0];
      node = item;
    } else break;
    found++;
  }
  if (offset === undefined) return undefined;
  const pos = lc.linePos(offset);
  return { line: pos.line, column: pos.col, exact: found === path.length };
}

// ---------------------------------------------------------------------------
// Loading

function getIn(obj: unknown, path: readonly (string | number)[]): unknown {
  let cur = obj;
  for (const k of path) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string | number, unknown>)[k];
  }
  return cur;
}

function setIn(obj: Record<string, unknown>, path: string, value: unknown): boolean {
  const segs = path.split('.');
  let cur: Record<string, unknown> = obj;
  for (const seg of segs.slice(0, -1)) {
    const next = cur[seg];
    if (next === undefined || next === null) cur[seg] = {};
    else if (typeof next !== 'object' || Array.isArray(next)) return false;
    cur = cur[seg] as Record<string, unknown>;
  }
  cur[segs[segs.length - 1] as string] = value;
  return true;
}

function pathText(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out;
}

function showValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 57)}...` : v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

const TYPE_WORDS: Record<string, string> = {
  int: 'a whole number',
  number: 'a number',
  boolean: 'true or false',
  string: 'a string',
  array: 'a list',
  object: 'a mapping of fields',
};

function leafField(path: readonly PropertyKey[]): FieldInfo | undefined {
  const p = path.filter((s) => typeof s === 'string').join('.');
  return configFields().find((f) => f.path === p || p.startsWith(`${f.path}.`));
}

function zodIssueMessage(issue: z.core.$ZodIssue, input: unknown, secret: boolean, integer: boolean, fromEnv: boolean): string {
  const got = secret || input === undefined ? '' : `, got ${showValue(input)}`;
  switch (issue.code) {
    case 'invalid_type': {
      if (input === undefined) return 'is required';
      const expected = TYPE_WORDS[integer && issue.expected === 'number' ? 'int' : issue.expected] ?? issue.expected;
      const quoteHint =
        !fromEnv && typeof input === 'string' && (issue.expected === 'number' || issue.expected === 'int' || issue.expected === 'boolean') && input.trim() !== ''
          ? ' (remove the quotes)'
          : '';
      return `must be ${expected}${got}${quoteHint}`;
    }
    case 'too_small': {
      const min = String(issue.minimum);
      if (issue.origin === 'number') return `must be ${issue.inclusive ? 'at least' : 'greater than'} ${min}${got}`;
      if (issue.origin === 'string') return issue.minimum === 1 ? 'must not be empty' : `must have at least ${min} characters`;
      return `must have at least ${min} items`;
    }
    case 'too_big': {
      const max = String(issue.maximum);
      if (issue.origin === 'number') return `must be ${issue.inclusive ? 'at most' : 'less than'} ${max}${got}`;
      if (issue.origin === 'string') return `must have at most ${max} characters`;
      return `must have at most ${max} items`;
    }
    case 'not_multiple_of':
      return `must be a multiple of ${String(issue.divisor)}${got}`;
    case 'invalid_value': {
      const values = issue.values.map((v) => String(v));
      const guess = typeof input === 'string' ? closest(input, values) : undefined;
      return `must be one of ${values.join(', ')}${got}${guess ? `; did you mean '${guess}'?` : ''}`;
    }
    case 'invalid_union':
      return `must be a byte count or a size such as '4MiB'${got}`;
    case 'invalid_format':
    case 'custom':
      return secret ? issue.message : `${issue.message}${issue.message.includes(', got ') ? '' : got}`;
    default:
      return issue.message;
  }
}

interface Ctx {
  readonly file: string | undefined;
  readonly doc: Document | undefined;
  readonly lc: LineCounter;
  readonly env: EnvOverrides;
}

function place(ctx: Ctx, path: readonly (string | number)[]): Pick<ConfigIssue, 'file' | 'line' | 'column' | 'env'> {
  const leaf = leafField(path);
  const fromEnv = leaf ? ctx.env.values.get(leaf.path) : undefined;
  if (fromEnv) return { env: fromEnv.name };
  const loc = locate(ctx.doc, ctx.lc, path);
  if (!ctx.file) return loc ? { line: loc.line, column: loc.column } : {};
  return loc ? { file: ctx.file, line: loc.line, column: loc.column } : { file: ctx.file };
}

function emptyResult(
  file: string | undefined,
  baseDir: string,
  errors: ConfigIssue[],
  warnings: ConfigIssue[],
  missingFile = false,
): ConfigCheckResult {
  return { ok: false, config: undefined, errors, warnings, sources: {}, file, baseDir, missingFile };
}

/**
 * Loads and checks a configuration without throwing: every error and warning,
 * each with its location. loadConfig() is this plus a throw.
 */
export function checkConfigSource(opts: LoadConfigOptions): ConfigCheckResult {
  const file = opts.file;
  const baseDir = file ? dirname(resolve(file)) : process.cwd();
  const env = readEnvOverrides(opts.env, opts.allowEnv);
  const warnings: ConfigIssue[] = [...env.warnings];
  registerSecret(opts.env.PGPASSWORD);

  let text = opts.yamlText;
  if (text === undefined && file !== undefined) {
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' && opts.allowMissingFile) text = '';
      else if (code === 'ENOENT') {
        return emptyResult(
          file,
          baseDir,
          [
            {
              severity: 'error',
              rule: 'file',
              path: '',
              file,
              message: 'not found',
              remedy: 'run `lifeboat init` to write one, or point LIFEBOAT_CONFIG at your file',
            },
          ],
          warnings,
          true,
        );
      } else {
        return emptyResult(
          file,
          baseDir,
          [{ severity: 'error', rule: 'file', path: '', file, message: `cannot be read: ${(e as Error).message}`, remedy: 'check the path and its permissions' }],
          warnings,
        );
      }
    }
  }

  // 1. YAML
  const lc = new LineCounter();
  let doc: Document | undefined;
  let raw: Record<string, unknown> = {};
  if (text !== undefined && text.trim() !== '') {
    doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
    const yamlIssue = (e: { message: string; pos: [number, number] }, severity: 'error' | 'warning'): ConfigIssue => {
      const p = lc.linePos(e.pos[0]);
      const msg = e.message.split('\n')[0] ?? e.message;
      return { severity, rule: 'yaml', path: '', message: msg, ...(file ? { file } : {}), line: p.line, column: p.col, remedy: severity === 'error' ? 'fix the YAML syntax' : undefined };
    };
    for (const w of doc.warnings) warnings.push(yamlIssue(w, 'warning'));
    if (doc.errors.length > 0) return emptyResult(file, baseDir, doc.errors.map((e) => yamlIssue(e, 'error')), warnings);
    const js: unknown = doc.toJS({ maxAliasCount: 100 });
    if (js !== null && js !== undefined) {
      if (typeof js !== 'object' || Array.isArray(js)) {
        return emptyResult(
          file,
          baseDir,
          [{ severity: 'error', rule: 'yaml', path: '', ...(file ? { file } : {}), line: 1, column: 1, message: `must be a mapping of sections (mode, source, lease, …), got ${showValue(js)}`, remedy: 'see lifeboat.example.yaml' }],
          warnings,
        );
      }
      raw = js as Record<string, unknown>;
      // A section header whose fields are all commented out is an empty section.
      for (const [k, v] of Object.entries(raw)) {
        const s = (configObjectShape as unknown as Record<string, z.ZodType | undefined>)[k];
        if (v === null && s && sectionShape(s)) delete raw[k];
      }
    }
  }
  const fromFile = structuredClone(raw);

  // Secrets seen anywhere (even if the config turns out invalid).
  const fields = configFields();
  for (const f of fields) {
    if (!f.meta.secret) continue;
    const v = getIn(raw, f.path.split('.'));
    if (typeof v === 'string') registerUrlSecrets(v);
    const e = env.values.get(f.path)?.value;
    if (typeof e === 'string') registerUrlSecrets(e);
  }

  // 2. Environment overrides
  const ctx: Ctx = { file, doc, lc, env };
  const errors: ConfigIssue[] = [];
  for (const [path, { value, name }] of env.values) {
    if (!setIn(raw, path, value)) {
      errors.push({
        severity: 'error',
        rule: 'env',
        path,
        env: name,
        message: `cannot apply ${name}: ${path.split('.')[0]} in the file is not a mapping`,
        remedy: `fix ${path.split('.')[0]} in the file`,
      });
    }
  }

  // 3. Schema
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        const parent = issue.path.map((p) => (typeof p === 'number' ? p : String(p)));
        const parentPath = pathText(parent);
        for (const key of issue.keys) {
          const guess = suggestKey(parentPath, key);
          const path = parentPath ? `${parentPath}.${key}` : key;
          errors.push({
            severity: 'error',
            rule: 'schema',
            path,
            message: `unknown field${guess ? `; did you mean ${guess}?` : ''}`,
            remedy: guess ? undefined : `remove it; \`lifeboat config defaults\` lists the fields${parentPath ? ` of ${parentPath}` : ''}`,
            ...place(ctx, [...parent, key]),
          });
        }
        continue;
      }
      const segs = issue.path.map((p) => (typeof p === 'number' ? p : String(p)));
      const leaf = leafField(segs);
      const input = getIn(raw, segs);
      const where = place(ctx, segs);
      let message = zodIssueMessage(issue, input, leaf?.meta.secret === true, leaf !== undefined && typeText(leaf) === 'integer', where.env !== undefined);
      if (leaf?.meta.hint && !message.includes(leaf.meta.hint)) message += ` (${leaf.meta.hint})`;
      errors.push({
        severity: 'error',
        rule: 'schema',
        path: pathText(segs),
        message,
        ...(where.env ? { remedy: `fix or unset ${where.env}` } : {}),
        ...where,
      });
    }
  }

  // 4. Sources
  const sources: Record<string, ConfigSource> = {};
  for (const f of fields) {
    const e = env.values.get(f.path);
    const segs = f.path.split('.');
    if (e) sources[f.path] = { kind: 'env', name: e.name };
    else if (getIn(fromFile, segs) !== undefined) {
      const loc = locate(doc, lc, segs);
      sources[f.path] = { kind: 'file', file: file ?? '(yaml)', ...(loc ? { line: loc.line, column: loc.column } : {}) };
    } else if (f.meta.derived) sources[f.path] = { kind: 'derived', from: f.meta.derived };
    else sources[f.path] = { kind: 'default' };
  }

  if (!parsed.success || errors.length > 0) {
    return { ok: false, config: undefined, errors, warnings, sources, file, baseDir, missingFile: false };
  }
  const config = parsed.data;

  // 5. Cross-field rules and mode requirements
  for (const p of checkConfig(config)) {
    let where = place(ctx, p.path.split('.'));
    // A field missing because of `mode: cloud`: point at the mode line.
    if (where.line === undefined && !where.env && p.related.includes('mode')) {
      const modeEnv = env.values.get('mode');
      const loc = locate(doc, lc, ['mode']);
      if (modeEnv) where = { env: modeEnv.name };
      else if (loc) where = { ...(file ? { file } : {}), line: loc.line, column: loc.column };
    }
    const issue: ConfigIssue = {
      severity: p.severity,
      rule: p.rule,
      path: p.path,
      message: p.message,
      remedy: p.remedy,
      ...where,
    };
    (p.severity === 'error' ? errors : warnings).push(issue);
  }
  for (const path of ['source.databaseUrl', 'target.databaseUrl']) {
    const v = getIn(fromFile, path.split('.'));
    if (sources[path]?.kind === 'file' && typeof v === 'string' && hasUrlPassword(v)) {
      warnings.push({
        severity: 'warning',
        rule: 'secret-in-file',
        path,
        message: 'contains a password, stored in the config file',
        remedy: `move it to ${envVarName(path)} (or PGPASSWORD) and keep the file free of secrets`,
        ...place(ctx, path.split('.')),
      });
    }
  }

  return { ok: errors.length === 0, config: errors.length === 0 ? config : undefined, errors, warnings, sources, file, baseDir, missingFile: false };
}

function hasUrlPassword(url: string): boolean {
  try {
    return new URL(url).password !== '';
  } catch {
    return false;
  }
}

/**
 * Loads lifeboat.yaml (or `yamlText`) with LIFEBOAT_* overrides. Throws a
 * ConfigError naming every problem; returns the config and its warnings.
 */
export function loadConfig(opts: LoadConfigOptions): LoadedConfig {
  const r = checkConfigSource(opts);
  if (!r.ok || !r.config) throw new ConfigError(r.errors, r.warnings, r.file);
  return { config: r.config, sources: r.sources, warnings: r.warnings, file: r.file, baseDir: r.baseDir };
}
