/** server-everything as a real upstream: over HTTP via the demo launcher, or as a stdio command. */
import { createRequire } from 'node:module';
import path from 'node:path';

export { startEverything } from '../../src/demo/everything.js';

const require = createRequire(import.meta.url);

/** The server-everything entry point (`node <entry> stdio` runs it on stdio). */
export const EVERYTHING_ENTRY = path.join(
  path.dirname(require.resolve('@modelcontextprotocol/server-everything/package.json')),
  'dist/index.js',
);

/** A stdio server entry for the gateway's configuration, running server-everything. */
export function everythingStdio(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    transport: 'stdio',
    command: process.execPath,
    args: [EVERYTHING_ENTRY, 'stdio'],
    ...extra,
  };
}
