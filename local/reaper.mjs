// Watchdog for one local stack. Plain JS with no imports from the project, so
// it runs with bare `node` whatever state the runner died in.
//
//   node reaper.mjs PARENT_PID PARENT_START_TIME|- PID_FILE TEMP_DIR
//
// Every ~500 ms: if the parent is gone (a SIGKILL, a crash: nothing ran its
// cleanup), send each process in PID_FILE its stop signal, SIGKILL the process
// groups still alive ~3 s later, delete TEMP_DIR and exit. It also exits,
// doing nothing, when TEMP_DIR is gone: the stack was stopped normally.
// PID_FILE lines: "PID SIGNAL STARTTIME NAME", STARTTIME "-" when unknown.
import fs from 'node:fs';

const [parentArg, parentStart, pidFile, tempDir] = process.argv.slice(2);
const parentPid = Number(parentArg);
if (!Number.isInteger(parentPid) || parentPid <= 0 || !pidFile || !tempDir) {
  process.stderr.write('usage: node reaper.mjs PARENT_PID PARENT_START_TIME|- PID_FILE TEMP_DIR\n');
  process.exit(2);
}

const POLL_MS = 500;
const GRACE_MS = 3000;
const hasProc = fs.existsSync('/proc/self/stat');

function procStat(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0], startTime: fields[19] };
  } catch {
    return undefined;
  }
}

// A zombie counts as dead, and so does a new process that reused the pid.
function alive(pid, startTime) {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if (err.code !== 'EPERM') return false;
  }
  if (!hasProc) return true;
  const stat = procStat(pid);
  if (!stat || stat.state === 'Z' || stat.state === 'X') return false;
  return !startTime || startTime === '-' || stat.startTime === startTime;
}

function signal(pid, sig) {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

function readPids() {
  let text = '';
  try {
    text = fs.readFileSync(pidFile, 'utf8');
  } catch {
    return [];
  }
  const out = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+) (SIG[A-Z]+) (\S+)/.exec(line);
    if (m) out.push({ pid: Number(m[1]), sig: m[2], startTime: m[3] });
  }
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function reap() {
  const victims = readPids().filter((v) => alive(v.pid, v.startTime));
  for (const v of victims) signal(v.pid, v.sig);
  const deadline = Date.now() + GRACE_MS;
  let left = victims;
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(100);
    left = left.filter((v) => alive(v.pid, v.startTime));
  }
  for (const v of left) {
    // Each component leads its own process group: take its children too.
    try {
      process.kill(-v.pid, 'SIGKILL');
    } catch {
      signal(v.pid, 'SIGKILL');
    }
  }
  fs.rmSync(tempDir, { recursive: true, force: true });
}

// Normal stop sends SIGTERM: just go.
process.on('SIGTERM', () => process.exit(0));

for (;;) {
  if (!fs.existsSync(tempDir)) process.exit(0);
  if (!alive(parentPid, parentStart)) {
    await reap();
    process.exit(0);
  }
  await sleep(POLL_MS);
}
