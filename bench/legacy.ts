// Legacy-era (2025-11-25) Streamable HTTP from the client side, for the benches that hold
// sessions: a POST with the session's headers, the answer to an id in a JSON or SSE body, and
// opening a session (initialize, then notifications/initialized).
import { request, type Dispatcher } from 'undici';

const ACCEPT = 'application/json, text/event-stream';
export const LEGACY_VERSION = '2025-11-25';

export interface Answer {
  status: number;
  sessionId: string | undefined;
  text: string;
}

export async function postLegacy(
  dispatcher: Dispatcher,
  url: string,
  body: unknown,
  sessionId?: string,
): Promise<Answer> {
  const res = await request(url, {
    method: 'POST',
    dispatcher,
    headers: {
      'content-type': 'application/json',
      accept: ACCEPT,
      'mcp-protocol-version': LEGACY_VERSION,
      ...(sessionId === undefined ? {} : { 'mcp-session-id': sessionId }),
    },
    body: JSON.stringify(body),
  });
  const text = await res.body.text();
  const sid = res.headers['mcp-session-id'];
  return { status: res.statusCode, sessionId: typeof sid === 'string' ? sid : undefined, text };
}

/** The message answering `id` in a JSON or SSE body. */
export function answerTo(text: string, id: number): { result?: unknown; error?: unknown } {
  if (text.startsWith('{')) return JSON.parse(text) as { result?: unknown };
  for (const line of text.split('\n')) {
    // An event with empty data only primes resumption.
    if (!line.startsWith('data:') || line.slice(5).trim() === '') continue;
    const m = JSON.parse(line.slice(5)) as { id?: unknown; result?: unknown; error?: unknown };
    if (m.id === id) return m;
  }
  throw new Error(`no answer to ${id} in: ${text.slice(0, 200)}`);
}

/** initialize, then notifications/initialized; the session id (undefined if the server gave none). */
export async function openLegacySession(
  dispatcher: Dispatcher,
  url: string,
): Promise<string | undefined> {
  const init = await postLegacy(dispatcher, url, {
    jsonrpc: '2.0',
    id: 0,
    method: 'initialize',
    params: {
      protocolVersion: LEGACY_VERSION,
      capabilities: {},
      clientInfo: { name: 'bench', version: '1' },
    },
  });
  if (init.status !== 200) throw new Error(`initialize: ${init.status} ${init.text.slice(0, 200)}`);
  answerTo(init.text, 0);
  const done = await postLegacy(
    dispatcher,
    url,
    { jsonrpc: '2.0', method: 'notifications/initialized' },
    init.sessionId,
  );
  if (done.status !== 202 && done.status !== 200) throw new Error(`initialized: ${done.status}`);
  return init.sessionId;
}
