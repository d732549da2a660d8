# The development OAuth server of docker-compose.yml (src/demo/oauth-main.ts). It needs
# oidc-provider, a development dependency the production image leaves out: hence an image of
# its own. Never for production.
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm ci --no-audit --no-fund
USER node
EXPOSE 4000
HEALTHCHECK --interval=5s --timeout=3s --retries=10 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:4000/.well-known/openid-configuration').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/demo/oauth-main.js"]
