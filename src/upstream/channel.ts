/**
 * A message channel to one MCP server: JSON-RPC messages in, JSON-RPC
 * messages out, no HTTP. A stdio process (stdio.ts) and a legacy HTTP+SSE
 * connection (sse.ts) are channels; the bridge (bridge.ts) turns channels into
 * an upstream that answers like a Streamable HTTP server.
 */
import type { Logger } from 'pino';
import { GatewayError } from '../errors/index.js';
import { MAX_JSON_DEPTH, responseIds } from '../mcp/depth.js';

/** A JSON-RPC 2.0 message as it travels: an object, already parsed. */
export type JsonRpcMessage = Record<string, unknown>;

export interface MessageChannel {
  /** Sends one message; throws if the channel is closed. */
  send(message: JsonRpcMessage): void;
  /** Every message the server sends, in order. */
  onMessage(listener: (message: JsonRpcMessage) => void): void;
  /** Called once when the channel ends, with why if it was not asked to. */
  onClose(listener: (reason: Error | undefined) => void): void;
  /** Stops reading from the server until `resume` (backpressure from a slow client). */
  pause(): void;
  resume(): void;
  readonly closed: boolean;
  /** Ends the channel gracefully (bounded), then forcibly. */
  close(): Promise<void>;
  /**
   * The headers of a later request, the credential step's among them: a
   * channel that hands the server a credential passes a renewed one on.
   */
  updateCredential?(headers: Readonly<Record<string, string>>): void;
}

/** The channel ended before answering: the server crashed, exited or dropped the connection. */
/**
 * A channel ended, or could not be opened. `detail` is for the operator's
 * log (addresses, errno text, the endpoint a server named); `said` is what a
 * client may be told after the server's name: what happened, never where.
 */
export class ChannelClosedError extends Error {
  constructor(
    detail: string,
    readonly said: string = 'closed the connection',
  ) {
    super(detail);
    this.name = 'ChannelClosedError';
  }
}

/** What a client is told of a channel's end: the server's name and what happened. */
export function saidOf(server: string, err: Error | undefined): string {
  return `server '${server}' ${err instanceof ChannelClosedError ? err.said : 'closed the connection'}`;
}

/** The listener bookkeeping every channel shares: messages fan out, the close is told once. */
export abstract class ChannelListeners {
  private readonly messageListeners: Array<(m: JsonRpcMessage) => void> = [];
  private readonly closeListeners: Array<(reason: Error | undefined) => void> = [];
  /** Set once the channel has ended, by `ended()`. */
  protected ended = false;

  get closed(): boolean {
    return this.ended;
  }

  onMessage(listener: (message: JsonRpcMessage) => void): void {
    this.messageListeners.push(listener);
  }

  onClose(listener: (reason: Error | undefined) => void): void {
    if (this.ended) listener(undefined);
    else this.closeListeners.push(listener);
  }

  protected emitMessage(message: JsonRpcMessage): void {
    for (const l of this.messageListeners) l(message);
  }

  /**
   * A message from `server` nested deeper than MAX_JSON_DEPTH, refused where
   * it entered: dropped, and each request it answered gets a JSON-RPC error in
   * its place, so no caller waits for ever and nothing walks it.
   */
  protected refuseTooDeep(value: unknown, server: string, log: Logger): void {
    log.warn(
      { server, maxDepth: MAX_JSON_DEPTH },
      `dropped a message nested deeper than ${MAX_JSON_DEPTH} levels`,
    );
    for (const id of responseIds(value)) {
      const err = new GatewayError(
        'PORTCULLIS_ERR_UPSTREAM_BAD_RESPONSE',
        `server '${server}' sent an answer nested deeper than ${MAX_JSON_DEPTH} levels`,
        { server },
      );
      this.emitMessage({ jsonrpc: '2.0', id, error: err.toJsonRpc() });
    }
  }

  /** Marks the channel ended and tells the listeners; false if it had already ended. */
  protected markEnded(reason: Error | undefined): boolean {
    if (this.ended) return false;
    this.ended = true;
    for (const l of this.closeListeners.splice(0)) l(reason);
    return true;
  }
}
