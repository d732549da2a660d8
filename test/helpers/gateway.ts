/**
 * Starts a real gateway in-process for a test: loopback, auth none, ephemeral
 * ports, logs silent unless PORTCULLIS_TEST_LOG names a level.
 */
import pino from 'pino';
import type { Frame, FrameContext } from '../../src/mcp/frame.js';
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
          onFrame: (f: Frame, c: FrameContext) =>
            frames.push({
              direction: f.direction,
              kind: f.kind,
              id: f.id,
              method: f.method,
              target: f.target,
              server: c.server,
              session: c.session,
              message: f.message,
            }),
        }
      : {}),
  });
}
