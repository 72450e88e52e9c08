// The failover controller's stored record and its store port.
//
// One document per stream holds what must survive between probe runs: the
// controller state, the operator's pending command, the answers of the last
// hook call and verification, the last step's error (fed back to decide() as
// `lastStepError`), and the claim of the run that is deciding right now. It
// changes only by compare-and-set on the store's version, like the lease, so
// two probe runs never execute steps of the same cycle: the one that claims
// first decides, the other one says so and does nothing.
//
// Every cycle's decision and every probe result is appended to a log (the
// audit trail) that `lifeboat status` and the status function read.
//
// This module is pure: no I/O, no cloud SDK.
import { z } from 'zod';
import { controllerStateSchema, INITIAL_STATE, OPERATOR_COMMANDS, type ControllerState } from './failover-controller.ts';

const ms = z.number().int().nonnegative();

export const operatorRequestSchema = z.strictObject({
  command: z.enum(OPERATOR_COMMANDS),
  requestedAt: ms,
  /** Who asked (user, host), for the audit trail. */
  requestedBy: z.string().min(1),
});

export const cycleClaimSchema = z.strictObject({
  id: z.string().min(1),
  runner: z.string().min(1),
  startedAt: ms,
  /** After this, another run may claim the cycle (the claimant died). */
  expiresAt: ms,
});

export const controlRecordSchema = z.strictObject({
  state: controllerStateSchema,
  updatedAt: ms,
  cycle: cycleClaimSchema.nullable(),
  pendingOperator: operatorRequestSchema.nullable(),
  lastStepError: z.strictObject({ action: z.string(), message: z.string(), permanent: z.boolean(), at: ms }).nullable(),
  hook: z.strictObject({ phase: z.enum(['promote', 'demote']), allowed: z.boolean(), detail: z.string(), at: ms }).nullable(),
  verify: z.strictObject({ equal: z.boolean(), detail: z.string(), at: ms }).nullable(),
  lastDecision: z.strictObject({ action: z.string(), reason: z.string(), at: ms, phase: z.string() }).nullable(),
});

export type ControlRecord = z.output<typeof controlRecordSchema>;
export type OperatorRequest = z.output<typeof operatorRequestSchema>;

export function initialControlRecord(now: number, state: ControllerState = INITIAL_STATE): ControlRecord {
  return { state, updatedAt: now, cycle: null, pendingOperator: null, lastStepError: null, hook: null, verify: null, lastDecision: null };
}

export const controlLogEntrySchema = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('decision'),
    at: ms,
    runner: z.string(),
    phase: z.string(),
    nextPhase: z.string(),
    action: z.string(),
    reason: z.string(),
    /** ok: executed; failed: the step threw; deferred: this runner cannot run the step; skipped: another run held the cycle. */
    outcome: z.enum(['ok', 'failed', 'deferred', 'skipped']),
    error: z.string().optional(),
    epoch: z.number().int().nonnegative(),
  }),
  z.strictObject({
    kind: z.literal('probe'),
    at: ms,
    runner: z.string(),
    outcome: z.enum(['ok', 'failed', 'timeout']),
    latencyMs: z.number().nonnegative(),
    detail: z.string().optional(),
  }),
]);

export type ControlLogEntry = z.output<typeof controlLogEntrySchema>;

export type ControlCasResult = { readonly ok: true; readonly version: string } | { readonly ok: false };

/** Where the controller keeps its record and its log (Firestore in cloud and local mode). */
export interface ControlStore {
  read(): Promise<{ readonly record: ControlRecord; readonly version: string } | undefined>;
  /** Writes `record` only if the stored version is still `expectedVersion` (null: only if none exists). */
  compareAndSet(expectedVersion: string | null, record: ControlRecord): Promise<ControlCasResult>;
  append(entry: ControlLogEntry): Promise<void>;
  /** The newest entries of one kind, newest first. */
  recent(kind: ControlLogEntry['kind'], limit: number): Promise<ControlLogEntry[]>;
}

/** In-memory ControlStore: unit tests and single-process tools. */
export class MemoryControlStore implements ControlStore {
  #record: ControlRecord | undefined;
  #version = 0;
  readonly log: ControlLogEntry[] = [];

  async read(): Promise<{ record: ControlRecord; version: string } | undefined> {
    return this.#record === undefined ? undefined : { record: structuredClone(this.#record), version: String(this.#version) };
  }

  async compareAndSet(expectedVersion: string | null, record: ControlRecord): Promise<ControlCasResult> {
    const current = this.#record === undefined ? null : String(this.#version);
    if (current !== expectedVersion) return { ok: false };
    this.#record = controlRecordSchema.parse(structuredClone(record));
    this.#version += 1;
    return { ok: true, version: String(this.#version) };
  }

  async append(entry: ControlLogEntry): Promise<void> {
    this.log.push(controlLogEntrySchema.parse(entry));
  }

  async recent(kind: ControlLogEntry['kind'], limit: number): Promise<ControlLogEntry[]> {
    return this.log.filter((e) => e.kind === kind).slice(-limit).reverse();
  }
}
