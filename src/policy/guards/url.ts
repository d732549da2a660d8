/**
 * The `url` guard: a URL a server will fetch must name a public host, so a
 * model cannot turn the server into a proxy for the gateway's own network
 * (server-side request forgery: cloud metadata at 169.254.169.254, an admin
 * port on localhost, a database on 10.0.0.5).
 *
 * The gateway judges the URL as text the server will fetch, and other URL
 * parsers (Python's, curl's, a server's own) may read that text differently
 * from WHATWG `new URL`. So the raw text is judged too, and anything whose
 * reading parsers disagree on is refused rather than interpreted. In order:
 * 1. not a string, longer than `MAX_URL_CHARS`, or holding a raw control
 *    character or space: WHATWG silently strips tabs and newlines inside a
 *    URL (`exa<TAB>mple.com` is `example.com`) and trims the ends, other
 *    parsers split or fail there;
 * 2. a backslash anywhere: WHATWG reads `http://good.com\@127.0.0.1` as host
 *    `good.com`, Python's `urlsplit` as host `127.0.0.1`;
 * 3. not parsed by `new URL`;
 * 4. a scheme outside `schemes` (default http and https; WHATWG lower-cases
 *    it, so `FILE:` is `file`);
 * 5. not written `scheme://host…` with exactly two slashes: WHATWG accepts
 *    `http:host` and `http:///host`, others read those as a path;
 * 6. userinfo, even empty (`http://@host/`, which WHATWG drops from `href`):
 *    `http://good.com@127.0.0.1/` goes to 127.0.0.1;
 * 7. a percent-escape in the host, or an IPv4 address not written as four
 *    plain decimal numbers: WHATWG turns `2130706433`, `0x7f.1`,
 *    `0177.0.0.1`, `127.1` and fullwidth digits into `127.0.0.1`, and so do
 *    `inet_aton` and the C resolver behind many clients, but not every
 *    parser does, so such a host means different things to different
 *    readers. Refusing the written form settles it;
 * 8. an IP literal that `forbiddenAddress` refuses (IPv6 forms that embed an
 *    IPv4 address, mapped, NAT64, 6to4, Teredo, are judged by that address);
 * 9. a host name refused by name before any lookup: `localhost` and
 *    `*.localhost`, cloud metadata names (`metadata.google.internal`,
 *    `instance-data`, …), names that only exist on a private network
 *    (`*.internal`, `*.local`, `*.home.arpa`, `*.localdomain`) and
 *    single-label names (resolved through the host's search domains); one
 *    trailing dot is removed first (`localhost.` is `localhost`), an empty
 *    label is refused;
 * 10. with `hosts`, a host outside the list (after lower-casing, trailing dot
 *    removal and IDNA: `bücher.example` is `xn--bcher-kva.example`);
 * 11. with `resolve` (the default), a name that does not resolve within
 *    `DEFAULT_LOOKUP_TIMEOUT_MS`, or that resolves to any refused address:
 *    one private answer among public ones is enough, since the server's own
 *    lookup may pick it. A name that does not resolve is refused: the
 *    server's resolver may see names the gateway's does not.
 *
 * `allowPrivate` admits private, loopback, carrier-grade NAT and
 * unique-local addresses and local names (steps 8, 9, 11), for tools meant
 * to reach internal services. It opens exactly the door this guard exists to
 * close, for every URL the tool is given: prefer `hosts` listing the
 * internal names. Link-local addresses (cloud metadata lives there), the
 * metadata names and the other special ranges stay refused.
 *
 * What this does not stop: DNS rebinding, where the name resolves to a
 * public address for the gateway's lookup and a private one for the
 * server's a moment later (time of check to time of use; only pinning the
 * server's connection to the checked address closes it); redirects the
 * server follows to another URL; a server that builds its own URL from
 * other arguments; a public host that is itself an open proxy; and, with
 * `resolve: false`, any name that resolves to a private address.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import ipaddr from 'ipaddr.js';
import { GuardOptionError, type AsyncGuardCheck, type GuardCheck } from './types.js';

/** Longest URL judged (characters): longer ones are refused, not truncated. */
export const MAX_URL_CHARS = 2_048;
/** How long the gateway waits for a host name to resolve before refusing it. */
export const DEFAULT_LOOKUP_TIMEOUT_MS = 2_000;
/** Schemes admitted when `schemes` is not given. */
export const DEFAULT_SCHEMES: readonly string[] = ['http', 'https'];
/** Longest piece of the value a reason quotes (characters). */
const MAX_EXCERPT_CHARS = 40;

/** Names refused whatever `allowPrivate` says: they are cloud metadata services. */
const METADATA_NAMES: ReadonlySet<string> = new Set([
  'metadata',
  'metadata.google.internal',
  'metadata.goog',
  'instance-data',
  'instance-data.ec2.internal',
  'metadata.azure.internal',
  'metadata.tencentyun.com',
]);
/** Names of this host, refused unless `allowPrivate`. */
const LOCAL_NAMES: ReadonlySet<string> = new Set([
  'localhost',
  'localhost.localdomain',
  'ip6-localhost',
  'ip6-loopback',
]);
/** Suffixes of names that only exist on a local or private network. */
const LOCAL_SUFFIXES: readonly string[] = [
  '.localhost',
  '.localdomain',
  '.local',
  '.internal',
  '.home.arpa',
];
/** Lookup error codes that mean "no such name" rather than "the lookup failed". */
const NOT_FOUND_CODES: ReadonlySet<string> = new Set([
  'ENOTFOUND',
  'ENODATA',
  'EAI_NONAME',
  'EAI_NODATA',
]);
const SCHEME_PREFIX = /^[A-Za-z][A-Za-z0-9+.-]*:/;
const DOTTED_QUAD = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
/** A label an IPv4 parser (WHATWG's, `inet_aton`) would read as a number. */
const NUMERIC_LABEL = /^(0x[0-9a-f]*|\d+)$/i;

export interface UrlGuardOptions {
  /** Schemes admitted, lower case without `:` (default http, https). */
  readonly schemes?: readonly string[];
  /** Host allowlist: exact names, or `*.example.com` for its subdomains (not the apex). */
  readonly hosts?: readonly string[];
  /** Resolve host names and judge every address (default true). */
  readonly resolve?: boolean;
  /** Admit private, loopback and unique-local addresses and local names (default false). */
  readonly allowPrivate?: boolean;
}

export interface UrlGuardDeps {
  /** Resolve a host name to its addresses (default: the host's resolver, all families). */
  readonly lookup?: (host: string) => Promise<readonly string[]>;
  /** How long a lookup may take (default `DEFAULT_LOOKUP_TIMEOUT_MS`). */
  readonly lookupTimeoutMs?: number;
}

/**
 * Compile a `url` guard: undefined for a URL whose host is public (and, with
 * `hosts`, listed), a reason otherwise.
 */
export function compileUrlGuard(
  options: UrlGuardOptions,
  deps: UrlGuardDeps = {},
): AsyncGuardCheck {
  const schemes = compileSchemes(options.schemes);
  const hosts = options.hosts === undefined ? undefined : compileHosts(options.hosts);
  const resolve = compileFlag(options.resolve, true, 'resolve');
  const allowPrivate = compileFlag(options.allowPrivate, false, 'allowPrivate');
  const lookup = deps.lookup ?? systemLookup;
  const timeoutMs = deps.lookupTimeoutMs ?? DEFAULT_LOOKUP_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0)
    throw new GuardOptionError('a url guard: lookupTimeoutMs must be a positive number');
  const judge = compileUrlJudgement({ schemes, hosts, allowPrivate });

  return async (value) => {
    const verdict = judge(value);
    if (typeof verdict !== 'object') return verdict;
    if (!resolve) return undefined;
    const { name } = verdict;
    const answer = await lookupWithin(lookup, name, timeoutMs);
    if (typeof answer === 'string') return answer;
    for (const address of answer) {
      const found = classifyAddress(address);
      if (found !== undefined && !(allowPrivate && found.kind === 'private'))
        return `'${excerpt(name)}' resolves to ${found.reason}`;
    }
    return undefined;
  };
}

/**
 * Steps 1 to 10, which need no lookup: a reason, undefined for an IP literal
 * that passes, or the host name to resolve for step 11.
 */
function compileUrlJudgement(options: {
  schemes: ReadonlySet<string>;
  hosts: HostList | undefined;
  allowPrivate: boolean;
}): (value: unknown) => string | undefined | { name: string } {
  const { schemes, hosts, allowPrivate } = options;
  const refuses = (verdict: AddressVerdict | undefined): verdict is AddressVerdict =>
    verdict !== undefined && !(allowPrivate && verdict.kind === 'private');
  return (value) => {
    const host = judgeText(value, schemes);
    if (typeof host === 'object') return host.reason;

    if (host.startsWith('[') || DOTTED_QUAD.test(host)) {
      const verdict = classifyAddress(host);
      if (refuses(verdict)) return `the host is ${verdict.reason}`;
      if (hosts !== undefined && !hosts.admits(host))
        return `host '${excerpt(host)}' is not in the allowlist`;
      return undefined;
    }

    const name = host.endsWith('.') ? host.slice(0, -1) : host;
    const byName = classifyName(name);
    if (refuses(byName)) return `the host is ${byName.reason}`;
    if (hosts !== undefined && !hosts.admits(name))
      return `host '${excerpt(name)}' is not in the allowlist`;
    return { name };
  };
}

/**
 * The checks that need no lookup (steps 1 to 10), synchronous: for a URL
 * the gateway does not fetch and whose host it cannot resolve as the one
 * who will (a URL-mode elicitation's `url`, opened in the user's browser,
 * on the user's network).
 */
export function compileUrlCheck(options: Omit<UrlGuardOptions, 'resolve'>): GuardCheck {
  const judge = compileUrlJudgement({
    schemes: compileSchemes(options.schemes),
    hosts: options.hosts === undefined ? undefined : compileHosts(options.hosts),
    allowPrivate: compileFlag(options.allowPrivate, false, 'allowPrivate'),
  });
  return (value) => {
    const verdict = judge(value);
    return typeof verdict === 'object' ? undefined : verdict;
  };
}

/**
 * Steps 1 to 7 of the module header: the WHATWG host name (lower case,
 * IDNA applied, an IPv6 literal in brackets), or why the text is refused.
 */
function judgeText(value: unknown, schemes: ReadonlySet<string>): string | { reason: string } {
  if (typeof value !== 'string') return { reason: 'not a string' };
  if (value.length > MAX_URL_CHARS) return { reason: `longer than ${MAX_URL_CHARS} characters` };
  const control = controlOrSpace(value);
  if (control !== undefined)
    return { reason: `a raw control character or space (${codePoint(control)})` };
  if (value.includes('\\')) return { reason: 'a backslash (URL parsers disagree about it)' };

  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return { reason: 'not a URL that parses' };
  }
  const scheme = url.protocol.slice(0, -1);
  if (!schemes.has(scheme)) return { reason: `scheme '${excerpt(scheme)}' is not allowed` };

  const prefix = SCHEME_PREFIX.exec(value)?.[0] ?? '';
  if (!value.startsWith('//', prefix.length) || value[prefix.length + 2] === '/')
    return { reason: 'not written as scheme://host/…' };
  const authority = /^[^/?#]*/.exec(value.slice(prefix.length + 2))?.[0] ?? '';
  if (authority.includes('@') || url.username !== '' || url.password !== '')
    return { reason: 'credentials (`user@`) in the URL' };

  const rawHost = authority.startsWith('[')
    ? authority.slice(0, authority.indexOf(']') + 1)
    : authority.split(':')[0];
  if (rawHost === undefined || rawHost === '' || url.hostname === '') return { reason: 'no host' };
  if (rawHost.includes('%')) return { reason: 'a percent-escape in the host' };

  // Special schemes have WHATWG lower-case the host; an allowed non-special
  // one keeps it opaque, as written. DNS does not care about case.
  const host = url.hostname.toLowerCase();
  if (host.startsWith('[')) return host;
  const labels = host.split('.');
  if (labels.at(-1) === '') labels.pop();
  if (labels.length > 0 && labels.every((label) => NUMERIC_LABEL.test(label))) {
    if (rawHost !== host || !DOTTED_QUAD.test(host))
      return { reason: `an IPv4 address in a non-canonical form ('${excerpt(rawHost)}')` };
    return host;
  }
  if (!/^[a-z0-9_.-]+$/.test(host))
    return { reason: 'a host name with characters DNS does not use' };
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  if (name.split('.').some((label) => label === ''))
    return { reason: 'an empty label in the host name' };
  return host;
}

/** Why an address or name is refused, and whether `allowPrivate` admits it. */
interface AddressVerdict {
  readonly reason: string;
  readonly kind: 'private' | 'always';
}

function classifyName(name: string): AddressVerdict | undefined {
  if (METADATA_NAMES.has(name)) return { reason: 'a cloud metadata host name', kind: 'always' };
  if (LOCAL_NAMES.has(name) || LOCAL_SUFFIXES.some((suffix) => name.endsWith(suffix)))
    return { reason: `a local host name ('${excerpt(name)}')`, kind: 'private' };
  if (!name.includes('.'))
    return {
      reason: 'a single-label host name (resolved through local search domains)',
      kind: 'private',
    };
  return undefined;
}

/**
 * The pure part: undefined for a public address, or why the gateway refuses
 * this literal one ("a loopback address (127.0.0.1)"). Takes an IPv4 or
 * IPv6 address, with or without brackets; anything else is refused.
 */
export function forbiddenAddress(address: string): string | undefined {
  return classifyAddress(address)?.reason;
}

type IPv4 = ipaddr.IPv4;
type IPv6 = ipaddr.IPv6;

/** One refused range: addresses in `net` are refused as `what`. */
interface Range<A> {
  readonly net: [A, number];
  readonly what: string;
  readonly kind: 'private' | 'always';
}

/** An IPv6 range whose addresses carry IPv4 ones, judged in their place. */
interface Embedding {
  readonly net: [IPv6, number];
  readonly what: string;
  readonly embedded: (parts: readonly number[]) => readonly IPv4[];
}

function v4Range(cidr: string, what: string, kind: 'private' | 'always'): Range<IPv4> {
  return { net: ipaddr.IPv4.parseCIDR(cidr), what, kind };
}

function v6Range(cidr: string, what: string, kind: 'private' | 'always'): Range<IPv6> {
  return { net: ipaddr.IPv6.parseCIDR(cidr), what, kind };
}

// IANA's special-purpose registries, and the private ones, most specific
// first: the first match names the refusal. Written out rather than taken
// from ipaddr.js's `range()` so that what is refused is read here, not in a
// dependency's table that can change under an upgrade.
const V4_RANGES: readonly Range<IPv4>[] = [
  v4Range('0.0.0.0/8', 'an unspecified address', 'always'),
  v4Range('10.0.0.0/8', 'a private address', 'private'),
  v4Range('100.100.100.200/32', 'a cloud metadata address', 'always'),
  v4Range('100.64.0.0/10', 'a carrier-grade NAT address', 'private'),
  v4Range('127.0.0.0/8', 'a loopback address', 'private'),
  v4Range('169.254.169.254/32', 'a cloud metadata address', 'always'),
  v4Range('169.254.0.0/16', 'a link-local address', 'always'),
  v4Range('172.16.0.0/12', 'a private address', 'private'),
  v4Range('192.0.0.0/24', 'an IETF protocol assignment address', 'always'),
  v4Range('192.0.2.0/24', 'a documentation address', 'always'),
  v4Range('192.88.99.0/24', 'a 6to4 relay anycast address', 'always'),
  v4Range('192.168.0.0/16', 'a private address', 'private'),
  v4Range('198.18.0.0/15', 'a benchmarking address', 'always'),
  v4Range('198.51.100.0/24', 'a documentation address', 'always'),
  v4Range('203.0.113.0/24', 'a documentation address', 'always'),
  v4Range('224.0.0.0/4', 'a multicast address', 'always'),
  v4Range('255.255.255.255/32', 'the broadcast address', 'always'),
  v4Range('240.0.0.0/4', 'a reserved address', 'always'),
];

const v4 = (hi: number, lo: number): IPv4 =>
  new ipaddr.IPv4([hi >> 8, hi & 255, lo >> 8, lo & 255]);

const V6_EMBEDDINGS: readonly Embedding[] = [
  {
    net: ipaddr.IPv6.parseCIDR('::ffff:0:0/96'),
    what: 'an IPv4-mapped address',
    embedded: (p) => [v4(p[6] as number, p[7] as number)],
  },
  {
    net: ipaddr.IPv6.parseCIDR('::ffff:0:0:0/96'),
    what: 'an IPv4-translated address',
    embedded: (p) => [v4(p[6] as number, p[7] as number)],
  },
  {
    net: ipaddr.IPv6.parseCIDR('64:ff9b::/96'),
    what: 'a NAT64 address',
    embedded: (p) => [v4(p[6] as number, p[7] as number)],
  },
  {
    net: ipaddr.IPv6.parseCIDR('2002::/16'),
    what: 'a 6to4 address',
    embedded: (p) => [v4(p[1] as number, p[2] as number)],
  },
  {
    // Teredo: the server at bits 32–63, the client obfuscated (inverted) at 96–127.
    net: ipaddr.IPv6.parseCIDR('2001::/32'),
    what: 'a Teredo address',
    embedded: (p) => [
      v4(p[2] as number, p[3] as number),
      v4((p[6] as number) ^ 0xffff, (p[7] as number) ^ 0xffff),
    ],
  },
];

const V6_RANGES: readonly Range<IPv6>[] = [
  v6Range('::/128', 'an unspecified address', 'always'),
  v6Range('::1/128', 'a loopback address', 'private'),
  v6Range('::/96', 'a deprecated IPv4-compatible address', 'always'),
  v6Range('64:ff9b:1::/48', 'a local-use NAT64 address', 'private'),
  v6Range('100::/64', 'a discard-only address', 'always'),
  v6Range('2001::/23', 'an IETF protocol assignment address', 'always'),
  v6Range('2001:db8::/32', 'a documentation address', 'always'),
  v6Range('3fff::/20', 'a documentation address', 'always'),
  v6Range('5f00::/16', 'a segment routing address', 'always'),
  v6Range('fd00:ec2::254/128', 'a cloud metadata address', 'always'),
  v6Range('fc00::/7', 'a unique-local address', 'private'),
  v6Range('fe80::/10', 'a link-local address', 'always'),
  v6Range('fec0::/10', 'a deprecated site-local address', 'always'),
  v6Range('ff00::/8', 'a multicast address', 'always'),
];
/** Everything outside global unicast is unassigned or special: refused. */
const V6_GLOBAL_UNICAST = ipaddr.IPv6.parseCIDR('2000::/3');

function classifyAddress(text: string): AddressVerdict | undefined {
  const literal = text.startsWith('[') && text.endsWith(']') ? text.slice(1, -1) : text;
  if (literal.includes('%')) return { reason: 'an IPv6 address with a zone index', kind: 'always' };
  if (literal.includes(':')) {
    const hex = dottedTailToHex(literal);
    if (hex === undefined || !ipaddr.IPv6.isValid(hex))
      return { reason: 'not an IP address', kind: 'always' };
    return classifyV6(ipaddr.IPv6.parse(hex));
  }
  if (!ipaddr.IPv4.isValid(literal)) return { reason: 'not an IP address', kind: 'always' };
  return classifyV4(ipaddr.IPv4.parse(literal));
}

function classifyV4(address: IPv4): AddressVerdict | undefined {
  const range = V4_RANGES.find((r) => address.match(r.net));
  return range && { reason: `${range.what} (${address.toString()})`, kind: range.kind };
}

function classifyV6(address: IPv6): AddressVerdict | undefined {
  const shown = address.toString();
  // Exact special addresses first: `::` and `::1` sit inside `::/96`.
  for (const range of V6_RANGES.slice(0, 2))
    if (address.match(range.net)) return { reason: `${range.what} (${shown})`, kind: range.kind };
  for (const embedding of V6_EMBEDDINGS) {
    if (!address.match(embedding.net)) continue;
    for (const inner of embedding.embedded(address.parts)) {
      const verdict = classifyV4(inner);
      if (verdict !== undefined)
        return { reason: `${embedding.what} embedding ${verdict.reason}`, kind: verdict.kind };
    }
    return undefined;
  }
  const range = V6_RANGES.find((r) => address.match(r.net));
  if (range !== undefined) return { reason: `${range.what} (${shown})`, kind: range.kind };
  if (!address.match(V6_GLOBAL_UNICAST))
    return { reason: `a reserved address (${shown})`, kind: 'always' };
  return undefined;
}

/**
 * Rewrite a trailing dotted quad (`::ffff:1.2.3.4`) as two hex groups:
 * ipaddr.js reads `::1.2.3.4` (IPv4-compatible) as `::ffff:1.2.3.4`
 * (IPv4-mapped), a different address. Undefined if the quad is malformed.
 */
function dottedTailToHex(literal: string): string | undefined {
  const tail = /^(.*:)([^:]*\.[^:]*)$/.exec(literal);
  if (tail === null) return literal;
  const quad = tail[2] as string;
  if (!DOTTED_QUAD.test(quad)) return undefined;
  const [a, b, c, d] = quad.split('.').map(Number) as [number, number, number, number];
  return `${tail[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
}

interface HostList {
  admits(host: string): boolean;
}

function compileHosts(hosts: readonly string[]): HostList {
  if (!Array.isArray(hosts) || hosts.length === 0)
    throw new GuardOptionError('a url guard: hosts must be a non-empty list');
  const exact = new Set<string>();
  const suffixes: string[] = [];
  for (const [i, entry] of hosts.entries()) {
    if (typeof entry !== 'string')
      throw new GuardOptionError(`a url guard: hosts[${i}] must be a string`);
    const wildcard = entry.startsWith('*.');
    const host = normalizeHostOption(wildcard ? entry.slice(2) : entry);
    if (host === undefined)
      throw new GuardOptionError(
        `a url guard: hosts[${i}] must be a host name or '*.' and a host name`,
      );
    if (wildcard) suffixes.push(`.${host}`);
    else exact.add(host);
  }
  return {
    admits: (host) => exact.has(host) || suffixes.some((suffix) => host.endsWith(suffix)),
  };
}

/** An allowlist entry as the guard will see hosts: WHATWG's host, no trailing dot. */
function normalizeHostOption(entry: string): string | undefined {
  if (entry === '' || /[\s/\\?#@*%]/.test(entry)) return undefined;
  try {
    const url = new URL(`http://${entry}/`);
    if (url.port !== '' || url.hostname === '') return undefined;
    const host = url.hostname;
    return host.endsWith('.') ? host.slice(0, -1) : host;
  } catch {
    return undefined;
  }
}

function compileSchemes(schemes: readonly string[] | undefined): ReadonlySet<string> {
  if (schemes === undefined) return new Set(DEFAULT_SCHEMES);
  if (!Array.isArray(schemes) || schemes.length === 0)
    throw new GuardOptionError('a url guard: schemes must be a non-empty list');
  for (const [i, scheme] of schemes.entries())
    if (typeof scheme !== 'string' || !/^[a-z][a-z0-9+.-]*$/.test(scheme))
      throw new GuardOptionError(
        `a url guard: schemes[${i}] must be a lower-case scheme without ':' (such as 'https')`,
      );
  return new Set(schemes);
}

function compileFlag(value: unknown, fallback: boolean, name: string): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean')
    throw new GuardOptionError(`a url guard: ${name} must be true or false`);
  return value;
}

async function systemLookup(host: string): Promise<readonly string[]> {
  const answers = await dnsLookup(host, { all: true, verbatim: true });
  return answers.map((answer) => answer.address);
}

/** The addresses `host` resolves to, or why it is refused (not found, failed, too slow). */
async function lookupWithin(
  lookup: (host: string) => Promise<readonly string[]>,
  host: string,
  timeoutMs: number,
): Promise<readonly string[] | string> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    // Promise.race subscribes to the lookup, so a rejection after the
    // timeout has won is still handled.
    const answer = await Promise.race([Promise.resolve().then(() => lookup(host)), timedOut]);
    if (answer === 'timeout') return `'${excerpt(host)}' did not resolve within ${timeoutMs} ms`;
    if (answer.length === 0) return `'${excerpt(host)}' does not resolve`;
    return answer;
  } catch (err) {
    const code = (err as { code?: unknown } | undefined)?.code;
    if (typeof code === 'string' && NOT_FOUND_CODES.has(code))
      return `'${excerpt(host)}' does not resolve`;
    return `looking up '${excerpt(host)}' failed (${typeof code === 'string' ? code : 'error'})`;
  } finally {
    clearTimeout(timer);
  }
}

/** The first C0 control, space, DEL or C1 control in `text`, as a char code. */
function controlOrSpace(text: string): number | undefined {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code <= 0x20 || (code >= 0x7f && code <= 0x9f)) return code;
  }
  return undefined;
}

function codePoint(code: number): string {
  return `U+${code.toString(16).toUpperCase().padStart(4, '0')}`;
}

function excerpt(text: string): string {
  const chars = [...text];
  return chars.length <= MAX_EXCERPT_CHARS
    ? text
    : `${chars.slice(0, MAX_EXCERPT_CHARS).join('')}…`;
}
