// Locates what the local stack runs: PostgreSQL 15 server binaries, a Java
// runtime and the two gcloud emulator jars. Every lookup goes through a
// SystemLookup so the "what is missing and how to install it" messages can be
// unit-tested without touching the machine.
import fs from 'node:fs';
import path from 'node:path';

export interface SystemLookup {
  env: Readonly<Record<string, string | undefined>>;
  /** True when `p` exists and is a regular file. */
  isFile(p: string): boolean;
  /** Entries of a directory, or undefined when it does not exist. */
  listDir(p: string): string[] | undefined;
  /** Contents of /etc/passwd, or undefined when unreadable. */
  passwd(): string | undefined;
  /** Effective uid, or undefined on platforms without one. */
  uid: number | undefined;
}

export function realLookup(): SystemLookup {
  return {
    env: process.env,
    isFile: (p) => {
      try {
        return fs.statSync(p).isFile();
      } catch {
        return false;
      }
    },
    listDir: (p) => {
      try {
        return fs.readdirSync(p);
      } catch {
        return undefined;
      }
    },
    passwd: () => {
      try {
        return fs.readFileSync('/etc/passwd', 'utf8');
      } catch {
        return undefined;
      }
    },
    uid: process.geteuid?.(),
  };
}

export interface Missing {
  /** Short name of the missing thing, e.g. "initdb". */
  what: string;
  /** Full sentence: what was looked for where, and how to install it. */
  message: string;
}

export class MissingPrerequisiteError extends Error {
  readonly missing: readonly Missing[];
  constructor(missing: readonly Missing[]) {
    super(
      missing.length === 1
        ? missing[0]!.message
        : `the local test stack is missing ${missing.length} prerequisites:\n` +
            missing.map((m) => `  - ${m.message}`).join('\n'),
    );
    this.name = 'MissingPrerequisiteError';
    this.missing = missing;
  }
}

function missing(what: string, message: string): MissingPrerequisiteError {
  return new MissingPrerequisiteError([{ what, message }]);
}

export const DEFAULT_PG_BIN = '/usr/lib/postgresql/15/bin';
export const DEFAULT_GCLOUD_SDK = '/usr/lib/google-cloud-sdk';

// Where PostgreSQL 15 lands with the usual installers (Debian/Ubuntu, PGDG
// RPMs, Homebrew on Apple silicon and Intel), before falling back to PATH.
const PG_BIN_CANDIDATES = [
  DEFAULT_PG_BIN,
  '/usr/pgsql-15/bin',
  '/opt/homebrew/opt/postgresql@15/bin',
  '/usr/local/opt/postgresql@15/bin',
];

const SDK_CANDIDATES = [DEFAULT_GCLOUD_SDK, '/usr/share/google-cloud-sdk', '/opt/google-cloud-sdk'];

function pathDirs(l: SystemLookup): string[] {
  return (l.env.PATH ?? '').split(path.delimiter).filter((d) => d !== '');
}

export interface PgBinaries {
  bin: string;
  initdb: string;
  postgres: string;
}

export function findPgBin(l: SystemLookup): PgBinaries {
  const override = l.env.LIFEBOAT_PG_BIN;
  const install = 'apt-get install postgresql-15';
  if (override) {
    for (const tool of ['initdb', 'postgres']) {
      if (!l.isFile(path.join(override, tool))) {
        throw missing(
          tool,
          `${tool} not found in LIFEBOAT_PG_BIN=${override}: point LIFEBOAT_PG_BIN at the bin directory of ` +
            `PostgreSQL 15 (the one holding initdb and postgres), or unset it to use ${DEFAULT_PG_BIN} (${install})`,
        );
      }
    }
    return { bin: override, initdb: path.join(override, 'initdb'), postgres: path.join(override, 'postgres') };
  }
  for (const dir of [...PG_BIN_CANDIDATES, ...pathDirs(l)]) {
    if (!l.isFile(path.join(dir, 'initdb'))) continue;
    // initdb and postgres must come from the same installation.
    if (!l.isFile(path.join(dir, 'postgres'))) {
      throw missing(
        'postgres',
        `postgres not found beside initdb in ${dir}: ${install} (the server package), ` +
          `or set LIFEBOAT_PG_BIN to a directory holding both`,
      );
    }
    return { bin: dir, initdb: path.join(dir, 'initdb'), postgres: path.join(dir, 'postgres') };
  }
  throw missing(
    'initdb',
    `initdb not found (looked in ${PG_BIN_CANDIDATES.join(', ')} and on PATH): ${install}, ` +
      `or set LIFEBOAT_PG_BIN to the directory holding initdb and postgres`,
  );
}

export function findJava(l: SystemLookup): string {
  const dirs = [...(l.env.JAVA_HOME ? [path.join(l.env.JAVA_HOME, 'bin')] : []), ...pathDirs(l)];
  for (const dir of dirs) {
    const java = path.join(dir, 'java');
    if (l.isFile(java)) return java;
  }
  throw missing(
    'java',
    `java not found (looked in ${l.env.JAVA_HOME ? 'JAVA_HOME/bin and ' : ''}PATH): ` +
      `apt-get install openjdk-17-jre-headless (the gcloud emulators need Java 17 or later)`,
  );
}

function sdkRoots(l: SystemLookup): string[] {
  // An explicit override is the only place looked at: silently falling back
  // would hide a typo in it.
  return l.env.LIFEBOAT_GCLOUD_SDK ? [l.env.LIFEBOAT_GCLOUD_SDK] : SDK_CANDIDATES;
}

const SDK_HINT = 'or set LIFEBOAT_GCLOUD_SDK to the Cloud SDK root';

/** Orders "0.8.9" before "0.8.20" (plain string order would not). */
function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0 && !Number.isNaN(d)) return d;
  }
  return a.localeCompare(b);
}

export function findPubsubJar(l: SystemLookup): string {
  const roots = sdkRoots(l);
  for (const root of roots) {
    const lib = path.join(root, 'platform', 'pubsub-emulator', 'lib');
    const jars = (l.listDir(lib) ?? [])
      .map((f) => /^cloud-pubsub-emulator-(.+)-all\.jar$/.exec(f))
      .filter((m): m is RegExpExecArray => m !== null)
      .sort((x, y) => compareVersions(x[1]!, y[1]!));
    const newest = jars.at(-1);
    if (newest) return path.join(lib, newest[0]);
  }
  const where = path.join(roots[0]!, 'platform', 'pubsub-emulator', 'lib');
  throw missing(
    'pubsub-emulator',
    `Pub/Sub emulator not found at ${where}: install the gcloud component pubsub-emulator ` +
      `(apt-get install google-cloud-cli-pubsub-emulator from Google's Cloud SDK apt repository, ` +
      `or gcloud components install pubsub-emulator), ${SDK_HINT}`,
  );
}

export function findFirestoreJar(l: SystemLookup): string {
  const roots = sdkRoots(l);
  for (const root of roots) {
    const jar = path.join(root, 'platform', 'cloud-firestore-emulator', 'cloud-firestore-emulator.jar');
    if (l.isFile(jar)) return jar;
  }
  const where = path.join(roots[0]!, 'platform', 'cloud-firestore-emulator', 'cloud-firestore-emulator.jar');
  throw missing(
    'cloud-firestore-emulator',
    `Firestore emulator not found at ${where}: install the gcloud component cloud-firestore-emulator ` +
      `(apt-get install google-cloud-cli-firestore-emulator from Google's Cloud SDK apt repository, ` +
      `or gcloud components install cloud-firestore-emulator), ${SDK_HINT}`,
  );
}

export interface RunAs {
  user: string;
  uid: number;
  gid: number;
}

/**
 * PostgreSQL refuses to run as root, so a root runner starts initdb and the
 * postmaster as the `postgres` OS user. Undefined means "run as yourself".
 */
export function postgresRunAs(l: SystemLookup): RunAs | undefined {
  if (l.uid !== 0) return undefined;
  for (const line of (l.passwd() ?? '').split('\n')) {
    const [name, , uid, gid] = line.split(':');
    if (name === 'postgres' && uid !== undefined && gid !== undefined) {
      return { user: 'postgres', uid: Number(uid), gid: Number(gid) };
    }
  }
  throw missing(
    'postgres user',
    `running as root, but there is no 'postgres' OS user to run initdb and the server as (PostgreSQL refuses root): ` +
      `apt-get install postgresql-15 creates it, or useradd --system postgres, or run the tests as a normal user`,
  );
}

export interface Prerequisites {
  pg: PgBinaries;
  /** Set when running as root. */
  runPostgresAs: RunAs | undefined;
  java: string;
  pubsubJar: string;
  firestoreJar: string;
}

/** Everything the full stack needs; reports every missing piece at once. */
export function findPrerequisites(l: SystemLookup = realLookup()): Prerequisites {
  const problems: Missing[] = [];
  function attempt<T>(f: () => T): T | undefined {
    try {
      return f();
    } catch (err) {
      if (!(err instanceof MissingPrerequisiteError)) throw err;
      problems.push(...err.missing);
      return undefined;
    }
  }
  const pg = attempt(() => findPgBin(l));
  const runPostgresAs = attempt(() => postgresRunAs(l));
  const java = attempt(() => findJava(l));
  const pubsubJar = attempt(() => findPubsubJar(l));
  const firestoreJar = attempt(() => findFirestoreJar(l));
  if (problems.length > 0) throw new MissingPrerequisiteError(problems);
  return { pg: pg!, runPostgresAs, java: java!, pubsubJar: pubsubJar!, firestoreJar: firestoreJar! };
}
