/** Raw HTTP requests as an MCP client would send them, for tests that need the exact bytes. */
export const MODERN = '2026-07-28';
export const LEGACY = '2025-11-25';
export const ACCEPT_BOTH = 'application/json, text/event-stream';

/** A modern (2026-07-28) `tools/call` body with the `_meta` the era requires. */
export function modernCall(
  name: string,
  args: Record<string, unknown>,
  id: number | string = 1,
  capabilities: Record<string, unknown> = {},
) {
  return {
    jsonrpc: '2.0',
    id,
    method: 'tools/call',
    params: {
      name,
      arguments: args,
      _meta: {
        'io.modelcontextprotocol/protocolVersion': MODERN,
        'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
        'io.modelcontextprotocol/clientCapabilities': capabilities,
      },
    },
  };
}

/** The headers a modern client sends with `modernCall(name, …)`. */
export function modernHeaders(name: string): Record<string, string> {
  return { 'mcp-protocol-version': MODERN, 'mcp-method': 'tools/call', 'mcp-name': name };
}

export function initializeBody(id: number | string = 0, protocolVersion = LEGACY) {
  return {
    jsonrpc: '2.0',
    id,
    method: 'initialize',
    params: { protocolVersion, capabilities: {}, clientInfo: { name: 'raw', version: '1' } },
  };
}

/** POSTs `body` (JSON-encoded unless a string) with valid MCP defaults that `headers` override. */
export function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: ACCEPT_BOTH, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });
}

export interface RpcError {
  jsonrpc: '2.0';
  id: unknown;
  error: {
    code: number;
    message: string;
    data: { code: string; server?: string; [k: string]: unknown };
  };
}
