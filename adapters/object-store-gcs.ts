// ObjectStore on Cloud Storage (@google-cloud/storage 8.x).
//
// putIfAbsent is one multipart upload with the precondition
// ifGenerationMatch=0, so GCS itself refuses to replace an object (412). A 412
// means "the name is taken": the existing object is read back and compared by
// sha256, which also covers a retried upload whose first response was lost.
//
// Integrity: the upload carries md5Hash in its metadata, so GCS rejects a body
// corrupted on the way (400) and a corrupt object never exists. The client's
// own after-the-fact validation is off on purpose: on a mismatch it deletes
// the object, unconditionally, which a create-only store must never do;
// instead the md5Hash GCS reports back is compared here.
//
// Errors: 408, 429, 5xx and network failures are RetryableError; 400, 401,
// 403, 404 and the rest are PermanentError with what to fix.

import { createHash } from 'node:crypto';
import { Storage, type Bucket, type StorageOptions } from '@google-cloud/storage';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import type { ObjectStore } from '../core/ports.ts';
import { checkObjectKey, checkObjectPrefix, objectKeyProblem } from './object-store-fs.ts';

const BUCKET_NAME = /^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$/;

export interface GcsObjectStoreOptions {
  bucket: string;
  /** Default: from the environment (Application Default Credentials). */
  projectId?: string;
  /** For tests and private endpoints, e.g. http://127.0.0.1:PORT. */
  apiEndpoint?: string;
  /** Default: Application Default Credentials. Tests give an OAuth2Client with a preset token. */
  authClient?: StorageOptions['authClient'];
  /**
   * Authenticate against a custom apiEndpoint too (the client skips auth
   * there by default). Default: true when authClient is given.
   */
  useAuthWithCustomEndpoint?: boolean;
  /** The client's own retries (on top of the caller's). Default: 3 retries within 60 s. */
  retryOptions?: RetryOptions;
  /** Timeout of one HTTP request. Default 60 s. */
  timeoutMs?: number;
  /** Content type of stored objects. Default application/octet-stream. */
  contentType?: string;
}

type RetryOptions = NonNullable<StorageOptions['retryOptions']>;

const DEFAULT_RETRY_OPTIONS: RetryOptions = { autoRetry: true, maxRetries: 3, totalTimeout: 60, maxRetryDelay: 8, retryDelayMultiplier: 2 };
const DEFAULT_TIMEOUT_MS = 60_000;

/** Splits gs://bucket/key; PermanentError when it is not one. */
export function parseGsUri(uri: string): { bucket: string; key: string } {
  const m = typeof uri === 'string' ? /^gs:\/\/([^/]+)\/(.+)$/.exec(uri) : null;
  if (!m || !BUCKET_NAME.test(m[1]!) || objectKeyProblem(m[2]!) !== undefined) {
    throw new PermanentError(`object store: ${JSON.stringify(String(uri).slice(0, 200))} is not a gs://bucket/key URI of a Lifeboat object`, {
      remedy: 'A Cloud Storage object store reads only gs:// URIs; a file:// claim check needs the local object store.',
    });
  }
  return { bucket: m[1]!, key: m[2]! };
}

function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function md5Base64(data: Uint8Array): string {
  return createHash('md5').update(data).digest('base64');
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

/** The HTTP status of a client error, when it carries one. */
export function httpStatusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; response?: { status?: unknown; statusCode?: unknown } } | null;
  if (typeof e?.code === 'number') return e.code;
  const status = e?.response?.status ?? e?.response?.statusCode;
  return typeof status === 'number' ? status : undefined;
}

function isNetworkError(err: unknown): boolean {
  const e = err as { code?: unknown; errno?: unknown; type?: unknown; name?: unknown; cause?: unknown } | null;
  if (e === null || typeof e !== 'object') return false;
  if (typeof e.code === 'string' && (NETWORK_CODES.has(e.code) || e.code.startsWith('UND_ERR'))) return true;
  if (e.type === 'system' || e.type === 'request-timeout' || e.name === 'AbortError' || e.name === 'TimeoutError') return true;
  return e.cause !== undefined && e.cause !== err && isNetworkError(e.cause);
}

type GcsAction = 'upload' | 'read' | 'list';

/** Maps a Cloud Storage client error to RetryableError or PermanentError with a remedy. */
export function classifyGcsError(err: unknown, action: GcsAction, target: string, bucket: string): RetryableError | PermanentError {
  if (err instanceof RetryableError || err instanceof PermanentError) return err;
  const status = httpStatusOf(err);
  const reason = err instanceof Error ? err.message : String(err);
  const message = `Cloud Storage: cannot ${action} ${target}: ${status === undefined ? '' : `HTTP ${status}: `}${reason}`;
  const details = { status, bucket, target, action };
  if (status === undefined) {
    if (isNetworkError(err)) return new RetryableError(message, { cause: err, details });
    return new PermanentError(message, { cause: err, details });
  }
  if (status === 408 || status === 429 || status >= 500) return new RetryableError(message, { cause: err, details });
  const needed = action === 'upload' ? 'roles/storage.objectCreator (and roles/storage.objectViewer to compare existing objects)' : 'roles/storage.objectViewer';
  const remedy =
    status === 401
      ? 'The credentials were rejected: check Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or the service account attached to the machine).'
      : status === 403
        ? `The service account needs ${needed} on bucket ${bucket}.`
        : status === 404
          ? action === 'read'
            ? `The object is gone from bucket ${bucket}: check lifecycle rules that delete objects before every batch is applied.`
            : `Bucket ${bucket} does not exist: create it (the cdktf stack does) or fix storage.bucket in lifeboat.yaml.`
          : undefined;
  return new PermanentError(message, { cause: err, details, remedy });
}

export class GcsObjectStore implements ObjectStore {
  readonly bucketName: string;
  private readonly bucket: Bucket;
  private readonly timeoutMs: number;
  private readonly contentType: string;

  constructor(opts: GcsObjectStoreOptions) {
    if (!BUCKET_NAME.test(opts.bucket)) {
      throw new ValidationError(`${JSON.stringify(opts.bucket)} is not a Cloud Storage bucket name`, {
        remedy: 'Set storage.bucket to a bucket name (lower-case letters, digits, - _ .).',
      });
    }
    this.bucketName = opts.bucket;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.contentType = opts.contentType ?? 'application/octet-stream';
    const storageOptions: StorageOptions = {
      retryOptions: { ...DEFAULT_RETRY_OPTIONS, ...opts.retryOptions },
      timeout: this.timeoutMs,
    };
    if (opts.projectId !== undefined) storageOptions.projectId = opts.projectId;
    if (opts.apiEndpoint !== undefined) storageOptions.apiEndpoint = opts.apiEndpoint;
    if (opts.authClient !== undefined) storageOptions.authClient = opts.authClient;
    const useAuth = opts.useAuthWithCustomEndpoint ?? opts.authClient !== undefined;
    if (useAuth) storageOptions.useAuthWithCustomEndpoint = true;
    this.bucket = new Storage(storageOptions).bucket(opts.bucket);
  }

  uriOf(key: string): string {
    checkObjectKey(key);
    return `gs://${this.bucketName}/${key}`;
  }

  async putIfAbsent(key: string, body: Buffer): Promise<{ uri: string; created: boolean }> {
    checkObjectKey(key);
    if (!(body instanceof Uint8Array)) throw new ValidationError(`object body must be bytes, got ${typeof body}`);
    const uri = this.uriOf(key);
    const md5Hash = md5Base64(body);
    const sha256 = sha256Hex(body);
    const file = this.bucket.file(key);
    try {
      await file.save(body, {
        resumable: false,
        validation: false,
        timeout: this.timeoutMs,
        preconditionOpts: { ifGenerationMatch: 0 },
        metadata: { contentType: this.contentType, md5Hash, metadata: { sha256 } },
      });
    } catch (err) {
      if (httpStatusOf(err) === 412) return { uri, created: await this.sameAsExisting(key, body, sha256) };
      throw classifyGcsError(err, 'upload', uri, this.bucketName);
    }
    const stored = (file.metadata as { md5Hash?: unknown } | undefined)?.md5Hash;
    if (typeof stored === 'string' && stored !== md5Hash) {
      throw new PermanentError(`Cloud Storage: ${uri} was stored with md5 ${stored} but the upload had md5 ${md5Hash}`, {
        details: { uri, storedMd5: stored, uploadedMd5: md5Hash },
        remedy: 'The object is corrupt; it was left in place for inspection. Report this as a bug.',
      });
    }
    return { uri, created: true };
  }

  /** The name is taken: the same bytes are a success (created: false), others a PermanentError. */
  private async sameAsExisting(key: string, body: Uint8Array, sha256: string): Promise<false> {
    const existing = await this.download(key);
    const have = sha256Hex(existing);
    if (have !== sha256) {
      throw new PermanentError(
        `Cloud Storage: gs://${this.bucketName}/${key} already exists with different content (sha256 ${have}, new ${sha256}); objects are never overwritten`,
        {
          details: { key, existingSha256: have, newSha256: sha256, bytes: body.length },
          remedy: 'Two different payloads were given the same key: this is a bug in the writer. Nothing was overwritten.',
        },
      );
    }
    return false;
  }

  async get(uri: string): Promise<Buffer> {
    const { bucket, key } = parseGsUri(uri);
    if (bucket !== this.bucketName) {
      throw new PermanentError(`object store: ${uri} is in bucket ${bucket}, but this store reads bucket ${this.bucketName}`, {
        details: { uri, bucket: this.bucketName },
        remedy: 'storage.bucket must name the bucket the agent wrote its claim checks to.',
      });
    }
    return this.download(key);
  }

  private async download(key: string): Promise<Buffer> {
    const uri = `gs://${this.bucketName}/${key}`;
    try {
      const [data] = await this.bucket.file(key).download();
      return data;
    } catch (err) {
      if (httpStatusOf(err) === 404) {
        throw new PermanentError(`object store: ${uri} does not exist`, {
          cause: err,
          details: { uri },
          remedy: `Check that nothing (a lifecycle rule, a person) deleted objects from bucket ${this.bucketName} before they were applied.`,
        });
      }
      throw classifyGcsError(err, 'read', uri, this.bucketName);
    }
  }

  async list(prefix: string): Promise<{ key: string; uri: string; bytes: number }[]> {
    checkObjectPrefix(prefix);
    let files;
    try {
      [files] = await this.bucket.getFiles({ prefix, autoPaginate: true });
    } catch (err) {
      throw classifyGcsError(err, 'list', `gs://${this.bucketName}/${prefix}`, this.bucketName);
    }
    const out: { key: string; uri: string; bytes: number }[] = [];
    for (const f of files) {
      // Objects written by something else (a console upload, a folder marker) are not Lifeboat objects.
      if (objectKeyProblem(f.name) !== undefined) continue;
      const size = Number(f.metadata.size ?? Number.NaN);
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new PermanentError(`Cloud Storage: listing gs://${this.bucketName}/${prefix} returned ${f.name} without a valid size`, {
          details: { key: f.name, size: f.metadata.size },
        });
      }
      out.push({ key: f.name, uri: `gs://${this.bucketName}/${f.name}`, bytes: size });
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}

export function createGcsObjectStore(opts: GcsObjectStoreOptions): GcsObjectStore {
  return new GcsObjectStore(opts);
}
