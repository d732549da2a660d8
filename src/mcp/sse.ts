/**
 * Server-Sent Events on the client side of the gateway: encoding and the
 * response headers every stream carries.
 */

export interface SseEvent {
  id?: string | undefined;
  event?: string | undefined;
  data: string;
}

/** Encodes one event; multi-line data becomes one `data:` line per line, as the SSE format requires. */
export function encodeEvent(ev: SseEvent): string {
  let out = '';
  if (ev.id !== undefined) out += `id: ${ev.id}\n`;
  if (ev.event !== undefined) out += `event: ${ev.event}\n`;
  if (ev.data.includes('\n')) {
    for (const line of ev.data.split('\n')) out += `data: ${line}\n`;
  } else {
    out += `data: ${ev.data}\n`;
  }
  return `${out}\n`;
}

/** A JSON-RPC message as an SSE `message` event without an id (not resumable). */
export function encodeMessage(message: unknown): string {
  return `event: message\ndata: ${JSON.stringify(message)}\n\n`;
}

export function encodeRetry(ms: number): string {
  return `retry: ${ms}\n\n`;
}

/** A comment line: ignored by clients, keeps intermediaries from timing the stream out. */
export const HEARTBEAT = ':\n\n';

/**
 * spec/2026-07-28/basic/transports/streamable-http.mdx: servers SHOULD send
 * `X-Accel-Buffering: no` so reverse proxies do not hold events back.
 */
export const SSE_HEADERS: Readonly<Record<string, string>> = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache, no-transform',
  'x-accel-buffering': 'no',
};
