/**
 * Builds the policy a gateway runs from a checked configuration: the
 * per-tenant grants and rules, and each server's manifest, read from its
 * file (relative to the working directory). Called at start and on every
 * reload; a reload that throws keeps the policy in force.
 */
import { resolve } from 'node:path';
import type { Config } from '../config/schema.js';
import { ManifestError, readManifest } from '../policy/manifest.js';
import { compilePolicy, type LoadedManifest, type Policy } from '../policy/policy.js';

/** A server's manifest file that cannot be used, with why. */
export class PolicyLoadError extends Error {
  constructor(readonly problems: ReadonlyArray<{ path: string; message: string }>) {
    super(
      `policy cannot be built:\n${problems.map((p) => `  ${p.path}: ${p.message}`).join('\n')}`,
    );
    this.name = 'PolicyLoadError';
  }
}

export function buildPolicy(config: Config): Policy {
  const manifests = new Map<string, LoadedManifest>();
  const problems: Array<{ path: string; message: string }> = [];
  for (const [name, server] of Object.entries(config.servers)) {
    if (server.manifest === undefined) continue;
    const at = `servers.${name}.manifest`;
    const file = resolve(server.manifest);
    try {
      const manifest = readManifest(file);
      if (manifest.server !== name) {
        problems.push({
          path: at,
          message: `${file} is the manifest of server '${manifest.server}', not '${name}'`,
        });
        continue;
      }
      manifests.set(name, { manifest, file: server.manifest });
    } catch (err) {
      const detail =
        err instanceof ManifestError
          ? err.problems.map((p) => `${p.path}: ${p.message}`).join('; ')
          : (err as Error).message;
      problems.push({ path: at, message: `${file}: ${detail}` });
    }
  }
  if (problems.length) throw new PolicyLoadError(problems);
  return compilePolicy(config, manifests);
}
