// Nothing is left behind: a separate stack in a child process is killed with
// SIGTERM (its handlers clean up) and with SIGKILL (its reaper cleans up), and
// a dead run's dir is swept by the next start.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import {
  OWNER_FILE,
  PID_FILE,
  STACK_DIR_PREFIX,
  formatPidLine,
  isProcessAlive,
  processStartTime,
  processesWithCwdUnder,
  sweepStaleStacks,
} from './local-stack.ts';
import { getStack } from './stack-env.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const fixture = fileURLToPath(new URL('./fixtures/start-and-wait.ts', import.meta.url));

interface ChildStack {
  child: ChildProcess;
  tempDir: string;
  pids: Record<string, number>;
  stderr: () => string;
}

const cleanups: Array<() => void> = [];

afterEach(() => {
  // A failed check must not leave the child's stack running for the rest of the run.
  for (const cleanup of cleanups.splice(0)) cleanup();
});

async function startChildStack(): Promise<ChildStack> {
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, '--exit-with-stdin'], {
    cwd: repoRoot,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child stack did not start within 90s; its stderr:\n${stderr}`)), 90_000);
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      const nl = stdout.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(stdout.slice(0, nl));
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`child stack exited (${signal ?? `code ${code}`}) before it was ready; its stderr:\n${stderr}`));
    });
  });
  const { tempDir, pids } = JSON.parse(line) as { tempDir: string; pids: Record<string, number> };
  cleanups.push(() => {
    child.kill('SIGKILL');
    for (const pid of Object.values(pids)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    fs.rmSync(tempDir, { recursive: true, force: true });
  });
  return { child, tempDir, pids, stderr: () => stderr };
}

function leftovers(s: ChildStack): string[] {
  const found: string[] = [];
  for (const [name, pid] of Object.entries(s.pids)) if (isProcessAlive(pid)) found.push(`${name} (pid ${pid})`);
  for (const pid of processesWithCwdUnder(s.tempDir)) found.push(`pid ${pid} running in the stack dir`);
  if (fs.existsSync(s.tempDir)) found.push(`the dir ${s.tempDir}`);
  return found;
}

async function expectAllGone(s: ChildStack, withinMs: number): Promise<number> {
  const t0 = Date.now();
  let left = leftovers(s);
  while (left.length > 0 && Date.now() - t0 < withinMs) {
    await new Promise((r) => setTimeout(r, 200));
    left = leftovers(s);
  }
  expect(left, `left behind after ${withinMs / 1000}s; child stderr:\n${s.stderr()}`).toEqual([]);
  return Date.now() - t0;
}

function expectParentStackAlive(): void {
  const { pids } = getStack();
  const dead = Object.entries(pids).filter(([, pid]) => !isProcessAlive(pid));
  expect(dead, "the run's own stack must be untouched").toEqual([]);
}

describe('no process or dir is left behind', () => {
  it('SIGTERM to the runner: its signal handler stops everything and removes the dir', async () => {
    const s = await startChildStack();
    expect(Object.values(s.pids).every((pid) => isProcessAlive(pid))).toBe(true);
    const exited = new Promise<NodeJS.Signals | number | null>((r) =>
      s.child.once('exit', (code, signal) => r(signal ?? code)),
    );
    s.child.kill('SIGTERM');
    await expectAllGone(s, 15_000);
    // The handler re-raises the signal, so the runner still dies "by SIGTERM".
    expect(await exited).toBe('SIGTERM');
    expectParentStackAlive();
  });

  it('SIGKILL to the runner: the reaper kills every recorded pid and removes the dir', async () => {
    const s = await startChildStack();
    s.child.kill('SIGKILL');
    await expectAllGone(s, 15_000);
    expectParentStackAlive();
  });

  it("a later start sweeps a dead run's dir: kills what it recorded, removes the dir", async () => {
    // A pid that is certainly dead: a process that already exited and was reaped.
    const deadOwner = spawnSync('true').pid;
    const victim = spawn('sleep', ['300'], { detached: true, stdio: 'ignore' });
    victim.unref();
    const victimPid = victim.pid!;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), STACK_DIR_PREFIX));
    cleanups.push(() => {
      victim.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    });
    fs.writeFileSync(path.join(dir, OWNER_FILE), JSON.stringify({ pid: deadOwner, createdAt: new Date().toISOString() }));
    fs.writeFileSync(
      path.join(dir, PID_FILE),
      formatPidLine({ name: 'sleeper', pid: victimPid, stopSignal: 'SIGTERM', startTime: processStartTime(victimPid) }),
    );

    const lines: string[] = [];
    const removed = await sweepStaleStacks((l) => lines.push(l));
    expect(removed).toContain(dir);
    expect(fs.existsSync(dir)).toBe(false);
    await new Promise((r) => setTimeout(r, 200)); // let the event loop reap the killed child
    expect(isProcessAlive(victimPid)).toBe(false);
    expect(lines.join('\n')).toContain(`owner pid ${deadOwner} is gone; killed 1 leftover process`);
    expectParentStackAlive();
  });
});
