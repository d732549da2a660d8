/**
 * Typed virtual tools (`servers.<name>.virtualTools.<tool>`): a tool the
 * gateway offers in a server's name, with its own name, description and
 * input schema, that it carries out by calling one of the server's real
 * tools with arguments built from a template. The brief's "replace `sql`
 * with `getInvoice`, `listUsers`": the agent gets a narrow, typed verb; the
 * wide one behind it can be hidden.
 *
 * A template is the real tool's arguments, each either a constant (any JSON
 * value, or a string without placeholders) or a string with placeholders
 * `{{name:type}}`, where `name` is a property of the virtual tool's input and
 * `type` says how its value is written into the text:
 * - `literal`: a PostgreSQL string literal (quotePgLiteral);
 * - `ident`: a PostgreSQL identifier, always quoted (quotePgIdentifier);
 * - `number`: a JSON number, negative ones in parentheses (`-1` after a `-`
 *   would start a SQL comment);
 * - `shell`: one POSIX shell word, single-quoted;
 * - `uri`: a URI component, percent-encoded.
 * A string that is exactly `{{name}}` passes the argument's value through
 * with its JSON type. Raw text is never concatenated: a placeholder inside a
 * longer string must name its type.
 *
 * At load, every placeholder must name a required property whose schema
 * `type` fits the placeholder's (`ident` takes strings only, `number`
 * numbers only). On each call, in order: the arguments are validated
 * against the virtual tool's input schema (ajv, as manifests are), then
 * rendered; then the real call goes through the server's tool checks and
 * guards like any call (policy.ts), so a guard on the real tool still judges
 * the rendered text.
 */
import { GatewayError } from '../errors/index.js';
import { quotePgIdentifier, quotePgLiteral, QuoteError, quoteShell } from './quote.js';
import { compileInputSchema, schemaErrorPath } from './tools.js';

export interface VirtualToolConfig {
  readonly tool: string;
  readonly description: string;
  readonly title?: string;
  readonly inputSchema: Readonly<Record<string, unknown>>;
  readonly arguments: Readonly<Record<string, unknown>>;
  readonly hideTool: boolean;
}

/** The tool definition agents see in `tools/list`. */
export interface VirtualDefinition {
  readonly name: string;
  readonly title?: string;
  readonly description: string;
  readonly inputSchema: Readonly<Record<string, unknown>>;
}

export interface VirtualTool {
  readonly name: string;
  /** The real tool called. */
  readonly tool: string;
  readonly rule: string;
  readonly definition: VirtualDefinition;
  /** The real tool's arguments for these, or the error the agent gets. */
  render(args: unknown): { arguments: Record<string, unknown> } | { error: GatewayError };
}

export interface ServerVirtualTools {
  readonly tools: ReadonlyMap<string, VirtualTool>;
  /** Real tools agents neither see nor call: targets with `hideTool`, and names a virtual tool takes. */
  readonly hidden: ReadonlySet<string>;
}

type PlaceholderType = 'literal' | 'ident' | 'number' | 'shell' | 'uri';

const PLACEHOLDER = /\{\{([^{}:]*)(?::([^{}]*))?\}\}/g;
const WHOLE_VALUE = /^\{\{([^{}:]+)\}\}$/;
const PLACEHOLDER_TYPES: Readonly<Record<PlaceholderType, readonly string[]>> = {
  literal: ['string', 'number', 'integer', 'boolean'],
  ident: ['string'],
  number: ['number', 'integer'],
  shell: ['string', 'number', 'integer'],
  uri: ['string', 'number', 'integer'],
};

/** Options that cannot work, thrown at compile with the path they are at. */
export class VirtualToolError extends Error {
  override name = 'VirtualToolError';
  constructor(
    readonly at: string,
    message: string,
  ) {
    super(message);
  }
}

type Piece = string | { readonly name: string; readonly type: PlaceholderType };
type Rendered = (args: Record<string, unknown>) => unknown;

function writeValue(value: unknown, type: PlaceholderType): string {
  switch (type) {
    case 'literal':
      return quotePgLiteral(String(value));
    case 'ident':
      return quotePgIdentifier(String(value));
    case 'number': {
      const n = value as number;
      return n < 0 || Object.is(n, -0) ? `(${String(n)})` : String(n);
    }
    case 'shell':
      return quoteShell(String(value));
    case 'uri':
      return encodeURIComponent(String(value));
  }
}

function typesOf(schema: unknown): string[] {
  const t = (schema as { type?: unknown } | undefined)?.type;
  if (typeof t === 'string') return [t];
  return Array.isArray(t) ? t.filter((x): x is string => typeof x === 'string') : [];
}

function compileTemplate(
  value: unknown,
  at: string,
  input: { properties: Record<string, unknown>; required: ReadonlySet<string> },
): Rendered {
  if (typeof value !== 'string') {
    const constant = JSON.stringify(value);
    return () => JSON.parse(constant) as unknown;
  }
  const needs = (name: string, type: PlaceholderType | 'value') => {
    if (!Object.hasOwn(input.properties, name))
      throw new VirtualToolError(at, `{{${name}}} names no property of the inputSchema`);
    if (!input.required.has(name))
      throw new VirtualToolError(at, `{{${name}}} must be a required property of the inputSchema`);
    if (type === 'value') return;
    const types = typesOf(input.properties[name]);
    const fits = PLACEHOLDER_TYPES[type];
    if (types.length === 0 || types.some((t) => !fits.includes(t)))
      throw new VirtualToolError(
        at,
        `{{${name}:${type}}} needs the property's schema type to be ${fits.join(' or ')}`,
      );
  };
  const whole = WHOLE_VALUE.exec(value);
  if (whole) {
    const name = whole[1] as string;
    needs(name, 'value');
    return (args) => args[name];
  }
  const pieces: Piece[] = [];
  let last = 0;
  for (const m of value.matchAll(PLACEHOLDER)) {
    const [text, name = '', type] = m;
    if (type === undefined)
      throw new VirtualToolError(
        at,
        `{{${name}}} inside a longer string needs a type (${Object.keys(PLACEHOLDER_TYPES).join(', ')}): raw input is never concatenated`,
      );
    if (!(type in PLACEHOLDER_TYPES))
      throw new VirtualToolError(
        at,
        `'${type}' is not a placeholder type (${Object.keys(PLACEHOLDER_TYPES).join(', ')})`,
      );
    needs(name, type as PlaceholderType);
    pieces.push(value.slice(last, m.index), { name, type: type as PlaceholderType });
    last = m.index + text.length;
  }
  pieces.push(value.slice(last));
  if (/\{\{|\}\}/.test(pieces.filter((p) => typeof p === 'string').join('\u0000')))
    throw new VirtualToolError(at, 'a `{{` or `}}` that is not a placeholder');
  if (pieces.length === 1) return () => value;
  return (args) =>
    pieces.map((p) => (typeof p === 'string' ? p : writeValue(args[p.name], p.type))).join('');
}

function compileOne(server: string, name: string, config: VirtualToolConfig): VirtualTool {
  const at = `servers.${server}.virtualTools.${name}`;
  const schema = config.inputSchema;
  if (schema.type !== 'object')
    throw new VirtualToolError(`${at}.inputSchema`, 'the inputSchema must be of type object');
  let validate: ReturnType<typeof compileInputSchema>;
  try {
    validate = compileInputSchema(schema);
  } catch (err) {
    throw new VirtualToolError(`${at}.inputSchema`, (err as Error).message);
  }
  const properties = (schema.properties ?? {}) as Record<string, unknown>;
  const required = new Set(
    Array.isArray(schema.required) ? schema.required.filter((r) => typeof r === 'string') : [],
  );
  const templates = Object.entries(config.arguments).map(
    ([arg, template]) =>
      [arg, compileTemplate(template, `${at}.arguments.${arg}`, { properties, required })] as const,
  );
  const invalid = (message: string, path: string) =>
    new GatewayError('PORTCULLIS_ERR_POLICY_INVALID_ARGUMENTS', `'${name}' ${path}: ${message}`, {
      rule: at,
      tool: name,
      path,
    });
  return {
    name,
    tool: config.tool,
    rule: at,
    definition: {
      name,
      ...(config.title === undefined ? {} : { title: config.title }),
      description: config.description,
      inputSchema: schema,
    },
    render(args) {
      const given = args ?? {};
      if (!validate(given)) {
        const e = validate.errors?.[0];
        return {
          error: invalid(
            e?.message ?? 'does not match the input schema',
            e ? schemaErrorPath(e) : '/',
          ),
        };
      }
      const out: Record<string, unknown> = {};
      const input = given as Record<string, unknown>;
      for (const [arg, render] of templates) {
        try {
          out[arg] = render(input);
        } catch (err) {
          if (err instanceof QuoteError) return { error: invalid(err.message, `/${arg}`) };
          throw err;
        }
      }
      return { arguments: out };
    },
  };
}

export function compileVirtualTools(
  server: string,
  config: Readonly<Record<string, VirtualToolConfig>> | undefined,
): ServerVirtualTools | undefined {
  const entries = Object.entries(config ?? {});
  if (entries.length === 0) return undefined;
  const tools = new Map<string, VirtualTool>();
  const hidden = new Set<string>();
  for (const [name, c] of entries) {
    tools.set(name, compileOne(server, name, c));
    hidden.add(name);
    if (c.hideTool) hidden.add(c.tool);
  }
  for (const name of tools.keys())
    if (tools.get(name)?.tool === name)
      throw new VirtualToolError(
        `servers.${server}.virtualTools.${name}.tool`,
        'a virtual tool cannot call itself',
      );
  return { tools, hidden };
}

/** Virtual tool options that cannot work, at their config paths (for the config check). */
export function virtualToolProblems(
  servers: Readonly<Record<string, { virtualTools?: Record<string, VirtualToolConfig> }>>,
): Array<{ path: string; message: string }> {
  const problems: Array<{ path: string; message: string }> = [];
  for (const [server, config] of Object.entries(servers)) {
    for (const [name, tool] of Object.entries(config.virtualTools ?? {})) {
      try {
        compileVirtualTools(server, { [name]: tool });
      } catch (err) {
        if (!(err instanceof VirtualToolError)) throw err;
        problems.push({ path: err.at, message: err.message });
      }
    }
  }
  return problems;
}
