import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  agentStateFile,
  agentStateJson,
  agentStateSchema,
  planStart,
  readAgentState,
  resolveStateDir,
  writeAgentState,
  type AgentState,
  type PlannedSlot,
  type StartAction,
} from '../../agent/agent-state.ts';
import { DEFAULT_CONFIG } from '../../core/config.ts';
import { PermanentError } from '../../core/errors.ts';

// planStart is pure; the file functions use a temp directory (no network, no processes).

const slot = (over: Partial<PlannedSlot> = {}): PlannedSlot => ({
  name: 'lifeboat_main',
  plugin: 'pgoutput',
  slotType: 'logical',
  database: 'app',
  currentDatabase: 'app',
  walStatus: 'reserved',
  ...over,
});

const state = (over: Partial<AgentState> = {}): AgentState => ({
  stream: 'main',
  slot: 'lifeboat_main',
  snapshotId: '3f0e1c9a-0000-4000-8000-000000000001',
  consistentLsn: 0x1cf7460n,
  snapshotCompletedAt: '2026-11-23T13:31:02.123Z',
  ...over,
});

const incomplete = () => state({ snapshotCompletedAt: null });

describe('planStart', () => {
  // Every combination of the inputs that matter, with the expected action.
  const slots: [string, PlannedSlot | undefined][] = [
    ['no slot', undefined],
    ['slot reserved', slot()],
    ['slot extended', slot({ walStatus: 'extended' })],
    ['slot unreserved', slot({ walStatus: 'unreserved' })],
    ['slot lost', slot({ walStatus: 'lost' })],
    ['foreign plugin', slot({ plugin: 'wal2json' })],
    ['physical slot', slot({ slotType: 'physical', plugin: null, database: null })],
    ['other database', slot({ database: 'other' })],
  ];
  const states: [string, AgentState | undefined][] = [
    ['no state', undefined],
    ['snapshot incomplete', incomplete()],
    ['snapshot completed', state()],
  ];

  function expected(slotLabel: string, stateLabel: string, resnapshot: boolean): StartAction {
    if (['foreign plugin', 'physical slot', 'other database'].includes(slotLabel)) return 'fail';
    if (resnapshot) return 'restart-snapshot';
    if (slotLabel === 'slot lost') return 'fail';
    if (slotLabel === 'no slot') {
      if (stateLabel === 'no state') return 'fresh-snapshot';
      if (stateLabel === 'snapshot incomplete') return 'restart-snapshot';
      return 'fail';
    }
    return stateLabel === 'snapshot completed' ? 'stream-from-slot' : 'restart-snapshot';
  }

  for (const [slotLabel, s] of slots) {
    for (const [stateLabel, st] of states) {
      for (const resnapshot of [false, true]) {
        const want = expected(slotLabel, stateLabel, resnapshot);
        it(`${slotLabel} + ${stateLabel}${resnapshot ? ' + --resnapshot' : ''} → ${want}`, () => {
          const plan = planStart({ state: st, slot: s, resnapshot, slotName: 'lifeboat_main' });
          expect(plan.action).toBe(want);
          // A full sentence: starts with a capital, ends with a period.
          expect(plan.reason).toMatch(/^[A-Z].*\.$/s);
          if (plan.action === 'fail') expect(plan.remedy).toBeTruthy();
          else expect(plan.remedy).toBeUndefined();
        });
      }
    }
  }

  it('explains a lost slot and offers --resnapshot', () => {
    const plan = planStart({ state: state(), slot: slot({ walStatus: 'lost' }), resnapshot: false });
    expect(plan).toEqual({
      action: 'fail',
      reason:
        'Replication slot "lifeboat_main" was invalidated (wal_status = lost): PostgreSQL removed WAL it still needed, so changes were lost from the stream.',
      remedy: 'Run `lifeboat agent --resnapshot`: it drops the slot and copies every table again.',
    });
  });

  it('refuses to stream when the slot vanished after a completed snapshot', () => {
    const plan = planStart({ state: state(), slot: undefined, resnapshot: false, slotName: 'lifeboat_main' });
    expect(plan.action).toBe('fail');
    expect(plan.reason).toBe(
      'Slot "lifeboat_main" is gone although snapshot 3f0e1c9a-0000-4000-8000-000000000001 completed at 2026-11-23T13:31:02.123Z: changes made since the slot was dropped were never streamed.',
    );
    expect(plan.remedy).toContain('lifeboat agent --resnapshot');
  });

  it('streams from an existing slot after a completed snapshot', () => {
    expect(planStart({ state: state(), slot: slot(), resnapshot: false })).toEqual({
      action: 'stream-from-slot',
      reason:
        'Slot "lifeboat_main" exists and snapshot 3f0e1c9a-0000-4000-8000-000000000001 was completed at 2026-11-23T13:31:02.123Z, so the agent streams from the slot\'s confirmed position.',
    });
  });

  it('restarts an interrupted snapshot (the exported snapshot died with its connection)', () => {
    const plan = planStart({ state: incomplete(), slot: slot(), resnapshot: false });
    expect(plan.action).toBe('restart-snapshot');
    expect(plan.reason).toContain('was interrupted before it completed');
    expect(plan.reason).toContain('drops slot "lifeboat_main"');
  });

  it('restarts when a slot exists without a state file', () => {
    const plan = planStart({ state: undefined, slot: slot(), resnapshot: false });
    expect(plan.action).toBe('restart-snapshot');
    expect(plan.reason).toContain('there is no state file');
  });

  it('never drops a slot of another tool, even with --resnapshot', () => {
    const plan = planStart({ state: undefined, slot: slot({ plugin: 'wal2json' }), resnapshot: true });
    expect(plan.action).toBe('fail');
    expect(plan.reason).toContain('of plugin wal2json');
    expect(plan.remedy).toContain('source.slot');
  });

  it('fails when the configured slot is not the one the state file records', () => {
    const plan = planStart({ state: state({ slot: 'lifeboat_old' }), slot: undefined, resnapshot: false, slotName: 'lifeboat_main' });
    expect(plan.action).toBe('fail');
    expect(plan.reason).toContain('records slot "lifeboat_old" but the config names slot "lifeboat_main"');
    expect(plan.remedy).toContain('drop the old slot "lifeboat_old"');
    // --resnapshot is the way out.
    expect(planStart({ state: state({ slot: 'lifeboat_old' }), slot: undefined, resnapshot: true, slotName: 'lifeboat_main' }).action).toBe('restart-snapshot');
  });

  it('names the configured slot when neither slot nor state exists', () => {
    expect(planStart({ state: undefined, slot: undefined, resnapshot: false, slotName: 'lifeboat_x' }).reason).toBe(
      'There is no slot "lifeboat_x" and no state file, so the agent creates the slot and copies every table.',
    );
  });
});

describe('state file', () => {
  it('lives in the parent of storage.localDir unless told otherwise', () => {
    expect(resolveStateDir({ config: DEFAULT_CONFIG, baseDir: '/srv/app' })).toBe('/srv/app/.lifeboat');
    expect(resolveStateDir({ config: DEFAULT_CONFIG, baseDir: '/srv/app', env: { LIFEBOAT_STATE_DIR: '/var/lib/lifeboat' } })).toBe('/var/lib/lifeboat');
    expect(resolveStateDir({ config: DEFAULT_CONFIG, baseDir: '/srv/app', stateDir: 'state', env: { LIFEBOAT_STATE_DIR: '/x' } })).toBe('/srv/app/state');
    expect(resolveStateDir({ config: DEFAULT_CONFIG, baseDir: '/srv/app', env: { LIFEBOAT_STATE_DIR: '' } })).toBe('/srv/app/.lifeboat');
    expect(agentStateFile('/srv/app/.lifeboat', 'main')).toBe('/srv/app/.lifeboat/agent-main.json');
    expect(() => agentStateFile('/x', '../etc')).toThrow(PermanentError);
  });

  it('writes LSNs as text and reads them back as bigint', () => {
    const json = agentStateJson(state());
    expect(JSON.parse(json)).toEqual({
      stream: 'main',
      slot: 'lifeboat_main',
      snapshotId: '3f0e1c9a-0000-4000-8000-000000000001',
      consistentLsn: '0/1CF7460',
      snapshotCompletedAt: '2026-11-23T13:31:02.123Z',
    });
    expect(agentStateSchema.parse(JSON.parse(json))).toEqual(state());
  });

  it('rejects unknown fields and bad values', () => {
    const wire = JSON.parse(agentStateJson(state())) as Record<string, unknown>;
    expect(agentStateSchema.safeParse({ ...wire, extra: 1 }).success).toBe(false);
    expect(agentStateSchema.safeParse({ ...wire, consistentLsn: 'nope' }).success).toBe(false);
    expect(agentStateSchema.safeParse({ ...wire, snapshotCompletedAt: 'yesterday' }).success).toBe(false);
    expect(agentStateSchema.safeParse({ ...wire, snapshotCompletedAt: null }).success).toBe(true);
  });
});

describe('state file on disk', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });
  const tempDir = () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-agent-state-'));
    dirs.push(d);
    return d;
  };

  it('is absent until written, then round-trips; a rewrite replaces it and leaves no temp files', async () => {
    const dir = path.join(tempDir(), 'nested', '.lifeboat');
    const file = agentStateFile(dir, 'main');
    expect(await readAgentState(file, 'main')).toBeUndefined();
    await writeAgentState(file, incomplete());
    expect(await readAgentState(file, 'main')).toEqual(incomplete());
    await writeAgentState(file, state());
    expect(await readAgentState(file, 'main')).toEqual(state());
    expect(fs.readdirSync(dir)).toEqual(['agent-main.json']);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
  });

  it.each<[string, string, RegExp]>([
    ['not JSON', '{"stream": "main",', /is unreadable: not valid JSON/],
    ['a wrong shape', '{"stream": "main"}', /is unreadable: slot: .*snapshotId: /],
    ['a bad LSN', agentStateJson(state()).replace('0/1CF7460', '0/XYZ'), /consistentLsn: invalid LSN "0\/XYZ"/],
  ])('a file with %s is a PermanentError naming the file and the remedy', async (_name, text, message) => {
    const file = path.join(tempDir(), 'agent-main.json');
    fs.writeFileSync(file, text);
    const err = await readAgentState(file, 'main').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermanentError);
    expect((err as Error).message).toContain(`agent state file ${file} is unreadable`);
    expect((err as Error).message).toMatch(message);
    expect((err as PermanentError).remedy).toMatch(/Restore it from a backup, or delete it/);
  });

  it('refuses a file of another stream', async () => {
    const file = path.join(tempDir(), 'agent-main.json');
    fs.writeFileSync(file, agentStateJson(state({ stream: 'other' })));
    await expect(readAgentState(file, 'main')).rejects.toThrow(/belongs to stream "other", not "main"/);
  });

  it('refuses to write an invalid state', async () => {
    const file = path.join(tempDir(), 'agent-main.json');
    await expect(writeAgentState(file, state({ snapshotId: '' }))).rejects.toThrow(PermanentError);
    expect(fs.existsSync(file)).toBe(false);
  });
});
