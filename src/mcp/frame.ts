/**
 * JSON-RPC framing: every message that crosses the gateway, in either
 * direction, becomes a typed Frame before anything else looks at it: one
 * classification for every transport, which the decision points and the
 * exchange's observer read. A message that cannot be framed never passes.
 */
import { GatewayError, type JsonRpcId } from '../errors/index.js';
import { MAX_JSON_DEPTH, nestedDeeperThan } from './depth.js';

export type Direction = 'client-to-server' | 'server-to-client';
export type FrameKind = 'request' | 'notification' | 'response' | 'error';

export interface Frame {
  direction: Direction;
  kind: FrameKind;
  /** Present on requests, responses and errors. */
  id?: JsonRpcId;
  /** Present on requests and notifications. */
  method?: string;
  /** The tool, prompt or resource a request names (`params.name` / `params.uri`). */
  target?: string;
  /** The parsed message itself. */
  message: JsonRpcMessage;
}

export type JsonRpcMessage = Record<string, unknown> & { jsonrpc: '2.0' };

/** Methods whose target is `params.name` or `params.uri`, as mirrored in `Mcp-Name`. */
const NAME_PARAM: Record<string, 'name' | 'uri'> = {
  'tools/call': 'name',
  'prompts/get': 'name',
  'resources/read': 'uri',
  'resources/subscribe': 'uri',
  'resources/unsubscribe': 'uri',
};

/**
 * spec/2025-11-25/basic/index.mdx: a request id MUST be a string or an
 * integer. A fraction, an object or a boolean is refused here, at the door:
 * passed on, it makes an upstream refuse the message in its own way (the SDK's
 * SSE server answers 400), which must never look like the server failing.
 */
function isId(value: unknown): value is string | number {
  return typeof value === 'string' || Number.isSafeInteger(value);
}

/**
 * What a JSON-RPC message is, by the one rule every transport uses: a string
 * `method` makes a request (with an id) or a notification (without one, or
 * with id null, which the bridges take as a notification); no method, a
 * response (`result`) or an error (`error` object). Undefined for what is
 * none of them. `toFrame` classifies by this rule and validates beyond it.
 */
export function kindOf(message: {
  readonly method?: unknown;
  readonly id?: unknown;
  readonly result?: unknown;
  readonly error?: unknown;
}): FrameKind | undefined {
  if (typeof message.method === 'string') {
    return message.id === undefined || message.id === null ? 'notification' : 'request';
  }
  if (message.method !== undefined) return undefined;
  if ('result' in message) return 'response';
  if (message.error !== null && typeof message.error === 'object') return 'error';
  return undefined;
}

/** Frames one parsed JSON value; throws PORTCULLIS_ERR_JSONRPC_INVALID if it is not JSON-RPC 2.0. */
export function toFrame(value: unknown, direction: Direction): Frame {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'expected a JSON object');
  }
  const message = value as Record<string, unknown>;
  if (message.jsonrpc !== '2.0') {
    throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'jsonrpc must be "2.0"');
  }
  const msg = message as JsonRpcMessage;
  const { method, id } = message;
  const kind = kindOf(message);
  if (kind === 'notification' || kind === 'request') {
    const name = method as string;
    if (id === undefined) return { direction, kind: 'notification', method: name, message: msg };
    if (!isId(id)) {
      throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'id must be a string or an integer');
    }
    const params = message.params;
    if (params !== undefined && (params === null || typeof params !== 'object')) {
      throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'params must be an object or array');
    }
    const frame: Frame = { direction, kind: 'request', id, method: name, message: msg };
    const key = NAME_PARAM[name];
    if (key) {
      const target = (params as Record<string, unknown> | undefined)?.[key];
      if (typeof target === 'string') frame.target = target;
    }
    return frame;
  }
  if (method !== undefined) {
    throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'method must be a string');
  }
  if (id !== null && !isId(id)) {
    throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'a response needs an id');
  }
  if (kind !== undefined) return { direction, kind, id, message: msg };
  throw new GatewayError(
    'PORTCULLIS_ERR_JSONRPC_INVALID',
    'expected a request (method), a response (result) or an error',
  );
}

/** Parses and frames a body: one message or, where `allowBatch`, a non-empty array of them. */
export function parseBody(
  text: string,
  direction: Direction,
  allowBatch: boolean,
): { frames: Frame[]; batch: boolean } {
  // Before it is parsed (parsing deep nesting costs far more than flat JSON) and before
  // anything walks it (see depth.ts); an invalid request's id is null (JSON-RPC 2.0, §5).
  if (nestedDeeperThan(text)) {
    throw new GatewayError(
      'PORTCULLIS_ERR_JSONRPC_INVALID',
      `the message is nested deeper than ${MAX_JSON_DEPTH} levels`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new GatewayError('PORTCULLIS_ERR_JSONRPC_PARSE', (err as Error).message);
  }
  if (Array.isArray(value)) {
    if (!allowBatch) throw new GatewayError('PORTCULLIS_ERR_JSONRPC_BATCH');
    if (value.length === 0) {
      throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'an empty batch is not allowed');
    }
    return { frames: value.map((v) => toFrame(v, direction)), batch: true };
  }
  return { frames: [toFrame(value, direction)], batch: false };
}

/** The ids of the requests among frames, i.e. what must be answered. */
export function requestIds(frames: readonly Frame[]): JsonRpcId[] {
  const ids: JsonRpcId[] = [];
  for (const f of frames) if (f.kind === 'request' && f.id !== undefined) ids.push(f.id);
  return ids;
}
