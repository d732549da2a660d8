/**
 * The `url` guard (src/policy/guards/url.ts): `forbiddenAddress` over both
 * classes of address; the published SSRF encodings of a loopback or
 * metadata address, each refused; a host name judged by every address it
 * resolves to; the hosts allowlist; ordinary public URLs passing.
 *
 * Name resolution, apart from two calls to the host's real resolver that
 * need no network (`localhost` is refused by name, a literal IP needs no
 * lookup), goes through a fixture resolver injected as `deps.lookup`: it
 * returns chosen addresses, as an attacker's DNS server would, and fails or
 * hangs on purpose. It is a fault injected for the test, not a mock of the
 * guard's behaviour.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_LOOKUP_TIMEOUT_MS,
  MAX_URL_CHARS,
  compileUrlGuard,
  forbiddenAddress,
  type UrlGuardDeps,
} from '../src/policy/guards/url.js';
import { GuardOptionError } from '../src/policy/guards/types.js';

const PUBLIC_V4 = '93.184.215.14';
const PUBLIC_V6 = '2606:2800:21f:cb07:6820:80da:af6b:8b2c';
/** Short enough that the hanging lookup below ends the test quickly. */
const TEST_LOOKUP_TIMEOUT_MS = 50;

const ANSWERS: Readonly<Record<string, readonly string[]>> = {
  'rebind.test': ['127.0.0.1'],
  'mixed.test': [PUBLIC_V4, '10.0.0.1'],
  'public.test': [PUBLIC_V4],
  'api.example.com': [PUBLIC_V4],
  'deep.api.example.com': [PUBLIC_V4],
  'example.com': [PUBLIC_V4],
  'evilexample.com': [PUBLIC_V4],
  'v6.test': [PUBLIC_V6],
  'mapped.test': ['::ffff:169.254.169.254'],
  'metadata6.test': ['fd00:ec2::254'],
  'internal.test': ['10.1.2.3'],
  localhost: ['127.0.0.1', '::1'],
  'xn--bcher-kva.test': [PUBLIC_V4],
  'empty.test': [],
};

/** The fixture resolver: answers from ANSWERS, fails or hangs for the special names. */
function fixtureDeps(): UrlGuardDeps & { readonly asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    lookupTimeoutMs: TEST_LOOKUP_TIMEOUT_MS,
    lookup: (host) => {
      asked.push(host);
      if (host === 'nx.test')
        return Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
      if (host === 'servfail.test')
        return Promise.reject(Object.assign(new Error('again'), { code: 'EAI_AGAIN' }));
      if (host === 'slow.test') return new Promise<never>(() => {});
      const answer = ANSWERS[host];
      if (answer === undefined)
        return Promise.reject(Object.assign(new Error(host), { code: 'ENOTFOUND' }));
      return Promise.resolve(answer);
    },
  };
}

// [address, a piece of the expected reason]
const FORBIDDEN: readonly (readonly [string, string])[] = [
  ['0.0.0.0', 'an unspecified address'],
  ['0.1.2.3', 'an unspecified address'],
  ['10.0.0.1', 'a private address (10.0.0.1)'],
  ['10.255.255.255', 'a private address'],
  ['172.16.0.1', 'a private address'],
  ['172.31.255.254', 'a private address'],
  ['192.168.1.1', 'a private address'],
  ['127.0.0.1', 'a loopback address (127.0.0.1)'],
  ['127.255.0.9', 'a loopback address'],
  ['169.254.169.254', 'a cloud metadata address'],
  ['169.254.1.1', 'a link-local address'],
  ['100.64.0.1', 'a carrier-grade NAT address'],
  ['100.127.255.255', 'a carrier-grade NAT address'],
  ['100.100.100.200', 'a cloud metadata address'],
  ['192.0.0.8', 'an IETF protocol assignment address'],
  ['192.0.2.1', 'a documentation address'],
  ['198.51.100.7', 'a documentation address'],
  ['203.0.113.9', 'a documentation address'],
  ['198.18.0.1', 'a benchmarking address'],
  ['198.19.255.255', 'a benchmarking address'],
  ['224.0.0.1', 'a multicast address'],
  ['239.255.255.250', 'a multicast address'],
  ['240.0.0.1', 'a reserved address'],
  ['255.255.255.255', 'the broadcast address'],
  ['0x7f.1', 'a loopback address (127.0.0.1)'],
  ['2130706433', 'a loopback address (127.0.0.1)'],
  ['::', 'an unspecified address'],
  ['::1', 'a loopback address (::1)'],
  ['[::1]', 'a loopback address'],
  ['::ffff:127.0.0.1', 'an IPv4-mapped address embedding a loopback address (127.0.0.1)'],
  ['::ffff:7f00:1', 'an IPv4-mapped address embedding a loopback address'],
  ['0:0:0:0:0:ffff:127.0.0.1', 'an IPv4-mapped address embedding a loopback address'],
  ['::ffff:169.254.169.254', 'embedding a cloud metadata address'],
  ['::ffff:0:10.0.0.1', 'an IPv4-translated address embedding a private address'],
  ['::127.0.0.1', 'a deprecated IPv4-compatible address'],
  ['::8.8.8.8', 'a deprecated IPv4-compatible address'],
  ['64:ff9b::127.0.0.1', 'a NAT64 address embedding a loopback address'],
  ['64:ff9b::a9fe:a9fe', 'a NAT64 address embedding a cloud metadata address'],
  ['64:ff9b:1::a00:1', 'a local-use NAT64 address'],
  ['2002:a00:1::1', 'a 6to4 address embedding a private address (10.0.0.1)'],
  ['2002:7f00:1::', 'a 6to4 address embedding a loopback address'],
  // Teredo, client 10.0.0.1 stored inverted (f5ff:fffe).
  [
    '2001:0:4136:e378:8000:63bf:f5ff:fffe',
    'a Teredo address embedding a private address (10.0.0.1)',
  ],
  ['2001:0:a00:1:8000:63bf:3fff:fdd2', 'a Teredo address embedding a private address'],
  ['fe80::1', 'a link-local address'],
  ['febf::1', 'a link-local address'],
  ['fec0::1', 'a deprecated site-local address'],
  ['fc00::1', 'a unique-local address'],
  ['fd12:3456::1', 'a unique-local address'],
  ['fd00:ec2::254', 'a cloud metadata address'],
  ['ff02::1', 'a multicast address'],
  ['100::1', 'a discard-only address'],
  ['2001:db8::1', 'a documentation address'],
  ['3fff::1', 'a documentation address'],
  ['2001:2::1', 'an IETF protocol assignment address'],
  ['5f00::1', 'a segment routing address'],
  ['4000::1', 'a reserved address'],
  ['fe80::1%eth0', 'a zone index'],
  ['example.com', 'not an IP address'],
  ['1.2.3.4.5', 'not an IP address'],
  ['::ffff:1.2.3.256', 'not an IP address'],
];

const PUBLIC: readonly string[] = [
  '1.1.1.1',
  '8.8.8.8',
  PUBLIC_V4,
  '100.63.255.255',
  '100.128.0.1',
  '172.15.255.255',
  '172.32.0.1',
  '192.167.1.1',
  '198.20.0.1',
  '223.255.255.255',
  '::ffff:8.8.8.8',
  '64:ff9b::808:808',
  '2002:808:808::1',
  // Teredo: server 65.54.227.120, client 8.8.8.8 stored inverted.
  '2001:0:4136:e378:8000:63bf:f7f7:f7f7',
  '2001:4860:4860::8888',
  PUBLIC_V6,
  '[2606:4700:4700::1111]',
];

const ENCODINGS: readonly (readonly [string, string])[] = [
  ['http://127.0.0.1/', 'the host is a loopback address (127.0.0.1)'],
  ['http://2130706433/', 'non-canonical form'],
  ['http://0x7f.1/', 'non-canonical form'],
  ['http://0x7f.0x0.0x0.0x1/', 'non-canonical form'],
  ['http://0177.0.0.1/', 'non-canonical form'],
  ['http://127.1/', 'non-canonical form'],
  ['http://127.0.0.1./', 'non-canonical form'],
  ['http://0/', 'non-canonical form'],
  ['http://\uff11\uff12\uff17.0.0.1/', 'non-canonical form'],
  ['http://%31%32%37.0.0.1/', 'a percent-escape in the host'],
  ['http://169.254.169.254/latest/meta-data/', 'a cloud metadata address'],
  ['http://[::1]/', 'a loopback address (::1)'],
  ['http://[::]/', 'an unspecified address'],
  ['http://[::ffff:127.0.0.1]/', 'an IPv4-mapped address embedding a loopback'],
  ['http://[::ffff:7f00:1]/', 'an IPv4-mapped address embedding a loopback'],
  ['http://[0:0:0:0:0:ffff:127.0.0.1]/', 'an IPv4-mapped address embedding a loopback'],
  ['http://[64:ff9b::a9fe:a9fe]/', 'a NAT64 address embedding a cloud metadata'],
  ['http://[fd00:ec2::254]/latest/', 'a cloud metadata address'],
  ['http://[fe80::1%25eth0]/', 'not a URL that parses'],
  ['http://good.com@127.0.0.1/', 'credentials'],
  ['http://user:pass@public.test/', 'credentials'],
  ['http://@public.test/', 'credentials'],
  ['http://:@public.test/', 'credentials'],
  ['http://127.0.0.1#@good.com/', 'a loopback address'],
  ['http://127.0.0.1?@good.com/', 'a loopback address'],
  ['http://good.com\\@127.0.0.1/', 'a backslash'],
  ['http:\\\\127.0.0.1\\', 'a backslash'],
  ['http:127.0.0.1/', 'not written as scheme://host'],
  ['http:/127.0.0.1/', 'not written as scheme://host'],
  ['http:///127.0.0.1/', 'not written as scheme://host'],
  ['file:///etc/passwd', "scheme 'file' is not allowed"],
  ['FILE:///etc/passwd', "scheme 'file' is not allowed"],
  ['gopher://127.0.0.1:6379/_INFO', "scheme 'gopher' is not allowed"],
  ['dict://127.0.0.1:11211/', "scheme 'dict' is not allowed"],
  ['javascript:alert(1)', "scheme 'javascript' is not allowed"],
  ['data:text/plain,hi', "scheme 'data' is not allowed"],
  ['HTTP://LOCALHOST/', 'a local host name'],
  ['http://localhost/', "a local host name ('localhost')"],
  ['http://localhost./', "a local host name ('localhost')"],
  ['http://admin.localhost/', 'a local host name'],
  ['http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/', 'a local host name'],
  ['http://local\u00adhost/', 'a local host name'],
  ['http://metadata.google.internal/computeMetadata/v1/', 'a cloud metadata host name'],
  ['http://metadata/', 'a cloud metadata host name'],
  ['http://instance-data/latest/', 'a cloud metadata host name'],
  ['http://printer.local/', 'a local host name'],
  ['http://db.internal/', 'a local host name'],
  ['http://intranet/', 'a single-label host name'],
  ['http://localhost../', 'an empty label'],
  ['http://exa\tmple.com/', 'a raw control character or space (U+0009)'],
  ['http://example.com/\n', 'a raw control character or space (U+000A)'],
  [' http://public.test/', 'a raw control character or space (U+0020)'],
  ['http://public.test/\u0085', 'a raw control character or space (U+0085)'],
  ['not a url', 'a raw control character or space'],
  ['example.com/path', 'not a URL that parses'],
  ['http://rebind.test/', "'rebind.test' resolves to a loopback address (127.0.0.1)"],
  ['http://mixed.test/', "'mixed.test' resolves to a private address (10.0.0.1)"],
  ['http://mapped.test/', 'resolves to an IPv4-mapped address embedding a cloud metadata'],
  ['http://metadata6.test/', 'resolves to a cloud metadata address'],
  ['http://nx.test/', "'nx.test' does not resolve"],
  ['http://empty.test/', "'empty.test' does not resolve"],
  ['http://servfail.test/', "looking up 'servfail.test' failed (EAI_AGAIN)"],
  ['http://slow.test/', `'slow.test' did not resolve within ${TEST_LOOKUP_TIMEOUT_MS} ms`],
  [`http://public.test/${'a'.repeat(MAX_URL_CHARS)}`, `longer than ${MAX_URL_CHARS} characters`],
];

const BENIGN: readonly string[] = [
  'http://public.test/',
  'https://public.test/path/to/page?q=1&r=two#frag',
  'https://public.test:8443/x',
  'HTTPS://PUBLIC.TEST/Upper/Case',
  'https://public.test./trailing-dot',
  'https://api.example.com/v1/items',
  'https://v6.test/',
  `http://${PUBLIC_V4}/`,
  `http://[${PUBLIC_V6}]/`,
  'https://bücher.test/',
  'https://public.test/a%20b/%2e%2e/c',
  'https://public.test/search?q=127.0.0.1',
  'https://public.test/@user',
];

test('url: forbiddenAddress refuses every special-purpose address and names its class', () => {
  assert.ok(FORBIDDEN.length + PUBLIC.length >= 40);
  for (const [address, expected] of FORBIDDEN) {
    const reason = forbiddenAddress(address);
    assert.ok(reason?.includes(expected), `${address}: got ${String(reason)}`);
  }
});

test('url: forbiddenAddress passes public addresses, embedded public IPv4 included', () => {
  for (const address of PUBLIC) assert.equal(forbiddenAddress(address), undefined, address);
});

// [url, a piece of the expected reason]

test('url: every SSRF encoding in the list is refused', async () => {
  const check = compileUrlGuard({}, fixtureDeps());
  for (const [url, expected] of ENCODINGS) {
    const reason = await check(url);
    assert.ok(reason?.includes(expected), `${JSON.stringify(url)}: got ${String(reason)}`);
  }
});

test('url: ordinary public URLs pass with the fixture resolver', async () => {
  assert.ok(BENIGN.length >= 10);
  const check = compileUrlGuard({}, fixtureDeps());
  for (const url of BENIGN) assert.equal(await check(url), undefined, url);
});

test('url: a value that is not a string is refused', async () => {
  const check = compileUrlGuard({}, fixtureDeps());
  for (const value of [7, null, ['http://public.test/'], { url: 'x' }])
    assert.equal(await check(value), 'not a string');
});

test('url: an IP literal and a refused name are judged without a lookup', async () => {
  const deps = fixtureDeps();
  const check = compileUrlGuard({}, deps);
  await check('http://localhost/');
  await check('http://metadata.google.internal/');
  await check(`http://${PUBLIC_V4}/`);
  await check('http://[::1]/');
  assert.deepEqual(deps.asked, []);
  await check('http://public.test./');
  assert.deepEqual(deps.asked, ['public.test']);
});

test('url: the real resolver is not needed for localhost or a literal public address', async () => {
  const check = compileUrlGuard({});
  assert.equal(
    await check('http://localhost:8080/admin'),
    "the host is a local host name ('localhost')",
  );
  assert.equal(await check(`http://${PUBLIC_V4}/`), undefined);
  assert.equal(DEFAULT_LOOKUP_TIMEOUT_MS, 2_000);
});

test('url: a leading *. in hosts admits subdomains, not the apex nor a lookalike', async () => {
  const check = compileUrlGuard({ hosts: ['*.example.com', 'public.test'] }, fixtureDeps());
  assert.equal(await check('https://api.example.com/'), undefined);
  assert.equal(await check('https://deep.api.example.com/'), undefined);
  assert.equal(await check('https://API.Example.COM./'), undefined);
  assert.equal(await check('https://public.test/'), undefined);
  assert.equal(await check('https://example.com/'), "host 'example.com' is not in the allowlist");
  assert.equal(
    await check('https://evilexample.com/'),
    "host 'evilexample.com' is not in the allowlist",
  );
  assert.equal(await check(`https://${PUBLIC_V4}/`), `host '${PUBLIC_V4}' is not in the allowlist`);
});

test('url: hosts entries are normalized like the hosts they are compared with', async () => {
  const check = compileUrlGuard({ hosts: ['Bücher.test.', 'rebind.test'] }, fixtureDeps());
  assert.equal(await check('https://xn--bcher-kva.test/'), undefined);
  assert.equal(await check('https://BÜCHER.test/'), undefined);
  assert.equal(
    await check('http://rebind.test/'),
    "'rebind.test' resolves to a loopback address (127.0.0.1)",
  );
});

test('url: allowPrivate admits private networks but never link-local or metadata', async () => {
  const check = compileUrlGuard({ allowPrivate: true }, fixtureDeps());
  assert.equal(await check('http://10.0.0.5:8080/'), undefined);
  assert.equal(await check('http://internal.test/'), undefined);
  assert.equal(await check('http://localhost/'), undefined);
  assert.equal(await check('http://[fd12::1]/'), undefined);
  assert.equal(
    await check('http://169.254.169.254/'),
    'the host is a cloud metadata address (169.254.169.254)',
  );
  assert.equal(await check('http://[fe80::1]/'), 'the host is a link-local address (fe80::1)');
  assert.equal(
    await check('http://metadata.google.internal/'),
    'the host is a cloud metadata host name',
  );
  assert.match(String(await check('http://mapped.test/')), /cloud metadata/);
  assert.match(String(await check('http://0x7f.1/')), /non-canonical/);
});

test('url: with resolve false, names are judged by name only', async () => {
  const deps = fixtureDeps();
  const check = compileUrlGuard({ resolve: false }, deps);
  assert.equal(await check('http://rebind.test/'), undefined);
  assert.equal(await check('http://localhost/'), "the host is a local host name ('localhost')");
  assert.deepEqual(deps.asked, []);
});

test('url: schemes replaces the default list', async () => {
  const check = compileUrlGuard({ schemes: ['https'] }, fixtureDeps());
  assert.equal(await check('http://public.test/'), "scheme 'http' is not allowed");
  assert.equal(await check('https://public.test/'), undefined);
  const ws = compileUrlGuard({ schemes: ['wss', 'git'] }, fixtureDeps());
  assert.equal(await ws('wss://public.test/socket'), undefined);
  // A non-special scheme keeps its host as written: numeric forms are refused all the same.
  assert.match(String(await ws('git://0x7f.1/repo')), /non-canonical/);
  assert.match(String(await ws('git://127.0.0.1/repo')), /loopback/);
});

test('url: options that cannot work are refused at compile', () => {
  assert.throws(() => compileUrlGuard({ schemes: [] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ schemes: ['HTTP'] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ schemes: ['https:'] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ hosts: [] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ hosts: ['a.com/path'] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ hosts: ['*'] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ hosts: ['a.*.com'] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ hosts: ['a.com:443'] }), GuardOptionError);
  assert.throws(() => compileUrlGuard({ resolve: 'no' as unknown as boolean }), GuardOptionError);
  assert.throws(() => compileUrlGuard({}, { lookupTimeoutMs: 0 }), GuardOptionError);
});
