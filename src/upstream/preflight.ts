/**
 * Whether a stdio server can start here, decided before any process is
 * spawned: at start-up, by `portcullis config check`, and again before each
 * process (cheap: a few stat calls), so a server fixed meanwhile starts and
 * one broken meanwhile is refused as "cannot start", never counted as a
 * crash. What it checks, as the server's own user when the gateway is root:
 * 1. the command is found (on the PATH it is given, when it has no slash)
 *    and may be executed;
 * 2. its working directory exists;
 * 3. without a sandbox, the command, the working directory and path
 *    arguments can be reached (the sandbox makes them reachable, sandbox.ts);
 * 4. each writable path exists (bwrap cannot bind it otherwise) and is
 *    writable: a warning only, with the fix (some are given for their sockets).
 */
import { accessSync, constants, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { blockedAncestors, sandboxUserMay, type ProcessSpec } from './sandbox.js';

export interface StartProblem {
  /** The key it is about, relative to the server (`command`, `sandbox.writablePaths[0]`). */
  readonly key: string;
  readonly message: string;
  /** The server cannot start at all; else it starts, and the problem shows later. */
  readonly fatal: boolean;
}

export interface StartCheck {
  readonly spec: ProcessSpec;
  /** Writable paths as configured, and as resolved (symlinks followed). */
  readonly writablePaths: ReadonlyArray<{ readonly given: string; readonly real: string }>;
  readonly gid: number;
  readonly sandboxed: boolean;
}

function statOf(p: string): Stats | undefined {
  try {
    return statSync(p);
  } catch {
    return undefined;
  }
}

/** Whether the server's user may do `bit` on `p`: as root, a user of its own; else the gateway's. */
function may(p: string, st: Stats, gid: number, bit: 1 | 2 | 4): boolean {
  if (process.getuid?.() === 0) return sandboxUserMay(st, gid, bit);
  try {
    accessSync(p, bit === 1 ? constants.X_OK : bit === 2 ? constants.W_OK : constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

const WHO_ROOT = "the server's own user (a uid of its own)";

/** Every reason `check`'s server cannot start, or will fail later, with the fix. */
export function startProblems(check: StartCheck): StartProblem[] {
  const { spec, gid, sandboxed } = check;
  const root = process.getuid?.() === 0;
  const who = root ? `${WHO_ROOT}, group ${gid}` : "the gateway's user";
  const problems: StartProblem[] = [];
  const unreachable = (key: string, p: string): void => {
    // The sandbox binds what a root-only directory hides (sandbox.ts); without it, nothing can.
    if (!root || sandboxed) return;
    const dir = blockedAncestors(p, gid).at(-1);
    if (dir === undefined) return;
    problems.push({
      key,
      fatal: true,
      message: `${p} is below ${dir}, which ${who} cannot enter; chmod o+x ${dir}, install the server where others may read it, or run it sandboxed`,
    });
  };

  const searched = spec.env.PATH ?? '';
  let command: string | undefined;
  if (spec.command.includes('/')) {
    const file = path.resolve(spec.cwd ?? process.cwd(), spec.command);
    const st = statOf(file);
    if (st === undefined || !st.isFile()) {
      problems.push({ key: 'command', fatal: true, message: `command ${file} does not exist` });
    } else command = file;
  } else {
    const found = searched
      .split(':')
      .filter((dir) => dir !== '')
      .map((dir) => path.join(dir, spec.command))
      .filter((file) => statOf(file)?.isFile());
    if (found.length === 0) {
      problems.push({
        key: 'command',
        fatal: true,
        message: `command '${spec.command}' is not found on the PATH searched (${searched}); install it, or give its absolute path`,
      });
    } else {
      // As execvp does: the first one that may be run.
      command =
        found.find((file) => may(file, statOf(file) as Stats, gid, 1)) ?? (found[0] as string);
    }
  }
  if (command !== undefined) {
    if (!may(command, statOf(command) as Stats, gid, 1)) {
      problems.push({
        key: 'command',
        fatal: true,
        message: `command ${command} may not be executed by ${who}; chmod o+rx ${command}`,
      });
    }
    unreachable('command', command);
  }

  if (spec.cwd !== undefined) {
    if (!statOf(spec.cwd)?.isDirectory()) {
      problems.push({ key: 'cwd', fatal: true, message: `${spec.cwd} is not a directory` });
    } else unreachable('cwd', spec.cwd);
  }
  spec.args.forEach((arg, i) => {
    if (path.isAbsolute(arg) && statOf(arg) !== undefined) unreachable(`args[${i}]`, arg);
  });

  check.writablePaths.forEach(({ given, real }, i) => {
    const key = `sandbox.writablePaths[${i}]`;
    const shown = real === given ? given : `${given} (${real})`;
    const st = statOf(real);
    if (st === undefined) {
      problems.push({
        key,
        fatal: true,
        message: `${shown} does not exist; create it, or remove it from writablePaths`,
      });
      return;
    }
    if (may(real, st, gid, 2) && (!st.isDirectory() || may(real, st, gid, 1))) return;
    problems.push({
      key,
      fatal: false,
      message: root
        ? `${shown} is not writable by ${who}: its writes will fail (EACCES); chgrp ${gid} ${real} && chmod g+w${st.isDirectory() ? 'x' : ''} ${real}, or set sandbox.gid to its group (${st.gid})`
        : `${shown} is not writable by ${who}: its writes will fail (EACCES)`,
    });
  });
  return problems;
}
