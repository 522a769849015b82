# syntax=docker/dockerfile:1
#
# HeyAI voice backend: multi-stage build, distroless non-root runtime.
#
#   build      full `npm ci` (TypeScript, …), `npm run build` -> dist/ (the service:
#              src/ and machines/, without the simulated Twilio in src/phone)
#   prod-deps  `npm ci --omit=dev` into a clean node_modules (no TypeScript,
#              vitest, playwright-core, nor the `node` devDependency)
#   runtime    gcr.io/distroless/nodejs24-debian12:nonroot: Node 24 and nothing
#              else (no shell, no package manager), runs as uid 65532
#
# scripts/check-production-install.sh proves the same install path without Docker,
# and that production code imports every production dependency and nothing else.
# For reproducible builds, pin the base images by digest (FROM image@sha256:…).

ARG NODE_BUILD_IMAGE=node:24-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/nodejs24-debian12:nonroot

# ---- build: compile TypeScript to dist/ -------------------------------------
FROM ${NODE_BUILD_IMAGE} AS build
WORKDIR /app
ENV CI=true
COPY package.json package-lock.json ./
# The `node` devDependency's install script fetches the pinned Node 24 binary from
# the npm registry; `npm run build` then uses it via node_modules/.bin.
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY machines ./machines
COPY src ./src
RUN npm run build

# ---- prod-deps: production dependencies only, in a clean tree ----------------
FROM ${NODE_BUILD_IMAGE} AS prod-deps
WORKDIR /app
ENV CI=true
COPY package.json package-lock.json ./
# No production dependency needs an install script (protobufjs' only prints a
# version-scheme warning), so scripts stay off.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

# ---- runtime -----------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /app
# DATA_DIR must be writable by the nonroot user: /tmp is. It only matters with
# CALL_STORE=sqlite. On Cloud Run the container filesystem is in memory and is lost
# with the instance (and not shared between instances), so production deploys set
# CALL_STORE=firestore (see cloudbuild.yaml); /tmp/data then holds nothing durable.
ENV NODE_ENV=production \
    PORT=8080 \
    DATA_DIR=/tmp/data
# package.json is needed at run time: its "type": "module" makes dist/**/*.js ESM.
COPY package.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The admin console shows the generated call diagram (src/admin reads it beside dist/src).
COPY docs/diagram ./dist/docs/diagram
USER nonroot
EXPOSE 8080
# The distroless nodejs image's entrypoint is `node`.
# Cloud Run sends SIGTERM and allows 10 s; server.ts drains turns in flight in 9 s.
CMD ["dist/src/server.js"]
