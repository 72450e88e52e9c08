#!/usr/bin/env node
// `npm test` and `npm start` must work as the very first command on a fresh
// clone. This file uses nothing but Node built-ins: it installs what is
// missing (npm packages, then system prerequisites), then hands over.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const [what, ...rest] = process.argv.slice(2);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

function step(message) {
  process.stderr.write(`bootstrap: ${message}\n`);
}

// npm packages: install when node_modules is missing or older than the lock.
const lock = join(root, 'package-lock.json');
const installed = join(root, 'node_modules', '.package-lock.json');
if (!existsSync(installed) || (existsSync(lock) && statSync(lock).mtimeMs > statSync(installed).mtimeMs)) {
  step('node_modules missing or out of date: running npm ci');
  if (run('npm', ['ci', '--no-audit', '--no-fund']) !== 0) {
    step('npm ci failed; see above. Fix it, then run the command again.');
    process.exit(1);
  }
}

// System prerequisites (PostgreSQL 15, Java, the gcloud emulators).
if (run('bash', [join(root, 'scripts', 'install-prereqs.sh')]) !== 0) {
  step('a prerequisite is missing; see the line above for how to install it.');
  process.exit(1);
}

const bin = (name) => join(root, 'node_modules', '.bin', name);
switch (what) {
  case 'test': {
    step('typecheck (tsc --noEmit)');
    if (run(bin('tsc'), ['--noEmit']) !== 0) process.exit(1);
    step('tests (vitest run: unit, then the real local stack)');
    const summaryFile = join(tmpdir(), `lifeboat-test-summary-${process.pid}.txt`);
    const status = run(bin('vitest'), ['run', ...rest], {
      env: { ...process.env, LIFEBOAT_TEST_SUMMARY_FILE: summaryFile },
    });
    // Repeat the plain count line last, where CI log readers look for it.
    if (existsSync(summaryFile)) {
      process.stdout.write(readFileSync(summaryFile, 'utf8'));
      rmSync(summaryFile, { force: true });
    }
    process.exit(status);
    break;
  }
  case 'start':
    process.exit(run(process.execPath, [join(root, 'bin', 'lifeboat.js'), 'local', ...rest]));
    break;
  default:
    step(`unknown target "${what}": use "test" or "start"`);
    process.exit(2);
}
