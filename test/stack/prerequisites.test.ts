// Pure: every lookup goes through a fake filesystem, PATH and passwd.
import { describe, expect, it } from 'vitest';
import {
  MissingPrerequisiteError,
  findFirestoreJar,
  findJava,
  findPgBin,
  findPrerequisites,
  findPubsubJar,
  postgresRunAs,
  type SystemLookup,
} from '../../local/prerequisites.ts';

const PG = '/usr/lib/postgresql/15/bin';
const SDK = '/usr/lib/google-cloud-sdk';
const PUBSUB_LIB = `${SDK}/platform/pubsub-emulator/lib`;
const FIRESTORE_JAR = `${SDK}/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar`;
const PASSWD = 'root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n';

/** A machine made of the given files; directories are implied by the paths. */
function fakeMachine(
  files: string[],
  opts: { env?: Record<string, string>; uid?: number; passwd?: string } = {},
): SystemLookup {
  const set = new Set(files);
  return {
    env: { PATH: '/usr/local/bin:/usr/bin:/bin', ...opts.env },
    isFile: (p) => set.has(p),
    listDir: (dir) => {
      const prefix = `${dir}/`;
      const names = files.filter((f) => f.startsWith(prefix)).map((f) => f.slice(prefix.length).split('/')[0]!);
      return names.length > 0 ? [...new Set(names)] : undefined;
    },
    passwd: () => opts.passwd ?? PASSWD,
    uid: opts.uid ?? 1000,
  };
}

const complete = [
  `${PG}/initdb`,
  `${PG}/postgres`,
  '/usr/bin/java',
  `${PUBSUB_LIB}/cloud-pubsub-emulator-0.8.20-all.jar`,
  FIRESTORE_JAR,
];

function errorOf(f: () => unknown): MissingPrerequisiteError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(MissingPrerequisiteError);
    return err as MissingPrerequisiteError;
  }
  throw new Error('expected a MissingPrerequisiteError');
}

describe('findPrerequisites', () => {
  it('finds everything on a complete Debian machine', () => {
    expect(findPrerequisites(fakeMachine(complete))).toEqual({
      pg: { bin: PG, initdb: `${PG}/initdb`, postgres: `${PG}/postgres` },
      runPostgresAs: undefined,
      java: '/usr/bin/java',
      pubsubJar: `${PUBSUB_LIB}/cloud-pubsub-emulator-0.8.20-all.jar`,
      firestoreJar: FIRESTORE_JAR,
    });
  });

  it('reports every missing piece at once, each with how to install it', () => {
    const err = errorOf(() => findPrerequisites(fakeMachine([])));
    expect(err.missing.map((m) => m.what)).toEqual(['initdb', 'java', 'pubsub-emulator', 'cloud-firestore-emulator']);
    expect(err.message).toContain('missing 4 prerequisites');
    expect(err.message).toContain('apt-get install postgresql-15');
    expect(err.message).toContain('apt-get install openjdk-17-jre-headless');
    expect(err.message).toContain('google-cloud-cli-pubsub-emulator');
    expect(err.message).toContain('google-cloud-cli-firestore-emulator');
  });
});

describe('PostgreSQL binaries', () => {
  it('names initdb, where it looked and the package', () => {
    const err = errorOf(() => findPgBin(fakeMachine([])));
    expect(err.message).toMatch(/^initdb not found \(looked in \/usr\/lib\/postgresql\/15\/bin, .* and on PATH\): /);
    expect(err.message).toContain('apt-get install postgresql-15');
    expect(err.message).toContain('LIFEBOAT_PG_BIN');
  });

  it('falls back to PATH', () => {
    const m = fakeMachine(['/usr/local/bin/initdb', '/usr/local/bin/postgres']);
    expect(findPgBin(m).bin).toBe('/usr/local/bin');
  });

  it('wants postgres from the same installation as initdb', () => {
    const err = errorOf(() => findPgBin(fakeMachine([`${PG}/initdb`, '/usr/bin/postgres'])));
    expect(err.message).toBe(
      `postgres not found beside initdb in ${PG}: apt-get install postgresql-15 (the server package), ` +
        'or set LIFEBOAT_PG_BIN to a directory holding both',
    );
  });

  it('LIFEBOAT_PG_BIN wins, and a wrong one is reported as such rather than silently skipped', () => {
    const files = [...complete, '/opt/pg/bin/initdb', '/opt/pg/bin/postgres'];
    expect(findPgBin(fakeMachine(files, { env: { LIFEBOAT_PG_BIN: '/opt/pg/bin' } })).postgres).toBe(
      '/opt/pg/bin/postgres',
    );
    const err = errorOf(() => findPgBin(fakeMachine(complete, { env: { LIFEBOAT_PG_BIN: '/opt/typo' } })));
    expect(err.message).toMatch(/^initdb not found in LIFEBOAT_PG_BIN=\/opt\/typo: /);
    expect(err.message).toContain('apt-get install postgresql-15');
  });
});

describe('java', () => {
  it('names java and the package', () => {
    const err = errorOf(() => findJava(fakeMachine([])));
    expect(err.message).toBe(
      'java not found (looked in PATH): apt-get install openjdk-17-jre-headless ' +
        '(the gcloud emulators need Java 17 or later)',
    );
  });

  it('prefers JAVA_HOME over PATH', () => {
    const m = fakeMachine(['/usr/bin/java', '/opt/jdk/bin/java'], { env: { JAVA_HOME: '/opt/jdk' } });
    expect(findJava(m)).toBe('/opt/jdk/bin/java');
  });
});

describe('gcloud emulators', () => {
  it('Pub/Sub: names the directory and the component', () => {
    const err = errorOf(() => findPubsubJar(fakeMachine([])));
    expect(err.message).toMatch(
      /^Pub\/Sub emulator not found at \/usr\/lib\/google-cloud-sdk\/platform\/pubsub-emulator\/lib: install the gcloud component pubsub-emulator \(apt-get install google-cloud-cli-pubsub-emulator /,
    );
    expect(err.message).toContain('gcloud components install pubsub-emulator');
    expect(err.message).toContain('LIFEBOAT_GCLOUD_SDK');
  });

  it('Pub/Sub: picks the newest jar by version, not by string order', () => {
    const m = fakeMachine([
      `${PUBSUB_LIB}/cloud-pubsub-emulator-0.8.9-all.jar`,
      `${PUBSUB_LIB}/cloud-pubsub-emulator-0.8.20-all.jar`,
      `${PUBSUB_LIB}/README`,
    ]);
    expect(findPubsubJar(m)).toBe(`${PUBSUB_LIB}/cloud-pubsub-emulator-0.8.20-all.jar`);
  });

  it('Firestore: names the jar and the component', () => {
    const err = errorOf(() => findFirestoreJar(fakeMachine([])));
    expect(err.message).toMatch(
      /^Firestore emulator not found at \/usr\/lib\/google-cloud-sdk\/platform\/cloud-firestore-emulator\/cloud-firestore-emulator\.jar: install the gcloud component cloud-firestore-emulator \(apt-get install google-cloud-cli-firestore-emulator /,
    );
  });

  it('LIFEBOAT_GCLOUD_SDK is the only place looked at when set', () => {
    const env = { LIFEBOAT_GCLOUD_SDK: '/opt/sdk' };
    expect(findFirestoreJar(fakeMachine(['/opt/sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar'], { env }))).toBe(
      '/opt/sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar',
    );
    const err = errorOf(() => findPubsubJar(fakeMachine(complete, { env })));
    expect(err.message).toContain('not found at /opt/sdk/platform/pubsub-emulator/lib');
  });
});

describe('running as root', () => {
  it('runs postgres as the postgres OS user', () => {
    expect(postgresRunAs(fakeMachine([], { uid: 0 }))).toEqual({ user: 'postgres', uid: 101, gid: 104 });
  });

  it('runs as yourself otherwise', () => {
    expect(postgresRunAs(fakeMachine([], { uid: 1000 }))).toBeUndefined();
  });

  it('says how to get a postgres user when there is none', () => {
    const err = errorOf(() => postgresRunAs(fakeMachine([], { uid: 0, passwd: 'root:x:0:0::/root:/bin/sh\n' })));
    expect(err.message).toContain("no 'postgres' OS user");
    expect(err.message).toContain('useradd --system postgres');
  });
});
