// `lifeboat` command dispatcher. Every command of the checkout is listed here,
// built or not, so `lifeboat --help` is the map of what exists.
import { readFileSync } from 'node:fs';
import { EXIT_OK, EXIT_USAGE, type CliCommand, type CliIo } from './command.ts';
import { notBuiltYet } from './not-built.ts';
import { configCheckCommand, configDefaultsCommand } from './commands/config.ts';
import { costCommand } from './commands/cost.ts';
import { agentCommand } from './commands/agent.ts';
import { resumeCommand } from './commands/resume.ts';
import { failoverCommand } from './commands/failover.ts';
import { failbackCommand } from './commands/failback.ts';
import { statusCommand } from './commands/status.ts';
import { verifyCommand } from './commands/verify.ts';
import { localCommand } from './commands/local.ts';
import { initCommand } from './commands/init.ts';

export const commands: readonly CliCommand[] = [
  localCommand,
  agentCommand,
  initCommand,
  configCheckCommand,
  configDefaultsCommand,
  statusCommand,
  verifyCommand,
  failoverCommand,
  failbackCommand,
  notBuiltYet(['drill'], 'run a disaster-recovery drill and report detection, switch, RTO and RPO', 7,
    'Usage: lifeboat drill [--hard] [--json]'),
  resumeCommand,
  costCommand,
];

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export function usage(): string {
  const width = Math.max(...commands.map((c) => c.path.join(' ').length));
  const lines = commands.map((c) => `  ${c.path.join(' ').padEnd(width)}  ${c.summary}`);
  return [
    'Usage: lifeboat <command> [options]',
    '',
    'A scale-to-zero cloud standby for a local PostgreSQL app.',
    '',
    'Commands:',
    ...lines,
    '',
    'Options:',
    '  -h, --help     show help (also after a command: lifeboat status --help)',
    '  --version      print the version',
    '',
  ].join('\n');
}

/** Finds the command whose path is the longest prefix of argv. */
export function findCommand(argv: readonly string[]): { command: CliCommand; rest: string[] } | undefined {
  let best: CliCommand | undefined;
  for (const c of commands) {
    if (c.path.every((word, i) => argv[i] === word) && (!best || c.path.length > best.path.length)) best = c;
  }
  return best ? { command: best, rest: argv.slice(best.path.length) } : undefined;
}

const processIo: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  cwd: process.cwd(),
};

export async function main(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  io: CliIo = processIo,
): Promise<number> {
  const first = argv[0];
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    io.stdout(usage());
    return EXIT_OK;
  }
  if (first === '--version' || first === 'version') {
    io.stdout(`lifeboat ${packageVersion()}\n`);
    return EXIT_OK;
  }
  const found = findCommand(argv);
  if (!found) {
    // A group word alone (`lifeboat config`) lists its subcommands.
    const group = commands.filter((c) => c.path[0] === first);
    if (group.length > 0 && argv.length === 1) {
      io.stdout(group.map((c) => `  lifeboat ${c.path.join(' ')}  ${c.summary}`).join('\n') + '\n');
      return EXIT_OK;
    }
    io.stderr(`lifeboat: unknown command "${argv.join(' ')}". Run \`lifeboat --help\` for the list of commands.\n`);
    return EXIT_USAGE;
  }
  if (found.rest.includes('--help') || found.rest.includes('-h')) {
    io.stdout(found.command.help.endsWith('\n') ? found.command.help : `${found.command.help}\n`);
    return EXIT_OK;
  }
  return found.command.run(found.rest, env, io);
}
