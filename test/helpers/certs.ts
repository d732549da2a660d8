/**
 * Real X.509 material made with openssl for the TLS tests: a CA, a server
 * certificate for 127.0.0.1/localhost, and client certificates signed by the
 * CA (or self-signed, to be refused).
 */
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

export interface CertFiles {
  readonly cert: string;
  readonly key: string;
}

/** A self-signed certificate (a CA, or a client nobody vouches for). */
export function selfSigned(dir: string, name: string, extra: string[] = []): CertFiles {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}-key.pem`);
  openssl([
    'req',
    '-x509',
    ...EC,
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '1',
    '-subj',
    `/CN=${name}`,
    ...extra,
  ]);
  return { cert, key };
}

/** A certificate for `name` signed by `ca`. */
export function signedBy(dir: string, ca: CertFiles, name: string, extensions?: string): CertFiles {
  const key = join(dir, `${name}-key.pem`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}.pem`);
  openssl(['req', ...EC, '-keyout', key, '-out', csr, '-subj', `/CN=${name}`]);
  const args = [
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    ca.cert,
    '-CAkey',
    ca.key,
    '-CAcreateserial',
    '-out',
    cert,
    '-days',
    '1',
  ];
  if (extensions !== undefined) {
    const ext = join(dir, `${name}.ext`);
    execFileSync('sh', ['-c', `printf '%s\\n' "$1" > "$2"`, 'sh', extensions, ext]);
    args.push('-extfile', ext);
  }
  openssl(args);
  return { cert, key };
}

/** RFC 8705 `x5t#S256`: base64url SHA-256 of the certificate's DER. */
export function thumbprint(certFile: string): string {
  const der = new X509Certificate(readFileSync(certFile)).raw;
  return createHash('sha256').update(der).digest('base64url');
}
