// `lifeboat local` as a user runs it: a child process that comes up, writes
// local.json, serves the demo app through the router, and on SIGINT stops
// every process it started.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { childPids, isProcessAlive, processesWithCwdUnder } from '../../local/local-stack.ts';
import { getStack } from '../stack/stack-env.ts';

const BIN = new URL('../../bin/lifeboat.js', import.meta.url).pathname;
const dirs: string[] = [];

afterAll(async () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  // Replication slots are per cluster: leave none behind on the shared clusters.
  for (const url of [getStack().localUrl, getStack().cloudUrl]) {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = 'lifeboat_cli_local' AND NOT active").catch(() => undefined);
    await c.end();
  }
});

describe('lifeboat local', () => {
  it('comes up, serves the app through the router, and Ctrl-C leaves nothing running', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-local-cmd-'));
    dirs.push(dir);
    const stack = getStack();
    // Existing clusters keep the test lighter; the emulators and everything else are its own.
    const child = spawn(process.execPath, [BIN, 'local', '--data-dir', dir, '--router-port', '0', '--local-url', stack.localUrl, '--cloud-url', stack.cloudUrl, '--database', 'lifeboat_cli_local', '--json'], {
      cwd: dir,
      env: { ...process.env, LIFEBOAT_LOG_LEVEL: 'warning' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const deadline = Date.now() + 150_000;
    while (!out.includes('"routerUrl"')) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`lifeboat local did not come up:\n${err}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    const info = JSON.parse(out) as { routerUrl: string; statusUrl: string; pid: number };
    expect(JSON.parse(readFileSync(join(dir, 'local.json'), 'utf8'))).toMatchObject({ routerUrl: info.routerUrl, pid: child.pid });
    expect(err).toMatch(/lifeboat local: ready: app http:\/\/127\.0\.0\.1:\d+/);
    const res = await fetch(`${info.routerUrl}/todos`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: 'from the test' }) });
    expect(res.status).toBe(201);
    expect(res.headers.get('x-lifeboat-app')).toBe('local');
    const status = (await (await fetch(info.statusUrl)).json()) as { mode: string };
    expect(status.mode).toBe('local');

    // The emulators, the three functions and the agent.
    const started = childPids(child.pid!);
    expect(started.length).toBeGreaterThanOrEqual(6);
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(err).toMatch(/lifeboat local: stopped/);
    await new Promise((r) => setTimeout(r, 500));
    expect(started.filter((pid) => isProcessAlive(pid))).toEqual([]);
    expect(processesWithCwdUnder(dir)).toEqual([]);
    expect(existsSync(join(dir, 'logs', 'agent.log'))).toBe(true);
  }, 240_000);
});
