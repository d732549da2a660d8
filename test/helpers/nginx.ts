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

export interface Balancer {
  readonly port: number;
  readonly url: string;
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
  }
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
