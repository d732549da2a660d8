/**
 * The audit trail's composition: the sinks `audit` configures, the log that
 * chains records for them, and the observer that feeds it from the
 * exchanges. Without a sink there is no log and no observer: nothing is
 * recorded and nothing extra is done per request.
 *
 * Capture mode (`audit.capture`, capture.ts) is one more sink of the log,
 * fed by the observer with each message record's message; it needs a
 * record sink beside it (its entries are found by their records), and its
 * key is read and checked before the log opens, so a bad key stops the start.
 */
import type { Logger } from 'pino';
import type { SigningKeys } from '../auth/keys.js';
import type { Config } from '../config/schema.js';
import type { ExchangeObserver } from '../server/exchange.js';
import type { Metrics } from '../telemetry/metrics.js';
import { CaptureSink, loadCaptureKey } from './capture.js';
import { AuditChannel } from './channel.js';
import { AuditLog, type CheckpointSigner } from './log.js';
import { auditObserver } from './observer.js';
import { FileSink } from './sinks/file.js';
import { HttpSink } from './sinks/http.js';
import { PostgresSink } from './sinks/postgres.js';
import { RedisStreamSink } from './sinks/redis-stream.js';
import { StdoutSink } from './sinks/stdout.js';
import type { AuditSink } from './types.js';

export interface Audit {
  readonly log: AuditChannel;
  readonly observer: ExchangeObserver;
}

/** The configured sinks, named by kind (at most one of each). */
export function sinksFor(config: Config['audit'], log: Logger): AuditSink[] {
  const sinks: AuditSink[] = [];
  const onError = (name: string) => (err: Error) =>
    log.warn(
      { event: 'audit.sink_error', sink: name, err: err.message },
      'audit: a sink failed to deliver; retrying',
    );
  if (config.stdout) sinks.push(new StdoutSink({ name: 'stdout', fd: config.stdout.fd }));
  if (config.file)
    sinks.push(new FileSink({ name: 'file', ...config.file, onError: onError('file') }));
  if (config.http)
    sinks.push(new HttpSink({ name: 'http', ...config.http, onError: onError('http') }));
  if (config.redisStream) {
    const { retentionDays, ...rest } = config.redisStream;
    sinks.push(
      new RedisStreamSink({
        name: 'redis-stream',
        ...rest,
        retentionMs: retentionDays * 86_400_000,
        onError: onError('redis-stream'),
      }),
    );
  }
  if (config.postgres)
    sinks.push(
      new PostgresSink({ name: 'postgres', ...config.postgres, onError: onError('postgres') }),
    );
  return sinks;
}

/**
 * The log and its sinks, opened where they run (the audit thread,
 * worker.ts): every configured sink, and the capture beside them. A bad
 * capture key or a sink that cannot open stops the start.
 */
export async function openAuditLog(
  config: Config['audit'],
  deps: { log: Logger; signer?: CheckpointSigner; metrics?: Metrics },
): Promise<{ log: AuditLog; capture?: CaptureSink }> {
  const sinks = sinksFor(config, deps.log);
  const captureConfig = config.capture;
  let capture: CaptureSink | undefined;
  if (captureConfig) {
    const { keyFile, ...rest } = captureConfig;
    capture = new CaptureSink({
      name: 'capture',
      ...rest,
      key: await loadCaptureKey(keyFile),
      onError: (err) =>
        deps.log.warn(
          { event: 'audit.sink_error', sink: 'capture', err: err.message },
          'audit: the capture failed to write; retrying',
        ),
    });
    sinks.push(capture);
  }
  const log = await AuditLog.open({
    sinks,
    log: deps.log,
    metrics: deps.metrics,
    signer: deps.signer,
    checkpointIntervalMs: config.checkpointIntervalMs,
    checkpointRecords: config.checkpointRecords,
  });
  return { log, capture };
}

/**
 * The audit trail of a gateway: the log on its own thread (channel.ts), and
 * the observer that feeds it. Undefined when no sink is configured.
 */
export async function openAudit(
  config: Config,
  deps: { log: Logger; metrics: Metrics; signingKeys: SigningKeys | undefined },
): Promise<Audit | undefined> {
  const hasSink =
    config.audit.stdout !== undefined ||
    config.audit.file !== undefined ||
    config.audit.http !== undefined ||
    config.audit.redisStream !== undefined ||
    config.audit.postgres !== undefined;
  if (!hasSink) {
    if (config.audit.capture)
      throw new Error(
        'audit.capture needs an audit sink beside it (audit.file for "portcullis audit replay"): its entries are found by their records',
      );
    return undefined;
  }
  const keys = deps.signingKeys;
  const channel = await AuditChannel.open({
    audit: config.audit,
    logLevel: config.log.level,
    log: deps.log,
    metrics: deps.metrics,
    signer: keys && ((claims) => keys.signCheckpoint(claims)),
  });
  deps.log.info(
    {
      event: 'audit.open',
      sinks: channel.sinks,
      chain: channel.chainId,
      signed: keys !== undefined,
      thread: channel.threadId,
    },
    'audit trail open',
  );
  const credentialModes = new Map(
    Object.entries(config.servers).map(([name, server]) => [name, server.credential.mode]),
  );
  return {
    log: channel,
    observer: auditObserver(channel, {
      credentialModes,
      capture: config.audit.capture !== undefined,
    }),
  };
}

/** Both observers, in order (audit first, so a test's observer sees records already made). */
export function bothObservers(
  a: ExchangeObserver | undefined,
  b: ExchangeObserver | undefined,
): ExchangeObserver | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return {
    message(x, frame, outcome, rule, shadowed) {
      a.message?.(x, frame, outcome, rule, shadowed);
      b.message?.(x, frame, outcome, rule, shadowed);
    },
    end(x) {
      a.end?.(x);
      b.end?.(x);
    },
  };
}
