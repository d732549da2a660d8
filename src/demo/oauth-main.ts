/**
 * The development authorization server as a process of its own: the `oauth`
 * service of docker-compose.yml. It issues client-credentials tokens for the
 * gateway's resource (OAUTH_RESOURCE) with issuer OAUTH_ISSUER, on
 * OAUTH_PORT, and prints how to get one. Development only: its client
 * secret is fixed and its signing key lives in memory (a restart makes every
 * token it issued unverifiable, which is what a dev server should do).
 */
import { startAuthorizationServer } from './oauth.js';

const port = Number(process.env.OAUTH_PORT ?? 4000);
const issuer = process.env.OAUTH_ISSUER ?? `http://localhost:${port}`;
const resource = (process.env.OAUTH_RESOURCE ?? 'http://localhost:8080').replace(/\/+$/, '');

const as = await startAuthorizationServer({
  host: '0.0.0.0',
  port,
  issuer,
  // The gateway, or one of its servers (`<resource>/mcp/<name>`).
  acceptsResource: (r) => r === resource || r.startsWith(`${resource}/`),
});
process.stderr.write(
  [
    `development OAuth server: issuer ${issuer}, tokens for ${resource}`,
    'a token (5 minutes):',
    `  curl -s -u ${as.clientId}:${as.clientSecret} -d grant_type=client_credentials \\`,
    `    -d resource=${resource} ${issuer}/token`,
    '',
  ].join('\n'),
);
const stop = (): void => void as.close().then(() => process.exit(0));
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
