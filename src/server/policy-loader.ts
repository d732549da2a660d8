/**
 * Builds the policy a gateway runs from a checked configuration: the
 * per-tenant grants and rules, and each server's manifest, read from its
 * file. Called at start and on every reload; a reload that throws keeps the
 * policy in force.
 */
import type { Config } from '../config/schema.js';
import { compilePolicy, type Policy } from '../policy/policy.js';

export function buildPolicy(config: Config): Policy {
  return compilePolicy(config);
}
