/**
 * Every error the gateway can return, in one place: a stable code
 * (`PORTCULLIS_ERR_<AREA>_<WHAT>`), the HTTP status, the JSON-RPC code and a
 * message that tells the agent or the operator what to do next.
 *
 * JSON-RPC codes are the standard ones (-32700, -32600..-32603) plus the
 * MCP-defined -32020 (HeaderMismatch) and 2025-11-25's -32002 (resource not
 * found, which a server it stands in for would send). The gateway allocates nothing in the
 * -32000..-32099 range: -32000..-32019 SHOULD NOT be used by new
 * implementations and -32020..-32099 is reserved for the MCP specification
 * (spec/2026-07-28/basic/index.mdx, "Error Codes"). The gateway's own code
 * travels in `error.data.code` instead, so agents can switch on it.
 */

export const JSONRPC_PARSE_ERROR = -32700;
export const JSONRPC_INVALID_REQUEST = -32600;
export const JSONRPC_METHOD_NOT_FOUND = -32601;
export const JSONRPC_INVALID_PARAMS = -32602;
export const JSONRPC_INTERNAL_ERROR = -32603;
/** spec/2026-07-28/basic/transports/streamable-http.mdx, "Server Validation". */
export const MCP_HEADER_MISMATCH = -32020;
/** spec/2025-11-25/server/resources.mdx: resource not found (2026-07-28 uses -32602). */
export const MCP_RESOURCE_NOT_FOUND_2025 = -32002;

/**
 * The `WWW-Authenticate` challenge an authentication error carries (RFC 6750
 * §3, RFC 9449 §7.1): its scheme and `error` value; `''` for a challenge
 * without an error (a request that sent no credentials at all).
 */
export interface Challenge {
  readonly scheme: 'Bearer' | 'DPoP';
  readonly error:
    '' | 'invalid_request' | 'invalid_token' | 'insufficient_scope' | 'invalid_dpop_proof';
}

interface ErrorSpec {
  readonly status: number;
  readonly rpc: number;
  readonly message: string;
  readonly challenge?: Challenge;
}

const SPECS = {
  PORTCULLIS_ERR_HTTP_BODY_TOO_LARGE: {
    status: 413,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Request body exceeds the gateway limit; send a smaller message',
  },
  PORTCULLIS_ERR_HTTP_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Content-Type must be application/json',
  },
  PORTCULLIS_ERR_HTTP_NOT_ACCEPTABLE: {
    status: 406,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Accept must list both application/json and text/event-stream',
  },
  PORTCULLIS_ERR_HTTP_NOT_ACCEPTABLE_STREAM: {
    status: 406,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Accept must list text/event-stream to open a stream',
  },
  PORTCULLIS_ERR_HTTP_METHOD_NOT_ALLOWED: {
    status: 405,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Method not allowed on an MCP endpoint',
  },
  PORTCULLIS_ERR_HTTP_FORBIDDEN_ORIGIN: {
    status: 403,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Origin is not allowed by this gateway',
  },
  PORTCULLIS_ERR_HTTP_FORBIDDEN_HOST: {
    status: 403,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Host is not allowed by this gateway',
  },
  PORTCULLIS_ERR_HTTP_NOT_FOUND: {
    status: 404,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Not found; MCP servers live at /mcp/<name>',
  },
  PORTCULLIS_ERR_HTTP_SHUTTING_DOWN: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'The gateway is shutting down; retry on another instance',
  },
  PORTCULLIS_ERR_AUDIT_UNAVAILABLE: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      'The audit trail cannot take more records right now (a sink is behind or down); retry after the Retry-After delay',
  },
  PORTCULLIS_ERR_AUTH_MISSING: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message:
      'Authentication required: send an access token issued for this gateway (Authorization: Bearer); the WWW-Authenticate header names where to get one',
    challenge: { scheme: 'Bearer', error: '' },
  },
  PORTCULLIS_ERR_AUTH_BAD_REQUEST: {
    status: 400,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Malformed credentials',
    challenge: { scheme: 'Bearer', error: 'invalid_request' },
  },
  PORTCULLIS_ERR_AUTH_INVALID_TOKEN: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Access token rejected; get a new token from the authorization server',
    challenge: { scheme: 'Bearer', error: 'invalid_token' },
  },
  PORTCULLIS_ERR_AUTH_TOKEN_EXPIRED: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Access token expired; get a new one',
    challenge: { scheme: 'Bearer', error: 'invalid_token' },
  },
  PORTCULLIS_ERR_AUTH_WRONG_AUDIENCE: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message:
      'Access token was not issued for this resource; request one with the resource named in the protected-resource metadata',
    challenge: { scheme: 'Bearer', error: 'invalid_token' },
  },
  PORTCULLIS_ERR_AUTH_TOKEN_REVOKED: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Access token revoked',
    challenge: { scheme: 'Bearer', error: 'invalid_token' },
  },
  PORTCULLIS_ERR_AUTH_CERTIFICATE_MISMATCH: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message:
      'Access token is bound to a client certificate this connection did not present (RFC 8705)',
    challenge: { scheme: 'Bearer', error: 'invalid_token' },
  },
  PORTCULLIS_ERR_AUTH_DPOP_INVALID: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'DPoP proof missing or invalid (RFC 9449); send a fresh proof for this request',
    challenge: { scheme: 'DPoP', error: 'invalid_dpop_proof' },
  },
  PORTCULLIS_ERR_AUTH_INSUFFICIENT_SCOPE: {
    status: 403,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Access token lacks a scope this request needs; request a token with it',
    challenge: { scheme: 'Bearer', error: 'insufficient_scope' },
  },
  PORTCULLIS_ERR_AUTH_KEYS_UNAVAILABLE: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: "The gateway cannot fetch the token issuer's keys; retry later",
  },
  PORTCULLIS_ERR_AUTH_STORE_UNAVAILABLE: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      'The gateway cannot reach its shared store to check revocations or DPoP proof replay; retry later',
  },
  PORTCULLIS_ERR_UPSTREAM_CREDENTIAL: {
    status: 502,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'The gateway could not obtain a credential for the upstream MCP server',
  },
  PORTCULLIS_ERR_ADMIN_UNAUTHORIZED: {
    status: 401,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Admin API credential missing or wrong',
    challenge: { scheme: 'Bearer', error: 'invalid_token' },
  },
  PORTCULLIS_ERR_JSONRPC_PARSE: {
    status: 400,
    rpc: JSONRPC_PARSE_ERROR,
    message: 'Body is not valid JSON',
  },
  PORTCULLIS_ERR_JSONRPC_INVALID: {
    status: 400,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Body is not a JSON-RPC 2.0 message',
  },
  PORTCULLIS_ERR_JSONRPC_BATCH: {
    status: 400,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'JSON-RPC batches are not allowed in this protocol version; send one message per POST',
  },
  PORTCULLIS_ERR_JSONRPC_RESPONSE_NOT_ALLOWED: {
    status: 400,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'A modern (2026-07-28) client must not POST JSON-RPC responses',
  },
  PORTCULLIS_ERR_ROUTE_UNKNOWN_SERVER: {
    status: 404,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'No MCP server by this name is available to you',
  },
  PORTCULLIS_ERR_SESSION_MISSING: {
    status: 400,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Mcp-Session-Id header is required; send initialize first to get one',
  },
  PORTCULLIS_ERR_SESSION_UNKNOWN: {
    status: 404,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Session not found or expired; start a new session with initialize',
  },
  PORTCULLIS_ERR_QUOTA_EXCEEDED: {
    status: 429,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      'A quota of this tenant or principal is used up (error.data.quota names it); close sessions or streams, or retry after Retry-After seconds',
  },
  PORTCULLIS_ERR_POLICY_RESULT_TOO_LARGE: {
    status: 502,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      "The server's answer is larger than this tenant may receive (tenants.<t>.maxResultBytes); ask for less (a narrower query, a page)",
  },
  PORTCULLIS_ERR_POLICY_RESULT_UNSCANNABLE: {
    status: 502,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      "The server's answer could not be scanned for secrets (nested too deep, or too many strings) and was not passed on",
  },
  PORTCULLIS_ERR_RATE_LIMITED: {
    status: 429,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      'A rate limit of this tenant, agent or tool is used up (error.data.limit names it); retry after Retry-After seconds',
  },
  PORTCULLIS_ERR_RATE_LIMIT_UNAVAILABLE: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      'The shared store that holds the rate limits cannot answer, and this gateway refuses requests it cannot count; retry after Retry-After seconds',
  },
  PORTCULLIS_ERR_QUOTA_GATEWAY_FULL: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      'The gateway is at its capacity (error.data.quota names the cap); retry after Retry-After seconds',
  },
  PORTCULLIS_ERR_SESSION_LIMIT: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'Too many open sessions on this gateway; retry later',
  },
  PORTCULLIS_ERR_SESSION_STORE_UNAVAILABLE: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      'The gateway cannot reach the shared store that holds sessions, so it cannot open or find one here; retry later',
  },
  PORTCULLIS_ERR_PROTOCOL_VERSION: {
    status: 400,
    rpc: JSONRPC_INVALID_REQUEST,
    message: 'Unsupported MCP-Protocol-Version header',
  },
  PORTCULLIS_ERR_PROTOCOL_META_INVALID: {
    status: 400,
    rpc: JSONRPC_INVALID_PARAMS,
    message:
      'Request params._meta lacks a required field: every 2026-07-28 request carries io.modelcontextprotocol/protocolVersion (a string) and io.modelcontextprotocol/clientCapabilities (an object)',
  },
  PORTCULLIS_ERR_PROTOCOL_METHOD_REMOVED: {
    status: 404,
    rpc: JSONRPC_METHOD_NOT_FOUND,
    message:
      'Method not found: 2026-07-28 has no initialize; send each request with its _meta, or initialize without modern _meta to open a 2025-11-25 session',
  },
  PORTCULLIS_ERR_PROTOCOL_HEADER_MISMATCH: {
    status: 400,
    rpc: MCP_HEADER_MISMATCH,
    message: 'Header mismatch',
  },
  // Policy denials answer a JSON-RPC request that was well formed, so the
  // HTTP exchange succeeded (200) and the error travels in the body, as a
  // server's own answer would. What a tenant is not granted is answered as a
  // server answers for a name it does not have (the MCP SDKs: -32602, and
  // -32002 for a resource in 2025-11-25), the same whether or not it exists.
  PORTCULLIS_ERR_POLICY_TOOL_NOT_FOUND: {
    status: 200,
    rpc: JSONRPC_INVALID_PARAMS,
    message: 'Tool not found',
  },
  PORTCULLIS_ERR_POLICY_PROMPT_NOT_FOUND: {
    status: 200,
    rpc: JSONRPC_INVALID_PARAMS,
    message: 'Prompt not found',
  },
  PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND: {
    status: 200,
    rpc: JSONRPC_INVALID_PARAMS,
    message: 'Resource not found',
  },
  PORTCULLIS_ERR_POLICY_RESOURCE_NOT_FOUND_2025: {
    status: 200,
    rpc: MCP_RESOURCE_NOT_FOUND_2025,
    message: 'Resource not found',
  },
  PORTCULLIS_ERR_POLICY_TOOL_HELD: {
    status: 200,
    rpc: JSONRPC_INVALID_REQUEST,
    message:
      'Tool held: its description instructs the agent; it stays hidden and uncallable until an operator approves it',
  },
  PORTCULLIS_ERR_POLICY_TOOL_CHANGED: {
    status: 200,
    rpc: JSONRPC_INVALID_REQUEST,
    message:
      'Tool blocked: its definition changed since it was pinned; an operator must review and approve the change',
  },
  PORTCULLIS_ERR_POLICY_INVALID_ARGUMENTS: {
    status: 200,
    rpc: JSONRPC_INVALID_PARAMS,
    message: "Invalid arguments: they do not match the tool's input schema (error.data.path)",
  },
  PORTCULLIS_ERR_POLICY_GUARD: {
    status: 200,
    rpc: JSONRPC_INVALID_PARAMS,
    message:
      "Refused by a guard on the tool's arguments (error.data.rule names the guard, error.data.path the argument); nothing reached the server",
  },
  PORTCULLIS_ERR_POLICY_CLIENT_REQUEST_DENIED: {
    status: 200,
    rpc: JSONRPC_METHOD_NOT_FOUND,
    message:
      "The server asked the client for something this tenant's policy does not allow (sampling, elicitation or roots; error.data.rule names the grant)",
  },
  PORTCULLIS_ERR_POLICY_INVALID_OUTPUT: {
    status: 200,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      "The server's result does not match the tool's output schema in the manifest (error.data.path); it was not passed on",
  },
  PORTCULLIS_ERR_POLICY_DENIED: {
    status: 200,
    rpc: JSONRPC_INVALID_REQUEST,
    message:
      'Denied by policy (error.data.rule names the rule); ask the operator if this should be allowed',
  },
  PORTCULLIS_ERR_UPSTREAM_UNREACHABLE: {
    status: 502,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'Upstream MCP server is unreachable',
  },
  PORTCULLIS_ERR_UPSTREAM_CANNOT_START: {
    status: 503,
    rpc: JSONRPC_INTERNAL_ERROR,
    message:
      "Upstream MCP server cannot start on the gateway's host; its operator must fix it (the gateway's log and `portcullis config check` say why)",
  },
  PORTCULLIS_ERR_UPSTREAM_TIMEOUT: {
    status: 504,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'Upstream MCP server did not answer in time',
  },
  PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE: {
    status: 502,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'Upstream MCP server sent a response the gateway cannot relay',
  },
  PORTCULLIS_ERR_UPSTREAM_STREAM_ENDED: {
    status: 502,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'Upstream MCP server closed the stream before answering; retry the request',
  },
  PORTCULLIS_ERR_INTERNAL: {
    status: 500,
    rpc: JSONRPC_INTERNAL_ERROR,
    message: 'Internal gateway error',
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof SPECS;

export type JsonRpcId = string | number | null;

/** The error object of a JSON-RPC error response, as the gateway emits it. */
export interface JsonRpcErrorBody {
  code: number;
  message: string;
  data: { code: ErrorCode; server?: string; [key: string]: unknown };
}

/**
 * An error the gateway answers with. `detail` is appended to the standard
 * message; `data` carries machine-readable context (never another tenant's).
 */
export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly rpcCode: number;
  readonly data: Record<string, unknown>;
  /** Set on authentication errors: the WWW-Authenticate challenge to send. */
  readonly challenge: Challenge | undefined;

  constructor(code: ErrorCode, detail?: string, data: Record<string, unknown> = {}) {
    const spec: ErrorSpec = SPECS[code];
    // An answer, not a fault: no stack is captured (it cost about 4 µs per refusal, a policy
    // denial's whole budget). A fault's own error keeps its stack where it is logged.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      super(detail ? `${spec.message}: ${detail}` : spec.message);
    } finally {
      Error.stackTraceLimit = limit;
    }
    this.name = 'GatewayError';
    this.code = code;
    this.status = spec.status;
    this.rpcCode = spec.rpc;
    this.data = data;
    this.challenge = spec.challenge;
  }

  toJsonRpc(): JsonRpcErrorBody {
    return { code: this.rpcCode, message: this.message, data: { ...this.data, code: this.code } };
  }

  /** A whole JSON-RPC error response; `id` is null when the request's id is unknown. */
  toResponse(id: JsonRpcId = null): { jsonrpc: '2.0'; id: JsonRpcId; error: JsonRpcErrorBody } {
    return { jsonrpc: '2.0', id, error: this.toJsonRpc() };
  }
}

export function isGatewayError(err: unknown): err is GatewayError {
  return err instanceof GatewayError;
}

/** All codes, for documentation and tests. */
export function errorCatalog(): ReadonlyArray<{ code: ErrorCode } & ErrorSpec> {
  return Object.entries(SPECS).map(([code, spec]) => ({ code: code as ErrorCode, ...spec }));
}
