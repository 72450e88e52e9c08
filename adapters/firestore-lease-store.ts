// LeaseStore over @google-cloud/firestore 9.4: one document (lease.document,
// e.g. 'lifeboat/lease-main') holds the lease.
//
// Compare-and-set without transactions: `create()` when no lease exists
// (fails with ALREADY_EXISTS otherwise) and `update()` with a lastUpdateTime
// precondition (fails with FAILED_PRECONDITION when someone wrote since).
// Both are single-document commits, so Firestore decides the race; measured on
// the emulator they are fast (p50 18 ms) where runTransaction locks
// pessimistically and takes seconds under contention (shared/STACK.md). The
// version is the document's update time with nanoseconds,
// '<seconds>.<nanoseconds, 9 digits>', which Firestore moves on every write
// that changes the document.
//
// A lost race is an answer, not an error: { ok: false, current } with the
// lease as it is now. Errors: UNAVAILABLE, DEADLINE_EXCEEDED and the other
// transient codes, and no answer within requestTimeoutMs, are RetryableError
// (the write may or may not have happened; the next compare-and-set finds
// out); PERMISSION_DENIED and UNAUTHENTICATED are PermanentError naming the
// role to grant; a document that is not a valid lease is a ValidationError.
//
// The client retries UNAVAILABLE commits for up to 10 minutes by itself, far
// longer than a lease lives, hence the adapter's own timeout. (Its retry
// settings for commits come from its bundled service config, not from
// `clientConfig`, so they cannot be shortened; an abandoned call goes on in
// the background, and Firestore.terminate() waits for it: bound shutdown
// with a timeout.) A commit that
// the client retried after it had in fact been applied comes back as a lost
// race whose `current` is this writer's own lease; LeaseClient and the
// failover controller treat that as what it is.
//
// Note: the Firestore client itself always follows FIRESTORE_EMULATOR_HOST
// when that variable is set, whatever host it is given.

import { Firestore, Timestamp, type DocumentReference } from '@google-cloud/firestore';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import { GrpcStatus, GRPC_STATUS_NAMES, RETRYABLE_GRPC_CODES } from './grpc-status.ts';
import { parseLease, type CompareAndSetResult, type Lease, type LeaseSnapshot, type LeaseStore } from '../core/writer-lease.ts';

const Status = GrpcStatus;


export const DEFAULT_LEASE_REQUEST_TIMEOUT_MS = 10_000;

/** A Firestore update time as an opaque version string: '<seconds>.<9-digit nanoseconds>'. */
export function formatLeaseVersion(t: Timestamp): string {
  return `${t.seconds}.${String(t.nanoseconds).padStart(9, '0')}`;
}

export function parseLeaseVersion(version: string): Timestamp {
  const m = /^(\d{1,12})\.(\d{9})$/.exec(version);
  if (!m) {
    throw new ValidationError(`invalid lease version ${JSON.stringify(version.slice(0, 40))}: expected '<seconds>.<9-digit nanoseconds>' as read from this store`);
  }
  return new Timestamp(Number(m[1]), Number(m[2]));
}

/** A Firestore document path 'collection/doc' (an even number of segments). */
function checkDocumentPath(path: string): string {
  const segments = path.split('/');
  if (segments.length < 2 || segments.length % 2 !== 0 || segments.some((s) => s.length === 0)) {
    throw new ValidationError(`invalid lease document path ${JSON.stringify(path)}: expected 'collection/document' (an even number of segments)`, {
      remedy: "Set lease.document to a path such as 'lifeboat/lease-main'.",
    });
  }
  return path;
}

export interface FirestoreLeaseStoreOptions {
  readonly firestore: Firestore;
  /** lease.document from the config, e.g. 'lifeboat/lease-main'. */
  readonly document: string;
  /** Give up on one request after this long with a RetryableError (default 10 s). */
  readonly requestTimeoutMs?: number;
}

export class FirestoreLeaseStore implements LeaseStore {
  readonly #doc: DocumentReference;
  readonly #path: string;
  readonly #timeoutMs: number;

  constructor(opts: FirestoreLeaseStoreOptions) {
    this.#path = checkDocumentPath(opts.document);
    this.#doc = opts.firestore.doc(this.#path);
    this.#timeoutMs = opts.requestTimeoutMs ?? DEFAULT_LEASE_REQUEST_TIMEOUT_MS;
  }

  async read(): Promise<LeaseSnapshot | undefined> {
    let snap;
    try {
      snap = await this.#call('read', () => this.#doc.get());
    } catch (err) {
      throw this.#map('read', err);
    }
    if (!snap.exists) return undefined;
    if (snap.updateTime === undefined) throw new PermanentError(`lease store: ${this.#path} exists but has no update time`);
    const lease = parseLease(snap.data(), `lease document ${this.#path}`);
    return { lease, version: formatLeaseVersion(snap.updateTime) };
  }

  async compareAndSet(expectedVersion: string | null, next: Lease): Promise<CompareAndSetResult> {
    const lease = parseLease(next, 'lease to write');
    const what = expectedVersion === null ? 'create' : 'update';
    const precondition = expectedVersion === null ? undefined : { lastUpdateTime: parseLeaseVersion(expectedVersion) };
    try {
      const result = await this.#call(what, () => (precondition === undefined ? this.#doc.create(lease) : this.#doc.update({ ...lease }, precondition)));
      return { ok: true, version: formatLeaseVersion(result.writeTime) };
    } catch (err) {
      const code = grpcCode(err);
      // Someone else wrote first (or the lease was deleted): report the lease as it is now.
      if (code === Status.ALREADY_EXISTS || code === Status.FAILED_PRECONDITION || code === Status.NOT_FOUND) {
        return { ok: false, current: await this.read() };
      }
      throw this.#map(what, err);
    }
  }

  /** One client call, or a RetryableError when it does not answer in time. */
  async #call<T>(what: 'read' | 'create' | 'update', fn: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const call = fn();
    // The abandoned call may still settle later; its outcome is found by the next read.
    call.catch(() => {});
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const written = what === 'read' ? '' : '; the write may or may not have been applied';
        reject(new RetryableError(`lease store: Firestore did not answer the ${what} of ${this.#path} within ${this.#timeoutMs} ms${written}`, {
          details: { document: this.#path, timeoutMs: this.#timeoutMs },
        }));
      }, this.#timeoutMs);
    });
    try {
      return await Promise.race([call, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  #map(what: string, err: unknown): Error {
    return leaseStoreError(what, this.#path, err);
  }
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);

/** A Firestore client error as Lifeboat's RetryableError or PermanentError. */
export function leaseStoreError(what: string, document: string, err: unknown): Error {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const raw = (err as { code?: unknown } | null)?.code;
  const code = grpcCode(err);
  const name = code !== undefined ? (GRPC_STATUS_NAMES.get(code) ?? `status ${code}`) : typeof raw === 'string' ? raw : 'no status';
  const text = err instanceof Error ? err.message : String(err);
  const message = `lease store: ${what} of ${document} failed (${name}): ${text}`;
  const details = { document, code: raw };
  if ((code !== undefined && RETRYABLE_GRPC_CODES.has(code)) || (typeof raw === 'string' && NETWORK_CODES.has(raw))) {
    return new RetryableError(message, { cause: err, details });
  }
  if (code === Status.PERMISSION_DENIED || code === Status.UNAUTHENTICATED) {
    return new PermanentError(message, {
      cause: err,
      details,
      remedy: 'Grant the service accounts of the agent and of the functions the role roles/datastore.user on the project, and check that they authenticate.',
    });
  }
  return new PermanentError(message, { cause: err, details });
}

function grpcCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

export interface FirestoreConnectionOptions {
  readonly projectId: string;
  /** 'host:port' of the Firestore emulator; absent means Google Cloud. */
  readonly emulatorHost?: string;
}

/** A Firestore client for the lease: the emulator (plain HTTP/2, no TLS) when emulatorHost is given. */
export function connectFirestore(opts: FirestoreConnectionOptions): Firestore {
  return opts.emulatorHost === undefined
    ? new Firestore({ projectId: opts.projectId })
    : new Firestore({ projectId: opts.projectId, host: opts.emulatorHost, ssl: false });
}
