/**
 * Starts a real gateway in-process for a test: loopback, auth none, ephemeral
 * ports, logs silent unless PORTCULLIS_TEST_LOG names a level.
 */
import pino from 'pino';
import type { Frame, FrameContext } from '../../src/mcp/frame.js';
import { buildConfig } from '../../src/config/load.js';
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

export async function startTestGateway(
  servers: Record<string, string>,
  overrides: Record<string, unknown> = {},
  frames?: SeenFrame[],
): Promise<TestGateway> {
  const { listen, admin, ...rest } = overrides as {
    listen?: Record<string, unknown>;
    admin?: Record<string, unknown>;
  };
  const config = buildConfig({
    listen: { host: '127.0.0.1', port: 0, ...listen },
    admin: { port: 0, ...admin },
    auth: { mode: 'none' },
    servers: Object.fromEntries(Object.entries(servers).map(([name, url]) => [name, { url }])),
    ...rest,
  });
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
