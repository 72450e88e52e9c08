#!/usr/bin/env node
// Bundles the Cloud Functions source (functions/index.ts) into a staging
// directory that the cdktf stack zips and uploads:
//
//   node scripts/build-functions.mjs [--out DIR] [--entry FILE]
//     --out    default .lifeboat/functions-build
//     --entry  default functions/index.ts
//
//   DIR/index.js       one ESM bundle (esbuild), with a source map
//   DIR/package.json   "main": "index.js", "type": "module", engines node 22, and
//                      the dependencies that cannot be bundled
//
// Google's client libraries stay outside the bundle: google-gax loads its
// .proto files from disk next to its own code at run time, which a bundle
// cannot reproduce. Cloud Build installs them from package.json, at the
// versions installed here. functions-framework too: the runtime starts it.
// Everything else (pg, zod, Lifeboat's own code) is bundled.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ENTRY_POINTS = ['lifeboatApply', 'lifeboatProbe', 'lifeboatStatus'];
/** Packages (and scopes) left out of the bundle; see the header. */
const EXTERNAL = ['@google-cloud/*', 'google-gax', '@grpc/*', 'pg-native'];

function fail(message) {
  process.stderr.write(`build-functions: ${message}\n`);
  process.exit(1);
}

function packageName(spec) {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

function installedVersion(name) {
  const file = join(ROOT, 'node_modules', name, 'package.json');
  if (!existsSync(file)) fail(`${name} is imported by the functions but not installed; run npm install`);
  return JSON.parse(readFileSync(file, 'utf8')).version;
}

let args;
try {
  args = parseArgs({ options: { out: { type: 'string' }, entry: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true }).values;
} catch (e) {
  fail(`${e.message}\nUsage: node scripts/build-functions.mjs [--out DIR] [--entry FILE]`);
}
if (args.help) {
  process.stdout.write('Usage: node scripts/build-functions.mjs [--out DIR] [--entry FILE]   (defaults .lifeboat/functions-build, functions/index.ts)\n');
  process.exit(0);
}

const entry = args.entry ? resolve(process.cwd(), args.entry) : join(ROOT, 'functions', 'index.ts');
if (!existsSync(entry)) {
  fail(
    `${relative(process.cwd(), entry) || entry} does not exist, so there is nothing to bundle.\n` +
      `It must export the Cloud Functions ${ENTRY_POINTS.join(', ')} (the apply, probe and status functions of issues #4 and #5).\n` +
      'Until then, synthesize the stack with a prebuilt directory: set "functionsDir" in the "lifeboat" context of cdktf.json, or LIFEBOAT_FUNCTIONS_DIR.',
  );
}

let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  fail('esbuild is not installed (it comes with tsx and vitest); run npm install');
}

const outDir = resolve(process.cwd(), args.out ?? join(ROOT, '.lifeboat', 'functions-build'));
rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });

const result = await esbuild.build({
  entryPoints: [entry],
  outfile: join(outDir, 'index.js'),
  bundle: true,
  platform: 'node',
  target: 'node22',
  format: 'esm',
  sourcemap: 'linked',
  metafile: true,
  logLevel: 'warning',
  external: EXTERNAL,
  nodePaths: [join(ROOT, 'node_modules')],
  // Bundled CommonJS code (pg) calls require(); ESM has none of its own.
  banner: { js: "import { createRequire as __lifeboatCreateRequire } from 'node:module'; const require = __lifeboatCreateRequire(import.meta.url);" },
}).catch((e) => fail(`esbuild failed: ${e.message}`));

const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
const dependencies = {};
for (const input of Object.values(result.metafile.inputs)) {
  for (const imp of input.imports) {
    if (!imp.external || builtins.has(imp.path) || imp.path.startsWith('node:')) continue;
    const name = packageName(imp.path);
    if (name === 'pg-native') continue; // optional in pg; never loaded unless asked for
    dependencies[name] = installedVersion(name);
  }
}

const pkg = {
  name: 'lifeboat-functions',
  version: JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version,
  private: true,
  type: 'module',
  main: 'index.js',
  engines: { node: '22' },
  dependencies: Object.fromEntries(Object.entries(dependencies).sort(([a], [b]) => a.localeCompare(b))),
};
writeFileSync(join(outDir, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');

const size = readFileSync(join(outDir, 'index.js')).length;
process.stderr.write(
  `build-functions: ${relative(process.cwd(), outDir) || outDir}/index.js (${(size / 1024).toFixed(0)} KiB), ` +
    `${Object.keys(dependencies).length} external dependencies: ${Object.keys(dependencies).join(', ') || 'none'}\n`,
);
