/**
 * The development authorization server (src/demo/oauth.ts) for the tests:
 * in-process on a free loopback port, and a client-credentials token request.
 */
export {
  GATEWAY_CLIENT_ID,
  GATEWAY_CLIENT_SECRET,
  startAuthorizationServer,
  TOKEN_EXCHANGE,
  type AuthorizationServer,
  type AuthorizationServerOptions,
} from '../../src/demo/oauth.js';
import type { AuthorizationServer } from '../../src/demo/oauth.js';

// oidc-provider prints development notices through console; they are not test output.
const quiet = (fn: (...args: unknown[]) => void) =>
  function (...args: unknown[]) {
    if (typeof args[0] === 'string' && /^oidc-provider (WARNING|NOTICE)/.test(args[0])) return;
    fn(...args);
  };
console.warn = quiet(console.warn.bind(console));
console.info = quiet(console.info.bind(console));

/** A client-credentials token for `resource`, with a DPoP proof when `dpop` is given. */
export async function clientCredentialsToken(
  as: AuthorizationServer,
  resource: string,
  scope?: string,
  dpop?: string,
): Promise<{ access_token: string; token_type: string; expires_in: number }> {
  const body = new URLSearchParams({ grant_type: 'client_credentials', resource });
  if (scope !== undefined) body.set('scope', scope);
  const res = await fetch(as.tokenUrl, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${as.clientId}:${as.clientSecret}`).toString('base64')}`,
      ...(dpop === undefined ? {} : { dpop }),
    },
    body,
  });
  const json = (await res.json()) as {
    access_token: string;
    token_type: string;
    expires_in: number;
  };
  if (res.status !== 200)
    throw new Error(`token request failed: ${res.status} ${JSON.stringify(json)}`);
  return json;
}
