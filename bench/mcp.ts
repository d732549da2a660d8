// The modern-era (2026-07-28, stateless) MCP messages the benchmark sends, in one place so
// that wrk, the constant-rate generator, the SSE probe and the idle-stream holder all send
// byte-identical, valid requests that a policing gateway accepts.

export const PROTOCOL_VERSION = '2026-07-28';

/** Tool answered with one `application/json` JSON-RPC result. */
export const TOOL_ECHO = 'echo';
/** Tool answered with `text/event-stream`: progress notifications spaced by a delay, then the result. */
export const TOOL_PROGRESS = 'progress';
/** Tool answered with `text/event-stream`: one progress notification, then held open until the client leaves. */
export const TOOL_HOLD = 'hold';

/** Roughly 1 KiB of arguments, the size the brief asks for. */
export const ARGUMENT_PAYLOAD_BYTES = 960;

export type IdleMethod = 'listen' | 'hold';

const META = {
  'io.modelcontextprotocol/protocolVersion': PROTOCOL_VERSION,
  'io.modelcontextprotocol/clientInfo': { name: 'bench', version: '1' },
  'io.modelcontextprotocol/clientCapabilities': {},
};

function toolCallBody(tool: string, progressToken?: number): string {
  const meta = progressToken === undefined ? META : { ...META, progressToken };
  return JSON.stringify({
    jsonrpc: '2.0',
    id: 1,
    method: 'tools/call',
    params: {
      name: tool,
      arguments: { message: 'hello from bench', payload: 'x'.repeat(ARGUMENT_PAYLOAD_BYTES) },
      _meta: meta,
    },
  });
}

function baseHeaders(method: string): Record<string, string> {
  return {
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    'mcp-protocol-version': PROTOCOL_VERSION,
    'mcp-method': method,
  };
}

export interface McpRequest {
  readonly headers: Record<string, string>;
  readonly body: string;
}

/** `req` with `extra` headers (a target's credentials) added. */
export function withHeaders(
  req: McpRequest,
  extra: Record<string, string> | undefined,
): McpRequest {
  return extra === undefined ? req : { ...req, headers: { ...req.headers, ...extra } };
}

export function toolCall(tool: string): McpRequest {
  const streaming = tool !== TOOL_ECHO;
  return {
    headers: { ...baseHeaders('tools/call'), 'mcp-name': tool },
    body: toolCallBody(tool, streaming ? 1 : undefined),
  };
}

export function listen(): McpRequest {
  return {
    headers: baseHeaders('subscriptions/listen'),
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'subscriptions/listen',
      params: { _meta: META, notifications: { toolsListChanged: true } },
    }),
  };
}

export function idleRequest(method: IdleMethod): McpRequest {
  return method === 'listen' ? listen() : toolCall(TOOL_HOLD);
}

/** The path part of a target URL plus its host:port, for raw HTTP/1.1 requests. */
export function rawHttpRequest(url: URL, req: McpRequest): string {
  const lines = [`POST ${url.pathname} HTTP/1.1`, `host: ${url.host}`];
  for (const [k, v] of Object.entries(req.headers)) lines.push(`${k}: ${v}`);
  lines.push(`content-length: ${Buffer.byteLength(req.body)}`, '', req.body);
  return lines.join('\r\n');
}

/** Splits an SSE buffer into complete events' `data` payloads; returns the unconsumed rest. */
export function takeSseEvents(buffer: string): { events: string[]; rest: string } {
  const events: string[] = [];
  let rest = buffer.replace(/\r\n/g, '\n');
  for (let end = rest.indexOf('\n\n'); end !== -1; end = rest.indexOf('\n\n')) {
    const block = rest.slice(0, end);
    rest = rest.slice(end + 2);
    const data = block
      .split('\n')
      .filter((line) => line.startsWith('data:'))
      .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5))
      .join('\n');
    if (data !== '') events.push(data);
  }
  return { events, rest };
}
