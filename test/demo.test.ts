/**
 * `npm start`: the embedded default. The built CLI with --demo starts
 * server-everything on loopback, trusts a dev signing key it creates, prints
 * a ready token and how to connect, serves a real client holding that token
 * (and refuses one without), and stops the demo upstream with itself.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

test(
  'start --demo serves server-everything and prints the client settings',
  { timeout: 60_000 },
  async (t) => {
    const child = spawn(
      process.execPath,
      ['dist/cli/main.js', 'start', '--demo', '--port', '0', '--admin-port', '0'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    t.after(() => child.kill('SIGKILL'));
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const deadline = Date.now() + 30_000;
    while (!stderr.includes('Ctrl-C') && Date.now() < deadline && child.exitCode === null) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = /(http:\/\/127\.0\.0\.1:\d+\/mcp\/everything)/.exec(stderr)?.[1];
    assert.ok(url, `banner names the endpoint:\n${stderr}`);
    assert.match(stderr, /"mcpServers"/, 'banner shows a client config');
    assert.match(stderr, /Authentication: jwt/);
    const token = /"Authorization": "Bearer ([\w.-]+)"/.exec(stderr)?.[1];
    assert.ok(token, 'banner prints a ready token in the client config');
    assert.match(stderr, new RegExp(`--header "Authorization: Bearer ${token}"`));

    // Real authentication: without the token the gateway refuses.
    const anonymous = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: '{"jsonrpc":"2.0","id":1,"method":"ping"}',
    });
    assert.equal(anonymous.status, 401);

    const client = new Client({ name: 'demo-test', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(url), {
        requestInit: { headers: { authorization: `Bearer ${token}` } },
      }),
    );
    const result = await client.callTool({ name: 'echo', arguments: { message: 'hello demo' } });
    assert.match(JSON.stringify(result.content), /hello demo/);
    await client.close();

    const demoLine = stdout.split('\n').find((l) => l.includes('demo upstream running'));
    const demoPid = (JSON.parse(demoLine ?? '{}') as { pid?: number }).pid;
    assert.ok(demoPid, 'the demo upstream pid is logged');
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    assert.equal(code, 0);
    assert.throws(() => process.kill(demoPid, 0), 'the demo upstream stopped with the gateway');
  },
);
