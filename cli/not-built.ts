import { EXIT_FAILURE, type CliCommand } from './command.ts';

/**
 * A command that a later issue fills in. It says so plainly and does nothing,
 * so no script can mistake it for a working command.
 */
export function notBuiltYet(path: readonly string[], summary: string, issue: number, plannedUsage: string): CliCommand {
  const name = `lifeboat ${path.join(' ')}`;
  const sentence = `${name} is not built yet: it arrives with issue #${issue}. Nothing was done.`;
  return {
    path,
    summary: `${summary} (not built yet, issue #${issue})`,
    help: `${plannedUsage}\n\n${sentence}\n`,
    async run(_argv, _env, io) {
      io.stderr(`${sentence}\n`);
      return EXIT_FAILURE;
    },
  };
}
