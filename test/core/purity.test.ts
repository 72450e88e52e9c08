// core/ is the pure heart shared by the agent, the functions, the CLI and
// infra: it must import no cloud SDK, no database driver and no network
// module, so it runs and tests anywhere.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const coreDir = new URL('../../core/', import.meta.url).pathname;
const ALLOWED = /^(?:\.{1,2}\/|node:(?:crypto|zlib|util|fs|path|os|url|buffer)$|zod$|yaml$)/;

function importsOf(source: string): string[] {
  const specs: string[] = [];
  for (const m of source.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g)) {
    specs.push((m[1] ?? m[2])!);
  }
  return specs;
}

describe('core/ purity', () => {
  const files = readdirSync(coreDir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));

  it('has modules to check', () => {
    expect(files.length).toBeGreaterThan(5);
  });

  it.each(files)('%s imports only core/, node built-ins without network, zod and yaml', (file) => {
    const bad = importsOf(readFileSync(join(coreDir, file), 'utf8')).filter((spec) => !ALLOWED.test(spec) || spec.startsWith('../'));
    expect(bad).toEqual([]);
  });

  it('the import scanner sees what it must refuse', () => {
    expect(importsOf("import pg from 'pg';\nexport { x } from '@google-cloud/pubsub';\nconst m = await import('node:net');")).toEqual([
      'pg',
      '@google-cloud/pubsub',
      'node:net',
    ]);
  });
});
