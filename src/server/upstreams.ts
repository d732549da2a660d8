/**
 * Builds each server's upstream from its configuration: Streamable HTTP
 * directly, stdio and legacy HTTP+SSE through the bridge. Part of the
 * composition root (gateway.ts is the only importer).
 */
import {
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import {
  DEFAULT_STDIO_IDLE_TIMEOUT_MS,
  DEFAULT_STDIO_SHUTDOWN_STEP_MS,
  DEFAULT_STDIO_WARM_POOL,
  SANDBOX_DEFAULTS,
  type Config,
  type ServerConfig,
} from '../config/schema.js';
import { GatewayError } from '../errors/index.js';
import type { Metrics } from '../telemetry/metrics.js';
import { ChannelUpstream } from '../upstream/bridge.js';
import type { MessageChannel } from '../upstream/channel.js';
import { HttpUpstream } from '../upstream/http.js';
import { WarmPool, type WarmProcess } from '../upstream/pool.js';
import { startProblems, type StartProblem } from '../upstream/preflight.js';
import {
  planSandbox,
  planUnsandboxed,
  realPath,
  sandboxSupport,
  UidPool,
  type SandboxConfig,
} from '../upstream/sandbox.js';
import { SseChannel } from '../upstream/sse.js';
import { StdioChannel } from '../upstream/stdio.js';
import type { Upstream, UpstreamCall, UpstreamRequest } from '../upstream/types.js';

/** What every stdio server gets, and nothing else from the gateway's environment. */
const BASE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface UpstreamDeps {
  readonly config: Config;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Files of the gateway's own that no server may read (keys, credentials, TLS key). */
  readonly secrets: readonly string[];
}

const uids = new UidPool();

/** Each process's private directory (its credential) is `<tmpdir>/portcullis-stdio-<gateway pid>-XXXXXX`. */
const PRIVATE_DIR_PREFIX = 'portcullis-stdio-';
let swept = false;

/**
 * Removes the private directories of gateways that are gone (killed before
 * they could clean up), credentials and all. Those of live gateways stay.
 */
export function sweepStalePrivateDirs(log: Logger): void {
  if (swept) return;
  swept = true;
  const tmp = os.tmpdir();
  let names: string[];
  try {
    names = readdirSync(tmp);
  } catch {
    return;
  }
  for (const name of names) {
    const pid = Number(/^portcullis-stdio-(\d+)-/.exec(name)?.[1]);
    if (!pid || pid === process.pid || isAlive(pid)) continue;
    try {
      rmSync(path.join(tmp, name), { recursive: true, force: true });
      log.info({ dir: name }, 'removed a stdio private directory left by a gateway that is gone');
    } catch {
      // not ours to remove
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}

/** The gateway's own secret files, masked inside every sandbox. */
export function gatewaySecrets(config: Config): string[] {
  const files = [
    config.signing.keysFile,
    config.admin.tokenFile,
    config.cluster?.secretFile,
    config.listen.tls?.key,
    ...Object.values(config.servers).flatMap((s) => {
      const c = s.credential as { file?: string; clientSecretFile?: string };
      return [c.file, c.clientSecretFile];
    }),
  ];
  return files.filter((f): f is string => f !== undefined).map((f) => path.resolve(f));
}

export function createUpstream(name: string, server: ServerConfig, deps: UpstreamDeps): Upstream {
  const { config } = deps;
  if (server.transport === 'streamable-http')
    return new HttpUpstream(name, server, config.upstreamDefaults);
  const maxResponseBytes = config.upstreamDefaults.maxResponseBytes;
  const log = deps.log;
  const credentialName = credentialHeaderName(server);
  const stdio =
    server.transport === 'stdio' ? stdioOpener(name, server, credentialName, deps) : undefined;
  const open =
    stdio !== undefined
      ? stdio.open
      : async (headers: Readonly<Record<string, string>>): Promise<MessageChannel> => {
          const credential = headers[credentialName];
          const sse = await SseChannel.connect({
            server: name,
            url: server.url as string,
            headers: {
              ...server.headers,
              ...(credential === undefined ? {} : { [credentialName]: credential }),
            },
            timeouts: { ...config.upstreamDefaults.timeouts, ...server.timeouts },
            maxEventBytes: maxResponseBytes,
            log,
          });
          // Later POSTs carry the credential of the request they belong to.
          const channel: MessageChannel = sse;
          channel.updateCredential = (later) => {
            const renewed = later[credentialName];
            if (renewed !== undefined) sse.setHeader(credentialName, renewed);
          };
          return channel;
        };
  const upstream = new ChannelUpstream({
    name,
    maxResponseBytes,
    sharing: server.sharing ?? 'session',
    idleTimeoutMs: server.idleTimeoutMs ?? DEFAULT_STDIO_IDLE_TIMEOUT_MS,
    headersTimeoutMs: server.timeouts?.headersMs ?? config.upstreamDefaults.timeouts.headersMs,
    open,
    log,
    onCrashLoop: () => deps.metrics.crashLoops.inc({ server: name }),
    onChannels: (n) => deps.metrics.upstreamProcesses.set({ server: name }, n),
  });
  if (stdio === undefined) return upstream;
  return new StdioUpstream(upstream, server, stdio.pool);
}

/** A stdio server's upstream: the bridge, its warm processes, and whether it can start at all. */
class StdioUpstream implements Upstream {
  readonly name: string;
  readonly opensChannels = true;
  readonly maxResponseBytes: number;
  constructor(
    private readonly bridge: ChannelUpstream,
    private readonly server: ServerConfig,
    private readonly pool: WarmPool | undefined,
  ) {
    this.name = bridge.name;
    this.maxResponseBytes = bridge.maxResponseBytes;
  }
  request(req: UpstreamRequest): UpstreamCall {
    return this.bridge.request(req);
  }
  endCaller(affinity: string): void {
    this.bridge.endCaller(affinity);
  }
  async close(): Promise<void> {
    await Promise.all([this.pool?.close(), this.bridge.close()]);
  }
  notReady(): string | undefined {
    return stdioStartProblems(this.server).some((p) => p.fatal)
      ? `server '${this.name}' cannot start`
      : undefined;
  }
}

/** The header the credential step sets for `server` (lower case, as the request headers are). */
function credentialHeaderName(server: ServerConfig): string {
  return server.credential.mode === 'static'
    ? server.credential.header.toLowerCase()
    : 'authorization';
}

/** The credential itself, from its header value: a bearer token without its scheme, a static value as it is. */
function credentialOf(headerValue: string | undefined): string | undefined {
  if (headerValue === undefined) return undefined;
  const bearer = /^(?:Bearer|DPoP)\s+(.+)$/i.exec(headerValue);
  return bearer ? bearer[1] : headerValue;
}

function sandboxFor(server: ServerConfig, secrets: readonly string[]): SandboxConfig {
  const s = server.sandbox ?? {};
  return {
    mode: s.mode ?? SANDBOX_DEFAULTS.mode,
    network: s.network ?? SANDBOX_DEFAULTS.network,
    // Resolved: bwrap cannot mount onto a path through a symlink (/var/run -> /run).
    writablePaths: (s.writablePaths ?? []).map(realPath),
    hidePaths: [...secrets, ...(s.hidePaths ?? [])].map(realPath),
    memoryBytes: s.memoryBytes,
    cpuSeconds: s.cpuSeconds ?? SANDBOX_DEFAULTS.cpuSeconds,
    maxOpenFiles: s.maxOpenFiles ?? SANDBOX_DEFAULTS.maxOpenFiles,
    maxProcesses: s.maxProcesses ?? SANDBOX_DEFAULTS.maxProcesses,
    tmpBytes: s.tmpBytes ?? SANDBOX_DEFAULTS.tmpBytes,
    gid: s.gid ?? SANDBOX_DEFAULTS.gid,
  };
}

/** The clean environment: PATH, HOME, LANG, the allowlist, and what is set explicitly. */
function environmentFor(
  server: ServerConfig,
  sandboxed: boolean,
  home: string,
): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? BASE_PATH,
    HOME: sandboxed ? '/tmp' : home,
    LANG: process.env.LANG ?? 'C.UTF-8',
  };
  for (const nameOf of server.env ?? []) {
    const value = process.env[nameOf];
    if (value !== undefined) env[nameOf] = value;
  }
  return { ...env, ...server.setEnv };
}

/** Whether `server` runs sandboxed here: unless its sandbox is off or, in auto mode, cannot run. */
function runsSandboxed(server: ServerConfig): boolean {
  const mode = server.sandbox?.mode ?? SANDBOX_DEFAULTS.mode;
  return mode !== 'off' && sandboxSupport().ok;
}

/**
 * Why a stdio server cannot start here, or will fail later (upstream/preflight.ts);
 * `config check` prints these and the gateway logs them at start.
 */
export function stdioStartProblems(server: ServerConfig): StartProblem[] {
  if (server.transport !== 'stdio') return [];
  const sandboxed = runsSandboxed(server);
  return startProblems({
    spec: {
      command: server.command as string,
      args: server.args ?? [],
      cwd: server.cwd,
      env: environmentFor(server, sandboxed, '/tmp'),
    },
    writablePaths: (server.sandbox?.writablePaths ?? []).map((given) => ({
      given,
      real: realPath(given),
    })),
    gid: server.sandbox?.gid ?? SANDBOX_DEFAULTS.gid,
    sandboxed,
  });
}

/**
 * How the bridge starts a process for `server`: sandboxed unless the sandbox
 * is off (or, in auto mode, cannot run here); with a credential, in a file
 * only that process can read, deleted when it ends.
 */
function stdioOpener(
  name: string,
  server: ServerConfig,
  credentialName: string,
  deps: UpstreamDeps,
): {
  open: (headers: Readonly<Record<string, string>>) => Promise<MessageChannel>;
  pool: WarmPool | undefined;
} {
  sweepStalePrivateDirs(deps.log);
  const sandbox = sandboxFor(server, deps.secrets);
  const support = sandboxSupport();
  if (sandbox.mode === 'required' && !support.ok) {
    // Never silently unsandboxed: a server that must be sandboxed does not start.
    throw new Error(
      `server '${name}' needs its sandbox, and bubblewrap cannot run here: ${support.detail}`,
    );
  }
  const sandboxed = sandbox.mode !== 'off' && support.ok;
  if (sandbox.mode === 'auto' && !support.ok) {
    deps.log.warn(
      { server: name, detail: support.detail },
      'stdio server runs WITHOUT a sandbox: bubblewrap cannot run here',
    );
  }
  for (const p of stdioStartProblems(server)) {
    if (p.fatal)
      deps.log.error({ server: name, key: p.key }, `stdio server cannot start: ${p.message}`);
    else deps.log.warn({ server: name, key: p.key }, `stdio server: ${p.message}`);
  }
  const root = process.getuid?.() === 0;
  // A warm process cannot know its credential yet: with a credential mode, its
  // directory is made and bound up front, the file written when it is handed over.
  const credentialMode = server.credential.mode !== 'none';
  const launch = (credential: string | undefined): WarmProcess => {
    const uid = uids.take();
    const privateDir = mkdtempSync(path.join(os.tmpdir(), `${PRIVATE_DIR_PREFIX}${process.pid}-`));
    const cleanUp = (): void => {
      uids.release(uid);
      rmSync(privateDir, { recursive: true, force: true });
    };
    // Others may pass through the private directory but not list it; the credential's
    // own directory and file are the process's alone.
    const credentialDir = path.join(privateDir, 'credential.d');
    const credentialFile = path.join(credentialDir, 'credential');
    const writeCredential = (value: string): void => {
      const next = path.join(credentialDir, `.next-${process.hrtime.bigint()}`);
      writeFileSync(next, value, { mode: 0o400 });
      if (root) chownSync(next, uid, sandbox.gid);
      // Renamed into place: the server never reads half a credential.
      renameSync(next, credentialFile);
    };
    try {
      const file = credentialMode || credential !== undefined ? credentialFile : undefined;
      if (file !== undefined) {
        mkdirSync(credentialDir, { mode: 0o700 });
        if (root) chownSync(credentialDir, uid, sandbox.gid);
      }
      // Started for a session: the credential is there before the server is.
      if (credential !== undefined) writeCredential(credential);
      let written = credential !== undefined;
      if (root) chownSync(privateDir, uid, sandbox.gid);
      const spec = {
        command: server.command as string,
        args: server.args ?? [],
        cwd: server.cwd,
        env: environmentFor(server, sandboxed, privateDir),
      };
      const plan = sandboxed
        ? planSandbox(spec, sandbox, uid, file)
        : planUnsandboxed(spec, uid, sandbox.gid, file);
      const channel: MessageChannel = new StdioChannel({
        server: name,
        plan,
        maxLineBytes: deps.config.upstreamDefaults.maxResponseBytes,
        shutdownStepMs: server.shutdownTimeoutMs ?? DEFAULT_STDIO_SHUTDOWN_STEP_MS,
        log: deps.log,
      });
      channel.onClose(cleanUp);
      return {
        channel,
        handOver(headers) {
          if (file === undefined) return;
          // The header as last seen: a renewal is a different header value.
          let seen = headers[credentialName];
          const first = credentialOf(seen);
          if (!written && first !== undefined) {
            try {
              writeCredential(first);
            } catch (err) {
              void channel.close();
              throw err;
            }
            written = true;
          }
          channel.updateCredential = (later) => {
            const renewed = later[credentialName];
            if (renewed === undefined || renewed === seen || channel.closed) return;
            seen = renewed;
            try {
              writeCredential(credentialOf(renewed) as string);
            } catch (err) {
              deps.log.warn(
                { server: name, err: (err as Error).message },
                'could not renew a stdio server credential',
              );
            }
          };
        },
      };
    } catch (err) {
      cleanUp();
      throw err;
    }
  };
  const canStart = (): boolean => !stdioStartProblems(server).some((p) => p.fatal);
  const poolSize =
    (server.sharing ?? 'session') === 'shared' ? 0 : (server.warmPool ?? DEFAULT_STDIO_WARM_POOL);
  const pool =
    poolSize === 0
      ? undefined
      : new WarmPool({
          server: name,
          size: poolSize,
          start: () => launch(undefined),
          canStart,
          log: deps.log,
        });
  const open = async (headers: Readonly<Record<string, string>>): Promise<MessageChannel> => {
    // Checked again each time: a server fixed meanwhile starts, one broken meanwhile is
    // refused as such, and neither counts as a crash.
    const cannot = stdioStartProblems(server).find((p) => p.fatal);
    if (cannot !== undefined) {
      deps.log.error(
        { server: name, key: cannot.key },
        `stdio server cannot start: ${cannot.message}`,
      );
      throw new GatewayError('PORTCULLIS_ERR_UPSTREAM_CANNOT_START', undefined, {
        server: name,
        reason: 'cannot_start',
      });
    }
    const started = pool?.take() ?? launch(credentialOf(headers[credentialName]));
    started.handOver(headers);
    return started.channel;
  };
  return { open, pool };
}
