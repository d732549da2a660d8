# Portcullis, the MCP security gateway: a multi-stage image (docs/deployment.md, "The image").
#
#   docker build -t portcullis .
#   docker run --rm -p 8080:8080 -v "$PWD/portcullis.yaml:/etc/portcullis/portcullis.yaml:ro" portcullis
#
# The configuration is mounted at /etc/portcullis/portcullis.yaml; writable state (audit files,
# spools, keys) goes under /var/lib/portcullis, a volume, so the root filesystem can be read-only.

# ---- build: dependencies with their install scripts, then the TypeScript build --------------
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
# `prepare` builds dist/ as part of the install.
RUN npm ci --no-audit --no-fund \
 && npm prune --omit=dev --no-audit --no-fund

# ---- run -------------------------------------------------------------------------------------
FROM node:20-bookworm-slim
# bubblewrap sandboxes stdio servers; tini reaps them and forwards SIGTERM for the drain.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A user of its own, not root, with no login shell and no home beyond the state directory.
RUN groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid portcullis --home-dir /var/lib/portcullis \
      --shell /usr/sbin/nologin portcullis \
 && mkdir -p /etc/portcullis /var/lib/portcullis \
 && chown portcullis:portcullis /var/lib/portcullis \
 && chmod 0700 /var/lib/portcullis
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY config/portcullis.example.yaml /etc/portcullis/portcullis.example.yaml
USER 10001:10001
WORKDIR /var/lib/portcullis
VOLUME ["/var/lib/portcullis"]
# 8080: agents (MCP); 9090: the admin listener (/livez, /readyz, /metrics).
EXPOSE 8080 9090
# /livez on the admin listener: up, whether or not it takes traffic (/readyz says that).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9090/livez').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/app/dist/cli/main.js"]
CMD ["start", "--config", "/etc/portcullis/portcullis.yaml"]
