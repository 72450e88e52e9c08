import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsObjectStore, checkObjectKey, objectKeyProblem } from '../../adapters/object-store-fs.ts';
import { PermanentError, ValidationError } from '../../core/errors.ts';

let tmp: string;
let root: string;
let store: FsObjectStore;

beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lifeboat-objstore-'));
  root = path.join(tmp, 'objects');
  store = new FsObjectStore(root);
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Every file under dir, relative, hidden ones included. */
function allFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[])
    .filter((d) => d.isFile())
    .map((d) => path.relative(dir, path.join(d.parentPath, d.name)))
    .sort();
}

describe('FsObjectStore.putIfAbsent / get', () => {
  it('stores bytes under the key and reads them back by the file:// URI it returns', async () => {
    const body = Buffer.from('{"v":1}\n\u00e9', 'utf8');
    const { uri, created } = await store.putIfAbsent('claim-check/main/0000000001CF7460-0000000001CF7600-abcd.json.gz', body);
    expect(created).toBe(true);
    expect(uri).toBe(pathToFileURL(path.join(root, 'claim-check', 'main', '0000000001CF7460-0000000001CF7600-abcd.json.gz')).href);
    expect(uri.startsWith('file:///')).toBe(true);
    expect(Buffer.compare(await store.get(uri), body)).toBe(0);
    // No temp file is left next to it.
    expect(allFiles(root)).toEqual([path.join('claim-check', 'main', '0000000001CF7460-0000000001CF7600-abcd.json.gz')]);
  });

  it('is create-only: the same bytes again are created:false, different bytes a PermanentError that changes nothing', async () => {
    const first = Buffer.from('first');
    const { uri } = await store.putIfAbsent('a/b', first);
    await expect(store.putIfAbsent('a/b', Buffer.from('first'))).resolves.toEqual({ uri, created: false });

    const err = await store.putIfAbsent('a/b', Buffer.from('second')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).message).toMatch(/already exists with different content/);
    expect((err as PermanentError).details).toMatchObject({
      existingSha256: createHash('sha256').update('first').digest('hex'),
      newSha256: createHash('sha256').update('second').digest('hex'),
    });
    expect((await store.get(uri)).toString()).toBe('first');
    expect(allFiles(root)).toEqual([path.join('a', 'b')]);
  });

  it('lets exactly one of many concurrent writers of a key create it', async () => {
    const same = await Promise.all(Array.from({ length: 8 }, () => store.putIfAbsent('same/key', Buffer.from('x'.repeat(10_000)))));
    expect(same.filter((r) => r.created)).toHaveLength(1);

    const bodies = Array.from({ length: 8 }, (_, i) => Buffer.from(`body-${i}`));
    const results = await Promise.allSettled(bodies.map((b) => store.putIfAbsent('race/key', b)));
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    expect(won).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(PermanentError);
    expect(fs.readFileSync(path.join(root, 'race', 'key'), 'utf8')).toBe(`body-${won[0]}`);
    expect(allFiles(root)).toEqual([path.join('race', 'key'), path.join('same', 'key')]);
  });

  it('refuses keys that could leave the root or hide among temp files, and writes nothing', async () => {
    const bad = ['', '/etc/passwd', '../outside', 'a/../../outside', 'a//b', 'a/./b', 'a/', '.hidden', 'a/.tmp-1234', 'nul\0byte', 'back\\slash', 'sp ace', 'a'.repeat(256)];
    for (const key of bad) {
      await expect(store.putIfAbsent(key, Buffer.from('x')), JSON.stringify(key)).rejects.toBeInstanceOf(ValidationError);
    }
    expect(allFiles(tmp)).toEqual([]);
  });

  it('refuses a key whose directory is already a file (and the reverse) as a PermanentError', async () => {
    await store.putIfAbsent('clash', Buffer.from('file'));
    const err = await store.putIfAbsent('clash/below', Buffer.from('x')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect(err).not.toBeInstanceOf(ValidationError);
    await store.putIfAbsent('dir/child', Buffer.from('x'));
    await expect(store.putIfAbsent('dir', Buffer.from('x'))).rejects.toBeInstanceOf(PermanentError);
  });

  it('get reads only file:// URIs of objects under its root', async () => {
    const { uri } = await store.putIfAbsent('k', Buffer.from('v'));
    fs.writeFileSync(path.join(tmp, 'secret'), 'outside');
    fs.mkdirSync(`${root}-sibling`);
    fs.writeFileSync(path.join(`${root}-sibling`, 'k'), 'sibling');
    const refused = [
      pathToFileURL(path.join(tmp, 'secret')).href,
      pathToFileURL(path.join(`${root}-sibling`, 'k')).href,
      `${pathToFileURL(root).href}/../secret`,
      pathToFileURL(root).href,
      'gs://bucket/k',
      'http://example.com/k',
      'not a uri',
      uri.replace('file://', 'file://otherhost'),
    ];
    for (const u of refused) await expect(store.get(u), u).rejects.toBeInstanceOf(PermanentError);
    expect((await store.get(uri)).toString()).toBe('v');
  });

  it('get of a missing object is a PermanentError that names the store directory', async () => {
    const err = await store.get(store.uriOf('never/written')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as PermanentError).message).toMatch(/does not exist/);
    expect((err as PermanentError).remedy).toContain(root);
  });
});

describe('FsObjectStore.list', () => {
  it('lists recursively in key order, filtered by any key prefix, without temp files', async () => {
    const keys = ['reports/2026/b.json', 'claim-check/main/0002', 'claim-check/main/0001', 'claim-check/other/0001', 'claim-check/mainx/1', 'z'];
    for (const [i, key] of keys.entries()) await store.putIfAbsent(key, Buffer.alloc(i + 1, 1));
    // A crashed writer's temp file must not show up.
    fs.writeFileSync(path.join(root, 'claim-check', 'main', '.tmp-deadbeef'), 'partial');

    const all = await store.list('');
    expect(all.map((o) => o.key)).toEqual([...keys].sort());
    expect(all.find((o) => o.key === 'z')).toEqual({ key: 'z', uri: store.uriOf('z'), bytes: 6 });

    expect((await store.list('claim-check/main/')).map((o) => o.key)).toEqual(['claim-check/main/0001', 'claim-check/main/0002']);
    expect((await store.list('claim-check/main')).map((o) => o.key)).toEqual(['claim-check/main/0001', 'claim-check/main/0002', 'claim-check/mainx/1']);
    expect((await store.list('claim-check/main/0001')).map((o) => o.key)).toEqual(['claim-check/main/0001']);
    expect(await store.list('nothing/here/')).toEqual([]);
    await expect(store.list('../')).rejects.toBeInstanceOf(ValidationError);
  });

  it('is empty before anything was written (the root does not exist yet)', async () => {
    expect(await store.list('')).toEqual([]);
  });
});

describe('object keys', () => {
  it('every accepted key resolves to a path strictly inside the root', () => {
    const chars = fc.constantFrom(...'ab.Z9_-~=+,@/\\ \0:%'.split(''));
    fc.assert(
      fc.property(fc.array(chars, { minLength: 0, maxLength: 24 }).map((c) => c.join('')), (key) => {
        if (objectKeyProblem(key) !== undefined) {
          expect(() => checkObjectKey(key)).toThrow(ValidationError);
          return;
        }
        const resolved = path.resolve('/srv/objects', key);
        expect(resolved.startsWith('/srv/objects/')).toBe(true);
        expect(path.relative('/srv/objects', resolved).split(path.sep).join('/')).toBe(key);
      }),
      { numRuns: 2000 },
    );
  });
});
