/**
 * The official reference MCP servers as real stdio peers, started with the
 * SDK 1.x client: server-everything, server-filesystem, server-memory and
 * server-postgres (0.6.2, on the local PostgreSQL). Used to measure the
 * description rules against what real servers publish.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { ErrorCode, ListRootsRequestSchema, McpError } from '@modelcontextprotocol/sdk/types.js';
import { EVERYTHING_ENTRY } from './everything.js';

const require = createRequire(import.meta.url);

function entryOf(pkg: string): string {
  return path.join(path.dirname(require.resolve(`${pkg}/package.json`)), 'dist/index.js');
}

export const FILESYSTEM_ENTRY = entryOf('@modelcontextprotocol/server-filesystem');
export const MEMORY_ENTRY = entryOf('@modelcontextprotocol/server-memory');
export const POSTGRES_ENTRY = entryOf('@modelcontextprotocol/server-postgres');
export { EVERYTHING_ENTRY };

/** What a server lists, each list read to its last page; empty where the server lacks the capability. */
export interface Listed {
  /** The `instructions` of its initialize result, which reach the model too. */
  instructions: string | undefined;
  tools: Record<string, unknown>[];
  prompts: Record<string, unknown>[];
  resources: Record<string, unknown>[];
  resourceTemplates: Record<string, unknown>[];
}

async function allPages<T>(
  page: (cursor: string | undefined) => Promise<{ items: T[]; nextCursor?: string | undefined }>,
): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | undefined;
  // Bounded: a reference server's lists are short; a loop of cursors is a bug, not a wait.
  for (let i = 0; i < 100; i++) {
    const { items, nextCursor } = await page(cursor);
    out.push(...items);
    if (nextCursor === undefined || nextCursor === '') return out;
    cursor = nextCursor;
  }
  throw new Error('more than 100 pages');
}

/** Start `command args` on stdio, list everything it offers, and close it. */
export async function listServer(
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Listed> {
  const transport = new StdioClientTransport({
    command,
    args,
    env: { ...(process.env as Record<string, string>), ...env },
    stderr: 'ignore',
  });
  // Every client capability declared: server-everything offers its sampling,
  // elicitation and roots tools only to clients that have them.
  const client = new Client(
    { name: 'portcullis-text-test', version: '0.0.0' },
    { capabilities: { sampling: {}, elicitation: {}, roots: { listChanged: true } } },
  );
  client.setRequestHandler(ListRootsRequestSchema, () => ({ roots: [] }));
  await client.connect(transport);
  try {
    const caps = client.getServerCapabilities() ?? {};
    const listed: Listed = {
      instructions: client.getInstructions(),
      tools: [],
      prompts: [],
      resources: [],
      resourceTemplates: [],
    };
    if (caps.tools) {
      listed.tools = await allPages(async (cursor) => {
        const r = await client.listTools(cursor ? { cursor } : {});
        return { items: r.tools, nextCursor: r.nextCursor };
      });
    }
    if (caps.prompts) {
      listed.prompts = await allPages(async (cursor) => {
        const r = await client.listPrompts(cursor ? { cursor } : {});
        return { items: r.prompts, nextCursor: r.nextCursor };
      });
    }
    if (caps.resources) {
      listed.resources = await allPages(async (cursor) => {
        const r = await client.listResources(cursor ? { cursor } : {});
        return { items: r.resources, nextCursor: r.nextCursor };
      });
      try {
        listed.resourceTemplates = await allPages(async (cursor) => {
          const r = await client.listResourceTemplates(cursor ? { cursor } : {});
          return { items: r.resourceTemplates, nextCursor: r.nextCursor };
        });
      } catch (err) {
        // server-postgres 0.6.2 (SDK 1.0.1) predates resources/templates/list.
        if (!(err instanceof McpError && err.code === ErrorCode.MethodNotFound)) throw err;
      }
    }
    return listed;
  } finally {
    await client.close();
  }
}
