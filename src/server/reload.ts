/**
 * Hot reload of the policy: reads the configuration file again, builds the
 * policy from it and, only when both succeed, hands the new policy to the
 * gateway, which swaps it in one assignment. Everything else in the file
 * applies on restart only, and what differs there is named in a warning.
 *
 * In order, for each reload (reloads never overlap: one waits for the last):
 * 1. load the file as the CLI does (YAML, `${ENV}`, schema, cross checks);
 * 2. build the policy (grants, CEL conditions, manifest files);
 * 3. on any problem: log it, count it, keep the policy in force, return it;
 * 4. else swap, log what changed and what needs a restart.
 *
 * Triggers: `reload()` (the CLI calls it on SIGHUP), and a change to the
 * file or to a manifest file it names, seen by watching their directories
 * (a directory watch survives editors and tools that replace a file by
 * renaming a new one over it), debounced.
 */
import { createHash } from 'node:crypto';
import { readFileSync, realpathSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import { ConfigError } from '../config/load.js';
import { liveDifferences, manifestFiles, restartDifferences } from '../config/diff.js';
import type { Config } from '../config/schema.js';
import type { Policy } from '../policy/policy.js';
import { ManifestError } from '../policy/manifest.js';
import { PolicyLoadError } from './policy-loader.js';
import type { Metrics } from '../telemetry/metrics.js';

/** Quiet time after the last file event before reloading: one save is often several events. */
export const RELOAD_DEBOUNCE_MS = 200;

/**
 * The name Kubernetes' atomic writer (ConfigMap and Secret volumes) renames
 * into place on an update; the file itself is a symlink through it, so no
 * event names the file.
 */
const ATOMIC_WRITER_LINK = '..data';

export interface ReloadProblem {
  /** The file at fault: the configuration, or a manifest it names. */
  readonly file: string;
  /** Dotted path in the configuration (`tenants.acme.rules[0].when`), or a manifest's JSONPath. */
  readonly path: string;
  readonly message: string;
}

export type ReloadResult =
  | {
      readonly ok: true;
      /** The policy parts that differ from the policy that was in force (`tenants.acme`, `servers.db.manifest`). */
      readonly changed: string[];
      /** What differs from the running configuration but applies only on restart (not applied). */
      readonly restartRequired: string[];
    }
  | { readonly ok: false; readonly problems: ReloadProblem[] };

export interface ReloaderDeps {
  readonly file: string;
  /** Reads and checks the file (the CLI's loader: the file with its command-line flags over it). */
  readonly load: (file: string) => Promise<Config>;
  /** The configuration the gateway runs: what a restart would change is measured against it. */
  readonly running: Config;
  readonly build: (config: Config) => Policy;
  /** Puts the policy in force; called only with a policy built without error. */
  readonly apply: (policy: Policy) => void;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly debounceMs?: number;
}

export interface Reloader {
  reload(): Promise<ReloadResult>;
  /** Stops watching; waits for a reload under way. Later reloads are refused. */
  close(): Promise<void>;
}

/**
 * Where a manifest named in the configuration may be. A relative name is
 * taken from the working directory (as `portcullis manifest` does); the
 * configuration file's directory is watched too, so either way a change is seen.
 */
function manifestPaths(configFile: string, manifest: string): string[] {
  const fromCwd = resolve(manifest);
  const fromConfig = resolve(dirname(configFile), manifest);
  return fromCwd === fromConfig ? [fromCwd] : [fromCwd, fromConfig];
}

/** A path and, when it is a symlink, where it leads (the target's directory changes too). */
function withTarget(path: string): string[] {
  try {
    const real = realpathSync(path);
    return real === path ? [path] : [path, real];
  } catch {
    return [path];
  }
}

/** The contents of each server's manifest, hashed: a change of content is a change of policy. */
function manifestFingerprints(configFile: string, config: Config): Map<string, string> {
  const out = new Map<string, string>();
  for (const [server, manifest] of manifestFiles(config)) {
    const hash = createHash('sha256');
    for (const path of manifestPaths(configFile, manifest)) {
      hash.update(path).update('\0');
      try {
        hash.update(readFileSync(path));
      } catch (err) {
        hash.update(`unreadable: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
      }
      hash.update('\0');
    }
    out.set(server, hash.digest('hex'));
  }
  return out;
}

function problemsOf(err: unknown, file: string): ReloadProblem[] {
  if (err instanceof ConfigError) return err.problems.map((p) => ({ file, ...p }));
  if (err instanceof ManifestError) return err.problems.map((p) => ({ file: err.file, ...p }));
  if (err instanceof PolicyLoadError) return err.problems.map((p) => ({ file, ...p }));
  // Whatever else building the policy throws refuses the reload just as well.
  return [{ file, path: '(policy)', message: err instanceof Error ? err.message : String(err) }];
}

/** Directory watches, one per directory, each reporting events for the names asked for. */
class DirectoryWatches {
  private readonly dirs = new Map<string, { watcher: FSWatcher; names: Set<string> }>();

  constructor(
    private readonly onChange: (path: string) => void,
    private readonly log: Logger,
  ) {}

  /** Watches exactly these files' directories from now on. */
  set(files: Iterable<string>): void {
    const wanted = new Map<string, Set<string>>();
    for (const file of files) {
      const dir = dirname(file);
      const names = wanted.get(dir) ?? new Set([ATOMIC_WRITER_LINK]);
      names.add(basename(file));
      wanted.set(dir, names);
    }
    for (const [dir, entry] of this.dirs) {
      if (!wanted.has(dir)) {
        entry.watcher.close();
        this.dirs.delete(dir);
      }
    }
    for (const [dir, names] of wanted) {
      const entry = this.dirs.get(dir);
      if (entry !== undefined) {
        entry.names = names;
        continue;
      }
      let watcher: FSWatcher;
      try {
        watcher = watch(dir, { persistent: true }, (_event, name) => {
          const now = this.dirs.get(dir);
          // Without a name (some platforms), any event in the directory may be the file.
          if (now !== undefined && (name === null || now.names.has(name))) {
            this.onChange(name === null ? dir : resolve(dir, name));
          }
        });
      } catch (err) {
        // A directory that does not exist yet: the next reload tries again.
        this.log.warn(
          { event: 'config.watch_failed', dir, err: (err as Error).message },
          `cannot watch ${dir} for configuration changes; SIGHUP still reloads`,
        );
        continue;
      }
      watcher.on('error', (err) => {
        this.log.warn(
          { event: 'config.watch_failed', dir, err: err.message },
          `stopped watching ${dir}; the next reload watches it again`,
        );
        watcher.close();
        if (this.dirs.get(dir)?.watcher === watcher) this.dirs.delete(dir);
      });
      this.dirs.set(dir, { watcher, names });
    }
  }

  close(): void {
    for (const { watcher } of this.dirs.values()) watcher.close();
    this.dirs.clear();
  }
}

export function startReloader(deps: ReloaderDeps): Reloader {
  const { log, metrics } = deps;
  const file = resolve(deps.file);
  const debounceMs = deps.debounceMs ?? RELOAD_DEBOUNCE_MS;
  // What the policy in force was built from, and its manifests' contents.
  let applied = deps.running;
  let fingerprints = manifestFingerprints(file, applied);
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let queue: Promise<unknown> = Promise.resolve();

  metrics.configReloads.inc({ result: 'ok' }, 0);
  metrics.configReloads.inc({ result: 'failed' }, 0);
  metrics.configLastReloadSuccessful.set(1);

  const watches = new DirectoryWatches((path) => {
    log.debug({ event: 'config.file_changed', path }, 'configuration file changed');
    clearTimeout(timer);
    timer = setTimeout(() => void reload(), debounceMs);
  }, log);

  /** The configuration file, and the manifests of the policy in force and of a refused candidate. */
  const watchFor = (...configs: Config[]): void => {
    const files = withTarget(file);
    for (const config of configs) {
      for (const manifest of manifestFiles(config).values()) {
        for (const path of manifestPaths(file, manifest)) files.push(...withTarget(path));
      }
    }
    if (!closed) watches.set(files);
  };

  const refuse = (problems: ReloadProblem[]): ReloadResult => {
    metrics.configReloads.inc({ result: 'failed' });
    metrics.configLastReloadSuccessful.set(0);
    log.error(
      { event: 'config.reload_failed', file, problems },
      `configuration reload refused (${problems.length} problem(s)), the running policy is kept: ` +
        problems.map((p) => `${p.file}: ${p.path}: ${p.message}`).join('; '),
    );
    return { ok: false, problems };
  };

  const once = async (): Promise<ReloadResult> => {
    if (closed) {
      return {
        ok: false,
        problems: [{ file, path: '(gateway)', message: 'the gateway is closed' }],
      };
    }
    let candidate: Config;
    try {
      candidate = await deps.load(file);
    } catch (err) {
      return refuse(problemsOf(err, file));
    }
    // A manifest the refused file names is watched too: fixing it reloads.
    watchFor(applied, candidate);
    const nextFingerprints = manifestFingerprints(file, candidate);
    let policy: Policy;
    try {
      policy = deps.build(candidate);
    } catch (err) {
      return refuse(problemsOf(err, file));
    }
    if (closed) {
      return {
        ok: false,
        problems: [{ file, path: '(gateway)', message: 'the gateway is closed' }],
      };
    }
    const changed = liveDifferences(applied, candidate);
    for (const [server, print] of nextFingerprints) {
      const key = `servers.${server}.manifest`;
      if (fingerprints.get(server) !== print && !changed.includes(key)) changed.push(key);
    }
    const restartRequired = restartDifferences(deps.running, candidate);
    const wasEnabled = applied.tenants !== undefined;
    const tenantsOn = candidate.tenants !== undefined;
    deps.apply(policy);
    applied = candidate;
    fingerprints = nextFingerprints;
    watchFor(applied);
    metrics.configReloads.inc({ result: 'ok' });
    metrics.configLastReloadSuccessful.set(1);
    log.info(
      { event: 'config.reloaded', file, changed, tenants: tenantsOn ? 'on' : 'off' },
      changed.length === 0
        ? 'configuration reloaded: the policy is unchanged'
        : `configuration reloaded: new policy in force for ${changed.join(', ')}` +
            (tenantsOn ? '' : ' (no tenants: every authenticated principal may use every server)'),
    );
    if (wasEnabled && !tenantsOn) {
      // What the file says, and a loud one: a deleted `tenants` block opens every server.
      log.warn(
        { event: 'policy.off', file },
        'no tenants configured any more: every authenticated principal may use every server',
      );
    }
    if (restartRequired.length > 0) {
      log.warn(
        { event: 'config.restart_required', file, keys: restartRequired },
        `configuration changes not applied, they need a restart: ${restartRequired.join(', ')}`,
      );
    }
    return { ok: true, changed, restartRequired };
  };

  const reload = (): Promise<ReloadResult> => {
    clearTimeout(timer);
    // A fault of the reloader itself refuses the reload too: never a rejection nobody handles.
    const run = queue.then(once).catch((err: unknown) => refuse(problemsOf(err, file)));
    queue = run.catch(() => undefined);
    return run;
  };

  watchFor(applied);

  return {
    reload,
    close: async () => {
      closed = true;
      clearTimeout(timer);
      watches.close();
      await queue;
    },
  };
}
