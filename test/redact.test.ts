/**
 * Response redaction (src/policy/redact/): every secret of the corpus is
 * found under its rule and redacted wherever it sits; the benign corpus is
 * left alone (false positives counted, and asserted zero); MCP results are
 * redacted in a copy with JSON pointers; a stream finds secrets split across
 * pieces; and hostile input costs linear time.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RE2JS } from 're2js';
import {
  MAX_PEM_BLOCK_CHARS,
  MAX_RESULT_DEPTH,
  MAX_RESULT_STRINGS,
  MAX_TOKEN_RUN_CHARS,
  REDACT_RULES,
  RedactError,
  compileRedactor,
  type Finding,
  type Redactor,
} from '../src/policy/redact/index.js';
import { RULE_SPECS, type PatternRule } from '../src/policy/redact/rules.js';
import { ALL_BENIGN, BENIGN } from './fixtures/benign-corpus.js';
import { ALL_SECRETS, SECRETS, type SecretSample } from './fixtures/secret-corpus.js';
import { prng } from './helpers/prng.js';

const redactor = compileRedactor();
const tag = (rule: string): string => `[REDACTED:${rule}]`;

/** Where a sample is put, and how its secret reads there. */
const EMBEDDINGS: ReadonlyArray<{
  readonly name: string;
  readonly wrap: (sample: string) => string;
  readonly escape: (secret: string) => string;
}> = [
  { name: 'in text', wrap: (s) => `Here is the output:\n  ${s}\nend of output.`, escape: (s) => s },
  {
    name: 'in JSON',
    wrap: (s) => JSON.stringify({ tool: 'shell', exitCode: 0, output: s }),
    escape: (s) => JSON.stringify(s).slice(1, -1),
  },
  { name: 'in a KEY=value line', wrap: (s) => `OUTPUT=${s}\nSTATUS=0`, escape: (s) => s },
  { name: 'at the start', wrap: (s) => `${s}\nthat was all`, escape: (s) => s },
  { name: 'at the end', wrap: (s) => `last line: ${s}`, escape: (s) => s },
];

/** `text` with its one occurrence of `secret` replaced by the rule's tag. */
function expected(text: string, secret: string, rule: string): { text: string; start: number } {
  const start = text.indexOf(secret);
  assert.ok(start >= 0 && text.indexOf(secret, start + 1) < 0, 'the secret occurs once');
  return { text: text.slice(0, start) + tag(rule) + text.slice(start + secret.length), start };
}

function streamed(
  r: Redactor,
  pieces: readonly string[],
): { text: string; findings: readonly Finding[] } {
  const s = r.stream();
  let text = '';
  for (const p of pieces) text += s.push(p);
  text += s.end();
  return { text, findings: s.findings };
}

test('the rule table: ids unique, every pattern RE2, keywords lowercase, the gitleaks ids kept', () => {
  const ids = REDACT_RULES.map((r) => r.id);
  assert.equal(new Set(ids).size, ids.length);
  for (const spec of RULE_SPECS) {
    assert.ok(spec.keywords.length > 0, spec.id);
    for (const k of spec.keywords) assert.equal(k, k.toLowerCase(), spec.id);
    if (spec.kind === 'pattern') RE2JS.compile(spec.regex);
  }
  for (const id of [
    'aws-access-token',
    'gcp-api-key',
    'azure-ad-client-secret',
    'private-key',
    'jwt',
    'github-pat',
    'github-fine-grained-pat',
    'gitlab-pat',
    'slack-bot-token',
    'slack-webhook-url',
    'stripe-access-token',
    'openai-api-key',
    'anthropic-api-key',
    'generic-api-key',
  ])
    assert.equal(REDACT_RULES.find((r) => r.id === id)?.source, 'gitleaks', id);
  for (const id of ['aws-secret-access-key', 'azure-storage-account-key', 'url-password'])
    assert.equal(REDACT_RULES.find((r) => r.id === id)?.source, 'portcullis', id);
});

test('each pattern rule’s window bounds hold for every corpus secret of that rule', () => {
  for (const sample of ALL_SECRETS) {
    const spec = RULE_SPECS.find((s) => s.id === sample.rule);
    if (spec?.kind !== 'pattern') continue;
    const p: PatternRule = spec;
    const m = RE2JS.compile(p.regex).matcher(sample.sample);
    assert.ok(m.find(), `${p.id} matches its own sample`);
    const lower = sample.sample.toLowerCase();
    const fits = p.keywords.some((k) => {
      for (
        let at = lower.indexOf(k, Math.max(0, m.start() - k.length));
        at >= 0;
        at = lower.indexOf(k, at + 1)
      ) {
        if (at + k.length > m.end()) break;
        if (at < m.start()) continue;
        const afterOk = p.after === undefined || m.end() <= at + p.after;
        if (m.start() >= at - p.before && afterOk && m.start(p.secretGroup) >= at - p.secretBefore)
          return true;
      }
      return false;
    });
    assert.ok(fits, `${p.id}: the match lies within before/after of a keyword it contains`);
  }
});

for (const [family, samples] of Object.entries(SECRETS)) {
  test(`secrets (${family}): found under their rule and redacted, wherever they sit`, () => {
    for (const s of samples) {
      for (const e of EMBEDDINGS) {
        const text = e.wrap(s.sample);
        const secret = e.escape(s.secret);
        const want = expected(text, secret, s.rule);
        const got = redactor.redactText(text);
        const where = `${s.rule} ${e.name}`;
        assert.ok(got, `${where}: found`);
        assert.equal(got.text, want.text, `${where}: only the secret is replaced`);
        assert.deepEqual(
          got.findings,
          [{ rule: s.rule, path: '', start: want.start, end: want.start + secret.length }],
          where,
        );
        assert.ok(
          !JSON.stringify(got.findings).includes(secret),
          `${where}: findings never carry the secret`,
        );
      }
    }
  });
}

test('benign corpus: no false positives (as text, in JSON, and in JSON inside JSON)', () => {
  const falsePositives: string[] = [];
  for (const [family, samples] of Object.entries(BENIGN))
    for (const b of samples)
      for (const text of [
        b,
        JSON.stringify({ output: b }),
        JSON.stringify(JSON.stringify({ output: b })),
      ])
        for (const f of redactor.redactText(text)?.findings ?? [])
          falsePositives.push(
            `${family} ${f.rule}: …${text.slice(Math.max(0, f.start - 40), f.end + 10)}…`,
          );
  assert.equal(falsePositives.length, 0, falsePositives.join('\n'));
  assert.ok(ALL_BENIGN.length >= 30);
});

test('AWS documentation example keys are left alone; the same shapes without EXAMPLE are not', () => {
  assert.equal(redactor.redactText('aws_access_key_id = AKIAIOSFODNN7EXAMPLE'), undefined);
  assert.equal(
    redactor.redactText('aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'),
    undefined,
  );
  assert.equal(
    redactor.redactText('aws_access_key_id = AKIAIOSFODNN7QWERTYZ')?.text,
    `aws_access_key_id = ${tag('aws-access-token')}`,
  );
  assert.equal(
    redactor.redactText('aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYQWERTYZKEY')?.text,
    `aws_secret_access_key = ${tag('aws-secret-access-key')}`,
  );
});

test('what stays readable: the URL around its password, the name before a generic value', () => {
  const db = SECRETS.databaseUrls?.[0] as SecretSample;
  assert.equal(
    redactor.redactText(db.sample)?.text,
    `postgres://app_user:${tag('url-password')}@db.internal:5432/orders`,
  );
  assert.equal(redactor.redactText('postgres://user@db.internal/app'), undefined);
  assert.equal(redactor.redactText('postgres://user:${DB_PASSWORD}@db/app'), undefined);
  assert.equal(redactor.redactText('redis://:password@localhost:6379'), undefined);
  const gen = SECRETS.generic?.[0] as SecretSample;
  assert.equal(redactor.redactText(gen.sample)?.text, `API_KEY=${tag('generic-api-key')}`);
});

test('private keys: a truncated block is redacted from BEGIN; a bare BEGIN line is not', () => {
  const key = (SECRETS.privateKeys?.[0] as SecretSample).secret;
  const truncated = key.slice(0, key.indexOf('-----END') - 200);
  const text = `$ head -c 1200 id_rsa\n${truncated}\n$ echo done`;
  const got = redactor.redactText(text);
  assert.equal(got?.text, `$ head -c 1200 id_rsa\n${tag('private-key')}\n$ echo done`);
  assert.equal(
    redactor.redactText(
      'Keys start with -----BEGIN RSA PRIVATE KEY----- and end with an END line.',
    ),
    undefined,
  );
  // A block longer than MAX_PEM_BLOCK_CHARS: its first MAX_PEM_BLOCK_CHARS are redacted.
  const long = `-----BEGIN PRIVATE KEY-----\n${'QUJD'.repeat(MAX_PEM_BLOCK_CHARS / 4)}\n-----END PRIVATE KEY-----`;
  const first = redactor.redactText(long)?.findings[0];
  assert.deepEqual(first, { rule: 'private-key', path: '', start: 0, end: MAX_PEM_BLOCK_CHARS });
});

test('options: disable (unknown ids refused), replacement (called once per rule, checked)', () => {
  const jwt = (SECRETS.jwt?.[0] as SecretSample).sample;
  assert.equal(compileRedactor({ disable: ['jwt'] }).redactText(jwt), undefined);
  assert.ok(!compileRedactor({ disable: ['jwt'] }).rules.some((r) => r.id === 'jwt'));
  assert.throws(
    () => compileRedactor({ disable: ['jwt', 'no-such-rule'] }),
    (err: unknown) => err instanceof RedactError && err.code === 'REDACT_UNKNOWN_RULE',
  );
  let calls = 0;
  const custom = compileRedactor({
    replacement: (rule) => {
      calls++;
      return `<${rule.source}:${rule.id}>`;
    },
  });
  assert.equal(calls, REDACT_RULES.length);
  assert.equal(custom.redactText(`token ${jwt}`)?.text, 'token <gitleaks:jwt>');
  custom.redactText(`token ${jwt}`);
  assert.equal(calls, REDACT_RULES.length, 'not called again on the hot path');
  assert.throws(
    () => compileRedactor({ replacement: () => 42 as unknown as string }),
    (err: unknown) => err instanceof RedactError && err.code === 'REDACT_BAD_REPLACEMENT',
  );
});

test('redactText: undefined when nothing is found', () => {
  assert.equal(redactor.redactText(''), undefined);
  assert.equal(redactor.redactText('nothing to see here'), undefined);
  for (const b of ALL_BENIGN) assert.equal(redactor.redactText(b), undefined);
});

// ---------------------------------------------------------------------------
// redactResult

const ghp = (SECRETS.github?.[0] as SecretSample).secret;
const dbUrl = SECRETS.databaseUrls?.[0] as SecretSample;
const pemKey = (SECRETS.privateKeys?.[4] as SecretSample).secret;

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

test('redactResult: text, embedded resource, structuredContent and resources/read, with JSON pointers', () => {
  const blob = Buffer.from(`token=${ghp}`).toString('base64');
  const result = deepFreeze({
    content: [
      { type: 'text', text: `pushed with ${ghp}` },
      {
        type: 'resource',
        resource: { uri: 'file:///etc/app.env', mimeType: 'text/plain', text: dbUrl.sample },
      },
      { type: 'resource', resource: { uri: 'file:///bin/app', blob } },
      { type: 'image', data: 'iVBORw0KGgo=', mimeType: 'image/png' },
      { type: 'text', text: 'no secret here' },
    ],
    structuredContent: {
      repo: { name: 'portcullis', deploy: { key: pemKey, 'a/b~c': `x ${ghp}` } },
      env: [{ name: 'DATABASE_URL', value: dbUrl.sample }],
      count: 3,
    },
    isError: false,
  });
  const before = JSON.stringify(result);
  const out = redactor.redactResult(result);
  assert.ok(out);
  assert.equal(JSON.stringify(result), before, 'the input is not changed');
  const r = out.result as typeof result;
  assert.equal(r.content[0]?.text, `pushed with ${tag('github-pat')}`);
  assert.equal(
    (r.content[1] as { resource: { text: string } }).resource.text,
    `postgres://app_user:${tag('url-password')}@db.internal:5432/orders`,
  );
  assert.equal(r.content[2], result.content[2], 'a blob is left as it is (not decoded)');
  assert.equal(r.content[3], result.content[3]);
  assert.equal(r.content[4], result.content[4], 'unchanged items are shared, not copied');
  assert.equal(r.structuredContent.repo.deploy.key, tag('private-key'));
  assert.equal(r.structuredContent.repo.deploy['a/b~c'], `x ${tag('github-pat')}`);
  assert.equal(r.structuredContent.repo.name, 'portcullis');
  assert.equal(
    r.structuredContent.env[0]?.value,
    `postgres://app_user:${tag('url-password')}@db.internal:5432/orders`,
  );
  assert.equal(r.isError, false);
  assert.deepEqual(
    out.findings.map((f) => [f.rule, f.path]),
    [
      ['github-pat', '/content/0/text'],
      ['url-password', '/content/1/resource/text'],
      ['private-key', '/structuredContent/repo/deploy/key'],
      ['github-pat', '/structuredContent/repo/deploy/a~1b~0c'],
      ['url-password', '/structuredContent/env/0/value'],
    ],
  );

  const read = deepFreeze({
    contents: [
      { uri: 'file:///app/.env', mimeType: 'text/plain', text: `GITHUB_TOKEN=${ghp}\n` },
      { uri: 'file:///app/logo.png', mimeType: 'image/png', blob: 'iVBORw0KGgo=' },
    ],
  });
  const readOut = redactor.redactResult(read);
  assert.deepEqual(readOut?.findings, [
    { rule: 'github-pat', path: '/contents/0/text', start: 13, end: 53 },
  ]);
  assert.equal((readOut?.result as typeof read).contents[1], read.contents[1]);
});

test('redactResult: structuredContent values under a secret-sounding name are judged whole; names are not read', () => {
  const value = (SECRETS.generic?.[2] as SecretSample).secret;
  const out = redactor.redactResult({
    structuredContent: { user: 'alice', password: value, note: value, [ghp]: true },
  });
  assert.deepEqual(out?.findings, [
    { rule: 'generic-api-key', path: '/structuredContent/password', start: 0, end: value.length },
  ]);
  const r = out?.result as { structuredContent: Record<string, unknown> };
  assert.equal(r.structuredContent.note, value, 'the same value with no name is not a finding');
  assert.equal(r.structuredContent[ghp], true, 'property names are not scanned');
});

test('redactResult: undefined when nothing is found, and for what is not a result', () => {
  assert.equal(
    redactor.redactResult({ content: [{ type: 'text', text: 'all clear' }] }),
    undefined,
  );
  assert.equal(
    redactor.redactResult({ structuredContent: { a: [1, 'b', { c: null }] } }),
    undefined,
  );
  for (const v of [undefined, null, 'ghp_x', 42, []])
    assert.equal(redactor.redactResult(v), undefined);
});

test('redactResult: a "__proto__" key is copied as data, and nothing is polluted', () => {
  const input = JSON.parse(`{"structuredContent": {"__proto__": {"token": "${ghp}"}}}`) as unknown;
  const out = redactor.redactResult(input);
  assert.deepEqual(
    out?.findings.map((f) => f.path),
    ['/structuredContent/__proto__/token'],
  );
  const sc = (out?.result as { structuredContent: object }).structuredContent;
  assert.ok(Object.hasOwn(sc, '__proto__'));
  assert.equal(Object.getPrototypeOf(sc), Object.prototype);
  assert.equal(({} as Record<string, unknown>).token, undefined);
});

test('redactResult: a result too deep or with too many strings is refused, never passed on half-scanned', () => {
  let deep: unknown = `token ${ghp}`;
  for (let i = 0; i < MAX_RESULT_DEPTH + 5; i++) deep = { next: deep };
  assert.throws(
    () => redactor.redactResult({ structuredContent: deep }),
    (err: unknown) => err instanceof RedactError && err.code === 'REDACT_TOO_DEEP',
  );
  const cyclic: Record<string, unknown> = { a: 'x' };
  cyclic.self = cyclic;
  assert.throws(
    () => redactor.redactResult({ structuredContent: cyclic }),
    (err: unknown) => err instanceof RedactError && err.code === 'REDACT_TOO_DEEP',
  );
  const many = Array.from({ length: MAX_RESULT_STRINGS + 1 }, (_, i) => `s${i}`);
  assert.throws(
    () => redactor.redactResult({ structuredContent: many }),
    (err: unknown) => err instanceof RedactError && err.code === 'REDACT_TOO_MANY_STRINGS',
  );
  const fine = Array.from({ length: MAX_RESULT_STRINGS - 1 }, (_, i) => `s${i}`);
  assert.equal(redactor.redactResult({ structuredContent: fine }), undefined);
});

// ---------------------------------------------------------------------------
// stream

test('stream: every corpus secret split at every offset is found as in the whole text', () => {
  for (const s of ALL_SECRETS) {
    const text = `before the output\n${s.sample}\nafter it.`;
    const whole = redactor.redactText(text);
    assert.ok(whole, s.rule);
    for (let cut = 0; cut <= text.length; cut++) {
      const got = streamed(redactor, [text.slice(0, cut), text.slice(cut)]);
      assert.equal(got.text, whole.text, `${s.rule} split at ${cut}`);
      assert.deepEqual(got.findings, whole.findings, `${s.rule} split at ${cut}`);
    }
  }
});

test('stream: three pieces at random offsets, and one character at a time', () => {
  const random = prng(0x57ea);
  for (const s of ALL_SECRETS) {
    const text = `x ${s.sample} y`;
    const whole = redactor.redactText(text);
    for (let round = 0; round < 20; round++) {
      const [a, b] = [random(), random()]
        .map((r) => Math.floor(r * (text.length + 1)))
        .sort((p, q) => p - q) as [number, number];
      const got = streamed(redactor, [text.slice(0, a), text.slice(a, b), text.slice(b)]);
      assert.equal(got.text, whole?.text, `${s.rule} cut at ${a}, ${b}`);
    }
    assert.equal(
      streamed(redactor, [...text]).text,
      whole?.text,
      `${s.rule} one character at a time`,
    );
  }
});

test('stream: what is held back stays within the bound', () => {
  const held = (pieces: readonly string[]): number => {
    const s = redactor.stream();
    let pushed = 0;
    let emitted = 0;
    let most = 0;
    for (const p of pieces) {
      pushed += p.length;
      emitted += s.push(p).length;
      most = Math.max(most, pushed - emitted);
    }
    s.end();
    return most;
  };
  const chunks = (text: string, size: number): string[] =>
    text.match(new RegExp(`[^]{1,${size}}`, 'g')) ?? [];
  // Prose and logs, no open token: under a few hundred characters.
  const prose = [...(BENIGN.prose ?? []), ...(BENIGN.logs ?? [])].join('\n').repeat(20);
  assert.ok(held(chunks(prose, 1024)) < 1024 + 512, 'prose');
  // Any benign text: at most one unbounded run or PEM block, plus a piece.
  assert.ok(
    held(chunks(ALL_BENIGN.join('\n').repeat(3), 1024)) <= MAX_TOKEN_RUN_CHARS + 1024 + 512,
  );
  // A BEGIN line that never ends: held up to MAX_PEM_BLOCK_CHARS, then let go.
  const open = `-----BEGIN PRIVATE KEY-----\n${'QUJD'.repeat(10_000)}`;
  const most = held(chunks(open, 1024));
  assert.ok(
    most >= MAX_PEM_BLOCK_CHARS - 1024 && most <= MAX_PEM_BLOCK_CHARS + 2048,
    `pem ${most}`,
  );
});

test('stream: findings carry offsets in the pushed text; nothing after end()', () => {
  const s = redactor.stream();
  const out = s.push(`a: ${ghp.slice(0, 10)}`) + s.push(`${ghp.slice(10)} b`) + s.end();
  assert.equal(out, `a: ${tag('github-pat')} b`);
  assert.deepEqual(s.findings, [{ rule: 'github-pat', path: '', start: 3, end: 3 + ghp.length }]);
  assert.throws(
    () => s.push('x'),
    (err: unknown) => err instanceof RedactError && err.code === 'REDACT_STREAM_ENDED',
  );
});

// ---------------------------------------------------------------------------
// linear time

test('hostile input: 1 MiB of near-misses for each rule costs linear time', () => {
  // Measured at 0.01 to 0.8 s each on a 2-core Xeon; a quadratic scan of 1 MiB
  // would take minutes, an exponential one forever. The bound is generous.
  const BOUND_MS = 10_000;
  const MiB = 1 << 20;
  const fill = (unit: string): string => unit.repeat(Math.ceil(MiB / unit.length)).slice(0, MiB);
  const cases: Record<string, string> = {
    'one letter': fill('a'),
    'every keyword': fill(RULE_SPECS.flatMap((s) => s.keywords).join('=Ab1 ') + ' '),
    'generic, short values': fill('api_key=Ab1Cd2Ef3 '),
    'generic, value never ends': `token=${fill('Ab1+')}`,
    'generic, chained names': fill('token=token=token=token='),
    'aws, one short': fill('AKIAABCDEFGHIJKLMNO '),
    'gcp, one short': fill(`AIza${'b'.repeat(34)} `),
    'azure, one short': fill(`abc8Q~${'x'.repeat(30)} `),
    'jwt, one long header run': fill(`eyJ${'a'.repeat(16)}-`),
    'jwt, no signature dot': fill(`eyJ${'a'.repeat(16)}.eyJ${'b'.repeat(15)} `),
    'pem, BEGIN lines only': fill('-----BEGIN RSA PRIVATE KEY-----\n'),
    'pem, bodies too short': fill(`-----BEGIN PRIVATE KEY-----\n${'A'.repeat(40)}\n`),
    'url, no @': fill(`postgres://${'u'.repeat(250)}:`),
    'url, schemes only': fill('://'),
    'slack, one long run': fill('xoxb-1234567890-'),
    'anthropic, one short': fill(`sk-ant-api03-${'a'.repeat(92)} `),
  };
  for (const [name, text] of Object.entries(cases)) {
    let start = process.hrtime.bigint();
    redactor.redactText(text);
    const textMs = Number(process.hrtime.bigint() - start) / 1e6;
    start = process.hrtime.bigint();
    const s = redactor.stream();
    for (let i = 0; i < text.length; i += 4096) s.push(text.slice(i, i + 4096));
    s.end();
    const streamMs = Number(process.hrtime.bigint() - start) / 1e6;
    assert.ok(
      textMs < BOUND_MS && streamMs < BOUND_MS,
      `${name}: ${textMs} ms, stream ${streamMs} ms`,
    );
  }
  // One character at a time costs a constant factor, not the held length per character.
  const slow = 'xoxb-1234567890-'.repeat(4096);
  const start = process.hrtime.bigint();
  const s = redactor.stream();
  for (const ch of slow) s.push(ch);
  s.end();
  assert.ok(Number(process.hrtime.bigint() - start) / 1e6 < BOUND_MS, 'one character at a time');
});
