/**
 * Starts a real gateway in-process for a test: loopback, auth none, ephemeral
 * ports, logs silent unless PORTCULLIS_TEST_LOG names a level.
 */
import pino from 'pino';
import { buildConfig } from '../../src/config/load.js';
import { startGateway, type Gateway } from '../../src/server/gateway.js';

export type TestGateway = Gateway;

export async function startTestGateway(
  servers: Record<string, string>,
  overrides: Record<string, unknown> = {},
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
  return startGateway(config, { log });
}
