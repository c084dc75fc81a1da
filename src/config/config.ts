// Configuration from the environment, validated in one place so that a mistake stops the
// service at start with every problem named, instead of surfacing later as odd behaviour.

import { DEFAULT_CHECK_CACHE_ENTRIES } from "../store/check-reader.js";
import { DEFAULT_TRANSPORT_LIMITS as LIMITS, type TransportLimits } from "../transport/limits.js";

export interface Config {
  readonly port: number;
  readonly host: string;
  /** Prometheus metrics; 0 picks a free port, undefined when ADMIN_PORT is "off". */
  readonly adminPort: number | undefined;
  readonly databaseUrl: string;
  readonly databasePoolSize: number;
  readonly databaseStatementTimeoutMs: number;
  readonly callersFile: string | undefined;
  /** The OTEL_* variables when traces are to be exported; undefined means no tracing at all. */
  readonly tracing: Readonly<Record<string, string>> | undefined;
  /** PEM files; when set, the port serves TLS only. */
  readonly tls: TlsFiles | undefined;
  readonly logLevel: string;
  readonly production: boolean;
  readonly shutdownGraceMs: number;
  readonly maxRequestBytes: number;
  readonly maxDeadlineMs: number;
  /** What one client may hold of the port: timeouts and HTTP/2 limits (see src/transport/limits.ts). */
  readonly limits: TransportLimits;
  /** SQLite: Connections the CheckConnection cache holds (least recently checked leave first). */
  readonly checkCacheEntries: number;
  /** WatchConnectionEvents streams per replica. */
  readonly maxWatchers: number;
  /** The longest a watch stream goes without a message (a heartbeat with the cursor). */
  readonly watchHeartbeatMs: number;
  /** How often the change feed polls the database besides being woken by writes and NOTIFY. */
  readonly watchPollIntervalMs: number;
  /** How long the answers of idempotent writes are kept for replay (IDEMPOTENCY_RETENTION). */
  readonly idempotencyRetentionMs: number;
}

export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
  /** Client certificates are required and verified against this CA (mTLS) when set. */
  readonly clientCaFile: string | undefined;
}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];

  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === "") return fallback;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      problems.push(`${name}=${raw}: expected a whole number from ${min} to ${max}`);
      return fallback;
    }
    return value;
  };

  const databaseUrl = env.DATABASE_URL || "sqlite:data/connections.db";
  if (!/^(sqlite:.+|postgres(ql)?:\/\/.+)$/.test(databaseUrl)) {
    problems.push("DATABASE_URL: expected sqlite:<path>, sqlite::memory: or postgres://...");
  }
  const logLevel = env.LOG_LEVEL || "info";
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`LOG_LEVEL=${logLevel}: expected one of ${LOG_LEVELS.join(", ")}`);
  const production = env.NODE_ENV === "production";
  const callersFile = env.CALLERS_FILE || undefined;
  if (production && callersFile === undefined) {
    problems.push("CALLERS_FILE is required when NODE_ENV=production (dev tokens are refused there)");
  }

  const certFile = env.TLS_CERT_FILE || undefined;
  const keyFile = env.TLS_KEY_FILE || undefined;
  const clientCaFile = env.TLS_CLIENT_CA_FILE || undefined;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    problems.push("TLS_CERT_FILE and TLS_KEY_FILE: set both (TLS only) or neither (cleartext)");
  }
  if (clientCaFile !== undefined && certFile === undefined) {
    problems.push("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE (mTLS is TLS with client certificates)");
  }

  const tracing = tracingEnv(env);
  const otlpEndpoint = tracing?.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || tracing?.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (otlpEndpoint !== undefined && !URL.canParse(otlpEndpoint)) {
    problems.push("OTEL_EXPORTER_OTLP_ENDPOINT: expected a URL such as http://collector:4318");
  }

  const config: Config = {
    port: integer("PORT", 8080, 0, 65535),
    host: env.HOST || "127.0.0.1",
    adminPort: env.ADMIN_PORT === "off" ? undefined : integer("ADMIN_PORT", 9090, 0, 65535),
    databaseUrl,
    databasePoolSize: integer("DATABASE_POOL_SIZE", 10, 1, 1000),
    databaseStatementTimeoutMs: integer("DATABASE_STATEMENT_TIMEOUT_MS", 5000, 100, 600_000),
    callersFile,
    tracing,
    tls: certFile !== undefined && keyFile !== undefined ? { certFile, keyFile, clientCaFile } : undefined,
    logLevel,
    production,
    shutdownGraceMs: integer("SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    maxRequestBytes: integer("MAX_REQUEST_BYTES", 256 * 1024, 1024, 64 * 1024 * 1024),
    maxDeadlineMs: integer("MAX_DEADLINE_MS", 30_000, 100, 3_600_000),
    limits: {
      firstBytesTimeoutMs: integer("FIRST_BYTES_TIMEOUT_MS", LIMITS.firstBytesTimeoutMs, 10, 600_000),
      bodyReadTimeoutMs: integer("BODY_READ_TIMEOUT_MS", LIMITS.bodyReadTimeoutMs, 10, 3_600_000),
      http1HeadersTimeoutMs: integer("HTTP1_HEADERS_TIMEOUT_MS", LIMITS.http1HeadersTimeoutMs, 10, 600_000),
      http1RequestTimeoutMs: integer("HTTP1_REQUEST_TIMEOUT_MS", LIMITS.http1RequestTimeoutMs, 10, 3_600_000),
      http1KeepAliveTimeoutMs: integer("HTTP1_KEEP_ALIVE_TIMEOUT_MS", LIMITS.http1KeepAliveTimeoutMs, 10, 3_600_000),
      http2IdleTimeoutMs: integer("HTTP2_IDLE_TIMEOUT_MS", LIMITS.http2IdleTimeoutMs, 10, 86_400_000),
      http2KeepaliveIntervalMs: integer("HTTP2_KEEPALIVE_INTERVAL_MS", LIMITS.http2KeepaliveIntervalMs, 10, 86_400_000),
      http2KeepaliveTimeoutMs: integer("HTTP2_KEEPALIVE_TIMEOUT_MS", LIMITS.http2KeepaliveTimeoutMs, 10, 600_000),
      maxConnectionAgeMs: integer("MAX_CONNECTION_AGE_MS", LIMITS.maxConnectionAgeMs, 10, 604_800_000),
      maxConnectionAgeGraceMs: integer("MAX_CONNECTION_AGE_GRACE_MS", LIMITS.maxConnectionAgeGraceMs, 0, 3_600_000),
      http2MaxConcurrentStreams: integer(
        "HTTP2_MAX_CONCURRENT_STREAMS",
        LIMITS.http2MaxConcurrentStreams,
        1,
        1_000_000,
      ),
      maxHeaderListBytes: integer("MAX_HEADER_LIST_BYTES", LIMITS.maxHeaderListBytes, 1024, 1_048_576),
      maxHealthWatchers: integer("MAX_HEALTH_WATCHERS", LIMITS.maxHealthWatchers, 0, 1_000_000),
    },
    checkCacheEntries: integer("CHECK_CACHE_ENTRIES", DEFAULT_CHECK_CACHE_ENTRIES, 1, 100_000_000),
    maxWatchers: integer("MAX_WATCHERS", 1000, 0, 1_000_000),
    watchHeartbeatMs: integer("WATCH_HEARTBEAT_MS", 15_000, 10, 15_000),
    watchPollIntervalMs: integer("WATCH_POLL_INTERVAL_MS", 1000, 10, 60_000),
    idempotencyRetentionMs: idempotencyRetention(env.IDEMPOTENCY_RETENTION, problems),
  };
  const { limits } = config;
  if (limits.http1HeadersTimeoutMs > limits.http1RequestTimeoutMs) {
    problems.push("HTTP1_HEADERS_TIMEOUT_MS must not be larger than HTTP1_REQUEST_TIMEOUT_MS");
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
const DURATION_UNITS_MS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: HOUR_MS, d: DAY_MS };
/** The contract promises replays for at least a day. */
const MIN_IDEMPOTENCY_RETENTION_MS = DAY_MS;

/** IDEMPOTENCY_RETENTION: a whole number and a unit (s, m, h, d), default 7d, at least 24h. */
function idempotencyRetention(raw: string | undefined, problems: string[]): number {
  const fallback = 7 * DAY_MS;
  if (raw === undefined || raw === "") return fallback;
  const match = /^(\d{1,9})([smhd])$/.exec(raw);
  const ms = match === null ? Number.NaN : Number(match[1]) * (DURATION_UNITS_MS[match[2] ?? ""] ?? Number.NaN);
  if (!(ms >= MIN_IDEMPOTENCY_RETENTION_MS)) {
    problems.push(
      `IDEMPOTENCY_RETENTION=${raw}: expected a duration of at least 24h, such as 24h, 36h or 7d (retries must replay for a day)`,
    );
    return fallback;
  }
  return ms;
}

/** The OTEL_* variables, when they ask for traces (an OTLP endpoint, and the SDK not disabled). */
function tracingEnv(env: NodeJS.ProcessEnv): Readonly<Record<string, string>> | undefined {
  if (env.OTEL_SDK_DISABLED === "true" || env.OTEL_TRACES_EXPORTER === "none") return undefined;
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT && !env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return undefined;
  const picked: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith("OTEL_") && value !== undefined) picked[name] = value;
  }
  return picked;
}
