/**
 * A connected SDK 2.x `Client` that speaks only the modern era (2026-07-28).
 *
 * How the SDK 2.x client behaves on the wire, as observed against
 * test/fixtures/modern-server.ts (see test/modern-direct.test.ts):
 *
 * - Era: `versionNegotiation: { mode: { pin: '2026-07-28' } }`. `connect()`
 *   POSTs one `server/discover` (id `server-discover-probe-1`) and adopts the
 *   era only if `supportedVersions` lists the pin; anything else (404, 405, a
 *   400 with a legacy body, …) fails with `SdkError` code
 *   `ERA_NEGOTIATION_FAILED`. There is no `initialize`, no GET stream, no
 *   DELETE, and no `Mcp-Session-Id` — `close()` sends nothing.
 * - Every request POST carries `MCP-Protocol-Version` and `Mcp-Method`, derived
 *   from the body's `_meta["io.modelcontextprotocol/protocolVersion"]` and
 *   `method`; `Mcp-Name` for tools/call and prompts/get (`params.name`) and
 *   resources/read (`params.uri`), Base64-sentinel encoded when not plain
 *   ASCII. The body `_meta` always holds `io.modelcontextprotocol/protocolVersion`,
 *   `…/clientInfo` and `…/clientCapabilities` (plus `progressToken` when the
 *   call asked for progress).
 * - `Mcp-Param-{Name}` headers come from the `x-mcp-header` annotations of the
 *   tool's `inputSchema` in the client's cached `tools/list`. With no cached
 *   list the first `tools/call` goes out without them; on the resulting 400
 *   `-32020` the client fetches `tools/list` and retries once with the headers.
 * - A 4xx/5xx is surfaced as a typed error. Only a 400 whose body is a JSON-RPC
 *   error carrying the request's own id becomes a `ProtocolError` with that
 *   code/message/data; every other status (and a 400 with `id: null` or a
 *   non-JSON body) throws `SdkHttpError` code `CLIENT_HTTP_NOT_IMPLEMENTED`
 *   with `data: { status, statusText, text }`.
 * - Cancellation: aborting `RequestOptions.signal` (or a client-side timeout)
 *   aborts that request's fetch, i.e. closes its HTTP response; no
 *   `notifications/cancelled` is POSTed.
 * - MRTR: an `input_required` result is fulfilled through the handlers set
 *   with `setRequestHandler` (here `elicitation/create`), then the call is
 *   retried on a fresh id with `params.inputResponses` (and `requestState`
 *   echoed), up to 10 rounds; `callTool()` returns only the final result.
 */
import {
  Client,
  StreamableHTTPClientTransport,
  type ClientCapabilities,
  type ElicitRequest,
  type ElicitResult,
  type FetchLike,
} from '@modelcontextprotocol/client';

export const MODERN_PROTOCOL_VERSION = '2026-07-28';

/** Answers one `elicitation/create` input request embedded in an `InputRequiredResult`. */
export type ElicitationHandler = (
  params: ElicitRequest['params'],
) => ElicitResult | Promise<ElicitResult>;

export interface ModernClientOptions {
  /** Defaults to `{ name: 'portcullis-test-client', version: '1.0.0' }`. */
  clientInfo?: { name: string; version: string };
  /**
   * Answers elicitation input requests. When set, the client declares the
   * `elicitation: { form: {} }` capability (servers must not ask without it).
   */
  onElicit?: ElicitationHandler;
  /** Extra capabilities to declare, merged over the ones implied by the handlers. */
  capabilities?: ClientCapabilities;
  /** Headers sent on every POST (e.g. `Authorization` for the gateway). */
  headers?: Record<string, string>;
  /** A fetch to send through, e.g. to capture or rewrite requests in a test. */
  fetch?: FetchLike;
  /** Timeout for the connect-time `server/discover`, in milliseconds. */
  connectTimeoutMs?: number;
}

/** Connect an SDK 2.x client to `url`, pinned to 2026-07-28 with no fallback to `initialize`. */
export async function connectModernClient(
  url: string,
  opts: ModernClientOptions = {},
): Promise<Client> {
  const capabilities: ClientCapabilities = {
    ...(opts.onElicit !== undefined && { elicitation: { form: {} } }),
    ...opts.capabilities,
  };
  const client = new Client(
    opts.clientInfo ?? { name: 'portcullis-test-client', version: '1.0.0' },
    {
      capabilities,
      versionNegotiation: { mode: { pin: MODERN_PROTOCOL_VERSION } },
    },
  );
  const { onElicit } = opts;
  if (onElicit !== undefined) {
    client.setRequestHandler('elicitation/create', (request) => onElicit(request.params));
  }
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    ...(opts.headers !== undefined && { requestInit: { headers: opts.headers } }),
    ...(opts.fetch !== undefined && { fetch: opts.fetch }),
  });
  await client.connect(transport, {
    ...(opts.connectTimeoutMs !== undefined && { timeout: opts.connectTimeoutMs }),
  });
  return client;
}
