// TrafficSwitch over Cloud DNS (@google-cloud/dns 5.3, the JSON API v1).
//
// The switch owns the address record of one name (dns.recordName) in one
// managed zone. A target's record type follows from the target: an IPv4
// address is an A record, an IPv6 address AAAA, a host name ending in '.' a
// CNAME. The two targets may need different types: a switch then deletes the
// old type's record set and adds the new one in the same change.
//
// pointAt(side) reads the record sets of the name and submits ONE change:
// the deletions are the current A/AAAA/CNAME record sets exactly as read
// (Cloud DNS refuses a deletion that does not match the live record, 412), the
// addition is the target with ttlSeconds. Cloud DNS applies a change
// atomically, so clients never see the name without an address. Other types
// at the name (TXT, MX…) are not touched.
//
// A 412 (a deletion no longer matches) or 409 (the addition already exists)
// means someone changed the record between our read and our change: the
// switch reads again and retries a few times (core/backoff.ts). A change is
// accepted as 'pending'; pointAt polls it until 'done' for at most
// changeTimeoutMs and otherwise says 'pending' in its detail (Cloud DNS
// finishes it on its own).
//
// Errors: 408, 429, 5xx and network failures are RetryableError (the client
// itself already retried them maxRetries times); 401, 403, 404 and 400 are
// PermanentError naming the zone and record and what to grant or fix.

import { isIP } from 'node:net';
import { DNS, type DNSOptions, type Record as DnsRecord, type Zone } from '@google-cloud/dns';
import { z } from 'zod';
import { retry, sleep } from '../core/backoff.ts';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { ServingSide, TrafficSwitch } from '../core/ports.ts';

export type DnsRecordType = 'A' | 'AAAA' | 'CNAME';

/** A target as the record that serves it: the type and the canonical record data. */
export interface DnsTarget {
  readonly type: DnsRecordType;
  /** Canonical form: IPv6 compressed and lower-case, host names lower-case with the final '.'. */
  readonly value: string;
}

const ADDRESS_TYPES: readonly DnsRecordType[] = ['A', 'AAAA', 'CNAME'];
const HOST_NAME = /^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+$/;

/**
 * The record a target needs. IPv4 → A, IPv6 → AAAA, a fully qualified host
 * name (final '.') → CNAME; anything else is a ValidationError.
 */
export function dnsTargetOf(target: string, field = 'target'): DnsTarget {
  const t = typeof target === 'string' ? target.trim() : '';
  const family = isIP(t);
  if (family === 4) return { type: 'A', value: t };
  if (family === 6) return { type: 'AAAA', value: canonicalIpv6(t) };
  const host = t.toLowerCase();
  if (HOST_NAME.test(host) && host.length <= 254) return { type: 'CNAME', value: host };
  const missingDot = HOST_NAME.test(`${host}.`) && !/^[\d.]+$/.test(host);
  const problem = missingDot ? `is a host name without the final '.'; write it fully qualified: '${t}.'` : 'is neither an IPv4 address, an IPv6 address nor a fully qualified host name';
  throw new ValidationError(`${field} ${JSON.stringify(target)} ${problem}`, {
    remedy: `Set ${field} to an IP address (A/AAAA record) or a host name ending in '.' (CNAME record).`,
  });
}

/** '2001:0DB8::0001' → '2001:db8::1' (the form Cloud DNS returns). */
function canonicalIpv6(ip: string): string {
  return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
}

/** The record data as comparable text (Cloud DNS may change case or IPv6 spelling). */
function canonicalRrdata(type: string, data: string): string {
  if (type === 'AAAA' && isIP(data) === 6) return canonicalIpv6(data);
  return type === 'CNAME' ? data.toLowerCase() : data;
}

// Record sets as the API returns them; other fields (kind, signatureRrdatas,
// routingPolicy) are kept, since a deletion must repeat the record exactly.
const rrsetSchema = z.looseObject({
  name: z.string(),
  type: z.string(),
  ttl: z.number().int().optional(),
  rrdatas: z.array(z.string()).optional(),
});
type Rrset = z.infer<typeof rrsetSchema>;

const changeSchema = z.looseObject({ id: z.string().min(1), status: z.string().min(1) });

const optionsSchema = z.object({
  projectId: z.string().regex(/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/, { error: 'must be a Google Cloud project id' }),
  managedZone: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, { error: "must be a Cloud DNS managed zone name such as 'example-com'" }),
  recordName: z
    .string()
    .regex(/^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+$/, { error: "must be a fully qualified DNS name ending in '.', such as 'app.example.com.'" }),
  ttlSeconds: z.number().int().min(0).max(86_400),
  changeTimeoutMs: z.number().int().min(0).max(600_000),
  pollIntervalMs: z.number().int().min(1).max(60_000),
  conflictAttempts: z.number().int().min(1).max(20),
  maxRetries: z.number().int().min(0).max(10),
  requestTimeoutMs: z.number().int().min(100).max(600_000),
});

export interface CloudDnsTrafficSwitchOptions {
  projectId: string;
  managedZone: string;
  /** Fully qualified, with the final '.': 'app.example.com.' */
  recordName: string;
  ttlSeconds: number;
  /** IP address or host name (final '.') served while home is healthy. */
  localTarget: string;
  /** IP address or host name (final '.') served after failover. */
  cloudTarget: string;
  /**
   * Default 'dns.googleapis.com'. A URL (http://127.0.0.1:PORT) points the
   * client at that server instead: tests, private endpoints.
   */
  apiEndpoint?: string;
  /** Default: Application Default Credentials. Tests give an OAuth2Client with a preset token. */
  authClient?: DNSOptions['authClient'];
  logger: Logger;
  /** How long pointAt waits for the change to be 'done'. Default 30 s. */
  changeTimeoutMs?: number;
  /** First delay between polls of a pending change; it doubles up to 2 s. Default 250 ms. */
  pollIntervalMs?: number;
  /** Tries in all when someone else changes the record meanwhile (409/412). Default 4. */
  conflictAttempts?: number;
  /**
   * The client's own retries of 408/429/5xx answers, with its backoff. Default 3.
   * (A request that gets no answer at all is always retried 3 times by the client.)
   */
  maxRetries?: number;
  /** Timeout of one HTTP request. Default 20 s. */
  requestTimeoutMs?: number;
}

export interface CloudDnsTrafficSwitch extends TrafficSwitch {
  readonly recordName: string;
  readonly managedZone: string;
  readonly targets: Readonly<Record<ServingSide, DnsTarget>>;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'ESOCKETTIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

function httpStatusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; response?: { status?: unknown; statusCode?: unknown } } | null;
  if (typeof e?.code === 'number') return e.code;
  const status = e?.response?.status ?? e?.response?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

function isNetworkError(err: unknown, depth = 0): boolean {
  const e = err as { code?: unknown; type?: unknown; name?: unknown; cause?: unknown } | null;
  if (e === null || typeof e !== 'object' || depth > 4) return false;
  if (typeof e.code === 'string' && (NETWORK_CODES.has(e.code) || e.code.startsWith('UND_ERR'))) return true;
  if (e.type === 'system' || e.type === 'request-timeout' || e.name === 'AbortError' || e.name === 'TimeoutError') return true;
  return e.cause !== undefined && isNetworkError(e.cause, depth + 1);
}

type DnsAction = 'read' | 'change' | 'status';

/** Someone changed the record between our read and our change. */
class RecordConflictError extends RetryableError {}

/** Maps a Cloud DNS client error to RetryableError or PermanentError with what to do. */
export function classifyDnsError(
  err: unknown,
  action: DnsAction,
  ctx: { projectId: string; managedZone: string; recordName: string },
): RetryableError | PermanentError {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const status = httpStatusOf(err);
  const reason = err instanceof Error ? err.message : String(err);
  const what = action === 'read' ? 'read' : action === 'change' ? 'change' : 'confirm the change of';
  const where = `record ${ctx.recordName} in managed zone ${ctx.managedZone} (project ${ctx.projectId})`;
  const message = `Cloud DNS: cannot ${what} ${where}: ${status === undefined ? '' : `HTTP ${status}: `}${reason}`;
  const details = { status, action, ...ctx };
  if (status === undefined) {
    if (isNetworkError(err)) return new RetryableError(message, { cause: err, details, remedy: 'Check the network path to dns.googleapis.com; the switch can be tried again.' });
    const remedy = /credential/i.test(reason)
      ? 'Check Application Default Credentials (the service account attached to the probe function, or GOOGLE_APPLICATION_CREDENTIALS).'
      : undefined;
    return new PermanentError(message, { cause: err, details, remedy });
  }
  if (action === 'change' && (status === 409 || status === 412)) {
    return new RecordConflictError(message, {
      cause: err,
      details,
      remedy: `Something else (a person, Terraform, another failover) changed ${ctx.recordName} at the same time; read it again and retry.`,
    });
  }
  if (status === 408 || status === 429 || status >= 500) return new RetryableError(message, { cause: err, details });
  const permissions =
    action === 'read' ? 'dns.resourceRecordSets.list' : action === 'change' ? 'dns.changes.create (with dns.resourceRecordSets.create, .delete and .update)' : 'dns.changes.get';
  const remedy =
    status === 401
      ? 'The credentials were rejected: check Application Default Credentials (the service account attached to the probe function, or GOOGLE_APPLICATION_CREDENTIALS).'
      : status === 403
        ? `The failover service account needs ${permissions} on managed zone ${ctx.managedZone} in project ${ctx.projectId}; roles/dns.admin granted on that zone (as the cdktf stack does) includes them.`
        : status === 404
          ? `Managed zone ${ctx.managedZone} does not exist in project ${ctx.projectId}: create it (the cdktf stack does) or fix dns.managedZone and project in lifeboat.yaml.`
          : status === 400
            ? `Cloud DNS refused the request as invalid: check dns.recordName (inside the zone's DNS name), dns.localTarget and dns.cloudTarget.`
            : undefined;
  return new PermanentError(message, { cause: err, details, remedy });
}

function describeRrset(r: Pick<Rrset, 'type' | 'rrdatas' | 'ttl'>): string {
  return `${r.type} ${(r.rrdatas ?? ['(routing policy)']).join(',')} (ttl ${r.ttl ?? '?'})`;
}

function parseOptions(opts: CloudDnsTrafficSwitchOptions) {
  const parsed = optionsSchema.safeParse({
    projectId: opts.projectId,
    managedZone: opts.managedZone,
    recordName: opts.recordName,
    ttlSeconds: opts.ttlSeconds,
    changeTimeoutMs: opts.changeTimeoutMs ?? 30_000,
    pollIntervalMs: opts.pollIntervalMs ?? 250,
    conflictAttempts: opts.conflictAttempts ?? 4,
    maxRetries: opts.maxRetries ?? 3,
    requestTimeoutMs: opts.requestTimeoutMs ?? 20_000,
  });
  if (!parsed.success) {
    throw new ValidationError(`Cloud DNS traffic switch: invalid options: ${z.prettifyError(parsed.error)}`, {
      remedy: 'Fix the dns section of lifeboat.yaml (see docs/configuration.md).',
    });
  }
  return parsed.data;
}

/** Splits apiEndpoint into what the client takes: a host, and a base URL when it is a full URL. */
function endpointOf(apiEndpoint: string | undefined): { host: string; baseUrl?: string } {
  if (apiEndpoint === undefined || apiEndpoint === '') return { host: 'dns.googleapis.com' };
  if (!/^https?:\/\//.test(apiEndpoint)) return { host: apiEndpoint };
  const url = new URL(apiEndpoint);
  return { host: url.host, baseUrl: `${url.origin}${url.pathname.replace(/\/+$/, '')}/dns/v1` };
}

export function createCloudDnsTrafficSwitch(opts: CloudDnsTrafficSwitchOptions): CloudDnsTrafficSwitch {
  const o = parseOptions(opts);
  const targets: Record<ServingSide, DnsTarget> = {
    local: dnsTargetOf(opts.localTarget, 'dns.localTarget'),
    cloud: dnsTargetOf(opts.cloudTarget, 'dns.cloudTarget'),
  };
  if (targets.local.type === targets.cloud.type && targets.local.value === targets.cloud.value) {
    throw new ValidationError(`dns.localTarget and dns.cloudTarget are the same (${targets.local.value}): failover would change nothing`, {
      remedy: "Point dns.cloudTarget at the cloud copy's address and dns.localTarget at home.",
    });
  }
  // Cloud DNS stores and returns names in lower case.
  const recordName = o.recordName.toLowerCase();
  const ctx = { projectId: o.projectId, managedZone: o.managedZone, recordName };
  const log = opts.logger.child({ managedZone: o.managedZone, recordName });

  const endpoint = endpointOf(opts.apiEndpoint);
  const dnsOptions: DNSOptions & { timeout: number } = { projectId: o.projectId, apiEndpoint: endpoint.host, timeout: o.requestTimeoutMs };
  if (opts.authClient !== undefined) dnsOptions.authClient = opts.authClient;
  const dns = new DNS(dnsOptions);
  // The client always builds https://<apiEndpoint>/dns/v1; a URL endpoint replaces that base.
  if (endpoint.baseUrl !== undefined) dns.baseUrl = endpoint.baseUrl;
  // @google-cloud/common ignores the autoRetry/maxRetries client options; only a
  // per-request maxRetries reaches its retry loop (for HTTP errors; requests
  // without any answer keep its fixed 3 retries).
  const withMaxRetries = (reqOpts: object) => ({ ...reqOpts, maxRetries: o.maxRetries });
  dns.interceptors.push({ request: withMaxRetries as (typeof dns.interceptors)[number]['request'] });
  const zone: Zone = dns.zone(o.managedZone);

  /** The A, AAAA and CNAME record sets at the name, validated, with the client's Record objects. */
  async function readAddressRecords(): Promise<{ rrset: Rrset; record: DnsRecord }[]> {
    let records: DnsRecord[];
    try {
      [records] = await zone.getRecords({ name: recordName });
    } catch (err) {
      throw classifyDnsError(err, 'read', ctx);
    }
    const out: { rrset: Rrset; record: DnsRecord }[] = [];
    for (const record of records) {
      const parsed = rrsetSchema.safeParse(record.toJSON());
      if (!parsed.success) {
        throw new PermanentError(`Cloud DNS: a record set of ${recordName} in zone ${o.managedZone} has an unexpected shape: ${z.prettifyError(parsed.error)}`, {
          details: ctx,
        });
      }
      // The API filters by name already; a server that ignores the filter must not make us delete other names.
      if (parsed.data.name.toLowerCase() !== recordName) continue;
      if ((ADDRESS_TYPES as readonly string[]).includes(parsed.data.type)) out.push({ rrset: parsed.data, record });
    }
    return out;
  }

  function sideOf(rrsets: readonly Rrset[]): ServingSide | 'unknown' {
    if (rrsets.length !== 1) return 'unknown';
    const [only] = rrsets;
    if (only?.rrdatas?.length !== 1) return 'unknown';
    const data = canonicalRrdata(only.type, only.rrdatas[0]!);
    for (const side of ['local', 'cloud'] as const) {
      if (targets[side].type === only.type && targets[side].value === data) return side;
    }
    return 'unknown';
  }

  /** Polls the change until 'done' or the deadline; the status it ended with. */
  async function waitUntilDone(id: string, initialStatus: string): Promise<{ status: string; problem?: string }> {
    let status = initialStatus;
    const deadline = Date.now() + o.changeTimeoutMs;
    let delay = o.pollIntervalMs;
    while (status !== 'done') {
      const left = deadline - Date.now();
      if (left <= 0) return { status };
      await sleep(Math.min(delay, left));
      delay = Math.min(delay * 2, Math.max(2_000, o.pollIntervalMs));
      try {
        const [metadata] = await zone.change(id).getMetadata();
        const parsed = changeSchema.safeParse(metadata);
        if (!parsed.success) return { status, problem: `unexpected change status answer: ${z.prettifyError(parsed.error)}` };
        status = parsed.data.status;
      } catch (err) {
        const classified = classifyDnsError(err, 'status', ctx);
        // The change is accepted either way; a status we cannot read is reported, not fatal.
        if (!classified.retryable) return { status, problem: classified.message };
        log.warn('reading the DNS change status failed; polling again', { changeId: id, err: classified });
      }
    }
    return { status };
  }

  async function pointOnce(side: ServingSide): Promise<{ changed: boolean; detail: string }> {
    const target = targets[side];
    const current = await readAddressRecords();
    const rrsets = current.map((c) => c.rrset);
    if (sideOf(rrsets) === side) {
      return { changed: false, detail: `${recordName} already points at ${side}: ${describeRrset(rrsets[0]!)} in zone ${o.managedZone}` };
    }
    const addition = zone.record(target.type.toLowerCase(), { name: recordName, ttl: o.ttlSeconds, data: target.value });
    let changeId: string;
    let initialStatus: string;
    try {
      const [, response] = await zone.createChange({ add: addition, delete: current.map((c) => c.record) });
      const parsed = changeSchema.safeParse(response);
      if (!parsed.success) {
        throw new PermanentError(`Cloud DNS accepted a change of ${recordName} but answered without a change id and status: ${z.prettifyError(parsed.error)}`, {
          details: ctx,
          remedy: 'Check the record in the Cloud DNS console; the switch can be run again safely.',
        });
      }
      changeId = parsed.data.id;
      initialStatus = parsed.data.status;
    } catch (err) {
      throw classifyDnsError(err, 'change', ctx);
    }
    const replaced = rrsets.length === 0 ? 'no address record' : rrsets.map(describeRrset).join(' and ');
    const summary = `pointed ${recordName} at ${side}: ${target.type} ${target.value} (ttl ${o.ttlSeconds}) replaces ${replaced} in zone ${o.managedZone}`;
    const waited = await waitUntilDone(changeId, initialStatus);
    const fields = { side, changeId, status: waited.status, target: target.value, type: target.type, replaced };
    if (waited.status === 'done') {
      log.info('DNS record switched', fields);
      return { changed: true, detail: `${summary}; change ${changeId} done` };
    }
    const why = waited.problem ?? `still ${waited.status} after ${(o.changeTimeoutMs / 1000).toFixed(1)} s`;
    log.warn('DNS change submitted but not confirmed done', { ...fields, problem: why });
    return { changed: true, detail: `${summary}; change ${changeId} ${why} (Cloud DNS completes an accepted change on its own)` };
  }

  return {
    recordName,
    managedZone: o.managedZone,
    targets,

    async pointAt(side: ServingSide): Promise<{ changed: boolean; detail: string }> {
      if (side !== 'local' && side !== 'cloud') throw new ValidationError(`pointAt: side must be 'local' or 'cloud', got ${JSON.stringify(side)}`);
      return retry(() => pointOnce(side), {
        maxAttempts: o.conflictAttempts,
        policy: { initialMs: 200, maxMs: 2_000, multiplier: 2 },
        retryIf: (err) => err instanceof RecordConflictError,
        onRetry: (err, attempt, delayMs) => log.warn('DNS record changed meanwhile; reading it again', { attempt, delayMs, side, err }),
      });
    },

    async current(): Promise<ServingSide | 'unknown'> {
      return sideOf((await readAddressRecords()).map((c) => c.rrset));
    },
  };
}
