/**
 * A stand-in for a SIEM's collector endpoint (Splunk HEC, Elasticsearch
 * `_bulk`, a JSON webhook): a real HTTP server that records every body it
 * answers, answers what `answer` says (undefined: never answers), and can be
 * stopped and started again on the same port, as a collector that goes away
 * and comes back does. A request cut off by a stop is not recorded.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';

export interface Received {
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly status: number;
}

export interface Answer {
  readonly status: number;
  readonly body: string;
}

export class Receiver {
  readonly received: Received[] = [];
  answer: (body: string) => Answer | undefined = () => ({ status: 200, body: '{}' });
  private server: Server | undefined;
  private port = 0;
  /** `received.length` at the last start. */
  private startedAt = 0;

  /** A started receiver, stopped when the test ends. */
  static async start(t: TestContext): Promise<Receiver> {
    const receiver = new Receiver();
    await receiver.start();
    t.after(() => receiver.stop());
    return receiver;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The bodies it answered with a 2xx, in arrival order. */
  get accepted(): Received[] {
    return this.received.filter((r) => r.status >= 200 && r.status < 300);
  }

  /** Bodies answered with a 2xx since the last start. */
  get acceptedSinceStart(): number {
    return this.received.slice(this.startedAt).filter((r) => r.status >= 200 && r.status < 300)
      .length;
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      // A stop cuts requests off mid-body; that is the point, not a failure of the test.
      req.on('error', () => {});
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        const answer = this.answer(body);
        if (answer === undefined) return;
        this.received.push({
          path: req.url ?? '',
          headers: req.headers,
          body,
          status: answer.status,
        });
        res.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body);
      });
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
    this.startedAt = this.received.length;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise((resolve) => server.close(resolve));
    server.closeAllConnections();
    await closed;
  }
}
