/**
 * A gateway with JWT authentication on, in-process, with its log records
 * captured so tests can assert what an operator (or an audit pipeline)
 * would see.
 */
import pino from 'pino';
import { startGateway, type Gateway } from '../../src/server/gateway.js';
import { testConfig } from './gateway.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ISSUER, mint, newKey, writeJwks, type SigningKey } from './tokens.js';

/** The admin API credential tests configure (admin.token), at least 32 characters. */
export const TEST_ADMIN_TOKEN = 'admin-credential-0123456789abcdefghijklmnop';

export interface AuthGateway extends Gateway {
  /** Every log record written so far, parsed. */
  readonly logs: Array<Record<string, unknown>>;
}

export async function startAuthGateway(
  servers: Record<string, string | Record<string, unknown>>,
  auth: Record<string, unknown>,
  overrides: Record<string, unknown> = {},
): Promise<AuthGateway> {
  const { jwt, ...restAuth } = auth as { jwt?: Record<string, unknown> };
  const config = testConfig(
    servers,
    { mode: 'jwt', ...restAuth, jwt: { issuer: ISSUER, ...jwt } },
    overrides,
  );
  const logs: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug' },
    { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const gateway = await startGateway(config, { log });
  return Object.assign(gateway, { logs });
}

/** A JWT gateway with an issuer key of its own (ES256, in a temporary JWKS file). */
export interface KeyedGateway {
  readonly gw: AuthGateway;
  readonly key: SigningKey;
  /** The directory holding the issuer's JWKS. */
  readonly dir: string;
  /** A token for the gateway's own resource, for `tenant` and `sub`. */
  token(tenant: string, sub: string, claims?: Record<string, unknown>): Promise<string>;
  close(): Promise<void>;
}

export async function startKeyedGateway(
  servers: Record<string, string | Record<string, unknown>>,
  overrides: Record<string, unknown> = {},
): Promise<KeyedGateway> {
  const dir = await mkdtemp(join(tmpdir(), 'portcullis-keyed-'));
  const key = await newKey('ES256');
  const gw = await startAuthGateway(
    servers,
    { jwt: { jwksFile: await writeJwks(dir, key) } },
    overrides,
  );
  return {
    gw,
    key,
    dir,
    token: (tenant, sub, claims = {}) => mint(key, gw.url, { claims: { tenant, sub, ...claims } }),
    close: async () => {
      await gw.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
