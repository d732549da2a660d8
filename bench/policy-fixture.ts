// The policy both policy benchmarks run: one tenant with 100 deny rules and a server with a
// 200-tool manifest, built the way an operator's would be (bench/policy.ts in process,
// bench/policy-pipeline.ts through the gateway). Deterministic: the same rules and tools on
// every run, so two runs measure the same thing.
//
// Tools come in five families of 40, each with its own input schema (a few properties, some
// required, bounds, an enum, no additional properties). The first tool of the first family is
// the bench origin's `echo` (bench/origin.ts), so the gateway can be driven with the manifest in
// force. The grant covers four families and two named admin tools: most tools are granted.
//
// The 100 rules, in the order they are checked:
// - 10 unscoped (every request): scope checks, subject and client lists, path traversal,
//   admin tools without the admin scope;
// - 6 on every tools/call (methods only): payload size, argument shapes;
// - 44 on tools/call of some tools (methods and targets, by glob or by name): argument
//   comparisons, startsWith, matches();
// - 16 on resources/read, prompts/get and resources/subscribe;
// - 14 on the other server only (servers);
// - 10 shadow rules, mixed scopes; one holds for the select queries bench/policy.ts sends
//   (reported, never denying), none for the pipeline's echo calls.
// None of the enforcing rules holds for the traffic the benches send, except where a bench sends
// a message meant to be denied, so the figures are of messages that visit every rule that applies.
import { buildManifest, type Manifest, type ToolDefinition } from '../src/policy/manifest.js';
import type { RuleConfig, ServerGrant } from '../src/config/schema.js';

export const SERVER = 'bench';
/** The tenant: the gateway's anonymous principal's (`--auth none`), so both benches use one config. */
export const TENANT = 'local';
export const OTHER_SERVER = 'other';
export const TOOLS = 200;

const FAMILIES = ['query', 'read_file', 'search', 'write_file', 'admin'] as const;
type Family = (typeof FAMILIES)[number];
const PER_FAMILY = TOOLS / FAMILIES.length;

/** The input schema of each family's tools. */
const SCHEMAS: Record<Family, Record<string, unknown>> = {
  query: {
    type: 'object',
    properties: {
      sql: { type: 'string', maxLength: 8192 },
      limit: { type: 'integer', minimum: 1, maximum: 10_000 },
      database: { type: 'string', enum: ['orders', 'users', 'analytics'] },
    },
    required: ['sql'],
    additionalProperties: false,
  },
  read_file: {
    type: 'object',
    properties: {
      path: { type: 'string', minLength: 1, maxLength: 4096 },
      encoding: { type: 'string', enum: ['utf8', 'base64'] },
      maxBytes: { type: 'integer', minimum: 1 },
    },
    required: ['path'],
    additionalProperties: false,
  },
  search: {
    type: 'object',
    properties: {
      query: { type: 'string', maxLength: 1024 },
      limit: { type: 'integer', minimum: 1, maximum: 100 },
      tags: { type: 'array', items: { type: 'string' }, maxItems: 16 },
    },
    required: ['query'],
    additionalProperties: false,
  },
  write_file: {
    type: 'object',
    properties: {
      path: { type: 'string', minLength: 1, maxLength: 4096 },
      content: { type: 'string', maxLength: 1_048_576 },
      mode: { type: 'string', enum: ['create', 'overwrite', 'append'] },
    },
    required: ['path', 'content'],
    additionalProperties: false,
  },
  admin: {
    type: 'object',
    properties: {
      action: { type: 'string', enum: ['reset', 'reindex', 'vacuum'] },
      force: { type: 'boolean' },
    },
    required: ['action'],
    additionalProperties: false,
  },
};

/** The bench origin's echo tool, as bench/mcp.ts calls it. */
const ECHO: ToolDefinition = {
  name: 'echo',
  description: 'Echoes its message back.',
  inputSchema: {
    type: 'object',
    properties: {
      message: { type: 'string', maxLength: 1024 },
      payload: { type: 'string', maxLength: 4096 },
    },
    required: ['message'],
    additionalProperties: false,
  },
  annotations: { readOnlyHint: true },
};

export function toolName(family: Family, i: number): string {
  return `${family}_${String(i).padStart(2, '0')}`;
}

/** The 200 live definitions, as a server's tools/list would send them. */
export function toolDefinitions(): ToolDefinition[] {
  const out: ToolDefinition[] = [ECHO];
  for (const family of FAMILIES) {
    for (let i = 0; i < PER_FAMILY; i++) {
      if (out.length === TOOLS) break;
      out.push({
        name: toolName(family, i),
        title: `${family.replace('_', ' ')} ${i}`,
        description: `Runs the ${family.replace('_', ' ')} operation number ${i} against the bench store and returns what it found, as text.`,
        inputSchema: SCHEMAS[family],
        annotations:
          family === 'admin' || family === 'write_file'
            ? { destructiveHint: family === 'admin' }
            : { readOnlyHint: true },
      });
    }
  }
  return out;
}

export function benchManifest(): Manifest {
  return buildManifest(toolDefinitions(), { server: SERVER, now: '2026-12-01T00:00:00Z' }).manifest;
}

/** The tenant's grant on the bench server: four families, two admin tools, echo. */
export const GRANT: ServerGrant = {
  tools: ['echo', 'query_*', 'read_file_*', 'search_*', 'write_file_*', 'admin_00', 'admin_01'],
  prompts: ['summarize', 'review_*'],
  resources: ['file:///srv/data/*'],
};

const rule = (r: Omit<RuleConfig, 'effect' | 'mode'> & { mode?: RuleConfig['mode'] }) =>
  ({ effect: 'deny', mode: 'enforce', ...r }) as RuleConfig;

/** The tenant's 100 rules. */
export function benchRules(): RuleConfig[] {
  const rules: RuleConfig[] = [];
  // 10 unscoped: on every request of this tenant.
  const unscoped = [
    'principal.scopes.exists(s, s == "mcp:blocked")',
    'principal.subject in ["mallory", "eve", "trudy"]',
    'principal.tenant != "local" && principal.tenant != "acme"',
    'server == "bench" && principal.scopes.exists(s, s == "bench:none")',
    'target != null && target.startsWith("admin_") && !principal.scopes.exists(s, s == "admin")',
    'has(arguments.path) && arguments.path.contains("..")',
    'has(arguments.path) && arguments.path.startsWith("/etc/")',
    'method == "tools/call" && target != null && target.endsWith("_dangerous")',
    'has(arguments.sql) && arguments.sql.matches("(?i)\\\\b(drop|truncate|alter)\\\\s+table\\\\b")',
    'size(arguments) > 32',
  ];
  unscoped.forEach((when, i) =>
    rules.push(rule({ id: `global-${i}`, when, message: 'not for this tenant' })),
  );
  // 6 on every tools/call.
  const everyCall = [
    'has(arguments.payload) && size(arguments.payload) > 65536',
    'has(arguments.limit) && arguments.limit > 5000',
    'has(arguments.content) && size(arguments.content) > 262144',
    'has(arguments.force) && arguments.force == true && !principal.scopes.exists(s, s == "admin")',
    'has(arguments.database) && arguments.database == "users" && !principal.scopes.exists(s, s == "pii")',
    'has(arguments.tags) && arguments.tags.exists(t, t == "secret")',
  ];
  everyCall.forEach((when, i) =>
    rules.push(rule({ id: `call-${i}`, when, methods: ['tools/call'] })),
  );
  // 44 on tools/call of some tools: a family glob or a few names.
  const perTool: Array<[string[], string]> = [
    [['query_*'], 'arguments.sql.matches("(?i)^\\\\s*(delete|update|insert)\\\\b")'],
    [['query_*'], 'arguments.sql.contains(";") && arguments.sql.matches("(?i);\\\\s*\\\\w")'],
    [['query_*'], 'has(arguments.limit) && arguments.limit > 1000 && server == "bench"'],
    [['read_file_*'], '!arguments.path.startsWith("/srv/")'],
    [['read_file_*'], 'arguments.path.matches("\\\\.(pem|key|env)$")'],
    [['write_file_*'], '!arguments.path.startsWith("/srv/data/")'],
    [['write_file_*'], 'has(arguments.mode) && arguments.mode == "overwrite"'],
    [['search_*'], 'arguments.query.matches("(?i)password|secret|token")'],
  ];
  perTool.forEach(([targets, when], i) =>
    rules.push(rule({ id: `tool-family-${i}`, when, methods: ['tools/call'], targets })),
  );
  for (let i = 0; i < 36; i++) {
    const family = FAMILIES[i % 4] as Family;
    const targets = [toolName(family, i), toolName(family, i + 1), toolName(family, i + 2)];
    const when =
      family === 'query'
        ? `arguments.sql.startsWith("select * from secret_${i}")`
        : family === 'search'
          ? `arguments.query == "forbidden-${i}"`
          : `arguments.path.startsWith("/srv/private/${i}/")`;
    rules.push(rule({ id: `tool-${i}`, when, methods: ['tools/call'], targets }));
  }
  // 16 on the other methods.
  for (let i = 0; i < 16; i++) {
    const method = (['resources/read', 'prompts/get', 'resources/subscribe'] as const)[i % 3];
    const when =
      method === 'prompts/get'
        ? `has(arguments.topic) && arguments.topic == "off-limits-${i}"`
        : `target.startsWith("file:///srv/data/private/${i}/")`;
    rules.push(rule({ id: `other-method-${i}`, when, methods: [method as string] }));
  }
  // 14 on the other server only.
  for (let i = 0; i < 14; i++) {
    rules.push(
      rule({
        id: `other-server-${i}`,
        when: `principal.scopes.exists(s, s == "other:deny-${i}") || method == "tools/call" && target == "t${i}"`,
        servers: [OTHER_SERVER],
      }),
    );
  }
  // 10 shadow rules: one holds for select queries (bench/policy.ts sends some; the pipeline does not).
  const shadow: Array<Partial<RuleConfig> & { when: string }> = [
    {
      when: 'target == "echo" && arguments.message == "shadow me"',
      methods: ['tools/call'],
    },
    { when: 'has(arguments.sql) && arguments.sql.startsWith("select")', targets: ['query_*'] },
    { when: 'principal.subject == "shadow-subject"' },
    { when: 'has(arguments.path) && arguments.path.endsWith(".tmp")', targets: ['write_file_*'] },
    { when: 'target.startsWith("file:///tmp/")', methods: ['resources/read'] },
    { when: 'principal.scopes.size() > 64' },
    { when: 'arguments.query.size() > 512', targets: ['search_*'] },
    { when: 'server == "other"', servers: [OTHER_SERVER] },
    { when: 'has(arguments.encoding) && arguments.encoding == "base64"', targets: ['read_file_*'] },
    { when: 'method == "prompts/get"', methods: ['prompts/get'] },
  ];
  shadow.forEach((r, i) => {
    const { when, ...scope } = r;
    rules.push(
      rule({
        id: `shadow-${i}`,
        when,
        mode: 'shadow',
        ...(scope.targets && !scope.methods ? { methods: ['tools/call'] } : {}),
        ...scope,
      }),
    );
  });
  if (rules.length !== 100) throw new Error(`expected 100 rules, built ${rules.length}`);
  return rules;
}
