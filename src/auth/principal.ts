/**
 * Who a request comes from. With `auth.mode: none` (loopback only) every
 * request is the same anonymous local principal; JWT authentication fills
 * this from verified claims.
 */

export interface Principal {
  readonly tenant: string;
  readonly subject: string;
  readonly scopes: readonly string[];
  /** The OAuth client (agent) the token was issued to: `client_id` or `azp`. */
  readonly clientId?: string;
}

export const ANONYMOUS: Principal = Object.freeze({
  tenant: 'local',
  subject: 'anonymous',
  scopes: Object.freeze([]) as readonly string[],
});

/**
 * A key made of several claims, built structurally: distinct part lists give
 * distinct keys whatever the parts contain. Joining with a separator would
 * not: tenant `a\0b` with subject `c` would equal tenant `a` with `b\0c`.
 */
export function compositeKey(...parts: ReadonlyArray<string | null>): string {
  return JSON.stringify(parts);
}

const ownerKeys = new WeakMap<Principal, string>();

/**
 * The key a session is bound to: a session is only ever usable by the
 * principal that opened it. Made once per principal object (a verified
 * token keeps its principal), as it is asked for on every request.
 */
export function ownerKey(p: Principal): string {
  let key = ownerKeys.get(p);
  if (key === undefined) {
    key = compositeKey(p.tenant, p.subject);
    ownerKeys.set(p, key);
  }
  return key;
}
