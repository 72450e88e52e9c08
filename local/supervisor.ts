// Local mode's supervisor: keeps a child process running. One that dies
// (a crash, a `kill -9`) is started again after a short backoff, with a log
// line that says what happened. Stopping it on purpose does not restart it.
import { backoffDelayMs } from '../core/backoff.ts';
import type { RunningChild } from './local-stack.ts';

export interface SupervisedOptions {
  readonly name: string;
  readonly start: () => Promise<RunningChild>;
  readonly log: (line: string) => void;
  /** Restart backoff: first and largest delay (ms). */
  readonly minDelayMs?: number;
  readonly maxDelayMs?: number;
}

export class Supervised {
  #child: RunningChild | undefined;
  #stopping = false;
  #restarts = 0;
  #failuresInARow = 0;
  #timer: NodeJS.Timeout | undefined;
  #startedAt = 0;

  constructor(private readonly o: SupervisedOptions) {}

  get name(): string {
    return this.o.name;
  }
  get pid(): number | undefined {
    return this.#child && !this.#child.hasExited() ? this.#child.pid : undefined;
  }
  get restarts(): number {
    return this.#restarts;
  }

  async start(): Promise<void> {
    this.#stopping = false;
    await this.#launch();
  }

  async #launch(): Promise<void> {
    const child = await this.o.start();
    this.#child = child;
    this.#startedAt = Date.now();
    void child.exited.then((how) => this.#onExit(child, how));
  }

  #onExit(child: RunningChild, how: string): void {
    if (this.#stopping || child !== this.#child) return;
    // A child that ran a while before dying starts over from the short delay.
    this.#failuresInARow = Date.now() - this.#startedAt > 30_000 ? 1 : this.#failuresInARow + 1;
    const delay = backoffDelayMs(this.#failuresInARow, { initialMs: this.o.minDelayMs ?? 250, maxMs: this.o.maxDelayMs ?? 5_000, multiplier: 2 });
    this.o.log(`supervisor: ${this.o.name} (pid ${child.pid}) ended (${how}); restarting it in ${(delay / 1000).toFixed(1)} s`);
    this.#timer = setTimeout(() => {
      if (this.#stopping) return;
      this.#restarts += 1;
      this.#launch().then(
        () => this.o.log(`supervisor: ${this.o.name} restarted (pid ${this.#child?.pid}, restart ${this.#restarts})`),
        (err: unknown) => {
          this.o.log(`supervisor: could not restart ${this.o.name}: ${err instanceof Error ? err.message : String(err)}; trying again`);
          this.#onExit(child, 'failed to start');
        },
      );
    }, delay);
  }

  /** Sends a signal to the running child (chaos tests: SIGKILL); the supervisor restarts it. */
  signal(sig: NodeJS.Signals): void {
    this.#child?.signal(sig);
  }

  /** Waits until a restarted child is running (after signal()). */
  async running(timeoutMs = 30_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const pid = this.pid;
      if (pid !== undefined) return pid;
      if (Date.now() > deadline) throw new Error(`${this.o.name} is not running after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    await this.#child?.stop();
  }
}
