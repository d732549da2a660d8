/**
 * A real nginx in front of several gateway replicas, round-robin with no
 * affinity: what a plain Kubernetes Service or a cloud load balancer does.
 * Configured from scratch in a temporary directory (no system config), run in
 * the foreground, stopped with the test. A missing binary fails the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './redis.js';

const NGINX = '/usr/sbin/nginx';
const START_TIMEOUT_MS = 10_000;
/** How long nginx keeps an idle connection to a replica; below LEAVE_ROTATION_MS. */
const UPSTREAM_IDLE_TIMEOUT_S = 1;
/** The shutdown.leaveRotationMs that replicas behind this balancer need, at least. */
export const LEAVE_ROTATION_MS = 2_000;

export interface Balancer {
  readonly port: number;
  readonly url: string;
  /**
   * Spreads requests over `replicas` from now on: the configuration rewritten
   * and reloaded (SIGHUP), as an ingress controller does when a replica's
   * readiness changes. Old workers finish what they have in flight.
   */
  setReplicas(replicas: readonly number[]): void;
  stop(): Promise<void>;
}

function config(dir: string, port: number, replicas: readonly number[]): string {
  // As root, nginx's workers would otherwise run as nobody, who cannot enter a private temp dir.
  const user = process.getuid?.() === 0 ? 'user root root;\n' : '';
  return `${user}daemon off;
master_process on;
worker_processes 1;
pid ${path.join(dir, 'nginx.pid')};
error_log ${path.join(dir, 'error.log')} warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${path.join(dir, 'body')};
  proxy_temp_path ${path.join(dir, 'proxy')};
  fastcgi_temp_path ${path.join(dir, 'fastcgi')};
  uwsgi_temp_path ${path.join(dir, 'uwsgi')};
  scgi_temp_path ${path.join(dir, 'scgi')};
  upstream replicas {
${replicas.map((p) => `    server 127.0.0.1:${p} max_fails=0;`).join('\n')}
    keepalive 16;
    # Shorter than the gateways' shutdown.leaveRotationMs, as deployment.md asks:
    # nginx closes a kept-alive connection itself before a draining replica would.
    keepalive_timeout ${UPSTREAM_IDLE_TIMEOUT_S}s;
  }
  # No kept-alive client connections: a reload (setReplicas) closes the idle
  # ones of its old workers, and a client reusing one just then would fail.
  keepalive_timeout 0;
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
      proxy_next_upstream error timeout;
    }
  }
}
`;
}

/** nginx on a free port, spreading requests over `replicas` (ports on 127.0.0.1) in turn. */
export async function startBalancer(replicas: readonly number[]): Promise<Balancer> {
  if (!existsSync(NGINX)) throw new Error(`${NGINX} is not installed (apt-get install nginx)`);
  const dir = mkdtempSync(path.join(tmpdir(), 'portcullis-nginx-'));
  const port = await freePort();
  const file = path.join(dir, 'nginx.conf');
  writeFileSync(file, config(dir, port, replicas));
  const child: ChildProcess = spawn(NGINX, ['-c', file, '-p', dir], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = once(child, 'exit');
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await answers(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      const log = existsSync(path.join(dir, 'error.log'))
        ? readFileSync(path.join(dir, 'error.log'), 'utf8')
        : '';
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx did not start: ${stderr}${log}`);
    }
    await sleep(50);
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    setReplicas(next) {
      writeFileSync(file, config(dir, port, next));
      child.kill('SIGHUP');
    },
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
