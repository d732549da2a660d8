/**
 * Starts a real gateway in-process for a test: loopback, auth none, ephemeral
 * ports, logs silent unless PORTCULLIS_TEST_LOG names a level.
 */
import pino from 'pino';
import type { Frame } from '../../src/mcp/frame.js';
import type { MessageOutcome } from '../../src/server/exchange.js';
import { buildConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { startGateway, type Gateway } from '../../src/server/gateway.js';

export type TestGateway = Gateway;

export interface SeenFrame {
  direction: Frame['direction'];
  kind: Frame['kind'];
  id: Frame['id'];
  method: string | undefined;
  target: string | undefined;
  server: string;
  session: string | undefined;
  message: Frame['message'];
  /** What the gateway's decision points made of it. */
  outcome: MessageOutcome;
  rule: string | undefined;
}

/**
 * The frames a gateway saw, in order, and a way to wait for one: the
 * gateway's exchange observer pushes here, so a test awaits the frame itself
 * instead of sleeping and looking.
 */
export class SeenFrames extends Array<SeenFrame> {
  // slice, filter and map give plain arrays: what they hold are not the gateway's frames.
  static override get [Symbol.species](): ArrayConstructor {
    return Array;
  }

  private waiters: Array<{ match: (f: SeenFrame) => boolean; found: (f: SeenFrame) => void }> = [];

  override push(...frames: SeenFrame[]): number {
    const n = super.push(...frames);
    for (const frame of frames) {
      for (const w of this.waiters.filter((w) => w.match(frame))) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.found(frame);
      }
    }
    return n;
  }

  /** The first frame, seen already or from now on, that `match` accepts; rejects after `ms`. */
  waitFor(match: (f: SeenFrame) => boolean, ms: number, what: string): Promise<SeenFrame> {
    const seen = this.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        found: (f: SeenFrame) => {
          clearTimeout(timer);
          resolve(f);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no frame: ${what}, within ${ms} ms`));
      }, ms);
      this.waiters.push(waiter);
    });
  }
}

/**
 * A test configuration: loopback, ephemeral ports, the given auth section and
 * servers (a URL, or a whole server entry), then `overrides` by top-level key.
 */
export function testConfig(
  servers: Record<string, string | Record<string, unknown>>,
  auth: Record<string, unknown>,
  overrides: Record<string, unknown> = {},
): Config {
  const { listen, admin, ...rest } = overrides as {
    listen?: Record<string, unknown>;
    admin?: Record<string, unknown>;
  };
  return buildConfig({
    listen: { host: '127.0.0.1', port: 0, ...listen },
    admin: { port: 0, ...admin },
    auth,
    servers: Object.fromEntries(
      Object.entries(servers).map(([name, s]) => [name, typeof s === 'string' ? { url: s } : s]),
    ),
    ...rest,
  });
}

export async function startTestGateway(
  servers: Record<string, string | Record<string, unknown>>,
  overrides: Record<string, unknown> = {},
  frames?: SeenFrame[],
): Promise<TestGateway> {
  const config = testConfig(servers, { mode: 'none' }, overrides);
  const log = pino({ level: process.env.PORTCULLIS_TEST_LOG ?? 'silent' });
  return startGateway(config, {
    log,
    ...(frames
      ? {
          observer: {
            message: (x, f, outcome, rule) =>
              frames.push({
                direction: f.direction,
                kind: f.kind,
                id: f.id,
                method: f.method,
                target: f.target,
                server: x.server,
                session: x.session?.id,
                message: f.message,
                outcome,
                rule,
              }),
          },
        }
      : {}),
  });
}
