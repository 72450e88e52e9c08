// The Cloud DNS traffic switch through the official client, pointed at a local
// HTTP server that implements the part of the Cloud DNS v1 JSON API the
// switch uses (rrsets.list, changes.create with Cloud DNS's exact-match rule
// for deletions, changes.get) and records every call. Cloud DNS has no
// emulator (see STACK.md). No stack needed, but it opens sockets, so it runs
// in the integration project.
import { OAuth2Client } from 'google-auth-library';
import { afterEach, describe, expect, it } from 'vitest';
import { classifyDnsError, createCloudDnsTrafficSwitch, dnsTargetOf, type CloudDnsTrafficSwitchOptions } from '../../adapters/cloud-dns-traffic-switch.ts';
import { PermanentError, RetryableError, ValidationError } from '../../core/errors.ts';
import { createLogger } from '../../core/log.ts';
import { routes, startRecordingServer, type RecordedCall, type RecordingServer, type Reply, type Route } from '../helpers/recording-http-server.ts';

const PROJECT = 'lifeboat-dns-test';
const ZONE = 'example-com';
const NAME = 'app.example.com.';
const LOCAL_IP = '192.0.2.10';
const CLOUD_IP = '203.0.113.7';
const ZONE_PATH = `/dns/v1/projects/${PROJECT}/managedZones/${ZONE}`;

const logger = createLogger({ component: 'dns-switch-test', level: 'critical' });

interface Rrset {
  kind?: string;
  name: string;
  type: string;
  ttl: number;
  rrdatas: string[];
}

interface StoredChange {
  id: string;
  additions: Rrset[];
  deletions: Rrset[];
  /** status polls left before it is 'done' */
  pendingPolls: number;
}

const apiError = (status: number, reason: string, message: string): Reply => ({
  status,
  body: { error: { code: status, message, errors: [{ domain: 'global', reason, message }] } },
});

const rrset = (name: string, type: string, ttl: number, rrdatas: string[]): Rrset => ({ kind: 'dns#resourceRecordSet', name, type, ttl, rrdatas });
const key = (r: { name: string; type: string }) => `${r.name} ${r.type}`;
const sameRrset = (a: Rrset, b: Rrset) => a.name === b.name && a.type === b.type && a.ttl === b.ttl && JSON.stringify(a.rrdatas) === JSON.stringify(b.rrdatas);

/** A managed zone as Cloud DNS keeps it: deletions must match the live record exactly (412), additions must be new (409). */
class FakeZone {
  readonly rrsets = new Map<string, Rrset>();
  readonly changes: StoredChange[] = [];
  pollsBeforeDone = 0;

  constructor(initial: Rrset[]) {
    for (const r of initial) this.rrsets.set(key(r), r);
  }

  routes(): Route[] {
    return [
      {
        method: 'GET',
        path: `${ZONE_PATH}/rrsets`,
        handle: (call) => {
          const items = [...this.rrsets.values()].filter((r) => (call.query.name === undefined || r.name === call.query.name) && (call.query.type === undefined || r.type === call.query.type));
          return { body: { kind: 'dns#resourceRecordSetsListResponse', rrsets: items } };
        },
      },
      {
        method: 'POST',
        path: `${ZONE_PATH}/changes`,
        handle: (call) => {
          const body = JSON.parse(call.text) as { additions?: Rrset[]; deletions?: Rrset[] };
          const additions = body.additions ?? [];
          const deletions = body.deletions ?? [];
          for (const [i, d] of deletions.entries()) {
            const live = this.rrsets.get(key(d));
            if (live === undefined || !sameRrset(live, d)) return apiError(412, 'conditionNotMet', `Precondition not met for 'entity.change.deletions[${i}]'`);
          }
          const afterDeletes = new Set([...this.rrsets.keys()].filter((k) => !deletions.some((d) => key(d) === k)));
          for (const [i, a] of additions.entries()) {
            if (afterDeletes.has(key(a))) return apiError(409, 'alreadyExists', `The resource 'entity.change.additions[${i}]' named '${a.name} (${a.type})' already exists`);
          }
          for (const d of deletions) this.rrsets.delete(key(d));
          for (const a of additions) this.rrsets.set(key(a), { kind: 'dns#resourceRecordSet', name: a.name, type: a.type, ttl: a.ttl, rrdatas: a.rrdatas });
          const change: StoredChange = { id: String(this.changes.length + 1), additions, deletions, pendingPolls: this.pollsBeforeDone };
          this.changes.push(change);
          return { body: this.changeResource(change) };
        },
      },
      {
        method: 'GET',
        path: new RegExp(`^${ZONE_PATH}/changes/(\\d+)$`),
        handle: (_call, m) => {
          const change = this.changes.find((c) => c.id === m[1]);
          if (change === undefined) return apiError(404, 'notFound', `The 'parameters.changeId' resource named '${m[1]}' does not exist.`);
          if (change.pendingPolls > 0) change.pendingPolls -= 1;
          return { body: this.changeResource(change) };
        },
      },
    ];
  }

  private changeResource(c: StoredChange) {
    return {
      kind: 'dns#change',
      id: c.id,
      startTime: '2026-11-23T10:00:00.000Z',
      status: c.pendingPolls > 0 ? 'pending' : 'done',
      additions: c.additions,
      deletions: c.deletions,
    };
  }

  addressRecords(): Rrset[] {
    return [...this.rrsets.values()].filter((r) => r.name === NAME && ['A', 'AAAA', 'CNAME'].includes(r.type));
  }
}

const servers: RecordingServer[] = [];
afterEach(async () => {
  while (servers.length > 0) await servers.pop()!.close();
});

async function setUp(handler: Route[] | ((call: RecordedCall) => Reply | Promise<Reply>), opts: Partial<CloudDnsTrafficSwitchOptions> = {}) {
  const server = await startRecordingServer(handler);
  servers.push(server);
  const authClient = new OAuth2Client();
  authClient.setCredentials({ access_token: 'test-token', expiry_date: Date.now() + 3_600_000 });
  const dnsSwitch = createCloudDnsTrafficSwitch({
    projectId: PROJECT,
    managedZone: ZONE,
    recordName: NAME,
    ttlSeconds: 30,
    localTarget: LOCAL_IP,
    cloudTarget: CLOUD_IP,
    apiEndpoint: server.url,
    authClient,
    logger,
    pollIntervalMs: 5,
    maxRetries: 0,
    ...opts,
  });
  return { server, dnsSwitch };
}

const changePosts = (server: RecordingServer) => server.calls.filter((c) => c.method === 'POST' && c.path === `${ZONE_PATH}/changes`);
const bodyOf = (call: RecordedCall) => JSON.parse(call.text) as unknown;

describe('createCloudDnsTrafficSwitch against a recording Cloud DNS API server', () => {
  it('fails over and back with one exact change each: the live record deleted as it is, the target added with the configured TTL', async () => {
    // The home record was created by hand with another TTL; a TXT record at the same name must stay.
    const zone = new FakeZone([rrset(NAME, 'A', 300, [LOCAL_IP]), rrset(NAME, 'TXT', 300, ['"owner=lifeboat"']), rrset('www.example.com.', 'A', 300, ['192.0.2.99'])]);
    const { server, dnsSwitch } = await setUp(zone.routes());

    expect(await dnsSwitch.current()).toBe('local');
    const read = server.calls[0]!;
    expect(read).toMatchObject({ method: 'GET', path: `${ZONE_PATH}/rrsets`, query: { name: NAME } });
    expect(read.headers.authorization).toBe('Bearer test-token');

    const failover = await dnsSwitch.pointAt('cloud');
    expect(failover.changed).toBe(true);
    expect(failover.detail).toBe(
      `pointed ${NAME} at cloud: A ${CLOUD_IP} (ttl 30) replaces A ${LOCAL_IP} (ttl 300) in zone ${ZONE}; change 1 done`,
    );
    expect(changePosts(server)).toHaveLength(1);
    expect(bodyOf(changePosts(server)[0]!)).toEqual({
      additions: [{ name: NAME, type: 'A', ttl: 30, rrdatas: [CLOUD_IP] }],
      deletions: [{ kind: 'dns#resourceRecordSet', name: NAME, type: 'A', ttl: 300, rrdatas: [LOCAL_IP] }],
    });
    expect(await dnsSwitch.current()).toBe('cloud');

    const failback = await dnsSwitch.pointAt('local');
    expect(failback).toEqual({ changed: true, detail: `pointed ${NAME} at local: A ${LOCAL_IP} (ttl 30) replaces A ${CLOUD_IP} (ttl 30) in zone ${ZONE}; change 2 done` });
    expect(bodyOf(changePosts(server)[1]!)).toEqual({
      additions: [{ name: NAME, type: 'A', ttl: 30, rrdatas: [LOCAL_IP] }],
      deletions: [{ kind: 'dns#resourceRecordSet', name: NAME, type: 'A', ttl: 30, rrdatas: [CLOUD_IP] }],
    });
    expect(zone.addressRecords()).toEqual([rrset(NAME, 'A', 30, [LOCAL_IP])]);
    expect(zone.rrsets.get(`${NAME} TXT`)?.rrdatas).toEqual(['"owner=lifeboat"']);
    expect(zone.rrsets.get('www.example.com. A')?.rrdatas).toEqual(['192.0.2.99']);
    expect(server.unmatched).toEqual([]);
  });

  it('changes nothing when the record already points at the side', async () => {
    const zone = new FakeZone([rrset(NAME, 'A', 30, [CLOUD_IP])]);
    const { server, dnsSwitch } = await setUp(zone.routes());
    const result = await dnsSwitch.pointAt('cloud');
    expect(result).toEqual({ changed: false, detail: `${NAME} already points at cloud: A ${CLOUD_IP} (ttl 30) in zone ${ZONE}` });
    expect(changePosts(server)).toEqual([]);
    expect(server.calls.map((c) => `${c.method} ${c.path}`)).toEqual([`GET ${ZONE_PATH}/rrsets`]);
  });

  it('switches between record types in one change: CNAME home, AAAA cloud (IPv6 compared in canonical form)', async () => {
    const zone = new FakeZone([rrset(NAME, 'CNAME', 60, ['Home.Example.NET.'])]);
    const { server, dnsSwitch } = await setUp(zone.routes(), { localTarget: 'home.example.net.', cloudTarget: '2001:DB8:0::7' });
    expect(await dnsSwitch.current()).toBe('local');

    expect((await dnsSwitch.pointAt('cloud')).changed).toBe(true);
    expect(bodyOf(changePosts(server)[0]!)).toEqual({
      additions: [{ name: NAME, type: 'AAAA', ttl: 30, rrdatas: ['2001:db8::7'] }],
      deletions: [{ kind: 'dns#resourceRecordSet', name: NAME, type: 'CNAME', ttl: 60, rrdatas: ['Home.Example.NET.'] }],
    });
    expect(await dnsSwitch.current()).toBe('cloud');

    expect((await dnsSwitch.pointAt('local')).changed).toBe(true);
    expect(bodyOf(changePosts(server)[1]!)).toEqual({
      additions: [{ name: NAME, type: 'CNAME', ttl: 30, rrdatas: ['home.example.net.'] }],
      deletions: [{ kind: 'dns#resourceRecordSet', name: NAME, type: 'AAAA', ttl: 30, rrdatas: ['2001:db8::7'] }],
    });
    expect(zone.addressRecords()).toEqual([rrset(NAME, 'CNAME', 30, ['home.example.net.'])]);
  });

  it('a record that points elsewhere is unknown, and pointAt replaces it; no record at all is added', async () => {
    const zone = new FakeZone([rrset(NAME, 'A', 30, ['198.51.100.1', LOCAL_IP])]);
    const { server, dnsSwitch } = await setUp(zone.routes());
    expect(await dnsSwitch.current()).toBe('unknown');
    await dnsSwitch.pointAt('local');
    expect(bodyOf(changePosts(server)[0]!)).toMatchObject({ deletions: [{ type: 'A', ttl: 30, rrdatas: ['198.51.100.1', LOCAL_IP] }] });
    expect(await dnsSwitch.current()).toBe('local');

    const empty = new FakeZone([]);
    const second = await setUp(empty.routes());
    expect(await second.dnsSwitch.current()).toBe('unknown');
    const result = await second.dnsSwitch.pointAt('cloud');
    expect(result.detail).toContain('replaces no address record');
    expect(bodyOf(changePosts(second.server)[0]!)).toEqual({ additions: [{ name: NAME, type: 'A', ttl: 30, rrdatas: [CLOUD_IP] }], deletions: [] });
  });

  it('a record changed by someone else meanwhile (412) is read again and the change retried with the new deletion', async () => {
    const zone = new FakeZone([rrset(NAME, 'A', 30, [LOCAL_IP])]);
    const real = routes(zone.routes());
    let interfered = false;
    const { server, dnsSwitch } = await setUp((call) => {
      if (!interfered && call.method === 'POST') {
        // A person raised the TTL in the console between our read and our change.
        interfered = true;
        zone.rrsets.set(`${NAME} A`, rrset(NAME, 'A', 600, [LOCAL_IP]));
      }
      return real(call);
    });
    const result = await dnsSwitch.pointAt('cloud');
    expect(result.changed).toBe(true);
    const posts = changePosts(server);
    expect(posts).toHaveLength(2);
    expect(bodyOf(posts[0]!)).toMatchObject({ deletions: [{ ttl: 30, rrdatas: [LOCAL_IP] }] });
    expect(bodyOf(posts[1]!)).toEqual({
      additions: [{ name: NAME, type: 'A', ttl: 30, rrdatas: [CLOUD_IP] }],
      deletions: [{ kind: 'dns#resourceRecordSet', name: NAME, type: 'A', ttl: 600, rrdatas: [LOCAL_IP] }],
    });
    expect(server.calls.filter((c) => c.path === `${ZONE_PATH}/rrsets`)).toHaveLength(2);
    expect(zone.addressRecords()).toEqual([rrset(NAME, 'A', 30, [CLOUD_IP])]);
  });

  it('a concurrent switch to the same side ends as changed:false; a 409 is re-read too; endless conflicts give up with a RetryableError', async () => {
    const zone = new FakeZone([rrset(NAME, 'A', 30, [LOCAL_IP])]);
    const real = routes(zone.routes());
    let raced = false;
    const first = await setUp((call) => {
      if (!raced && call.method === 'POST') {
        // Another failover got there first: cloud's record exists now, home's is gone.
        raced = true;
        zone.rrsets.delete(`${NAME} A`);
        zone.rrsets.set(`${NAME} A`, rrset(NAME, 'A', 30, [CLOUD_IP]));
      }
      return real(call);
    });
    const result = await first.dnsSwitch.pointAt('cloud');
    expect(result).toEqual({ changed: false, detail: `${NAME} already points at cloud: A ${CLOUD_IP} (ttl 30) in zone ${ZONE}` });
    expect(changePosts(first.server)).toHaveLength(1);

    // Home is IPv6 (AAAA); someone adds the cloud A record by hand meanwhile: our addition exists (409).
    const mixed = new FakeZone([rrset(NAME, 'AAAA', 30, ['2001:db8::10'])]);
    const mixedRoutes = routes(mixed.routes());
    let added = false;
    const second = await setUp(
      (call) => {
        if (!added && call.method === 'POST') {
          added = true;
          mixed.rrsets.set(`${NAME} A`, rrset(NAME, 'A', 300, [CLOUD_IP]));
        }
        return mixedRoutes(call);
      },
      { localTarget: '2001:db8::10' },
    );
    expect((await second.dnsSwitch.pointAt('cloud')).changed).toBe(true);
    const [conflicted, retried] = changePosts(second.server);
    expect(changePosts(second.server)).toHaveLength(2);
    expect(bodyOf(conflicted!)).toMatchObject({ deletions: [{ type: 'AAAA' }] });
    expect(bodyOf(retried!)).toEqual({
      additions: [{ name: NAME, type: 'A', ttl: 30, rrdatas: [CLOUD_IP] }],
      deletions: [
        { kind: 'dns#resourceRecordSet', name: NAME, type: 'AAAA', ttl: 30, rrdatas: ['2001:db8::10'] },
        { kind: 'dns#resourceRecordSet', name: NAME, type: 'A', ttl: 300, rrdatas: [CLOUD_IP] },
      ],
    });
    expect(mixed.addressRecords()).toEqual([rrset(NAME, 'A', 30, [CLOUD_IP])]);

    // Answer reads with a record, and every change with 412.
    const always412 = await setUp(
      (call) => (call.method === 'GET' ? { body: { kind: 'dns#resourceRecordSetsListResponse', rrsets: [rrset(NAME, 'A', 30, [LOCAL_IP])] } } : apiError(412, 'conditionNotMet', "Precondition not met for 'entity.change.deletions[0]'")),
      { conflictAttempts: 3 },
    );
    const err = await always412.dnsSwitch.pointAt('cloud').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetryableError);
    expect((err as RetryableError).message).toContain(`record ${NAME} in managed zone ${ZONE}`);
    expect((err as RetryableError).remedy).toMatch(/changed .* at the same time/);
    expect(changePosts(always412.server)).toHaveLength(3);
  });

  it('a 403 is a PermanentError that names the zone, the record and the permission to grant', async () => {
    const zone = new FakeZone([rrset(NAME, 'A', 30, [LOCAL_IP])]);
    const real = routes(zone.routes());
    const { dnsSwitch } = await setUp((call) =>
      call.method === 'POST' ? apiError(403, 'forbidden', `Forbidden: the caller does not have permission 'dns.changes.create'`) : real(call),
    );
    const err = await dnsSwitch.pointAt('cloud').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).message).toBe(
      `Cloud DNS: cannot change record ${NAME} in managed zone ${ZONE} (project ${PROJECT}): HTTP 403: Forbidden: the caller does not have permission 'dns.changes.create'`,
    );
    expect((err as PermanentError).remedy).toBe(
      `The failover service account needs dns.changes.create (with dns.resourceRecordSets.create, .delete and .update) on managed zone ${ZONE} in project ${PROJECT}; roles/dns.admin granted on that zone (as the cdktf stack does) includes them.`,
    );
    expect(zone.addressRecords()).toEqual([rrset(NAME, 'A', 30, [LOCAL_IP])]);

    const readDenied = await setUp(() => apiError(403, 'forbidden', 'Forbidden'));
    const readErr = await readDenied.dnsSwitch.current().catch((e: unknown) => e);
    expect(readErr).toBeInstanceOf(PermanentError);
    expect((readErr as PermanentError).remedy).toMatch(/needs dns\.resourceRecordSets\.list on managed zone example-com/);
  });

  it('maps other failures: 5xx, 429 and network errors retryable; 404 names the zone setting; 401 the credentials', async () => {
    let answer: Reply = apiError(503, 'backendError', 'unavailable');
    const { dnsSwitch } = await setUp(() => answer);
    for (const status of [500, 503, 429]) {
      answer = apiError(status, 'backendError', `status ${status}`);
      const err = await dnsSwitch.pointAt('cloud').catch((e: unknown) => e);
      expect(err, String(status)).toBeInstanceOf(RetryableError);
      expect((err as RetryableError).details).toMatchObject({ status, managedZone: ZONE, recordName: NAME });
    }
    // A request without any answer is retried 3 times by the client itself (seconds), so that path is checked on the mapping alone.
    const reset = Object.assign(new Error('request failed, reason: socket hang up'), { code: 'ECONNRESET' });
    expect(classifyDnsError(reset, 'change', { projectId: PROJECT, managedZone: ZONE, recordName: NAME })).toBeInstanceOf(RetryableError);
    expect(classifyDnsError(new TypeError('x is not a function'), 'change', { projectId: PROJECT, managedZone: ZONE, recordName: NAME })).toBeInstanceOf(PermanentError);
    answer = apiError(404, 'notFound', `The 'parameters.managedZone' resource named '${ZONE}' does not exist.`);
    const notFound = (await dnsSwitch.current().catch((e: unknown) => e)) as PermanentError;
    expect(notFound).toBeInstanceOf(PermanentError);
    expect(notFound.remedy).toMatch(/dns\.managedZone/);
    answer = apiError(401, 'authError', 'Invalid Credentials');
    expect(((await dnsSwitch.current().catch((e: unknown) => e)) as PermanentError).remedy).toMatch(/credentials/);
  });

  it('polls a pending change until done, and reports a change still pending after the bound', async () => {
    const zone = new FakeZone([rrset(NAME, 'A', 30, [LOCAL_IP])]);
    zone.pollsBeforeDone = 2;
    const { server, dnsSwitch } = await setUp(zone.routes());
    const result = await dnsSwitch.pointAt('cloud');
    expect(result.detail).toMatch(/change 1 done$/);
    expect(server.calls.filter((c) => c.method === 'GET' && c.path === `${ZONE_PATH}/changes/1`)).toHaveLength(2);

    const slow = new FakeZone([rrset(NAME, 'A', 30, [LOCAL_IP])]);
    slow.pollsBeforeDone = 1_000_000;
    const second = await setUp(slow.routes(), { changeTimeoutMs: 50 });
    const pending = await second.dnsSwitch.pointAt('cloud');
    expect(pending.changed).toBe(true);
    expect(pending.detail).toMatch(/change 1 still pending after 0\.1 s \(Cloud DNS completes an accepted change on its own\)$/);
  });

  it('validates targets and options before any request', async () => {
    expect(dnsTargetOf('192.0.2.1')).toEqual({ type: 'A', value: '192.0.2.1' });
    expect(dnsTargetOf('2001:0DB8::0001')).toEqual({ type: 'AAAA', value: '2001:db8::1' });
    expect(dnsTargetOf('Run.App.')).toEqual({ type: 'CNAME', value: 'run.app.' });
    expect(() => dnsTargetOf('ghs.googlehosted.com')).toThrow(/final '\.'/);
    expect(() => dnsTargetOf('300.1.1.1')).toThrow(ValidationError);
    expect(() => dnsTargetOf('http://x.example.')).toThrow(ValidationError);

    const { server } = await setUp(new FakeZone([]).routes());
    const base = { projectId: PROJECT, managedZone: ZONE, recordName: NAME, ttlSeconds: 30, localTarget: LOCAL_IP, cloudTarget: CLOUD_IP, apiEndpoint: server.url, logger };
    expect(() => createCloudDnsTrafficSwitch({ ...base, cloudTarget: LOCAL_IP })).toThrow(/are the same/);
    expect(() => createCloudDnsTrafficSwitch({ ...base, recordName: 'app.example.com' })).toThrow(/recordName/);
    expect(() => createCloudDnsTrafficSwitch({ ...base, managedZone: 'Example_Com' })).toThrow(/managedZone/);
    expect(() => createCloudDnsTrafficSwitch({ ...base, ttlSeconds: -1 })).toThrow(ValidationError);
    expect(() => createCloudDnsTrafficSwitch({ ...base, localTarget: 'home' })).toThrow(/dns\.localTarget/);
    expect(server.calls).toEqual([]);
  });
});
