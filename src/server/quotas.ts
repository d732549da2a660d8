/**
 * Quotas: how much of the gateway one principal, one tenant, and everyone
 * together may hold at once: sessions, legacy SSE connections, stdio
 * processes and requests in flight. A lease is taken before the work starts
 * and released, once, when it ends; so a burst cannot get past the count
 * while the first of it is still being set up.
 *
 * Refusals, in order of precedence: the global cap (503: the gateway is full,
 * nobody in particular is to blame), then the tenant's (429), then the
 * principal's (429). Each names the quota and says when to retry.
 */
import { readFileSync } from 'node:fs';
import { GatewayError } from '../errors/index.js';
import { ownerKey, type Principal } from '../auth/principal.js';

export type QuotaResource = 'sessions' | 'legacyConnections' | 'stdioProcesses' | 'inflight';

export interface QuotaLimits {
  /** Undefined where every caller is the same principal (auth.mode none): the tenant's apply. */
  readonly perPrincipal: Readonly<Record<QuotaResource, number>> | undefined;
  readonly perTenant: Readonly<Record<QuotaResource, number>>;
  /** Requests in flight on the whole gateway. */
  readonly globalInflight: number;
}

/** What a refused client is told to wait before trying again. */
export const QUOTA_RETRY_AFTER_SECONDS = 1;
/** File descriptors kept free of requests (listeners, upstream pools, logs, stdio pipes). */
const RESERVED_FILE_DESCRIPTORS = 256;
/** An in-flight request can hold two descriptors: the client's socket and one upstream. */
const FILE_DESCRIPTORS_PER_REQUEST = 2;

/** The soft limit on open files of this process, if /proc says (Linux). */
export function openFileLimit(): number | undefined {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
    const n = Number(soft);
    return Number.isFinite(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The global in-flight cap: the configured one, lowered to what the
 * file-descriptor limit can carry, so the gateway refuses with 503 before
 * accept() or connect() fail with EMFILE for someone else's connection.
 */
export function inflightCap(configured: number, fileLimit = openFileLimit()): number {
  if (fileLimit === undefined) return configured;
  const fits = Math.floor((fileLimit - RESERVED_FILE_DESCRIPTORS) / FILE_DESCRIPTORS_PER_REQUEST);
  return Math.max(1, Math.min(configured, fits));
}

/** A held share of a quota; `release` is idempotent. */
export interface Lease {
  release(): void;
}

const NO_LEASE: Lease = { release: () => undefined };

/** Counts per resource, by tenant and by principal (ownerKey): structural, no joined strings. */
type Counts = Record<QuotaResource, Map<string, number>>;

function counts(): Counts {
  return {
    sessions: new Map(),
    legacyConnections: new Map(),
    stdioProcesses: new Map(),
    inflight: new Map(),
  };
}

export class Quotas {
  private readonly byTenant = counts();
  private readonly byPrincipal = counts();
  private inflight = 0;

  constructor(private readonly limits: QuotaLimits) {}

  /** The global in-flight cap in force. */
  get globalInflight(): number {
    return this.limits.globalInflight;
  }

  /** Takes one unit of `resource` for `principal`, or throws the refusal naming the quota. */
  acquire(resource: QuotaResource, principal: Principal): Lease {
    if (resource === 'inflight' && this.inflight >= this.limits.globalInflight) {
      throw refusal(
        'PORTCULLIS_ERR_QUOTA_GATEWAY_FULL',
        'global.inflight',
        this.limits.globalInflight,
      );
    }
    const tenants = this.byTenant[resource];
    const principals = this.byPrincipal[resource];
    const tenant = principal.tenant;
    const owner = ownerKey(principal);
    const tenantLimit = this.limits.perTenant[resource];
    const principalLimit = this.limits.perPrincipal?.[resource] ?? Infinity;
    if ((tenants.get(tenant) ?? 0) >= tenantLimit) {
      throw refusal('PORTCULLIS_ERR_QUOTA_EXCEEDED', `perTenant.${resource}`, tenantLimit);
    }
    if ((principals.get(owner) ?? 0) >= principalLimit) {
      throw refusal('PORTCULLIS_ERR_QUOTA_EXCEEDED', `perPrincipal.${resource}`, principalLimit);
    }
    bump(tenants, tenant, 1);
    bump(principals, owner, 1);
    if (resource === 'inflight') this.inflight++;
    return new QuotaLease(this, resource, tenant, owner);
  }

  /** Gives one unit back (QuotaLease's, once). */
  give(resource: QuotaResource, tenant: string, owner: string): void {
    bump(this.byTenant[resource], tenant, -1);
    bump(this.byPrincipal[resource], owner, -1);
    if (resource === 'inflight') this.inflight--;
  }

  /** What `principal` holds of `resource` now (for tests and metrics). */
  held(resource: QuotaResource, principal: Principal): number {
    return this.byPrincipal[resource].get(ownerKey(principal)) ?? 0;
  }
}

/** A class, not a closure: one small object per request, nothing else kept reachable. */
class QuotaLease implements Lease {
  private held = true;
  constructor(
    private readonly quotas: Quotas,
    private readonly resource: QuotaResource,
    private readonly tenant: string,
    private readonly owner: string,
  ) {}

  release(): void {
    if (!this.held) return;
    this.held = false;
    this.quotas.give(this.resource, this.tenant, this.owner);
  }
}

function bump(map: Map<string, number>, key: string, by: number): void {
  const n = (map.get(key) ?? 0) + by;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}

/** A lease that holds nothing, for work no quota applies to. */
export function noLease(): Lease {
  return NO_LEASE;
}

function refusal(
  code: 'PORTCULLIS_ERR_QUOTA_EXCEEDED' | 'PORTCULLIS_ERR_QUOTA_GATEWAY_FULL',
  quota: string,
  limit: number,
): GatewayError {
  return new GatewayError(code, `quota ${quota} (${limit}) reached`, {
    quota,
    limit,
    retryAfterSeconds: QUOTA_RETRY_AFTER_SECONDS,
  });
}
