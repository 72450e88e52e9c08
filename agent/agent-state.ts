// The agent's small durable state: one JSON file per stream,
// `<stateDir>/agent-<stream>.json`:
//
//   { "stream": "main", "slot": "lifeboat_main", "snapshotId": "<uuid>",
//     "consistentLsn": "0/1CF7460", "snapshotCompletedAt": null | "<ISO>" }
//
// A file, not a table: a FOR ALL TABLES publication streams every table of the
// source, the agent's own schema included, so state kept there would be
// replicated to the standby (see source-setup.ts).
//
// The order of writes makes every crash recoverable by planStart():
//   1. create the slot (CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT);
//   2. write { snapshotId, consistentLsn, snapshotCompletedAt: null };
//   3. copy every table and publish the chunks and the snapshot-complete
//      marker;
//   4. once Pub/Sub acknowledged the marker, write snapshotCompletedAt.
// A crash between 1 and 2 leaves a slot without state, one during 3 a slot
// with an incomplete snapshot: both restart the snapshot (the exported snapshot
// died with its connection, so a copy cannot resume; the new snapshotId tells
// the apply side to replace the incomplete one). Only after 4 does the agent
// stream from the slot.
//
// Writes are atomic: temp file in the same directory, fsync, rename, fsync the
// directory. A file that is not valid JSON or not this shape is a
// PermanentError naming the file: guessing could skip changes.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { STREAM_ID_PATTERN } from '../core/change-batch.ts';
import type { LifeboatConfig } from '../core/config.ts';
import { PermanentError, RetryableError } from '../core/errors.ts';
import { formatLsn, lsnText } from '../core/lsn.ts';
import type { SlotInfo } from './source-setup.ts';

export const agentStateSchema = z.strictObject({
  stream: z.string().regex(STREAM_ID_PATTERN, 'must be a stream id'),
  slot: z.string().regex(/^[a-z0-9_]{1,63}$/, 'must be a replication slot name'),
  /** The current (or last) initial copy. */
  snapshotId: z.string().min(1),
  /** The slot's consistent point: the copy shows the database exactly there. */
  consistentLsn: lsnText,
  /** When the apply side was sent every chunk and the snapshot-complete marker (Pub/Sub acknowledged); null while copying. */
  snapshotCompletedAt: z.iso.datetime({ offset: true }).nullable(),
});

export type AgentState = z.output<typeof agentStateSchema>;

/**
 * Where state files live: `stateDir` when given, else LIFEBOAT_STATE_DIR, else
 * the parent of storage.localDir (`.lifeboat/objects` → `.lifeboat`), resolved
 * against the config file's directory like localDir itself.
 */
export function resolveStateDir(opts: {
  readonly config: Pick<LifeboatConfig, 'storage'>;
  readonly baseDir: string;
  readonly stateDir?: string | undefined;
  readonly env?: Readonly<Record<string, string | undefined>>;
}): string {
  const explicit = opts.stateDir ?? (opts.env?.LIFEBOAT_STATE_DIR || undefined);
  if (explicit !== undefined) return path.resolve(opts.baseDir, explicit);
  return path.dirname(path.resolve(opts.baseDir, opts.config.storage.localDir));
}

/** `<dir>/agent-<stream>.json`. */
export function agentStateFile(stateDir: string, stream: string): string {
  if (!STREAM_ID_PATTERN.test(stream)) throw new PermanentError(`invalid stream id ${JSON.stringify(stream)}`);
  return path.join(stateDir, `agent-${stream}.json`);
}

function corruptStateError(file: string, problem: string, cause?: unknown): PermanentError {
  return new PermanentError(`agent state file ${file} is unreadable: ${problem}`, {
    remedy:
      `Restore it from a backup, or delete it: the agent then drops the slot and copies every table again with a new snapshot ` +
      `(the same as \`lifeboat agent --resnapshot\`).`,
    details: { file },
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * Reads and validates the state file; undefined when it does not exist.
 * @throws PermanentError naming the file when it is corrupt or belongs to
 *   another stream; RetryableError for other I/O failures.
 */
export async function readAgentState(file: string, expectedStream?: string): Promise<AgentState | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if ((err as NodeJS.ErrnoException).code === 'EACCES') throw corruptStateError(file, 'permission denied', err);
    throw new RetryableError(`could not read agent state file ${file}: ${(err as Error).message}`, { cause: err, details: { file } });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw corruptStateError(file, `not valid JSON (${(err as Error).message})`, err);
  }
  const parsed = agentStateSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(top level)'}: ${i.message}`).join('; ');
    throw corruptStateError(file, issues);
  }
  if (expectedStream !== undefined && parsed.data.stream !== expectedStream) {
    throw corruptStateError(file, `it belongs to stream ${JSON.stringify(parsed.data.stream)}, not ${JSON.stringify(expectedStream)}`);
  }
  return parsed.data;
}

/** The JSON written for a state (LSN as text). */
export function agentStateJson(state: AgentState): string {
  const wire = {
    stream: state.stream,
    slot: state.slot,
    snapshotId: state.snapshotId,
    consistentLsn: formatLsn(state.consistentLsn),
    snapshotCompletedAt: state.snapshotCompletedAt,
  };
  return `${JSON.stringify(wire, null, 2)}\n`;
}

/** Writes the state atomically (temp, fsync, rename, fsync dir); creates the directory. */
export async function writeAgentState(file: string, state: AgentState): Promise<void> {
  const checked = agentStateSchema.safeParse(JSON.parse(agentStateJson(state)));
  if (!checked.success) throw new PermanentError(`refusing to write an invalid agent state to ${file}: ${checked.error.message}`);
  const dir = path.dirname(file);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    const handle = await fs.open(tmp, 'wx', 0o600);
    try {
      await handle.writeFile(agentStateJson(state), 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => {});
    throw new RetryableError(`could not write agent state file ${file}: ${(err as Error).message}`, { cause: err, details: { file } });
  }
  // The rename is durable only once the directory entry is on disk.
  const dirHandle = await fs.open(dir, 'r');
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}

// ---------------------------------------------------------------------------
// What to do at start

export type StartAction = 'stream-from-slot' | 'fresh-snapshot' | 'restart-snapshot' | 'fail';

export interface StartPlan {
  readonly action: StartAction;
  /** Why, as a full sentence (logged, shown in /status). */
  readonly reason: string;
  /** For 'fail': what the operator does. */
  readonly remedy?: string;
}

/** The slot facts planStart needs (an inspectSlot result). */
export type PlannedSlot = Pick<SlotInfo, 'name' | 'plugin' | 'slotType' | 'database' | 'currentDatabase' | 'walStatus'>;

export interface StartInput {
  readonly state: AgentState | undefined;
  /** inspectSlot() of the configured slot; undefined when it does not exist. */
  readonly slot: PlannedSlot | undefined;
  /** `lifeboat agent --resnapshot`. */
  readonly resnapshot: boolean;
  /** The configured slot name (source.slot); defaults to the slot's or the state's. */
  readonly slotName?: string;
}

const RESNAPSHOT = '`lifeboat agent --resnapshot`';

/**
 * Decides how the agent starts (pure):
 *
 *   slot not ours (other plugin/db)         → fail (never drop a foreign slot)
 *   --resnapshot                            → restart-snapshot
 *   slot lost (wal_status = lost)           → fail, remedy --resnapshot
 *   state for another slot name             → fail, remedy: config or --resnapshot
 *   slot + snapshot completed               → stream-from-slot
 *   slot + snapshot not completed / no state → restart-snapshot (drop slot, new snapshot)
 *   no slot + no state                      → fresh-snapshot
 *   no slot + snapshot not completed        → restart-snapshot (nothing to drop; new snapshotId)
 *   no slot + snapshot completed            → fail, remedy --resnapshot
 */
export function planStart(input: StartInput): StartPlan {
  const { state, slot, resnapshot } = input;
  const slotName = input.slotName ?? slot?.name ?? state?.slot ?? '(unknown)';

  if (slot !== undefined && (slot.slotType !== 'logical' || slot.plugin !== 'pgoutput')) {
    return {
      action: 'fail',
      reason: `Replication slot "${slot.name}" exists but is a ${slot.slotType} slot${slot.plugin ? ` of plugin ${slot.plugin}` : ''}, not a pgoutput slot made by Lifeboat, so the agent will not read or drop it.`,
      remedy: 'Set source.slot to another name; Lifeboat never drops a slot it did not make.',
    };
  }
  if (slot !== undefined && slot.database !== slot.currentDatabase) {
    return {
      action: 'fail',
      reason: `Replication slot "${slot.name}" belongs to database ${slot.database}, not to ${slot.currentDatabase}, which the agent replicates.`,
      remedy: 'Slot names are cluster-wide: set source.slot to a name unique to this database.',
    };
  }
  if (resnapshot) {
    return {
      action: 'restart-snapshot',
      reason: `A new snapshot was requested (--resnapshot), so the agent ${slot ? `drops slot "${slot.name}" and ` : ''}copies every table again under a new snapshotId.`,
    };
  }
  if (slot?.walStatus === 'lost') {
    return {
      action: 'fail',
      reason: `Replication slot "${slot.name}" was invalidated (wal_status = lost): PostgreSQL removed WAL it still needed, so changes were lost from the stream.`,
      remedy: `Run ${RESNAPSHOT}: it drops the slot and copies every table again.`,
    };
  }
  if (state !== undefined && input.slotName !== undefined && state.slot !== input.slotName) {
    return {
      action: 'fail',
      reason: `The state file records slot "${state.slot}" but the config names slot "${input.slotName}", so the agent cannot tell whether the standby matches the new slot.`,
      remedy: `Set source.slot back to "${state.slot}", or run ${RESNAPSHOT} to copy everything through "${input.slotName}" (then drop the old slot "${state.slot}" to free its WAL).`,
    };
  }
  const completed = state?.snapshotCompletedAt ?? null;
  if (slot !== undefined) {
    if (state !== undefined && completed !== null) {
      return {
        action: 'stream-from-slot',
        reason: `Slot "${slot.name}" exists and snapshot ${state.snapshotId} was completed at ${completed}, so the agent streams from the slot's confirmed position.`,
      };
    }
    return {
      action: 'restart-snapshot',
      reason:
        state === undefined
          ? `Slot "${slot.name}" exists but there is no state file, so nothing proves the standby got a complete copy: the agent drops the slot and copies every table again.`
          : `Snapshot ${state.snapshotId} was interrupted before it completed and its exported snapshot died with its connection, so the agent drops slot "${slot.name}" and copies every table again under a new snapshotId.`,
    };
  }
  if (state === undefined) {
    return { action: 'fresh-snapshot', reason: `There is no slot "${slotName}" and no state file, so the agent creates the slot and copies every table.` };
  }
  if (completed === null) {
    return {
      action: 'restart-snapshot',
      reason: `Snapshot ${state.snapshotId} was interrupted before it completed and slot "${slotName}" no longer exists, so the agent creates the slot and copies every table again under a new snapshotId.`,
    };
  }
  return {
    action: 'fail',
    reason: `Slot "${slotName}" is gone although snapshot ${state.snapshotId} completed at ${completed}: changes made since the slot was dropped were never streamed.`,
    remedy: `Run ${RESNAPSHOT} to create the slot and copy every table again.`,
  };
}
