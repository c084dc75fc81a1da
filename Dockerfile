# The connections service as a container image.
#   docker build -t connections .
#   docker run --rm -p 8080:8080 -e HOST=0.0.0.0 -v connections-data:/app/data connections
# Stage 1 compiles better-sqlite3 and the TypeScript; stage 2 carries only what runs: node, the
# production node_modules and dist/. node is PID 1 and handles SIGTERM itself (one drain, exit 0);
# nothing (no npm, no shell) sits between the container runtime's signal and the service.

ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
# better-sqlite3 compiles from source when no prebuilt binary can be downloaded.
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY gen ./gen
COPY src ./src
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE}
# jemalloc instead of glibc's malloc, giving freed pages back to the system after a second, from its
# own thread so that a quiet process gives them back too. node:http2 reads each connection into a
# 64 KiB buffer that lives until V8 collects the chunks made from it; interleaved with nghttp2's
# per-stream allocations, glibc kept 8-12 MiB of a retry storm's freed memory resident, and the
# whole service, storm or not, answered 10-20% fewer calls per second (docs/performance.md,
# Overload, "jemalloc"). bench/allocator.ts reads these two settings from here.
RUN apt-get update \
  && apt-get install -y --no-install-recommends libjemalloc2 \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    ADMIN_PORT=9090 \
    DATABASE_URL=sqlite:/app/data/connections.db \
    SHUTDOWN_GRACE_MS=8000 \
    LD_PRELOAD=libjemalloc.so.2 \
    MALLOC_CONF=background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0
WORKDIR /app
COPY --from=build --chown=root:root /app/package.json ./
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
# The code belongs to root and is read-only to the service; only data/ is writable, by "node".
RUN mkdir -p /app/data && chown node:node /app/data
USER node
VOLUME ["/app/data"]
EXPOSE 8080 9090
# grpc.health.v1.Health/Check over h2c: healthy only while SERVING (the database answers and no
# shutdown has begun).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "dist/src/bin/healthcheck.js"]
STOPSIGNAL SIGTERM
# Exec form: node is PID 1 and receives SIGTERM directly. NODE_ENV=production needs a CALLERS_FILE
# (mount it and set CALLERS_FILE); SHUTDOWN_GRACE_MS must stay below the runtime's stop timeout
# (docker: 10 s by default, hence 8000 here; raise both together).
CMD ["node", "dist/src/main.js"]
