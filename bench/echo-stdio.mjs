// The smallest useful stdio MCP server, for the bridge benchmark: initialize,
// tools/list and one tool, `echo`, answered at once. Newline-delimited JSON-RPC
// on stdin/stdout, nothing else.
import process from 'node:process';
import readline from 'node:readline';

const TOOLS = [
  {
    name: 'echo',
    description: 'Returns its message',
    inputSchema: { type: 'object', properties: { message: { type: 'string' } } },
  },
];

function answer(id, result) {
  process.stdout.write(`${JSON.stringify({ jsonrpc: '2.0', id, result })}\n`);
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const m = JSON.parse(line);
  if (m.id === undefined || m.id === null) return;
  switch (m.method) {
    case 'initialize':
      return answer(m.id, {
        protocolVersion: m.params.protocolVersion,
        capabilities: { tools: {} },
        serverInfo: { name: 'bench-echo', version: '1.0.0' },
      });
    case 'tools/list':
      return answer(m.id, { tools: TOOLS });
    case 'tools/call':
      return answer(m.id, {
        content: [{ type: 'text', text: `Echo: ${m.params.arguments?.message ?? ''}` }],
      });
    default:
      process.stdout.write(
        `${JSON.stringify({ jsonrpc: '2.0', id: m.id, error: { code: -32601, message: 'Method not found' } })}\n`,
      );
  }
});
