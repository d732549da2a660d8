/**
 * The `sql` guard in process, on PostgreSQL's own parser (libpg-query) and on
 * node-sql-parser for MySQL: the attack corpus refused with the reason it
 * names, the benign corpus admitted, and the options (statements, tables,
 * functions) doing what they say.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { compileSqlGuard, DANGEROUS_FUNCTIONS, loadSqlParser } from '../src/policy/guards/sql.js';
import { GuardOptionError } from '../src/policy/guards/types.js';
import { POSTGRES_ATTACKS, POSTGRES_BENIGN } from './fixtures/attack-corpus.js';

await loadSqlParser();
const readOnly = compileSqlGuard({});

test('every PostgreSQL attack in the corpus is refused, and every benign query admitted', () => {
  for (const sql of POSTGRES_ATTACKS) assert.ok(readOnly(sql) !== undefined, `admitted: ${sql}`);
  for (const sql of POSTGRES_BENIGN) assert.equal(readOnly(sql), undefined, sql);
});

test('the reasons name what was found', () => {
  const cases: Array<[string, RegExp]> = [
    ['COMMIT; DROP TABLE users CASCADE;', /^a second statement \(DROP\) after the first$/],
    ['END; DROP TABLE users', /^a second statement/],
    ['COMMIT', /^TRANSACTION, where only a plain query is allowed$/],
    ['WITH g AS (DELETE FROM o RETURNING *) SELECT * FROM g', /^DELETE inside the query/],
    [
      'SELECT * FROM (WITH x AS (UPDATE u SET a = 1 RETURNING 1) SELECT * FROM x) s',
      /^UPDATE inside/,
    ],
    ['SELECT * INTO stolen FROM users', /^SELECT … INTO, where only a plain query/],
    ['SELECT * FROM users FOR SHARE', /^a locking clause/],
    ['DO $$ BEGIN END $$', /^DO, where/],
    ["COPY users TO PROGRAM 'id'", /^COPY, where/],
    [
      "SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')",
      /^a call of pg_catalog\.pg_read_file, which is refused$/,
    ],
    ['SELECT "PG_SLEEP"(1)', /^a call of pg_sleep/],
    ["SELECT * FROM pg_ls_dir('/')", /^a call of pg_ls_dir/],
    ["SELECT dblink_connect('x')", /^a call of dblink_connect/],
    ["SELECT x FROM t WHERE y = (SELECT lo_import('/etc/passwd'))", /^a call of lo_import/],
    ['SELEC 1', /^not SQL that PostgreSQL parses \(syntax error at or near "SELEC"\)$/],
    ['', /^no SQL statement$/],
    ['/* nothing */', /^no SQL statement$/],
  ];
  for (const [sql, reason] of cases) assert.match(readOnly(sql) ?? 'admitted', reason, sql);
  assert.equal(readOnly(42), 'not a string of SQL');
});

test('nesting deeper than any query, and text past maxLength, are refused without a crash', () => {
  const deep = `SELECT ${'('.repeat(100_000)}1${')'.repeat(100_000)}`;
  assert.match(
    compileSqlGuard({ maxLength: 1_000_000 })(deep) ?? '',
    /^not SQL that PostgreSQL parses/,
  );
  assert.equal(readOnly(deep), 'SQL longer than 65536 characters');
  assert.equal(readOnly('SELECT 1'), undefined, 'the parser still works afterwards');
  // Deep but parseable: the walk is iterative, so no stack overflow either.
  const nested = `SELECT ${'coalesce('.repeat(800)}1${')'.repeat(800)}`;
  assert.equal(readOnly(nested), undefined);
  assert.match(
    readOnly(`SELECT ${'coalesce('.repeat(800)}pg_sleep(1)${')'.repeat(800)}`) ?? '',
    /pg_sleep/,
  );
});

test('statements admits the kinds listed, up to maxStatements, and still refuses dangerous calls', () => {
  const writes = compileSqlGuard({ statements: ['select', 'insert', 'update'], maxStatements: 2 });
  assert.equal(writes('INSERT INTO t VALUES (1); UPDATE t SET a = 2'), undefined);
  assert.match(writes('DELETE FROM t') ?? '', /^DELETE, which is not allowed$/);
  assert.match(
    writes('SELECT 1; SELECT 2; SELECT 3') ?? '',
    /^statement 3 \(SELECT\) after the first$/,
  );
  assert.match(writes("INSERT INTO t SELECT pg_read_file('/x')") ?? '', /pg_read_file/);
  assert.match(
    writes('WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d') ?? '',
    /^DELETE inside/,
  );
  assert.equal(writes('SELECT * FROM t FOR UPDATE'), undefined, 'a lock counts as update');
  assert.match(writes('SELECT * INTO x FROM t') ?? '', /^SELECT … INTO/, 'INTO counts as create');
});

test('tables limits the relations named, and a CTE is not a table inside its query', () => {
  const guard = compileSqlGuard({ tables: ['users', 'public.orders'] });
  assert.equal(guard('SELECT * FROM users u JOIN public.orders o ON o.user_id = u.id'), undefined);
  assert.match(guard('SELECT * FROM secrets') ?? '', /^the table secrets, which is not allowed$/);
  assert.match(
    guard('SELECT * FROM public.users') ?? '',
    /public\.users/,
    'qualified is another name',
  );
  assert.match(guard('SELECT * FROM orders') ?? '', /the table orders/);
  assert.match(
    guard('SELECT * FROM users WHERE id IN (SELECT id FROM pg_authid)') ?? '',
    /pg_authid/,
  );
  assert.equal(guard('WITH secrets AS (SELECT * FROM users) SELECT * FROM secrets'), undefined);
  // Outside the CTE's query, the name is the real table again.
  assert.match(
    guard('SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) a, secrets') ?? '',
    /the table secrets/,
  );
  // Without RECURSIVE, a CTE does not see those after it: `b` inside `a` is a table.
  assert.match(
    guard('WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a') ?? '',
    /the table b/,
  );
  assert.equal(
    guard(
      'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r',
    ),
    undefined,
  );
});

test('functions adds to the list and allowFunctions takes off it', () => {
  const guard = compileSqlGuard({
    functions: ['purge_*', 'audit.wipe'],
    allowFunctions: ['pg_sleep*'],
  });
  assert.match(guard('SELECT purge_everything()') ?? '', /purge_everything/);
  assert.equal(guard('SELECT pg_sleep(0)'), undefined);
  assert.match(guard("SELECT pg_read_file('/x')") ?? '', /pg_read_file/);
  assert.ok(DANGEROUS_FUNCTIONS.includes('set_config'));
});

test('options that cannot work are refused at compile, naming the option', () => {
  const refused = (options: Parameters<typeof compileSqlGuard>[0], re: RegExp) =>
    assert.throws(
      () => compileSqlGuard(options),
      (e: unknown) => e instanceof GuardOptionError && re.test(e.message),
    );
  refused({ statements: ['select', 'detonate'] }, /'detonate' is not a statement kind/);
  refused({ readOnly: true, statements: ['select', 'delete'] }, /readOnly admits only select/);
  refused({ readOnly: true, maxStatements: 2 }, /maxStatements must be 1/);
  refused({ allowFunctions: ['count'] }, /'count' is not on the list/);
});

test('dialect mysql: one plain query, no INTO OUTFILE, no locks, no dangerous calls, no executable comments', () => {
  const guard = compileSqlGuard({ dialect: 'mysql' });
  for (const sql of [
    'SELECT u.name, count(*) AS n FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.name',
    "SELECT * FROM users WHERE name LIKE '%drop table%'",
    "SELECT 'COMMIT; DROP TABLE users' AS t",
    'WITH a AS (SELECT 1 AS x) SELECT x FROM a',
  ])
    assert.equal(guard(sql), undefined, sql);
  const cases: Array<[string, RegExp]> = [
    ['SELECT 1; DROP TABLE users', /^a second statement \(DROP\) after the first$/],
    ['DELETE FROM users', /^DELETE, where only a plain query/],
    ["SELECT * FROM users INTO OUTFILE '/tmp/x'", /^SELECT … INTO/],
    ['SELECT * FROM users FOR UPDATE', /^a locking clause/],
    ["SELECT LOAD_FILE('/etc/passwd')", /^a call of load_file/],
    ['SELECT sleep(10)', /^a call of sleep/],
    ['SELECT benchmark(1000000000, md5(1))', /^a call of benchmark/],
    ['SELECT 1 /*!; DROP TABLE users */', /executable comment/],
    ['SELEC 1', /^not SQL that the MySQL grammar parses/],
  ];
  for (const [sql, reason] of cases) assert.match(guard(sql) ?? 'admitted', reason, sql);
  const tables = compileSqlGuard({ dialect: 'mysql', tables: ['users'] });
  assert.equal(tables('SELECT * FROM users'), undefined);
  assert.match(tables('SELECT * FROM users JOIN mysql.user') ?? '', /mysql\.user/);
  assert.equal(tables('WITH s AS (SELECT * FROM users) SELECT * FROM s'), undefined);
});
