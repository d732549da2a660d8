/**
 * How a stdio server is launched: the command line wrapped by `prlimit`
 * (resource limits) and `bwrap` (bubblewrap: namespaces and mounts), run as
 * an unprivileged user of its own when the gateway runs as root.
 *
 * What the sandbox gives, and why each piece is there:
 * - a private PID namespace: the child cannot see the gateway, or read its
 *   /proc/<pid>/environ (the brief's first leak);
 * - no network unless configured (`--unshare-net`): a hostile server cannot
 *   call home;
 * - the root file system read-only, a private /tmp, writable paths only as
 *   configured, and the gateway's own secret files masked;
 * - a user of its own: as root, the gateway drops to a uid from a range
 *   before bwrap starts (a user namespace alone would map back to root and
 *   read root's files), one uid per process so the process limit, which
 *   counts per uid, is per process;
 * - limits on CPU time, open files and processes, and address space if
 *   configured (prlimit);
 * - `--die-with-parent`: it dies with the gateway.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, realpathSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';

export interface SandboxConfig {
  readonly mode: 'auto' | 'required' | 'off';
  readonly network: boolean;
  readonly writablePaths: readonly string[];
  readonly hidePaths: readonly string[];
  /** RLIMIT_AS, when configured (none by default: WebAssembly reserves more than any limit). */
  readonly memoryBytes: number | undefined;
  readonly cpuSeconds: number;
  readonly maxOpenFiles: number;
  readonly maxProcesses: number;
  readonly tmpBytes: number;
  readonly gid: number;
}

/** What to run, before any wrapping. */
export interface ProcessSpec {
  readonly command: string;
  readonly args: readonly string[];
  /** Where the server starts; inside the sandbox, default /tmp (its private one). */
  readonly cwd: string | undefined;
  /** The whole environment of the server: nothing else is inherited. */
  readonly env: Readonly<Record<string, string>>;
}

/** The final command line and how to spawn it. */
export interface SandboxPlan {
  readonly command: string;
  readonly args: string[];
  readonly env: Record<string, string>;
  readonly cwd: string | undefined;
  readonly uid: number | undefined;
  readonly gid: number | undefined;
  readonly sandboxed: boolean;
}

/**
 * Where a credential file is seen inside the sandbox: in its private /tmp
 * (the read-only root has no place of its own for it), bound read-only, so
 * the server can read it but not replace it.
 */
export const SANDBOX_CREDENTIAL_PATH = '/tmp/.portcullis/credential';

let bwrapCheck: { ok: boolean; detail: string } | undefined;

/** The uid the check runs as (as root): below the pool's range, never a server's. */
const CHECK_UID = 199_999;

/**
 * Whether the sandbox can start here, checked once by starting one exactly
 * as a server's would be (prlimit, bwrap, the same namespaces and mounts and,
 * as root, the same drop to a user of its own) around `true`.
 */
export function sandboxSupport(): { ok: boolean; detail: string } {
  if (bwrapCheck) return bwrapCheck;
  const plan = planSandbox(
    {
      command: 'true',
      args: [],
      cwd: undefined,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    },
    {
      mode: 'required',
      network: false,
      writablePaths: [],
      hidePaths: [],
      memoryBytes: 1024 ** 3,
      cpuSeconds: 10,
      maxOpenFiles: 64,
      maxProcesses: 64,
      tmpBytes: 1024 ** 2,
      gid: 65_534,
    },
    CHECK_UID,
    undefined,
  );
  try {
    execFileSync(plan.command, plan.args, {
      env: plan.env,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 10_000,
      ...(plan.uid === undefined ? {} : { uid: plan.uid, gid: plan.gid }),
    });
    bwrapCheck = { ok: true, detail: 'bwrap and prlimit work' };
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string; code?: string };
    const why =
      e.code === 'ENOENT'
        ? 'prlimit (util-linux) is not installed'
        : e.stderr?.toString().trim() || e.message;
    bwrapCheck = { ok: false, detail: why };
  }
  return bwrapCheck;
}

/** Allocates a distinct uid to each live sandboxed process, from a range no login user has. */
export class UidPool {
  private readonly inUse = new Set<number>();
  private next: number;
  constructor(
    private readonly first = 200_000,
    private readonly count = 65_536,
  ) {
    this.next = first;
  }
  take(): number {
    for (let i = 0; i < this.count; i++) {
      const uid = this.next;
      this.next = this.first + ((this.next - this.first + 1) % this.count);
      if (!this.inUse.has(uid)) {
        this.inUse.add(uid);
        return uid;
      }
    }
    throw new Error('no sandbox uid left');
  }
  release(uid: number | undefined): void {
    if (uid !== undefined) this.inUse.delete(uid);
  }
}

/**
 * The directories right under /tmp that hold any of `paths` (absolute paths
 * that exist on the host), e.g. `/tmp/ci` for `/tmp/ci/app/server.js`.
 */
export function hostTmpRoots(paths: ReadonlyArray<string | undefined>): string[] {
  const roots = new Set<string>();
  for (const p of paths) {
    if (p === undefined || !p.startsWith('/tmp/')) continue;
    const top = `/tmp/${p.slice('/tmp/'.length).split('/')[0] ?? ''}`;
    if (top !== '/tmp/' && existsSync(p)) roots.add(top);
  }
  return [...roots];
}

/** `p` with its symlinks resolved, or as given when it does not exist (the start-up check says so). */
export function realPath(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

/**
 * Whether the sandbox's user may do `bit` (4 read, 2 write, 1 search) on a
 * file it does not own (its uid is one of its own): the group's bits when
 * the file is in its group `gid`, else the others' bits.
 */
export function sandboxUserMay(st: Stats, gid: number, bit: 1 | 2 | 4): boolean {
  return (st.mode & (st.gid === gid ? bit << 3 : bit)) !== 0;
}

/** The directories above `p`, from `/` down, that the sandbox's user cannot search. */
export function blockedAncestors(p: string, gid: number): string[] {
  const blocked: string[] = [];
  const dirs: string[] = [];
  for (let dir = path.dirname(p); ; dir = path.dirname(dir)) {
    dirs.unshift(dir);
    if (dir === path.dirname(dir)) break;
  }
  for (const dir of dirs) {
    try {
      if (!sandboxUserMay(statSync(dir), gid, 1)) blocked.push(dir);
    } catch {
      break;
    }
  }
  return blocked;
}

/**
 * How the sandbox reaches host paths that sit below a directory its user
 * cannot search (a checkout in a 0700 `mktemp -d` or home directory): the
 * topmost such directory is covered by an empty tmpfs (what else it holds
 * stays out of sight), and the directory just below the deepest one is bound
 * back, so the path works as written. bwrap run as that user cannot do it (it
 * resolves every source path as its caller), so an outer bwrap run as root
 * does, before the drop to the user (planSandbox).
 */
export function reachBinds(
  paths: ReadonlyArray<string | undefined>,
  gid: number,
): { covers: string[]; binds: string[] } {
  const covers = new Set<string>();
  const binds = new Set<string>();
  for (const given of paths) {
    if (given === undefined || !path.isAbsolute(given) || !existsSync(given)) continue;
    for (const p of new Set([given, realPath(given)])) {
      const blocked = blockedAncestors(p, gid);
      const deepest = blocked.at(-1);
      if (deepest === undefined) continue;
      covers.add(blocked[0] as string);
      binds.add(path.join(deepest, path.relative(deepest, p).split(path.sep)[0] as string));
    }
  }
  // A cover inside another is already covered.
  const outer = [...covers].filter((c) => ![...covers].some((o) => o !== c && within(c, o)));
  return { covers: outer, binds: [...binds].sort((a, b) => a.length - b.length) };
}

/** Whether `p` is `dir` or below it. */
export function within(p: string, dir: string): boolean {
  const rel = path.relative(dir, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

function limits(config: SandboxConfig): string[] {
  return [
    ...(config.memoryBytes === undefined ? [] : [`--as=${config.memoryBytes}`]),
    `--cpu=${config.cpuSeconds}`,
    `--nofile=${config.maxOpenFiles}`,
    `--nproc=${config.maxProcesses}`,
  ];
}

/**
 * The command line for `spec` under `config`. `uid` is the sandbox user (only
 * honoured when the gateway runs as root); `credentialFile`, named
 * `credential`, is seen at SANDBOX_CREDENTIAL_PATH through its directory,
 * bound read-only.
 */
export function planSandbox(
  spec: ProcessSpec,
  config: SandboxConfig,
  uid: number | undefined,
  credentialFile: string | undefined,
): SandboxPlan {
  const root = process.getuid?.() === 0;
  const env = { ...spec.env };
  if (credentialFile !== undefined) env.MCP_CREDENTIAL_FILE = SANDBOX_CREDENTIAL_PATH;
  const bwrap: string[] = [
    '--unshare-all',
    ...(config.network ? ['--share-net'] : []),
    ...(root ? ['--unshare-user', '--disable-userns'] : []),
    '--die-with-parent',
    '--new-session',
    '--ro-bind',
    '/',
    '/',
    '--proc',
    '/proc',
    '--dev',
    '/dev',
    '--size',
    String(config.tmpBytes),
    '--tmpfs',
    '/tmp',
  ];
  const wanted = [spec.command, spec.cwd, ...spec.args];
  // The private /tmp hides the host's: a server installed under it (its command, working
  // directory or a path argument) gets the top directory holding it back, read-only.
  for (const p of hostTmpRoots(wanted)) bwrap.push('--ro-bind', p, p);
  // As root the server runs as a user of its own, which cannot walk through a directory
  // only root may search, and neither can bwrap as that user: what it needs there is made
  // reachable first, by an outer bwrap run as root (reachBinds), before the drop.
  const reach = root
    ? reachBinds([...wanted, ...config.writablePaths], config.gid)
    : { covers: [], binds: [] };
  const reachable = (p: string): boolean =>
    !root ||
    blockedAncestors(p, config.gid).length === 0 ||
    reach.binds.some(
      (b) => within(p, b) && blockedAncestors(p, config.gid).every((d) => !within(d, b)),
    );
  // Secrets of the gateway's own (its config, keys, credential files) are masked. Run as
  // another user, the child can only read what others may read: only those need a mask
  // (and bwrap, as that user, could not mount over the rest).
  for (const p of config.hidePaths) {
    const visible = root ? readableInSandbox(p) && reachable(p) : existsSync(p);
    if (visible) bwrap.push('--ro-bind', '/dev/null', p);
  }
  for (const p of config.writablePaths) bwrap.push('--bind', p, p);
  if (credentialFile !== undefined) {
    // Its directory, not the file: a renewed credential is renamed into place there
    // and the server sees it (a file bind would keep showing the first one).
    bwrap.push('--ro-bind', path.dirname(credentialFile), path.dirname(SANDBOX_CREDENTIAL_PATH));
  }
  bwrap.push('--chdir', spec.cwd ?? '/tmp', '--', spec.command, ...spec.args);
  const inner = ['prlimit', ...limits(config), '--', 'bwrap', ...bwrap];
  if (reach.covers.length === 0) {
    return {
      command: inner[0] as string,
      args: inner.slice(1),
      env,
      cwd: undefined,
      uid: root ? uid : undefined,
      gid: root ? config.gid : undefined,
      sandboxed: true,
    };
  }
  // The outer bwrap only changes the view (a mount namespace), then drops to the sandbox's
  // user; the sandbox proper is the inner one, as without it. Its own pid namespace keeps
  // it waiting for, and taking down with it, everything inside: the parent-death signal
  // alone does not outlive the change of user.
  const outer = ['--unshare-pid', '--dev-bind', '/', '/', '--die-with-parent'];
  for (const cover of reach.covers) outer.push('--tmpfs', cover);
  // The directories between a cover and a bind, made searchable (bwrap would make them 0700).
  const made = new Set<string>();
  for (const p of reach.binds) {
    const cover = reach.covers.find((c) => within(p, c)) as string;
    const between: string[] = [];
    for (let dir = path.dirname(p); dir !== cover && within(dir, cover); dir = path.dirname(dir))
      between.unshift(dir);
    for (const dir of between.filter((d) => !made.has(d))) {
      made.add(dir);
      outer.push('--perms', '0755', '--dir', dir);
    }
    outer.push('--ro-bind', p, p);
  }
  // The inner bwrap binds these read-write: they must be so in the view it starts from.
  for (const p of config.writablePaths) {
    if (reach.covers.some((c) => within(p, c))) outer.push('--bind', p, p);
  }
  // A cover is only there to walk through: read-only, like the rest of the root.
  for (const cover of reach.covers) outer.push('--remount-ro', cover);
  return {
    // The outer bwrap dies with the gateway (its own --die-with-parent is for its child).
    command: 'setpriv',
    args: [
      '--pdeathsig=SIGKILL',
      '--',
      'bwrap',
      ...outer,
      '--',
      'setpriv',
      `--reuid=${uid ?? CHECK_UID}`,
      `--regid=${config.gid}`,
      '--clear-groups',
      '--no-new-privs',
      // A change of user clears the parent-death signal the outer bwrap set: set it again.
      '--pdeathsig=SIGKILL',
      '--',
      ...inner,
    ],
    env,
    cwd: undefined,
    uid: undefined,
    gid: undefined,
    sandboxed: true,
  };
}

/** Whether others may read `file` itself (its directories are reachBinds' concern). */
function readableInSandbox(file: string): boolean {
  try {
    return (statSync(file).mode & 0o004) !== 0;
  } catch {
    return false;
  }
}

/**
 * The command line for `spec` without a sandbox (sandbox mode off, or auto
 * where bubblewrap cannot run): the clean environment and, as root, a user
 * of its own still apply.
 */
export function planUnsandboxed(
  spec: ProcessSpec,
  uid: number | undefined,
  gid: number,
  credentialFile: string | undefined,
): SandboxPlan {
  const root = process.getuid?.() === 0;
  return {
    command: spec.command,
    args: [...spec.args],
    env: {
      ...spec.env,
      ...(credentialFile === undefined ? {} : { MCP_CREDENTIAL_FILE: credentialFile }),
    },
    cwd: spec.cwd,
    uid: root ? uid : undefined,
    gid: root ? gid : undefined,
    sandboxed: false,
  };
}
