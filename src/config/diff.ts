/**
 * What differs between two checked configurations, split by what a running
 * gateway can take live on reload: the policy (`tenants`, and per server the
 * keys the policy is built from) and everything else, which only a restart
 * applies. Pure: the manifest files' contents are the reloader's to compare.
 */
import { isDeepStrictEqual } from 'node:util';
import type { Config } from './schema.js';

/**
 * The keys of a server entry that the policy is built from, and so apply on
 * reload. A key joins this list when the policy loader reads it: a key listed
 * here but not read would be reported as applied when it was not.
 */
export const LIVE_SERVER_KEYS: readonly string[] = Object.freeze([
  'manifest',
  'pinning',
  'outputValidation',
  'tools',
  'virtualTools',
  'elicitationUrls',
]);

/** The top-level keys that apply on reload (besides the live keys of each server). */
export const LIVE_TOP_LEVEL_KEYS: readonly string[] = Object.freeze([
  'tenants',
  'rateLimits',
  'redaction',
]);

type Entries = Record<string, unknown>;

function asEntries(value: unknown): Entries {
  return value !== null && typeof value === 'object' ? (value as Entries) : {};
}

function keysOf(...values: unknown[]): string[] {
  return [...new Set(values.flatMap((v) => Object.keys(asEntries(v))))].sort();
}

/**
 * The policy parts that differ, as dotted paths: `tenants` when it appears or
 * goes away (policy on or off), else `tenants.<name>` per tenant added, removed
 * or changed; `servers.<name>.<key>` per live server key, for servers in both.
 */
export function liveDifferences(before: Config, after: Config): string[] {
  const out: string[] = [];
  if ((before.tenants === undefined) !== (after.tenants === undefined)) out.push('tenants');
  else {
    for (const name of keysOf(before.tenants, after.tenants)) {
      if (!isDeepStrictEqual(before.tenants?.[name], after.tenants?.[name])) {
        out.push(`tenants.${name}`);
      }
    }
  }
  for (const name of keysOf(before.servers, after.servers)) {
    const a = before.servers[name] as Entries | undefined;
    const b = after.servers[name] as Entries | undefined;
    // A server added or removed is a restart matter; its policy keys go with it.
    if (a === undefined || b === undefined) continue;
    for (const key of LIVE_SERVER_KEYS) {
      if (!isDeepStrictEqual(a[key], b[key])) out.push(`servers.${name}.${key}`);
    }
  }
  return out;
}

/**
 * What differs outside the policy, which a running gateway does not apply:
 * each top-level key (`listen`, `sessions`, …), and under `servers`,
 * `servers.<name>` for a server added or removed and `servers.<name>.<key>`
 * for each other key of a server in both.
 */
export function restartDifferences(before: Config, after: Config): string[] {
  const out: string[] = [];
  for (const key of keysOf(before, after)) {
    if (key === 'servers' || LIVE_TOP_LEVEL_KEYS.includes(key)) continue;
    if (!isDeepStrictEqual(asEntries(before)[key], asEntries(after)[key])) out.push(key);
  }
  for (const name of keysOf(before.servers, after.servers)) {
    const a = before.servers[name] as Entries | undefined;
    const b = after.servers[name] as Entries | undefined;
    if (a === undefined || b === undefined) {
      out.push(`servers.${name}`);
      continue;
    }
    for (const key of keysOf(a, b)) {
      if (LIVE_SERVER_KEYS.includes(key)) continue;
      if (!isDeepStrictEqual(a[key], b[key])) out.push(`servers.${name}.${key}`);
    }
  }
  return out;
}

/**
 * The manifest file each server names (`servers.<name>.manifest`), read
 * defensively: a key the schema may not know yet, taken only when it is a
 * non-empty string.
 */
export function manifestFiles(config: Config): Map<string, string> {
  const out = new Map<string, string>();
  for (const [name, server] of Object.entries(config.servers)) {
    const file = (server as unknown as Entries).manifest;
    if (typeof file === 'string' && file !== '') out.set(name, file);
  }
  return out;
}
