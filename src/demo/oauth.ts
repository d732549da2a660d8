/**
 * A development OAuth 2.1 / OpenID Connect authorization server:
 * `oidc-provider` (a development dependency: not in the production image),
 * issuing JWT access tokens (ES256) for resource indicators (RFC 8707)
 * through the client-credentials grant, DPoP-bound when the client sends a
 * proof. The tests run it in-process on a free loopback port; the compose
 * file runs it as its own service (oauth-main.ts), so one `docker compose up`
 * shows real token-based authentication end to end. Never for production:
 * its client secrets are fixed and its keys live in memory.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair } from 'jose';

export interface AuthorizationServer {
  /** The issuer, `http://127.0.0.1:PORT`, no trailing slash. */
  readonly issuer: string;
  readonly jwksUrl: string;
  readonly tokenUrl: string;
  readonly clientId: string;
  readonly clientSecret: string;
  /** Every resource indicator a token was requested for, in order. */
  readonly resources: string[];
  /** Tokens issued, in order. */
  readonly issued: number;
  /** Token exchanges performed. */
  readonly exchanges: number;
  close(): Promise<void>;
}

export interface AuthorizationServerOptions {
  /** Where it listens; loopback and a free port by default. */
  readonly host?: string;
  readonly port?: number;
  /** Its issuer (the `iss` of its tokens); by default its own address. */
  readonly issuer?: string;
  /** The resources it issues tokens for; by default any on 127.0.0.1. */
  readonly acceptsResource?: (resource: string) => boolean;
  /** Scopes a token for any resource may carry. */
  readonly scopes?: string;
  /** Claims added to every access token. */
  readonly extraClaims?: Record<string, unknown>;
  /** Access token lifetime, seconds. */
  readonly ttlS?: number;
  /**
   * Also a client for the gateway (`gatewayClientId`/`gatewayClientSecret`)
   * allowed RFC 8693 token exchange: it trades an access token this server
   * issued for one issued to the requested resource, naming the original
   * subject and the gateway as actor.
   */
  readonly tokenExchange?: boolean;
}

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const GATEWAY_CLIENT_ID = 'portcullis-gateway';
export const GATEWAY_CLIENT_SECRET = 'portcullis-gateway-secret-0123456789';

export async function startAuthorizationServer(
  options: AuthorizationServerOptions = {},
): Promise<AuthorizationServer> {
  const { default: Provider, errors } = await import('oidc-provider');
  const server: Server = createServer();
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, host, resolve));
  const issuer = options.issuer ?? `http://${host}:${(server.address() as AddressInfo).port}`;
  const acceptsResource =
    options.acceptsResource ?? ((r: string) => /^https?:\/\/127\.0\.0\.1:\d+(\/|$)/.test(r));
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const signingKey = {
    ...(await exportJWK(privateKey)),
    kid: 'as-es256',
    alg: 'ES256',
    use: 'sig',
  };
  const resources: string[] = [];
  let issued = 0;
  const scopes = options.scopes ?? 'mcp tools:call';
  const clientId = 'agent-app';
  const clientSecret = 'agent-app-secret-0123456789';

  const provider = new Provider(issuer, {
    jwks: { keys: [signingKey] },
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        // The only signing key is ES256; the provider checks client metadata against its keys.
        id_token_signed_response_alg: 'ES256',
        scope: scopes,
      },
      ...(options.tokenExchange
        ? [
            {
              client_id: GATEWAY_CLIENT_ID,
              client_secret: GATEWAY_CLIENT_SECRET,
              grant_types: [TOKEN_EXCHANGE],
              response_types: [],
              redirect_uris: [],
              token_endpoint_auth_method: 'client_secret_basic',
              id_token_signed_response_alg: 'ES256',
              scope: scopes,
            },
          ]
        : []),
    ],
    scopes: scopes.split(' '),
    cookies: { keys: ['portcullis-dev-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo(_ctx: unknown, resource: string) {
          if (!acceptsResource(resource)) throw new errors.InvalidTarget();
          resources.push(resource);
          return {
            scope: scopes,
            accessTokenFormat: 'jwt',
            accessTokenTTL: options.ttlS ?? 300,
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: (_ctx: unknown, token: { resourceServer?: { accessTokenTTL?: number } }) =>
        token.resourceServer?.accessTokenTTL ?? 300,
    },
    extraTokenClaims: (ctx: { exchangedSubject?: unknown }) => {
      issued++;
      // Exchanged tokens name the agent's subject and the gateway as actor (RFC 8693 §4.1).
      const exchanged =
        ctx.exchangedSubject === undefined
          ? {}
          : { original_sub: ctx.exchangedSubject, act: { sub: GATEWAY_CLIENT_ID } };
      return { tenant: 'acme', ...exchanged, ...options.extraClaims };
    },
  } as unknown as ConstructorParameters<typeof Provider>[1]);
  let exchanges = 0;
  if (options.tokenExchange) {
    const { createLocalJWKSet, jwtVerify } = await import('jose');
    const publicJwks = createLocalJWKSet({
      keys: [
        {
          kty: signingKey.kty,
          crv: signingKey.crv,
          x: signingKey.x,
          y: signingKey.y,
          kid: signingKey.kid,
          alg: 'ES256',
        },
      ],
    });
    const p = provider as unknown as {
      ClientCredentials: new (init: Record<string, unknown>) => {
        resourceServer: unknown;
        save(): Promise<string>;
        expiration: number;
        tokenType: string;
        scope?: string;
      };
      ResourceServer: new (identifier: string, info: Record<string, unknown>) => unknown;
      registerGrantType(
        name: string,
        handler: (ctx: {
          oidc: { params: Record<string, string | undefined>; client: unknown };
          body: unknown;
          status: number;
          exchangedSubject?: unknown;
        }) => Promise<void>,
        params: string[],
      ): void;
    };
    p.registerGrantType(
      TOKEN_EXCHANGE,
      async (ctx) => {
        const { params, client } = ctx.oidc;
        const resource = params.resource ?? '';
        let subject: Record<string, unknown>;
        try {
          ({ payload: subject } = await jwtVerify(params.subject_token ?? '', publicJwks, {
            issuer,
          }));
        } catch {
          ctx.status = 400;
          ctx.body = {
            error: 'invalid_grant',
            error_description: 'subject_token is not one of ours',
          };
          return;
        }
        const token = new p.ClientCredentials({ client, scope: params.scope ?? scopes });
        token.resourceServer = new p.ResourceServer(resource, {
          scope: scopes,
          accessTokenFormat: 'jwt',
          accessTokenTTL: options.ttlS ?? 300,
          jwt: { sign: { alg: 'ES256' } },
        });
        ctx.exchangedSubject = subject.sub;
        exchanges++;
        ctx.body = {
          access_token: await token.save(),
          issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
          token_type: 'Bearer',
          expires_in: token.expiration,
        };
      },
      [
        'subject_token',
        'subject_token_type',
        'requested_token_type',
        'resource',
        'audience',
        'scope',
      ],
    );
  }
  server.on('request', provider.callback());

  return {
    issuer,
    jwksUrl: `${issuer}/jwks`,
    tokenUrl: `${issuer}/token`,
    clientId,
    clientSecret,
    resources,
    get issued() {
      return issued;
    },
    get exchanges() {
      return exchanges;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
