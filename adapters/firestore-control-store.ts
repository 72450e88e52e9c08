// ControlStore over Firestore: the controller's record in one document
// (default 'lifeboat/control-<stream>', beside the lease) and its audit trail
// in two subcollections of it, `decisions` and `probes`, one document per
// entry with an `at` field to order by.
//
// Compare-and-set works as in FirestoreLeaseStore: create() when there is no
// record, update() with a lastUpdateTime precondition otherwise; the version
// is the update time. A document that fails validation is a ValidationError:
// the controller then fails closed (nothing runs) until someone looks.
import { Timestamp, type DocumentReference, type Firestore } from '@google-cloud/firestore';
import { controlLogEntrySchema, controlRecordSchema, type ControlCasResult, type ControlLogEntry, type ControlRecord, type ControlStore } from '../core/control-record.ts';
import { ValidationError } from '../core/errors.ts';
import { GrpcStatus } from './grpc-status.ts';
import { formatLeaseVersion, leaseStoreError, parseLeaseVersion } from './firestore-lease-store.ts';

export interface FirestoreControlStoreOptions {
  readonly firestore: Firestore;
  /** e.g. 'lifeboat/control-main'. */
  readonly document: string;
  readonly requestTimeoutMs?: number;
}

/** The control document that belongs to a lease document: same collection, 'control-' instead of 'lease-'. */
export function controlDocumentFor(leaseDocument: string, stream: string): string {
  const parts = leaseDocument.split('/');
  parts[parts.length - 1] = `control-${stream}`;
  return parts.join('/');
}

export class FirestoreControlStore implements ControlStore {
  readonly #doc: DocumentReference;
  readonly #path: string;
  readonly #timeoutMs: number;

  constructor(opts: FirestoreControlStoreOptions) {
    this.#path = opts.document;
    this.#doc = opts.firestore.doc(opts.document);
    this.#timeoutMs = opts.requestTimeoutMs ?? 10_000;
  }

  async read(): Promise<{ record: ControlRecord; version: string } | undefined> {
    const snap = await this.#call('read', () => this.#doc.get());
    if (!snap.exists || snap.updateTime === undefined) return undefined;
    const parsed = controlRecordSchema.safeParse(snap.data());
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
      throw new ValidationError(`the failover control record ${this.#path} is not valid: ${problems}`, {
        remedy: 'It was written by something other than this version of Lifeboat. Inspect it in the Firestore console; delete it only while no failover is in progress (the controller then starts from normal).',
      });
    }
    return { record: parsed.data, version: formatLeaseVersion(snap.updateTime) };
  }

  async compareAndSet(expectedVersion: string | null, record: ControlRecord): Promise<ControlCasResult> {
    const data = controlRecordSchema.parse(record);
    try {
      const result = await this.#call(expectedVersion === null ? 'create' : 'update', () =>
        // update() replaces each top-level field whole, and every field is always present.
        expectedVersion === null ? this.#doc.create(data) : this.#doc.update(data, { lastUpdateTime: parseLeaseVersion(expectedVersion) }),
      );
      return { ok: true, version: formatLeaseVersion(result.writeTime) };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === GrpcStatus.ALREADY_EXISTS || code === GrpcStatus.FAILED_PRECONDITION || code === GrpcStatus.NOT_FOUND) return { ok: false };
      throw err;
    }
  }

  async append(entry: ControlLogEntry): Promise<void> {
    const data = controlLogEntrySchema.parse(entry);
    const collection = data.kind === 'probe' ? 'probes' : 'decisions';
    await this.#call('append', () => this.#doc.collection(collection).add({ ...data, writtenAt: Timestamp.now() }));
  }

  async recent(kind: ControlLogEntry['kind'], limit: number): Promise<ControlLogEntry[]> {
    const collection = kind === 'probe' ? 'probes' : 'decisions';
    const snap = await this.#call('read', () => this.#doc.collection(collection).orderBy('at', 'desc').limit(limit).get());
    const out: ControlLogEntry[] = [];
    for (const d of snap.docs) {
      const { writtenAt: _ignored, ...rest } = d.data();
      const parsed = controlLogEntrySchema.safeParse(rest);
      // A malformed entry is shown as such rather than dropped.
      out.push(parsed.success ? parsed.data : { kind: 'decision', at: 0, runner: 'unknown', phase: '?', nextPhase: '?', action: 'none', reason: `unreadable audit entry ${d.id}`, outcome: 'failed', epoch: 0 });
    }
    return out;
  }

  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const call = fn();
    call.catch(() => {});
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(leaseStoreError(what, this.#path, Object.assign(new Error(`no answer within ${this.#timeoutMs} ms`), { code: GrpcStatus.DEADLINE_EXCEEDED }))), this.#timeoutMs);
    });
    try {
      return await Promise.race([call, timeout]);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === GrpcStatus.ALREADY_EXISTS || code === GrpcStatus.FAILED_PRECONDITION || code === GrpcStatus.NOT_FOUND) throw err;
      throw leaseStoreError(what, this.#path, err);
    } finally {
      clearTimeout(timer);
    }
  }
}
