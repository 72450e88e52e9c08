import { describe, expect, it } from 'vitest';
import { commands, findCommand, main } from '../../cli/main.ts';
import type { CliIo } from '../../cli/command.ts';

function capture(): CliIo & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    cwd: process.cwd(),
    stdout: (t: string) => {
      io.out += t;
    },
    stderr: (t: string) => {
      io.err += t;
    },
  };
  return io;
}

describe('lifeboat CLI dispatcher', () => {
  it('--help lists every command of the checkout', async () => {
    const io = capture();
    expect(await main(['--help'], {}, io)).toBe(0);
    for (const c of commands) expect(io.out).toContain(c.path.join(' '));
    for (const name of ['local', 'agent', 'init', 'config check', 'status', 'verify', 'failover', 'failback', 'drill', 'resume', 'cost']) {
      expect(io.out).toContain(`  ${name}`);
    }
  });

  it('prints command help for `<command> --help` without running it', async () => {
    const io = capture();
    expect(await main(['status', '--help'], {}, io)).toBe(0);
    expect(io.out).toMatch(/Usage: lifeboat status/);
    expect(io.err).toBe('');
  });

  it('a command that is not built yet says so and fails', async () => {
    const io = capture();
    expect(await main(['drill'], {}, io)).toBe(1);
    expect(io.err).toMatch(/lifeboat drill is not built yet: it arrives with issue #7\. Nothing was done\./);
  });

  it('an unknown command exits 2 and points at --help', async () => {
    const io = capture();
    expect(await main(['frobnicate'], {}, io)).toBe(2);
    expect(io.err).toMatch(/unknown command "frobnicate".*lifeboat --help/);
  });

  it('a group word alone lists its subcommands', async () => {
    const io = capture();
    expect(await main(['config'], {}, io)).toBe(0);
    expect(io.out).toContain('lifeboat config check');
  });

  it('picks the longest matching command path', () => {
    expect(findCommand(['config', 'check', 'x.yaml'])?.rest).toEqual(['x.yaml']);
    expect(findCommand(['nope'])).toBeUndefined();
  });

  it('--version prints the package version', async () => {
    const io = capture();
    expect(await main(['--version'], {}, io)).toBe(0);
    expect(io.out).toMatch(/^lifeboat \d+\.\d+\.\d+\n$/);
  });
});
