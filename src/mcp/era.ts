/**
 * The two protocol eras on one endpoint, and the modern era's request
 * metadata headers.
 *
 * spec/2026-07-28/basic/versioning.mdx: a dual-era server selects its
 * behaviour from how the client opens — a request carrying modern per-request
 * `_meta` is served statelessly; `initialize` selects legacy semantics scoped
 * to the session. The gateway is dual-era towards clients and passes each
 * era through to the upstream unchanged.
 */
import { GatewayError } from '../errors/index.js';
import type { Frame } from './frame.js';

export type Era = 'legacy' | 'modern';

export const FIRST_MODERN_VERSION = '2026-07-28';
/** The revisions that use the `initialize` handshake and sessions. */
export const LEGACY_VERSIONS: ReadonlySet<string> = new Set([
  '2024-11-05',
  '2025-03-26',
  '2025-06-18',
  '2025-11-25',
]);
/** The only legacy revision that allowed JSON-RPC batches over HTTP. */
export const BATCHING_VERSION = '2025-03-26';
export const META_PROTOCOL_VERSION = 'io.modelcontextprotocol/protocolVersion';
export const META_CLIENT_CAPABILITIES = 'io.modelcontextprotocol/clientCapabilities';

/** Revision identifiers are dates, so they order as strings. */
export function isModernVersion(version: string | undefined): boolean {
  return version !== undefined && version >= FIRST_MODERN_VERSION;
}

function metaVersion(frame: Frame): string | undefined {
  const params = frame.message.params as { _meta?: Record<string, unknown> } | undefined;
  const v = params?._meta?.[META_PROTOCOL_VERSION];
  return typeof v === 'string' ? v : undefined;
}

/**
 * Which era a POST belongs to. A session header is legacy. Modern `_meta` or
 * a modern `MCP-Protocol-Version` header is modern (a modern header without
 * `_meta` is then refused by validateModernRequest). An `initialize` without
 * modern `_meta` is legacy, and so is anything else, where the missing
 * session id is the error.
 *
 * `initialize` with modern `_meta` is modern: spec/2026-07-28/basic/
 * versioning.mdx has a dual-era server serve "a request carrying modern
 * per-request `_meta` … statelessly according to this revision", which has
 * no `initialize`.
 */
export function detectEra(frames: readonly Frame[], headers: Record<string, unknown>): Era {
  if (headers['mcp-session-id'] !== undefined) return 'legacy';
  const first = frames[0];
  if (frames.length !== 1 || !first) return 'legacy';
  const bodyVersion = metaVersion(first);
  if (first.method === 'initialize') return isModernVersion(bodyVersion) ? 'modern' : 'legacy';
  if (bodyVersion !== undefined) return 'modern';
  return isModernVersion(headerValue(headers['mcp-protocol-version'])) ? 'modern' : 'legacy';
}

export function headerValue(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && typeof v[0] === 'string') return v[0];
  return undefined;
}

const BASE64_SENTINEL = /^=\?base64\?([A-Za-z0-9+/]*={0,2})\?=$/;
/** Visible ASCII, space and tab (RFC 9110 field values), as the spec's Value Encoding requires. */
const PLAIN_HEADER_VALUE = /^[\x20-\x7e\t]*$/;

/**
 * Decodes an `Mcp-Name` / `Mcp-Param-*` value: plain ASCII as-is, or the
 * `=?base64?…?=` sentinel form (spec/2026-07-28/basic/transports/
 * streamable-http.mdx, "Value Encoding": servers MUST decode before comparing).
 * Returns undefined for a value with invalid characters.
 */
export function decodeHeaderValue(raw: string): string | undefined {
  const m = BASE64_SENTINEL.exec(raw);
  if (m) return Buffer.from(m[1] ?? '', 'base64').toString('utf8');
  return PLAIN_HEADER_VALUE.test(raw) ? raw : undefined;
}

/**
 * Encodes a value for `Mcp-Name` / `Mcp-Param-*`: as-is when it is plain
 * visible ASCII with no space at either end, else the `=?base64?…?=` form
 * (spec/2026-07-28/basic/transports/streamable-http.mdx, "Value Encoding").
 */
export function encodeHeaderValue(value: string): string {
  if (PLAIN_HEADER_VALUE.test(value) && value.trim() === value && !BASE64_SENTINEL.test(value))
    return value;
  return `=?base64?${Buffer.from(value, 'utf8').toString('base64')}?=`;
}

function mismatch(detail: string): GatewayError {
  return new GatewayError('PORTCULLIS_ERR_PROTOCOL_HEADER_MISMATCH', detail);
}

/** A tool parameter mirrored into `Mcp-Param-<header>` (the tool's `x-mcp-header`). */
export interface ParamHeader {
  /** Lower-cased full header name, e.g. `mcp-param-region`. */
  header: string;
  /** The chain of `properties` keys leading to the parameter. */
  path: readonly string[];
  type: 'string' | 'integer' | 'boolean' | undefined;
}

/**
 * Collects a tool's `x-mcp-header` annotations from its inputSchema: only
 * properties reachable through `properties` keys count (spec: "statically
 * reachable from the schema root").
 */
export function paramHeadersOf(inputSchema: unknown): ParamHeader[] {
  const out: ParamHeader[] = [];
  const walk = (schema: unknown, path: string[]) => {
    if (schema === null || typeof schema !== 'object') return;
    const props = (schema as { properties?: unknown }).properties;
    if (props === null || typeof props !== 'object') return;
    for (const [key, sub] of Object.entries(props as Record<string, unknown>)) {
      if (sub === null || typeof sub !== 'object') continue;
      const s = sub as { 'x-mcp-header'?: unknown; type?: unknown };
      if (typeof s['x-mcp-header'] === 'string' && s['x-mcp-header']) {
        const type =
          s.type === 'string' || s.type === 'integer' || s.type === 'boolean' ? s.type : undefined;
        out.push({
          header: `mcp-param-${s['x-mcp-header'].toLowerCase()}`,
          path: [...path, key],
          type,
        });
      }
      walk(sub, [...path, key]);
    }
  };
  walk(inputSchema, []);
  return out;
}

/**
 * The `x-mcp-header` annotations of each upstream's tools, learned from the
 * `tools/list` results the gateway relays, so `Mcp-Param-*` headers can be
 * checked against the body the way the spec requires of anything that
 * processes the body.
 */
export class ToolHeaderRegistry {
  private readonly byTool = new Map<string, readonly ParamHeader[]>();

  /** Records the annotations in a `tools/list` result. */
  learn(result: unknown): void {
    const tools = (result as { tools?: unknown } | undefined)?.tools;
    if (!Array.isArray(tools)) return;
    for (const tool of tools) {
      const name = (tool as { name?: unknown })?.name;
      if (typeof name !== 'string') continue;
      const headers = paramHeadersOf((tool as { inputSchema?: unknown }).inputSchema);
      if (headers.length) this.byTool.set(name, headers);
      else this.byTool.delete(name);
    }
  }

  get(tool: string): readonly ParamHeader[] | undefined {
    return this.byTool.get(tool);
  }
}

function valueAt(root: unknown, path: readonly string[]): unknown {
  let v = root;
  for (const key of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[key];
  }
  return v;
}

function paramMatches(headerText: string, bodyValue: unknown): boolean {
  if (typeof bodyValue === 'string') return headerText === bodyValue;
  if (typeof bodyValue === 'boolean') return headerText === String(bodyValue);
  // spec: integers SHOULD be compared numerically ("42.0" equals 42).
  if (typeof bodyValue === 'number')
    return headerText.trim() !== '' && Number(headerText) === bodyValue;
  return false;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * spec/2026-07-28/basic/index.mdx, "Per-request protocol fields": every
 * request carries `io.modelcontextprotocol/protocolVersion` and
 * `…/clientCapabilities` in `_meta`; "A request missing any required field is
 * malformed; the server MUST reject it with … -32602 (Invalid params). On
 * HTTP, the response status MUST be 400 Bad Request."
 */
function checkRequestMeta(frame: Frame): void {
  const params = frame.message.params;
  const meta = isPlainObject(params) ? params._meta : undefined;
  if (!isPlainObject(meta)) {
    throw new GatewayError('PORTCULLIS_ERR_PROTOCOL_META_INVALID', 'params._meta is missing', {
      field: '_meta',
    });
  }
  if (typeof meta[META_PROTOCOL_VERSION] !== 'string') {
    throw new GatewayError(
      'PORTCULLIS_ERR_PROTOCOL_META_INVALID',
      `${META_PROTOCOL_VERSION} is missing`,
      { field: META_PROTOCOL_VERSION },
    );
  }
  if (!isPlainObject(meta[META_CLIENT_CAPABILITIES])) {
    throw new GatewayError(
      'PORTCULLIS_ERR_PROTOCOL_META_INVALID',
      `${META_CLIENT_CAPABILITIES} is missing`,
      { field: META_CLIENT_CAPABILITIES },
    );
  }
}

/**
 * Validates a modern request's headers against its body
 * (spec/2026-07-28/basic/transports/streamable-http.mdx, "Server Validation":
 * a missing or mismatched header MUST be rejected with 400 and -32020).
 */
export function validateModernRequest(
  frame: Frame,
  headers: Record<string, unknown>,
  toolHeaders: ToolHeaderRegistry,
): void {
  if (frame.kind === 'response' || frame.kind === 'error') {
    throw new GatewayError('PORTCULLIS_ERR_JSONRPC_RESPONSE_NOT_ALLOWED');
  }
  // A malformed request is refused as such before its headers are compared
  // with fields it does not have.
  if (frame.kind === 'request') checkRequestMeta(frame);
  // spec/2026-07-28/basic/transports/streamable-http.mdx: "If the server does
  // not implement the requested RPC method, it MUST respond with 404 Not Found
  // and … -32601". Answered here rather than by the upstream: a dual-era
  // upstream could take `initialize` as the opening of a session the gateway
  // never issued.
  if (frame.method === 'initialize')
    throw new GatewayError('PORTCULLIS_ERR_PROTOCOL_METHOD_REMOVED');
  const version = headerValue(headers['mcp-protocol-version']);
  const bodyVersion = metaVersion(frame);
  if (version === undefined) throw mismatch('MCP-Protocol-Version header is required');
  if (version !== bodyVersion) {
    throw mismatch(
      `MCP-Protocol-Version header value '${version}' does not match body value '${bodyVersion ?? '(missing)'}'`,
    );
  }
  // Notification POSTs have no header requirements in this revision; check what is sent.
  const method = headerValue(headers['mcp-method']);
  if (method === undefined) {
    if (frame.kind === 'notification') return;
    throw mismatch('Mcp-Method header is required');
  }
  if (method !== frame.method) {
    throw mismatch(
      `Mcp-Method header value '${method}' does not match body value '${frame.method}'`,
    );
  }
  const rawName = headerValue(headers['mcp-name']);
  const needsName =
    frame.method === 'tools/call' ||
    frame.method === 'resources/read' ||
    frame.method === 'prompts/get';
  if (needsName || rawName !== undefined) {
    if (rawName === undefined) throw mismatch(`Mcp-Name header is required for ${frame.method}`);
    const name = decodeHeaderValue(rawName);
    if (name === undefined) throw mismatch('Mcp-Name header value has invalid characters');
    if (name !== frame.target) {
      throw mismatch(
        `Mcp-Name header value '${name}' does not match body value '${frame.target ?? '(missing)'}'`,
      );
    }
  }
  if (frame.method !== 'tools/call' || frame.target === undefined) return;
  const annotated = toolHeaders.get(frame.target);
  if (!annotated) return;
  const args = (frame.message.params as { arguments?: unknown } | undefined)?.arguments;
  for (const p of annotated) {
    const bodyValue = valueAt(args, p.path);
    const raw = headerValue(headers[p.header]);
    if (bodyValue === undefined || bodyValue === null) continue;
    if (raw === undefined)
      throw mismatch(`${p.header} header is required: the body sets ${p.path.join('.')}`);
    const text = decodeHeaderValue(raw);
    if (text === undefined) throw mismatch(`${p.header} header value has invalid characters`);
    if (!paramMatches(text, bodyValue)) {
      throw mismatch(
        `${p.header} header value '${text}' does not match body value '${String(bodyValue)}'`,
      );
    }
  }
}
