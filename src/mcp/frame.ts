/**
 * JSON-RPC framing: every message that crosses the gateway, in either
 * direction, becomes a typed Frame before anything else looks at it. Policy
 * and audit attach here; a message that cannot be framed never passes.
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

/** Where a frame was seen; what policy and audit will need beside the message. */
export interface FrameContext {
  readonly server: string;
  readonly era: 'legacy' | 'modern';
  /** The gateway's session id (legacy era). */
  readonly session: string | undefined;
}

/**
 * Called for every framed message in either direction, before it is
 * forwarded. The attachment point for policy and audit.
 */
export type FrameObserver = (frame: Frame, context: FrameContext) => void;

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
  if (typeof method === 'string') {
    if (id === undefined) return { direction, kind: 'notification', method, message: msg };
    if (!isId(id)) {
      throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'id must be a string or an integer');
    }
    const params = message.params;
    if (params !== undefined && (params === null || typeof params !== 'object')) {
      throw new GatewayError('PORTCULLIS_ERR_JSONRPC_INVALID', 'params must be an object or array');
    }
    const frame: Frame = { direction, kind: 'request', id, method, message: msg };
    const key = NAME_PARAM[method];
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
  if ('result' in message) return { direction, kind: 'response', id, message: msg };
  if (message.error !== null && typeof message.error === 'object') {
    return { direction, kind: 'error', id, message: msg };
  }
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
