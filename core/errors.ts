// Retryable and permanent errors are kept apart everywhere (Litestream:
// "when in doubt, return the error"). A retryable error means "the same input
// may succeed later" (connection lost, serialization failure, a gap in the
// stream); a permanent one means "this input will never succeed as it is" and
// must be recorded and surfaced, never dropped.

export type ErrorDetails = Readonly<Record<string, unknown>>;

abstract class LifeboatError extends Error {
  abstract readonly retryable: boolean;
  /** What an operator should do about it, as a sentence. */
  readonly remedy: string | undefined;
  readonly details: ErrorDetails;

  constructor(message: string, opts: { remedy?: string; details?: ErrorDetails; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.remedy = opts.remedy;
    this.details = opts.details ?? {};
  }
}

/** The same operation may succeed if tried again later. */
export class RetryableError extends LifeboatError {
  readonly retryable = true;
}

/** The operation will not succeed as it is; record it and stop. */
export class PermanentError extends LifeboatError {
  readonly retryable = false;
}

/** Input failed validation at the edge (a message, a config, an argument). */
export class ValidationError extends PermanentError {}

export function isRetryable(err: unknown): boolean {
  return err instanceof LifeboatError ? err.retryable : false;
}

/** A message for logs and CLI output, with the remedy when there is one. */
export function describeError(err: unknown): string {
  if (err instanceof LifeboatError) {
    return err.remedy ? `${err.message} ${err.remedy}` : err.message;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}
