// ObjectStore on the local filesystem: the real store of local mode (claim
// checks, reports) and the stand-in for Cloud Storage in tests.
//
// Writes are create-only and crash-safe: the body goes to a temp file in the
// target directory, is fsynced, and is then hard-linked to its final name.
// link() fails with EEXIST when the name is taken, so an object appears whole
// or not at all and is never replaced; the directory is fsynced afterwards so
// the new name survives a power cut (the agent publishes the pointer, and
// confirms the WAL behind it, right after putIfAbsent returns).
//
// Keys follow one rule shared with the GCS adapter, so a key that works in
// local mode works in the cloud: '/'-separated segments of
// [A-Za-z0-9._~=+,@-], none empty or starting with '.', which rules out '..',
// absolute paths, NUL and hidden temp files in one go.

import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PermanentError, RetryableError, ValidationError } from '../core/errors.ts';
import type { ObjectStore } from '../core/ports.ts';

/** One key segment: safe on every filesystem and in a gs:// URI without escaping. */
const KEY_SEGMENT = /^[A-Za-z0-9_~=+,@-][A-Za-z0-9._~=+,@-]*$/;
/** GCS's object name limit, applied everywhere. */
export const MAX_OBJECT_KEY_BYTES = 1024;
/** Most filesystems limit a name to 255 bytes. */
const MAX_SEGMENT_BYTES = 255;
const TEMP_PREFIX = '.tmp-';

/** Why `key` is not a valid object key, or undefined if it is one. */
export function objectKeyProblem(key: unknown): string | undefined {
  if (typeof key !== 'string') return `object key must be a string, got ${typeof key}`;
  if (key.length === 0) return 'object key must not be empty';
  if (Buffer.byteLength(key) > MAX_OBJECT_KEY_BYTES) return `object key is longer than ${MAX_OBJECT_KEY_BYTES} bytes`;
  if (key.startsWith('/')) return `object key ${JSON.stringify(key.slice(0, 80))} must be relative (no leading '/')`;
  for (const segment of key.split('/')) {
    if (segment.length > MAX_SEGMENT_BYTES) return `object key segment is longer than ${MAX_SEGMENT_BYTES} bytes`;
    if (!KEY_SEGMENT.test(segment)) {
      return (
        `object key ${JSON.stringify(key.slice(0, 80))} has the segment ${JSON.stringify(segment.slice(0, 40))}: ` +
        "segments must be non-empty, must not start with '.', and may hold only letters, digits and . _ ~ = + , @ -"
      );
    }
  }
  return undefined;
}

/** @throws ValidationError when `key` is not a valid object key. */
export function checkObjectKey(key: string): void {
  const problem = objectKeyProblem(key);
  if (problem !== undefined) throw new ValidationError(problem, { details: { key } });
}

/** A list prefix: empty, or a key prefix (it may end in '/' or inside a segment). */
export function checkObjectPrefix(prefix: string): void {
  if (prefix === '') return;
  // A prefix is valid when some key could start with it: check it with a stand-in last character.
  const problem = objectKeyProblem(prefix.endsWith('/') ? `${prefix}x` : prefix);
  if (problem !== undefined) throw new ValidationError(`invalid list prefix: ${problem}`, { details: { prefix } });
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

// Errors that a later attempt may not see (resource limits, I/O hiccups, full disk).
const RETRYABLE_FS_CODES = new Set(['EMFILE', 'ENFILE', 'EAGAIN', 'EBUSY', 'EINTR', 'EIO', 'ENOSPC', 'EDQUOT', 'ETIMEDOUT']);

function fsError(action: string, target: string, err: unknown): Error {
  if (err instanceof PermanentError || err instanceof RetryableError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  const message = `object store: cannot ${action} ${target}: ${(err as Error).message}`;
  const details = { code, target };
  if (code !== undefined && RETRYABLE_FS_CODES.has(code)) {
    return new RetryableError(message, {
      cause: err,
      details,
      remedy: code === 'ENOSPC' || code === 'EDQUOT' ? 'Free disk space under storage.localDir.' : undefined,
    });
  }
  const remedy =
    code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
      ? 'Make storage.localDir writable by the user that runs Lifeboat.'
      : code === 'ENOTDIR' || code === 'EISDIR' || code === 'EEXIST'
        ? 'A file and a directory clash under storage.localDir: one key is a prefix directory of another.'
        : undefined;
  return new PermanentError(message, { cause: err, details, remedy });
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export class FsObjectStore implements ObjectStore {
  /** Absolute root directory; every object lives below it. */
  readonly root: string;

  constructor(rootDir: string) {
    if (typeof rootDir !== 'string' || rootDir.length === 0) throw new ValidationError('object store root directory must be a non-empty path');
    if (rootDir.includes('\0')) throw new ValidationError('object store root directory must not contain NUL');
    this.root = path.resolve(rootDir);
  }

  /** The file:// URI of a key. */
  uriOf(key: string): string {
    checkObjectKey(key);
    return pathToFileURL(this.pathOf(key)).href;
  }

  private pathOf(key: string): string {
    return path.join(this.root, ...key.split('/'));
  }

  async putIfAbsent(key: string, body: Buffer): Promise<{ uri: string; created: boolean }> {
    checkObjectKey(key);
    if (!(body instanceof Uint8Array)) throw new ValidationError(`object body must be bytes, got ${typeof body}`);
    const finalPath = this.pathOf(key);
    const dir = path.dirname(finalPath);
    const uri = pathToFileURL(finalPath).href;

    // Directories created now must be made durable too, from the new one up to its parent.
    let firstCreated: string | undefined;
    try {
      firstCreated = await fsp.mkdir(dir, { recursive: true });
    } catch (err) {
      throw fsError('create the directory for', key, err);
    }

    const tempPath = path.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    try {
      try {
        const handle = await fsp.open(tempPath, 'wx', 0o644);
        try {
          await handle.writeFile(body);
          await handle.sync();
        } finally {
          await handle.close();
        }
      } catch (err) {
        throw fsError('write', key, err);
      }

      try {
        await fsp.link(tempPath, finalPath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError('store', key, err);
        return { uri, created: await this.sameAsExisting(key, finalPath, body) };
      }
    } finally {
      await fsp.rm(tempPath, { force: true }).catch(() => {});
    }

    try {
      await fsyncDir(dir);
      if (firstCreated !== undefined) {
        for (let d = dir; d !== path.dirname(firstCreated); d = path.dirname(d)) await fsyncDir(path.dirname(d));
      }
    } catch (err) {
      throw fsError('make durable', key, err);
    }
    return { uri, created: true };
  }

  /** The name is taken: the same bytes are a success (created: false), others a PermanentError. */
  private async sameAsExisting(key: string, finalPath: string, body: Uint8Array): Promise<false> {
    let existing: Buffer;
    try {
      existing = await fsp.readFile(finalPath);
    } catch (err) {
      throw fsError('read the existing', key, err);
    }
    const want = sha256(body);
    const have = sha256(existing);
    if (want !== have) {
      throw new PermanentError(`object store: ${key} already exists with different content (sha256 ${have}, new ${want}); objects are never overwritten`, {
        details: { key, existingSha256: have, newSha256: want },
        remedy: 'Two different payloads were given the same key: this is a bug in the writer. Nothing was overwritten.',
      });
    }
    return false;
  }

  async get(uri: string): Promise<Buffer> {
    const key = this.keyOfUri(uri);
    try {
      return await fsp.readFile(this.pathOf(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new PermanentError(`object store: ${uri} does not exist`, {
          cause: err,
          details: { uri },
          remedy: `Check that storage.localDir (${this.root}) is the directory the agent wrote to and that nothing deleted the object.`,
        });
      }
      throw fsError('read', uri, err);
    }
  }

  /** The key a file:// URI names; PermanentError when it is not under this store's root. */
  keyOfUri(uri: string): string {
    let filePath: string;
    try {
      if (typeof uri !== 'string' || !uri.startsWith('file:')) throw new TypeError('not a file: URI');
      filePath = fileURLToPath(uri);
    } catch (err) {
      throw new PermanentError(`object store: ${JSON.stringify(String(uri).slice(0, 200))} is not a file:// URI of this store`, {
        cause: err,
        remedy: 'A local object store reads only file:// URIs; a gs:// claim check needs the Cloud Storage adapter.',
      });
    }
    const relative = path.relative(this.root, filePath);
    const key = relative.split(path.sep).join('/');
    if (relative === '' || path.isAbsolute(relative) || objectKeyProblem(key) !== undefined) {
      throw new PermanentError(`object store: ${uri} is not an object under ${this.root}`, {
        details: { uri, root: this.root },
        remedy: 'Point storage.localDir at the directory the writer used.',
      });
    }
    return key;
  }

  async list(prefix: string): Promise<{ key: string; uri: string; bytes: number }[]> {
    checkObjectPrefix(prefix);
    // Walk only the directory the prefix fully names; filter the rest by key.
    const slash = prefix.lastIndexOf('/');
    const baseKey = slash < 0 ? '' : prefix.slice(0, slash);
    const found: { key: string; uri: string; bytes: number }[] = [];
    const walk = async (dirKey: string): Promise<void> => {
      const dirPath = dirKey === '' ? this.root : this.pathOf(dirKey);
      let entries;
      try {
        entries = await fsp.readdir(dirPath, { withFileTypes: true });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') return;
        throw fsError('list', dirKey === '' ? this.root : dirKey, err);
      }
      for (const entry of entries) {
        if (!KEY_SEGMENT.test(entry.name)) continue; // temp files and anything that is not a key
        const key = dirKey === '' ? entry.name : `${dirKey}/${entry.name}`;
        if (entry.isDirectory()) {
          // Descend only where keys can still match the prefix.
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) await walk(key);
        } else if (entry.isFile() && key.startsWith(prefix)) {
          let bytes: number;
          try {
            bytes = (await fsp.stat(this.pathOf(key))).size;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
            throw fsError('stat', key, err);
          }
          found.push({ key, uri: pathToFileURL(this.pathOf(key)).href, bytes });
        }
      }
    };
    await walk(baseKey);
    // Byte order of the UTF-8 key, as Cloud Storage lists (keys are ASCII here, so code-unit order is the same).
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}

/** A filesystem object store rooted at `rootDir` (created on first write). */
export function createFsObjectStore(rootDir: string): FsObjectStore {
  return new FsObjectStore(rootDir);
}
