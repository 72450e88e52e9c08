// A CLI command: pure option parsing from injected argv and env, output
// through injected streams, so each command is testable without a process.

export interface CliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly cwd: string;
}

export interface CliCommand {
  /** Words that select the command, e.g. ['config', 'check']. */
  readonly path: readonly string[];
  /** One line for `lifeboat --help`. */
  readonly summary: string;
  /** Full text for `lifeboat <command> --help`. */
  readonly help: string;
  /** Returns the process exit code. */
  run(argv: readonly string[], env: Readonly<Record<string, string | undefined>>, io: CliIo): Promise<number>;
}

/** Exit codes shared by every command. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
