// The real local stack: two PostgreSQL 15 clusters ("local" plays the app's
// database, "cloud" plays Cloud SQL), the Pub/Sub emulator and the Firestore
// emulator, each one child process on a free port, all under one temp dir.
//
// Nothing may outlive the process that started it:
//   - stop() shuts each component down (postgres: SIGINT = fast shutdown;
//     java: SIGTERM) and escalates to SIGKILL of the process group;
//   - SIGINT/SIGTERM and process exit kill the children synchronously
//     (vitest answers SIGINT with process.exit(), so the 'exit' hook matters);
//   - a detached reaper (reaper.mjs) cleans up after a SIGKILLed runner;
//   - the next start sweeps stack dirs whose owner died anyway.
// Used by the vitest 'stack' project, and meant to be reused by local mode and
// the bench scripts, hence the per-component starters.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import {
  findFirestoreJar,
  findJava,
  findPgBin,
  findPrerequisites,
  findPubsubJar,
  postgresRunAs,
  realLookup,
  type PgBinaries,
  type Prerequisites,
  type RunAs,
} from './prerequisites.ts';

/** Stack temp dirs are os.tmpdir()/lifeboat-stack-XXXXXX, holding these two records. */
export const STACK_DIR_PREFIX = 'lifeboat-stack-';
/** JSON {pid, startTime?, createdAt} of the process that owns the stack. */
export const OWNER_FILE = 'owner.json';
/** One line per started process, see formatPidLine. */
export const PID_FILE = 'pids';
const REAPER = fileURLToPath(new URL('./reaper.mjs', import.meta.url));

const DEFAULT_READY_TIMEOUT_MS = 60_000;
const PG_STOP_TIMEOUT_MS = 15_000;
const JAVA_STOP_TIMEOUT_MS = 5_000;
/** Grace before SIGKILL when cleaning up synchronously from a signal or exit hook. */
const SYNC_GRACE_MS = 5_000;
const MAX_PORT_ATTEMPTS = 4;

export type Logger = (line: string) => void;
const stderrLogger: Logger = (line) => process.stderr.write(`${line}\n`);

export interface StackInfo {
  localUrl: string;
  cloudUrl: string;
  /** host:port, the format of PUBSUB_EMULATOR_HOST. */
  pubsubEmulatorHost: string;
  /** host:port, the format of FIRESTORE_EMULATOR_HOST. */
  firestoreEmulatorHost: string;
  tempDir: string;
  /** The process that started the stack (and whose death the reaper watches). */
  ownerPid: number;
  pids: {
    localPostgres: number;
    cloudPostgres: number;
    pubsub: number;
    firestore: number;
    reaper: number;
  };
  logFiles: {
    localPostgres: string;
    cloudPostgres: string;
    pubsub: string;
    firestore: string;
  };
}

// ---------------------------------------------------------------------------
// Process inspection

interface ProcStat {
  state: string;
  startTime: string;
}

function readProcStat(pid: number): ProcStat | undefined {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); starttime is field 22.
  return { state: fields[0] ?? '?', startTime: fields[19] ?? '' };
}

const hasProc = fs.existsSync('/proc/self/stat');

function threadCount(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).length;
  } catch {
    return 0;
  }
}

/**
 * A token that tells this process from a later one that reuses its pid (start
 * time since boot, in clock ticks). Undefined where /proc is missing.
 */
export function processStartTime(pid: number): string | undefined {
  return readProcStat(pid)?.startTime;
}

/**
 * Whether pid is a running process. A zombie counts as dead: a child that
 * exited while the event loop was blocked (a synchronous cleanup) is not
 * reaped yet, and kill(pid, 0) still succeeds on it. With startTime, a
 * different process that reused the pid also counts as dead.
 */
export function isProcessAlive(pid: number, startTime?: string): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (hasProc) {
    const stat = readProcStat(pid);
    if (!stat) return false;
    // A zombie leader with live threads is still a running process.
    if ((stat.state === 'Z' || stat.state === 'X') && threadCount(pid) <= 1) return false;
    return startTime === undefined || startTime === '' || stat.startTime === startTime;
  }
  try {
    const state = execFileSync('ps', ['-o', 'stat=', '-p', String(pid)], { encoding: 'utf8' }).trim();
    return state !== '' && !state.startsWith('Z');
  } catch {
    return false;
  }
}

/**
 * Pids of processes whose working directory is inside dir (Linux only; empty
 * elsewhere). Every PostgreSQL process, backends included, runs in its data
 * directory, and the emulators run in the stack's temp dir, so this finds
 * stragglers that no pid list knows about.
 */
export function processesWithCwdUnder(dir: string): number[] {
  if (!hasProc) return [];
  const found: number[] = [];
  const prefix = dir.endsWith(path.sep) ? dir : dir + path.sep;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cwd: string;
    try {
      cwd = fs.readlinkSync(`/proc/${entry}/cwd`).replace(/ \(deleted\)$/, '');
    } catch {
      continue;
    }
    const pid = Number(entry);
    if ((cwd === dir || cwd.startsWith(prefix)) && isProcessAlive(pid)) found.push(pid);
  }
  return found;
}

/** Direct children of pid (Linux only; empty elsewhere). */
export function childPids(pid: number): number[] {
  if (!hasProc) return [];
  const found: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) found.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // ESRCH: already gone.
  }
}

/** Signals the process group led by pid (every component is spawned detached, so it leads one). */
function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    signalPid(pid, signal);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Resolves true if p settles within ms, else false; never leaves a timer behind to hold the process open. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)}s`;

// ---------------------------------------------------------------------------
// Managed child processes and the synchronous cleanup hooks

export interface SpawnedProcess {
  name: string;
  pid: number;
  /** What stops it cleanly: SIGINT for postgres (fast shutdown), SIGTERM for java. */
  stopSignal: NodeJS.Signals;
  startTime: string | undefined;
}

interface ManagedProcess extends SpawnedProcess {
  child: ChildProcess;
  logFile: string;
  exited: Promise<void>;
  hasExited: () => boolean;
  exitDescription: () => string;
}

const liveProcesses = new Set<ManagedProcess>();
/** Per-stack synchronous cleanups (kill the reaper, remove the temp dir). */
const syncCleanups = new Set<() => void>();
let handlersInstalled = false;

function killAllSync(procs: readonly SpawnedProcess[], graceMs: number): void {
  for (const p of procs) signalPid(p.pid, p.stopSignal);
  const deadline = Date.now() + graceMs;
  let alive = procs.filter((p) => isProcessAlive(p.pid, p.startTime));
  while (alive.length > 0 && Date.now() < deadline) {
    sleepSync(50);
    alive = alive.filter((p) => isProcessAlive(p.pid, p.startTime));
  }
  // The leaders are unreaped zombies at worst (the event loop is blocked),
  // so their pids still name their groups: sweep up any stragglers.
  for (const p of procs) signalGroup(p.pid, 'SIGKILL');
}

function cleanupSync(): void {
  const procs = [...liveProcesses];
  liveProcesses.clear();
  if (procs.length > 0) killAllSync(procs, SYNC_GRACE_MS);
  const cleanups = [...syncCleanups];
  syncCleanups.clear();
  for (const cleanup of cleanups) {
    try {
      cleanup();
    } catch {
      // Best effort: the process is going away.
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  cleanupSync();
  uninstallHandlers();
  // If nobody else handles this signal, end the way the default action would.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

// Not SIGHUP: a listener would override nohup's "ignore". Killed by a hangup,
// the process leaves the cleanup to the reaper.
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupSync);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function uninstallHandlers(): void {
  if (!handlersInstalled) return;
  handlersInstalled = false;
  process.off('exit', cleanupSync);
  for (const s of SIGNALS) process.off(s, onSignal);
}

function maybeUninstallHandlers(): void {
  if (liveProcesses.size === 0 && syncCleanups.size === 0) uninstallHandlers();
}

function readTail(file: string, lines = 30): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const len = Math.min(size, 16_384);
      const buf = Buffer.alloc(len);
      fs.readSync(fd, buf, 0, len, size - len);
      return buf.toString('utf8').split('\n').slice(-lines - 1).join('\n').trimEnd();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '(no log)';
  }
}

/** The log's last lines since offset (this start attempt), or of the whole file if that part is empty. */
function tailSince(file: string, offset: number, lines = 30): string {
  const recent = readFrom(file, offset).trimEnd();
  return recent === '' ? readTail(file, lines) : recent.split('\n').slice(-lines).join('\n');
}

function readFrom(file: string, offset: number): string {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      if (size <= offset) return '';
      const buf = Buffer.alloc(Math.min(size - offset, 1 << 20));
      fs.readSync(fd, buf, 0, buf.length, offset);
      return buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return '';
  }
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

interface SpawnOptions {
  name: string;
  command: string;
  args: string[];
  cwd: string;
  logFile: string;
  stopSignal: NodeJS.Signals;
  runAs?: RunAs | undefined;
  env?: NodeJS.ProcessEnv;
  onSpawn?: ((p: SpawnedProcess) => void) | undefined;
}

async function spawnManaged(o: SpawnOptions): Promise<ManagedProcess> {
  const fd = fs.openSync(o.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(o.command, o.args, {
      cwd: o.cwd,
      env: o.env ?? process.env,
      // Output goes straight to the log file: no pipe to drain, nothing lost if we die.
      stdio: ['ignore', fd, fd],
      // Own process group, so escalation can SIGKILL the whole tree (postgres backends).
      detached: true,
      ...(o.runAs ? { uid: o.runAs.uid, gid: o.runAs.gid } : {}),
    });
  } finally {
    fs.closeSync(fd);
  }
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (err) =>
      reject(new Error(`${o.name}: could not start ${o.command}: ${err.message}`, { cause: err })),
    );
  });
  // Later errors (a failed kill) must not crash the runner; exits are handled below.
  child.on('error', () => {});
  const pid = child.pid!;
  let exitInfo: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = signal ? `killed by ${signal}` : `exit code ${code}`;
      liveProcesses.delete(managed);
      resolve();
    });
  });
  const managed: ManagedProcess = {
    name: o.name,
    pid,
    stopSignal: o.stopSignal,
    startTime: processStartTime(pid),
    child,
    logFile: o.logFile,
    exited,
    hasExited: () => exitInfo !== undefined,
    exitDescription: () => exitInfo ?? 'running',
  };
  liveProcesses.add(managed);
  installHandlers();
  o.onSpawn?.(managed);
  return managed;
}

async function stopManaged(p: ManagedProcess, timeoutMs: number): Promise<void> {
  if (!p.hasExited()) {
    signalPid(p.pid, p.stopSignal);
    if (!(await settlesWithin(p.exited, timeoutMs))) {
      signalGroup(p.pid, 'SIGKILL');
      await p.exited;
    }
  }
  maybeUninstallHandlers();
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('freePort: no port assigned'))));
    });
  });
}

const BIND_FAILURE = /address already in use|could not bind|BindException|failed to bind/i;

class PortInUseError extends Error {}

/**
 * Polls `probe` until it returns true, failing early if the process exits or
 * its log reports a bind failure, and with the log's tail on timeout.
 */
async function waitReady(
  p: ManagedProcess,
  what: string,
  logOffset: number,
  timeoutMs: number,
  probe: () => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (p.hasExited() || BIND_FAILURE.test(readFrom(p.logFile, logOffset))) {
      const bind = BIND_FAILURE.test(readFrom(p.logFile, logOffset));
      if (!p.hasExited()) await stopManaged(p, 2_000);
      const msg =
        `${what} ${bind ? 'could not bind its port' : `exited (${p.exitDescription()})`} before it was ready; ` +
        `last lines of ${p.logFile}:\n${tailSince(p.logFile, logOffset)}`;
      throw bind ? new PortInUseError(msg) : new Error(msg);
    }
    if (await probe()) return;
    if (Date.now() > deadline) {
      await stopManaged(p, 2_000);
      throw new Error(
        `${what} was not ready within ${seconds(timeoutMs)}; last lines of ${p.logFile}:\n${tailSince(p.logFile, logOffset)}`,
      );
    }
    await sleep(100);
  }
}

/** Runs start(port) on a free port, retrying on a fresh one if it was taken meanwhile. */
async function onFreePort<T>(fixed: number | undefined, start: (port: number) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const port = fixed ?? (await freePort());
    try {
      return await start(port);
    } catch (err) {
      if (!(err instanceof PortInUseError) || fixed !== undefined || attempt >= MAX_PORT_ATTEMPTS) throw err;
    }
  }
}

// ---------------------------------------------------------------------------
// PostgreSQL

export interface PostgresClusterOptions {
  /** Names the cluster in logs and errors, e.g. "local". */
  name: string;
  /** Data directory. initdb runs unless it already holds PG_VERSION. */
  dir: string;
  /** Default: a free port. */
  port?: number;
  /** Extra or overriding server settings, passed as -c name=value. */
  settings?: Record<string, string | number | boolean>;
  /** True for data that must survive a crash (local mode): keeps fsync on. Default false. */
  durable?: boolean;
  /** Default: `${dir}.log`. */
  logFile?: string;
  readyTimeoutMs?: number;
  stopTimeoutMs?: number;
  /** Default: located by findPgBin. */
  pg?: PgBinaries;
  /** OS user for initdb and the server; default: `postgres` when running as root, else yourself. */
  runAs?: RunAs | undefined;
  log?: Logger;
  onSpawn?: (p: SpawnedProcess) => void;
}

export interface PostgresCluster {
  name: string;
  pid: number;
  port: number;
  /** postgres://postgres@127.0.0.1:PORT/postgres (trust auth). */
  url: string;
  dir: string;
  logFile: string;
  stop(): Promise<void>;
}

function postgresEnv(): NodeJS.ProcessEnv {
  // PGPORT, PGDATA and friends would otherwise leak into initdb and the server.
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  // English, byte-order messages: the bind-failure check reads the log.
  env.LC_ALL = 'C';
  env.LANG = 'C';
  return env;
}

async function runInitdb(o: PostgresClusterOptions, pgBin: PgBinaries, logFile: string): Promise<number> {
  const t0 = performance.now();
  const args = ['-D', o.dir, '--auth=trust', '-U', 'postgres', '--encoding=UTF8', '--locale=C'];
  if (!o.durable) args.push('--no-sync');
  const offset = fileSize(logFile);
  const p = await spawnManaged({
    name: `${o.name} initdb`,
    command: pgBin.initdb,
    args,
    cwd: path.dirname(o.dir),
    logFile,
    stopSignal: 'SIGTERM',
    runAs: o.runAs,
    env: postgresEnv(),
    onSpawn: o.onSpawn,
  });
  await p.exited;
  maybeUninstallHandlers();
  if (p.exitDescription() !== 'exit code 0') {
    const out = readFrom(logFile, offset);
    const hint = /permission denied/i.test(out)
      ? `\n(the ${o.runAs?.user ?? 'current'} user must be able to enter every parent directory of ${o.dir})`
      : '';
    throw new Error(
      `initdb for the ${o.name} cluster failed (${p.exitDescription()}) in ${o.dir}; ` +
        `last lines of ${logFile}:\n${tailSince(logFile, offset)}${hint}`,
    );
  }
  return performance.now() - t0;
}

async function acceptsConnections(port: number): Promise<boolean> {
  const client = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'postgres',
    database: 'postgres',
    connectionTimeoutMillis: 2_000,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

export async function startPostgresCluster(o: PostgresClusterOptions): Promise<PostgresCluster> {
  const t0 = performance.now();
  const log = o.log ?? stderrLogger;
  const pgBin = o.pg ?? findPgBin(realLookup());
  const runAs = 'runAs' in o ? o.runAs : postgresRunAs(realLookup());
  const opts = { ...o, runAs };
  const logFile = o.logFile ?? `${o.dir}.log`;
  let initMs: number | undefined;
  if (!fs.existsSync(path.join(o.dir, 'PG_VERSION'))) {
    fs.mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    if (runAs) fs.chownSync(o.dir, runAs.uid, runAs.gid);
    initMs = await runInitdb(opts, pgBin, logFile);
  }
  const settings: Record<string, string | number | boolean> = {
    listen_addresses: '127.0.0.1',
    // The socket lives with the data, not in /var/run/postgresql (may not exist or be writable).
    unix_socket_directories: o.dir,
    wal_level: 'logical',
    max_replication_slots: 10,
    max_wal_senders: 10,
    // Idle slots otherwise pin WAL without bound (five idle slots kept 544 MB).
    max_slot_wal_keep_size: '1GB',
    shared_buffers: '32MB',
    ...(o.durable ? {} : { fsync: 'off', full_page_writes: 'off' }),
    ...o.settings,
  };
  const readyTimeoutMs = o.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const what = `${o.name} postgres`;
  const { proc, port } = await onFreePort(o.port, async (port) => {
    const args = ['-D', o.dir, '-c', `port=${port}`];
    for (const [k, v] of Object.entries(settings)) {
      if (k !== 'port') args.push('-c', `${k}=${String(v)}`);
    }
    const offset = fileSize(logFile);
    const proc = await spawnManaged({
      name: what,
      command: pgBin.postgres,
      args,
      cwd: o.dir,
      logFile,
      stopSignal: 'SIGINT',
      runAs,
      env: postgresEnv(),
      onSpawn: o.onSpawn,
    });
    await waitReady(proc, `${what} (pid ${proc.pid}, port ${port})`, offset, readyTimeoutMs, () =>
      acceptsConnections(port),
    );
    return { proc, port };
  });
  log(
    `stack: ${what} ready on :${port} in ${seconds(performance.now() - t0)}` +
      (initMs === undefined ? ' (existing data dir)' : ` (initdb ${seconds(initMs)})`),
  );
  const stopTimeoutMs = o.stopTimeoutMs ?? PG_STOP_TIMEOUT_MS;
  return {
    name: o.name,
    pid: proc.pid,
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    dir: o.dir,
    logFile,
    stop: () => stopManaged(proc, stopTimeoutMs),
  };
}

// ---------------------------------------------------------------------------
// Java emulators

export interface EmulatorOptions {
  /** Working directory, and where the log goes by default. */
  dir: string;
  port?: number;
  logFile?: string;
  java?: string;
  /** Default: located under the gcloud SDK. */
  jar?: string;
  /** Extra JVM options, e.g. ['-Xmx512m']. */
  javaOptions?: string[];
  readyTimeoutMs?: number;
  stopTimeoutMs?: number;
  log?: Logger;
  onSpawn?: (p: SpawnedProcess) => void;
}

export interface Emulator {
  name: string;
  pid: number;
  port: number;
  /** 127.0.0.1:PORT, the format of the *_EMULATOR_HOST variables. */
  host: string;
  logFile: string;
  stop(): Promise<void>;
}

export interface FirestoreEmulator extends Emulator {
  websocketPort: number;
}

async function answersOk(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000) });
    // Both emulators answer GET / with exactly "Ok"; anything else is not them.
    return res.ok && (await res.text()).trim() === 'Ok';
  } catch {
    return false;
  }
}

// No hsperfdata files in /tmp: they would outlive a SIGKILLed JVM.
const BASE_JVM_OPTIONS = ['-XX:-UsePerfData'];

async function startEmulator(
  name: string,
  o: EmulatorOptions,
  defaultLog: string,
  argsFor: (port: number, extraPort: number) => string[],
): Promise<{ proc: ManagedProcess; port: number; extraPort: number }> {
  const t0 = performance.now();
  const log = o.log ?? stderrLogger;
  const logFile = o.logFile ?? path.join(o.dir, defaultLog);
  const java = o.java ?? findJava(realLookup());
  const readyTimeoutMs = o.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const result = await onFreePort(o.port, async (port) => {
    const extraPort = await freePort();
    const offset = fileSize(logFile);
    const proc = await spawnManaged({
      name,
      command: java,
      args: [...BASE_JVM_OPTIONS, ...(o.javaOptions ?? []), ...argsFor(port, extraPort)],
      cwd: o.dir,
      logFile,
      stopSignal: 'SIGTERM',
      onSpawn: o.onSpawn,
    });
    await waitReady(proc, `${name} (pid ${proc.pid}, port ${port})`, offset, readyTimeoutMs, () => answersOk(port));
    return { proc, port, extraPort };
  });
  log(`stack: ${name} ready on :${result.port} in ${seconds(performance.now() - t0)}`);
  return result;
}

export async function startPubsubEmulator(o: EmulatorOptions): Promise<Emulator> {
  const jar = o.jar ?? findPubsubJar(realLookup());
  const name = 'pubsub emulator';
  const { proc, port } = await startEmulator(name, o, 'pubsub.log', (port) => [
    '-jar',
    jar,
    '--host=127.0.0.1',
    `--port=${port}`,
  ]);
  const stopTimeoutMs = o.stopTimeoutMs ?? JAVA_STOP_TIMEOUT_MS;
  return {
    name,
    pid: proc.pid,
    port,
    host: `127.0.0.1:${port}`,
    logFile: proc.logFile,
    stop: () => stopManaged(proc, stopTimeoutMs),
  };
}

export async function startFirestoreEmulator(o: EmulatorOptions & { websocketPort?: number }): Promise<FirestoreEmulator> {
  const jar = o.jar ?? findFirestoreJar(realLookup());
  const name = 'firestore emulator';
  let websocketPort = 0;
  const { proc, port } = await startEmulator(name, o, 'firestore.log', (port, extraPort) => {
    websocketPort = o.websocketPort ?? extraPort;
    return [
      // English log lines regardless of the machine's locale.
      '-Duser.language=en',
      '-cp',
      jar,
      'com.google.cloud.datastore.emulator.firestore.CloudFirestore',
      '--host=127.0.0.1',
      `--port=${port}`,
      `--websocket_port=${websocketPort}`,
    ];
  });
  const stopTimeoutMs = o.stopTimeoutMs ?? JAVA_STOP_TIMEOUT_MS;
  return {
    name,
    pid: proc.pid,
    port,
    websocketPort,
    host: `127.0.0.1:${port}`,
    logFile: proc.logFile,
    stop: () => stopManaged(proc, stopTimeoutMs),
  };
}

// ---------------------------------------------------------------------------
// Stale stacks, the pid file and the reaper

interface OwnerRecord {
  pid: number;
  startTime?: string;
  createdAt: string;
}

interface PidRecord {
  pid: number;
  signal: NodeJS.Signals;
  startTime: string | undefined;
  name: string;
}

/** One line per process: "PID SIGNAL STARTTIME NAME" (STARTTIME "-" when unknown). Shared with reaper.mjs. */
export function formatPidLine(p: SpawnedProcess): string {
  return `${p.pid} ${p.stopSignal} ${p.startTime ?? '-'} ${p.name}\n`;
}

/**
 * Lists a process the stack did not start (a test worker, say) in the stack's
 * pid file, so that if the stack's owner dies without stop(), its exit hook or
 * the reaper sends it `stopSignal` with the stack's own processes. A normal
 * stop() leaves it alone.
 */
export function recordInStack(tempDir: string, p: { name: string; pid: number; stopSignal: NodeJS.Signals }): void {
  const line = formatPidLine({ ...p, startTime: processStartTime(p.pid) });
  try {
    fs.appendFileSync(path.join(tempDir, PID_FILE), line);
  } catch (err) {
    // The stack is already gone or stopping: nothing left to be cleaned up with.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

function readPidFile(file: string): PidRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const records: PidRecord[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+) (SIG[A-Z]+) (\S+) (.*)$/.exec(line);
    if (!m) continue;
    records.push({
      pid: Number(m[1]),
      signal: m[2] as NodeJS.Signals,
      startTime: m[3] === '-' ? undefined : m[3],
      name: m[4]!,
    });
  }
  return records;
}

async function killRecorded(records: PidRecord[], graceMs: number): Promise<number> {
  const alive = records.filter((r) => isProcessAlive(r.pid, r.startTime));
  for (const r of alive) signalPid(r.pid, r.signal);
  const deadline = Date.now() + graceMs;
  let left = alive;
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(100);
    left = left.filter((r) => isProcessAlive(r.pid, r.startTime));
  }
  for (const r of left) signalGroup(r.pid, 'SIGKILL');
  return alive.length;
}

/**
 * Removes stack dirs left by runs that died without cleaning up (their owner
 * pid is gone), killing whatever they recorded. Returns the dirs removed.
 */
export async function sweepStaleStacks(log: Logger = stderrLogger, tmp = os.tmpdir()): Promise<string[]> {
  let entries: string[];
  try {
    entries = fs.readdirSync(tmp).filter((e) => e.startsWith(STACK_DIR_PREFIX));
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const entry of entries) {
    const dir = path.join(tmp, entry);
    let owner: OwnerRecord | undefined;
    try {
      owner = JSON.parse(fs.readFileSync(path.join(dir, OWNER_FILE), 'utf8')) as OwnerRecord;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && !(err instanceof SyntaxError)) continue; // another user's: not ours to judge
      // No owner record: a start that died within its first milliseconds. Leave young ones alone.
      try {
        if (Date.now() - fs.statSync(dir).mtimeMs < 10 * 60_000) continue;
      } catch {
        continue;
      }
    }
    if (owner && isProcessAlive(owner.pid, owner.startTime)) continue;
    const killed = await killRecorded(readPidFile(path.join(dir, PID_FILE)), 3_000);
    try {
      fs.rmSync(dir, { recursive: true, force: true });
      removed.push(dir);
      log(
        `stack: removed stale ${dir} (owner pid ${owner?.pid ?? 'unknown'} is gone` +
          (killed > 0 ? `; killed ${killed} leftover process${killed === 1 ? '' : 'es'})` : ')'),
      );
    } catch (err) {
      log(`stack: could not remove stale ${dir}: ${(err as Error).message}`);
    }
  }
  return removed;
}

function spawnReaper(tempDir: string, pidFile: string): ChildProcess {
  const child = spawn(
    process.execPath,
    [REAPER, String(process.pid), processStartTime(process.pid) ?? '-', pidFile, tempDir],
    // Own process group and no stdio: a Ctrl-C or a closed terminal must not take it down with us.
    { detached: true, stdio: 'ignore' },
  );
  child.unref();
  return child;
}

// ---------------------------------------------------------------------------
// The whole stack

export interface LocalStackOptions {
  /**
   * Keep the clusters' data here (local mode): DIR/local and DIR/cloud, reused
   * when they already hold PG_VERSION, kept on stop, and fsync stays on.
   * Default: inside the temp dir, deleted on stop.
   */
  persistentDir?: string;
  /** Default: progress lines on stderr. */
  log?: Logger;
  readyTimeoutMs?: number;
  /** Extra settings for both clusters. */
  postgresSettings?: Record<string, string | number | boolean>;
  javaOptions?: string[];
  /** Default: located by findPrerequisites (which names everything missing at once). */
  prerequisites?: Prerequisites;
  /** Default true: remove dirs of earlier runs that died without cleaning up. */
  sweepStale?: boolean;
}

export interface LocalStack {
  info: StackInfo;
  local: PostgresCluster;
  cloud: PostgresCluster;
  pubsub: Emulator;
  firestore: FirestoreEmulator;
  /** Every pid the stack started, the reaper included. */
  pids(): number[];
  /** Stops everything and removes the temp dir; idempotent. */
  stop(): Promise<void>;
}

export async function startLocalStack(opts: LocalStackOptions = {}): Promise<LocalStack> {
  const t0 = performance.now();
  const log = opts.log ?? stderrLogger;
  const pre = opts.prerequisites ?? findPrerequisites();
  if (opts.sweepStale !== false) await sweepStaleStacks(log);

  const tempDir = fs.mkdtempSync(path.join(os.tmpdir(), STACK_DIR_PREFIX));
  // The postgres OS user (when we are root) must be able to enter it.
  fs.chmodSync(tempDir, 0o755);
  const owner: OwnerRecord = { pid: process.pid, createdAt: new Date().toISOString() };
  const ownerStart = processStartTime(process.pid);
  if (ownerStart) owner.startTime = ownerStart;
  fs.writeFileSync(path.join(tempDir, OWNER_FILE), JSON.stringify(owner));
  const pidFile = path.join(tempDir, PID_FILE);
  fs.writeFileSync(pidFile, '');
  const onSpawn = (p: SpawnedProcess) => fs.appendFileSync(pidFile, formatPidLine(p));

  const reaper = spawnReaper(tempDir, pidFile);
  const reaperPid = reaper.pid!;
  const reaperExited = new Promise<void>((resolve) => {
    if (reaper.exitCode !== null || reaper.signalCode !== null) resolve();
    else reaper.once('exit', () => resolve());
  });
  const cleanupDirSync = () => {
    // Our own children are dead by now; what is still alive in the pid file
    // was recorded by others (recordInStack).
    for (const r of readPidFile(pidFile)) if (isProcessAlive(r.pid, r.startTime)) signalPid(r.pid, r.signal);
    signalPid(reaperPid, 'SIGTERM');
    fs.rmSync(tempDir, { recursive: true, force: true });
  };
  syncCleanups.add(cleanupDirSync);
  installHandlers();

  const dataDir = (name: string) => path.join(opts.persistentDir ?? tempDir, name);
  if (opts.persistentDir) fs.mkdirSync(opts.persistentDir, { recursive: true });
  const common = { log, onSpawn, readyTimeoutMs: opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS };
  const cluster = (name: string) =>
    startPostgresCluster({
      ...common,
      name,
      dir: dataDir(name),
      logFile: path.join(tempDir, `${name}-postgres.log`),
      durable: opts.persistentDir !== undefined,
      pg: pre.pg,
      runAs: pre.runPostgresAs,
      ...(opts.postgresSettings ? { settings: opts.postgresSettings } : {}),
    });
  const emulatorOpts: EmulatorOptions = {
    ...common,
    dir: tempDir,
    java: pre.java,
    ...(opts.javaOptions ? { javaOptions: opts.javaOptions } : {}),
  };
  // All four at once: the JVMs' startup dominates and overlaps with initdb.
  const started = await Promise.allSettled([
    cluster('local'),
    cluster('cloud'),
    startPubsubEmulator({ ...emulatorOpts, jar: pre.pubsubJar }),
    startFirestoreEmulator({ ...emulatorOpts, jar: pre.firestoreJar }),
  ] as const);

  let stopping: Promise<void> | undefined;
  const components = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      const ts = performance.now();
      const took = new Map<string, number>();
      const results = await Promise.allSettled(
        components.map(async (c) => {
          const tc = performance.now();
          try {
            await c.stop();
          } finally {
            took.set('url' in c ? `${c.name} postgres` : c.name, performance.now() - tc);
          }
        }),
      );
      signalPid(reaperPid, 'SIGTERM');
      await settlesWithin(reaperExited, 2_000);
      fs.rmSync(tempDir, { recursive: true, force: true });
      syncCleanups.delete(cleanupDirSync);
      maybeUninstallHandlers();
      const slowest = [...took].sort((a, b) => b[1] - a[1])[0];
      log(
        `stack: stopped in ${seconds(performance.now() - ts)}` +
          (slowest ? ` (slowest: ${slowest[0]}, ${seconds(slowest[1])})` : ''),
      );
      const failures = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
      if (failures.length > 0) throw new AggregateError(failures, 'stack: some components failed to stop');
    })();
    return stopping;
  };

  const failures = started.flatMap((s) => (s.status === 'rejected' ? [s.reason as unknown] : []));
  if (failures.length > 0) {
    await stop().catch(() => {});
    if (failures.length === 1) throw failures[0];
    throw new AggregateError(
      failures,
      `stack: ${failures.length} components failed to start:\n` +
        failures.map((f) => `- ${f instanceof Error ? f.message : String(f)}`).join('\n'),
    );
  }
  const [local, cloud, pubsub, firestore] = started.map((s) => (s as PromiseFulfilledResult<unknown>).value) as [
    PostgresCluster,
    PostgresCluster,
    Emulator,
    FirestoreEmulator,
  ];

  const info: StackInfo = {
    localUrl: local.url,
    cloudUrl: cloud.url,
    pubsubEmulatorHost: pubsub.host,
    firestoreEmulatorHost: firestore.host,
    tempDir,
    ownerPid: process.pid,
    pids: {
      localPostgres: local.pid,
      cloudPostgres: cloud.pid,
      pubsub: pubsub.pid,
      firestore: firestore.pid,
      reaper: reaperPid,
    },
    logFiles: {
      localPostgres: local.logFile,
      cloudPostgres: cloud.logFile,
      pubsub: pubsub.logFile,
      firestore: firestore.logFile,
    },
  };
  log(`stack: ready in ${seconds(performance.now() - t0)} (${tempDir})`);
  return {
    info,
    local,
    cloud,
    pubsub,
    firestore,
    pids: () => Object.values(info.pids),
    stop,
  };
}

// ---------------------------------------------------------------------------
// Any other process (local mode's agent and functions)

export interface ChildProcessOptions {
  name: string;
  command: string;
  args: string[];
  cwd: string;
  /** stdout and stderr are appended here. */
  logFile: string;
  env?: NodeJS.ProcessEnv;
  /** Default SIGTERM; SIGKILL of the process group after stopTimeoutMs. */
  stopSignal?: NodeJS.Signals;
  stopTimeoutMs?: number;
  onSpawn?: (p: SpawnedProcess) => void;
}

export interface RunningChild {
  readonly name: string;
  readonly pid: number;
  /** Resolves with how it ended ('exit code 0', 'killed by SIGKILL'). */
  readonly exited: Promise<string>;
  hasExited(): boolean;
  /** Stops it (stop signal, then SIGKILL of its group). */
  stop(): Promise<void>;
  /** Sends a signal to the process alone (chaos: SIGKILL). */
  signal(sig: NodeJS.Signals): void;
}

/** Starts a process under the same exit hooks as the clusters and emulators: it never outlives us. */
export async function startChildProcess(o: ChildProcessOptions): Promise<RunningChild> {
  fs.mkdirSync(path.dirname(o.logFile), { recursive: true });
  const p = await spawnManaged({ ...o, stopSignal: o.stopSignal ?? 'SIGTERM' });
  const timeout = o.stopTimeoutMs ?? 10_000;
  return {
    name: o.name,
    pid: p.pid,
    exited: p.exited.then(() => p.exitDescription()),
    hasExited: () => p.hasExited(),
    stop: () => stopManaged(p, timeout),
    signal: (sig) => signalPid(p.pid, sig),
  };
}
