/**
 * The `sql` guard: SQL read by the database's own grammar, so that what the
 * guard judges is what the server will run, never a guess from keywords.
 *
 * PostgreSQL (the default dialect) is parsed by `libpg-query`: PostgreSQL's
 * own parser (the 17 grammar) compiled to WebAssembly, loaded once when the
 * policy module is first imported. MySQL (`dialect: mysql`) is parsed by
 * `node-sql-parser`, which is a grammar written to resemble MySQL's, not
 * MySQL's own: see the list of what it does not stop below.
 *
 * `readOnly` (the default unless `statements` is given) admits exactly one
 * statement, and only a plain query (`SELECT`, `VALUES`, `TABLE`, with CTEs,
 * joins, subqueries, window functions, set operations):
 * - a second statement is refused, whatever the first is: this is what stops
 *   `COMMIT; DROP TABLE users`, which ends a server's read-only transaction;
 * - a data-modifying CTE (`WITH x AS (DELETE … RETURNING *) SELECT …`),
 *   anywhere in the tree, is refused;
 * - `SELECT … INTO` (it creates a table) and locking clauses (`FOR UPDATE`,
 *   `FOR SHARE`: they take row locks a reader never needs) are refused;
 * - every other statement (`DO`, `COPY`, `CALL`, `SET`, `EXPLAIN ANALYZE`,
 *   `PREPARE`/`EXECUTE`, DDL, `GRANT`, `VACUUM`, `LOCK`) is refused;
 * - calling a function of the dangerous list, in any position and however it
 *   is qualified or cased, is refused: see DANGEROUS_FUNCTIONS.
 *
 * With `statements`, the listed kinds are admitted (up to `maxStatements`
 * per argument, 1 by default), with the same function list; `SELECT … INTO`
 * then counts as `create` and a locking clause as `update`.
 *
 * `tables` limits the relations a statement may name. An entry without a
 * schema (`users`) admits only references without one (resolved by the
 * server's search_path, which a guarded statement cannot change); an entry
 * `public.users` admits `public.users`. A CTE's name is not a table inside
 * its query.
 *
 * Text that does not parse, and text with no statement (empty, a comment),
 * are refused; so is text longer than `maxLength` characters (64 KiB by
 * default: parsing is linear but not free).
 *
 * What this does not stop: functions the operator wrote or an extension
 * added that write or reach the host (name them in `functions`, or give the
 * server a role that cannot); reads of any table when `tables` is not set,
 * catalogs included; a server that rewrites the text before running it; for
 * MySQL, every place where node-sql-parser reads differently from the
 * server (the guard refuses `/*!` executable comments outright, because
 * the parser drops them as comments and MySQL runs them).
 */
import { createRequire } from 'node:module';
import { loadModule, parseSync } from 'libpg-query';
import type { Parser as SqlParser } from 'node-sql-parser';
import { GuardOptionError, type GuardCheck } from './types.js';

export interface SqlGuardOptions {
  readonly dialect?: 'postgresql' | 'mysql';
  readonly readOnly?: boolean;
  readonly statements?: readonly string[];
  readonly tables?: readonly string[];
  readonly functions?: readonly string[];
  readonly allowFunctions?: readonly string[];
  readonly maxStatements?: number;
  readonly maxLength?: number;
}

/** The default bound on the text parsed, in UTF-16 units. */
export const DEFAULT_SQL_MAX_LENGTH = 65_536;
/** Longest piece of the text or of a name that a reason quotes. */
const MAX_EXCERPT_CHARS = 60;

/**
 * Functions a read-only query has no business calling, lowercased; an entry
 * ending in `*` covers every name that starts with what precedes it.
 * PostgreSQL's, then MySQL's.
 */
export const DANGEROUS_FUNCTIONS: readonly string[] = [
  // The server's file system and programs.
  'pg_read_file',
  'pg_read_binary_file',
  'pg_ls_*',
  'pg_stat_file',
  'pg_file_*',
  'pg_logdir_ls',
  'lo_*',
  'loread',
  'lowrite',
  // Other databases and servers, from inside this one.
  'dblink*',
  // Other sessions, the server's state and its configuration.
  'pg_terminate_backend',
  'pg_cancel_backend',
  'pg_signal_backend',
  'pg_reload_conf',
  'pg_rotate_logfile',
  'pg_promote',
  'pg_switch_wal',
  'pg_create_*',
  'pg_drop_*',
  'pg_copy_*',
  'pg_backup_*',
  'pg_start_backup',
  'pg_stop_backup',
  'pg_wal_replay_*',
  'pg_logical_*',
  'pg_replication_*',
  'pg_log_backend_memory_contexts',
  'pg_stat_reset*',
  'pg_import_system_collations',
  'pg_extension_config_dump',
  'pg_nextoid',
  'binary_upgrade_*',
  'set_config',
  'pg_notify',
  // Locks and sleeps: a query that holds the server.
  'pg_advisory_*',
  'pg_try_advisory_*',
  'pg_sleep*',
  // Writes a plain SELECT can make.
  'nextval',
  'setval',
  // Queries run from a string, or whole tables read by name past `tables`.
  'query_to_xml*',
  'cursor_to_xml*',
  'table_to_xml*',
  'schema_to_xml*',
  'database_to_xml*',
  // MySQL.
  'load_file',
  'sleep',
  'benchmark',
  'get_lock',
  'release_lock',
  'release_all_locks',
  'master_pos_wait',
  'source_pos_wait',
  'sys_exec',
  'sys_eval',
];

/** Statement kinds by the name `statements` uses, for PostgreSQL's node types. */
const PG_KINDS: Readonly<Record<string, string>> = {
  SelectStmt: 'select',
  InsertStmt: 'insert',
  UpdateStmt: 'update',
  DeleteStmt: 'delete',
  MergeStmt: 'merge',
  CreateStmt: 'create',
  CreateTableAsStmt: 'create',
  ViewStmt: 'create',
  IndexStmt: 'create',
  DropStmt: 'drop',
  AlterTableStmt: 'alter',
  TruncateStmt: 'truncate',
  ExplainStmt: 'explain',
  VariableShowStmt: 'show',
  VariableSetStmt: 'set',
  TransactionStmt: 'transaction',
  CopyStmt: 'copy',
  DoStmt: 'do',
  CallStmt: 'call',
  GrantStmt: 'grant',
  GrantRoleStmt: 'grant',
  VacuumStmt: 'vacuum',
  LockStmt: 'lock',
};
/** The kinds `statements` may name, in either dialect. */
const KNOWN_KINDS: readonly string[] = [...new Set([...Object.values(PG_KINDS), 'replace'])].sort();

/** PostgreSQL's node types that are statements (every `…Stmt` but the few that are parts). */
const NOT_STATEMENTS = new Set(['RawStmt', 'PLAssignStmt', 'ReturnStmt']);

let pgReady = false;

/** Instantiates PostgreSQL's parser (about 50 ms, once per process). */
export async function loadSqlParser(): Promise<void> {
  if (pgReady) return;
  await loadModule();
  pgReady = true;
}

const excerpt = (text: string): string =>
  text.length <= MAX_EXCERPT_CHARS ? text : `${text.slice(0, MAX_EXCERPT_CHARS)}…`;

/** Lowercased names, split into exact ones and prefixes (entries ending in `*`). */
class NameSet {
  private readonly exact = new Set<string>();
  private readonly prefixes: string[] = [];
  constructor(entries: Iterable<string>) {
    for (const entry of entries) {
      const name = entry.toLowerCase();
      if (name.endsWith('*')) this.prefixes.push(name.slice(0, -1));
      else this.exact.add(name);
    }
  }
  has(name: string): boolean {
    if (this.exact.has(name)) return true;
    for (const p of this.prefixes) if (name.startsWith(p)) return true;
    return false;
  }
}

function dangerousSet(options: SqlGuardOptions): NameSet {
  const taken = new Set((options.allowFunctions ?? []).map((n) => n.toLowerCase()));
  return new NameSet([
    ...DANGEROUS_FUNCTIONS.filter((n) => !taken.has(n)),
    ...(options.functions ?? []),
  ]);
}

interface Rules {
  readonly readOnly: boolean;
  readonly kinds: ReadonlySet<string>;
  readonly maxStatements: number;
  readonly maxLength: number;
  readonly dangerous: NameSet;
  /** Lowercased `schema.table` or `table` entries; undefined when any table may be named. */
  readonly tables?: ReadonlySet<string>;
}

function rulesOf(options: SqlGuardOptions): Rules {
  const statements = options.statements?.map((s) => s.toLowerCase());
  const readOnly = options.readOnly ?? statements === undefined;
  for (const kind of statements ?? [])
    if (!KNOWN_KINDS.includes(kind))
      throw new GuardOptionError(
        `statements: '${kind}' is not a statement kind (known: ${KNOWN_KINDS.join(', ')})`,
      );
  if (readOnly && statements !== undefined && statements.some((s) => s !== 'select'))
    throw new GuardOptionError(
      'readOnly admits only select: set readOnly to false to allow other statements',
    );
  if (readOnly && (options.maxStatements ?? 1) !== 1)
    throw new GuardOptionError('readOnly admits exactly one statement: maxStatements must be 1');
  for (const name of options.allowFunctions ?? [])
    if (!DANGEROUS_FUNCTIONS.includes(name.toLowerCase()))
      throw new GuardOptionError(
        `allowFunctions: '${name}' is not on the list of dangerous functions`,
      );
  return {
    readOnly,
    kinds: new Set(readOnly ? ['select'] : statements),
    maxStatements: readOnly ? 1 : (options.maxStatements ?? 1),
    maxLength: options.maxLength ?? DEFAULT_SQL_MAX_LENGTH,
    dangerous: dangerousSet(options),
    ...(options.tables ? { tables: new Set(options.tables.map((t) => t.toLowerCase())) } : {}),
  };
}

export function compileSqlGuard(options: SqlGuardOptions): GuardCheck {
  const rules = rulesOf(options);
  if (options.dialect === 'mysql') mysql();
  const judge = options.dialect === 'mysql' ? judgeMysql : judgePostgres;
  return (value) => {
    if (typeof value !== 'string') return 'not a string of SQL';
    if (value.length > rules.maxLength) return `SQL longer than ${rules.maxLength} characters`;
    if (value.trim() === '') return 'no SQL statement';
    return judge(value, rules);
  };
}

function tableRefused(rules: Rules, schema: string | undefined, table: string): string | undefined {
  if (!rules.tables) return undefined;
  const name = (schema ? `${schema}.${table}` : table).toLowerCase();
  return rules.tables.has(name) ? undefined : `the table ${excerpt(name)}, which is not allowed`;
}

// --- PostgreSQL ---------------------------------------------------------------

type Node = Record<string, unknown>;

const isNode = (v: unknown): v is Node => v !== null && typeof v === 'object';

/** The names of a `funcname` or `names` list (`[{String: {sval}}]`), lowercased. */
function namesOf(list: unknown): string[] {
  if (!Array.isArray(list)) return [];
  return list.map((n) => {
    const s = isNode(n) && isNode(n.String) ? n.String.sval : undefined;
    return typeof s === 'string' ? s.toLowerCase() : '';
  });
}

/** The names a `WITH` clause defines, as a scope for the CTE at `index` (or for the body). */
function cteNames(withClause: Node, index: number): string[] {
  const ctes = Array.isArray(withClause.ctes) ? withClause.ctes : [];
  const upTo = withClause.recursive === true || index < 0 ? ctes.length : index;
  const names: string[] = [];
  for (let i = 0; i < upTo; i++) {
    const cte = ctes[i] as Node;
    const name = isNode(cte.CommonTableExpr) ? cte.CommonTableExpr.ctename : undefined;
    if (typeof name === 'string') names.push(name.toLowerCase());
  }
  return names;
}

/** What a statement does, in `statements` terms, looking inside `SELECT … INTO` and `FOR UPDATE`. */
function pgKindOf(type: string, body: Node): string {
  if (type === 'SelectStmt') {
    if (body.intoClause) return 'create';
    if (Array.isArray(body.lockingClause) && body.lockingClause.length > 0) return 'update';
  }
  return PG_KINDS[type] ?? type.replace(/Stmt$/, '').toLowerCase();
}

function describePg(type: string, body: Node): string {
  if (type === 'SelectStmt' && body.intoClause) return 'SELECT … INTO';
  if (type === 'SelectStmt' && Array.isArray(body.lockingClause) && body.lockingClause.length > 0)
    return 'a locking clause (FOR UPDATE or FOR SHARE)';
  const kind = PG_KINDS[type];
  return kind ? kind.toUpperCase() : `a ${type.replace(/Stmt$/, '')} statement`;
}

function statementRefused(
  rules: Rules,
  type: string,
  body: Node,
  where: string,
): string | undefined {
  const kind = pgKindOf(type, body);
  if (rules.kinds.has(kind)) return undefined;
  return rules.readOnly && !where
    ? `${describePg(type, body)}, where only a plain query is allowed`
    : `${describePg(type, body)}${where}, which is not allowed`;
}

function judgePostgres(text: string, rules: Rules): string | undefined {
  let stmts: Array<{ stmt?: Node }>;
  try {
    stmts = (parseSync(text) as { stmts?: Array<{ stmt?: Node }> }).stmts ?? [];
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    return `not SQL that PostgreSQL parses (${excerpt(detail)})`;
  }
  if (stmts.length === 0) return 'no SQL statement';
  if (stmts.length > rules.maxStatements) {
    const second = stmts[rules.maxStatements]?.stmt ?? {};
    const type = Object.keys(second)[0] ?? '';
    const which =
      rules.maxStatements === 1 ? 'a second statement' : `statement ${rules.maxStatements + 1}`;
    return `${which} (${describePg(type, (second[type] ?? {}) as Node)}) after the first`;
  }
  for (const { stmt } of stmts) {
    const type = Object.keys(stmt ?? {})[0] ?? '';
    const refused =
      statementRefused(rules, type, ((stmt ?? {})[type] ?? {}) as Node, '') ??
      walkPostgres(stmt ?? {}, rules);
    if (refused) return refused;
  }
  return undefined;
}

/**
 * Every node of the tree, iteratively (the parser admits nesting far deeper
 * than a recursive walk's stack), with the CTE names in scope: refuses
 * nested statements of a kind not allowed, dangerous function calls and
 * tables not allowed.
 */
function walkPostgres(root: Node, rules: Rules): string | undefined {
  const stack: Array<[unknown, readonly string[]]> = [[root, []]];
  while (stack.length > 0) {
    const [value, scope] = stack.pop() as [unknown, readonly string[]];
    if (Array.isArray(value)) {
      for (const v of value) stack.push([v, scope]);
      continue;
    }
    if (!isNode(value)) continue;
    for (const [key, child] of Object.entries(value)) {
      if (!isNode(child)) continue;
      if (key.endsWith('Stmt') && !NOT_STATEMENTS.has(key) && value !== root) {
        const refused = statementRefused(rules, key, child, ' inside the query');
        if (refused) return refused;
      }
      if (key === 'FuncCall') {
        const names = namesOf(child.funcname);
        const name = names[names.length - 1] ?? '';
        if (rules.dangerous.has(name))
          return `a call of ${excerpt(names.join('.'))}, which is refused`;
      }
      if (key === 'RangeVar' && rules.tables) {
        const schema = typeof child.schemaname === 'string' ? child.schemaname : undefined;
        const table = String(child.relname ?? '');
        if (schema !== undefined || !scope.includes(table.toLowerCase())) {
          const refused = tableRefused(rules, schema, table);
          if (refused) return refused;
        }
      }
      const withClause = isNode(child.withClause) ? child.withClause : undefined;
      if (withClause) {
        // The body sees every CTE; CTE i sees those before it (all of them under RECURSIVE).
        const inner = [...scope, ...cteNames(withClause, -1)];
        for (const [k, v] of Object.entries(child)) if (k !== 'withClause') stack.push([v, inner]);
        const ctes = Array.isArray(withClause.ctes) ? withClause.ctes : [];
        ctes.forEach((cte, i) => stack.push([cte, [...scope, ...cteNames(withClause, i)]]));
        // The statement node itself was checked above; its children are queued.
        continue;
      }
      stack.push([child, scope]);
    }
  }
  return undefined;
}

// --- MySQL (node-sql-parser) ----------------------------------------------------

let mysqlParser: SqlParser | undefined;

/**
 * node-sql-parser's MySQL build (about 80 ms to load), required the first
 * time a mysql guard is compiled, so that configurations without one never
 * pay for it.
 */
function mysql(): SqlParser {
  if (!mysqlParser) {
    const { Parser } = createRequire(import.meta.url)('node-sql-parser/build/mysql.js') as {
      Parser: new () => SqlParser;
    };
    mysqlParser = new Parser();
  }
  return mysqlParser;
}

/** node-sql-parser's `type` of a statement, as `statements` names it. */
function mysqlKindOf(ast: Node): string {
  const type = String(ast.type ?? '').toLowerCase();
  if (type === 'select') {
    const into = isNode(ast.into) ? ast.into : undefined;
    if (into && into.position !== null && into.position !== undefined) return 'create';
    if (ast.locking_read) return 'update';
  }
  return type;
}

function describeMysql(ast: Node): string {
  const kind = mysqlKindOf(ast);
  if (kind === 'create' && String(ast.type) === 'select') return 'SELECT … INTO';
  if (kind === 'update' && String(ast.type) === 'select')
    return 'a locking clause (FOR UPDATE or FOR SHARE)';
  return kind.toUpperCase() || 'a statement';
}

/** A function node's name: `{name: {name: [{value}]}}` (5.x) or a plain string (aggregates). */
function mysqlFunctionName(node: Node): string {
  const name = node.name;
  if (typeof name === 'string') return name.toLowerCase();
  if (isNode(name) && Array.isArray(name.name))
    return (name.name as Node[])
      .map((part) => String(isNode(part) ? part.value : ''))
      .join('.')
      .toLowerCase();
  return '';
}

function judgeMysql(text: string, rules: Rules): string | undefined {
  // MySQL runs what `/*! … */` holds; node-sql-parser drops it as a comment.
  if (text.includes('/*!')) return 'a MySQL executable comment (/*! … */)';
  let parsed: unknown;
  try {
    parsed = mysql().astify(text, { database: 'mysql' });
  } catch (err) {
    const detail = err instanceof Error ? (err.message.split('\n')[0] ?? '') : String(err);
    return `not SQL that the MySQL grammar parses (${excerpt(detail)})`;
  }
  const stmts = (Array.isArray(parsed) ? parsed : [parsed]).filter(isNode);
  if (stmts.length === 0) return 'no SQL statement';
  if (stmts.length > rules.maxStatements) {
    const which =
      rules.maxStatements === 1 ? 'a second statement' : `statement ${rules.maxStatements + 1}`;
    return `${which} (${describeMysql(stmts[rules.maxStatements] as Node)}) after the first`;
  }
  for (const ast of stmts) {
    const kind = mysqlKindOf(ast);
    if (!rules.kinds.has(kind))
      return rules.readOnly
        ? `${describeMysql(ast)}, where only a plain query is allowed`
        : `${describeMysql(ast)}, which is not allowed`;
    const refused = walkMysql(ast, rules);
    if (refused) return refused;
  }
  return undefined;
}

function walkMysql(root: Node, rules: Rules): string | undefined {
  const stack: Array<[unknown, readonly string[]]> = [[root, []]];
  while (stack.length > 0) {
    const [value, outer] = stack.pop() as [unknown, readonly string[]];
    if (Array.isArray(value)) {
      for (const v of value) stack.push([v, outer]);
      continue;
    }
    if (!isNode(value)) continue;
    let scope = outer;
    if (Array.isArray(value.with)) {
      const names = (value.with as Node[]).map((w) =>
        String(isNode(w.name) ? w.name.value : (w.name ?? '')).toLowerCase(),
      );
      scope = [...outer, ...names];
    }
    // A subquery or a CTE's query is `{ast: {type: …}}`.
    if (isNode(value.ast)) {
      const kind = mysqlKindOf(value.ast);
      if (!rules.kinds.has(kind))
        return `${describeMysql(value.ast)} inside the query, which is not allowed`;
    }
    if (value.type === 'function' || value.type === 'aggr_func') {
      const name = mysqlFunctionName(value);
      const last = name.split('.').pop() ?? '';
      if (rules.dangerous.has(last)) return `a call of ${excerpt(name)}, which is refused`;
    }
    if (
      rules.tables &&
      value.type === undefined &&
      typeof value.table === 'string' &&
      'db' in value &&
      !(value.db === null && scope.includes(value.table.toLowerCase()))
    ) {
      const refused = tableRefused(
        rules,
        typeof value.db === 'string' ? value.db : undefined,
        value.table,
      );
      if (refused) return refused;
    }
    for (const child of Object.values(value)) if (isNode(child)) stack.push([child, scope]);
  }
  return undefined;
}
