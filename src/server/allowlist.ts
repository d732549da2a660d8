/**
 * Host and Origin allowlists: the listener's DNS-rebinding protection.
 * spec/2025-11-25/basic/transports.mdx and spec/2026-07-28/basic/transports/
 * streamable-http.mdx: servers MUST validate Origin, and a present but
 * invalid Origin MUST get 403. Compiled once at start-up.
 */
import { isLoopbackHost } from '../config/load.js';

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '[::1]'];

export type Check = (value: string | undefined) => boolean;

function splitHostPort(value: string): { host: string; port: string | undefined } {
  const v = value.toLowerCase();
  if (v.startsWith('[')) {
    const end = v.indexOf(']');
    const rest = v.slice(end + 1);
    return { host: v.slice(0, end + 1), port: rest.startsWith(':') ? rest.slice(1) : undefined };
  }
  const colon = v.lastIndexOf(':');
  return colon === -1
    ? { host: v, port: undefined }
    : { host: v.slice(0, colon), port: v.slice(colon + 1) };
}

/** Entries are `host` (any port), `host:port`, or `*`. A missing Host header never passes. */
export function compileHostCheck(
  listenHost: string,
  allowed: readonly string[] | undefined,
): Check {
  const entries = allowed ?? (isLoopbackHost(listenHost) ? LOOPBACK_NAMES : []);
  if (entries.includes('*')) return (v) => v !== undefined;
  const anyPort = new Set<string>();
  const exact = new Set<string>();
  for (const e of entries) {
    const { host, port } = splitHostPort(e);
    if (port === undefined) anyPort.add(host);
    else exact.add(`${host}:${port}`);
  }
  return (value) => {
    if (value === undefined) return false;
    const { host, port } = splitHostPort(value);
    return anyPort.has(host) || (port !== undefined && exact.has(`${host}:${port}`));
  };
}

/**
 * Entries are origins (`scheme://host[:port]`); an entry without a port
 * allows any port of that scheme and host; `*` allows any. A request without
 * an Origin header (not a browser) passes; `Origin: null` does not.
 */
export function compileOriginCheck(
  listenHost: string,
  allowed: readonly string[] | undefined,
): Check {
  const entries =
    allowed ??
    (isLoopbackHost(listenHost)
      ? LOOPBACK_NAMES.flatMap((h) => [`http://${h}`, `https://${h}`])
      : []);
  if (entries.includes('*')) return () => true;
  const anyPort = new Set<string>();
  const exact = new Set<string>();
  for (const e of entries) {
    const m = /^(https?):\/\/(.+)$/i.exec(e.replace(/\/+$/, ''));
    if (!m) continue;
    const { host, port } = splitHostPort(m[2] ?? '');
    const scheme = (m[1] ?? '').toLowerCase();
    if (port === undefined) anyPort.add(`${scheme}://${host}`);
    else exact.add(`${scheme}://${host}:${port}`);
  }
  return (value) => {
    if (value === undefined) return true;
    const m = /^(https?):\/\/([^/]+)$/i.exec(value);
    if (!m) return false;
    const scheme = (m[1] ?? '').toLowerCase();
    const { host, port } = splitHostPort(m[2] ?? '');
    return (
      anyPort.has(`${scheme}://${host}`) ||
      (port !== undefined && exact.has(`${scheme}://${host}:${port}`))
    );
  };
}
