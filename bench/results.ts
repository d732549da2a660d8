// Where the benches write what they measured: each its own section of a RESULTS-*.md file
// (between markers named after the script, so a run replaces only its own section), and the raw
// figures as JSON under bench/results/raw/.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const benchDir = path.dirname(fileURLToPath(import.meta.url));

/**
 * Replaces the section of `outFile` between `<!-- bench/NAME.ts -->` and its
 * closing marker with `section`, or appends it; a new file starts with `title`.
 */
export function writeResultsSection(
  outFile: string,
  script: string,
  section: string,
  title: string,
): void {
  const begin = `<!-- bench/${script}.ts -->`;
  const end = `<!-- /bench/${script}.ts -->`;
  const block = `${begin}\n${section}${end}`;
  const existing = existsSync(outFile) ? readFileSync(outFile, 'utf8') : `# ${title}\n\n`;
  const at = existing.indexOf(begin);
  writeFileSync(
    outFile,
    at === -1
      ? `${existing.trimEnd()}\n\n${block}\n`
      : `${existing.slice(0, at)}${block}${existing.slice(existing.indexOf(end) + end.length)}`,
  );
}

/** Writes `data` as bench/results/raw/NAME-<time>.json. */
export function writeRawResults(name: string, data: unknown): void {
  const rawDir = path.join(benchDir, 'results/raw');
  mkdirSync(rawDir, { recursive: true });
  writeFileSync(
    path.join(rawDir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`),
    `${JSON.stringify(data, null, 2)}\n`,
  );
}
