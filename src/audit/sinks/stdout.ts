/**
 * The `stdout` sink: each record as one line on standard output (or error),
 * for a container's log collector. Written through pino's asynchronous
 * destination, the same writer the gateway's own log uses; the line is the
 * record exactly as sealed, so a collected stream verifies like a file.
 */
import pino from 'pino';
import type { AuditRecord, AuditSink, SinkStats } from '../types.js';
import { untilDeadline } from './timing.js';

export interface StdoutSinkOptions {
  name: string;
  /** 1 (standard output, the default) or 2 (standard error). */
  fd?: 1 | 2;
}

export class StdoutSink implements AuditSink {
  readonly kind = 'stdout' as const;
  readonly name: string;
  readonly full = false;
  private readonly out: ReturnType<typeof pino.destination>;
  private written = 0;

  constructor(options: StdoutSinkOptions) {
    this.name = options.name;
    this.out = pino.destination({ fd: options.fd ?? 1, sync: false, minLength: 0 });
  }

  open(): Promise<AuditRecord | undefined> {
    return Promise.resolve(undefined);
  }

  write(_record: AuditRecord, line: string): void {
    this.out.write(line + '\n');
    this.written++;
  }

  async flush(deadline: number): Promise<void> {
    await untilDeadline(new Promise<void>((resolve) => this.out.flush(() => resolve())), deadline);
  }

  async close(deadline: number): Promise<void> {
    await this.flush(deadline);
  }

  stats(): SinkStats {
    return { written: this.written, failed: 0, queued: 0, spoolBytes: 0 };
  }
}
